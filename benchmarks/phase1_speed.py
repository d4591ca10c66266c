"""Phase 1 and AdaRound at scale: the naive way versus onnxmp, measured in one run.

    python benchmarks/phase1_speed.py [--layers 200] [--models minilm ...] [--samples 16] [--no-adaround] [--note TEXT]

Per model: the naive Phase 1 (a fresh exported QDQ model and onnxruntime session per distinct
configuration: the all-highest baseline once, and per group each candidate that changes the
model, so no W4A8 run of a weightless group that W8A8 already made; the ranges are the ones
Phase 1 chose; only the candidates onnxmp's Phase 1 measures: those Phase 2 can choose); the lean
naive way (``lean_naive_phase1``: per configuration a copy of the model with only that group
quantized, a fresh session, one pass, no caching); onnxmp evaluating whole graphs (``--max-memory 0``);
onnxmp with partial re-evaluation from cached cut points (the default); the same with
``--workers 2``. Each onnxmp run is a fresh process; peak resident memory is each process's own
(/proc VmHWM: the run's process, and the largest worker's, polled while it runs). Also AdaRound's seconds per layer (W4, 1000
iterations) with 1 and 2 workers. The sensitivity lists must agree: partial vs workers exactly,
whole within 0.01 dB, naive within 0.05 dB (it runs the exported model). Writes
benchmarks/results/phase1_speed.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import tempfile
import threading
import time

import numpy as np
import onnx
from common import bench_models, git_state, publish_merged, samples_calib_only
from onnx import TensorProto, helper, numpy_helper

from onnxmp import OptimizeConfig, parse_candidates
from onnxmp.output.export import export_qdq
from onnxmp.pipeline import analyze
from onnxmp.quant import numerics
from onnxmp.runtime.session import make_session, run_over, with_outputs

# the paper's candidates, with quantizers around every op (``--target generic``): Phase 1's full
# G x C workload, not the two-candidate default of --target ort
CANDIDATES = parse_candidates("W4A8,W8A8,W8A16")
FP32 = parse_candidates("FP32")[0]


def deep_cnn(layers: int, seed: int = 0) -> onnx.ModelProto:
    """A synthetic deep residual CNN with ``layers`` weighted layers on 3×32×32 inputs (random
    weights: for timing only)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    channels = 16
    inits.append(numpy_helper.from_array((rng.standard_normal((channels, 3, 3, 3)) * 0.3).astype(np.float32), "w0"))
    nodes.append(helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c0"], ["r0"], name="relu0"))
    x = "r0"
    for i in range(1, layers - 1):
        w = (rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2 / (9 * channels)) * 0.5).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Add", [f"c{i}", x], [f"a{i}"], name=f"add{i}"))
        nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    inits.append(numpy_helper.from_array(rng.standard_normal((channels, 10)).astype(np.float32), "fc"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc"], ["logits"], name="fc"))
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _effect(group, cand) -> tuple[int | None, int | None]:
    """What a candidate changes in a group: its weight bits only if it has weights, its activation
    bits only if it has activations (W4A8 and W8A8 of a weightless group are the same model)."""
    return (cand.w_bits if group.weights else None, cand.a_bits if group.activations else None)


def distinct_configs(groups, candidates, wanted: set | None = None) -> list[tuple[int | None, object]]:
    """The configurations the simple way must evaluate, each once: the all-highest baseline
    (``(None, highest)``), then per group every candidate whose effect differs from the highest's
    and from the group's earlier candidates; with ``wanted``, only the (group, candidate) pairs
    in it (those Phase 2 can choose, which onnxmp's Phase 1 measures: no more for the simple way)."""
    highest = candidates[-1]
    configs: list[tuple[int | None, object]] = [(None, highest)]
    for group in groups:
        seen = {_effect(group, highest)}
        for cand in candidates[:-1]:
            if wanted is not None and (group.gid, cand) not in wanted:
                continue
            if _effect(group, cand) not in seen:
                seen.add(_effect(group, cand))
                configs.append((group.gid, cand))
    return configs


def _measured(analysis) -> set:
    """The (group, candidate) pairs onnxmp's Phase 1 holds: what either simple way evaluates."""
    return {(s.gid, s.candidate) for s in analysis.sensitivities}


def naive_phase1(analysis, candidates) -> tuple[float, dict]:
    """A fresh exported model and session per distinct configuration (``distinct_configs``),
    every other group at the highest, with the ranges Phase 1 chose (``analysis.params``).
    Entries a configuration stands for (the baseline, identical candidates) take its SQNR."""
    highest = candidates[-1]
    baseline = {g.gid: highest for g in analysis.plan.groups}
    names = analysis.simulator.observed
    wanted = _measured(analysis)
    start = time.perf_counter()
    measured = {}
    for gid, cand in distinct_configs(analysis.plan.groups, candidates, wanted):
        assignment = baseline if gid is None else {**baseline, gid: cand}
        model = export_qdq(analysis.model, analysis.plan, analysis.params, assignment)
        session = make_session(with_outputs(model, names), optimized=False)  # no integer-kernel fusion
        measured[(gid, cand)] = numerics.sqnr_db(analysis.simulator.reference, run_over(session, analysis.data, names))
    seconds = time.perf_counter() - start
    results = {}
    for group in analysis.plan.groups:
        for cand in [c for c in candidates if (group.gid, c) in wanted]:
            same = next((c for c in candidates if _effect(group, c) == _effect(group, cand) and (group.gid, c) in wanted),
                        cand)
            key = (None, highest) if _effect(group, same) == _effect(group, highest) else (group.gid, same)
            results[(group.gid, cand)] = measured[key]
    return seconds, {"sqnr": results, "evaluations": len(measured)}


def lean_naive_phase1(analysis, candidates) -> tuple[float, int]:
    """The leanest simple way: per distinct configuration of ``naive_phase1``, a copy of the model
    with only that group quantized (every other group left float: no other quantizer at all), a
    fresh session, one pass over the samples; no caching. It measures a slightly different
    quantity (the others float, not at the highest candidate); its time is the baseline that
    counts. Returns (seconds, evaluations)."""
    float_all = {g.gid: FP32 for g in analysis.plan.groups}
    names = analysis.simulator.observed
    configs = [(g, c) for g, c in distinct_configs(analysis.plan.groups, candidates, _measured(analysis))
               if g is not None]
    start = time.perf_counter()
    for gid, cand in configs:
        model = export_qdq(analysis.model, analysis.plan, analysis.params, {**float_all, gid: cand})
        session = make_session(with_outputs(model, names), optimized=False)
        numerics.sqnr_db(analysis.simulator.reference, run_over(session, analysis.data, names))
    return time.perf_counter() - start, len(configs)


def _own_peak_mb(pid: int | str = "self") -> float:
    """A process's own peak resident memory, in MB (Linux /proc VmHWM; 0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            line = next(x for x in handle if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0.0
    return int(line.split()[1]) / 1024


def _children(pid: int) -> list[int]:
    """Direct and indirect child processes of ``pid`` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            kids = [int(x) for x in handle.read().split()]
    except OSError:
        return []
    return kids + [k for kid in kids for k in _children(kid)]


class WorkerPeaks:
    """Polls the VmHWM of this process's children (the Phase 1 workers) while a run lasts: each
    child's own peak, not ``ru_maxrss`` of children, which starts from the parent's peak in a
    forked or spawned child's accounting. A peak reached in the last poll interval is missed."""

    def __init__(self, interval: float = 0.2) -> None:
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval,), daemon=True)

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for kid in _children(os.getpid()):
                self.peaks[kid] = max(self.peaks.get(kid, 0.0), _own_peak_mb(kid))

    def __enter__(self) -> WorkerPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_onnxmp(path: str, calib: str, workers: int, max_memory: int | None, adaround: str,
               with_naive: bool) -> dict:
    """One analyze in this (fresh) process: Phase 1 time, evaluations, list, memory; optionally
    the naive Phase 1 on the same parameters."""
    config = OptimizeConfig(calib=calib, adaround=adaround, cache_dir=None, workers=workers, candidates=CANDIDATES,
                            target="generic",
                            **({} if max_memory is None else {"max_memory": max_memory}))
    with WorkerPeaks() as workers_seen:
        analysis = analyze(path, config)
    out = {
        "phase1_s": analysis.timings["phase1"],
        "evaluations": analysis.simulator.evaluations,
        "sqnr": {(s.gid, str(s.candidate)): s.sqnr_db for s in analysis.sensitivities},
        "order": [(s.gid, str(s.candidate)) for s in analysis.sensitivities],
        "layers": len(analysis.plan.weighted_ops), "groups": len(analysis.plan.groups),
        "samples": analysis.data.num_samples,
        "adaround_s_per_layer": analysis.rounding.seconds_per_layer if analysis.rounding else None,
        "adaround_layers": analysis.rounding.optimised if analysis.rounding else 0,
    }
    if with_naive:
        seconds, naive = naive_phase1(analysis, config.candidates)
        out.update(naive_s=seconds, naive_evals=naive["evaluations"],
                   naive={(g, str(c)): v for (g, c), v in naive["sqnr"].items()})
        out["lean_s"], out["lean_evals"] = lean_naive_phase1(analysis, config.candidates)
    out["float_pass_s"] = float_pass_seconds(analysis)
    out["peak_mb"] = (_own_peak_mb(), max(workers_seen.peaks.values(), default=0.0))
    return out


