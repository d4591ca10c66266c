"""Task score, SQNR, cost and run time of onnxmp on every real model, next to uniform precision
and onnxruntime's quantize_static.

    python benchmarks/zoo_table.py [--models digits ppocr_cls ...] [--budgets 0.35,0.5,0.75] [--samples N]

Per model, one row each for: the float model; uniform W4A8, W8A8 and W8A16 (onnxmp with that
single candidate); onnxmp's mixed choice (candidates W4A8,W8A8,W8A16) at every budget and for an
accuracy target (the cheapest point within a 1% relative drop of the all-W8A16 task score), all
against one results cache, so only the first pays for calibration and Phase 1; and onnxruntime's
quantize_static W8A8 (QDQ, per-channel) on the same calibration samples. Every exported file is
scored with the model's own labelled evaluator. ``--samples N`` calibrates on the first N samples
only (so the large models finish). Then one computed sentence per model: does a mixed point beat
the uniform point of the same or higher cost on task score and on SQNR?

Writes benchmarks/results/zoo.md (the sections of models not run this time are kept) and prints it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import bench_models, git_state, markdown_table, samples_calib_only, write_result  # noqa: E402
from peers import ort_quantize_static_w8a8, static_ways  # noqa: E402

from onnxmp import OptimizeConfig, optimize, parse_candidates  # noqa: E402
from onnxmp.model.loader import load_model, prepare_model  # noqa: E402
from onnxmp.quant import numerics  # noqa: E402
from onnxmp.runtime.data import make_calibration_set, read_npz  # noqa: E402
from onnxmp.runtime.session import make_session, observed_tensors, run_over, with_outputs  # noqa: E402
from onnxmp.search.evaluate import Evaluator  # noqa: E402

RESULT = os.path.join(HERE, "results", "zoo.md")
UNIFORM = ("W4A8", "W8A8", "W8A16")
MIXED_CANDIDATES = "W4A8,W8A8,W8A16"
# The paper's setting: quantizers around every op, BOPs (the default metric there). The product's
# default, `--target ort`, is measured as it ships by deploy_table.py.
TARGET = "generic"
TARGET_DROP = "1%"  # relative drop of the task score allowed by the accuracy-target row
PHASES = ("load", "calibrate", "phase1", "phase2", "export")
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
HEADER = ["model", "config", "task score", "SQNR dB", "BOPs", "memory", "KiB"]


def _fmt_score(value: float, metric: str) -> str:
    return f"{value:.1f}" if "%" in metric else f"{value:.4f}"


def _seconds(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _stages(records: list[dict]) -> list[str]:
    """The stage columns: load/calibrate/phase1/phase2/export, plus any other stage the package
    times (e.g. adaround, ranges), each placed after the stage that precedes it in a record."""
    seen = [k for r in records for k in r["timings_s"]][:1] or list(PHASES[:1])
    for keys in [list(PHASES)] + [list(r["timings_s"]) for r in records]:
        for i, key in enumerate(keys):
            if key not in seen:
                previous = next((k for k in reversed(keys[:i]) if k in seen), None)
                seen.insert(0 if previous is None else seen.index(previous) + 1, key)
    return seen


# Stages whose results come from the cache on a hit (they still report the time spent re-deriving
# what is not stored: the float reference run, the simulator session).
_CACHED_STAGES = {"calibrate", "adaround", "phase1"}


def _phase_cells(record: dict, stages: list[str]) -> list[str]:
    t, hit = record["timings_s"], record["cache"]["hit"]
    cells = []
    for stage in stages:
        if stage not in t:
            cells.append("—")
        elif hit and stage in _CACHED_STAGES:
            cells.append("cached" if t[stage] < 0.005 else f"cached ({_seconds(t[stage])})")
        else:
            cells.append(_seconds(t[stage]))
    return cells


def _size_kib(path: str) -> str:
    return f"{os.path.getsize(path) / 1024:,.0f}"


def _consumer_view(model: onnx.ModelProto, name: str) -> str:
    """The tensor readers of ``name`` see: through a QuantizeLinear → DequantizeLinear pair if the
    producer's output is quantized (onnxmp's export keeps the original name on the dequantized
    tensor; onnxruntime's quantizer keeps it on the float one)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    for q in readers.get(name, []):
        if q.op_type == "QuantizeLinear" and q.input[0] == name:
            for dq in readers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return dq.output[0]
    return name


