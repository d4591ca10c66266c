"""End to end on the tiny CNN: the exported model is deployable and measures what was simulated."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import classic, make_cnn
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxmp import optimize, parse_candidates
from onnxmp.model.loader import prepare_model

STANDARD_DOMAINS = {"", "ai.onnx"}


def assert_deployable(model: onnx.ModelProto) -> None:
    """The contract of every output: standard domain only, full check, runs on stock onnxruntime."""
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} <= STANDARD_DOMAINS
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture
def calib(tmp_path):
    return np.load(tmp_path / "calib.npz")["x"]


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_batchnorm_fold_and_opset_upgrade_keep_outputs(cnn_path, calib):
    original = onnx.load(str(cnn_path))
    prepared = prepare_model(original)
    assert not any(n.op_type == "BatchNormalization" for n in prepared.graph.node)
    assert prepared.opset_import[0].version == 21
    # onnxruntime runs the unfolded opset-13 model (onnx's reference evaluator gets opset-13
    # BatchNormalization wrong); the reference evaluator runs the prepared one.
    ref = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": calib})[0]
    got = ReferenceEvaluator(prepared).run(None, {"x": calib})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_optimize_writes_a_deployable_mixed_model(cnn_path, tmp_path, calib):
    out = tmp_path / "out.onnx"
    before = cnn_path.read_bytes()
    result = optimize(str(cnn_path), str(out), classic(calib=str(tmp_path / "calib.npz"), budget=0.35))
    assert cnn_path.read_bytes() == before  # the input is never modified
    model = onnx.load(str(out))
    assert_deployable(model)
    chosen = result.record["chosen"]
    assert chosen["relative_cost"] <= 0.35 + 1e-9
    assert len(chosen["mix"]) >= 2  # a real mix
    # Node names of the float model are kept (BatchNormalization is folded away).
    names = {n.name for n in model.graph.node}
    assert {n.name for n in make_cnn().graph.node if n.op_type != "BatchNormalization"} <= names
    # Weights are stored in the integer type of their group's candidate.
    inits = {t.name: t for t in model.graph.initializer}
    types = {4: onnx.TensorProto.INT4, 8: onnx.TensorProto.INT8, 16: onnx.TensorProto.INT16}
    for group in result.record["groups"]:
        w_bits = int(group["candidate"][1:].split("A")[0])
        for weight in group["weights"]:
            assert inits[weight + "_quantized"].data_type == types[w_bits]
    # The exported model computes what the simulation measured.
    assert chosen["sqnr_db_ort_precise"] == pytest.approx(chosen["simulated_sqnr_db"], abs=0.05)


def test_exported_model_matches_reference_evaluator(cnn_path, tmp_path, calib):
    out = tmp_path / "out.onnx"
    optimize(str(cnn_path), str(out), classic(calib=str(tmp_path / "calib.npz"),
                                                     candidates=parse_candidates("W4A8,W8A16")))
    model = onnx.load(str(out))
    ref = ReferenceEvaluator(model).run(None, {"x": calib})[0]
    got = _run(out, calib)
    # Float rounding inside the Conv may flip a value across a quantization step; allow a few steps.
    step = float(onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "logits_scale")))
    assert np.abs(got - ref).max() <= 3 * step
    assert np.mean(np.abs(got - ref) > 0) < 0.05


def test_budget_half_is_at_least_as_good_as_uniform_w8a8(cnn_path, tmp_path):
    """The search's own choice at budget 0.5, before the fallback that swaps in a measured uniform
    point (which would make the final pick pass by construction), simulated against uniform W8A8."""
    result = optimize(str(cnn_path), None, classic(calib=str(tmp_path / "calib.npz"), budget=0.5))
    record = result.record
    searched = record["chosen"]["budget_choice"]
    assert searched["relative_cost"] <= 0.5 + 1e-9
    assert searched["simulated_sqnr_db"] >= record["uniform"]["W8A8"]["sqnr_db"]
    assert searched["fallback"] is None  # so the final pick is the search's
    assert record["chosen"]["simulated_sqnr_db"] == pytest.approx(searched["simulated_sqnr_db"])


def test_record_says_when_a_measured_point_replaced_the_budget_choice(cnn_path, tmp_path):
    """At budget 0.35 on the tiny CNN the additive estimate is wrong: the greedy choice simulates
    below a measured curve point within the budget, which replaces it, and the record says so."""
    result = optimize(str(cnn_path), None, classic(calib=str(tmp_path / "calib.npz"), budget=0.35))
    chosen = result.record["chosen"]
    searched = chosen["budget_choice"]
    assert searched["fallback"] is not None and searched["fallback"].startswith(("measured curve point", "uniform"))
    assert chosen["simulated_sqnr_db"] > searched["simulated_sqnr_db"]


def test_external_data_model_loads(tmp_path):
    calib = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    path = tmp_path / "ext.onnx"
    onnx.save(make_cnn(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    np.savez(tmp_path / "calib.npz", x=calib)
    result = optimize(str(path), str(tmp_path / "out.onnx"), classic(calib=str(tmp_path / "calib.npz")))
    assert result.record["counts"]["weighted_ops"] == 6


def test_memory_metric_counts_weight_bits(cnn_path, tmp_path):
    result = optimize(str(cnn_path), None, classic(calib=str(tmp_path / "calib.npz"), metric="memory",
                                                          budget=0.75))
    record = result.record
    assert record["chosen"]["memory_bytes"] <= 0.75 * record["baseline"]["memory_bytes"] + 1e-6


def test_four_bit_activations_export_as_uint4_and_match_reference(cnn_path, tmp_path, calib):
    out = tmp_path / "w4a4.onnx"
    result = optimize(str(cnn_path), str(out), classic(calib=str(tmp_path / "calib.npz"),
                                                              candidates=parse_candidates("W4A4,W8A8"), budget=0.3))
    model = onnx.load(str(out))
    assert_deployable(model)
    groups = result.record["groups"]
    assert any(g["candidate"] == "W4A4" for g in groups)
    inits = {t.name: t for t in model.graph.initializer}
    for group in groups:
        a_bits = int(group["candidate"].split("A")[1])
        for name in group["activations"]:
            zero_point = next(n.input[2] for n in model.graph.node
                              if n.op_type == "QuantizeLinear" and n.output[0].startswith(name))
            assert inits[zero_point].data_type == {4: onnx.TensorProto.UINT4, 8: onnx.TensorProto.UINT8}[a_bits]
    # onnx's reference evaluator (an independent implementation of UINT4 Q/DQ) computes the same
    ref = ReferenceEvaluator(model).run(None, {"x": calib})[0]
    got = _run(out, calib)
    step = float(onnx.numpy_helper.to_array(inits["logits_scale"]))
    assert np.abs(got - ref).max() <= 3 * step
    assert result.record["chosen"]["sqnr_db_ort_precise"] == pytest.approx(
        result.record["chosen"]["simulated_sqnr_db"], abs=0.05)


def test_negative_dims_become_symbolic(tmp_path):
    """Some exporters write -1 for "any size"; the prepared model names those dimensions."""
    from onnxmp.model.loader import prepare_model

    model = make_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    dims = prepare_model(model).graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and dims[0].dim_param


def _matmul_model(path) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("model, candidates, precise_runs", [("cnn", "W8A8", 0), ("matmul", "W8A16", 1)])
def test_the_precise_session_runs_only_where_matmulnbits_is(cnn_path, tmp_path, monkeypatch, model, candidates,
                                                             precise_runs):
    """The precise session config sets only MatMulNBits' accuracy level: the exported file is run a
    second time with it only where onnxruntime made a MatMulNBits (here a MatMul with 8-bit weights
    and 16-bit activations); else both SQNRs are the one run's."""
    from onnxmp import pipeline

    path = cnn_path
    if model == "matmul":
        path = tmp_path / "mm.onnx"
        _matmul_model(path)
        np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32))
    calib = str(tmp_path / ("x.npz" if model == "matmul" else "calib.npz"))
    made = []
    real = pipeline.make_session
    monkeypatch.setattr(pipeline, "make_session", lambda *a, **k: made.append(k.get("extra_config")) or real(*a, **k))
    record = optimize(str(path), None, classic(calib=calib, candidates=parse_candidates(candidates), budget=1.0,
                                               adaround="off")).record
    assert sum(config == pipeline.PRECISE_SESSION_CONFIG for config in made) == precise_runs
    chosen = record["chosen"]
    assert np.isfinite(chosen["sqnr_db_ort_precise"]) and np.isfinite(chosen["sqnr_db_ort_default"])


