"""The acceptance case of `optimize` on the shipped digits CNN (real handwritten digits):
a tensor read by two convs, a Concat, a residual Add, BatchNorm and a Gemm head."""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxmp import OptimizeConfig, optimize
from onnxmp.quant import numerics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "digits", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "models", "digits", "calib.npz")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from peers import count_activation_quantizers, ort_quantize_static_w8a8  # noqa: E402


def _outputs(path: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("peer") / "ort_w8a8.onnx")
    ort_quantize_static_w8a8(MODEL, dict(np.load(CALIB)), out)
    return out


def test_budget_half_beats_onnxruntime_w8a8(tmp_path, peer):
    x = np.load(CALIB)["input"]
    ref = _outputs(MODEL, x)
    out = str(tmp_path / "mixed.onnx")
    record = optimize(MODEL, out, OptimizeConfig(budget=0.5, metric="bops")).record
    ours = numerics.sqnr_db([ref], [_outputs(out, x)])
    theirs = numerics.sqnr_db([ref], [_outputs(peer, x)])
    assert record["chosen"]["relative_cost"] <= 0.5 + 1e-9  # the BOPs of uniform W8A8
    assert ours >= theirs, (ours, theirs)
    assert count_activation_quantizers(onnx.load(out)) >= count_activation_quantizers(onnx.load(peer))


def test_budget_035_is_a_real_mix_within_budget(tmp_path):
    record = optimize(MODEL, str(tmp_path / "m.onnx"), OptimizeConfig(budget=0.35)).record
    assert record["chosen"]["relative_cost"] <= 0.35 + 1e-9
    assert len(record["chosen"]["mix"]) >= 2