def _loads(path: str) -> bool:
    try:
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False


def _quantize_peer(model_path: str, arrays: dict[str, np.ndarray], out: str) -> str:
    """onnxruntime's quantize_static W8A8 as benchmarks/peers.py runs it. Where that fails or writes
    a model onnxruntime cannot load, the same settings on the model converted to opset 13 (per-channel
    DequantizeLinear needs it), then, if onnxruntime's symbolic shape inference still fails, with
    that pre-processing step skipped (``peers.static_ways``). Returns a note saying what ran ("" for
    peers.py as is)."""
    failures = []
    for label, options in static_ways(model_path):
        failure = _try_peer(model_path, arrays, out, label, options)
        if failure:
            failures.append(failure)
        elif not failures:
            return ""
        else:
            return "quantize_static " + label.strip() + " (same settings as peers.py), after: " + "; ".join(failures)
    raise RuntimeError("onnxruntime quantize_static failed every way: " + "; ".join(failures))


def _try_peer(model_path: str, arrays, out: str, label: str, options: dict) -> str:
    """"" where ``ort_quantize_static_w8a8(..., **options)`` wrote a model onnxruntime loads, else
    why not, starting with ``label``."""
    try:
        ort_quantize_static_w8a8(model_path, arrays, out, **options)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        return f"{label}: {type(exc).__name__}{': ' + text if text else ''}"
    return "" if _loads(out) else f"{label}: the output does not load in onnxruntime"


def _peer_sqnr(peer_path: str, names: list[str], data, reference: list[np.ndarray]) -> tuple[float, str]:
    """The peer's SQNR on the tensors onnxmp measures (pre-softmax logits), as onnxruntime runs it."""
    peer = onnx.load(peer_path)
    present = {o for n in peer.graph.node for o in n.output} | {i.name for i in peer.graph.input}
    missing = [n for n in names if n not in present]
    note = ""
    if missing:  # names not kept by the pre-processing: fall back to the peer's own observed tensors
        peer_names = observed_tensors(peer)
        note = f"measured on {peer_names} (the peer graph has no {missing})"
    else:
        peer_names = [_consumer_view(peer, n) for n in names]
    out = run_over(make_session(with_outputs(peer, peer_names)), data, peer_names)
    return numerics.sqnr_db(reference, out), note


def _peer_coverage(peer_path: str) -> tuple[int, int]:
    """(weighted ops whose weight is stored int8 behind a DequantizeLinear, weighted ops)."""
    peer = onnx.load(peer_path)
    int8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    int_inits = {t.name for t in peer.graph.initializer if t.data_type in int8}
    dq_out = {n.output[0] for n in peer.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int_inits}
    inits = {t.name for t in peer.graph.initializer}
    weighted = [n for n in peer.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1
                and (n.input[1] in inits or n.input[1] in dq_out)]
    return sum(n.input[1] in dq_out for n in weighted), len(weighted)


def _compare(a: float, b: float) -> str:
    return ">" if a > b + 1e-12 else "<" if a < b - 1e-12 else "="


