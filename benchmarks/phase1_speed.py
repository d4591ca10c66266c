"""Phase 1 and AdaRound at scale: the naive way versus onnxmp, measured in one run.

    python benchmarks/phase1_speed.py [--layers 200] [--models minilm ...] [--samples 16] [--note TEXT]

Per model: the naive Phase 1 (a fresh exported QDQ model and onnxruntime session per group and
candidate, every candidate evaluated); onnxmp evaluating whole graphs (``--max-memory 0``);
onnxmp with partial re-evaluation from cached cut points (the default); the same with
``--workers 2``. Each onnxmp run is a fresh process, so its peak resident memory is its own
(workers: the largest worker's peak is added). Also AdaRound's seconds per layer (W4, 1000
iterations) with 1 and 2 workers. The sensitivity lists must agree: partial vs workers exactly,
whole within 0.01 dB, naive within 0.05 dB (it runs the exported model). Writes
benchmarks/results/phase1_speed.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import tempfile
import time

import numpy as np
import onnx
from common import bench_models, git_state, publish_merged
from onnx import TensorProto, helper, numpy_helper

from onnxmp import OptimizeConfig
from onnxmp.output.export import export_qdq
from onnxmp.pipeline import analyze
from onnxmp.quant import numerics
from onnxmp.runtime.session import make_session, run_over, with_outputs


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


def naive_phase1(analysis, candidates) -> tuple[float, dict]:
    """A fresh exported model and session per (group, candidate), every other group at the highest."""
    highest = candidates[-1]
    baseline = {g.gid: highest for g in analysis.plan.groups}
    names = analysis.simulator.observed
    start = time.perf_counter()
    results = {}
    for group in analysis.plan.groups:
        for cand in candidates:
            model = export_qdq(analysis.model, analysis.plan, analysis.params, {**baseline, group.gid: cand})
            session = make_session(with_outputs(model, names), optimized=False)  # no integer-kernel fusion
            outputs = run_over(session, analysis.data, names)
            results[(group.gid, cand)] = numerics.sqnr_db(analysis.simulator.reference, outputs)
    return time.perf_counter() - start, results


def _peak_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest child, in MB (Linux: ru_maxrss KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def run_onnxmp(path: str, calib: str, workers: int, max_memory: int | None, adaround: str,
               with_naive: bool) -> dict:
    """One analyze in this (fresh) process: Phase 1 time, evaluations, list, memory; optionally
    the naive Phase 1 on the same parameters."""
    config = OptimizeConfig(calib=calib, adaround=adaround, cache_dir=None, workers=workers,
                            **({} if max_memory is None else {"max_memory": max_memory}))
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
        out.update(naive_s=seconds, naive_evals=len(naive), naive={(g, str(c)): v for (g, c), v in naive.items()})
    out["peak_mb"] = _peak_mb()
    return out


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


def measure(name: str, path: str, calib: str) -> list[str]:
    whole = in_fresh_process(path, calib, 1, 0, "off", True)
    partial = in_fresh_process(path, calib, 1, None, "off", False)
    parallel = in_fresh_process(path, calib, 2, None, "off", False)
    assert partial["order"] == parallel["order"], "Phase 1 orders differ between 1 and 2 workers"
    _agree(partial["sqnr"], parallel["sqnr"], 1e-6)
    # suffix sessions compute with constant weights (other convolution kernels): float-level differences only
    _agree(whole["sqnr"], partial["sqnr"], 0.01, noise_floor=1e-8)
    gap = _agree(whole["sqnr"], whole["naive"], 0.05)
    ada1 = in_fresh_process(path, calib, 1, None, "auto", False)
    ada2 = in_fresh_process(path, calib, 2, None, "auto", False)
    naive = whole["naive_s"]

    def mem(run: dict) -> str:
        own, child = run["peak_mb"]
        return f"{own:.0f}" if child < 1 else f"{own:.0f} + {child:.0f}"

    return [name, str(whole["layers"]), str(whole["groups"]), str(whole["samples"]),
            f"{whole['naive_evals']}", f"{naive:.1f}",
            f"{whole['evaluations']}", f"{whole['phase1_s']:.1f}", f"{partial['phase1_s']:.1f}",
            f"{parallel['phase1_s']:.1f}", f"**{naive / partial['phase1_s']:.1f}×**", f"{naive / parallel['phase1_s']:.1f}×",
            f"{mem(whole)} / {mem(partial)} / {mem(parallel)}",
            f"{ada1['adaround_s_per_layer']:.3f} / {ada2['adaround_s_per_layer']:.3f} ({ada1['adaround_layers']})",
            f"{gap:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=200, help="of the synthetic model (0: no synthetic model)")
    parser.add_argument("--models", nargs="*", default=["minilm"],
                        help="real models (default: minilm, the largest; none given: the synthetic model only)")
    parser.add_argument("--note", default="", help="conditions of the run, added to each model's note")
    parser.add_argument("--samples", type=int, default=16, help="calibration samples (first N of calib.npz)")
    args = parser.parse_args()
    header = ["model", "weighted layers", "groups", "samples", "naive evals", "naive s", "onnxmp evals",
              "whole-graph s", "partial s", "partial, 2 workers s", "speed-up (1 process)", "speed-up (2 workers)",
              "peak RSS MB whole / partial / 2 workers", "AdaRound s/layer 1 / 2 workers (layers)", "max SQNR gap dB"]
    rows, notes = [], {}
    state = f"onnxmp {git_state()}, {args.samples} samples" + (f"; {args.note}" if args.note else "")
    with tempfile.TemporaryDirectory() as tmp:
        if args.layers:
            path = os.path.join(tmp, "deep.onnx")
            onnx.save(deep_cnn(args.layers), path)
            x = np.random.default_rng(1).standard_normal((args.samples, 3, 32, 32)).astype(np.float32)
            np.savez(os.path.join(tmp, "calib.npz"), input=x)
            rows.append(measure(f"synthetic_cnn_{args.layers}", path, os.path.join(tmp, "calib.npz")))
            notes[rows[-1][0]] = (f"a residual CNN of {args.layers} 3×3 convolutions on 16 channels, 32×32 inputs; "
                                  f"{state}")
            print(" | ".join(rows[-1]), flush=True)
        for bench in bench_models(args.models) if args.models else []:
            arrays = np.load(bench.calib)
            calib = os.path.join(tmp, f"{bench.name}_calib.npz")
            np.savez(calib, **{k: arrays[k][: args.samples] for k in arrays.files})
            rows.append(measure(bench.name, bench.model, calib))
            notes[bench.name] = state
            print(" | ".join(rows[-1]), flush=True)
    caption = (f"Phase 1 (candidates W4A8,W8A8,W8A16; onnxruntime CPU, {os.cpu_count()} cores) measured by `python "
               "benchmarks/phase1_speed.py`. **naive**: a fresh exported QDQ model and session per group and candidate "
               "(every candidate, min/max ranges). **onnxmp**: one simulation session, equivalent evaluations skipped, "
               "and more work than the naive way: the range choice (min/max vs MSE clip, one more evaluation per group "
               "with activations unless the two ranges agree) inside Phase 1; *whole-graph* evaluates the whole model "
               "each time (`--max-memory 0`), *partial* re-runs only the graph after the changed group from cached cut "
               "points (default), *2 workers* adds `--workers 2`. Speed-up = naive s / onnxmp s. Peak RSS: each onnxmp "
               "run in its own process (+ the largest worker). AdaRound: W4 weights, 1000 iterations per layer. The "
               "sensitivity lists agree: partial = workers (same order, < 1e-6 dB), whole within 0.01 dB (suffix "
               "sessions bake the baseline's weights in as constants, for which onnxruntime picks other convolution "
               "kernels that sum in another order; MatMul weights are not pre-packed, so MatMuls compute alike), naive "
               "within the last column. Each row is measured in one run (naive and onnxmp alike); models are run one at "
               "a time or together, each keeps its note.")
    publish_merged("phase1_speed.md", caption, header, rows, notes)


if __name__ == "__main__":
    main()
