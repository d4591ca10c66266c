"""How finely does output SQNR tell two points apart? The shipped point under changes that should
not matter.

    python benchmarks/sqnr_resolution.py [--models ppocr_rec ...] [--stand-ins 8]

Per real model: ``optimize`` with default options (``--target ort``, budget 0.5), then the point
it shipped (its groups' candidates, Phase 1's ranges with refinement's flips) simulated again,
whole graph, over the calibration samples:
- **stand-in**: one activation the point leaves float given a 16-bit min/max quantizer (noise
  about 90 dB below the signal), for up to ``--stand-ins`` such activations spread along the
  graph, one at a time: what partial re-evaluation's suffix sessions did to the float groups of
  their window until d4c7d71;
- **input x (1 ± 1e-6)**: every float graph input scaled by a millionth either way, the float
  reference recomputed on the scaled inputs.
Each changes the model's values far below its quantization noise; what it changes in the SQNR
comes from roundings of the 8-bit quantizers downstream that land on the other side. The spread
is the smallest SQNR difference between two points that means something on that model: a
before/after comparison finer than it measures noise.

Writes benchmarks/results/sqnr_resolution.md (rows of models not run this time are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

import numpy as np
from common import bench_models, git_state, publish_merged

from onnxmp import OptimizeConfig, optimize
from onnxmp.pipeline import analyze
from onnxmp.quant import numerics
from onnxmp.quant.candidates import Candidate
from onnxmp.runtime.session import make_session, run_over
from onnxmp.search.simulate import FLOAT_PROXY_BITS

HEADER = ["model", "shipped mix", "simulated SQNR dB", "stand-ins", "stand-in SQNR dB (min / max)",
          "input x (1 ± 1e-6) SQNR dB", "largest move dB"]


def shipped_point(bench, folder: str):
    """The analysis of a default run and the assignment it shipped, with its ranges."""
    config = OptimizeConfig(calib=bench.calib, cache_dir=os.path.join(folder, "cache"))
    record = optimize(bench.model, None, config).record
    analysis = analyze(bench.model, config)  # Phase 1 from the cache
    sim = analysis.simulator
    for flip in (record["chosen"].get("range_refinement") or {}).get("flipped", []):
        sim.params.range_method[(flip["tensor"], flip["bits"])] = flip["method"]
    assignment = {g["group"]: Candidate.parse(g["candidate"]) for g in record["groups"]}
    return analysis, assignment, record


def stand_in_sqnrs(analysis, assignment, count: int) -> list[float]:
    """The point's SQNR with one float activation at a time behind a 16-bit quantizer."""
    sim = analysis.simulator
    float_acts = sim.float_activations(assignment)
    floating = [a for a in analysis.plan.activations if a in float_acts]
    picked = [floating[i] for i in np.unique(np.linspace(0, len(floating) - 1, min(count, len(floating))).round().astype(int))] \
        if floating else []
    sqnrs = []
    for name in picked:  # the whole graph, keeping only this float activation's quantizer
        got = sim.whole_outputs(assignment, sim.activation_feeds(name, FLOAT_PROXY_BITS, "minmax"), frozenset({name}))
        sqnrs.append(numerics.sqnr_db(sim.reference, got))
    return sqnrs


def scaled_input_sqnrs(analysis, assignment) -> list[float]:
    """The point's SQNR with every float graph input scaled by 1 ± 1e-6 (samples only)."""
    sim, data = analysis.simulator, analysis.simulator.data
    floats = {k for k, v in data.arrays.items() if np.issubdtype(v.dtype, np.floating)} if data.batched else set()
    if not floats:
        return []
    session = make_session(analysis.model, outputs=sim.observed)
    sqnrs = []
    for eps in (1e-6, -1e-6):
        scaled = dataclasses.replace(data, arrays={k: (v * np.float32(1 + eps)).astype(v.dtype) if k in floats else v
                                                   for k, v in data.arrays.items()})
        other = sim.on_data(scaled, run_over(session, scaled, sim.observed))
        sqnrs.append(numerics.nsr_to_db(other.nsr(assignment)))
    return sqnrs


def run_model(bench, count: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="sqnr_resolution-") as folder:
        analysis, assignment, record = shipped_point(bench, folder)
        base = numerics.nsr_to_db(analysis.simulator.nsr(assignment))
        stand = stand_in_sqnrs(analysis, assignment, count)
        scaled = scaled_input_sqnrs(analysis, assignment)
    moves = [abs(s - base) for s in stand + scaled]
    row = [bench.name, ", ".join(f"{n}×{c}" for c, n in record["chosen"]["mix"].items()), f"{base:.2f}",
           str(len(stand)), f"{min(stand):.2f} / {max(stand):.2f}" if stand else "— (no float activation)",
           " / ".join(f"{s:.2f}" for s in scaled) if scaled else "— (no float samples)",
           f"{max(moves):.2f}" if moves else "—"]
    print(" | ".join(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--stand-ins", type=int, default=8, help="float activations tried, one at a time")
    args = parser.parse_args()
    rows = [run_model(bench, args.stand_ins) for bench in bench_models(args.models)]
    caption = ("# How finely SQNR tells two points apart\n\n"
               f"Measured by `{' '.join(['python benchmarks/sqnr_resolution.py', *sys.argv[1:]])}` at {git_state()}, "
               f"{os.cpu_count()} cores. Per model the point a default `optimize` shipped (`--target ort`, budget "
               "0.5), simulated whole over the calibration samples, then with one float activation at a time behind "
               "a 16-bit quantizer, and with the float inputs scaled by 1 ± 1e-6; what each means: the docstring of "
               "benchmarks/sqnr_resolution.py. **largest move**: the largest SQNR change any of them made.")
    publish_merged("sqnr_resolution.md", caption, HEADER, rows)


if __name__ == "__main__":
    main()
