"""Stage 2: find the quantizers and the quantizer groups, from the graph topology alone.

A quantizer sits on a tensor: an activation quantizer (per-tensor, asymmetric, unsigned) on a
float tensor that a quantized op reads or writes, a weight quantizer (per-channel, symmetric,
signed) on the constant weight of a Conv / ConvTranspose / Gemm / MatMul. A group is a set of
quantizers that must take one bit-width together; groups are the connected components of:
an op's weight with its input activation; every input and output of a Concat and of the
data-movement ops that pass values through unchanged (one scale and type in hardware). All ops
reading one tensor share its single quantizer, so their groups merge through it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxmp.errors import NothingToQuantizeError
from onnxmp.model.graph import RECURRENT_OPS, WEIGHTED_OPS, GraphIndex, subgraph_reads, subgraph_work
from onnxmp.model.patterns import find_units

logger = logging.getLogger(__name__)

# Ops whose float inputs and outputs an integer accelerator (and onnxruntime's QDQ quantizer)
# runs quantized.
QUANTIZED_OPS = frozenset({
    *WEIGHTED_OPS, "Add", "Sub", "Mul", "Div", "Concat", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Softmax", "Resize", "Pad", "Split", "Slice", "Gather", "Transpose", "Reshape",
    "Flatten", "Squeeze", "Unsqueeze", "LayerNormalization", "InstanceNormalization", "ReduceMean",
    "Where", "Tanh", "Gelu", "Erf", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
})
# Ops that move values unchanged: their inputs and outputs share one quantizer group.
SHARED_IO_OPS = frozenset({
    "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool",
    "GlobalMaxPool", "Split", "Slice", "Gather", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
})
# Ops whose quantized output takes its (first) input's scale and zero point (``tied_scales``).
TIED_SCALE_OPS = (SHARED_IO_OPS - {"Concat"}) | {"Resize"}
# The inputs that carry activations, for quantized ops whose other inputs are parameters (sizes,
# scales, bounds, pads, a runtime bias): those stay float, as in onnxruntime's QDQ quantizer. Ops
# not listed take all their inputs as activations.
ACTIVATION_INPUTS = {
    "Conv": (0, 1), "ConvTranspose": (0, 1), "Gemm": (0, 1), "Clip": (0,), "Resize": (0,), "Pad": (0,),
    "Split": (0,), "Slice": (0,), "Gather": (0,), "Reshape": (0,), "Expand": (0,), "Tile": (0,),
    "Squeeze": (0,), "Unsqueeze": (0,), "Where": (1, 2), "LayerNormalization": (0,),
    "InstanceNormalization": (0,), "ReduceMean": (0,), "ReduceSum": (0,),
}
# Activation functions a weighted op's output fuses into: no quantizer in between.
FUSABLE_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu"})
# What onnxruntime removes before a QuantizeLinear whose range already clamps like it (its
# quantize_static drops them the same way). On ppocr_cls, with every range at min/max (at MSE),
# uniform W8A8's logits SQNR is 20.92 (21.45) dB with a quantizer on both sides of such a Relu or
# Clip, 21.54 (21.71) after the Relu only, 21.99 (21.92) after the Relu and the Clip.
REMOVABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})



@dataclasses.dataclass(frozen=True)
class IntegerPlacement:
    """Activation quantizers only where the target's runtime computes in integer, or where a
    quantized tensor travels between such ops (what each runtime fuses is measured: see
    ``targets/ort.py``); everything else, recognised units included, stays float."""

    kernels: frozenset[str]  # weighted op types with an integer kernel: their activation input is quantized
    quantized_output: frozenset[str]  # of those, the ones whose kernel needs a quantized output
    int8_ops: frozenset[str]  # ops the runtime runs on quantized inputs giving a quantized output
    float_units: bool = True  # keep recognised decompositions (LayerNorm, GELU, ...) float


@dataclasses.dataclass(frozen=True)
class WeightedOp:
    """A Conv / ConvTranspose / Gemm / MatMul whose weight is a constant."""

    node: str
    op_type: str
    weight: str
    axis: int  # per-channel axis of the weight (the output-channel axis)
    bias: str | None
    activation: str  # the activation input it multiplies with the weight
    output: str
    macs_tensor: str  # MACs = elements of this tensor x reduction
    reduction: int


@dataclasses.dataclass(frozen=True)
class QuantizerGroup:
    """Quantizers that take one candidate together; hashable, so it can key caches."""

    gid: int
    activations: tuple[str, ...]
    weights: tuple[str, ...]
    nodes: tuple[str, ...]

    @property
    def label(self) -> str:
        """A short human-readable name: its first node (or tensor) and how many more."""
        names = self.nodes or self.activations
        return names[0] + (f" (+{len(names) - 1})" if len(names) > 1 else "")


@dataclasses.dataclass(frozen=True)
class Skip:
    """Something left in float, with the reason why."""

    name: str
    reason: str


@dataclasses.dataclass(frozen=True)
class QuantPlan:
    """Every quantizer of a model and how they group."""

    activations: tuple[str, ...]
    weighted_ops: tuple[WeightedOp, ...]
    groups: tuple[QuantizerGroup, ...]
    skips: tuple[Skip, ...]

    def group_of_activation(self) -> dict[str, int]:
        return {name: g.gid for g in self.groups for name in g.activations}

    def group_of_weight(self) -> dict[str, int]:
        return {name: g.gid for g in self.groups for name in g.weights}


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _try_weighted_op(node: onnx.NodeProto, index: GraphIndex) -> WeightedOp | str:
    """Describe ``node`` as a weighted op, or return the reason it is not one."""
    if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
        return "not a weighted op"
    act, weight = node.input[0], node.input[1]
    if weight not in index.initializers or act in index.initializers:
        return "weight is not a constant (or the activation is)"
    if not (index.is_float(weight) and index.is_float(act)):
        return "not float32"
    shape = tuple(index.initializers[weight].dims)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias not in index.initializers:
        bias = None
    if node.op_type == "Conv":
        axis, reduction = 0, int(np.prod(shape[1:]))
    elif node.op_type == "ConvTranspose":
        axis, reduction = 1, int(np.prod(shape[1:]))  # per input element
    elif node.op_type == "Gemm":
        trans_b = _attr(node, "transB", 0)
        axis, reduction = (0, shape[1]) if trans_b else (1, shape[0])
    else:  # MatMul: B is [..., K, N]; per-channel along N
        if len(shape) < 2:
            return "MatMul with a 1-D weight"
        axis, reduction = len(shape) - 1, shape[-2]
        bias = None
    if bias is not None and tuple(index.initializers[bias].dims) != (shape[axis],):
        bias = None  # a broadcast bias that is not one value per output channel stays float
    macs_tensor = act if node.op_type == "ConvTranspose" else node.output[0]
    return WeightedOp(node.name, node.op_type, weight, axis, bias, act, node.output[0], macs_tensor, reduction)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, key: str) -> None:
        self.parent.setdefault(key, key)

    def find(self, key: str) -> str:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def _read_only_by(tensor: str, index: GraphIndex, op_types: frozenset[str]) -> bool:
    """True when only ops of ``op_types`` read ``tensor`` (and it is not a graph output)."""
    readers = index.readers.get(tensor, [])
    return bool(readers) and tensor not in index.graph_outputs and all(r.op_type in op_types for r in readers)


def _is_fused_output(tensor: str, index: GraphIndex) -> bool:
    """True when a weighted op's output feeds only an activation function it fuses with."""
    return _read_only_by(tensor, index, FUSABLE_ACTIVATIONS)


