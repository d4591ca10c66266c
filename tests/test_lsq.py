"""LSQ fine-tuning: the training graph's gradients against a NumPy reference of LSQ's equations,
a short training run that moves step sizes and weights and lowers the loss, and the write-back
into a QDQ model that stock onnxruntime runs.

The training runs in the separate onnxruntime-training environment (``onnxmp finetune --setup``,
or $ONNXMP_TRAIN_PYTHON); without it these tests are skipped.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmp import OptimizeConfig, optimize, parse_candidates
from onnxmp.finetune.lsq import training_graph
from onnxmp.finetune.runner import FinetuneConfig, finetune, run_worker, train_python
from onnxmp.model.loader import load_model, prepare_model
from onnxmp.runtime.session import make_session

pytestmark = pytest.mark.skipif(not os.path.isfile(train_python()),
                                reason="no LSQ training environment (onnxmp finetune --setup, or ONNXMP_TRAIN_PYTHON)")


def _matmul_model(tmp_path, rng, softmax: bool = False, samples: int = 16, candidates: str = "W8A8",
                  w_scale: float = 1.0):
    """x·w (→ Softmax) saved with seeded calibration samples, and onnxmp's QDQ model of it (q.onnx)."""
    w = (rng.standard_normal((8, 4)) * w_scale).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits" if softmax else "y"], name="mm")]
    nodes += [helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1)] if softmax else []
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("prob" if softmax else "y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "float.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    x = rng.standard_normal((samples, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    # every tensor quantized (generic): the LSQ graph then has a step size on the output too
    optimize(str(path), str(tmp_path / "q.onnx"), OptimizeConfig(candidates=parse_candidates(candidates), budget=1.0,
                                                                 cache_dir=None, calib=str(tmp_path / "calib.npz"),
                                                                 target="generic"))
    return path, x, w


def _fake_quant(v, s, z, qmin, qmax, g):
    """LSQ forward and the pieces of its backward: out, d out/d v, d out/d s (times g). The grid
    position is computed in float32 as the graph does (a weight at exactly ±Q_P·s is on the
    clip boundary, and float64 could put it on the other side)."""
    u = (np.float32(v) / np.float32(s) + np.float32(z)).astype(np.float64)
    r = np.round(np.clip(u, qmin, qmax))
    inside = (u >= qmin) & (u <= qmax)  # LSQ: -Q_N <= v/s <= Q_P passes the gradient
    return (r - z) * s, inside.astype(np.float64), g * ((r - z) - inside * (u - z))


def test_gradients_match_lsq_equations(tmp_path):
    rng = np.random.default_rng(0)
    path, x, _ = _matmul_model(tmp_path, rng)
    qdq = onnx.load(str(tmp_path / "q.onnx"))
    graph = training_graph(qdq, prepare_model(load_model(str(path))))
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.model.graph.initializer}
    qinits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in qdq.graph.initializer}
    zero = {n.output[0]: qinits[n.input[2]] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    target = rng.standard_normal((16, 4)).astype(np.float32)
    work = tmp_path / "job"
    work.mkdir()
    onnx.save(graph.model, str(work / "train.onnx"))
    np.savez(work / "data.npz", x=x, target=target)
    trainable = [q.scale for q in graph.quantizers] + list(graph.weights)
    run_worker(str(work), {"trainable": trainable, "loss": "mse", "inputs": ["x"], "mode": "gradients"})
    got = dict(np.load(work / "gradients.npz"))

    # NumPy reference, float64: x → fq → MatMul(fq_w(W)) → fq → mean squared error
    s_x, s_w, s_y = inits["x_dequantized_lsq_scale"], inits["w_lsq_scale"], inits["y_lsq_scale"]
    z_x = next(v for k, v in zero.items() if k.startswith("x"))
    z_y = next(v for k, v in zero.items() if k.startswith("y"))
    w = inits["w_lsq_float"]
    a, _, ds_x_part = _fake_quant(x.astype(np.float64), s_x, z_x, 0, 255, 1 / np.sqrt(8 * 255))
    wq, in_w, ds_w_part = _fake_quant(w, s_w, 0.0, -128, 127, 1 / np.sqrt(8 * 127))
    y = a @ wq
    yq, in_y, ds_y_part = _fake_quant(y, s_y, z_y, 0, 255, 1 / np.sqrt(4 * 255))
    loss = np.mean((yq - target) ** 2)
    d_yq = 2 * (yq - target) / yq.size
    d_y = d_yq * in_y
    d_a, d_wq = d_y @ wq.T, a.T @ d_y
    expected = {
        "y_lsq_scale": np.sum(d_yq * ds_y_part),
        "w_lsq_scale": np.sum(d_wq * ds_w_part, axis=0),
        "w_lsq_float": d_wq * in_w,
        "x_dequantized_lsq_scale": np.sum(d_a * ds_x_part),
    }
    assert float(got["loss"]) == pytest.approx(loss, rel=1e-5)
    # Weights: to 1e-5 of the gradient's size. Step sizes: the graph sums d·(r - z) and d·v/s
    # separately in float32 and they cancel down to LSQ's small residual, so agreement is to
    # 1e-5 of those summands' size (about 1e-4 of the result).
    summands = {"y_lsq_scale": np.sum(np.abs(d_yq * (yq / s_y))), "w_lsq_scale": np.sum(np.abs(d_wq * wq / s_w), axis=0),
                "x_dequantized_lsq_scale": np.sum(np.abs(d_a * a / s_x)), "w_lsq_float": np.abs(expected["w_lsq_float"]).max()}
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5 * np.max(summands[name]), err_msg=name)


def test_finetune_moves_parameters_lowers_loss_and_writes_a_qdq_model(tmp_path):
    out = tmp_path / "lsq.onnx"
    progress = []
    optimize("models/digits/digits_cnn.onnx", str(tmp_path / "q.onnx"),
             OptimizeConfig(candidates=parse_candidates("W4A8"), budget=1.0, cache_dir=None, adaround="off",
                            target="generic"))
    test = np.load("models/digits/test.npz")
    np.savez(tmp_path / "train.npz", input=test["input"][:256], labels=test["labels"][:256])
    record = finetune(str(tmp_path / "q.onnx"), "models/digits/digits_cnn.onnx", str(out), str(tmp_path / "train.npz"),
                      FinetuneConfig(epochs=3, learning_rate=1e-3, batch=32), workdir=str(tmp_path / "job"),
                      progress=progress.append)
    losses = [e["loss"] for e in record["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0] and progress == record["epochs"]
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    changed = [n for n in before if not np.array_equal(before[n], after[n])]
    assert any(n.endswith("_scale") for n in changed) and any(n.endswith("_quantized") for n in changed)
    session = make_session(str(out))  # stock onnxruntime runs it
    assert session.run(None, {"input": test["input"][:4]})[0].shape == (4, 10)
    # the written-back QDQ model computes what the training graph computed with the learned values
    train = onnx.load(str(tmp_path / "job" / "train.onnx"))
    learned = dict(np.load(tmp_path / "job" / "learned.npz"))
    for tensor in train.graph.initializer:
        if tensor.name in learned:
            tensor.CopyFrom(numpy_helper.from_array(learned[tensor.name].astype(np.float32), tensor.name))
    # digits has a MaxPool: onnxruntime-training needs static shapes there, so it trains at batch 32
    assert train.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 32
    for start in (0, 32, 64):
        x = test["input"][start:start + 32]
        trained = make_session(train, optimized=False).run(None, {"input": x})[0]
        written = make_session(str(out), optimized=False).run(None, {"input": x})[0]  # no integer-kernel fusion
        close = np.isclose(written, trained, rtol=1e-5, atol=1e-5 * np.abs(trained).max())
        # A value exactly on a rounding tie may round either way in the two graphs (Div and Round
        # in training, QuantizeLinear in the QDQ model): one step at one quantizer, seen on 1 of
        # 320 logits with onnxruntime-training 1.19.2 and numpy 2.4; more would be a real difference.
        assert close.mean() >= 0.99, f"{(~close).sum()} of {close.size} logits differ"
    # a rerun resumes: every epoch is done, nothing is retrained
    shutil.copy(tmp_path / "job" / "progress.json", tmp_path / "progress.json")
    again = finetune(str(tmp_path / "q.onnx"), "models/digits/digits_cnn.onnx", str(out), str(tmp_path / "train.npz"),
                     FinetuneConfig(epochs=3, learning_rate=1e-3, batch=32), workdir=str(tmp_path / "job"))
    assert again["epochs"] == []


def test_distillation_trains_the_logits_of_a_softmax_model(tmp_path):
    """A model ending in Softmax trains (and is distilled) on the logits; the Softmax output's
    quantizer keeps its post-training scale."""
    path, x, w = _matmul_model(tmp_path, np.random.default_rng(3), softmax=True, samples=32, candidates="W4A8",
                               w_scale=0.5)
    out = tmp_path / "lsq.onnx"
    finetune(str(tmp_path / "q.onnx"), str(path), str(out), str(tmp_path / "calib.npz"),
             FinetuneConfig(epochs=2, batch=16), workdir=str(tmp_path / "job"))
    train = onnx.load(str(tmp_path / "job" / "train.onnx"))
    assert [o.name for o in train.graph.output] == ["logits"]
    assert not any(n.op_type == "Softmax" for n in train.graph.node)
    target = np.load(tmp_path / "job" / "data.npz")["target"]
    np.testing.assert_allclose(target, x @ w, rtol=1e-5, atol=1e-5)  # the float logits, not probabilities
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert np.array_equal(before["prob_scale"], after["prob_scale"])
    assert not np.array_equal(before["logits_scale"], after["logits_scale"])


def test_finetune_on_whole_feeds_of_different_lengths(tmp_path):
    """A model without a batch axis (x [T, 8], T symbolic) trained on a folder of feeds of their
    own lengths, one per step, distilled from the float model feed by feed."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "seq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 4])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "float.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    folder = tmp_path / "feeds"
    folder.mkdir()
    lengths = [3, 7, 5, 9]
    for i, t in enumerate(lengths):
        np.savez(folder / f"f{i}.npz", x=rng.standard_normal((t, 8)).astype(np.float32))
    optimize(str(path), str(tmp_path / "q.onnx"), OptimizeConfig(candidates=parse_candidates("W4A8"), budget=1.0,
                                                                 cache_dir=None, calib=str(folder), target="generic",
                                                                 calib_layout="feeds"))
    record = finetune(str(tmp_path / "q.onnx"), str(path), str(tmp_path / "lsq.onnx"), str(folder),
                      FinetuneConfig(epochs=2, calib_layout="feeds"), workdir=str(tmp_path / "job"))
    assert len(record["epochs"]) == 2
    stored = np.load(tmp_path / "job" / "data.npz")
    for i, t in enumerate(lengths):  # each feed with its own float target, x @ w
        np.testing.assert_allclose(stored[f"{i}/target"], stored[f"{i}/x"] @ w, rtol=1e-5, atol=1e-5)
        assert stored[f"{i}/x"].shape == (t, 8)
    session = make_session(onnx.load(str(tmp_path / "lsq.onnx")))
    assert session.run(None, {"x": np.ones((11, 8), np.float32)})[0].shape == (11, 4)
