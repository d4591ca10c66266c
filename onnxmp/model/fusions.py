"""Graph rewrites a deployment target needs before quantization: ops it cannot run, written as
equivalent ops it can.

GELU exported as x·0.5·(1 + erf(x/√2)) (BERT-style exporters; MiniLM) becomes one Gelu node:
Qualcomm's HTP has no Erf (each one falls back to the CPU and splits the graph) but runs Gelu.
Gelu is the exact function, so the float model computes the same up to float rounding.
"""

from __future__ import annotations

import logging
import math

import onnx
from onnx import helper, numpy_helper

from onnxmp.model.graph import subgraph_reads

logger = logging.getLogger(__name__)

_TOLERANCE = 1e-4


def _scalar(inits: dict[str, onnx.TensorProto], name: str) -> float | None:
    """The value of a one-element float initializer, else None."""
    tensor = inits.get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return float(value.reshape(-1)[0]) if value.size == 1 and value.dtype.kind == "f" else None


def _constant_operand(inits: dict[str, onnx.TensorProto], node: onnx.NodeProto, value: float) -> str | None:
    """The other operand of a binary ``node`` one of whose operands is the constant ``value``."""
    for k in (0, 1):
        constant = _scalar(inits, node.input[k])
        if constant is not None and abs(constant - value) <= _TOLERANCE * max(1.0, abs(value)):
            return node.input[1 - k]
    return None


def _only_reader(readers: dict[str, list[onnx.NodeProto]], name: str, op_type: str) -> onnx.NodeProto | None:
    found = readers.get(name, [])
    return found[0] if len(found) == 1 and found[0].op_type == op_type else None


def _gelu_nodes(inits: dict[str, onnx.TensorProto], erf: onnx.NodeProto, producers: dict, readers: dict,
                outputs: set[str]) -> tuple[str, list[onnx.NodeProto], str] | None:
    """(x, the nodes computing GELU(x) around ``erf``, the tensor holding GELU(x)), or None."""
    scaled = producers.get(erf.input[0])
    if scaled is None or scaled.op_type not in ("Div", "Mul"):
        return None
    x = _constant_operand(inits, scaled, math.sqrt(2.0) if scaled.op_type == "Div" else 1 / math.sqrt(2.0))
    if x is None or (scaled.op_type == "Div" and scaled.input[0] != x):  # x/√2, not √2/x
        return None
    plus_one = _only_reader(readers, erf.output[0], "Add")
    if plus_one is None or _constant_operand(inits, plus_one, 1.0) != erf.output[0]:
        return None
    first = _only_reader(readers, plus_one.output[0], "Mul")
    if first is None:
        return None
    other = first.input[1] if first.input[0] == plus_one.output[0] else first.input[0]
    if other == x:  # x·(1 + erf) then ·0.5
        half = _only_reader(readers, first.output[0], "Mul")
        if half is None or _constant_operand(inits, half, 0.5) != first.output[0]:
            return None
        chain = [scaled, erf, plus_one, first, half]
    else:  # (0.5·x)·(1 + erf)
        half = producers.get(other)
        if half is None or half.op_type != "Mul" or _constant_operand(inits, half, 0.5) != x:
            return None
        if len(readers.get(half.output[0], [])) != 1:
            return None
        chain = [scaled, erf, plus_one, half, first]
    inner = {o for n in chain for o in n.output} - {chain[-1].output[0]}
    if any(len(readers.get(t, [])) != 1 or t in outputs for t in inner):
        return None  # an intermediate value is used elsewhere: keep the ops
    return x, chain, chain[-1].output[0]


def fuse_erf_gelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every erf-form GELU by one Gelu node (ONNX Gelu from opset 20, else onnxruntime's
    ``com.microsoft`` Gelu), in place (the pipeline rewrites its own prepared copy: no second
    copy of a large model's weights); returns the model."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    inits = {t.name: t for t in graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    domain = "" if opset >= 20 else "com.microsoft"
    replaced: dict[int, onnx.NodeProto] = {}  # id of a chain's last node -> its Gelu
    removed: set[int] = set()
    gone: set[str] = set()  # tensors only the replaced chains used
    chain_inputs: set[str] = set()  # their constants go when nothing else reads them
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        found = _gelu_nodes(inits, erf, producers, readers, outputs)
        if found is None:
            continue
        x, chain, result = found
        removed.update(id(n) for n in chain)
        gone.update(o for n in chain for o in n.output if o != result)
        chain_inputs.update(i for n in chain for i in n.input)
        replaced[id(chain[-1])] = helper.make_node("Gelu", [x], [result], name=f"{erf.name}_as_Gelu", domain=domain)
    if not replaced:
        return model
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in removed or id(n) in replaced]
    del graph.node[:]
    graph.node.extend(nodes)
    kept_info = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    read = {i for n in graph.node for i in n.input} | set().union(*map(subgraph_reads, graph.node)) | outputs
    kept_inits = [t for t in graph.initializer if t.name in read or t.name not in chain_inputs]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    if domain and not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, 1))
    logger.info("%d erf-form GELU(s) written as Gelu (%s)", len(replaced), domain or "ONNX opset 20")
    return model
