"""Stage 1: load and prepare a float model.

``load_model`` reads a file (external data included) and checks it is a float model onnxmp can
work on. ``prepare_model`` is functional: it returns a new model with Constant nodes turned
into initializers, BatchNormalization folded into the Conv before it, the opset raised to 21
(INT4 and UINT16 QuantizeLinear/DequantizeLinear need it; lowered where onnxruntime has no
QuantizeLinear at the model's opset) and shapes inferred. Node and tensor names of the float
model are kept so results map back to it.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnx.external_data_helper import load_external_data_for_model

from onnxmp.errors import AlreadyQuantizedError, ModelError
from onnxmp.model import large
from onnxmp.model.folds import fold_affine, fold_batchnorm
from onnxmp.model.graph import WEIGHTED_OPS
from onnxmp.model.large import fill_from, is_large, light_copy

logger = logging.getLogger(__name__)

TARGET_OPSET = 21
MIN_OPSET = 7  # older models are converted to opset 21 by onnx's version converter
_QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "MatMulNBits", "QGemm",
}
_INTEGER_WEIGHT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4,
                         onnx.TensorProto.UINT4}


def load_model(path: str) -> onnx.ModelProto:
    """Read an ONNX file; raise ModelError if it is not a usable model. External data is read
    too, unless it is over ``large.LARGE_BYTES``: then ``prepare_model(model, base_dir)`` reads
    it, once, into the prepared model."""
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such file; give the path of a float .onnx model")
    try:
        model = onnx.load(path, load_external_data=False)
        external = external_bytes(model) > large.LARGE_BYTES
        if not external:
            read_external_data(model, os.path.dirname(os.path.abspath(path)))
    except Exception as exc:  # protobuf raises several types for garbage input
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise ModelError(f"{path}: the model has no nodes (is it really an ONNX model?)")
    try:
        onnx.checker.check_model(path if external else model)
    except Exception as exc:  # ValidationError, or decode errors of corrupted strings
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path}: the model is malformed: {first_line}") from exc
    check_float_model(model, path)
    return model


@functools.cache
def runs_qdq(opset: int) -> bool:
    """True when onnxruntime runs, at this opset, every QuantizeLinear / DequantizeLinear the export
    writes (uint4 / uint8 / uint16 activations; int4 / int8 / int16 per-channel weights; int32 biases)."""
    nodes, inits = [], [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                        helper.make_tensor("sc", TensorProto.FLOAT, [2], [0.1, 0.2])]
    for i, elem in enumerate((TensorProto.UINT4, TensorProto.UINT8, TensorProto.UINT16)):
        inits.append(helper.make_tensor(f"z{i}", elem, [], [0]))
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", f"z{i}"], [f"q{i}"]),
                  helper.make_node("DequantizeLinear", [f"q{i}", "s", f"z{i}"], [f"y{i}"])]
    for elem in (TensorProto.INT4, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32):
        inits += [helper.make_tensor(f"w{elem}", elem, [2, 2], [1, -1, 0, 1]),
                  helper.make_tensor(f"wz{elem}", elem, [2], [0, 0])]
        nodes.append(helper.make_node("DequantizeLinear", [f"w{elem}", "sc", f"wz{elem}"], [f"d{elem}"], axis=0))
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None)
                               for n in nodes if n.op_type == "DequantizeLinear"], inits)
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    try:  # the probe is tiny and standard: any failure to load means onnxruntime lacks a kernel
        options = ort.SessionOptions()
        options.log_severity_level = 3  # a refusal is an answer here, not an error to log
        ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def default_opset(model: onnx.ModelProto) -> int:
    """The model's version of the default ONNX domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelError("the model imports no default-domain opset; it is not a standard ONNX model")


def check_float_model(model: onnx.ModelProto, path: str = "model") -> None:
    """Refuse models that are already quantized or older than opset 13."""
    found = sorted({node.op_type for node in model.graph.node if node.op_type in _QUANTIZED_OPS})
    if found:
        raise AlreadyQuantizedError(
            f"{path}: already quantized (has {', '.join(found)}); give onnxmp the float model"
        )
    integer_weights = [t.name for t in model.graph.initializer if t.data_type in _INTEGER_WEIGHT_TYPES]
    if integer_weights:
        raise AlreadyQuantizedError(
            f"{path}: has integer weights ({integer_weights[0]}, ...); give onnxmp the float model"
        )
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ModelError(
            f"{path}: opset {opset} is older than {MIN_OPSET}; re-export the model at opset "
            f"{MIN_OPSET} or later (or convert it with onnx.version_converter)"
        )


def read_external_data(model: onnx.ModelProto, base_dir: str) -> None:
    """In place: read the initializers stored in external files into the model; they end up
    exactly as if they had been stored inline (so results and cache keys do not depend on it)."""
    load_external_data_for_model(model, base_dir)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.DEFAULT:
            tensor.ClearField("data_location")


def external_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer data stored outside the model file (not loaded yet)."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next((e.value for e in tensor.external_data if e.key == "length"), 0) or 0)
    return total


