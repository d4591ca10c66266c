"""What ships, where it ships: latency, task score and SQNR of the written files on onnxruntime CPU.

    python benchmarks/deploy_table.py [--models digits ppocr_cls ...] [--budgets 0.35] [--samples N]
                                      [--runs 30] [--threads 1,2]

Per real model, one row each for: the float model; onnxmp uniform W8A8 (its only candidate); onnxmp
with default options (``--target ort``: candidates W8A8,FP32, latency metric, budget 0.5 or the
cheapest point where that is below it); onnxmp at each ``--budgets`` budget; onnxruntime's
``quantize_static`` W8A8 (QDQ, per-channel, as ``benchmarks/peers.py`` runs it). Latency: one sample
(the first calibration sample, batch axis kept), default session options but the thread count, every
variant's session made first, then at least ``--runs`` runs of each (more where they would take
under ``MIN_SECONDS``), one variant after another (interleaved, so a noisy neighbour hits all
alike), each round in a fresh seeded random order (``ort_latency.round_orders``: in a fixed order,
identical files timed 3% apart by which one followed the float model); the median. ``kernels``: the integer kernels in
the graph onnxruntime optimizes the file into, against the float Conv/MatMul/Gemm left there. SQNR:
every model output against the float model's, over the calibration samples; task score: the model's
labelled evaluator; agreement with float: the same metric with the float model's answers as the
labels (``zoo.task_scores``: 1 for float; no bias of the labels' convention can reward an output
for drifting from float's); mean cosine: per sample, between the first output and the float model's
(for MiniLM its token states, padding positions included); sentence cosine (eval): a sentence
encoder's embeddings against float's over its evaluation queries and documents
(``zoo.sentence_cosine``). OpenVINO (where the ``openvino`` extra is installed): the same files
timed the same way on its CPU plugin, one thread, one stream. Cost: each onnxmp variant's cost under
the default metric, relative to float. Task score − uniform W8A8: the difference on the same
evaluation items, with its 95% paired bootstrap interval (``zoo.paired_difference``). Per model a
note says whether each mixed point is at least as good as uniform W8A8 where that costs as much or
more: SQNR at least uniform's, task score not below it by more than the evaluation set resolves (the
interval's upper end at or above 0). Where the model is one stage of a pipeline (ppocr_det, whose
boxes the recogniser reads), a note gives each variant's whole-pipeline score
(``zoo.end_to_end_items``) against uniform W8A8's. All rows come from one run at one commit.

Writes benchmarks/results/deploy.md (the rows of models not run this time are kept) and prints it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import bench_models, git_state, publish_merged, samples_calib_only, zoo  # noqa: E402
from zoo_table import _quantize_peer, _subset_calib  # noqa: E402

from onnxmp import OptimizeConfig, optimize, parse_candidates  # noqa: E402
from onnxmp.errors import BudgetTooLowError  # noqa: E402
from onnxmp.quant import numerics  # noqa: E402
from onnxmp.runtime.data import read_npz  # noqa: E402
from onnxmp.targets.ort_latency import interleaved_ms  # noqa: E402

INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "DynamicQuantizeMatMul",
                   "MatMulInteger", "ConvInteger", "QLinearAdd", "QLinearMul", "QLinearConcat")
FLOAT_KERNELS = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "MatMulNBits")
UNIFORM = "onnxmp uniform W8A8"
MIN_SECONDS = 3.0  # per latency table: runs are added until they take this long
HEADER = ["model", "variant", "cost (latency est.)", "task score", "task score − uniform W8A8 [95%]",
          "agreement with float", "SQNR dB", "mean cosine", "sentence cosine (eval)",
          "ms (1 thread)", "× float",
          "ms (2 threads)", "× float ", "ms OpenVINO (1 thread)", "× float  ", "kernels (integer / float)",
          "activation quantizers", "KiB"]


def session(path: str, threads: int, optimized_path: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def kernels(path: str) -> str:
    """Integer and float compute kernels of the graph onnxruntime runs (default optimizations)."""
    with tempfile.TemporaryDirectory() as folder:
        optimized = os.path.join(folder, "optimized.onnx")
        session(path, 1, optimized)
        ops = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node)
    integer = {k: ops[k] for k in INTEGER_KERNELS if ops[k]}
    floats = {k: ops[k] for k in FLOAT_KERNELS if ops[k]}
    show = lambda d: ", ".join(f"{v} {k}" for k, v in d.items()) or "none"  # noqa: E731
    return f"{show(integer)} / {show(floats)}"


def ort_runner(path: str, threads: int) -> Callable[[dict[str, np.ndarray]], object]:
    s = session(path, threads)
    return lambda feeds: s.run(None, feeds)


def openvino_runner(path: str) -> Callable[[dict[str, np.ndarray]], object]:
    """One inference on OpenVINO's CPU plugin, one thread and one stream (like the onnxruntime column)."""
    import openvino as ov

    core = ov.Core()
    request = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1}
                                 ).create_infer_request()
    return lambda feeds: request.infer(feeds)


