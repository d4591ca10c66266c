"""AdaRound integrated with Phase 1 and the export."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxmp import OptimizeConfig, optimize, parse_candidates
from onnxmp.model.loader import prepare_model


def _config(tmp_path, **kw):
    return OptimizeConfig(calib=str(tmp_path / "calib.npz"), candidates=parse_candidates("W4A8,W8A16"),
                          adaround_iterations=300, target="generic", metric="bops", **kw)


def test_adaround_improves_w4_and_exports_floor_or_ceil(cnn_path, tmp_path):
    plain = optimize(str(cnn_path), None, _config(tmp_path, adaround="off")).record
    out = tmp_path / "ada.onnx"
    ada = optimize(str(cnn_path), str(out), _config(tmp_path, budget=0.25)).record
    assert list(ada["adaround"]["bits"]) == [4] and ada["adaround"]["optimised"] == 6
    assert ada["uniform"]["W4A8"]["sqnr_db"] > plain["uniform"]["W4A8"]["sqnr_db"] + 1.0
    # Every exported INT4 weight is the floor or the ceiling of w / s, and some are not nearest.
    model = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    floats = {t.name: numpy_helper.to_array(t) for t in prepare_model(onnx.load(str(cnn_path))).graph.initializer}
    away_from_nearest = 0
    for name, w in floats.items():
        if name + "_quantized" not in inits or w.ndim < 2:
            continue
        q = inits[name + "_quantized"].astype(np.int32)
        scale = inits[name + "_scale"].reshape([-1] + [1] * (w.ndim - 1))  # axis 0 here (Gemm has transB=1)
        ratio = w / scale
        assert np.all((q == np.floor(ratio)) | (q == np.ceil(ratio)) | (q == -8) | (q == 7))
        away_from_nearest += int(np.sum(q != np.clip(np.round(ratio), -8, 7)))
    assert away_from_nearest > 0


def test_adaround_results_are_cached(cnn_path, tmp_path):
    cache = str(tmp_path / "cache")
    first = optimize(str(cnn_path), None, _config(tmp_path, cache_dir=cache)).record
    second = optimize(str(cnn_path), None, _config(tmp_path, cache_dir=cache, budget=0.3)).record
    assert first["adaround"]["optimised"] == 6 and second["adaround"]["optimised"] == 0
    assert second["adaround"]["cached"] == 6 and second["cache"]["hit"]
    assert second["uniform"]["W4A8"] == first["uniform"]["W4A8"]
    # Other AdaRound settings are another cache entry.
    third = optimize(str(cnn_path), None, _config(tmp_path, cache_dir=cache, adaround="off")).record
    assert third["adaround"] is None and not third["cache"]["hit"]


def test_adaround_and_phase1_in_worker_processes_give_the_same_model(cnn_path, tmp_path):
    one = tmp_path / "one.onnx"
    two = tmp_path / "two.onnx"
    first = optimize(str(cnn_path), str(one), _config(tmp_path, budget=0.4)).record
    second = optimize(str(cnn_path), str(two), _config(tmp_path, budget=0.4, workers=2)).record
    assert second["adaround"]["optimised"] == first["adaround"]["optimised"] == 6
    assert one.read_bytes() == two.read_bytes()
    assert second["chosen"] == first["chosen"]
