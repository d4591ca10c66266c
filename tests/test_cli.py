"""Every bad input: one clear line on stderr, exit status 1, no traceback, no output file."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import onnx
import pytest

from onnxmp.cli import main
from onnxmp.pipeline import LATENCY_SLACK


def _fails(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxmp: error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert message in err, err


def _args(model, out, *extra):
    return ["optimize", str(model), str(out), "-q", "--no-cache", *extra]


def test_cli_runs_and_reports(cnn_path, tmp_path, capsys):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main(["optimize", str(cnn_path), str(out), "--report", str(report), "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "uniform W8A8" in printed
    record = json.loads(report.read_text())
    # the default budget, 0.5 of the float time, or LATENCY_SLACK above the cheapest point where
    # the layers' measured W8A8 times cannot go that low (this CNN's convs are tiny)
    cheapest = record["pareto_curve"][-1]["relative_cost"]
    assert record["options"]["budget"] == pytest.approx(max(0.5, min(cheapest + LATENCY_SLACK, 1.0)))
    assert f"(latency; budget {record['options']['budget']:.3f})" in printed  # the budget used, said
    assert record["chosen"]["relative_cost"] <= record["options"]["budget"] + 1e-9 and out.exists()


def test_not_onnx(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    _fails(capsys, _args(bad, tmp_path / "o.onnx"), "not a readable ONNX model")
    assert not (tmp_path / "o.onnx").exists()


def test_missing_file(tmp_path, capsys):
    _fails(capsys, _args(tmp_path / "none.onnx", tmp_path / "o.onnx"), "no such file")


def test_no_quantizable_op(tmp_path, capsys):
    model = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[N, 4] x) => (float[N, 4] y) { y = Exp(x) }""")
    onnx.save(model, str(tmp_path / "exp.onnx"))
    np.savez(tmp_path / "calib.npz", x=np.ones((2, 4), np.float32))
    _fails(capsys, _args(tmp_path / "exp.onnx", tmp_path / "o.onnx"), "no op onnxmp can quantize")


def test_already_quantized(tmp_path, capsys):
    model = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[N, 4] x) => (float[N, 4] y) <float s = {0.1}, uint8 z = {0}> {
            q = QuantizeLinear(x, s, z)
            y = DequantizeLinear(q, s, z)
        }""")
    onnx.save(model, str(tmp_path / "q.onnx"))
    _fails(capsys, _args(tmp_path / "q.onnx", tmp_path / "o.onnx"), "already quantized")


@pytest.mark.parametrize(("arrays", "message"), [
    ({"image": np.ones((4, 3, 8, 8), np.float32)}, "no data for model input(s) x"),
    ({"x": np.ones((4, 3, 9, 9), np.float32)}, "the model wants [?, 3, 8, 8]"),
    ({"x": np.full((4, 3, 8, 8), np.nan, np.float32)}, "NaN or Inf"),
    ({"x": np.ones((4, 3, 8, 8), np.int64)}, "dtype int64"),
    ({"x": np.ones((0, 3, 8, 8), np.float32)}, "no samples"),
])
def test_bad_calibration_data(cnn_path, tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    _fails(capsys, _args(cnn_path, tmp_path / "o.onnx", "--calib", str(tmp_path / "bad.npz")), message)
    assert not (tmp_path / "o.onnx").exists()


def test_unwritable_output(cnn_path, tmp_path, capsys):
    _fails(capsys, _args(cnn_path, tmp_path / "missing" / "o.onnx"), "does not exist")
    _fails(capsys, _args(cnn_path, cnn_path), "overwrite the input")


@pytest.mark.parametrize(("option", "message"), [
    (["--candidates", "W3A8"], "unsupported candidate"),
    (["--candidates", "8bit"], "unknown candidate"),
    (["--budget", "0"], "--budget must be in (0, 1]"),
    (["--budget", "0.01", "--metric", "bops"], "below the cheapest"),  # latency takes the cheapest instead
])
def test_bad_options(cnn_path, tmp_path, capsys, option, message):
    _fails(capsys, _args(cnn_path, tmp_path / "o.onnx", *option), message)
    assert not (tmp_path / "o.onnx").exists()
    assert not list(tmp_path.glob(".onnxmp-*"))  # no temporary file left either


def test_finetune_without_training_environment_is_one_clear_error(cnn_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ONNXMP_TRAIN_PYTHON", str(tmp_path / "no-such-env" / "bin" / "python"))
    quantized = tmp_path / "q.onnx"
    assert main(["optimize", str(cnn_path), str(quantized), "--no-cache", "-q", "--candidates", "W8A8", "--budget", "1"]) == 0
    code = main(["finetune", str(quantized), str(cnn_path), str(tmp_path / "ft.onnx"), "--data",
                 str(tmp_path / "calib.npz"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "onnxmp finetune --setup" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ft.onnx").exists()
    assert main(["finetune", str(quantized)]) == 1  # missing arguments
    assert "needs QUANTIZED FLOAT OUTPUT" in capsys.readouterr().err


def test_a_budget_below_what_this_machine_can_run_takes_the_cheapest_under_latency(cnn_path, tmp_path, caplog,
                                                                                   capsys):
    report = tmp_path / "r.json"
    assert main(["optimize", str(cnn_path), str(tmp_path / "o.onnx"), "--no-cache", "--budget", "0.01",
                 "--report", str(report)]) == 0
    assert any("below the cheapest assignment" in r.getMessage() for r in caplog.records)
    record = json.loads(report.read_text())
    assert record["options"]["budget"] == pytest.approx(record["pareto_curve"][-1]["relative_cost"])
    # where the cheapest point is not uniform W8A8 the two were timed whole, and the summary says so
    timed = record["latency"].get("cheapest_timed")
    printed = capsys.readouterr().out
    assert ("at the cheapest point's speed, timed whole" in printed) == (timed is not None)
    if timed is not None:
        assert f"shipped: {timed['shipped']}" in printed


def test_written_files_get_the_umask_permissions(cnn_path, tmp_path):
    """Not the 0600 of a temporary file: a model copied to a device or served from another
    account must be readable like any file the user makes."""
    old = os.umask(0o022)
    try:
        out, report = tmp_path / "o.onnx", tmp_path / "r.json"
        assert main(["optimize", str(cnn_path), str(out), "-q", "--no-cache", "--report", str(report)]) == 0
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o644 and stat.S_IMODE(os.stat(report).st_mode) == 0o644
        os.umask(0o077)
        assert main(["optimize", str(cnn_path), str(out), "-q", "--no-cache"]) == 0
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    finally:
        os.umask(old)


def _conv_gemm(path):
    """Conv 3->4 (3x3, pad 1) on 8x8, Flatten, Gemm 256->5: MACs known by hand."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 256)).astype(np.float32), "fc_w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc_w"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    np.savez(path.parent / "calib.npz", x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32))