def tied_scales(graph: onnx.GraphProto, activations: set[str]) -> dict[str, str]:
    """Quantized outputs of the ops that move values unchanged (all but Concat, whose kernel
    rescales) and of Resize, each mapped to the quantized input whose scale and zero point it
    takes: the values lie within the input's range, and onnxruntime runs such an op on the 8-bit
    values only when both sides agree (with its own scale, a MaxPool runs in float between a
    DequantizeLinear and a QuantizeLinear). onnxruntime's quantize_static ties them the same way."""
    tied: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in TIED_SCALE_OPS or not node.input:
            continue
        source = node.input[0]
        if source not in activations:
            continue
        source = tied.get(source, source)
        for out in node.output:
            if out in activations:
                tied[out] = source
    return tied


def constant_tensors(graph: onnx.GraphProto, index: GraphIndex) -> set[str]:
    """Tensors computed from initializers alone (a reshaped bias, a scaled constant): constants
    the runtime folds, not activations to quantize (OpenVINO's low-precision passes fail on an
    Add of two dequantized inputs when one of them is such a constant)."""
    constant = set(index.initializers)
    for node in graph.node:
        reads = [n for n in [*node.input, *subgraph_reads(node)] if n]
        if reads and all(n in constant for n in reads):
            constant.update(o for o in node.output if o)
    return constant - set(index.initializers)


