"""Peers run on the same model and data, for side-by-side tables: onnxruntime's quantize_static."""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


class _Reader(CalibrationDataReader):
    def __init__(self, arrays: dict[str, np.ndarray], batch: int) -> None:
        n = len(next(iter(arrays.values())))
        self._feeds = iter([{k: v[i:i + batch] for k, v in arrays.items()} for i in range(0, n, batch)])

    def get_next(self):
        return next(self._feeds, None)


def ort_quantize_static_w8a8(model_path: str, arrays: dict[str, np.ndarray], out_path: str, batch: int = 16) -> None:
    """onnxruntime's recommended static QDQ flow: pre-process, then per-channel INT8 weights and
    UINT8 activations calibrated with min/max on ``arrays``."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        with contextlib.chdir(tmp):  # it writes shape-inference scratch files into the working directory
            quant_pre_process(os.path.abspath(model_path), pre)
        quantize_static(pre, out_path, _Reader(arrays, batch), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def count_activation_quantizers(model: onnx.ModelProto) -> int:
    """QuantizeLinear nodes on activations (weights are stored quantized, without one)."""
    inits = {t.name for t in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
