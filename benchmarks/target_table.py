"""Accuracy targets on real models with real labels: target met, chosen cost, real evaluations
by interpolation search vs plain binary search on the same curve, and cold vs cached run time.

    python benchmarks/target_table.py [--models digits ppocr_rec ...] [--drops 0.5,1,2]

Each target is run twice: once with an empty results cache (cold) and once reusing it; the
second run recomputes nothing of Phase 1. Prints a Markdown table and writes it to
benchmarks/results/targets.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import bench_models, publish

from onnxmp import OptimizeConfig, optimize
from onnxmp.search.evaluate import Evaluator

# the paper's setting, as zoo_table.py: candidates W4A8,W8A8,W8A16 against an all-W8A16 baseline
TARGET = "generic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--drops", default="0.5,1,2", help="absolute drops of the task score to target")
    parser.add_argument("--adaround", default="auto", choices=["auto", "on", "off"])
    args = parser.parse_args()
    header = ["model", "AdaRound", "metric", "float", "target drop", "baseline (all-W8A16)", "threshold", "chosen score",
              "chosen BOPs", "curve points", "evals interp.", "evals binary", "cold s", "cached s"]
    rows = []
    for bench in bench_models(args.models):
        float_score = bench.evaluate(bench.model)
        evaluator = Evaluator(bench.evaluate, bench.metric, f"zoo:{bench.name}")
        for drop in args.drops.split(","):
            with tempfile.TemporaryDirectory() as cache:
                config = OptimizeConfig(calib=bench.calib, cache_dir=cache, target_drop=drop, evaluator=evaluator,
                                        compare_binary_search=True, adaround=args.adaround, target=TARGET)
                start = time.perf_counter()
                record = optimize(bench.model, None, config).record
                cold = time.perf_counter() - start
                # Cached: Phase 1 and the evaluated points are reused; binary search is not rerun.
                start = time.perf_counter()
                cached_record = optimize(bench.model, None, OptimizeConfig(
                    calib=bench.calib, cache_dir=cache, target_drop=drop, evaluator=evaluator,
                    adaround=args.adaround, target=TARGET)).record
                cached = time.perf_counter() - start
            t = record["target"]
            assert cached_record["cache"]["hit"] and cached_record["target"]["chosen_index"] == t["chosen_index"]
            rows.append([bench.name, args.adaround, bench.metric, f"{float_score:.2f}", drop, f"{t['baseline_score']:.2f}",
                         f"{t['threshold']:.2f}", f"{t['chosen_score']:.2f}", f"{record['chosen']['relative_cost']:.3f}",
                         len(record["pareto_curve"]), t["evaluations"], t["binary_search_evaluations"],
                         f"{cold:.1f}", f"{cached:.1f}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    publish("targets.md", ("Accuracy targets (drop of the task score from all-W8A16: absolute, or relative where it ends "
            "in %), `--target generic`, "
            "candidates W4A8,W8A8,W8A16. "
            "Evaluations count real exported models scored by the task evaluator, the baseline included."), header, rows)


if __name__ == "__main__":
    main()