def latencies(runners: dict[str, Callable[[dict[str, np.ndarray]], object]], feeds: dict[str, np.ndarray],
              runs: int, min_seconds: float = MIN_SECONDS) -> dict[str, float]:
    """Median milliseconds of one run per variant, interleaved in ``round_orders`` after 3
    warm-up runs each (onnxmp.targets.ort_latency ``interleaved_ms``): ``runs`` runs of each, or
    as many as fill ``min_seconds`` where they are quicker (digits runs in 0.04 ms, where 30 rounds
    on this shared machine put its quantized files at 0.74x float in one run and 0.99x in another)."""
    calls = [functools.partial(run, feeds) for run in runners.values()]
    return dict(zip(runners, interleaved_ms(calls, runs, min_seconds, warm_ups=3), strict=True))


def openvino_latencies(paths: dict[str, str], feeds: dict[str, np.ndarray], runs: int,
                       notes: dict[str, str], model: str) -> dict[str, float]:
    """The variants OpenVINO compiles, timed on it; the others noted. Empty where OpenVINO is not installed."""
    if importlib.util.find_spec("openvino") is None:
        return {}
    runners = {}
    for name, path in paths.items():
        try:
            runners[name] = openvino_runner(path)
        except Exception as exc:  # a model OpenVINO refuses is a result, not a crash
            notes[f"{model}/{name}"] = f"OpenVINO cannot compile it: {str(exc).strip().splitlines()[0][:200]}"
    return latencies(runners, feeds, runs)


def outputs(path: str, arrays: dict[str, np.ndarray], batch: int = 16) -> list[np.ndarray]:
    s = session(path, 0)
    n = len(next(iter(arrays.values())))
    chunks = [s.run(None, {k: v[i:i + batch] for k, v in arrays.items()}) for i in range(0, n, batch)]
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def mean_cosine(reference: np.ndarray, values: np.ndarray) -> float:
    """Mean over samples of the cosine between a sample's first output and the float model's."""
    a, b = reference.reshape(len(reference), -1).astype(np.float64), values.reshape(len(values), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)))


def activation_quantizers(path: str) -> int:
    model = onnx.load(path)
    inits = {t.name for t in model.graph.initializer}
    return sum(n.op_type == "QuantizeLinear" and n.input[0] not in inits for n in model.graph.node)


