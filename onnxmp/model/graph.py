"""Read-only views of an ONNX graph used by several stages: tensor types, producers, readers.

onnxmp edits graphs as onnx protos, not through onnx-graphsurgeon: its import/export round trip
copies every weight (one edit of a model with a 256 MB weight raised the peak by 512 MB, where
``large.light_copy`` adds 23 MB: ``benchmarks/graph_ir.py``), which the >1 GiB path cannot pay,
and the edits onnxmp makes are few and local."""

from __future__ import annotations

import dataclasses

import onnx

# ops whose constant operand is a weight (quantized per channel)
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# recurrent ops: weights W and R (and their compute) stay float
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


@dataclasses.dataclass(frozen=True)
class GraphIndex:
    """Lookups over one graph, built once: which node makes and which nodes read each tensor,
    each tensor's element type, and the initializers. Subgraph reads count as reads."""

    producers: dict[str, onnx.NodeProto]
    readers: dict[str, list[onnx.NodeProto]]
    elem_types: dict[str, int]
    initializers: dict[str, onnx.TensorProto]
    graph_inputs: tuple[str, ...]
    graph_outputs: tuple[str, ...]

    @classmethod
    def build(cls, graph: onnx.GraphProto) -> GraphIndex:
        producers: dict[str, onnx.NodeProto] = {}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                if name:
                    producers[name] = node
            for name in set(node.input) | subgraph_reads(node):
                if name:
                    readers.setdefault(name, []).append(node)
        elem_types = {}
        for info in [*graph.input, *graph.output, *graph.value_info]:
            if info.type.HasField("tensor_type"):
                elem_types[info.name] = info.type.tensor_type.elem_type
        initializers = {t.name: t for t in graph.initializer}
        elem_types.update({name: t.data_type for name, t in initializers.items()})
        inputs = tuple(i.name for i in graph.input if i.name not in initializers)
        return cls(producers, readers, elem_types, initializers, inputs, tuple(o.name for o in graph.output))

    def is_float(self, name: str) -> bool:
        return self.elem_types.get(name) == onnx.TensorProto.FLOAT


def node_subgraphs(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """A node's subgraphs (If branches, Loop and Scan bodies) with their attribute names."""
    return [(attr.name, sub) for attr in node.attribute
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs)]


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope."""
    names: set[str] = set()
    for _, sub in node_subgraphs(node):
        local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
        local |= {o for n in sub.node for o in n.output}
        for inner in sub.node:
            names |= {n for n in set(inner.input) | subgraph_reads(inner) if n and n not in local}
    return names


@dataclasses.dataclass(frozen=True)
class SubgraphWork:
    """The compute a control-flow node of the main graph holds in its bodies (nested ones included)."""

    node: str
    op_type: str
    bodies: tuple[str, ...]  # attribute names (then_branch, else_branch, body) holding the ops
    ops: dict[str, int]  # weighted and recurrent op types inside, and how many

    def describe(self) -> str:
        held = ", ".join(f"{n} {op}" for op, n in sorted(self.ops.items())) or "no weighted op"
        return f"{self.op_type} node {self.node!r} holds {held} in its {' and '.join(self.bodies)}"


def subgraph_work(graph: onnx.GraphProto) -> list[SubgraphWork]:
    """Every node of ``graph`` with subgraphs (If, Loop, Scan), and the weighted and recurrent ops
    inside them: the work onnxmp would quantize in the main graph but does not inside a body."""
    found = []
    for node in graph.node:
        bodies, busy, ops = [], [], {}
        for name, sub in node_subgraphs(node):
            inside = _ops_inside(sub)
            bodies.append(name)
            busy += [name] if inside else []
            for op in inside:
                ops[op] = ops.get(op, 0) + 1
        if bodies:  # the bodies named are those holding the work, or all where none does
            found.append(SubgraphWork(node.name or node.output[0], node.op_type,
                                      tuple(dict.fromkeys(busy or bodies)), ops))
    return found


def _ops_inside(graph: onnx.GraphProto) -> list[str]:
    ops = [n.op_type for n in graph.node if n.op_type in WEIGHTED_OPS + RECURRENT_OPS]
    for node in graph.node:
        for _, sub in node_subgraphs(node):
            ops += _ops_inside(sub)
    return ops


def all_tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name of a graph and its subgraphs (inputs, outputs, initializers, node
    outputs, value infos): a new name must avoid all of them to keep the model in SSA form."""
    names = {i.name for i in [*graph.input, *graph.output, *graph.value_info]}
    names |= {t.name for t in graph.initializer} | {o for node in graph.node for o in node.output}
    for node in graph.node:
        for _, sub in node_subgraphs(node):
            names |= all_tensor_names(sub)
    return names
