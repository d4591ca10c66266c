"""Cold-run time of onnxmp against uniform-INT8 post-training quantizers, with the quality each
buys, and where onnxmp's time goes.

    python benchmarks/cold_speed.py [--models digits ppocr_cls ...] [--samples N] [--top 8] [--no-profile]

For every real model (benchmarks/common.py ``bench_models``: the shipped digits CNN and every
prepared zoo model, silero_vad's folder of whole feeds included), one tool after the other on
the same model and the same calibration data (``--samples N``: the first N samples of calib.npz,
or the first N feed files of a calib folder; default all), each in a fresh process:

- **onnxmp**: ``python -m onnxmp optimize MODEL OUT --budget 0.5 --calib CALIB --cache-dir FRESH
  --report R``: default target (ort) and options, an empty results cache, so nothing is reused.
  Stage columns (**load s** ... **latency of the output s**): the record's ``timings_s``, every
  stage it times; **latency** is the per-layer W8A8 timing the ort target's latency metric needs
  (before Phase 1, which skips what it rules out). **start-up + rest s**: the wall time outside
  every top-level stage (interpreter start, imports, argument parsing, the output made
  deployable, writing the files). **onnxmp total s**: the process, start to exit.
- **NNCF**: ``nncf.quantize`` (NNCF 3.4.0, default settings: uniform INT8; with
  ``model_type=nncf.ModelType.TRANSFORMER`` for minilm, without which the attention mask breaks
  it, see DESIGN.md) run by this file in NNCF's own venv (``benchmarks/.venv-nncf``, created here
  when missing: nncf, and onnx and onnxruntime at this environment's versions; no torch; NNCF's
  telemetry off, so no network call is timed): load the model, an ``nncf.Dataset`` of the feeds
  onnxmp runs (CALIB's samples in runs of onnxmp's batch, or one feed file each; one sample per
  item, NNCF's usual form, took as long on ppocr_cls's 64 samples and measured 13.7 dB against
  17.0), quantize, save. **NNCF total s**: process start to exit, the file written; **NNCF call s**: the
  ``nncf.quantize`` call alone. Where it fails, its one-line error instead.
- **quantize_static**: onnxruntime's, as benchmarks/peers.py ``ort_quantize_static_w8a8`` runs it
  (pre-processing, QDQ, per-channel INT8 weights, UINT8 activations, min/max) on the same feeds,
  timed the same way (**call**: the opset conversion where one is needed, pre-processing and
  quantize_static). Where a way fails on a model, the next of ``peers.static_ways`` (the model
  converted to opset 13, then without symbolic shape inference) in a new process; only the way
  that works is timed, the failed ones are listed in the notes.
- **onnxmp / NNCF**, **onnxmp / quantize_static**: the ratios of the totals.
- **onnxmp fast**: the cold run again (a fresh cache of its own) with the two levers that cut most
  of the remaining time at a cost in quality: ``--phase1-samples 16`` (Phase 1 ranks the groups on
  16 samples spread over the set) and ``--no-range-refinement``; its total and its ratio to NNCF,
  and its output in the quality table: the trade the default declines.
- **float pass ms**: one pass of the float model over the calibration data in this process (the
  observed tensors fetched, as onnxmp's reference pass does), the fastest of 3 at each run size
  onnxmp may use (4, 8 and 16 samples a run; a folder's feeds as they are); **onnxmp stages in
  float passes**: the sum of onnxmp's stages (start-up excluded) over it; **NNCF call in float
  passes**: NNCF's call over it. A uniform quantizer needs a pass or two
  to calibrate; mixed precision also measures each group it may quantize (Phase 1) and the points
  it may ship (Phase 2, range refinement), a partial pass or more each: these columns say how far
  the ratio is the number of evaluations rather than the cost of one.
- **cached rerun at 0.35 s**: onnxmp once more, in a fresh process, with the cold run's results
  cache and ``--budget 0.35`` (calibration, layer timings and Phase 1 reused; Phase 2, range
  refinement, the export and its checks run again); its stages are in the model's note.

Quality table, for each written file: **score**, the model's task score on its labelled
evaluation set (benchmarks/common.py ``BenchModel.evaluate``, higher is better); **SQNR dB**,
against the float model over the calibration data, as stock onnxruntime runs the file, at the
tensors onnxmp measures (the outputs, or the logits under a final Softmax/Sigmoid; zoo_table's
``_peer_sqnr``).

Profile: per model, onnxmp's optimize once more, in this process (``onnxmp.cli.main`` with the
same arguments and a fresh cache) under cProfile, one profiler per stage: onnxmp/pipeline.py's
``_timed`` is wrapped so that each stage's block runs under its own profiler, a nested stage
(latency) pausing its parent's, so every call is counted in exactly one stage; "(outside stages)"
is the rest of the call. Per stage, its profiled seconds and the top ``--top`` functions by self
time (in the function itself, callees excluded) and the onnxmp functions by cumulative time.
cProfile slows Python-heavy code, so these seconds exceed the cold run's: they say where the time
goes, not how much there is.

Writes benchmarks/results/cold_speed.md and prints it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_PREFIX = "cold_speed worker: "


def calib_feeds(path: str, batch: int) -> list[dict[str, np.ndarray]]:
    """The feeds onnxmp runs over ``path``: a folder of whole feeds, one per .npz file in name
    order; or an .npz of samples along the first axis, ``batch`` samples a run."""
    def read(file: str) -> dict[str, np.ndarray]:
        with np.load(file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    if os.path.isdir(path):
        return [read(f) for f in sorted(glob.glob(os.path.join(path, "*.npz")))]
    arrays = read(path)
    n = len(next(iter(arrays.values())))
    return [{k: v[i:i + batch] for k, v in arrays.items()} for i in range(0, n, batch)]


def worker(argv: list[str]) -> None:
    """One peer quantizer in this fresh process: prints the seconds of its call alone."""
    parser = argparse.ArgumentParser(prog="cold_speed.py worker")
    parser.add_argument("tool", choices=["nncf", "ort"])
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--transformer", action="store_true", help="nncf: model_type=nncf.ModelType.TRANSFORMER")
    parser.add_argument("--way", type=int, default=0, help="ort: the index into peers.static_ways")
    args = parser.parse_args(argv)
    if args.tool == "nncf":
        import nncf
        import onnx

        model = onnx.load(args.model)
        dataset = nncf.Dataset(calib_feeds(args.calib, args.batch))
        options = {"model_type": nncf.ModelType.TRANSFORMER} if args.transformer else {}
        start = time.perf_counter()
        quantized = nncf.quantize(model, dataset, **options)
        seconds = time.perf_counter() - start
        onnx.save(quantized, args.out)
    else:
        from peers import ort_quantize_static_w8a8, static_ways

        feeds = calib_feeds(args.calib, args.batch)
        start = time.perf_counter()
        ort_quantize_static_w8a8(args.model, feeds, args.out, **static_ways(args.model)[args.way][1])
        seconds = time.perf_counter() - start
    print(RESULT_PREFIX + json.dumps({"call_s": seconds}), flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    # A peer's process stops here, before onnxmp is imported: NNCF's venv has no onnxmp, and
    # quantize_static's start-up must not pay for it.
    worker(sys.argv[2:])
    sys.exit(0)

import contextlib  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

sys.path.insert(0, HERE)
from common import ROOT, bench_models, git_state, markdown_table, write_result  # noqa: E402
from peers import static_ways  # noqa: E402
from zoo_table import _fmt_score, _loads, _peer_sqnr, _seconds, _stages, _subset_calib  # noqa: E402

from onnxmp import cli, pipeline  # noqa: E402
from onnxmp.model.loader import load_model  # noqa: E402
from onnxmp.runtime.data import load_calibration  # noqa: E402
from onnxmp.runtime.session import make_session, observed_tensors, run_over, with_outputs  # noqa: E402

NNCF_VENV = os.path.join(HERE, ".venv-nncf")
NNCF_VERSION = "3.4.0"
TRANSFORMERS = {"minilm"}  # nncf.quantize(model_type=nncf.ModelType.TRANSFORMER)
BUDGET = "0.5"
RERUN_BUDGET = "0.35"  # the cached rerun: same cache folder, another budget, a fresh process
OUTSIDE = "(outside stages)"
# the levers that cut most of onnxmp's time, at a cost in quality (pipeline.DEFAULT_PHASE1_SAMPLES,
# search/refine.py): the "onnxmp fast" run, for the trade beside the default
FAST_ARGS = ("--phase1-samples", "16", "--no-range-refinement")
TOOLS = ("onnxmp", "onnxmp fast", "NNCF", "quantize_static")


def nncf_python() -> tuple[str, str]:
    """(python of NNCF's venv, created with pip where missing; NNCF's version there), checked to
    import NNCF's ONNX backend without torch."""
    python = os.path.join(NNCF_VENV, "bin", "python")
    if not os.path.isfile(python):
        print(f"cold_speed: creating {os.path.relpath(NNCF_VENV, ROOT)} (nncf=={NNCF_VERSION}, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", NNCF_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", f"nncf=={NNCF_VERSION}", f"onnx=={onnx.__version__}",
                        f"onnxruntime=={ort.__version__}", "numpy"], check=True)
    probe = ("import importlib.util, sys, nncf, nncf.onnx.quantization.quantize_model; "
             "assert 'torch' not in sys.modules and importlib.util.find_spec('torch') is None, 'torch present'; "
             "print(nncf.__version__)")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=_nncf_env())
    if done.returncode:
        raise SystemExit(f"cold_speed: NNCF's venv ({NNCF_VENV}) does not import nncf's ONNX backend without torch:\n"
                         f"{done.stderr}")
    return python, done.stdout.strip()


