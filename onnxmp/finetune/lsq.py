"""LSQ fine-tuning (Esser et al. 2020): the training graph built from a QDQ model, and the QDQ
model written back from what was learned. Runs in the main environment (onnx, NumPy only);
the training itself runs in the separate onnxruntime-training environment (``trainer``).

Every quantizer of the QDQ model becomes ``v̂ = s·(round(clip(v/s + z, qmin, qmax)) − z)`` with
a trainable step size ``s`` (initialised from the QDQ scale; per channel for weights, per
tensor for activations; zero points stay fixed). ``round`` passes gradients straight through
(STE) and ``s``'s gradient is scaled by ``g = 1/√(N·Q_P)`` (N: weights of the layer, or
features of the activation), both built from standard ops with ``stop_gradient``. Weights train
too (initialised from the float model); a bias is rounded on the grid of its layer's input
scale × weight scale, as the int32 bias of the QDQ model is.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxmp.errors import ModelError
from onnxmp.quant import numerics

# x·2^45 is an integer in float32 whenever |x| >= 2^-21, so casting it to int64 and back is exact
_STOP_SCALE = float(2**45)


@dataclasses.dataclass(frozen=True)
class LsqQuantizer:
    """One quantizer of the training graph."""

    tensor: str  # the value it quantizes (an activation, or a weight initializer)
    scale: str  # the trainable step-size initializer
    kind: str  # "activation" or "weight"
    bits: int
    signed: bool
    axis: int | None  # per-channel axis (weights)


@dataclasses.dataclass(frozen=True)
class TrainingGraph:
    model: onnx.ModelProto
    quantizers: tuple[LsqQuantizer, ...]
    weights: tuple[str, ...]  # trainable float weights and biases
    outputs: tuple[str, ...]


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.count = 0

    def const(self, value, dtype=np.float32) -> str:
        self.count += 1
        name = f"lsq_const_{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        out = f"lsq_{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def stop_gradient(self, x: str) -> str:
        """``x`` with no gradient: through int64 and back (exact for |x| >= 2^-21, else off by
        less than 2^-45)."""
        big = self.op("Mul", [x, self.const(_STOP_SCALE)])
        back = self.op("Cast", [self.op("Cast", [big], to=TensorProto.INT64)], to=TensorProto.FLOAT)
        return self.op("Div", [back, self.const(_STOP_SCALE)])

    def scaled_gradient(self, x: str, g: float) -> str:
        """``x`` whose gradient is multiplied by ``g`` (value unchanged)."""
        scaled = self.op("Mul", [x, self.const(g)])
        rest = self.stop_gradient(self.op("Sub", [x, scaled]))
        return self.op("Add", [scaled, rest])

    def round_ste(self, x: str) -> str:
        """round(x) forward, identity backward."""
        rounded = self.stop_gradient(self.op("Round", [x]))
        return self.op("Add", [rounded, self.op("Sub", [x, self.stop_gradient(x)])])

    def bias_quant(self, bias: str, input_scale: str, weight_scale: str, out: str) -> None:
        """out = round(b / S)·S with S = input scale × weight scale, as the int32 bias the QDQ
        model stores (S is a constant to the gradient; b passes straight through)."""
        scale = self.op("Mul", [self.stop_gradient(input_scale), self.stop_gradient(weight_scale)])
        q = self.round_ste(self.op("Div", [bias, scale]))
        self.nodes.append(helper.make_node("Mul", [q, scale], [out], name=out + "_lsq"))

    def fake_quant(self, x: str, scale: str, zero: np.ndarray, qmin: int, qmax: int, g: float, out: str,
                   shape: list[int] | None) -> None:
        """out = s·(round(clip(x/s + z, qmin, qmax)) − z), s's gradient scaled by g: clipping
        before rounding, as in the paper, so the gradient of x stops exactly where x/s leaves
        the grid (the value is the same as rounding first, since the bounds are integers)."""
        s = self.scaled_gradient(scale, g)
        if shape is not None:
            s = self.op("Reshape", [s, self.const(shape, np.int64)])
        z = self.const(zero.reshape(shape) if shape is not None else zero)
        clipped = self.op("Clip", [self.op("Add", [self.op("Div", [x, s]), z]), self.const(qmin), self.const(qmax)])
        q = self.op("Sub", [self.round_ste(clipped), z])
        self.nodes.append(helper.make_node("Mul", [q, s], [out], name=out + "_lsq"))


def _bits_of(dtype: int) -> tuple[int, bool]:
    return {TensorProto.UINT8: (8, False), TensorProto.UINT16: (16, False), TensorProto.INT8: (8, True),
            TensorProto.INT16: (16, True), TensorProto.INT4: (4, True), TensorProto.UINT4: (4, False),
            TensorProto.INT32: (32, True)}[dtype]


def _range(bits: int, signed: bool) -> tuple[int, int]:
    return numerics.signed_range(bits) if signed else numerics.unsigned_range(bits)


def training_graph(qdq: onnx.ModelProto, float_model: onnx.ModelProto) -> TrainingGraph:
    """The QDQ model as a trainable LSQ graph (see the module docstring). Weights start from
    ``float_model``'s values (same names: onnxmp's export keeps them)."""
    inits = {t.name: t for t in qdq.graph.initializer}
    floats = {t.name: t for t in float_model.graph.initializer}
    b = _Builder()
    quantizers: list[LsqQuantizer] = []
    trainable: list[str] = []
    kept_inits: list[TensorProto] = []
    consumed: set[str] = set()
    producers = {o: n for n in qdq.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in qdq.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for node in qdq.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a weight or bias
            q_name, s_name = node.input[0], node.input[1]
            q_tensor = inits[q_name]
            bits, signed = _bits_of(q_tensor.data_type)
            scale = numpy_helper.to_array(inits[s_name]).astype(np.float32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            dq = (numpy_helper.to_array(q_tensor).astype(np.float32)
                  * scale.reshape([-1 if i == axis % len(q_tensor.dims) else 1 for i in range(len(q_tensor.dims))])
                  if scale.ndim else numpy_helper.to_array(q_tensor).astype(np.float32) * scale)
            name = node.output[0]
            start = numpy_helper.to_array(floats[name]).astype(np.float32) if name in floats else dq
            consumed |= {q_name, s_name, *node.input[2:]}
            if bits == 32:  # int32 bias: quantized on the layer's (learned) input scale times weight scale
                float_name = name + "_lsq_float"
                kept_inits.append(numpy_helper.from_array(start, float_name))
                trainable.append(float_name)
                layer = readers[name][0]
                b.bias_quant(float_name, layer.input[0] + "_lsq_scale", layer.input[1] + "_lsq_scale", name)
                continue
            float_name = name + "_lsq_float"
            kept_inits.append(numpy_helper.from_array(start, float_name))
            trainable.append(float_name)
            step = name + "_lsq_scale"
            kept_inits.append(numpy_helper.from_array(scale, step))
            qmin, qmax = _range(bits, signed)
            shape = None if scale.ndim == 0 else [-1 if i == axis % start.ndim else 1 for i in range(start.ndim)]
            per_channel = start.size // max(scale.size, 1)
            b.fake_quant(float_name, step, np.zeros(scale.shape, np.float32), qmin, qmax,
                         1.0 / np.sqrt(per_channel * qmax), name, shape)
            quantizers.append(LsqQuantizer(name, step, "weight", bits, signed, axis if shape else None))
        elif node.op_type == "DequantizeLinear":  # an activation's Q → DQ pair
            q_node = producers.get(node.input[0])
            if q_node is None or q_node.op_type != "QuantizeLinear":
                raise ModelError(f"{node.name}: a DequantizeLinear not fed by a QuantizeLinear; not an onnxmp QDQ model")
            bits, signed = _bits_of(inits[q_node.input[2]].data_type)
            scale = numpy_helper.to_array(inits[q_node.input[1]]).astype(np.float32)
            zero = numpy_helper.to_array(inits[q_node.input[2]]).astype(np.float32)
            consumed |= {q_node.input[1], q_node.input[2], *node.input[1:]}
            step = node.output[0] + "_lsq_scale"
            kept_inits.append(numpy_helper.from_array(scale, step))
            qmin, qmax = _range(bits, signed)
            features = _features(float_model, node.output[0]) or _features(qdq, q_node.input[0]) or 1
            b.fake_quant(q_node.input[0], step, zero, qmin, qmax, 1.0 / np.sqrt(features * qmax), node.output[0], None)
            quantizers.append(LsqQuantizer(node.output[0], step, "activation", bits, signed, None))
    nodes = [m for n in qdq.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
             for m in _differentiable(n, b)]
    kept_inits += [t for t in qdq.graph.initializer if t.name not in consumed]
    graph = helper.make_graph(b.nodes + nodes, qdq.graph.name + "_lsq", list(qdq.graph.input), list(qdq.graph.output),
                              kept_inits + b.inits)
    model = helper.make_model(graph, opset_imports=list(qdq.opset_import), ir_version=min(qdq.ir_version, 10))
    model = _topological(model)
    return TrainingGraph(model, tuple(quantizers), tuple(trainable), tuple(o.name for o in qdq.graph.output))


def _differentiable(node: onnx.NodeProto, b: _Builder) -> list[onnx.NodeProto]:
    """The node, or ops with registered gradients computing the same: onnxruntime-training has no
    gradient for HardSigmoid, which is max(0, min(1, alpha·x + beta))."""
    if node.op_type != "HardSigmoid":
        return [node]
    attrs = {a.name: a.f for a in node.attribute}
    scaled = b.const(attrs.get("alpha", 0.2))
    shifted = b.const(attrs.get("beta", 0.5))
    mul, add = node.name + "_lsq_mul", node.name + "_lsq_add"
    return [helper.make_node("Mul", [node.input[0], scaled], [mul], name=mul),
            helper.make_node("Add", [mul, shifted], [add], name=add),
            helper.make_node("Clip", [add, b.const(0.0), b.const(1.0)], list(node.output), name=node.name)]


def _features(model: onnx.ModelProto, tensor: str) -> int:
    """Elements per sample of an activation (for LSQ's gradient scale); 0 when unknown."""
    for info in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if info.name == tensor and info.type.tensor_type.HasField("shape"):
            dims = [d.dim_value for d in info.type.tensor_type.shape.dim[1:]]
            if dims and all(d > 0 for d in dims):
                return int(np.prod(dims))
    return 0


def _topological(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes reordered so every input is made before it is read."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ModelError(f"cannot order the training graph: {rest[0].name} reads {set(rest[0].input) - ready}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
    return model
