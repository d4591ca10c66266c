"""Folds of the prepare stage: normalisations an exporter left after a Conv, merged into its
weight and bias, so that the Conv's output is the tensor the next op reads (where a quantizer
on the Conv's raw output would keep the runtime from fusing, and cost a float op per layer).
Each fold is exact in real arithmetic; it computes in float64 and stores float32."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxmp.model.graph import GraphIndex, subgraph_reads

# ops through which a constant operand is computed from initializers (a per-channel scale the
# exporter reshaped to broadcast over the Conv's output)
_CONSTANT_OPS = frozenset({"Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast"})


def _conv_parameters(conv: onnx.NodeProto, inits: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The Conv's weight and bias (zeros where it has none) in float64, or None where either is
    computed at run time."""
    if conv.input[1] not in inits or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits):
        return None
    weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0]))
    return weight, bias


def _replace_parameters(graph: onnx.GraphProto, conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray,
                        after: onnx.NodeProto) -> None:
    """Give ``conv`` the new weight and bias (new initializers: the old ones may be shared) and
    the output of ``after``, which is removed."""
    w_name, b_name = conv.name + "/folded_weight", conv.name + "/folded_bias"
    graph.initializer.append(numpy_helper.from_array(weight.astype(np.float32), unique_name(graph, w_name)))
    graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), unique_name(graph, b_name)))
    del conv.input[1:]
    conv.input.extend([graph.initializer[-2].name, graph.initializer[-1].name])
    conv.output[0] = after.output[0]  # downstream keeps reading the removed node's output name
    graph.node.remove(after)


def _only_reader(conv: onnx.NodeProto, index: GraphIndex) -> onnx.NodeProto | None:
    """The one node reading the Conv's output, where nothing else (a graph output) needs it. The
    index is built once per pass: a fold changes only its own Conv's output and removes the one
    node that read it, so the index stays right for the other Convs."""
    out = conv.output[0]
    found = index.readers.get(out, [])
    if len(found) != 1 or out in index.graph_outputs:
        return None
    return found[0]


def _try_fold_pair(graph: onnx.GraphProto, conv: onnx.NodeProto, index: GraphIndex) -> bool:
    """Fold the BatchNormalization reading ``conv``'s output, if that is exact; True if done."""
    bn = _only_reader(conv, index)
    if bn is None or bn.op_type != "BatchNormalization" or len(bn.output) != 1:
        return False  # training-mode BN, or the raw conv output is needed elsewhere
    inits = index.initializers
    parameters = _conv_parameters(conv, inits)
    if parameters is None or not all(name in inits for name in bn.input[1:5]):
        return False
    weight, bias = parameters
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
    factor = gamma / np.sqrt(var + eps)
    _replace_parameters(graph, conv, weight * factor.reshape(-1, *([1] * (weight.ndim - 1))),
                        (bias - mean) * factor + beta, bn)
    return True


def fold_batchnorm(graph: onnx.GraphProto) -> int:
    """In place: fold each Conv → BatchNormalization pair into the Conv; returns how many."""
    index = GraphIndex.build(graph)
    folded = sum(_try_fold_pair(graph, node, index) for node in list(graph.node)
                 if node.op_type == "Conv" and len(node.input) >= 2)
    if folded:
        remove_unused_initializers(graph)
    return folded


def _constant_value(name: str, inits: dict, producers: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    """The value of a tensor computed from initializers alone through ``_CONSTANT_OPS``, or None."""
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is None or node.op_type not in _CONSTANT_OPS:
        return None
    feeds = {}
    for source in node.input:
        if source:
            value = _constant_value(source, inits, producers)
            if value is None:
                return None
            feeds[source] = value
    return ReferenceEvaluator(node).run(None, feeds)[0]


def _channel_vector(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as one number per output channel, where it broadcasts over a Conv output of
    ``rank`` dimensions along the channel axis only (a scalar, (C, 1, 1), (1, C, 1, 1)), else None."""
    if not np.issubdtype(value.dtype, np.floating) or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,))


def _try_fold_affine(graph: onnx.GraphProto, conv: onnx.NodeProto, index: GraphIndex) -> bool:
    """Fold the Mul or Add by a per-channel constant reading ``conv``'s output; True if done."""
    op = _only_reader(conv, index)
    if op is None or op.op_type not in ("Mul", "Add") or len(op.input) != 2 or op.input[0] == op.input[1]:
        return False
    parameters = _conv_parameters(conv, index.initializers)
    other = op.input[1] if op.input[0] == conv.output[0] else op.input[0]
    value = _constant_value(other, index.initializers, index.producers)
    if parameters is None or value is None:
        return False
    weight, bias = parameters
    vector = _channel_vector(value, weight.shape[0], weight.ndim)
    if vector is None:
        return False
    if op.op_type == "Mul":
        weight, bias = weight * vector.reshape(-1, *([1] * (weight.ndim - 1))), bias * vector
    else:
        bias = bias + vector
    _replace_parameters(graph, conv, weight, bias, op)
    return True


def fold_affine(graph: onnx.GraphProto) -> int:
    """In place: fold each Mul and Add by a per-channel constant that alone reads a Conv's output
    (a BatchNormalization written as Mul and Add, a bias added apart: paddle2onnx's OCR models
    hold 2-3 per Conv) into the Conv, repeatedly; returns how many. onnxruntime fuses them in
    the float model, but not past a quantizer on the Conv's output."""
    folded = 0
    while True:
        index = GraphIndex.build(graph)
        done = sum(_try_fold_affine(graph, node, index) for node in list(graph.node)
                   if node.op_type == "Conv" and len(node.input) >= 2)
        folded += done
        if not done:
            break
    if folded:
        remove_dead_nodes(graph)
        remove_unused_initializers(graph)
    return folded


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """In place: drop nodes none of whose outputs is read (the constant computations a fold
    left behind), until none is left."""
    while True:
        used = _read_names(graph)
        dead = [node for node in graph.node if not any(o in used for o in node.output if o)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    """In place: drop initializers no node reads (e.g. the float weights replaced by a fold)."""
    used = _read_names(graph)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor a node reads (subgraphs included) or the graph outputs."""
    return {name for node in graph.node for name in [*node.input, *subgraph_reads(node)]} | {o.name for o in graph.output}


def unique_name(graph: onnx.GraphProto, base: str) -> str:
    """A tensor name not yet used in ``graph``, derived from ``base``."""
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    taken |= {o for node in graph.node for o in node.output}
    name, index = base, 1
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    return name
