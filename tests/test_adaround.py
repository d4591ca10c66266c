"""AdaRound against independent references: finite differences, onnxruntime and the ONNX reference
evaluator, and round-to-nearest's output error on held-out inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxmp.errors import ConfigError
from onnxmp.quant import numerics
from onnxmp.rounding import adaround

_FAST = adaround.AdaRoundConfig(iterations=300)


def _run_node(op_type: str, x: np.ndarray, w: np.ndarray, attrs: dict, reference: bool) -> np.ndarray:
    """One ``op_type`` node with constant weight ``w`` run on ``x`` by onnxruntime (and checked
    against the reference evaluator when ``reference``)."""
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x", "w"], ["y"], **attrs)], "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * x.ndim)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    if reference:
        np.testing.assert_allclose(ReferenceEvaluator(model).run(None, {"x": x})[0], y, rtol=1e-4, atol=1e-4)
    return y


def _output_rows(op_type: str, y: np.ndarray) -> np.ndarray:
    """The op's output as [rows, out_channels], rows ordered as layer_input_matrix orders them."""
    if op_type in ("Conv", "ConvTranspose"):
        return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


LAYERS = [  # (op_type, input shape, weight shape, attrs, also check the reference evaluator)
    ("Conv", (2, 3, 9, 8), (5, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    ("Conv", (2, 4, 7, 8), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}, True),
    ("Conv", (2, 4, 9, 8), (6, 2, 3, 2), {"group": 2, "dilations": [2, 1], "strides": [1, 2]}, True),
    ("Conv", (2, 3, 7, 8), (4, 3, 4, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, True),
    ("ConvTranspose", (2, 3, 5, 6), (3, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    ("ConvTranspose", (2, 4, 5, 6), (4, 3, 3, 2), {"strides": [2, 1], "group": 2, "output_padding": [1, 0]}, False),
    ("ConvTranspose", (2, 3, 5, 6), (3, 4, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, False),
    ("Gemm", (7, 6), (5, 6), {"transB": 1}, True),
    ("Gemm", (6, 7), (6, 5), {"transA": 1, "alpha": 0.5}, True),
    ("MatMul", (2, 5, 6), (6, 4), {}, True),
    ("MatMul", (2, 5, 6), (2, 6, 4), {}, True),
]


@pytest.mark.parametrize(("op_type", "x_shape", "w_shape", "attrs", "reference"), LAYERS)
def test_input_matrix_reproduces_the_layer(op_type, x_shape, w_shape, attrs, reference):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    y = _output_rows(op_type, _run_node(op_type, x, w, attrs, reference))
    mats = adaround.layer_input_matrix(op_type, attrs, x, w.shape, max_rows=10**9)
    rows = adaround.weight_rows(w, op_type, attrs)
    if op_type == "MatMul" and len(w_shape) == 3:  # batched: each weight slice has its own rows
        y = y.reshape(w_shape[0], -1, w_shape[-1])
        expected = [y[g] for g in range(w_shape[0])]
    else:
        per = rows.shape[1]
        expected = [y[:, g * per:(g + 1) * per] for g in range(len(mats))]
    assert len(mats) == len(expected)
    for mat, row, ref in zip(mats, rows, expected, strict=True):
        np.testing.assert_allclose(mat @ row.T, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(adaround.rows_to_weight(rows, w.shape, op_type, attrs), w)


def test_input_rows_are_sampled_without_replacement_deterministically():
    x = np.random.default_rng(1).standard_normal((3, 2, 6, 6)).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1]}
    full = adaround.layer_input_matrix("Conv", attrs, x, (4, 2, 3, 3), max_rows=10**9)[0]
    sampled = adaround.layer_input_matrix("Conv", attrs, x, (4, 2, 3, 3), max_rows=40, seed=3)[0]
    again = adaround.layer_input_matrix("Conv", attrs, x, (4, 2, 3, 3), max_rows=40, seed=3)[0]
    assert sampled.shape == (40, 18)
    np.testing.assert_array_equal(sampled, again)
    matches = (sampled[:, None, :] == full[None, :, :]).all(axis=2)
    assert matches.any(axis=1).all()  # every sampled row is a row of the layer
    assert len({int(np.argmax(m)) for m in matches}) == 40  # and no row is drawn twice


def _small_problem(dtype: type = np.float64) -> adaround.RoundingProblem:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 3, 3))
    x = rng.standard_normal((2, 3, 6, 6))
    attrs = {"pads": [1, 1, 1, 1]}
    grams = adaround.gram_matrices(adaround.layer_input_matrix("Conv", attrs, x, w.shape, 10**9))
    scale = numerics.weight_scales(w, 0, 4)
    return adaround.rounding_problem(w, scale, 0, 4, grams, "Conv", attrs, dtype=dtype)


def _finite_difference_error(problem: adaround.RoundingProblem, beta: float | None) -> float:
    """Relative error of the analytic gradient against central differences, at a V inside the
    region where h is not clipped (where the loss is smooth)."""
    v = np.random.default_rng(3).uniform(-1.5, 1.5, problem.base.shape)
    reg_weight, eps = 0.05, 1e-6
    _, grad = adaround.adaround_loss_and_grad(v, problem, reg_weight, beta)
    numeric = np.zeros_like(v)
    for i in np.ndindex(v.shape):
        step = np.zeros_like(v)
        step[i] = eps
        up = adaround.adaround_loss_and_grad(v + step, problem, reg_weight, beta)[0]
        down = adaround.adaround_loss_and_grad(v - step, problem, reg_weight, beta)[0]
        numeric[i] = (up - down) / (2 * eps)
    return float(np.linalg.norm(grad - numeric) / np.linalg.norm(numeric))


@pytest.mark.parametrize("beta", [None, 11.0, 2.0, 1.5])
def test_gradient_matches_finite_differences(beta):
    problem = _small_problem()
    assert problem.gram.dense is not None
    assert _finite_difference_error(problem, beta) < 1e-5


def test_low_rank_gradient_matches_finite_differences():
    problem = _small_problem()
    grams = [problem.gram.dense[0]]
    low_rank = adaround.gram_operator(grams, rows=10**9, max_rank=4)  # 4 directions of 27
    assert low_rank.dense is None
    assert _finite_difference_error(dataclasses.replace(problem, gram=low_rank), 11.0) < 1e-5


def test_low_rank_gram_keeps_the_diagonal_and_the_energy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 60)) @ np.diag(0.8 ** np.arange(60))
    exact = adaround.gram_operator(adaround.gram_matrices([x]), rows=1)
    low = adaround.gram_operator(adaround.gram_matrices([x]), rows=10**9, max_rank=16)
    identity = np.eye(60)[None]
    dense, approx = exact.dense[0], low.apply(identity, np.empty_like(identity), np.empty_like(identity))[0]
    np.testing.assert_allclose(np.diag(approx), np.diag(dense), rtol=1e-9, atol=1e-12)
    assert np.linalg.norm(approx - dense) < 1e-2 * np.linalg.norm(dense)


