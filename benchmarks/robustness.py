"""RQ2: is Phase 1's sensitivity ranking a property of the model, or of the calibration data?

    python benchmarks/robustness.py [--models digits ppocr_cls ...] [--samples N] [--cache-dir DIR]

Per model, Phase 1 (``onnxmp.pipeline.analyze``, candidates W4A8,W8A8,W8A16) runs on three
calibration sets: ``calib`` (the one every other benchmark uses), ``calib2`` (disjoint, same
distribution) and ``calib_ood`` (out of domain: uniform noise for images, random word pieces for
text). Each run gives the sensitivity list: one output NSR per (group, candidate); only entries
that were really evaluated count (the ones Phase 1 copies from an equivalent evaluation would
add ties that say nothing). Kendall's tau-b between the NSRs of calib and calib2, and of calib and
calib_ood, over the same (group, candidate) keys, measures how much the ranking moves; the
overlap of the ten (at most a third) most sensitive entries says whether the top of the list, which decides the
first bits to keep, moves too.

The digits CNN ships with one calibration set: its second set is the first samples of its
held-out test images, and its out-of-domain set uniform noise in [0, 1] (the pixel range), both
written to a temporary folder.

Writes benchmarks/results/robustness.md (rows of models not run this time are kept) and prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import bench_models, git_state, publish_merged  # noqa: E402

from onnxmp import OptimizeConfig, parse_candidates  # noqa: E402
from onnxmp.pipeline import analyze  # noqa: E402
from onnxmp.runtime.data import read_npz  # noqa: E402

CANDIDATES = "W4A8,W8A8,W8A16"
TOP_K = 10
_ROW_CHUNK = 512


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b of two equally long sequences (ties in either are accounted for):
    (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)) over the n0 = n(n-1)/2 pairs.
    NaN when fewer than two values or when either sequence is constant. O(n²) in NumPy, in
    row chunks so memory stays O(chunk · n)."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"kendall_tau_b: lengths differ ({len(x)} vs {len(y)})")
    n = len(x)
    if n < 2:
        return float("nan")
    s = tied_x = tied_y = 0
    for start in range(0, n - 1, _ROW_CHUNK):
        rows = np.arange(start, min(start + _ROW_CHUNK, n - 1))
        dx = np.sign(x[rows, None] - x[None, :])
        dy = np.sign(y[rows, None] - y[None, :])
        upper = np.arange(n)[None, :] > rows[:, None]  # each pair once (i < j)
        s += int((dx * dy)[upper].sum())
        tied_x += int((dx[upper] == 0).sum())
        tied_y += int((dy[upper] == 0).sum())
    n0 = n * (n - 1) // 2
    denominator = np.sqrt(float(n0 - tied_x) * float(n0 - tied_y))
    return float(s / denominator) if denominator > 0 else float("nan")


def _sensitivities(model: str, calib: str, cache: str | None) -> tuple[dict, list[str], float, bool, float]:
    """({(gid, candidate): nsr} of evaluated entries, group labels, seconds, cache hit, baseline NSR)."""
    start = time.perf_counter()
    analysis = analyze(model, OptimizeConfig(candidates=parse_candidates(CANDIDATES), calib=calib, cache_dir=cache,
                                             target="generic"))  # the layout its results describe
    seconds = time.perf_counter() - start
    table = {(s.gid, str(s.candidate)): s.nsr for s in analysis.sensitivities if s.evaluated}
    return table, [g.label for g in analysis.plan.groups], seconds, analysis.cache_hit, analysis.base_nsr


def _top(table: dict, keys: list, k: int) -> set:
    return set(sorted(keys, key=lambda key: -table[key])[:k])


def _limited(path: str, samples: int | None, folder: str, tag: str) -> tuple[str, int]:
    arrays = read_npz(path)
    n = len(next(iter(arrays.values())))
    if not samples or samples >= n:
        return path, n
    out = os.path.join(folder, f"{tag}.npz")
    np.savez(out, **{k: v[:samples] for k, v in arrays.items()})
    return out, samples


def _calibration_sets(bench, folder: str) -> dict[str, str]:
    """calib, calib2 and calib_ood of a model; the digits' second and OOD sets made here."""
    if bench.name == "digits":
        calib = read_npz(bench.calib)["input"]
        test = read_npz(os.path.join(ROOT, "models", "digits", "test.npz"))["input"]
        rng = np.random.default_rng(0)
        paths = {"calib": bench.calib, "calib2": os.path.join(folder, "digits_calib2.npz"),
                 "calib_ood": os.path.join(folder, "digits_calib_ood.npz")}
        np.savez(paths["calib2"], input=np.ascontiguousarray(test[:len(calib)]))  # test split: disjoint
        np.savez(paths["calib_ood"], input=rng.uniform(0.0, 1.0, calib.shape).astype(np.float32))
        return paths
    import zoo

    p = zoo.paths(bench.name)
    return {"calib": str(p["calib"]), "calib2": str(p["calib2"]), "calib_ood": str(p["calib_ood"])}