def run_model(bench, budgets: list[float], samples: int | None, runs: int, threads: list[int], folder: str) -> list[list[str]]:
    calib, _, _ = _subset_calib(bench.calib, samples, folder)
    arrays = read_npz(calib)
    feeds = {k: v[:1] for k, v in arrays.items()}
    paths = {"float": bench.model}
    notes = {}
    cache = os.path.join(folder, "cache")
    configs = {UNIFORM: OptimizeConfig(candidates=parse_candidates("W8A8"), budget=1.0)}
    configs["onnxmp default"] = OptimizeConfig()
    configs.update({f"onnxmp budget {b:g}": OptimizeConfig(budget=b) for b in budgets})
    records = {}
    for name, config in configs.items():
        out = os.path.join(folder, name.replace(" ", "_") + ".onnx")
        start = time.perf_counter()
        try:
            records[name] = optimize(bench.model, out, dataclasses.replace(config, calib=calib, cache_dir=cache)).record
        except BudgetTooLowError as exc:
            notes[f"{bench.name}/{name}"] = str(exc)
            continue
        print(f"{bench.name}: {name} in {time.perf_counter() - start:.0f} s", flush=True)
        paths[name] = out
    peer = os.path.join(folder, "peer.onnx")
    peer_note = _quantize_peer(bench.model, arrays, peer)
    if peer_note:
        notes[bench.name] = peer_note
    paths["onnxruntime quantize_static W8A8"] = peer
    reference = outputs(bench.model, arrays)
    timed = {t: latencies({n: ort_runner(p, t) for n, p in paths.items()}, feeds, runs) for t in threads}
    on_openvino = openvino_latencies(paths, feeds, runs, notes, bench.name)
    costs = estimated_costs(records)
    scored = {name: bench.task_scores(path) for name, path in paths.items()}  # (task score, agreement)
    differences = versus_uniform({name: task for name, (task, _) in scored.items()})
    rows, scores = [], {}
    for name, path in paths.items():
        values = outputs(path, arrays)
        sentence = bench.sentence_cosine(path)
        quality = ["float", "1"] if name == "float" else [f"{numerics.sqnr_db(reference, values):.2f}",
                                                          f"{mean_cosine(reference[0], values[0]):.4f}"]
        quality.append("—" if sentence is None else f"{sentence:.4f}")
        scores[name] = (scored[name][0].score, numerics.sqnr_db(reference, values))
        cells = [bench.name, name, costs.get(name, "—"), f"{scores[name][0]:.4f}",
                 interval(differences.get(name)), f"{scored[name][1].score:.4f}", *quality]
        for ms, base in [*((timed[t].get(name), timed[t]["float"]) if t in timed else (None, None) for t in (1, 2)),
                         (on_openvino.get(name), on_openvino.get("float"))]:
            cells += ["", ""] if ms is None or base is None else [f"{ms:.2f}", f"{ms / base:.2f}"]
        cells += [kernels(path), str(activation_quantizers(path)), f"{os.path.getsize(path) / 1024:.0f}"]
        rows.append(cells)
        print(" | ".join(cells), flush=True)
    verdict = mixed_vs_uniform(records, scores, differences)
    if verdict:
        notes[f"{bench.name}/mixed vs uniform"] = verdict
    whole = end_to_end(bench, paths)
    if whole:
        notes[f"{bench.name}/end to end"] = whole
    return rows, notes


def estimated_costs(records: dict[str, dict]) -> dict[str, str]:
    """Each onnxmp variant's cost under the default metric (``ort``: the layers' estimated latency),
    relative to the float model; uniform W8A8's from the default run's uniform points."""
    default = records.get("onnxmp default")
    if default is None:
        return {}
    costs = {"float": "1.000"}
    if "W8A8" in default["uniform"]:
        costs[UNIFORM] = f"{default['uniform']['W8A8']['relative_cost']:.3f}"
    for name, record in records.items():
        if name != UNIFORM and record["options"]["metric"] == default["options"]["metric"]:
            costs[name] = f"{record['chosen']['relative_cost']:.3f}"
    return costs


def versus_uniform(items: dict[str, zoo.ItemScores]) -> dict[str, tuple[float, float, float]]:
    """Each variant's score minus uniform W8A8's on the same evaluation items, with the 95% paired
    bootstrap interval of that difference (``zoo.paired_difference``): where the interval reaches
    0, the evaluation set cannot tell the two apart."""
    if UNIFORM not in items:
        return {}
    return {name: zoo.paired_difference(score, items[UNIFORM]) for name, score in items.items() if name != UNIFORM}


def interval(difference: tuple[float, float, float] | None) -> str:
    """``+d [low, high]``, or "—" for none."""
    if difference is None:
        return "—"
    diff, low, high = difference
    return f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"