def _smooth_images(rng: np.random.Generator, n: int, c: int, size: int) -> np.ndarray:
    """Spatially correlated, channel-mixed, rectified inputs, like a conv layer's activations."""
    noise = rng.standard_normal((n, c, size + 4, size + 4))
    blurred = sum(noise[:, :, i:i + size, j:j + size] for i in range(5) for j in range(5)) / 5
    mixed = np.einsum("dc,nchw->ndhw", rng.standard_normal((c, c)) / np.sqrt(c) + np.eye(c), blurred)
    return np.maximum(mixed + 0.3, 0.0).astype(np.float32)


def _output_error(q: np.ndarray, w: np.ndarray, scale: np.ndarray, axis: int, op_type: str, attrs: dict,
                  mats: list[np.ndarray]) -> float:
    """||(W_q s - W) X||² of the layer on input matrices ``mats``."""
    shape = [1] * w.ndim
    shape[axis] = -1
    delta = adaround.weight_rows(q * scale.reshape(shape) - w, op_type, attrs)
    return float(sum(((m.astype(np.float64) @ d.T) ** 2).sum() for m, d in zip(mats, delta, strict=True)))


def _check_rounding(q: np.ndarray, w: np.ndarray, scale: np.ndarray, axis: int, bits: int) -> None:
    """``q`` is floor(w/s) or floor(w/s) + 1, clipped to the signed range of ``bits``."""
    shape = [1] * w.ndim
    shape[axis] = -1
    ratio = w.astype(np.float64) / scale.reshape(shape)
    qmin, qmax = numerics.signed_range(bits)
    assert q.dtype == np.int32 and q.shape == w.shape and q.flags.c_contiguous
    assert q.min() >= qmin and q.max() <= qmax
    down, up = np.clip(np.floor(ratio), qmin, qmax), np.clip(np.floor(ratio) + 1, qmin, qmax)
    assert np.all((q == down) | (q == up))
    inside = (ratio > qmin) & (ratio < qmax)
    assert np.all(np.abs(q - ratio)[inside] < 1)


