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
from peers import ort_quantize_static_w8a8  # noqa: E402


def _outputs(path: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("peer") / "ort_w8a8.onnx")
    ort_quantize_static_w8a8(MODEL, dict(np.load(CALIB)), out)
    return out


def _slow_layers(path: str, folder) -> list[str]:
    """Conv / Gemm / MatMul nodes that onnxruntime runs in float on dequantized inputs (no integer
    kernel took them), in the graph it optimizes the file into."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in graph.node if n.op_type in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul")
            and set(n.input) & dequantized]


def test_default_beats_onnxruntime_w8a8_with_integer_kernels_only(tmp_path, peer):
    x = np.load(CALIB)["input"]
    ref = _outputs(MODEL, x)
    out = str(tmp_path / "mixed.onnx")
    # ort's default candidates (W8A8, FP32) under BOPs, where W8A8 is 1/16 of float: the default latency
    # metric weighs this machine's kernel times, which a test cannot repeat
    record = optimize(MODEL, out, OptimizeConfig(metric="bops", budget=0.25)).record
    ours = numerics.sqnr_db([ref], [_outputs(out, x)])
    theirs = numerics.sqnr_db([ref], [_outputs(peer, x)])
    assert set(record["chosen"]["mix"]) == {"W8A8", "FP32"} and record["chosen"]["relative_cost"] <= 0.25 + 1e-9
    assert ours >= theirs, (ours, theirs)
    # what is quantized runs as an integer kernel; what is not stays plain float
    assert _slow_layers(out, tmp_path) == []
    assert _slow_layers(peer, tmp_path) == []


def test_budget_is_a_real_mix_within_budget(tmp_path):
    classic = optimize(MODEL, str(tmp_path / "c.onnx"), OptimizeConfig(budget=0.35, target="generic",
                                                                        metric="bops")).record
    assert classic["chosen"]["relative_cost"] <= 0.35 + 1e-9 and len(classic["chosen"]["mix"]) > 1
