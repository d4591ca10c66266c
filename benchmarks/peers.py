"""Peers run on the same model and data, for side-by-side tables: onnxruntime's quantize_static,
and for Qualcomm's HTP onnxruntime's own QNN flow (``ort_quantize_qnn_w8a8``)."""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

Data = dict[str, np.ndarray] | list[dict[str, np.ndarray]]


class _Reader(CalibrationDataReader):
    """``arrays`` (samples along the first axis) in runs of ``batch`` samples, or a list of whole
    feeds (e.g. a sequence plus state), one run each, as given."""

    def __init__(self, arrays: Data, batch: int = 16) -> None:
        if isinstance(arrays, dict):
            n = len(next(iter(arrays.values())))
            arrays = [{k: v[i:i + batch] for k, v in arrays.items()} for i in range(0, n, batch)]
        self._feeds = iter(arrays)

    def get_next(self):
        return next(self._feeds, None)


def ort_quantize_static_w8a8(model_path: str, arrays: Data, out_path: str, batch: int = 16, opset: int | None = None,
                             skip_symbolic_shape: bool = False) -> None:
    """onnxruntime's recommended static QDQ flow: pre-process, then per-channel INT8 weights and
    UINT8 activations calibrated with min/max on ``arrays`` (samples, or a list of whole feeds).
    ``opset``: first convert a model of an older opset to it; ``skip_symbolic_shape``: skip
    onnxruntime's symbolic shape inference in the pre-processing (see ``static_ways``)."""
    model_path = os.path.abspath(model_path)  # before the working directory changes below
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        if opset is not None:
            model_path = _at_least_opset(model_path, opset, os.path.join(tmp, f"opset{opset}.onnx"))
        with contextlib.chdir(tmp):  # it writes shape-inference scratch files into the working directory
            quant_pre_process(model_path, pre, skip_symbolic_shape=skip_symbolic_shape)
        quantize_static(pre, out_path, _Reader(arrays, batch), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def ort_quantize_qnn_w8a8(model: onnx.ModelProto, arrays: Data, out_path: str) -> None:
    """onnxruntime's documented flow for its QNN execution provider, W8A8: ``qnn_preprocess_model``
    (fusions QNN runs as one op), then ``get_qnn_qdq_config`` (the overrides HTP requires, every
    constant operand quantized) with per-channel INT8 weights and UINT8 activations calibrated
    with min/max on ``arrays``, each sample one run. ``model``: static shapes at one sample (as
    HTP needs), opset 13 or later. The plain ``quantize_static`` model leaves float constant
    operands (hard-swish's ``/6``) that make the HTP backend refuse whole graphs (qnn_htp.py).
    Constant nodes go in as initializers: the flow (onnxruntime 1.32) quantizes a Constant node's
    output wherever it is read, a Resize's ``scales`` included: ppocr_det's [1, 1, 2, 2] become
    [0.996, 0.996, 2, 2], the Resize drops one of 96 channels and the model stops at the Add
    after it. Held as initializers, only the operands it quantizes by design are."""
    from onnxruntime.quantization import quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    from onnxmp.model.loader import constants_to_initializers  # here: cold_speed.py imports this module bare

    with tempfile.TemporaryDirectory() as tmp:
        source, pre = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "pre.onnx")
        bare = onnx.ModelProto()
        bare.CopyFrom(model)
        constants_to_initializers(bare.graph)
        del bare.metadata_props[:]  # qnn_preprocess_model (onnxruntime 1.32) fails on a model that has any
        onnx.save(bare, source)
        if not qnn_preprocess_model(source, pre):  # False: nothing to fuse, no file written
            pre = source
        config = get_qnn_qdq_config(pre, _Reader(arrays, 1), activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8, per_channel=True)
        quantize(pre, out_path, config)


def model_opset(model_path: str) -> int:
    return _opset(onnx.load(model_path, load_external_data=False))


def _opset(model: onnx.ModelProto) -> int:
    # not onnxmp.model.loader.default_opset: cold_speed.py times quantize_static in a process that
    # imports this module and must not pay for importing onnxmp
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _at_least_opset(model_path: str, opset: int, out_path: str) -> str:
    """``out_path``: the model converted to ``opset`` where its own is older, else as it is."""
    onnx.save(at_least_opset(onnx.load(model_path), opset), out_path)
    return out_path


def at_least_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` converted to ``opset`` where its own is older, else itself."""
    return onnx.version_converter.convert_version(model, opset) if _opset(model) < opset else model


def static_ways(model_path: str) -> list[tuple[str, dict]]:
    """The ways to run ``ort_quantize_static_w8a8`` on a model, to try in order where one fails
    or writes a model onnxruntime cannot load: (label, keyword arguments). As is; on the model
    converted to opset 13 (per-channel DequantizeLinear needs it) where it is older; then with
    onnxruntime's symbolic shape inference skipped."""
    opset = model_opset(model_path)
    ways = [("as benchmarks/peers.py runs it", {})]
    converted = f"on the model converted from opset {opset} to 13" if opset < 13 else ""
    if converted:
        ways.append((converted, {"opset": 13}))
    ways.append((converted + " with `quant_pre_process(skip_symbolic_shape=True)`",
                 {"opset": 13, "skip_symbolic_shape": True}))
    return ways


def count_activation_quantizers(model: onnx.ModelProto) -> int:
    """QuantizeLinear nodes on activations (weights are stored quantized, without one)."""
    inits = {t.name for t in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