@pytest.mark.parametrize("target", ["generic", "ort"])
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, target):
    model = tmp_path / "m.onnx"
    _conv_gemm(model)
    assert main(["optimize", str(model), str(tmp_path / "o.onnx"), "--dry-run", "--target", target,
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["calib.npz", "m.onnx"]  # no output, no cache folder
    rows = {" ".join(line.split()[4:]): line.split()[1:4] for line in out.splitlines()
            if line.split()[0].isdigit() and line.split()[1] != "x"}  # not the "kept float" lines
    # MACs per sample by hand: the Conv's 4x8x8 outputs each sum 3x3x3 products; the Gemm's 5 sum 256.
    # ort puts both in one group (the Conv's output is quantized for QLinearConv and read by the Gemm)
    conv, fc = (4 * 8 * 8 * 27, 4 * 27), (5 * 256, 5 * 256)
    expected = ({"conv": ("W4A8,W8A8,W8A16", *conv), "fc": ("W4A8,W8A8,W8A16", *fc),
                 "(activations) y": ("W4A8,W8A8,W8A16", 0, 0)} if target == "generic"
                else {"conv, fc": ("W8A8,FP32", conv[0] + fc[0], conv[1] + fc[1])})
    assert rows == {nodes: [allowed, f"{macs:,}", f"{weights:,}"] for nodes, (allowed, macs, weights) in expected.items()}
    assert out.strip().splitlines()[-1].startswith("dry run: nothing calibrated or written")


def test_version(capsys):
    import onnxmp

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"onnxmp {onnxmp.__version__}"


def test_bytes_metric_counts_weights_and_activations_at_their_widths(tmp_path):
    """Under ``bytes`` a group costs its weights and its quantized activations at their widths,
    checked against a hand count of the tensors' elements per sample; a float group counts 4 bytes
    an element, so no quantizer is free (under bops a weightless group costs nothing)."""
    from onnxmp import OptimizeConfig, inspect_model
    from onnxmp.quant.candidates import Candidate
    from onnxmp.quant.cost import CostModel

    model = tmp_path / "m.onnx"
    _conv_gemm(model)
    plan = inspect_model(str(model), OptimizeConfig(target="generic"))
    elements = {"x": 3 * 8 * 8, "c": 4 * 8 * 8, "r": 4 * 8 * 8, "f": 4 * 8 * 8, "y": 5}  # per sample, by hand
    weights = {"w": 4 * 3 * 3 * 3, "fc_w": 5 * 256}
    costs = CostModel(plan.macs, plan.weights, activations=plan.activation_elements)
    for group in plan.plan.groups:
        assert set(group.activations) <= set(elements)
        for cand in (Candidate(4, 8), Candidate(8, 16), Candidate(32, 32)):
            expected = (sum(weights[w] for w in group.weights) * cand.w_bits
                        + sum(elements[a] for a in group.activations) * cand.a_bits) / 8
            assert costs.group_cost(group.gid, cand, "bytes") == expected, (group.label, cand)
    weightless = [g for g in plan.plan.groups if not g.weights]
    assert weightless and all(costs.group_cost(g.gid, Candidate(8, 16), "bops") == 0 < costs.group_cost(
        g.gid, Candidate(8, 16), "bytes") for g in weightless)