def prepare_model(model: onnx.ModelProto, base_dir: str | None = None) -> onnx.ModelProto:
    """Return a prepared copy: opset 21, constants as initializers, BN (and a BN an exporter
    wrote as Mul and Add) folded, shapes inferred.
    Weight bytes are copied once: a large model's graph is transformed without them, then they
    are read (from ``base_dir`` where ``load_model`` left them in external files) or copied in."""
    prepared = light_copy(model)
    prepared = upgrade_opset(prepared)
    drop_initializer_inputs(prepared.graph)
    symbolic_unknown_dims(prepared.graph)
    constants_to_initializers(prepared.graph)
    name_nodes(prepared.graph)
    fill_from(prepared, model)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in prepared.graph.initializer):
        if base_dir is None:
            raise ModelError("the model's weights are in external files; give prepare_model the folder they are in")
        read_external_data(prepared, base_dir)
    check_finite_initializers(prepared.graph)
    folded = fold_batchnorm(prepared.graph)
    if folded:
        logger.info("folded %d BatchNormalization node(s) into Conv", folded)
    folded = fold_affine(prepared.graph)
    if folded:
        logger.info("folded %d per-channel Mul/Add node(s) into the Conv before them", folded)
    return infer_shapes(prepared)


def symbolic_unknown_dims(graph: onnx.GraphProto) -> None:
    """Negative sizes (some exporters write -1 for "any") become named symbolic dimensions: -1
    is not a valid size, and onnxruntime-training crashes on it (SIGSEGV on ppocr_cls)."""
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()
                dim.dim_param = f"{value.name}_dim{axis}"


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert to opset 21 so INT4 weights and UINT16 activations can be expressed. A model newer
    than the QuantizeLinear / DequantizeLinear of the installed onnxruntime is converted down to
    the newest opset onnxruntime runs them at, so that the output loads."""
    opset = default_opset(model)
    if opset < TARGET_OPSET:
        model = _convert_opset(model, TARGET_OPSET, f"re-export it at opset {TARGET_OPSET}")
    elif not runs_qdq(opset):
        target = next((v for v in range(opset - 1, TARGET_OPSET - 1, -1) if runs_qdq(v)), TARGET_OPSET)
        model = _convert_opset(model, target, f"the installed onnxruntime runs QuantizeLinear only up to opset "
                                              f"{target}: re-export the model at opset {target} or upgrade onnxruntime")
    model.ir_version = max(model.ir_version, 10)
    return model


def _convert_opset(model: onnx.ModelProto, target: int, advice: str) -> onnx.ModelProto:
    opset = default_opset(model)
    logger.info("converting the model from opset %d to %d", opset, target)
    try:
        return version_converter.convert_version(model, target)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot convert the model from opset {opset} to {target} ({first_line}); {advice}") from exc


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX shape inference; a failure here means the model is inconsistent. A large model's
    inferred shapes are copied onto it (inference runs on its light copy)."""
    try:
        if not is_large(model):
            return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        inferred = onnx.shape_inference.infer_shapes(light_copy(model), strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed on the model: {exc}") from exc
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for mine, theirs in zip(model.graph.output, inferred.graph.output, strict=True):
        mine.type.CopyFrom(theirs.type)
    return model


def drop_initializer_inputs(graph: onnx.GraphProto) -> None:
    """In place: initializers also listed as graph inputs (IR < 4 models, exports with
    ``keep_initializers_as_inputs``) stop being inputs. onnxmp quantizes them as the constants
    they are, and a quantized weight must not stay an input beside its DequantizeLinear."""
    inits = {t.name for t in graph.initializer}
    kept = [i for i in graph.input if i.name not in inits]
    if len(kept) < len(graph.input):
        logger.info("%d initializer(s) listed as graph inputs are treated as constants", len(graph.input) - len(kept))
        del graph.input[:]
        graph.input.extend(kept)


def constants_to_initializers(graph: onnx.GraphProto) -> None:
    """In place: turn top-level ``Constant`` nodes holding a tensor into initializers, so that
    weights exported as Constant nodes are found and quantized like any other weight."""
    kept = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.attribute) == 1:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def check_finite_initializers(graph: onnx.GraphProto) -> None:
    """Refuse float weights holding NaN or Inf: no scale can represent them. Other constants
    may hold them on purpose (an attention mask of -inf) and stay float."""
    weights = {name for node in graph.node if node.op_type in (*WEIGHTED_OPS, "BatchNormalization")
               for name in node.input[1:]}  # BatchNormalization's fold into a Conv weight
    for tensor in graph.initializer:
        if tensor.name in weights and tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                           onnx.TensorProto.FLOAT16):
            values = numpy_helper.to_array(tensor)
            if not np.isfinite(values).all():
                raise ModelError(f"initializer {tensor.name!r} holds NaN or Inf values; the model is corrupted "
                                 "or was exported wrongly")


def name_nodes(graph: onnx.GraphProto) -> None:
    """In place: give unnamed (or duplicate-named) nodes a unique name, ``<op_type>_<index>``,
    since groups, reports and caches refer to nodes by name. Existing unique names are kept."""
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            base = node.name or node.op_type
            node.name = f"{base}_{index}"
            while node.name in seen:
                node.name += "_"
        seen.add(node.name)