def run_model(bench, samples: int | None, cache_root: str | None) -> tuple[list[str], str]:
    with tempfile.TemporaryDirectory() as tmp:
        cache = cache_root or os.path.join(tmp, "cache")
        sets, tables, times, bases = _calibration_sets(bench, tmp), {}, {}, {}
        used = {}
        labels = None
        for tag, path in sets.items():
            path, used[tag] = _limited(path, samples, tmp, tag)
            tables[tag], group_labels, seconds, hit, bases[tag] = _sensitivities(bench.model, path, cache)
            times[tag] = "cached" if hit else f"{seconds:.0f}"
            if labels is not None and group_labels != labels:
                raise RuntimeError(f"{bench.name}: the groups differ between calibration sets")
            labels = group_labels
            print(f"{bench.name} {tag}: {len(tables[tag])} evaluated entries, analyze {times[tag]} s", flush=True)
    keys = sorted(set(tables["calib"]) & set(tables["calib2"]) & set(tables["calib_ood"]))
    mismatch = {tag: len(t) - len(keys) for tag, t in tables.items() if len(t) != len(keys)}
    base = [tables["calib"][k] for k in keys]
    tau2 = kendall_tau_b(base, [tables["calib2"][k] for k in keys])
    tau_ood = kendall_tau_b(base, [tables["calib_ood"][k] for k in keys])
    k = min(TOP_K, max(1, len(keys) // 3))  # a top-10 of 18 entries would be most of the list
    top = _top(tables["calib"], keys, k)
    # Entries whose NSR is not above the all-highest baseline: lowering that group added no
    # measurable noise, so their order is noise. The top third under calib is where the order matters.
    quiet = sum(tables["calib"][key] <= bases["calib"] for key in keys)
    third = sorted(_top(tables["calib"], keys, max(2, len(keys) // 3)))
    top_tau = {tag: kendall_tau_b([tables["calib"][key] for key in third], [tables[tag][key] for key in third])
               for tag in ("calib2", "calib_ood")}
    overlap2 = len(top & _top(tables["calib2"], keys, k))
    overlap_ood = len(top & _top(tables["calib_ood"], keys, k))
    row = [bench.name, str(len(labels)), str(len(keys)), "/".join(str(used[t]) for t in sets),
           f"{quiet}", f"{tau2:.3f}", f"{tau_ood:.3f}", f"{top_tau['calib2']:.3f} / {top_tau['calib_ood']:.3f}",
           f"{overlap2}/{k}", f"{overlap_ood}/{k}",
           " / ".join(times[t] for t in sets)]
    note = f"entries present in only some lists: {mismatch}" if mismatch else ""
    return row, note


HEADER = ["model", "groups", "evaluated entries", "samples calib/calib2/ood", "entries ≤ baseline NSR",
          "τ-b calib vs calib2", "τ-b calib vs ood", "τ-b top ⅓: calib2 / ood", "top-k overlap calib2",
          "top-k overlap ood", "analyze s calib / calib2 / ood"]


CAPTION = (
    "# RQ2: robustness of the Phase 1 sensitivity ranking to the calibration data\n\n"
    "Generated by `python benchmarks/robustness.py`. Per model, Phase 1 (`onnxmp.pipeline.analyze`, "
    f"candidates {CANDIDATES}, default options) on three calibration sets: `calib`, `calib2` (disjoint, same "
    "distribution) and `calib_ood` (out of domain: uniform noise for images, random word pieces for text; "
    "for digits, calib2 is the first test images and ood uniform noise in [0, 1]). Kendall's τ-b (NumPy, "
    "ties accounted for) between the output NSRs of the (group, candidate) entries Phase 1 really "
    "evaluated, in both lists; 1 = same ranking, 0 = unrelated. Entries ≤ baseline NSR: evaluated entries "
    "(under `calib`) whose NSR is not above the all-W8A16 baseline, i.e. lowering that group added no "
    "measurable noise; their relative order is noise. τ-b top ⅓: the same τ-b over only the third of the "
    "entries most sensitive under `calib`. Top-k overlap: how many of the k most "
    f"sensitive entries under `calib` are also among the k most sensitive under the other set (k = {TOP_K}, "
    "or a third of the entries if fewer). analyze s: the whole Phase 1 run (load, calibration, AdaRound, "
    "range selection, sensitivity list); `cached` when the results cache already held it. Models are run "
    "one at a time (`--models NAME`); each keeps its own note."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="default: digits and every prepared zoo model")
    parser.add_argument("--samples", type=int, default=None, help="use the first N samples of each set")
    parser.add_argument("--cache-dir", default=None, help="results cache to use (default: a fresh temporary one)")
    args = parser.parse_args()
    benches = bench_models(args.models)
    if args.models:
        unknown = set(args.models) - {b.name for b in benches}
        if unknown:
            parser.error(f"unknown or unprepared model(s): {', '.join(sorted(unknown))}")
    rows, notes = [], {}
    for bench in benches:
        state = git_state()
        row, note = run_model(bench, args.samples, args.cache_dir)
        rows.append(row)
        notes[bench.name] = f"run at onnxmp {state}" + (f"; {note}" if note else "")
        print(" | ".join(row), flush=True)
    publish_merged("robustness.md", CAPTION, HEADER, rows, notes)


if __name__ == "__main__":
    main()
