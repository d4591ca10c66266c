"""SmoothQuant before W8A8: exact in float, applied only where it lowers the quantized layer's error."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxmp.quant.smoothing import _w8a8_error, smooth_matmul_inputs
from onnxmp.runtime.data import make_calibration_set


def _outlier_model(spread: float) -> onnx.ModelProto:
    """x → Mul (channel gains, two of them ``spread`` times the rest) → MatMul → y; the Mul's
    output is also read by an Add (a residual) that must keep the unscaled values."""
    rng = np.random.default_rng(0)
    gains = np.ones(16, np.float32)
    gains[[3, 11]] = spread
    w = (rng.standard_normal((16, 24)) / 4).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "g"], ["h"], name="gain"), helper.make_node("MatMul", ["h", "w"], ["y"], name="mm"),
             helper.make_node("Add", ["h", "x"], ["r"], name="residual")]
    graph = helper.make_graph(nodes, "outliers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 24]),
                               helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 8, 16])],
                              [numpy_helper.from_array(gains, "g"), numpy_helper.from_array(w, "w")])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def _data(model):
    x = np.random.default_rng(1).standard_normal((16, 8, 16)).astype(np.float32)
    return make_calibration_set({"x": x}, model, "test"), x


def test_outlier_channels_are_smoothed_exactly_and_lower_the_w8a8_error():
    model = _outlier_model(40.0)
    data, x = _data(model)
    smoothed, count = smooth_matmul_inputs(model, data)
    assert count == 1
    mul = next(n for n in smoothed.graph.node if n.name.endswith("/SmoothQuant"))
    assert mul.input[0] == "h" and next(n for n in smoothed.graph.node if n.name == "mm").input[0] == mul.output[0]
    assert next(n for n in smoothed.graph.node if n.name == "residual").input[0] == "h"  # the residual unscaled
    # the same function in float (onnx's reference evaluator on both)
    for a, b in zip(ReferenceEvaluator(model).run(None, {"x": x}), ReferenceEvaluator(smoothed).run(None, {"x": x}),
                    strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    inv = numpy_helper.to_array(next(t for t in smoothed.graph.initializer if t.name == mul.input[1]))
    w_old = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w")).astype(np.float64)
    w_new = numpy_helper.to_array(next(t for t in smoothed.graph.initializer if t.name == "w")).astype(np.float64)
    rows = (x * np.where(np.isin(np.arange(16), [3, 11]), 40.0, 1.0)).reshape(-1, 16).astype(np.float64)
    assert _w8a8_error(rows * inv, [w_new]) < 0.5 * _w8a8_error(rows, [w_old])


def test_even_channels_are_left_as_they_are():
    model = _outlier_model(1.0)
    data, _ = _data(model)
    smoothed, count = smooth_matmul_inputs(model, data)
    assert count == 0 and smoothed is model
