"""Does Phase 1 on a subset of the calibration samples rank the groups as on all of them, and
does the output change?

    python benchmarks/phase1_subset.py [--models digits ppocr_cls ...] [--subsets 16,8]

Per real model (samples calibration sets; the feed-folder ones are skipped), ``optimize`` with
default options (``--target ort``, budget 0.5), fresh (no cache), once with Phase 1 on every
calibration sample (``--phase1-samples 0``) and once per subset size (``--phase1-samples N``:
N samples spread evenly over the set; calibration and every later measurement use all). Columns:
Phase 1 seconds and evaluations; Kendall's tau-b between the subset's and the full set's
sensitivity lists over the entries both evaluated (``robustness.kendall_tau_b``), and how many
of the full list's ten most sensitive entries the subset's top ten holds; the chosen mix; the
output's SQNR as onnxruntime runs it (every calibration sample) and its task score. The per-layer
latency timings of ``--target ort`` are taken once and shared (the same cache of them for every
run), so a different mix comes from Phase 1, not from timing noise.

Writes benchmarks/results/phase1_subset.md (rows of models not run this time are kept) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import bench_models, git_state, publish_merged, samples_calib_only  # noqa: E402
from robustness import kendall_tau_b  # noqa: E402

from onnxmp import OptimizeConfig, optimize  # noqa: E402
from onnxmp.targets import ort as ort_target  # noqa: E402

HEADER = ["model", "Phase 1 samples", "Phase 1 s", "Phase 1 evaluations", "tau-b vs all", "top-10 overlap",
          "chosen mix", "SQNR dB (onnxruntime)", "task score", "total s"]


def _run(bench, samples: int, folder: str) -> tuple[dict, float, float]:
    """(record, task score, seconds) of one fresh optimize."""
    out = os.path.join(folder, f"out{samples}.onnx")
    start = time.perf_counter()
    record = optimize(bench.model, out, OptimizeConfig(calib=bench.calib, cache_dir=os.path.join(folder, f"cache{samples}"),
                                                       phase1_samples=samples)).record
    return record, bench.evaluate(out), time.perf_counter() - start


@contextlib.contextmanager
def _same_layer_timings(record: dict):
    """``--target ort`` answers with the layer timings of ``record``'s run instead of timing again."""
    path = os.path.join(record["cache"]["folder"], "latency.json")
    if not os.path.isfile(path):
        yield
        return
    with open(path, encoding="utf-8") as handle:
        stored = json.load(handle)
    original = ort_target.PROFILE
    ort_target.PROFILE = dataclasses.replace(original, measure_latency=lambda *args: stored)
    try:
        yield
    finally:
        ort_target.PROFILE = original


def _entries(record: dict) -> dict[tuple[int, str], float]:
    return {(s["group"], s["candidate"]): s["sqnr_db"] for s in record["sensitivity"] if s["evaluated"]}


def _top(table: dict, keys: list, k: int = 10) -> set:
    """The ``k`` most sensitive entries (lowest SQNR) among ``keys``."""
    return set(sorted(keys, key=lambda key: table[key])[:k])


def run_model(bench, subsets: list[int]) -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        runs = {0: _run(bench, 0, folder)}
        with _same_layer_timings(runs[0][0]):
            runs.update({samples: _run(bench, samples, folder) for samples in subsets})
        full = _entries(runs[0][0])
        for samples, (record, score, seconds) in runs.items():
            mine = _entries(record)
            keys = sorted(set(full) & set(mine))
            tau = kendall_tau_b([full[k] for k in keys], [mine[k] for k in keys]) if samples else 1.0
            chosen = record["chosen"]
            rows.append([bench.name, str(samples or "all"), f"{record['timings_s']['phase1']:.1f}",
                         str(record["counts"]["phase1_evaluations"]), f"{tau:.3f}",
                         f"{len(_top(full, keys) & _top(mine, keys))}/{min(10, len(keys))}",
                         ", ".join(f"{n}×{c}" for c, n in chosen["mix"].items()),
                         f"{chosen['sqnr_db_ort_default']:.2f}", f"{score:.4f}", f"{seconds:.0f}"])
            print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--subsets", default="16", help="Phase 1 sample counts to compare with all samples")
    args = parser.parse_args()
    subsets = [int(s) for s in args.subsets.split(",")]
    rows = []
    for bench in samples_calib_only(bench_models(args.models), "phase1_subset", "reads one .npz of samples"):
        rows += run_model(bench, subsets)
    caption = ("# Phase 1 on a subset of the calibration samples\n\n"
               f"Measured by `{' '.join(['python benchmarks/phase1_subset.py', *sys.argv[1:]])}` at {git_state()}, "
               f"{os.cpu_count()} cores. Each row one fresh `optimize` (defaults: `--target ort`, budget 0.5) with "
               "Phase 1 on that many calibration samples spread over the set; every other stage uses all of them; "
               "the per-layer latency timings are shared between a model's rows. tau-b and the top-10 overlap "
               "compare each list with the all-samples list over the entries both evaluated.")
    publish_merged("phase1_subset.md", caption, HEADER, rows)


if __name__ == "__main__":
    main()
