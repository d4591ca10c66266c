"""Accuracy targets with user evaluators, the results cache, analyze, and the report folder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import CLASSIC

from onnxmp import OptimizeConfig, optimize
from onnxmp.cli import main
from onnxmp.errors import EvaluatorError
from onnxmp.search.evaluate import Evaluator


def _config(tmp_path, **kw):
    return OptimizeConfig(calib=str(tmp_path / "calib.npz"), cache_dir=str(tmp_path / "cache"), **{**CLASSIC, **kw})


def test_second_run_with_another_budget_reuses_phase1(cnn_path, tmp_path):
    first = optimize(str(cnn_path), None, _config(tmp_path, budget=0.5)).record
    second = optimize(str(cnn_path), None, _config(tmp_path, budget=0.35)).record
    assert not first["cache"]["hit"] and second["cache"]["hit"]
    assert second["sensitivity"] == first["sensitivity"]
    assert second["counts"]["simulator_evaluations"] < first["counts"]["simulator_evaluations"]


def test_a_cache_written_under_one_metric_serves_another_like_a_cold_run(cnn_path, tmp_path):
    """Under bops a weightless group has one rung (it is not measured, and gets no histogram);
    under bytes its cheaper candidates count. A run under bytes on the bops run's cache must
    measure and calibrate what it needs, and choose what a cold run under bytes chooses."""
    bops = optimize(str(cnn_path), None, _config(tmp_path, budget=0.5)).record
    warm = optimize(str(cnn_path), None, _config(tmp_path, budget=0.5, metric="bytes")).record
    cold = optimize(str(cnn_path), None, dataclasses.replace(_config(tmp_path, budget=0.5, metric="bytes"),
                                                             cache_dir=None)).record
    measured = lambda r: {(s["group"], s["candidate"]) for s in r["sensitivity"] if s["evaluated"]}  # noqa: E731
    assert measured(warm) > measured(bops)  # the weightless groups' lower candidates were measured this time
    assert not warm["cache"]["hit"]
    assert warm["sensitivity"] == cold["sensitivity"] and warm["chosen"]["mix"] == cold["chosen"]["mix"]
    assert warm["chosen"]["simulated_sqnr_db"] == pytest.approx(cold["chosen"]["simulated_sqnr_db"], abs=1e-9)


def test_changed_option_or_data_misses_the_cache(cnn_path, tmp_path):
    optimize(str(cnn_path), None, _config(tmp_path))
    other_cands = optimize(str(cnn_path), None, _config(tmp_path, candidates=CLASSIC["candidates"][1:])).record
    assert not other_cands["cache"]["hit"]
    x = np.load(tmp_path / "calib.npz")["x"]
    np.savez(tmp_path / "calib.npz", x=x[:-1])  # one sample fewer
    assert not optimize(str(cnn_path), None, _config(tmp_path)).record["cache"]["hit"]


def _labels_file(tmp_path, model_path):
    x = np.random.default_rng(5).standard_normal((24, 3, 8, 8)).astype(np.float32)
    logits = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.savez(tmp_path / "labels.npz", x=x, labels=logits.argmax(1))  # the float model scores 100 %
    return tmp_path / "labels.npz"


def test_target_drop_with_labels_meets_the_target(cnn_path, tmp_path):
    labels = _labels_file(tmp_path, cnn_path)
    record = optimize(str(cnn_path), None, _config(tmp_path, target_drop="5", eval_data=str(labels))).record
    target = record["target"]
    assert target["baseline_score"] == 100.0
    assert target["chosen_score"] >= 95.0
    assert target["evaluations"] == len(target["evaluated_points"]) < len(record["pareto_curve"])
    # Every evaluated point cheaper than the chosen one missed the target.
    for point in target["evaluated_points"]:
        if point["index"] > target["chosen_index"]:
            assert point["score"] < 95.0


def test_user_evaluator_errors_are_clear_and_keep_phase1(cnn_path, tmp_path):
    def broken(path: str) -> float:
        raise RuntimeError("dataset server is down")

    with pytest.raises(EvaluatorError, match="dataset server is down"):
        optimize(str(cnn_path), None, _config(tmp_path, target_drop="1", evaluator=Evaluator(broken, "x", "broken")))
    for bad in (float("nan"), "high"):
        with pytest.raises(EvaluatorError, match="not a"):
            optimize(str(cnn_path), None, _config(tmp_path, target_drop="1",
                                                   evaluator=Evaluator(lambda p, b=bad: b, "x", "bad")))
    # Phase 1 survived the failures: the next run reuses it.
    record = optimize(str(cnn_path), None, _config(tmp_path, target_drop="1",
                                                   evaluator=Evaluator(lambda p: 1.0, "x", "const"))).record
    assert record["cache"]["hit"] and record["target"]["chosen_index"] == len(record["pareto_curve"]) - 1


def test_cli_eval_spec_errors(cnn_path, tmp_path, capsys):
    (tmp_path / "myeval.py").write_text("def score(path):\n    raise ValueError('boom')\n")
    argv = ["optimize", str(cnn_path), str(tmp_path / "o.onnx"), "-q", "--no-cache", "--target-drop", "1"]
    assert main([*argv, "--eval", f"{tmp_path / 'myeval.py'}:score"]) == 1
    err = capsys.readouterr().err
    assert "boom" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--eval", f"{tmp_path / 'myeval.py'}:missing"]) == 1
    assert "has no function 'missing'" in capsys.readouterr().err
    assert main([*argv, "--eval", "no_such_module_xyz:f"]) == 1
    assert "importing no_such_module_xyz failed" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_report_dir_files(cnn_path, tmp_path):
    pytest.importorskip("matplotlib")
    optimize(str(cnn_path), None, _config(tmp_path, report_dir=str(tmp_path / "rep")))
    record = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert record["chosen"]["relative_cost"] <= 0.5 + 1e-9
    png = (tmp_path / "rep" / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "| group | candidate | nodes |" in summary and "branch_a" in summary and "pareto.png" in summary


def test_analyze_prints_sensitivity_table(cnn_path, tmp_path, capsys):
    assert main(["analyze", str(cnn_path), "--calib", str(tmp_path / "calib.npz"), "--no-cache", "--target", "generic"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["group", "candidate", "SQNR"]
    sqnr = [float(line.split()[2]) for line in lines[2:]]
    assert sqnr == sorted(sqnr) and len(sqnr) >= 6  # most sensitive first