def verdict(name: str, metric: str, uniform: list[dict], mixed: list[dict]) -> str:
    """Computed sentence: for each mixed point, the cheapest uniform point costing at least as much
    (BOPs), compared on task score and SQNR."""
    details, both, score_wins, sqnr_wins = [], [], [], []
    for m in mixed:
        peers = [u for u in uniform if u["bops"] >= m["bops"] - 1e-9]
        if not peers:
            continue
        u = min(peers, key=lambda p: p["bops"])
        cs, cq = _compare(m["score"], u["score"]), _compare(m["sqnr"], u["sqnr"])
        label = f"budget {m['budget']:g}"
        details.append(f"{label} (BOPs {m['bops']:.3f}) vs uniform {u['name']} ({u['bops']:.3f}): task score "
                       f"{_fmt_score(m['score'], metric)} {cs} {_fmt_score(u['score'], metric)}, "
                       f"SQNR {m['sqnr']:.2f} {cq} {u['sqnr']:.2f} dB")
        score_wins += [label] if cs == ">" else []
        sqnr_wins += [label] if cq == ">" else []
        both += [label] if (cs in ">=" and cq == ">") or (cs == ">" and cq in ">=") else []
    if both:
        head = (f"**{name}: yes**, {len(both)} of {len(details)} mixed points ({', '.join(both)}) beat the uniform "
                "point of the same or higher cost (at least as good on both task score and SQNR, better on one)")
    else:
        head = (f"**{name}: no** mixed point beats the uniform point of the same or higher cost on task score and "
                "SQNR together")
    head += (f"; higher task score: {', '.join(score_wins) or 'none'}; higher SQNR: {', '.join(sqnr_wins) or 'none'}. ")
    return head + "Per point: " + "; ".join(details) + "."


def _subset_calib(path: str, samples: int | None, folder: str) -> tuple[str, int, int]:
    """(calibration file to use, samples used, samples available): the first ``samples`` only."""
    arrays = read_npz(path)
    total = len(next(iter(arrays.values())))
    if not samples or samples >= total:
        return path, total, total
    out = os.path.join(folder, "calib_subset.npz")
    np.savez(out, **{k: v[:samples] for k, v in arrays.items()})
    return out, samples, total