def test_phase2_points_from_cached_cuts_measure_as_whole_graph_runs(cnn_path, tmp_path, monkeypatch):
    """Phase 2's measured points run from cached cuts of the budget choice's values (a silent
    fallback to whole graphs would pass the other tests); ``--max-memory 0`` runs each whole,
    and both measure the same points alike."""
    from onnxmp.search import partial

    events = []
    build, run = partial.CutCache.__init__, partial.CutCache.batches
    monkeypatch.setattr(partial.CutCache, "__init__", lambda self, *a, **k: events.append("cache") or build(self, *a, **k))
    monkeypatch.setattr(partial.CutCache, "batches", lambda self, *a: events.append("run") or run(self, *a))
    config = classic(calib=str(tmp_path / "calib.npz"), budget=0.35, refine_ranges=False)
    cut = optimize(str(cnn_path), None, config).record
    assert events.count("cache") == 2  # Phase 1's (all-highest) and Phase 2's (the budget choice)
    assert "run" in events[events.index("cache", 1):]
    events.clear()
    whole = optimize(str(cnn_path), None, dataclasses.replace(config, max_memory=0)).record
    assert not events
    measured = [(p["step"], p["measured_sqnr_db"]) for p in cut["pareto_curve"] if p["measured_sqnr_db"] is not None]
    again = {p["step"]: p["measured_sqnr_db"] for p in whole["pareto_curve"] if p["measured_sqnr_db"] is not None}
    assert len(measured) >= 2
    for step, sqnr in measured:  # a suffix's constants and 16-bit stand-ins move a few roundings
        assert sqnr == pytest.approx(again[step], abs=0.05)
    assert cut["chosen"]["mix"] == whole["chosen"]["mix"]