def float_pass_seconds(analysis, repeats: int = 3) -> float:
    """One whole pass of the prepared float model over the samples (default session, the best of
    ``repeats`` after a warm-up): the unit Phase 1's cost per evaluation is counted in."""
    names = analysis.simulator.observed
    session = make_session(analysis.model, outputs=names)
    run_over(session, analysis.data, names)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_over(session, analysis.data, names)
        times.append(time.perf_counter() - start)
    return min(times)


def in_fresh_process(*args) -> dict:
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_onnxmp, *args).result()


def _agree(a: dict, b: dict, tolerance: float, noise_floor: float = 0.0) -> float:
    """Largest SQNR difference (dB) over entries below 100 dB whose noise-to-signal ratios differ
    by more than ``noise_floor`` (float kernels that sum in another order move an entry's NSR by
    ~1e-9 of the signal: a flat dB tolerance fails on entries at 60-80 dB)."""
    gaps = [abs(a[k] - b[k]) for k in a
            if a[k] < 100 and abs(10 ** (-a[k] / 10) - 10 ** (-b[k] / 10)) > noise_floor]
    gap = max(gaps, default=0.0)
    assert gap <= tolerance, f"sensitivity lists differ by {gap:.4f} dB"
    return gap


def measure(name: str, path: str, calib: str, adaround: bool = True) -> list[str]:
    whole = in_fresh_process(path, calib, 1, 0, "off", True)
    partial = in_fresh_process(path, calib, 1, None, "off", False)
    parallel = in_fresh_process(path, calib, 2, None, "off", False)
    assert partial["order"] == parallel["order"], "Phase 1 orders differ between 1 and 2 workers"
    _agree(partial["sqnr"], parallel["sqnr"], 1e-6)
    # suffix sessions compute with constant weights (other convolution kernels): float-level differences only
    _agree(whole["sqnr"], partial["sqnr"], 0.01, noise_floor=1e-8)
    gap = _agree(whole["sqnr"], whole["naive"], 0.05)
    ada = "—"
    if adaround:
        ada1 = in_fresh_process(path, calib, 1, None, "auto", False)
        ada2 = in_fresh_process(path, calib, 2, None, "auto", False)
        ada = f"{ada1['adaround_s_per_layer']:.3f} / {ada2['adaround_s_per_layer']:.3f} ({ada1['adaround_layers']})"
    naive = whole["naive_s"]

    def mem(run: dict) -> str:
        own, child = run["peak_mb"]
        return f"{own:.0f}" if child < 1 else f"{own:.0f} (worker {child:.0f})"

    return [name, str(whole["layers"]), str(whole["groups"]), str(whole["samples"]),
            f"{whole['naive_evals']}", f"{naive:.1f}", f"{whole['lean_evals']}", f"{whole['lean_s']:.1f}",
            f"{whole['evaluations']}", f"{whole['phase1_s']:.1f}", f"{partial['phase1_s']:.1f}",
            f"{parallel['phase1_s']:.1f}", f"**{naive / partial['phase1_s']:.1f}×**", f"{naive / parallel['phase1_s']:.1f}×",
            f"{whole['lean_s'] / partial['phase1_s']:.1f}×",
            f"{partial['float_pass_s']:.3f}",
            f"{partial['phase1_s'] / max(partial['evaluations'], 1) / partial['float_pass_s']:.2f}",
            f"{mem(whole)} / {mem(partial)} / {mem(parallel)}",
            ada,
            f"{gap:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=200, help="of the synthetic model (0: no synthetic model)")
    parser.add_argument("--models", nargs="*", default=["minilm"],
                        help="real models (default: minilm, the largest; none given: the synthetic model only)")
    parser.add_argument("--no-adaround", action="store_true", help="skip the two AdaRound timing runs (shorter)")
    parser.add_argument("--note", default="", help="conditions of the run, added to each model's note")
    parser.add_argument("--samples", type=int, default=16, help="calibration samples (first N of calib.npz)")
    args = parser.parse_args()
    header = ["model", "weighted layers", "groups", "samples", "naive evals", "naive s", "lean naive evals",
              "lean naive s", "onnxmp evals", "whole-graph s", "partial s", "partial, 2 workers s",
              "speed-up (1 process)", "speed-up (2 workers)", "vs lean naive (1 process)", "float pass s",
              "partial s per evaluation, in float passes",
              "peak RSS MB whole / partial / 2 workers", "AdaRound s/layer 1 / 2 workers (layers)", "max SQNR gap dB"]
    rows, notes = [], {}
    state = f"onnxmp {git_state()}, {args.samples} samples" + (f"; {args.note}" if args.note else "")
    with tempfile.TemporaryDirectory() as tmp:
        if args.layers:
            path = os.path.join(tmp, "deep.onnx")
            onnx.save(deep_cnn(args.layers), path)
            x = np.random.default_rng(1).standard_normal((args.samples, 3, 32, 32)).astype(np.float32)
            np.savez(os.path.join(tmp, "calib.npz"), input=x)
            rows.append(measure(f"synthetic_cnn_{args.layers}", path, os.path.join(tmp, "calib.npz"), not args.no_adaround))
            notes[rows[-1][0]] = (f"a residual CNN of {args.layers} 3×3 convolutions on 16 channels, 32×32 inputs; "
                                  f"{state}")
            print(" | ".join(rows[-1]), flush=True)
        benches = bench_models(args.models) if args.models else []
        for bench in samples_calib_only(benches, "phase1_speed", "takes the first --samples samples of one .npz"):
            arrays = np.load(bench.calib)
            calib = os.path.join(tmp, f"{bench.name}_calib.npz")
            np.savez(calib, **{k: arrays[k][: args.samples] for k in arrays.files})
            rows.append(measure(bench.name, bench.model, calib, not args.no_adaround))
            notes[bench.name] = state
            print(" | ".join(rows[-1]), flush=True)
    caption = (f"Phase 1 (candidates W4A8,W8A8,W8A16, `--target generic`; onnxruntime CPU, {os.cpu_count()} cores) "
               "measured by `python "
               "benchmarks/phase1_speed.py`. **naive**: a fresh exported QDQ model and session per distinct "
               "configuration, each evaluated once: the all-W8A16 baseline once, then per group each candidate that "
               "changes the model (a weightless group's W4A8 is its W8A8 and is not run again); the ranges are the ones "
               "Phase 1 chose (so both ways evaluate the same models). **onnxmp**: one simulation session, equivalent "
               "evaluations skipped, and more work than the naive way: the range choice (min/max vs MSE clip, one more "
               "evaluation per group with activations unless the two ranges agree) inside Phase 1; *whole-graph* "
               "evaluates the whole model each time (`--max-memory 0`), *partial* re-runs only the graph after the "
               "changed group from cached cut points (default), *2 workers* adds `--workers 2`. Speed-up = naive s / "
               "onnxmp s. **float pass s**: one pass of the prepared float model over the samples (default session, best "
               "of 3), measured in the partial run's process; the next column is the partial run's Phase 1 seconds per "
               "evaluation in those passes. Peak RSS: each process's own peak (/proc VmHWM): the run's process, and in brackets the "
               "largest worker's, polled every 0.2 s while it runs. AdaRound: W4 weights, 1000 iterations per layer "
               "(— : not run, `--no-adaround`). The sensitivity lists agree: partial = workers (same order, < 1e-6 dB), "
               "whole within 0.01 dB (suffix sessions bake the baseline's weights in as constants, for which "
               "onnxruntime picks other convolution kernels that sum in another order), naive within the last column. "
               "Each row is measured in one run (naive and onnxmp alike); models are run one at a time or together, "
               "each keeps its note.")
    publish_merged("phase1_speed.md", caption, header, rows, notes)


if __name__ == "__main__":
    main()
