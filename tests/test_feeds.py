"""Calibration as a sequence of feeds (issue 20): every accepted form, the messages for bad ones,
sequence, state and scalar inputs, and models with control flow.

The models are built here: a sequence model (an LSTM over a symbolic time axis with its state as
inputs, then a MatMul head, like an exported streaming detector) and a MatMul model with an int64
scalar input that selects an If branch (like a sample-rate input). Results are checked against
independent references: the written model's outputs against NumPy's float computation of the same
graph, the calibration ranges against the extremes NumPy finds in the feeds.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import CLASSIC, classic
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader

from onnxmp import optimize
from onnxmp.cli import main
from onnxmp.errors import CalibrationError, ModelError
from onnxmp.model.loader import prepare_model
from onnxmp.quant.calibrate import calibrate
from onnxmp.quant.groups import find_quantizers
from onnxmp.runtime.data import calibration_from_feeds, load_calibration

HIDDEN, FEATURES, CLASSES = 16, 8, 4
GENERIC = ["--target", "generic", "--metric", "bops", "--candidates", "W4A8,W8A8,W8A16"]


def _sequence_model(seed: int = 0) -> onnx.ModelProto:
    """x [T, 1, 8] (T symbolic), h and c [1, 1, 16] → LSTM → MatMul [16, 4] → logits [T, 4], h_n, c_n."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((1, 4 * HIDDEN, FEATURES)).astype(np.float32) * 0.3
    r = rng.standard_normal((1, 4 * HIDDEN, HIDDEN)).astype(np.float32) * 0.2
    head = rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32) * 0.5
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "", "", "h", "c"], ["y", "h_n", "c_n"], hidden_size=HIDDEN),
        helper.make_node("Squeeze", ["y", "axes"], ["seq"]),  # [T, 1, 1, 16] → [T, 16]
        helper.make_node("MatMul", ["seq", "head"], ["logits"]),
    ]
    state = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, HIDDEN]) for n in ("h", "c")]
    graph = helper.make_graph(
        nodes, "sequence", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 1, FEATURES]), *state],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", CLASSES]),
         *[helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, HIDDEN]) for n in ("h_n", "c_n")]],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"), numpy_helper.from_array(head, "head"),
         numpy_helper.from_array(np.array([1, 2], np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _sequence_feeds(lengths, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((t, 1, FEATURES)).astype(np.float32),
             "h": rng.standard_normal((1, 1, HIDDEN)).astype(np.float32) * 0.1,
             "c": np.zeros((1, 1, HIDDEN), np.float32)} for t in lengths]


def _rate_model(weighted_branch: bool = False) -> onnx.ModelProto:
    """x [1, 8] and an int64 scalar ``sr``: y = x @ W, then If(sr == 16000) y else -y (a MatMul in
    each branch instead, with ``weighted_branch``)."""
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.standard_normal((FEATURES, CLASSES)).astype(np.float32), "W")
    out = helper.make_tensor_value_info("branch", TensorProto.FLOAT, None)
    if weighted_branch:
        inner = numpy_helper.from_array(rng.standard_normal((CLASSES, CLASSES)).astype(np.float32), "V")
        then_branch = helper.make_graph([helper.make_node("MatMul", ["y", "V"], ["branch"])], "then", [], [out], [inner])
    else:
        then_branch = helper.make_graph([helper.make_node("Identity", ["y"], ["branch"])], "then", [], [out])
    else_branch = helper.make_graph([helper.make_node("Neg", ["y"], ["branch"])], "else", [], [out])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]),
             helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["out"], then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(
        nodes, "rate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES]),
                        helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, CLASSES])],
        [weight, numpy_helper.from_array(np.array(16000, np.int64), "rate")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _rate_feeds(n: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    return [{"x": rng.standard_normal((1, FEATURES)).astype(np.float32), "sr": np.array(16000, np.int64)}
            for _ in range(n)]


def _write_folder(folder, feeds) -> str:
    os.makedirs(folder, exist_ok=True)
    for i, feed in enumerate(feeds):
        np.savez(os.path.join(folder, f"feed{i:03d}.npz"), **feed)
    return str(folder)


def _save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def _run_cli(model_path, out, calib, *extra) -> dict:
    report = str(out) + ".json"
    assert main(["optimize", str(model_path), str(out), "-q", "--no-cache", "--no-adaround", "--calib", str(calib),
                 "--report", report, *extra]) == 0
    with open(report, encoding="utf-8") as handle:
        return json.load(handle)


def _lstm_hidden(feed: dict[str, np.ndarray], model: onnx.ModelProto) -> np.ndarray:
    """The sequence model's hidden states [T, 16] in NumPy (ONNX LSTM, gates i, o, f, c; no bias)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w, r = inits["W"][0], inits["R"][0]
    h, c = feed["h"][0, 0].astype(np.float64), feed["c"][0, 0].astype(np.float64)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    rows = []
    for x in feed["x"][:, 0].astype(np.float64):
        i, o, f, g = np.split(w @ x + r @ h, 4)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        rows.append(h)
    return np.array(rows)


def _lstm_reference(feed: dict[str, np.ndarray], model: onnx.ModelProto) -> np.ndarray:
    head = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "head")
    return _lstm_hidden(feed, model) @ head


def test_sequence_model_from_a_folder_of_feeds(tmp_path):
    """Feeds of different lengths, with state inputs, each run as given: the head's MatMul carries
    QDQ, the LSTM stays float with its reason, and the output tracks NumPy's float computation."""
    model = _sequence_model()
    feeds = _sequence_feeds([5, 9, 3, 12, 7, 4])
    model_path, out = _save(model, tmp_path / "seq.onnx"), tmp_path / "out.onnx"
    record = _run_cli(model_path, out, _write_folder(tmp_path / "feeds", feeds), *GENERIC, "--budget", "0.5")
    quantized = onnx.load(str(out))
    matmul = [n for n in quantized.graph.node if n.op_type == "MatMul"]
    dequantize = {n.output[0]: n for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    assert len(matmul) == 1 and all(i in dequantize for i in matmul[0].input)  # activation and weight
    integer_weights = {t.name for t in quantized.graph.initializer if t.data_type in (TensorProto.INT8, TensorProto.INT4)}
    assert dequantize[matmul[0].input[1]].input[0] in integer_weights
    lstm = [s for s in record["skipped"] if s["name"] == "LSTM" or "LSTM kept float" in s["reason"]]
    assert lstm and "weights W and R" in lstm[0]["reason"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for feed in feeds:
        got = session.run(["logits"], feed)[0]
        want = _lstm_reference(feed, model)
        assert got.shape == want.shape  # one row per time step: nothing was cut along the time axis
        assert 10 * np.log10((want ** 2).sum() / ((got - want) ** 2).sum()) > 20


def test_calibration_ranges_come_from_every_feed_as_given(tmp_path):
    """The head's input range spans what the LSTM computes over every feed (NumPy's extremes),
    which running the feeds cut or concatenated along time would not give."""
    model = prepare_model(_sequence_model(), str(tmp_path))
    feeds = _sequence_feeds([4, 10, 6])
    data = load_calibration(_write_folder(tmp_path / "feeds", feeds), model)
    assert not data.batched and data.num_feeds == 3
    assert [f["x"].shape[0] for f in data.feeds()] == [4, 10, 6]
    plan = find_quantizers(model)
    stats = calibrate(model, plan, data).stats["seq"]
    values = np.concatenate([_lstm_hidden(feed, model) for feed in feeds])
    assert stats.minimum == pytest.approx(values.min(), abs=1e-5)
    assert stats.maximum == pytest.approx(values.max(), abs=1e-5)


def test_folder_and_single_file_forms_give_identical_bytes(tmp_path):
    """The same feeds as a folder (one file each), stacked in one .npz (samples of a model without
    a batch axis), from a Python list and from a CalibrationDataReader: byte-identical outputs."""
    model_path = _save(_sequence_model(), tmp_path / "seq.onnx")
    feeds = _sequence_feeds([6] * 5)
    stacked = tmp_path / "stacked.npz"
    np.savez(stacked, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
    _run_cli(model_path, tmp_path / "folder.onnx", _write_folder(tmp_path / "feeds", feeds), *GENERIC)
    _run_cli(model_path, tmp_path / "stacked.onnx", stacked, *GENERIC)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter(feeds)

        def get_next(self):
            return next(self.left, None)

    options = {**CLASSIC, "adaround": "off"}
    optimize(model_path, str(tmp_path / "list.onnx"), classic(calib=list(feeds), adaround="off"))
    optimize(model_path, str(tmp_path / "reader.onnx"), classic(**{**options, "calib": Reader()}))
    optimize(model_path, str(tmp_path / "generator.onnx"), classic(calib=(f for f in feeds), adaround="off"))
    first = (tmp_path / "folder.onnx").read_bytes()
    for name in ("stacked", "list", "reader", "generator"):
        assert (tmp_path / f"{name}.onnx").read_bytes() == first, name
    one = _sequence_feeds([8])  # one feed: a single .npz and a folder holding only that file
    np.savez(tmp_path / "one.npz", **one[0])
    _run_cli(model_path, tmp_path / "one_file.onnx", tmp_path / "one.npz", *GENERIC)
    _run_cli(model_path, tmp_path / "one_folder.onnx", _write_folder(tmp_path / "one", one), *GENERIC)
    assert (tmp_path / "one_file.onnx").read_bytes() == (tmp_path / "one_folder.onnx").read_bytes()


def test_scalar_input_and_an_if_without_weights(tmp_path):
    """An int64 scalar input in every form; the If's branches hold no weighted op, so the main
    graph's MatMul is quantized and the If is recorded as kept float."""
    model = _rate_model()
    model_path = _save(model, tmp_path / "rate.onnx")
    feeds = _rate_feeds()
    np.savez(tmp_path / "one.npz", **feeds[0])  # x [1, 8] and a 0-d sr: one whole feed
    np.savez(tmp_path / "samples.npz", x=np.stack([f["x"] for f in feeds]), sr=np.full(len(feeds), 16000))
    for calib in (tmp_path / "one.npz", tmp_path / "samples.npz", _write_folder(tmp_path / "feeds", feeds)):
        data = load_calibration(str(calib), model)
        assert all(f["sr"].shape == () and f["x"].shape == (1, FEATURES) for f in data.feeds())
    record = _run_cli(model_path, tmp_path / "out.onnx", tmp_path / "feeds", *GENERIC)
    assert any("If node 'If_0'" not in s["reason"] and "holds no weighted op" in s["reason"]
               for s in record["skipped"]), record["skipped"]
    session = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    weight = numpy_helper.to_array(model.graph.initializer[0])
    for feed in feeds:
        want = feed["x"] @ weight
        got = session.run(None, feed)[0]
        assert 10 * np.log10((want ** 2).sum() / ((got - want) ** 2).sum()) > 20
        neg = session.run(None, {**feed, "sr": np.array(8000, np.int64)})[0]  # the other branch still runs
        assert np.allclose(neg, -got)
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "out.onnx")).graph.node}


def test_weighted_work_inside_an_if_is_refused_or_kept_float_knowingly(tmp_path, capsys):
    model_path = _save(_rate_model(weighted_branch=True), tmp_path / "rate.onnx")
    folder = _write_folder(tmp_path / "feeds", _rate_feeds())
    argv = ["optimize", model_path, str(tmp_path / "out.onnx"), "-q", "--no-cache", "--calib", folder, *GENERIC]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "If node" in err and "1 MatMul" in err and "then_branch" in err
    assert "--float-subgraphs" in err and not (tmp_path / "out.onnx").exists()
    with pytest.raises(ModelError, match="quantizes the main graph only"):
        optimize(model_path, str(tmp_path / "api.onnx"), classic(calib=_rate_feeds()))
    record = _run_cli(model_path, tmp_path / "out.onnx", folder, *GENERIC, "--float-subgraphs")
    kept = [s for s in record["skipped"] if "1 MatMul in its then_branch" in s["reason"]]
    assert kept and "kept float" in kept[0]["reason"]


@pytest.mark.parametrize(("make", "message"), [
    # a folder whose files are neither samples that concatenate nor whole feeds
    (lambda d: [np.savez(d / "a.npz", x=np.ones((3, 1, FEATURES), np.float32), h=np.ones((1, 1, HIDDEN), np.float32),
                         c=np.ones((1, 1, HIDDEN), np.float32)),
                np.savez(d / "b.npz", x=np.ones((3, 2, FEATURES), np.float32), h=np.ones((1, 1, HIDDEN), np.float32),
                         c=np.ones((1, 1, HIDDEN), np.float32))],
     "input 'x' has shape [3, 2, 8], the model wants [?, 1, 8] (one whole feed)"),
    # state of the wrong size, in a single file
    (lambda d: np.savez(d / "a.npz", x=np.ones((3, 1, FEATURES), np.float32), h=np.ones((1, 1, 4), np.float32),
                        c=np.ones((1, 1, HIDDEN), np.float32)),
     "input 'h' has shape [1, 1, 4], the model wants [1, 1, 16]"),
    # an input missing
    (lambda d: np.savez(d / "a.npz", x=np.ones((3, 1, FEATURES), np.float32)), "no data for model input(s) h, c"),
    (lambda d: None, "no calibration data there"),
])
def test_bad_feed_forms(tmp_path, capsys, make, message):
    model_path = _save(_sequence_model(), tmp_path / "seq.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    make(folder)
    assert main(["optimize", model_path, str(tmp_path / "o.onnx"), "-q", "--no-cache", "--calib", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxmp: error:") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o.onnx").exists()


def test_layout_option_and_python_forms_name_what_is_wrong(tmp_path, capsys):
    model = _sequence_model()
    feed = _sequence_feeds([5])[0]
    np.savez(tmp_path / "one.npz", **feed)
    with pytest.raises(CalibrationError, match=r"as samples .* disagree .*x \[5, 1, 8\], h \[1, 1, 16\]"):
        load_calibration(str(tmp_path / "one.npz"), model, "samples")
    assert load_calibration(str(tmp_path / "one.npz"), model, "feeds").num_feeds == 1
    with pytest.raises(CalibrationError, match="feed 1 is a list, not a dict"):
        calibration_from_feeds([feed, [1, 2]], model)
    with pytest.raises(CalibrationError, match="feed 0: input 'x' has shape"):
        calibration_from_feeds([{**feed, "x": feed["x"][:, :, :3]}], model)
    with pytest.raises(CalibrationError, match="no feeds"):
        calibration_from_feeds([], model)
    with pytest.raises(CalibrationError, match="neither a path, an iterable of feeds nor a CalibrationDataReader"):
        calibration_from_feeds(42, model)
    model_path = _save(model, tmp_path / "seq.onnx")
    with pytest.raises(SystemExit, match="2"):  # argparse's own usage error names the choices
        main(["optimize", model_path, str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "one.npz"),
              "--calib-layout", "rows"])
    assert "invalid choice: 'rows'" in capsys.readouterr().err


def test_every_stage_takes_whole_feeds(tmp_path):
    """AdaRound's captured inputs, Phase 1 and the held-back quarter (the accuracy target's default
    evaluator scores top-1 agreement per time step) on feeds of different lengths."""
    model_path = _save(_sequence_model(), tmp_path / "seq.onnx")
    feeds = _sequence_feeds([5, 9, 3, 12, 7, 4, 6, 8])
    config = classic(calib=feeds, adaround="on", adaround_iterations=20, target_drop="5")
    record = optimize(model_path, str(tmp_path / "out.onnx"), config).record
    assert record["adaround"]["layers"] >= 1  # the head, captured from every feed's LSTM output
    search = record["target"]
    assert search["metric"].startswith("top-1 agreement") and search["baseline_score"] == 100.0
    assert search["chosen_score"] >= search["threshold"] == 95.0 and search["evaluations"] >= 1
    session = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    for feed in feeds[6:]:  # the held-back quarter: two feeds, each still run as given
        assert session.run(["logits"], feed)[0].shape == (len(feed["x"]), CLASSES)


def test_calibration_passes_run_in_small_runs_where_the_batch_is_free(tmp_path):
    """Both calibration passes fetch every activation, so they run 4 samples at a time where the
    model's batch axis is free, and keep a fixed batch as the model needs it; the statistics are
    those of NumPy over every sample at once."""
    from conftest import make_cnn

    from onnxmp.quant import calibrate as calib_module
    from onnxmp.runtime.data import make_calibration_set

    model = prepare_model(make_cnn(), str(tmp_path))
    x = np.random.default_rng(3).standard_normal((10, 3, 8, 8)).astype(np.float32)
    data = make_calibration_set({"x": x}, model, "test")
    assert data.batched and not data.fixed_batch and data.batch == 16
    assert [len(f["x"]) for f in data.in_runs_of(calib_module.RUN_SAMPLES).feeds()] == [4, 4, 2]
    # the simulator's runs: a power of two of samples whose largest activation fits the run's bytes
    assert data.in_runs_under(3 << 20, run_bytes=12 << 20).batch == 4
    assert data.in_runs_under(5 << 20, run_bytes=12 << 20).batch == 2
    assert data.in_runs_under(20 << 20, run_bytes=12 << 20).batch == 1  # one sample even where it overflows
    assert data.in_runs_under(1 << 10, run_bytes=12 << 20) is data  # never above the batch given
    runs = []
    plan = find_quantizers(model)
    stats = calibrate(model, plan, data, lambda done, total, _: runs.append(total)).stats
    assert set(runs) == {6}  # two passes of three runs
    inner = [n for n in plan.activations if n != "x"]
    session = ort.InferenceSession(_with_outputs(model, inner).SerializeToString(), providers=["CPUExecutionProvider"])
    for name, value in zip(inner, session.run(inner, {"x": x}), strict=True):
        assert stats[name].minimum == pytest.approx(float(value.min()), rel=1e-5)  # fused kernels round apart
        assert stats[name].maximum == pytest.approx(float(value.max()), rel=1e-5)
        assert stats[name].hist.sum() == value.size

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    data = make_calibration_set({"x": x}, fixed, "test")
    assert data.fixed_batch and data.in_runs_of(1) is data and data.in_runs_under(1 << 30) is data


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return copy