def end_to_end(bench, paths: dict[str, str]) -> str:
    """Where the model is one stage of a pipeline (a text detector before the recogniser), every
    variant's whole-pipeline score, and its difference from uniform W8A8's with the 95% interval."""
    items = {name: bench.end_to_end_items(path) for name, path in paths.items()}
    if any(v is None for v in items.values()):
        return ""
    differences = versus_uniform(items)
    return ("the whole OCR pipeline's character accuracy (each variant's boxes read by the float recogniser): "
            + "; ".join(f"{name} {items[name].score:.4f}"
                        + (f" ({interval(differences[name])})" if name in differences else "") for name in items))


def mixed_vs_uniform(records: dict[str, dict], scores: dict[str, tuple[float, float]],
                     differences: dict[str, tuple[float, float, float]]) -> str:
    """Whether every mixed point is at least as good as uniform W8A8 where uniform W8A8 costs as much
    or more: the issue's test of mixed precision, on the written files. SQNR must be at least
    uniform's; the task score must not be below it by more than the evaluation set resolves (the
    upper end of the difference's 95% paired interval at or above 0)."""
    default = records.get("onnxmp default")
    if default is None or UNIFORM not in scores or "W8A8" not in default["uniform"]:
        return ""
    uniform_cost = default["uniform"]["W8A8"]["relative_cost"]
    u_score, u_sqnr = scores[UNIFORM]
    parts = []
    for name, record in records.items():
        if name == UNIFORM or name not in scores:
            continue
        cost = record["chosen"]["relative_cost"]
        score, sqnr = scores[name]
        if cost > uniform_cost + 1e-9:
            parts.append(f"{name} (cost {cost:.3f}) costs more than uniform W8A8 ({uniform_cost:.3f}): not compared")
            continue
        ok = differences[name][2] >= 0 and sqnr >= u_sqnr
        parts.append(f"{name} (cost {cost:.3f} ≤ uniform W8A8's {uniform_cost:.3f}): task score {score:.4f} vs "
                     f"{u_score:.4f} (difference {interval(differences[name])}), SQNR {sqnr:.2f} vs {u_sqnr:.2f} dB: "
                     f"{'at least as good' if ok else 'WORSE'}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--budgets", default="0.35", help="explicit budgets, besides the default one (0.5)")
    parser.add_argument("--samples", type=int, default=None, help="calibrate on the first N samples only")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rows, notes = [], {}
    for bench in samples_calib_only(bench_models(args.models), "deploy_table", "times one sample and measures SQNR "
                                    "over the samples of one .npz"):
        with tempfile.TemporaryDirectory() as folder:
            r, n = run_model(bench, budgets, args.samples, args.runs, threads, folder)
        rows += r
        notes.update(n)
    caption = (f"# Deployment on onnxruntime CPU: latency, accuracy and kernels of the written files\n\n"
               f"Measured by `{' '.join(['python benchmarks/deploy_table.py', *sys.argv[1:]])}`"
               f" at {git_state()}, onnxruntime {ort.__version__}, {os.cpu_count()} cores. One sample per run, "
               f"median of {args.runs} interleaved runs (more where {args.runs} take under {MIN_SECONDS:g} s: as many as "
               f"fill it), each round in a seeded random order; × float: the variant's time over the "
               "float model's in the same "
               "run; OpenVINO: the same files on OpenVINO's CPU plugin (one thread, one stream, its default inference "
               "precision), × float against the float model there; SQNR of every output against float over the "
               "calibration samples; mean cosine: per calibration sample, between the first output and float's (for "
               "MiniLM its token states, padding positions included); sentence cosine (eval): a sentence encoder's "
               "embeddings against float's over its evaluation queries and documents; "
               "kernels: integer / float compute kernels of the graph onnxruntime optimizes the "
               "file into; cost: each onnxmp variant's cost under `--target ort`'s default metric (the layers' "
               "latency estimated from timings of each layer alone), relative to the float model; "
               "agreement with float: the task's metric with the float model's answers as the labels; "
               "task score − uniform W8A8: the difference on the same evaluation items and its 95% paired bootstrap "
               "interval; **mixed vs uniform** notes compare each mixed point with uniform W8A8 where that costs as "
               "much or more (SQNR at least uniform's, task score not below it by more than the interval resolves).")
    publish_merged("deploy.md", caption, HEADER, rows, notes)


if __name__ == "__main__":
    main()
