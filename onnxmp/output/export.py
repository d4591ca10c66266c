"""Stage 8: write the chosen assignment as a standard QDQ ONNX model.

Activations get QuantizeLinear → DequantizeLinear pairs (uint4 / uint8 / uint16, per tensor); weights
are stored in their integer type (INT4 packed two per byte, INT8, INT16) behind a per-channel
DequantizeLinear; biases become int32 with scale = input scale × weight scale. The tensor each
consumer reads keeps its original name (the producer's output is renamed ``<name>_float``), and
every original node keeps its name, so results map back to the float model. New tensors are
named ``<name>_<role>``, with a numeric suffix where the model already uses that name.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxmp.model.graph import all_tensor_names
from onnxmp.model.large import fill_from, light_copy
from onnxmp.quant import numerics
from onnxmp.quant.candidates import Assignment
from onnxmp.quant.groups import QuantPlan
from onnxmp.quant.params import QuantParams

logger = logging.getLogger(__name__)

_WEIGHT_TYPES = {4: TensorProto.INT4, 8: TensorProto.INT8, 16: TensorProto.INT16}
_ACT_TYPES = {4: (TensorProto.UINT4, np.uint8), 8: (TensorProto.UINT8, np.uint8), 16: (TensorProto.UINT16, np.uint16)}
_ACT_BITS = {elem_type: bits for bits, (elem_type, _) in _ACT_TYPES.items()}


def integer_tensor(name: str, values: np.ndarray, bits: int) -> TensorProto:
    """A signed integer initializer of ``bits`` bits; INT4 packed two values per byte."""
    tensor = TensorProto()
    tensor.name = name
    tensor.dims.extend(values.shape)
    tensor.data_type = _WEIGHT_TYPES[bits] if bits != 32 else TensorProto.INT32
    if bits == 4:
        tensor.raw_data = numerics.pack_int4(values)
    else:
        dtype = {8: np.int8, 16: np.int16, 32: np.int32}[bits]
        tensor.raw_data = np.ascontiguousarray(values, dtype=dtype).tobytes()
    return tensor


def _float_tensor(name: str, values: np.ndarray) -> TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


class _FreshNames:
    """Tensor names not used by the model nor handed out before: ``base``, else ``base_1``, ..."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.taken = all_tensor_names(model.graph)

    def __call__(self, base: str) -> str:
        name, index = base, 1
        while name in self.taken:
            name, index = f"{base}_{index}", index + 1
        self.taken.add(name)
        return name


def _activation_scale_zero_point(name: str, scale: np.float32, zp: int, bits: int, fresh: _FreshNames
                                 ) -> tuple[str, str, list[TensorProto]]:
    """Names and initializers of a per-tensor scale and unsigned ``bits``-bit zero point."""
    elem_type, np_type = _ACT_TYPES[bits]
    s_name, z_name = fresh(f"{name}_scale"), fresh(f"{name}_zero_point")
    return s_name, z_name, [_float_tensor(s_name, np.float32(scale)), helper.make_tensor(z_name, elem_type, [], [np_type(zp)])]


