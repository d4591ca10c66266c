"""The QDQ math against independent references: onnx's reference evaluator and NumPy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxmp.output.export import integer_tensor
from onnxmp.quant import numerics


def _qdq_reference(x: np.ndarray, scale: np.ndarray, zp: TensorProto, axis: int | None = None) -> np.ndarray:
    """QuantizeLinear → DequantizeLinear as onnx's reference evaluator computes them."""
    kwargs = {} if axis is None else {"axis": axis}
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], **kwargs),
         helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], **kwargs)],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [numpy_helper.from_array(scale, "s"), zp],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


def test_asymmetric_fake_quant_matches_reference_evaluator():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4096) * 3).astype(np.float32)
    x[:8] = [0.5, 1.5, -2.5, 100.0, -100.0, 0.0, 2.5, 3.5]  # ties and saturation
    for bits, elem in ((8, TensorProto.UINT8), (16, TensorProto.UINT16)):
        scale, zp = numerics.activation_params(-4.0, 6.0, bits)
        ref = _qdq_reference(x, np.array(scale, np.float32), helper.make_tensor("zp", elem, [], [zp]))
        np.testing.assert_array_equal(numerics.fake_quant_asymmetric(x, scale, zp, bits), ref)


def test_symmetric_per_channel_matches_reference_evaluator():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4, 3)).astype(np.float32)
    for bits, elem in ((4, TensorProto.INT4), (8, TensorProto.INT8), (16, TensorProto.INT16)):
        scale = numerics.weight_scales(w, 0, bits)
        zp = helper.make_tensor("zp", elem, [6], [0] * 6)
        ref = _qdq_reference(w, scale, zp, axis=0)
        np.testing.assert_array_equal(numerics.fake_quant_symmetric(w, scale, 0, bits), ref)


def test_int4_packing_round_trips_through_onnx():
    values = np.array([[-8, 7, 0, -1, 3], [1, -2, 5, -7, 6]], dtype=np.int32)
    tensor = integer_tensor("w", values, 4)
    assert len(tensor.raw_data) == 5  # 10 values, two per byte
    np.testing.assert_array_equal(numpy_helper.to_array(tensor).astype(np.int32), values)


def test_weight_scales_beat_max_scaling_at_4_bits():
    w = np.random.default_rng(2).standard_t(3, size=(16, 64)).astype(np.float32)
    mse = numerics.fake_quant_symmetric(w, numerics.weight_scales(w, 0, 4), 0, 4)
    plain_scale = (np.abs(w).max(axis=1) / 7).astype(np.float32)
    plain = numerics.fake_quant_symmetric(w, plain_scale, 0, 4)
    assert ((w - mse) ** 2).sum() < 0.9 * ((w - plain) ** 2).sum()


def test_mse_range_beats_min_max_with_outliers():
    x = np.random.default_rng(3).standard_normal(200_000)
    x[:20] = 60.0  # a few outliers stretch min/max
    hist, edges = np.histogram(x, bins=2048, range=(x.min(), x.max()))
    for bits, factor in ((4, 0.5), (8, 1.0)):
        lo, hi = numerics.mse_range(hist, edges, bits)
        assert x.min() <= lo <= 0 <= hi < x.max()
        err = lambda r, b=bits: ((numerics.fake_quant_asymmetric(x, *numerics.activation_params(*r, b), b) - x) ** 2).mean()  # noqa: E731
        assert err((lo, hi)) < factor * err((x.min(), x.max()))


def test_sqnr_is_infinite_for_exact_and_20db_for_a_tenth():
    ref = [np.ones(100, np.float32)]
    assert numerics.sqnr_db(ref, ref) >= 199
    assert abs(numerics.sqnr_db(ref, [np.full(100, 1.1, np.float32)]) - 20.0) < 1e-4


def test_noise_meter_fed_run_by_run_matches_float64_numpy():
    """Outputs that arrive a run at a time (runs of odd sizes, chunk edges inside them) give the
    float64 NumPy noise ratio: the reference's NaN/Inf are left out, a non-finite test value
    where the reference is finite makes the noise infinite, and values whose squares overflow
    float32 still count."""
    rng = np.random.default_rng(5)
    ref = [rng.standard_normal(200_003).astype(np.float32), (rng.standard_normal(7_000) * 1e3).astype(np.float32)]
    ref[0][[3, 150_000]] = [np.nan, np.inf]
    test = [r + (rng.standard_normal(r.size) * 0.01).astype(np.float32) for r in ref]
    test[0][3] = np.inf  # masked by the reference
    test[1][10] = 3e30  # its square overflows float32

    def expected(reference, outputs):
        ratios = []
        for r, t in zip(reference, outputs, strict=True):
            keep = np.isfinite(r)
            d = r[keep].astype(np.float64) - t[keep].astype(np.float64)
            ratios.append((d ** 2).sum() / (r[keep].astype(np.float64) ** 2).sum())
        return np.mean(ratios)

    meter = numerics.NoiseMeter(ref)
    bounds = [0, 1, 65_537, 131_072, 200_003]
    for a, b in itertools.pairwise(bounds):
        meter.add([test[0][a:b], test[1][a * 7_000 // 200_003:b * 7_000 // 200_003]])
    assert meter.ratio() == pytest.approx(expected(ref, test), rel=1e-6)
    assert numerics.noise_ratio(ref, test) == pytest.approx(expected(ref, test), rel=1e-6)
    broken = [test[0].copy(), test[1]]
    broken[0][7] = np.nan
    assert not np.isfinite(numerics.noise_ratio(ref, broken))
    with pytest.raises(ValueError, match="fewer values"):
        short = numerics.NoiseMeter(ref)
        short.add([test[0][:10], test[1][:10]])
        short.ratio()
