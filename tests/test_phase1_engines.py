"""Phase 1 gives the same sensitivity list however it is computed: whole-graph evaluations,
partial re-evaluation from cached cut points, worker processes, and the naive way (a fresh
exported QDQ model and onnxruntime session per group and candidate)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from conftest import CLASSIC, classic

from onnxmp.model.large import light_copy
from onnxmp.output.export import export_qdq
from onnxmp.pipeline import OptimizeConfig, analyze
from onnxmp.quant import numerics
from onnxmp.quant.candidates import Candidate
from onnxmp.runtime.session import make_session, run_over, with_outputs
from onnxmp.search.partial import find_cuts
from onnxmp.search.simulate import without_quantizers

DIGITS = "models/digits/digits_cnn.onnx"


def _table(analysis) -> dict:
    return {(s.gid, s.candidate): s.nsr for s in analysis.sensitivities}


def _naive_db(analysis, candidates) -> dict:
    """SQNR per (group, candidate) from a freshly exported model and session each time."""
    highest = candidates[-1]
    baseline = {g.gid: highest for g in analysis.plan.groups}
    names = analysis.simulator.observed
    out = {}
    for group in analysis.plan.groups:
        for cand in candidates:
            model = export_qdq(analysis.model, analysis.plan, analysis.params, {**baseline, group.gid: cand})
            outputs = run_over(make_session(with_outputs(model, names), optimized=False), analysis.data, names)
            out[(group.gid, cand)] = numerics.sqnr_db(analysis.simulator.reference, outputs)
    return out


@pytest.fixture(scope="module")
def engines():
    base = classic(calib="models/digits/calib.npz", adaround="off", cache_dir=None, phase1_samples=0)  # every sample
    return {
        "whole": analyze(DIGITS, dataclasses.replace(base, max_memory=0)),  # nothing cached: whole graphs
        "partial": analyze(DIGITS, base),
        "workers": analyze(DIGITS, dataclasses.replace(base, workers=2)),
    }


def test_partial_and_parallel_phase1_equal_whole_graph_phase1(engines):
    whole = engines["whole"]
    for name in ("partial", "workers"):
        other = engines[name]
        assert [(s.gid, s.candidate) for s in other.sensitivities] == [(s.gid, s.candidate) for s in whole.sensitivities]
        # suffix sessions bake the baseline's weights in as constants, and onnxruntime's kernels for
        # constant weights sum in another order: a value on a rounding boundary can flip (< 0.005 dB)
        assert _table(other) == pytest.approx(_table(whole), rel=1e-3, abs=1e-12), name
        assert other.params.range_method == whole.params.range_method, name
        assert other.base_nsr == pytest.approx(whole.base_nsr, rel=1e-6)
    assert _table(engines["workers"]) == pytest.approx(_table(engines["partial"]), rel=1e-9, abs=1e-15)


def test_phase1_equals_naive_exported_models(engines):
    analysis = engines["partial"]
    candidates = CLASSIC["candidates"]
    naive = _naive_db(analysis, candidates)
    ours = {k: numerics.nsr_to_db(v) for k, v in _table(analysis).items()}
    for key, db in ours.items():
        if db < 100:  # above that both are float rounding noise
            assert naive[key] == pytest.approx(db, abs=0.05), key
    # the same ranking of (group, candidate) by sensitivity
    order = sorted(ours, key=lambda k: (-ours[k], k[0], k[1]))
    naive_order = sorted(ours, key=lambda k: (-naive[k], k[0], k[1]))
    assert order[:10] == naive_order[:10]


def test_phase1_on_a_subset_measures_those_samples_and_the_rest_uses_all():
    """Phase 1 with ``phase1_samples=16`` measures 16 samples spread evenly over the 64: its
    entries match exported QDQ models run by onnxruntime on exactly those samples, while the
    simulator the later stages use still holds all 64."""
    base = classic(adaround="off", cache_dir=None, calib="models/digits/calib.npz")
    sub = analyze(DIGITS, dataclasses.replace(base, phase1_samples=16))
    picked = np.unique(np.linspace(0, 63, 16).round().astype(int))
    assert sub.data.num_samples == 64 and sub.simulator.data.num_samples == 64 and len(picked) == 16
    names = sub.simulator.observed
    subset = sub.data.subset(picked)
    reference = run_over(make_session(with_outputs(sub.model, names), optimized=False), subset, names)
    highest = CLASSIC["candidates"][-1]
    table = _table(sub)
    for (gid, cand), nsr in sorted(table.items(), key=lambda kv: -kv[1])[:6]:  # the most sensitive entries
        model = export_qdq(sub.model, sub.plan, sub.params, {**{g.gid: highest for g in sub.plan.groups}, gid: cand})
        outputs = run_over(make_session(with_outputs(model, names), optimized=False), subset, names)
        assert numerics.sqnr_db(reference, outputs) == pytest.approx(numerics.nsr_to_db(nsr), abs=0.05), (gid, cand)
    whole = analyze(DIGITS, dataclasses.replace(base, phase1_samples=0))
    assert _table(whole) != pytest.approx(table, rel=1e-6)  # all 64 samples measure otherwise


def test_partial_evaluation_used_cached_cuts(cnn_path):
    model = onnx.load(str(cnn_path))
    cuts = find_cuts(model.graph, set(), ["logits"], count=4)
    assert cuts and all(0 < c.position < len(model.graph.node) for c in cuts)
    positions = [c.position for c in cuts]
    assert positions == sorted(set(positions))
    # every live tensor is made before the cut and read at or after it
    made = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    for cut in cuts:
        for name in cut.live:
            assert made.get(name, -1) < cut.position
            assert any(name in n.input for n in list(model.graph.node)[cut.position:]) or name == "logits"


def test_suffix_evaluation_matches_whole_graph_on_a_late_change(cnn_path):
    analysis = analyze(str(cnn_path), classic(adaround="off", cache_dir=None, max_memory=0))
    sim, plan = analysis.simulator, analysis.plan
    highest, lowest = CLASSIC["candidates"][-1], CLASSIC["candidates"][0]
    baseline = {g.gid: highest for g in plan.groups}
    late = {**baseline, plan.groups[-1].gid: lowest}
    whole = sim.outputs(late)
    sim.keep_baseline(baseline)
    assert sim.cached_bytes > 0
    partial = sim.outputs(late)
    assert len(sim._partial._sessions) == 1  # it ran a suffix, not the whole graph
    sim.drop_baseline()
    for a, b in zip(whole, partial, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_ray_backend_gives_the_same_list(engines):
    ray = pytest.importorskip("ray", reason="Ray is the optional extra onnxmp[ray]; not installed here")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = classic(calib="models/digits/calib.npz", adaround="off", cache_dir=None, workers=2,
                                backend="ray")
        on_ray = analyze(DIGITS, config)
    finally:
        ray.shutdown()
    whole = engines["whole"]
    assert [(s.gid, s.candidate) for s in on_ray.sensitivities] == [(s.gid, s.candidate) for s in whole.sensitivities]
    assert _table(on_ray) == pytest.approx(_table(engines["workers"]), rel=1e-9, abs=1e-15)  # same engine
    assert _table(on_ray) == pytest.approx(_table(whole), rel=1e-3, abs=1e-12)
    assert on_ray.params.range_method == whole.params.range_method


def _long_skip_cnn(folder) -> str:
    """Conv+ReLU ×24 with biases, and a last Conv (with bias) reading the fifth ReLU's output
    again: that activation's group holds that far weight and bias (several groups start
    between two cuts, so a cut's suffix serves more than one group)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits, nodes, x = [], [], "input"
    layers = 25
    for i in range(layers):
        cin = 3 if i == 0 else 8
        inits += [numpy_helper.from_array((rng.standard_normal((8, cin, 3, 3)) * 0.3).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), f"b{i}")]
        source = "r4" if i == layers - 1 else x
        nodes += [helper.make_node("Conv", [source, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    nodes.append(helper.make_node("Add", [f"r{layers - 2}", f"r{layers - 1}"], ["out"], name="skip"))
    graph = helper.make_graph(nodes, "skip", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8, 8, 8])], inits)
    path = str(folder / "skip.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    np.savez(folder / "skip.npz", input=rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    return path


def test_suffix_sessions_do_not_depend_on_what_was_measured_before(tmp_path):
    """One process measures every group, a worker only some: each group's suffix must take the
    same parameters as inputs (the rest baked in), or the two compute with different kernels."""
    path = _long_skip_cnn(tmp_path)
    analysis = analyze(path, classic(calib=str(tmp_path / "skip.npz"), adaround="off", cache_dir=None))
    sim, plan = analysis.simulator, analysis.plan
    highest, lowest = CLASSIC["candidates"][-1], CLASSIC["candidates"][0]
    baseline = {g.gid: highest for g in plan.groups}

    def suffixes(groups) -> tuple[dict, dict]:
        sim.keep_baseline(baseline)
        cache, nsr, made = sim._partial, {}, {}
        make = cache._suffix
        for g in groups:
            used = []
            cache._suffix = lambda *a: used.append(make(*a)) or used[-1]  # noqa: B023
            nsr[g.gid] = sim.nsr({**baseline, g.gid: lowest})
            made[g.gid] = [(s.inputs, s.baked_bytes) for s in used]
        sim.drop_baseline()
        return made, nsr

    everything, all_nsr = suffixes(plan.groups)
    first = plan.group_of_activation()["r4"]
    others = [g for g in plan.groups if g.gid != first]  # a worker not given r4's group
    alone, alone_nsr = suffixes(others)
    assert sum(map(len, alone.values())) >= 3  # most evaluations ran from a cut
    assert all(alone[g.gid] == everything[g.gid] for g in others)  # the same suffix inputs
    assert all(alone_nsr[g.gid] == all_nsr[g.gid] for g in others)  # bit for bit


def test_one_suffix_session_per_cut_where_no_group_is_float(tmp_path):
    """Against a baseline that leaves no group float, no quantizer is pruned, so one session per
    cut serves every group read in its window (a session per group made Phase 1 of a 200-layer
    CNN cost 1.42 float passes per evaluation instead of 1.07); the values match whole graphs."""
    path = _long_skip_cnn(tmp_path)
    analysis = analyze(path, classic(calib=str(tmp_path / "skip.npz"), adaround="off", cache_dir=None))
    sim, plan = analysis.simulator, analysis.plan
    highest, lowest = CLASSIC["candidates"][-1], CLASSIC["candidates"][0]
    baseline = {g.gid: highest for g in plan.groups}
    whole = {g.gid: sim.nsr({**baseline, g.gid: lowest}) for g in plan.groups}
    sim.keep_baseline(baseline)
    try:
        cache, made = sim._partial, []
        make = cache._suffix
        cache._suffix = lambda *a: made.append(make(*a)) or made[-1]
        partial = {g.gid: sim.nsr({**baseline, g.gid: lowest}) for g in plan.groups}
        sessions = {id(s.session) for s in made}
        assert len(made) >= 3 and len(sessions) <= len(cache.cuts) < len(made)
    finally:
        sim.drop_baseline()
    for gid, nsr in whole.items():
        assert partial[gid] == pytest.approx(nsr, rel=1e-3, abs=1e-9)  # baked weights: other kernels


def test_baked_and_fed_matmul_weights_compute_alike():
    """A suffix session bakes the baseline's weights in, the whole-graph session feeds them: both
    must run the same MatMul kernel. onnxruntime pre-packs constant MatMul weights into a kernel
    that sums in another order; on MiniLM that moved Phase 1's SQNRs by up to 0.06 dB (sums of
    on-grid values land on the next quantizer's rounding ties), so simulation sessions do not
    pre-pack."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 128, 384)).astype(np.float32)
    w = rng.standard_normal((384, 384)).astype(np.float32)

    def matmul(baked: bool) -> onnx.ModelProto:
        inputs = [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))]
        if not baked:
            inputs.append(onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, list(w.shape)))
        graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "mm", inputs,
                                       [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                                       [onnx.numpy_helper.from_array(w, "w")] if baked else [])
        return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])

    baked = make_session(matmul(True), keep_float_weights=True).run(None, {"x": x})[0]
    fed = make_session(matmul(False), keep_float_weights=True).run(None, {"x": x, "w": w})[0]
    np.testing.assert_array_equal(baked, fed)
    np.testing.assert_allclose(baked, x @ w, rtol=1e-4, atol=1e-3)


def test_large_models_suffix_sessions_bake_no_weights(cnn_path, monkeypatch):
    """The simulation model holds no weights (they are fed), so whether a model is large is told
    by its feeds: a large model's suffix sessions must not bake its weights in (each suffix would
    hold another copy; a 2 GB MLP peaked at 10 GB that way)."""
    analysis = analyze(str(cnn_path), classic(adaround="off", cache_dir=None, max_memory=0))
    sim, plan = analysis.simulator, analysis.plan
    highest, lowest = CLASSIC["candidates"][-1], CLASSIC["candidates"][0]
    baseline = {g.gid: highest for g in plan.groups}
    middle = {**baseline, plan.groups[len(plan.groups) // 2].gid: lowest}
    for limit, baked in ((1 << 30, True), (1000, False)):  # the weights are a few kB
        monkeypatch.setattr("onnxmp.model.large.LARGE_BYTES", limit)
        sim.keep_baseline(baseline)
        sim.outputs(middle)
        sessions = list(sim._partial._sessions.values())
        assert sessions and all((s.baked_bytes > 0) == baked for s in sessions), limit
        sim.drop_baseline()


@pytest.fixture(scope="module")
def ort_engines():
    """``--target ort``, whose most expensive candidate is FP32 (``bops``: repeatable, where the
    default ``latency`` depends on timings)."""
    base = OptimizeConfig(calib="models/digits/calib.npz", adaround="off", cache_dir=None, target="ort", metric="bops")
    return {"whole": analyze(DIGITS, dataclasses.replace(base, max_memory=0)), "partial": analyze(DIGITS, base)}


def test_float_groups_run_without_quantizers(ort_engines):
    """A group left float has no quantizer in the simulation's runs, as in the exported file: the
    all-FP32 baseline is the float model (no 16-bit stand-in), and every Phase 1 entry, whole-graph
    or partial, matches the exported QDQ model with only that group quantized."""
    whole, partial = ort_engines["whole"], ort_engines["partial"]
    float_all = {g.gid: Candidate.parse("FP32") for g in whole.plan.groups}
    assert whole.simulator.float_activations(float_all) == frozenset(whole.plan.activations)
    for analysis in (whole, partial):
        assert numerics.nsr_to_db(analysis.base_nsr) > 120  # float rounding only; a 16-bit grid gives ~90
    assert _table(partial) == pytest.approx(_table(whole), rel=1e-3, abs=1e-12)
    names = whole.simulator.observed
    measured = [s for s in partial.sensitivities if s.evaluated]
    assert measured
    for entry in measured:
        assignment = {**float_all, entry.gid: entry.candidate}
        model = export_qdq(partial.model, partial.plan, partial.params, assignment)
        outputs = run_over(make_session(with_outputs(model, names), optimized=False), partial.data, names)
        assert numerics.sqnr_db(partial.simulator.reference, outputs) == pytest.approx(entry.sqnr_db, abs=0.05)


def test_without_quantizers_gives_the_float_graph(cnn_path):
    """Every quantizer removed, the simulation model computes the float model's values, reading a
    graph input directly where its quantizer was the first node."""
    analysis = analyze(str(cnn_path), classic(adaround="off", cache_dir=None))
    sim = analysis.simulator
    pruned, alias = without_quantizers(light_copy(sim._model, keep=None), frozenset(analysis.plan.activations))
    assert not any(n.name.endswith(("::fq_clip", "::fq_q", "::fq_dq")) for n in pruned.graph.node)
    assert not any(i.name.endswith(("::scale", "::zp", "::lo", "::hi")) for i in pruned.graph.input)
    assert all(value in {o for n in pruned.graph.node for o in n.output} | {i.name for i in pruned.graph.input}
               for value in alias.values())
    session = make_session(pruned, outputs=sim.observed, keep_float_weights=True)
    weights = {i.name: sim.params.float_weight(i.name) for i in session.get_inputs() if i.name not in sim.data.input_names}
    outputs = run_over(session, analysis.data, sim.observed, weights)
    for got, want in zip(outputs, sim.reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_float_baseline_suffixes_run_from_cuts(ort_engines):
    """Against the all-FP32 baseline, evaluations run pruned suffixes from cached cuts (no cut
    falls inside a quantizer that pruning removes) and match the whole pruned graph."""
    analysis = ort_engines["whole"]
    sim, plan = analysis.simulator, analysis.plan
    float_all = {g.gid: Candidate.parse("FP32") for g in plan.groups}
    late = {**float_all, plan.groups[-1].gid: Candidate.parse("W8A8")}
    whole = sim.outputs(late)
    sim.keep_baseline(float_all)
    try:
        assert sim.cached_bytes > 0
        partial = sim.outputs(late)
        assert len(sim._partial._sessions) == 1  # it ran a suffix, not the whole graph
    finally:
        sim.drop_baseline()
    for a, b in zip(whole, partial, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_float_activation_kept_behind_a_16_bit_stand_in_measures_near_float(ort_engines):
    """``whole_outputs`` with one float activation's quantizer kept and fed a 16-bit min/max grid:
    far below the signal (what sqnr_resolution.py measures), yet not the float graph's exact values;
    with nothing kept, the float point's own outputs."""
    from onnxmp.search.simulate import FLOAT_PROXY_BITS

    analysis = ort_engines["whole"]
    sim = analysis.simulator
    float_all = {g.gid: Candidate.parse("FP32") for g in analysis.plan.groups}
    name = next(iter(analysis.plan.activations))
    plain = sim.whole_outputs(float_all)
    for got, want in zip(plain, sim.outputs(float_all), strict=True):
        np.testing.assert_array_equal(got, want)
    kept = sim.whole_outputs(float_all, sim.activation_feeds(name, FLOAT_PROXY_BITS, "minmax"), frozenset({name}))
    assert 60 < numerics.sqnr_db(sim.reference, kept) < numerics.sqnr_db(sim.reference, plain)


def test_workers_from_a_script_without_a_main_guard_finish(tmp_path):
    """A user's script that calls optimize(..., workers=2) at module level: spawned workers must
    not run the script again (multiprocessing refuses that inside a worker, and the pool then
    waited for them forever); the script runs once and finishes."""
    import os
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from onnxmp import OptimizeConfig, optimize\n"
        "print('started', flush=True)\n"
        f"optimize({os.path.abspath(DIGITS)!r}, {str(tmp_path / 'out.onnx')!r}, OptimizeConfig(\n"
        f"    calib={os.path.abspath('models/digits/calib.npz')!r}, cache_dir=None, workers=2, metric='bops'))\n"
        "print('finished', flush=True)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["started", "finished"]
