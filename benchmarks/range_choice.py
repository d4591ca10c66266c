"""Can Phase 1's range choice be made cheaper? It costs one more evaluation per group (about half
of Phase 1 on the OCR CNNs and MiniLM): each group with activations is measured at the model's
output with its min/max range and with its MSE clip, and keeps the better. Two cheaper ways,
checked against that choice:

    python benchmarks/range_choice.py [--models ppocr_rec ppocr_det ...]

- **local**: judge by the noise a few ops after the group (its readers' outputs at depth 1, 4 and
  16 of the graph from its quantized tensors) instead of at the model's output: a run of a short
  stretch of graph instead of the rest of the model;
- **fewer samples**: judge on the first run of samples (16), or stop the second evaluation as soon
  as a paired test over the samples seen says it loses (each sample's share of the output's
  noise-to-signal ratio, min/max minus MSE clip; stop where the mean's lower bound at z = 3,
  finite-population corrected, is above 0; MSE clip evaluated first as it wins more often).

Per real model (samples calibration sets), ``--target ort`` defaults: every group Phase 1 gives a
range choice (activations measured below 16 bits whose two ranges differ), each evaluated whole
(the simulation graph, every other group at its highest candidate), over every calibration sample.
Columns: how many groups; on how many the output prefers min/max; how many of the choices each
cheaper way gets right; the sequential test's sample-evaluations as a fraction of two whole
evaluations, and its wrong choices with the output's min/max-to-MSE-clip noise ratio (below 1:
min/max was better).

Writes benchmarks/results/range_choice.md (rows of models not run this time are kept) and prints it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import bench_models, git_state, publish_merged, samples_calib_only  # noqa: E402

from onnxmp import OptimizeConfig  # noqa: E402
from onnxmp.model.graph import GraphIndex  # noqa: E402
from onnxmp.pipeline import analyze  # noqa: E402
from onnxmp.quant import numerics  # noqa: E402
from onnxmp.runtime.session import make_session, run_over  # noqa: E402
from onnxmp.search.sensitivity import low_activation_bits, nearly_same_range  # noqa: E402
from onnxmp.search.simulate import build_simulation_model  # noqa: E402

DEPTHS = (1, 4, 16)
RUN = 16  # samples per run, as the simulator's (runtime.data.DEFAULT_BATCH)
Z = 3.0
HEADER = ["model", "groups with a choice", "output prefers min/max", *(f"local, depth {d}: right" for d in DEPTHS),
          "first 16 samples: right", "sequential test: right", "sequential test: sample-evaluations",
          "sequential test: wrong (noise ratio min/max : MSE clip)"]


def probes(graph: onnx.GraphProto, tensors: tuple[str, ...]) -> dict[int, list[str]]:
    """Per depth, the tensors that many ops downstream of ``tensors`` (the frontier of a
    breadth-first walk over readers; where it ends, the last frontier)."""
    readers = GraphIndex.build(graph).readers
    found, frontier, visited = {}, set(tensors), set()
    for depth in range(1, max(DEPTHS) + 1):
        step = [n for t in frontier for n in readers.get(t, []) if n.name not in visited]
        visited.update(n.name for n in step)
        frontier = {o for n in step for o in n.output if o} or frontier
        if depth in DEPTHS:
            found[depth] = sorted(frontier)
    return found


def per_sample_nsr(reference: list[np.ndarray], values: list[np.ndarray], samples: int) -> np.ndarray:
    """Each sample's share of the noise-to-signal ratio over these outputs (their mean, as
    ``numerics.noise_ratio`` takes it): the shares sum to the ratio."""
    shares = np.zeros(samples)
    for ref, val in zip(reference, values, strict=True):
        ref, val = ref.reshape(samples, -1).astype(np.float64), val.reshape(samples, -1).astype(np.float64)
        shares += ((ref - val) ** 2).sum(axis=1) / max(float((ref ** 2).sum()), 1e-30) / len(reference)
    return shares


def sequential_stop(loser: np.ndarray, winner: np.ndarray) -> int:
    """Samples after which the paired test stops the second evaluation (all of them where it never does)."""
    n = len(loser)
    diff = loser - winner
    for k in range(RUN, n, RUN):
        seen = diff[:k]
        error = seen.std(ddof=1) / math.sqrt(k) * math.sqrt((n - k) / (n - 1))
        if seen.mean() - Z * error > 0:
            return k
    return n


def measure(bench) -> list[str]:
    analysis = analyze(bench.model, OptimizeConfig(calib=bench.calib))
    sim, plan, params = analysis.simulator, analysis.plan, analysis.params
    model = build_simulation_model(analysis.model, plan)
    samples = analysis.data.num_samples
    observed = sim.observed
    cases = []
    for group in plan.groups:
        options = analysis.allowed[group.gid]
        lows = low_activation_bits(options)
        if not group.activations or not lows:
            continue
        bits, cand = min(lows.items())
        if all(nearly_same_range(params, name, bits) for name in group.activations):
            continue
        found = probes(model.graph, group.activations)
        names = list(dict.fromkeys(observed + [t for d in DEPTHS for t in found[d]]))
        session = make_session(model, outputs=names, keep_float_weights=True)
        inputs = {i.name for i in session.get_inputs()}
        baseline = {g.gid: analysis.allowed[g.gid][-1] for g in plan.groups}

        def run(assignment, s=session, i=inputs, n=names):
            feeds = {k: v for k, v in sim.feeds_for(assignment).items() if k in i}
            return dict(zip(n, run_over(s, analysis.data, n, feeds), strict=True))

        reference = run(baseline)
        values = {}
        for method in ("minmax", "mse"):
            params.range_method.update({(name, bits): method for name in group.activations})
            values[method] = run({**baseline, group.gid: cand})
        params.range_method.update({(name, bits): "minmax" for name in group.activations})
        out = {m: per_sample_nsr([reference[t] for t in observed], [values[m][t] for t in observed], samples)
               for m in values}
        local = {d: {m: numerics.noise_ratio([reference[t] for t in found[d]], [values[m][t] for t in found[d]])
                     for m in values} for d in DEPTHS}
        cases.append((out, local))
    prefers = lambda nsr: "mse" if nsr["mse"] < nsr["minmax"] else "minmax"  # noqa: E731  ties: min/max, as Phase 1
    truth = [prefers({m: v.sum() for m, v in out.items()}) for out, _ in cases]
    right = {d: sum(prefers(local[d]) == t for (_, local), t in zip(cases, truth, strict=True)) for d in DEPTHS}
    first = sum(prefers({m: v[:RUN].sum() for m, v in out.items()}) == t for (out, _), t in zip(cases, truth, strict=True))
    used, wrong = 0, []
    for (out, _), t in zip(cases, truth, strict=True):
        stop = sequential_stop(out["minmax"], out["mse"])
        used += samples + stop
        choice = "mse" if stop < samples else prefers({m: v.sum() for m, v in out.items()})
        if choice != t:
            wrong.append(f"{out['minmax'].sum() / out['mse'].sum():.2f}")
    count = len(cases)
    return [bench.name, str(count), str(truth.count("minmax")), *(f"{right[d]}/{count}" for d in DEPTHS),
            f"{first}/{count}", f"{count - len(wrong)}/{count}",
            f"{used / max(2 * samples * count, 1):.2f}", ", ".join(wrong) or "none"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["ppocr_rec", "ppocr_det", "minilm", "ppocr_cls"])
    args = parser.parse_args()
    rows, notes = [], {}
    for bench in samples_calib_only(bench_models(args.models), "range_choice", "reads one .npz of samples"):
        rows.append(measure(bench))
        notes[bench.name] = f"onnxmp {git_state()}, every calibration sample of {bench.calib}"
        print(" | ".join(rows[-1]), flush=True)
    publish_merged("range_choice.md", "Phase 1's range choice (min/max or MSE clip, by the model's output) "
                         "against cheaper ways to make it, measured by `python benchmarks/range_choice.py`; what "
                         "each column means: the docstring of benchmarks/range_choice.py.", HEADER, rows, notes)


if __name__ == "__main__":
    main()