def _adaround_vs_nearest(op_type: str, w: np.ndarray, axis: int, attrs: dict, calib: np.ndarray,
                         held_out: np.ndarray, bits: int, config: adaround.AdaRoundConfig) -> float:
    """AdaRound's held-out output error over round-to-nearest's, after checking the rounding."""
    scale = numerics.weight_scales(w, axis, bits)
    grams = adaround.gram_matrices(adaround.layer_input_matrix(op_type, attrs, calib, w.shape, config.max_rows))
    q = adaround.adaround_layer(w, scale, axis, bits, grams, op_type, attrs, config)
    _check_rounding(q, w, scale, axis, bits)
    test_rows = adaround.layer_input_matrix(op_type, attrs, held_out, w.shape, 4096, seed=1)
    nearest = numerics.quantize_symmetric(w, scale, axis, bits)
    return _output_error(q, w, scale, axis, op_type, attrs, test_rows) / _output_error(
        nearest, w, scale, axis, op_type, attrs, test_rows)


def test_conv_beats_round_to_nearest_at_4_bits():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((16, 8, 3, 3)) / np.sqrt(72)).astype(np.float32)
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    calib, held_out = _smooth_images(rng, 8, 8, 16), _smooth_images(rng, 8, 8, 16)
    ratio = _adaround_vs_nearest("Conv", w, 0, attrs, calib, held_out, 4, adaround.AdaRoundConfig(max_rows=1024))
    assert ratio < 0.8


def test_gemm_beats_round_to_nearest_at_4_bits():
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((24, 64)) / 8).astype(np.float32)  # transB=1: [N, K], channels on axis 0
    mixing = rng.standard_normal((64, 64)) * 0.9 ** np.arange(64)[:, None]
    calib = np.maximum(rng.standard_normal((1024, 64)) @ mixing, 0).astype(np.float32)
    held_out = np.maximum(rng.standard_normal((1024, 64)) @ mixing, 0).astype(np.float32)
    ratio = _adaround_vs_nearest("Gemm", w, 0, {"transB": 1}, calib, held_out, 4, adaround.AdaRoundConfig())
    assert ratio < 0.8


def test_wide_layer_with_low_rank_gram_beats_round_to_nearest():
    rng = np.random.default_rng(7)
    k, n = 1024, 64  # rows x K² over the dense budget, K > 2 x the rank kept
    w = (rng.standard_normal((k, n)) / 32).astype(np.float32)  # MatMul [K, N]
    mixing = rng.standard_normal((k, k)) * 0.98 ** np.arange(k)[:, None]
    calib = (rng.standard_normal((2048, k)) @ mixing).astype(np.float32)
    held_out = (rng.standard_normal((1024, k)) @ mixing).astype(np.float32)
    assert n * k * k > adaround._DENSE_MACS and k > 2 * adaround._MAX_RANK
    ratio = _adaround_vs_nearest("MatMul", w, 1, {}, calib, held_out, 4, _FAST)
    assert ratio < 0.8


def test_adaround_is_deterministic_and_leaves_its_inputs_alone():
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((8, 4, 3, 3)) / 6).astype(np.float32)
    w_copy = w.copy()
    x = _smooth_images(rng, 4, 4, 10)
    grams = adaround.gram_matrices(adaround.layer_input_matrix("Conv", {}, x, w.shape, 256))
    scale = numerics.weight_scales(w, 0, 4)
    first = adaround.adaround_layer(w, scale, 0, 4, grams, "Conv", {}, _FAST)
    second = adaround.adaround_layer(w, scale, 0, 4, grams, "Conv", {}, _FAST)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(w, w_copy)


def test_initial_v_starts_from_the_float_weight():
    problem = _small_problem()
    h = adaround.rectified_sigmoid(adaround.initial_v(problem))
    free = problem.free > 0
    np.testing.assert_allclose(h[free], -problem.base[free], atol=1e-12)


def test_invalid_settings_are_rejected():
    with pytest.raises(ConfigError, match="warm_start"):
        adaround.AdaRoundConfig(warm_start=1.5)


def test_mismatched_gram_matrices_are_rejected():
    w = np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="Gram"):
        adaround.adaround_layer(w, np.ones(4, np.float32), 0, 4, [np.eye(9)], "Conv", {})