def _activation_qdq(name: str, source: str, scale: np.float32, zp: int, bits: int, fresh: _FreshNames
                    ) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Q/DQ nodes and their parameter initializers turning ``source`` into ``name``."""
    s_name, z_name, inits = _activation_scale_zero_point(name, scale, zp, bits, fresh)
    q_name = fresh(f"{name}_quantized")
    nodes = [
        helper.make_node("QuantizeLinear", [source, s_name, z_name], [q_name], name=f"{name}_QuantizeLinear"),
        helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [name], name=f"{name}_DequantizeLinear"),
    ]
    return nodes, inits


def _weight_dq(name: str, q: np.ndarray, scale: np.ndarray, axis: int, bits: int, fresh: _FreshNames
               ) -> tuple[onnx.NodeProto, list[TensorProto]]:
    """A per-channel DequantizeLinear producing ``name`` from integer values."""
    q_name, s_name, z_name = fresh(f"{name}_quantized"), fresh(f"{name}_scale"), fresh(f"{name}_zero_point")
    zeros = np.zeros(scale.shape, np.int32)
    inits = [integer_tensor(q_name, q, bits), _float_tensor(s_name, scale), integer_tensor(z_name, zeros, bits)]
    node = helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [name], name=f"{name}_DequantizeLinear",
                            axis=axis)
    return node, inits


def export_qdq(model: onnx.ModelProto, plan: QuantPlan, params: QuantParams,
               assignment: Assignment) -> onnx.ModelProto:
    """Functional: the QDQ model for ``assignment`` (a new model; ``model`` is not changed)."""
    out = light_copy(model)  # big weights' bytes are copied at the end, only for those left float
    graph = out.graph
    act_group, weight_group = plan.group_of_activation(), plan.group_of_weight()
    graph_inputs = {i.name for i in graph.input}
    head_nodes: list[onnx.NodeProto] = []
    new_inits: list[TensorProto] = []
    replaced: set[str] = set()
    after: dict[str, list[onnx.NodeProto]] = {}
    renamed_inputs: dict[str, str] = {}
    float_names: dict[str, str] = {}  # producer outputs renamed, ahead of their Q/DQ pair
    fresh = _FreshNames(model)
    for name in plan.activations:
        if assignment[act_group[name]].is_float:  # left float: no quantizer
            continue
        bits = assignment[act_group[name]].a_bits
        scale, zp = params.activation(name, bits)
        if name in graph_inputs:
            target = fresh(f"{name}_dequantized")
            nodes, inits = _activation_qdq(target, name, scale, zp, bits, fresh)
            renamed_inputs[name] = target
            head_nodes.extend(nodes)
        else:
            float_names[name] = fresh(f"{name}_float")
            nodes, inits = _activation_qdq(name, float_names[name], scale, zp, bits, fresh)
            after[name] = nodes
        new_inits.extend(inits)
    for op in plan.weighted_ops:
        cand = assignment[weight_group[op.weight]]
        if cand.is_float:  # weights and bias stay the float initializers
            continue
        if op.weight not in replaced:
            qw = params.weight(op, cand.w_bits)
            node, inits = _weight_dq(op.weight, qw.q, qw.scale, op.axis, cand.w_bits, fresh)
            head_nodes.append(node)
            new_inits.extend(inits)
            replaced.add(op.weight)
        bias = params.bias(op, cand.w_bits, cand.a_bits)
        if bias is not None and op.bias not in replaced:
            node, inits = _weight_dq(op.bias, bias.q, bias.scale, 0, 32, fresh)
            head_nodes.append(node)
            new_inits.extend(inits)
            replaced.add(op.bias)
        elif bias is None and op.bias:
            logger.info("bias %s of %s kept float at %s: int32 would overflow, or its input stays float",
                        op.bias, op.node, cand)
    nodes = list(head_nodes)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renamed_inputs.get(name, name)
        produced = [name for name in node.output if name in after]
        for i, name in enumerate(node.output):
            if name in after:
                node.output[i] = float_names[name]
        nodes.append(node)
        for name in produced:
            nodes.extend(after[name])
    kept = [t for t in graph.initializer if t.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    fill_from(out, model)
    return out


ELEMENTWISE_OPS = ("Add", "Sub", "Mul", "Div", "Max", "Min")
TABLE_OPS = ("Gather", "Slice")  # read rows of a constant table (embeddings) into a tensor


def _constant_operand_type(node: onnx.NodeProto, inits: dict[str, TensorProto], dq_of: dict[str, onnx.NodeProto],
                           q_readers: dict[str, onnx.NodeProto]) -> int | None:
    """The activation type a float constant operand of ``node`` is stored in: that of a
    quantized activation operand (elementwise ops), or of the quantized output (table reads)."""
    if node.op_type in ELEMENTWISE_OPS:
        zps = [inits[dq_of[i].input[2]] for i in node.input if i in dq_of and dq_of[i].input[0] not in inits]
        return zps[0].data_type if zps else None
    if node.op_type in TABLE_OPS and node.output[0] in q_readers:
        return inits[q_readers[node.output[0]].input[2]].data_type
    return None


def dequantize_constant_operands(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which every float constant operand of an elementwise op whose other operand is
    a quantized activation, and every float constant table a Gather/Slice reads into a quantized
    tensor, is stored quantized behind a DequantizeLinear in that activation's type (an operand per
    tensor, range widened to hold 0, so a scalar lands exactly on its end of the range; a table on
    its output's grid, which HTP requires and which changes no value). Qualcomm's HTP
    backend refuses to finalize a graph holding such float constants (QNN_COMMON_ERROR_MEM_ALLOC;
    ppocr_cls's hard-swish x·relu6(x+3)/6, MiniLM's word-embedding Gather)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    dq_of = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    q_readers = {n.input[0]: n for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    fresh = _FreshNames(out)
    head: list[onnx.NodeProto] = []
    done: dict[tuple[str, int], str] = {}
    for node in graph.node:
        elem_type = _constant_operand_type(node, inits, dq_of, q_readers)
        if elem_type is None:
            continue
        bits = _ACT_BITS[elem_type]
        for k, name in enumerate(node.input[:1] if node.op_type in TABLE_OPS else node.input):
            if name not in inits or inits[name].data_type != TensorProto.FLOAT or (name, elem_type) in done:
                node.input[k] = done.get((name, elem_type), name)
                continue
            value = onnx.numpy_helper.to_array(inits[name]).astype(np.float32)
            target, q_name = fresh(f"{name}_dequantized"), fresh(f"{name}_quantized")
            if node.op_type in TABLE_OPS:  # on the output's grid: Gather(Q(table)) = Q(Gather(table)), exactly
                _, s_name, z_name = q_readers[node.output[0]].input
                scale = onnx.numpy_helper.to_array(inits[s_name])
                zp = int(onnx.numpy_helper.to_array(inits[z_name]))
            else:
                scale, zp = numerics.activation_params(min(float(value.min()), 0.0), max(float(value.max()), 0.0), bits)
                s_name, z_name, params = _activation_scale_zero_point(name, scale, zp, bits, fresh)
                graph.initializer.extend(params)
            qmin, qmax = numerics.unsigned_range(bits)
            graph.initializer.append(_unsigned_tensor(q_name, np.clip(np.round(value / scale) + zp, qmin, qmax), bits))
            head.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [target],
                                         name=f"{target}_DequantizeLinear"))
            done[(name, elem_type)] = node.input[k] = target
    nodes = head + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    still_read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    replaced = {name for name, _ in done}  # a float constant no longer read is not kept
    kept = [t for t in graph.initializer
            if t.name in still_read or t.name not in replaced or t.data_type != TensorProto.FLOAT]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out


def _unsigned_tensor(name: str, q: np.ndarray, bits: int) -> TensorProto:
    """An unsigned integer initializer (uint4 / uint8 / uint16) of integer values ``q``."""
    elem_type, np_type = _ACT_TYPES[bits]
    if bits == 4:
        return helper.make_tensor(name, elem_type, list(q.shape), q.astype(np_type).ravel())
    return onnx.numpy_helper.from_array(np.ascontiguousarray(q, dtype=np_type), name)