def _unit_skips(units: list, why: str) -> list[Skip]:
    return [Skip(t, f"inside a {u.kind} ({u.nodes[0]} .. {u.nodes[-1]}): {why}") for u in units for t in u.tensors
            if t != u.exit]


def _activation_candidates(model: onnx.ModelProto, index: GraphIndex, keep_float: Mapping[str, str],
                           quantized_ops: frozenset[str], float_units: bool = False,
                           clamp_fused_ops: frozenset[str] = frozenset()) -> tuple[list[str], list[Skip]]:
    """Float tensors read or written by quantized ops, in graph order, and those skipped;
    ``float_units``: the ops inside recognised decompositions are not quantized;
    ``clamp_fused_ops``: op types whose output, where only a Relu or Clip reads it, the runtime
    writes at the Relu/Clip's scale without a rounding in between (not quantized)."""
    graph = model.graph
    chosen: dict[str, None] = {}
    skips: list[Skip] = [Skip(name, reason) for name, reason in keep_float.items()]
    constant = constant_tensors(graph, index)
    units = find_units(model, constant) if float_units else []
    unit_nodes = {name for u in units for name in u.nodes}
    skips += _unit_skips(units, "kept float on this target")
    fused = {node.output[0] for node in graph.node
             if isinstance(_try_weighted_op(node, index), WeightedOp) and _is_fused_output(node.output[0], index)}
    for name in sorted(fused):
        skips.append(Skip(name, f"output of {index.producers[name].name} fused into the following activation"))
    clamped = {node.output[0] for node in graph.node if node.op_type in clamp_fused_ops and node.op_type in quantized_ops
               and node.output and _read_only_by(node.output[0], index, REMOVABLE_ACTIVATIONS)}
    for name in sorted(clamped):
        node = index.producers[name]
        skips.append(Skip(name, f"output of {node.name} ({node.op_type}) read only by Relu/Clip: the target computes "
                                "the pair without a rounding between, the quantizer goes after the Relu/Clip"))
    fused |= clamped
    for node in graph.node:
        if node.op_type not in quantized_ops or node.name in unit_nodes:
            continue
        weighted = _try_weighted_op(node, index)
        weight, bias = (weighted.weight, weighted.bias) if isinstance(weighted, WeightedOp) else (None, None)
        for position, name in enumerate(node.input):
            if not name or name in (weight, bias) or name in fused or name in keep_float or not index.is_float(name):
                continue
            if position not in ACTIVATION_INPUTS.get(node.op_type, (position,)):
                skips.append(Skip(name, f"parameter input {position} of {node.name} ({node.op_type}) kept float"))
                continue
            if name in index.initializers or name in constant:
                skips.append(Skip(name, f"constant operand of {node.name} ({node.op_type}) kept float"))
                continue
            chosen[name] = None
        for name in node.output:
            if name and name not in fused and name not in keep_float and name not in constant and index.is_float(name):
                chosen[name] = None
    return list(chosen), skips


