"""LSQ fine-tuning on real labelled tasks: float vs post-training quantization (AdaRound) vs
LSQ-fine-tuned, at W4A8 and at the lowest bit-widths onnxruntime's QDQ path takes (W4A4), with
the training time.

    python benchmarks/lsq_table.py [--models digits ppocr_cls] [--configs W4A8 W4A4] [--epochs 20] [--lr 1e-3]

LSQ trains by distillation from the float model on the calibration samples (no labels: the
setting of a user who has only calibration data); scores are on each model's labelled
evaluation set. Needs the training environment (onnxmp finetune --setup). Writes
benchmarks/results/lsq.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import onnx
from common import bench_models, git_state, publish_merged, samples_calib_only

from onnxmp import OptimizeConfig, optimize, parse_candidates
from onnxmp.errors import BudgetTooLowError
from onnxmp.finetune.runner import FinetuneConfig, finetune
from onnxmp.model.loader import load_model, prepare_model
from onnxmp.quant import numerics
from onnxmp.runtime.data import make_calibration_set, read_npz
from onnxmp.runtime.session import make_session, observed_tensors, run_over


def output_sqnr(path: str, float_path: str, calib: str) -> float:
    """SQNR (dB) of the model's pre-softmax outputs against the float model's, on the calibration samples."""
    float_model = prepare_model(load_model(float_path))  # the names onnxmp's export kept
    names = observed_tensors(float_model)
    data = make_calibration_set(read_npz(calib), float_model, calib)
    reference = run_over(make_session(float_model, outputs=names), data, names)
    return numerics.sqnr_db(reference, run_over(make_session(onnx.load(path), outputs=names), data, names))


CONFIGS = {"W4A8": "W4A8", "W4A4": "W4A4,W4A8"}  # W4A4: groups onnxruntime refuses at A4 keep A8


def quantize(bench, out: str, candidates: str) -> dict:
    """onnxmp PTQ (AdaRound on) at the cheapest assignment of ``candidates``."""
    config = OptimizeConfig(candidates=parse_candidates(candidates), budget=1.0, calib=bench.calib, cache_dir=None)
    if "," in candidates:
        try:
            optimize(bench.model, None, dataclasses.replace(config, budget=1e-3))
        except BudgetTooLowError as exc:
            config = dataclasses.replace(config, budget=exc.cheapest)
    return optimize(bench.model, out, config).record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["digits", "ppocr_cls"])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    header = ["model", "config", "mix (groups)", "metric", "float", "PTQ (AdaRound)", "PTQ SQNR dB", "LSQ",
              "LSQ SQNR dB", "LSQ loss first → last epoch", "epochs", "training s"]
    rows, notes = [], {}
    for bench in samples_calib_only(bench_models(args.models), "lsq_table", "measures SQNR over the samples of one "
                                    ".npz"):
        notes[bench.name] = f"onnxmp {git_state()}"
        for label in args.configs:
            with tempfile.TemporaryDirectory() as tmp:
                ptq = os.path.join(tmp, "ptq.onnx")
                record = quantize(bench, ptq, CONFIGS[label])
                mix = ", ".join(f"{n}×{c}" for c, n in record["chosen"]["mix"].items())
                out = os.path.join(tmp, "lsq.onnx")
                start = time.perf_counter()
                fine = finetune(ptq, bench.model, out, bench.calib,
                                FinetuneConfig(epochs=args.epochs, learning_rate=args.lr, batch=args.batch),
                                workdir=os.path.join(tmp, "job"),
                                progress=lambda e, n=bench.name, c=label: print(n, c, e, flush=True))
                seconds = time.perf_counter() - start
                losses = [e["loss"] for e in fine["epochs"]]
                fmt = (lambda v: f"{v:.1f}") if "%" in bench.metric else (lambda v: f"{v:.4f}")
                rows.append([bench.name, label, mix, bench.metric, fmt(bench.evaluate(bench.model)),
                             fmt(bench.evaluate(ptq)), f"{output_sqnr(ptq, bench.model, bench.calib):.2f}",
                             fmt(bench.evaluate(out)), f"{output_sqnr(out, bench.model, bench.calib):.2f}",
                             f"{losses[0]:.4g} → {losses[-1]:.4g}", str(len(losses)), f"{seconds:.0f}"])
                print(" | ".join(rows[-1]), flush=True)
    publish_merged("lsq.md", (
        "LSQ fine-tuning (`onnxmp finetune`, distillation from the float model on the calibration samples, "
        f"AdamW lr {args.lr}, batch {args.batch}) after onnxmp's post-training quantization with AdaRound, measured "
        "by `python benchmarks/lsq_table.py`; scores on each model's labelled evaluation set; SQNR of the "
        "pre-softmax outputs against the float model on the calibration samples (the data LSQ trained on). "
        "**W4A4** is the lowest onnxruntime's QDQ path runs (ONNX has no 3-bit types, so W3A3 would be 3-bit "
        "values in 4-bit containers that no runtime computes faster or stores smaller; it is not offered): "
        "candidates W4A4,W4A8 at the cheapest BOPs they allow, i.e. every weighted layer at 4-bit weights and "
        "4-bit inputs, except where onnxruntime refuses 4-bit activations (tensors read by MaxPool); groups whose "
        "activations feed no weighted layer cost no BOPs, and the search keeps those at 8 bits (the more accurate "
        "choice at equal cost): the mix column counts groups."), header, rows, notes)


if __name__ == "__main__":
    main()