def run_model(bench, budgets: list[float], samples: int | None, cache_root: str | None, workers: int = 1) -> str:
    start_model, state = time.perf_counter(), git_state()
    # entries: (config, score, sqnr cell, bops cell, memory cell, file, record or None, seconds, mix)
    entries: list[tuple] = []

    def show(entry: tuple) -> None:
        config, score, sqnr, bops, memory, size, record, seconds, mix = entry
        print(f"{bench.name} | {config} | {_fmt_score(score, bench.metric)} | {sqnr} | {bops} | {memory} | {size} KiB"
              f" | {'' if record is None else record['timings_s']} | {seconds} | {mix}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        calib, used, total = _subset_calib(bench.calib, samples, tmp)
        cache = cache_root or os.path.join(tmp, "cache")
        # onnxruntime quantize_static on the same samples; SQNR on the same tensors as onnxmp's. Run
        # first so a failure shows before the long onnxmp runs; its row goes last.
        out = os.path.join(tmp, "ort_w8a8.onnx")
        arrays = read_npz(calib)
        start = time.perf_counter()
        peer_note = _quantize_peer(bench.model, arrays, out)
        seconds = time.perf_counter() - start
        model = load_model(bench.model)
        data = make_calibration_set(arrays, model, calib)
        # The float model's own names: onnxmp's prepared graph may name the same values otherwise
        # (onnx's opset converter wraps an opset<13 Softmax in Flatten/Reshape).
        names, prepared_names = observed_tensors(model), observed_tensors(prepare_model(model))
        reference = run_over(make_session(with_outputs(model, names)), data, names)
        peer_sqnr, note = _peer_sqnr(out, names, data, reference)
        quantized, weighted = _peer_coverage(out)
        nominal = quantized == weighted
        peer_entry = ("onnxruntime quantize_static W8A8", bench.evaluate(out), f"{peer_sqnr:.2f}",
                      "0.500 ⁿ" if nominal else "—", "1.000 ⁿ" if nominal else "—", _size_kib(out), None,
                      _seconds(seconds), f"{quantized}/{weighted} weighted ops int8")
        show(peer_entry)
        entries.append(("float", bench.evaluate(bench.model), "∞", "—", "—", _size_kib(bench.model), None, "—",
                        "—"))
        show(entries[-1])
        uniform_points, mixed_points = [], []
        for cand in UNIFORM:
            out = os.path.join(tmp, f"uniform_{cand}.onnx")
            start = time.perf_counter()
            record = optimize(bench.model, out, OptimizeConfig(candidates=parse_candidates(cand), budget=1.0,
                                                               calib=calib, cache_dir=cache, workers=workers, target=TARGET)).record
            seconds = time.perf_counter() - start
            # One candidate: the record's baseline is that candidate; restate costs vs all-W8A16
            # (BOPs scale with w·a, memory with w).
            w, a = (int(v) for v in cand[1:].split("A"))
            score, sqnr = bench.evaluate(out), record["chosen"]["sqnr_db_ort_default"]
            uniform_points.append({"name": cand, "bops": w * a / 128, "score": score, "sqnr": sqnr})
            entries.append((f"uniform {cand}", score, f"{sqnr:.2f}", f"{w * a / 128:.3f}", f"{w / 8:.3f}",
                            _size_kib(out), record, _seconds(seconds), _mix(record)))
            show(entries[-1])
        check = None
        for budget in budgets:
            out = os.path.join(tmp, f"mixed_{budget}.onnx")
            start = time.perf_counter()
            record = optimize(bench.model, out, OptimizeConfig(candidates=parse_candidates(MIXED_CANDIDATES),
                                                               budget=budget, calib=calib, cache_dir=cache,
                                                               workers=workers, target=TARGET)).record
            seconds = time.perf_counter() - start
            base, chosen = record["baseline"], record["chosen"]
            bops, memory = chosen["bops"] / base["bops"], chosen["memory_bytes"] / base["memory_bytes"]
            score, sqnr = bench.evaluate(out), chosen["sqnr_db_ort_default"]
            mixed_points.append({"budget": budget, "bops": bops, "score": score, "sqnr": sqnr})
            check = record["uniform"]
            entries.append((f"onnxmp budget {budget:g}", score, f"{sqnr:.2f}", f"{bops:.3f}", f"{memory:.3f}",
                            _size_kib(out), record, _seconds(seconds), _mix(record)))
            show(entries[-1])
        # The accuracy target: the cheapest curve point within TARGET_DROP of the all-W8A16 score,
        # scored on the labelled evaluation set (same results cache: Phase 1 is reused).
        out = os.path.join(tmp, "target.onnx")
        start = time.perf_counter()
        evaluator = Evaluator(bench.evaluate, bench.metric, f"{bench.name} labelled evaluation set")
        record = optimize(bench.model, out, OptimizeConfig(candidates=parse_candidates(MIXED_CANDIDATES), calib=calib,
                                                           cache_dir=cache, workers=workers, target=TARGET,
                                                           target_drop=TARGET_DROP, evaluator=evaluator)).record
        seconds = time.perf_counter() - start
        base, chosen = record["baseline"], record["chosen"]
        entries.append((f"onnxmp target drop {TARGET_DROP} ({record['target']['evaluations']} evaluations)",
                        bench.evaluate(out), f"{chosen['sqnr_db_ort_default']:.2f}",
                        f"{chosen['bops'] / base['bops']:.3f}", f"{chosen['memory_bytes'] / base['memory_bytes']:.3f}",
                        _size_kib(out), record, _seconds(seconds), _mix(record)))
        show(entries[-1])
        if check is not None:  # the restated uniform costs must match the mixed run's own cost model
            for cand in UNIFORM:
                w, a = (int(v) for v in cand[1:].split("A"))
                assert abs(check[cand]["relative_cost"] - w * a / 128) < 1e-9, (cand, check[cand])
        entries.append(peer_entry)
    elapsed = time.perf_counter() - start_model
    stages = _stages([e[6] for e in entries if e[6] is not None])
    header = HEADER + [f"{s} s" for s in stages] + ["total s", "mix (groups)"]
    rows = [[bench.name, config, _fmt_score(score, bench.metric), sqnr, bops, memory, size]
            + (["—"] * len(stages) if record is None else _phase_cells(record, stages)) + [seconds, mix]
            for config, score, sqnr, bops, memory, size, record, seconds, mix in entries]
    caption = (f"**{bench.name}**: {used} calibration samples"
               + (f" (the first {used} of {total} in calib.npz)" if used < total else " (all of calib.npz)")
               + f"; task score = {bench.metric} on the model's labelled evaluation set; SQNR measured on "
               f"{', '.join(f'`{n}`' for n in names)}"
               + ("" if prepared_names == names else
                  f" (in onnxmp's prepared graph: {', '.join(f'`{n}`' for n in prepared_names)})")
               + f". onnxmp at {state}, --workers {workers}. "
               f"Whole section (evaluations included) measured in {elapsed:.0f} s.")
    if note:
        caption += f" Peer SQNR {note}."
    if peer_note:
        caption += f" Peer: {peer_note}."
    return "\n\n".join([caption, markdown_table(header, rows),
                        verdict(bench.name, bench.metric, uniform_points, mixed_points)])


def _mix(record: dict) -> str:
    return ", ".join(f"{n}×{c}" for c, n in record["chosen"]["mix"].items())


def _preamble(budgets: list[float]) -> str:
    return (
        "# onnxmp on the model zoo\n\n"
        f"Generated by `python benchmarks/zoo_table.py` (onnxruntime {ort.__version__}, CPUExecutionProvider). "
        f"Every onnxmp row: `--target {TARGET}` (quantizers around every op, the paper's layout; what `--target ort` "
        f"ships is in deploy.md). Mixed rows: candidates {MIXED_CANDIDATES}, BOPs metric, budgets as listed; "
        "uniform rows: onnxmp with that "
        "single candidate (budget 1.0). **task score**: the model's metric on its labelled evaluation set, "
        "measured on the exported file. **SQNR**: output SQNR vs the float model on the calibration samples, as "
        "stock onnxruntime (default session) runs the exported model, measured at the pre-softmax/pre-sigmoid "
        "tensors (onnxmp's `observed_tensors`); for onnxruntime's quantize_static the same tensors, as its "
        "consumers read them. **BOPs / memory**: relative to all-W8A16 (uniform rows restated from w·a/128 and "
        "w/8). ⁿ nominal W8A8 cost: every weighted op of the peer has int8 weights. **KiB**: file size. "
        "**stage seconds** (load, calibrate, ..., export): onnxmp's `timings_s`, every stage it reports; all "
        "budgets of one model share one results cache, so after the first budget the calibration statistics, "
        "AdaRound and Phase 1 (which also chooses the activation ranges) are `cached` (the number in brackets is what is still "
        "recomputed: the float reference run, the simulator session). **total s**: the whole optimize (or "
        "quantize_static) call, evaluation excluded. "
        f"Sections of models run separately keep their own caption (samples, run time).\n"
    )


def _merge(sections: dict[str, str], order: list[str], budgets: list[float]) -> str:
    """The previous zoo.md's sections for models not rerun, plus the new ones, in model order."""
    old: dict[str, str] = {}
    if os.path.isfile(RESULT):
        with open(RESULT, encoding="utf-8") as handle:
            text = handle.read()
        for m in re.finditer(r"<!-- zoo:(\S+) -->\n(.*?)\n<!-- /zoo:\1 -->", text, re.S):
            old[m.group(1)] = m.group(2)
    merged = {**old, **sections}
    names = [n for n in order if n in merged] + sorted(n for n in merged if n not in order)
    parts = [_preamble(budgets)] + [f"## {n}\n\n<!-- zoo:{n} -->\n{merged[n]}\n<!-- /zoo:{n} -->\n" for n in names]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="default: digits and every prepared zoo model")
    parser.add_argument("--budgets", default="0.35,0.5,0.75")
    parser.add_argument("--samples", type=int, default=None, help="calibrate on the first N samples only")
    parser.add_argument("--cache-dir", default=None, help="results cache to use (default: a fresh temporary one)")
    parser.add_argument("--workers", type=int, default=1, help="onnxmp --workers (default 1)")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    benches = bench_models(args.models)
    if args.models:
        unknown = set(args.models) - {b.name for b in benches}
        if unknown:
            parser.error(f"unknown or unprepared model(s): {', '.join(sorted(unknown))}")
    benches = samples_calib_only(benches, "zoo_table", "subsets the samples, runs quantize_static and the SQNR "
                                 "on them as batches of samples")
    sections = {}
    for bench in benches:
        sections[bench.name] = run_model(bench, budgets, args.samples, args.cache_dir, args.workers)
    text = _merge(sections, [b.name for b in bench_models()], budgets)
    write_result("zoo.md", text)
    print(text)


if __name__ == "__main__":
    main()