def _integer_activations(model: onnx.ModelProto, index: GraphIndex, keep_float: Mapping[str, str],
                         placement: IntegerPlacement) -> tuple[list[str], list[Skip], list[tuple[str, str]]]:
    """The tensors an integer kernel reads or must write, and those that stay quantized through
    ops the runtime runs in integer, in graph order; the skips say why the rest stay float; and
    (weight, output) pairs of the kernels that need their output quantized with their inputs."""
    graph = model.graph
    constant = constant_tensors(graph, index)
    units = find_units(model, constant) if placement.float_units else []
    in_unit = {name: unit for unit in units for name in unit.nodes}
    skips = [Skip(name, reason) for name, reason in keep_float.items()]
    skips += _unit_skips(units, "kept float between integer kernels")
    chosen: dict[str, None] = {}
    coupled: list[tuple[str, str]] = []

    def quantize(name: str) -> None:
        if name and name not in keep_float and name not in constant and name not in index.initializers \
                and index.is_float(name):
            chosen[name] = None

    for node in graph.node:
        weighted = _try_weighted_op(node, index)
        if isinstance(weighted, WeightedOp) and node.op_type in placement.kernels:
            quantize(weighted.activation)
            if node.op_type in placement.quantized_output:
                fused = _is_fused_output(weighted.output, index)
                for out in ([r.output[0] for r in index.readers[weighted.output]] if fused else [weighted.output]):
                    quantize(out)
                    coupled.append((weighted.weight, out))
            continue
        if node.op_type not in placement.int8_ops or node.name in in_unit:
            continue
        positions = ACTIVATION_INPUTS.get(node.op_type, tuple(range(len(node.input))))
        acts = [n for i, n in enumerate(node.input) if i in positions and n and n not in constant
                and n not in index.initializers and index.is_float(n)]
        if acts and all(a in chosen for a in acts):
            for out in node.output:
                # with the Relu/Clip's output quantized instead (its range within the clamp),
                # onnxruntime drops it and the integer op writes the result itself; a quantizer on
                # ``out`` too would leave a DequantizeLinear → QuantizeLinear requantization
                if _read_only_by(out, index, REMOVABLE_ACTIVATIONS):
                    skips.append(Skip(out, f"output of {node.name} ({node.op_type}) read only by Relu/Clip: the "
                                           "quantizer goes after it, and the runtime removes the Relu/Clip"))
                    for reader in index.readers[out]:
                        quantize(reader.output[0])
                else:
                    quantize(out)
    kept = {s.name for s in skips}
    for name in index.elem_types:
        if name not in chosen and name not in kept and name in index.producers and index.is_float(name) \
                and name not in constant:
            skips.append(Skip(name, "no integer kernel reads or writes it on this target: kept float"))
    return list(chosen), skips, [(w, a) for w, a in coupled if a in chosen]


