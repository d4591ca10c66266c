"""AdaRound vs round-to-nearest on real models: uniform W4A8 and mixed points at two budgets.

    python benchmarks/adaround_table.py [--models digits ppocr_cls ...] [--budgets 0.3,0.4] [--samples N]

For each model: output SQNR (vs float, calibration data) and task score of the exported model,
with nearest rounding and with AdaRound, and AdaRound's time per layer. Writes
benchmarks/results/adaround.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from common import bench_models, git_state, publish_merged, samples_calib_only

from onnxmp import OptimizeConfig, optimize, parse_candidates


def _limited_calib(path: str, samples: int | None, folder: str) -> str:
    if not samples:
        return path
    arrays = dict(np.load(path))
    out = os.path.join(folder, "calib.npz")
    np.savez(out, **{k: v[:samples] for k, v in arrays.items()})
    return out


def _ada_time(ada: dict | None) -> str:
    if not ada:
        return "—"
    return f"{ada['seconds_per_layer']:.2f}" if ada["optimised"] else "cached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--budgets", default="0.3,0.4")
    parser.add_argument("--samples", type=int, default=None, help="use only the first N calibration samples")
    args = parser.parse_args()
    header = ["model", "config", "rounding", "BOPs", "SQNR dB", "task score", "AdaRound s/layer", "layers×bits"]
    rows, notes = [], {}
    benches = bench_models(args.models)
    if args.samples:
        benches = samples_calib_only(benches, "adaround_table", "with --samples takes the first N samples of one .npz")
    for bench in benches:
        notes[bench.name] = f"onnxmp {git_state()}" + (f", first {args.samples} calibration samples" if args.samples else
                                                     ", all calibration samples")
        with tempfile.TemporaryDirectory() as tmp:
            calib = _limited_calib(bench.calib, args.samples, tmp)
            setups = [("uniform W4A8", parse_candidates("W4A8"), 1.0)]
            setups += [(f"mixed, budget {b}", parse_candidates("W4A8,W8A8,W8A16"), float(b))
                       for b in args.budgets.split(",")]
            for label, candidates, budget in setups:
                for mode in ("off", "on"):
                    out = os.path.join(tmp, "m.onnx")
                    config = OptimizeConfig(candidates=candidates, budget=budget, calib=calib, adaround=mode, target="generic",
                                            cache_dir=os.path.join(tmp, "cache"))
                    record = optimize(bench.model, out, config).record
                    ada = record["adaround"]
                    bops = record["chosen"]["bops"] / (record["baseline"]["bops"] * (
                        128 / (candidates[-1].w_bits * candidates[-1].a_bits)))
                    rows.append([bench.name, label, "AdaRound" if mode == "on" else "nearest", f"{bops:.3f}",
                                 f"{record['chosen']['sqnr_db_ort_default']:.2f}", f"{bench.evaluate(out):.4f}",
                                 _ada_time(ada),
                                 f"{ada['layers']}×{len(ada['bits'])}" if ada else "—"])
                    print(" | ".join(rows[-1]), flush=True)
    publish_merged("adaround.md", (
        "AdaRound vs nearest rounding, measured by `python benchmarks/adaround_table.py` (`--adaround on`: every "
        "weight bit-width below 16; the default rounds only below 8 bits). BOPs relative to all-W8A16; SQNR of the "
        "exported model on onnxruntime vs the float model on the calibration samples; task score on the model's "
        "labelled evaluation set; AdaRound s/layer: wall time of AdaRound per (layer, bit-width), `cached` when the "
        "first run of the model already rounded them. Models are run one at a time (`--models NAME`); each keeps "
        "its own note."), header, rows, notes)

if __name__ == "__main__":
    main()