def _nncf_env() -> dict[str, str]:
    """This environment without PYTHONPATH (the venv sees its own packages only), NNCF's telemetry off."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "NNCF_CI": "1"}


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of ``cmd`` in a fresh process, start to exit, and its stdout; raises with the
    last line of its error output where it fails."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        lines = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()
        raise RuntimeError(lines[-1][:300])
    return seconds, done.stdout


def _call_seconds(stdout: str) -> float:
    line = next(x for x in reversed(stdout.splitlines()) if x.startswith(RESULT_PREFIX))
    return json.loads(line[len(RESULT_PREFIX):])["call_s"]


def onnxmp_args(bench, calib: str, out: str, cache: str, report: str, budget: str = BUDGET) -> list[str]:
    return ["optimize", bench.model, out, "--budget", budget, "--calib", calib, "--cache-dir", cache, "--report", report]


def time_onnxmp(bench, calib: str, folder: str, budget: str = BUDGET, extra: tuple[str, ...] = ()) -> dict:
    """onnxmp optimize in a fresh process with ``folder``'s results cache (empty on the first
    call; ``extra`` options: a cache of their own)."""
    tag = "-fast" if extra else ""
    out, report = (os.path.join(folder, f"onnxmp-{budget}{tag}{ext}") for ext in (".onnx", ".json"))
    cache = os.path.join(folder, f"onnxmp-cache{tag}")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [*onnxmp_args(bench, calib, out, cache, report, budget), *extra]
    seconds, _ = _run([sys.executable, "-m", "onnxmp", *args], env)
    with open(report, encoding="utf-8") as handle:
        return {"path": out, "total": seconds, "record": json.load(handle)}


def time_nncf(python: str, bench, calib: str, batch: int, folder: str) -> dict:
    out = os.path.join(folder, "nncf.onnx")
    cmd = [python, os.path.abspath(__file__), "worker", "nncf", bench.model, calib, out, "--batch", str(batch)]
    try:
        seconds, stdout = _run(cmd + (["--transformer"] if bench.name in TRANSFORMERS else []), _nncf_env())
    except RuntimeError as exc:
        return {"error": str(exc)}
    return {"path": out, "total": seconds, "call": _call_seconds(stdout)}


def time_quantize_static(bench, calib: str, batch: int, folder: str) -> dict:
    """The first of ``peers.static_ways`` that writes a model onnxruntime loads, timed alone."""
    out, failed = os.path.join(folder, "quantize_static.onnx"), []
    for index, (label, _) in enumerate(static_ways(bench.model)):
        cmd = [sys.executable, os.path.abspath(__file__), "worker", "ort", bench.model, calib, out, "--batch", str(batch),
               "--way", str(index)]
        try:
            seconds, stdout = _run(cmd)
        except RuntimeError as exc:
            failed.append(f"{label.strip()}: {exc}")
            continue
        if not _loads(out):
            failed.append(f"{label.strip()}: the output does not load in onnxruntime")
            continue
        return {"path": out, "total": seconds, "call": _call_seconds(stdout), "way": label.strip(), "failed": failed}
    return {"error": "every way failed: " + "; ".join(failed)}


def calib_subset(bench, samples: int | None, folder: str) -> tuple[str, int, int]:
    """(calibration data to use, samples or feed files used, available): the first ``samples``."""
    if not bench.calib_feeds:
        return _subset_calib(bench.calib, samples, folder)
    files = sorted(glob.glob(os.path.join(bench.calib, "*.npz")))
    if not samples or samples >= len(files):
        return bench.calib, len(files), len(files)
    subset = os.path.join(folder, "calib")
    os.makedirs(subset)
    for file in files[:samples]:
        os.symlink(file, os.path.join(subset, os.path.basename(file)))
    return subset, samples, len(files)


def float_pass_seconds(session, data, names: list[str]) -> float:
    """The fastest float pass over the calibration data: of 3 passes at each run size onnxmp may
    use (runs of 4, 8 and 16 samples; a folder's feeds as they are), the fastest."""
    sizes = (4, 8, 16) if data.batched else (None,)
    best = float("inf")
    for size in sizes:
        runs = data.in_runs_of(size) if size else data
        for _ in range(3):
            start = time.perf_counter()
            run_over(session, runs, names)
            best = min(best, time.perf_counter() - start)
    return best


def quality(bench, calib: str, runs: dict[str, dict]) -> dict[str, dict]:
    """Per tool that wrote a file: task score and SQNR against float over the calibration data;
    and (under "float") the seconds of one float pass over that data."""
    model = load_model(bench.model)
    data = load_calibration(calib, model)
    names = observed_tensors(model)
    session = make_session(with_outputs(model, names))
    reference = run_over(session, data, names)
    scores = {"float": {"score": bench.evaluate(bench.model), "pass": float_pass_seconds(session, data, names)}}
    for tool, run in runs.items():
        if "path" in run:
            sqnr, note = _peer_sqnr(run["path"], names, data, reference)
            scores[tool] = {"score": bench.evaluate(run["path"]), "sqnr": sqnr, "note": note}
    return scores


def profile_stages(bench, calib: str, folder: str) -> tuple[dict[str, pstats.Stats], dict[str, float]]:
    """onnxmp's optimize (the CLI, in this process, a fresh cache) with one cProfile profiler per
    stage of onnxmp/pipeline.py's ``_timed`` (a nested stage pauses its parent's profiler), and
    the record's timings of that run."""
    profiles: dict[str, list[cProfile.Profile]] = {}
    stack = [cProfile.Profile()]
    original = pipeline._timed

    @contextlib.contextmanager
    def timed(timings: dict[str, float], stage: str):
        with original(timings, stage):
            profiler = cProfile.Profile()
            stack[-1].disable()
            stack.append(profiler)
            profiler.enable()
            try:
                yield
            finally:
                profiler.disable()
                stack.pop()
                profiles.setdefault(stage, []).append(profiler)
                stack[-1].enable()

    out, cache, report = (os.path.join(folder, f) for f in ("profiled.onnx", "profiled-cache", "profiled.json"))
    pipeline._timed = timed
    try:
        stack[0].enable()
        code = cli.main(onnxmp_args(bench, calib, out, cache, report))
        stack[0].disable()
    finally:
        pipeline._timed = original
    if code:
        raise RuntimeError(f"onnxmp optimize under cProfile failed on {bench.name} (exit code {code})")
    with open(report, encoding="utf-8") as handle:
        timings = json.load(handle)["timings_s"]
    return {stage: pstats.Stats(*p) for stage, p in {**profiles, OUTSIDE: [stack[0]]}.items()}, timings


def _label(key: tuple[str, int, str]) -> str:
    """A profile entry as `function (file:line)`, paths from the package or the repository."""
    file, line, name = key
    if file == "~":  # a built-in
        return f"`{name.replace('onnxruntime.capi.onnxruntime_pybind11_state.', '')}`"
    for root in ("site-packages/", ROOT + os.sep, os.path.dirname(os.__file__) + os.sep):
        file = file.split(root, 1)[-1]
    return f"`{name}` ({file}:{line})"


def hot_spots(stats: pstats.Stats, top: int) -> list[list[str]]:
    """Rows (kind, function, calls, self s, cumulative s): the ``top`` functions by self time, then
    the ``top`` onnxmp functions by cumulative time."""
    entries = stats.stats.items()  # (file, line, name) -> (primitive calls, calls, self s, cumulative s, callers)
    by_self = sorted(entries, key=lambda e: -e[1][2])[:top]
    ours = sorted((e for e in entries if f"{os.sep}onnxmp{os.sep}" in e[0][0]), key=lambda e: -e[1][3])[:top]
    return [[kind, _label(key), str(calls), f"{own:.2f}", f"{cumulative:.2f}"]
            for kind, chosen in (("self", by_self), ("onnxmp cumulative", ours))
            for key, (_, calls, own, cumulative, _) in chosen]


def profile_section(bench, stats: dict[str, pstats.Stats], timings: dict[str, float], top: int) -> str:
    rows = []
    for stage, s in stats.items():
        first = [stage, _seconds(timings[stage]) if stage in timings else "—", f"{s.total_tt:.2f}"]
        rows += [(first if i == 0 else ["", "", ""]) + row for i, row in enumerate(hot_spots(s, top))]
    header = ["stage", "record s", "profiled s", "ranked by", "function", "calls", "self s", "cumulative s"]
    return f"### {bench.name}\n\n" + markdown_table(header, rows) + "\n"


def run_model(bench, samples: int | None, python: str, folder: str) -> dict:
    calib, used, total = calib_subset(bench, samples, folder)
    batch = load_calibration(calib, load_model(bench.model)).batch
    load = os.getloadavg()[0]
    runs = {"onnxmp": time_onnxmp(bench, calib, folder)}
    rerun = time_onnxmp(bench, calib, folder, RERUN_BUDGET)
    runs["onnxmp fast"] = time_onnxmp(bench, calib, folder, extra=FAST_ARGS)
    runs["NNCF"] = time_nncf(python, bench, calib, batch, folder)
    runs["quantize_static"] = time_quantize_static(bench, calib, batch, folder)
    for tool, run in runs.items():
        print(f"{bench.name}: {tool}: " + (f"{run['total']:.1f} s" if "total" in run else f"failed: {run['error']}"),
              flush=True)
    return {"bench": bench, "calib": calib, "used": used, "total": total, "load": load, "runs": runs,
            "rerun": rerun, "quality": quality(bench, calib, runs)}


def _ratio(a: dict, b: dict) -> str:
    return f"{a['total'] / b['total']:.1f}×" if "total" in a and "total" in b else "—"


def _milliseconds(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def _passes(seconds: float | None, one: float) -> str:
    return "—" if seconds is None else f"{seconds / one:.0f}"


def _tool_cells(run: dict) -> list[str]:
    if "error" in run:
        return ["failed", "—"]
    return [_seconds(run["total"]), _seconds(run["call"])]


def time_table(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    stages = _stages([r["runs"]["onnxmp"]["record"] for r in results])
    header = (["model", "samples"] + [f"{s} s" for s in stages]
              + ["start-up + rest s", "onnxmp total s", "NNCF total s", "NNCF call s", "quantize_static total s",
                 "quantize_static call s", "onnxmp / NNCF", "onnxmp / quantize_static", "onnxmp fast total s",
                 "onnxmp fast / NNCF", "float pass ms",
                 "onnxmp stages in float passes", "NNCF call in float passes",
                 f"cached rerun at {RERUN_BUDGET} s", "cached rerun / cold"])
    rows = []
    for r in results:
        mp = r["runs"]["onnxmp"]
        timings = mp["record"]["timings_s"]
        one = r["quality"]["float"]["pass"]
        rest = mp["total"] - sum(timings.values())  # every stage is top-level
        rows.append([r["bench"].name, str(r["used"])] + [_seconds(timings[s]) if s in timings else "—" for s in stages]
                    + [_seconds(rest), _seconds(mp["total"]), *_tool_cells(r["runs"]["NNCF"]),
                       *_tool_cells(r["runs"]["quantize_static"]),
                       _ratio(mp, r["runs"]["NNCF"]), _ratio(mp, r["runs"]["quantize_static"]),
                       _seconds(r["runs"]["onnxmp fast"]["total"]), _ratio(r["runs"]["onnxmp fast"], r["runs"]["NNCF"]),
                       _milliseconds(one), _passes(sum(timings.values()), one), _passes(r["runs"]["NNCF"].get("call"), one),
                       _seconds(r["rerun"]["total"]), f"{r['rerun']['total'] / mp['total']:.2f}×"])
    return header, rows


def quality_table(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "metric", "float score"] + [f"{t} {c}" for t in TOOLS for c in ("score", "SQNR dB")]
    rows = []
    for r in results:
        q, metric = r["quality"], r["bench"].metric
        cells = [r["bench"].name, metric, _fmt_score(q["float"]["score"], metric)]
        for tool in TOOLS:
            cells += ([_fmt_score(q[tool]["score"], metric), f"{q[tool]['sqnr']:.2f}"] if tool in q else ["failed", "—"])
        rows.append(cells)
    return header, rows


def notes(r: dict) -> str:
    bench, runs, record = r["bench"], r["runs"], r["runs"]["onnxmp"]["record"]
    counts, chosen = record["counts"], record["chosen"]
    unit = "feed files" if bench.calib_feeds else "samples"
    shown = os.path.relpath(bench.calib, ROOT)
    source = f"`{bench.calib if shown.startswith('..') else shown}`"
    parts = [(f"calibration: the first {r['used']} of the {r['total']} {unit} of {source}" if r["used"] < r["total"]
              else f"calibration: all {r['total']} {unit} of {source}") + f"; load average {r['load']:.2f} before the runs",
             f"onnxmp: {counts['groups']} groups, {counts['weighted_ops']} weighted ops, {counts['phase1_evaluations']} "
             f"Phase 1 evaluations ({counts['simulator_evaluations']} simulator runs in all), chosen "
             + ", ".join(f"{n}×{c}" for c, n in chosen["mix"].items())
             + f", its own SQNR as onnxruntime runs it {chosen['sqnr_db_ort_default']:.2f} dB"]
    again = r["rerun"]["record"]["timings_s"]
    parts.append(f"cached rerun at budget {RERUN_BUDGET}: " + ", ".join(f"{k} {_seconds(v)} s" for k, v in again.items())
                 + f", start-up + rest {_seconds(r['rerun']['total'] - sum(again.values()))} s")
    if "error" in runs["NNCF"]:
        parts.append(f"NNCF failed: {runs['NNCF']['error']}")
    qs = runs["quantize_static"]
    if "error" in qs:
        parts.append(f"quantize_static failed: {qs['error']}")
    elif qs["failed"]:
        parts.append(f"quantize_static timed {qs['way']}, after (not timed) " + "; ".join(qs["failed"]))
    parts += [f"{tool} SQNR {q['note']}" for tool, q in r["quality"].items() if q.get("note")]
    return f"- **{bench.name}**: " + "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="default: digits and every prepared zoo model")
    parser.add_argument("--samples", type=int, default=None, help="calibrate on the first N samples (or feed files)")
    parser.add_argument("--top", type=int, default=8, help="functions per stage and ranking in the profile")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    args = parser.parse_args()
    benches = bench_models(args.models)
    unknown = set(args.models or ()) - {b.name for b in benches}
    if unknown:
        parser.error(f"unknown or unprepared model(s): {', '.join(sorted(unknown))}")
    python, nncf_version = nncf_python()
    state = git_state()
    results, profiles = [], []
    for bench in benches:
        with tempfile.TemporaryDirectory(prefix="cold_speed-") as folder:
            results.append(run_model(bench, args.samples, python, folder))
            if not args.no_profile:
                stats, timings = profile_stages(bench, results[-1]["calib"], folder)
                profiles.append(profile_section(bench, stats, timings, args.top))
    command = " ".join(["python benchmarks/cold_speed.py", *sys.argv[1:]])
    text = (f"# Cold runs: onnxmp against NNCF and quantize_static\n\nMeasured by `{command}` at {state}, "
            f"onnxruntime {ort.__version__}, NNCF {nncf_version}, {os.cpu_count()} cores (shared with other work: "
            "the load average before each model is in its note). Every run in a fresh process, one after the other "
            "per model; what each column means: the docstring of benchmarks/cold_speed.py.\n\n## Time\n\n"
            + markdown_table(*time_table(results)) + "\n\n## Quality\n\n" + markdown_table(*quality_table(results))
            + "\n\n" + "\n".join(notes(r) for r in results) + "\n")
    if profiles:
        text += (f"\n## Profile\n\nonnxmp optimize under cProfile (in-process, fresh cache), one profiler per stage "
                 f"of onnxmp/pipeline.py's `_timed`, nested stages excluded from their parent, {OUTSIDE} the rest "
                 f"of the call; per stage the top {args.top} functions by self time, then the top {args.top} onnxmp "
                 "functions by cumulative time. **record s**: the stage's seconds in that run's record; **profiled s**: "
                 "the time its own profiler saw (nested stages excluded). Both "
                 "exceed the cold run's where Python-heavy code runs (cProfile's overhead).\n\n"
                 + "\n".join(profiles))
    write_result("cold_speed.md", text)
    print(text)


if __name__ == "__main__":
    main()