def find_quantizers(model: onnx.ModelProto, keep_float: Mapping[str, str] | None = None,
                    quantized_ops: frozenset[str] = QUANTIZED_OPS, integer: IntegerPlacement | None = None,
                    float_units: bool = False, clamp_fused_ops: frozenset[str] = frozenset()) -> QuantPlan:
    """Find every quantizer and group them; raise NothingToQuantizeError if there is none.
    ``keep_float`` maps tensors that must stay float to the reason why; ``quantized_ops``: the
    op types whose float inputs and outputs are quantized (a target may need more); ``integer``:
    instead, quantize only where the target computes in integer; ``float_units``: around every
    quantized op but inside recognised decompositions (LayerNorm, GELU, ...); ``clamp_fused_ops``:
    around every op, but not between one of these and a Relu/Clip that alone reads its output."""
    graph = model.graph
    index = GraphIndex.build(graph)
    coupled: list[tuple[str, str]] = []
    if integer is None:
        activations, skips = _activation_candidates(model, index, keep_float or {}, quantized_ops, float_units,
                                                    clamp_fused_ops)
    else:
        activations, skips, coupled = _integer_activations(model, index, keep_float or {}, integer)
    quantized = set(activations)
    weighted: list[WeightedOp] = []
    for node in graph.node:
        result = _try_weighted_op(node, index)
        if isinstance(result, WeightedOp):
            weighted.append(result)
        elif node.op_type in WEIGHTED_OPS:
            skips.append(Skip(node.name, f"{node.op_type} weight not quantized: {result}"))
        elif node.op_type in RECURRENT_OPS:
            skips.append(Skip(node.name, f"{node.op_type} kept float, weights W and R included: onnxmp quantizes "
                                         "Conv, ConvTranspose, Gemm and MatMul, not recurrent ops"))
    for work in subgraph_work(graph):
        skips.append(Skip(work.node, f"{work.describe()}: kept float (onnxmp quantizes the main graph only)"))
    seen_weights: set[str] = set()
    unique_weighted = []
    for op in weighted:
        if op.weight in seen_weights and any(o.weight == op.weight and o.axis != op.axis for o in unique_weighted):
            skips.append(Skip(op.node, "weight shared with a layer that needs another axis; kept float"))
            continue
        seen_weights.add(op.weight)
        unique_weighted.append(op)
    if not unique_weighted and not activations:
        raise NothingToQuantizeError(
            "the model has no op onnxmp can quantize (Conv, ConvTranspose, Gemm, MatMul with a "
            "constant weight, or the activation ops around them)"
        )
    groups = _connected_groups(graph, unique_weighted, activations, quantized, coupled)
    for skip in skips:
        logger.debug("skip %s: %s", skip.name, skip.reason)
    return QuantPlan(tuple(activations), tuple(unique_weighted), groups, tuple(skips))


def _connected_groups(graph: onnx.GraphProto, weighted: list[WeightedOp], activations: list[str],
                      quantized: set[str], coupled: list[tuple[str, str]] = ()) -> tuple[QuantizerGroup, ...]:
    """Union the quantizers by the grouping rules; one group per connected component.
    ``coupled``: (weight, activation) pairs that take one width too (a kernel that computes in
    integer only when its output is quantized with its inputs, such as QLinearConv)."""
    uf = _UnionFind()
    for name in activations:
        uf.add("a:" + name)
    for op in weighted:
        uf.add("w:" + op.weight)
        if op.activation in quantized:
            uf.union("w:" + op.weight, "a:" + op.activation)
    seen_weights = {op.weight for op in weighted}
    for weight, name in coupled:
        if weight in seen_weights:
            uf.union("w:" + weight, "a:" + name)
    for node in graph.node:
        if node.op_type in SHARED_IO_OPS:
            members = ["a:" + n for n in [*node.input, *node.output] if n in quantized]
            for other in members[1:]:
                uf.union(members[0], other)
    nodes_of_root: dict[str, list[str]] = {}
    for op in weighted:
        nodes_of_root.setdefault(uf.find("w:" + op.weight), []).append(op.node)
    members_of_root: dict[str, list[str]] = {}
    for key in uf.parent:
        members_of_root.setdefault(uf.find(key), []).append(key)
    groups = []
    for gid, (root, keys) in enumerate(members_of_root.items()):
        acts = tuple(k[2:] for k in keys if k.startswith("a:"))
        weights = tuple(k[2:] for k in keys if k.startswith("w:"))
        groups.append(QuantizerGroup(gid, acts, weights, tuple(nodes_of_root.get(root, []))))
    return tuple(groups)


def weight_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The float32 value of an initializer (read-only when it shares the tensor's bytes: no
    second copy of a big weight)."""
    tensor = next(t for t in model.graph.initializer if t.name == name)
    return numpy_helper.to_array(tensor).astype(np.float32, copy=False)
