"""Accuracy vs cost of onnxmp on the shipped digits CNN, next to onnxruntime's quantize_static.

Prints a Markdown table (and writes it to benchmarks/results/optimize_digits.md): for uniform
W4A8 / W8A8 / W8A16, onnxmp's mixed points at several budgets and onnxruntime's per-channel W8A8,
the cost (BOPs and weight memory relative to all-W8A16), the output SQNR against the float model
on the calibration data, the top-1 accuracy on 500 held-out digits, the file size and run time.
Every number is measured by this run:  python benchmarks/optimize_table.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import publish  # noqa: E402
from peers import ort_quantize_static_w8a8  # noqa: E402

from onnxmp import OptimizeConfig, optimize, parse_candidates  # noqa: E402
from onnxmp.quant import numerics  # noqa: E402

MODEL = os.path.join(ROOT, "models", "digits", "digits_cnn.onnx")
# the paper's setting, as zoo_table.py: quantizers around every op, BOPs, candidates W4A8,W8A8,W8A16
TARGET = "generic"
CALIB = os.path.join(ROOT, "models", "digits", "calib.npz")
TEST = os.path.join(ROOT, "models", "digits", "test.npz")


def _run(path: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _row(name: str, path: str, record: dict | None, seconds: float, ref: dict) -> list[str]:
    calib_out, test_out = _run(path, ref["calib_x"]), _run(path, ref["test_x"])
    sqnr = numerics.sqnr_db([ref["calib_float"]], [calib_out])
    top1 = float((test_out.argmax(1) == ref["labels"]).mean())
    if record is None:
        bops = memory = mix = "—"
    else:
        base = record["baseline"]
        bops = f"{record['chosen']['bops'] / base['bops']:.3f}"
        memory = f"{record['chosen']['memory_bytes'] / base['memory_bytes']:.3f}"
        mix = ", ".join(f"{n}×{c}" for c, n in record["chosen"]["mix"].items())
    size = os.path.getsize(path) / 1024
    return [name, bops, memory, f"{sqnr:.2f}", f"{100 * top1:.1f}", f"{size:.0f}", f"{seconds:.2f}", mix]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.3,0.35,0.4,0.5,0.6,0.75")
    args = parser.parse_args()
    calib_x = np.load(CALIB)["input"]
    test = np.load(TEST)
    ref = {"calib_x": calib_x, "test_x": test["input"], "labels": test["labels"],
           "calib_float": _run(MODEL, calib_x)}
    float_top1 = float((_run(MODEL, test["input"]).argmax(1) == test["labels"]).mean())
    header = ["model", "BOPs", "memory", "SQNR dB", "top-1 %", "KiB", "time s", "mix (groups)"]
    rows = [["float", "—", "—", "∞", f"{100 * float_top1:.1f}", f"{os.path.getsize(MODEL) / 1024:.0f}", "—", "—"]]
    with tempfile.TemporaryDirectory() as tmp:
        for cand in ("W4A8", "W8A8", "W8A16"):
            out = os.path.join(tmp, f"{cand}.onnx")
            start = time.perf_counter()
            record = optimize(MODEL, out, OptimizeConfig(candidates=parse_candidates(cand), budget=1.0, target=TARGET)).record
            rows.append(_row(f"uniform {cand}", out, record, time.perf_counter() - start, ref))
        # With one candidate the record's baseline is that candidate: re-express costs vs W8A16.
        for budget in [float(b) for b in args.budgets.split(",")]:
            out = os.path.join(tmp, f"mixed_{budget}.onnx")
            start = time.perf_counter()
            record = optimize(MODEL, out, OptimizeConfig(budget=budget, target=TARGET)).record
            rows.append(_row(f"onnxmp budget {budget}", out, record, time.perf_counter() - start, ref))
        out = os.path.join(tmp, "ort.onnx")
        start = time.perf_counter()
        ort_quantize_static_w8a8(MODEL, {"input": calib_x}, out)
        rows.append(_row("onnxruntime quantize_static W8A8", out, None, time.perf_counter() - start, ref))
    _fix_uniform_costs(rows)
    publish("optimize_digits.md", (f"Digits CNN (models/digits), {len(calib_x)} calibration samples, "
                                   f"{len(test['labels'])} test digits; onnxruntime {ort.__version__}; onnxmp "
                                   f"`--target {TARGET}` (candidates W4A8,W8A8,W8A16, BOPs). Costs relative to "
                                   "all-W8A16."), header, rows)


def _fix_uniform_costs(rows: list[list[str]]) -> None:
    """A uniform run's record measures cost against itself; restate it against all-W8A16
    (BOPs scale with w·a, memory with w)."""
    for row in rows:
        if row[0].startswith("uniform W"):
            w, a = (int(v) for v in row[0].split("W")[1].split("A"))
            row[1], row[2] = f"{w * a / 128:.3f}", f"{w / 8:.3f}"


if __name__ == "__main__":
    main()
