"""Per real model and deployment target: what runs on the target, the chosen mix, BOPs, and the
output SQNR as the target computes it next to onnxruntime CPU's.

    python benchmarks/targets_table.py [--models digits ppocr_cls ...] [--targets qnn-htp ...] [--samples 32]

Targets: ort (default candidates, budget 0.5), qnn-htp (Qualcomm HTP through onnxruntime-qnn,
emulated on x86-64; its default candidates W4A8,W8A8,W4A16,W8A16, one activation width per model,
budget 0.5: the BOPs of uniform W8A8) and openvino (CPU plugin; W4A8,W8A8, budget 0.9, or 1.0 where
no cheaper assignment exists because only Gemm/MatMul may take 4-bit weights). On each target
other than ort, onnxruntime's ``quantize_static`` W8A8 model of the same samples (as
``zoo_table._quantize_peer`` makes it, static shapes fixed like onnxmp's) is run there too, so
onnxmp at the BOPs of W8A8 is compared with the plain W8A8 model on the same runtime; on qnn-htp
also the W8A8 model of onnxruntime's QNN flow (``peers.ort_quantize_qnn_w8a8``), which quantizes
the constant operands that make the HTP backend refuse the plain models of the OCR CNNs. Writes
benchmarks/results/targets_edge.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np
import onnx
from common import bench_models, git_state, publish_merged, samples_calib_only
from peers import at_least_opset, ort_quantize_qnn_w8a8
from zoo_table import _quantize_peer

from onnxmp import OptimizeConfig, optimize, parse_candidates
from onnxmp.errors import ConfigError, OnnxmpError
from onnxmp.quant import numerics
from onnxmp.runtime.data import read_npz, resolve_calibration
from onnxmp.runtime.session import make_session, observed_tensors, run_over
from onnxmp.targets import get_target
from onnxmp.targets.shapes import fix_symbolic_dims

BUDGETS = {"ort": 0.5, "qnn-htp": 0.5, "openvino": 0.9}
PEER = "onnxruntime quantize_static W8A8"
QNN_PEER = "onnxruntime QNN flow W8A8"  # peers.ort_quantize_qnn_w8a8
PEER_WAYS = {"qnn-htp": (False, True), "openvino": (False,)}  # per target, the peers run there (qnn_flow or not)


def _placement(check: dict | None) -> str:
    if check is None:
        return "all (onnxruntime CPU)"
    if check["target"] == "qnn-htp":
        fallback = ", ".join(f"{f['node']} ({f['op_type']}: {f['reason'] or 'no reason'})" for f in check["fallback"][:3])
        return (f"{check['on_target']}/{check['nodes']} nodes on HTP in {check['htp_partitions']} partition(s); "
                f"CPU: {check['on_cpu']} ({len(check['cpu_by_design'])} graph-boundary Q/DQ by design"
                + (f"; fallback: {fallback}" if fallback else "") + ")")
    other = len(check["other_layers_not_integer"])
    return (f"{check['integer_layers']}/{check['weighted_layers']} weighted layers integer "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(check['precisions'].items()))}); "
            f"{other} activation×activation layer(s) not integer; inference precision {check['inference_precision']}")


def run(bench, target: str, calib: str) -> tuple[list[str], str]:
    """onnxmp's row on ``target``, and a note of the candidate families whose best point the
    target's runtime refused before the shipped one ("" when none)."""
    profile = get_target(target)
    budget = BUDGETS[target]
    start = time.perf_counter()
    config = OptimizeConfig(candidates=parse_candidates(profile.default_candidates), budget=budget, calib=calib,
                            cache_dir=None, target=target)
    try:
        try:
            record = optimize(bench.model, None, config).record
        except ConfigError as exc:
            if "below the cheapest" not in str(exc):
                raise
            budget = 1.0
            record = optimize(bench.model, None, dataclasses.replace(config, budget=1.0)).record
    except OnnxmpError as exc:  # a broken promise on the target is a result too
        return [bench.name, target, profile.default_candidates, f"{budget:g}", "—", "—", f"refused: {exc}", "—", "—",
                f"{time.perf_counter() - start:.0f}"], ""
    seconds = time.perf_counter() - start
    chosen, check = record["chosen"], record["deployment_target"]["verification"]
    mix = ", ".join(f"{n}×{c}" for c, n in chosen["mix"].items())
    on_target = "—" if check is None else f"{check['sqnr_db']:.2f}"
    refused = "; ".join(f"{f['candidates']}'s best point ({f['simulated_sqnr_db']:.2f} dB simulated) refused by the "
                        f"target's runtime: {f['refused_on_target']}"
                        for f in chosen.get("families") or () if f.get("refused_on_target"))
    return [bench.name, target, profile.default_candidates, f"{budget:g}", mix, f"{chosen['relative_cost']:.3f}",
            _placement(check), on_target, f"{chosen['sqnr_db_ort_default']:.2f}", f"{seconds:.0f}"], refused


def peer_on_target(bench, target: str, calib: str, folder: str, qnn_flow: bool = False) -> list[str]:
    """onnxruntime's W8A8 model of the same model and samples, verified on ``target`` (SQNR on the
    same tensors as onnxmp's rows, against the float model): ``quantize_static``'s, or with
    ``qnn_flow`` the one onnxruntime's QNN flow makes, at static shapes like onnxmp's output."""
    start = time.perf_counter()
    profile = get_target(target)
    out = os.path.join(folder, f"{bench.name}-peer.onnx")
    model = onnx.load(bench.model)
    data = resolve_calibration(calib, bench.model, model, "auto")
    observed = observed_tensors(model)
    reference = run_over(make_session(model, outputs=observed), data, observed)
    row = [bench.name, target, QNN_PEER if qnn_flow else PEER, "—", "uniform W8A8", "0.500"]
    try:
        if qnn_flow:
            ort_quantize_qnn_w8a8(fix_symbolic_dims(at_least_opset(model, 13), data, {}), read_npz(calib), out)
            note, data = "", dataclasses.replace(data, batch=1)
        else:
            note = _quantize_peer(bench.model, read_npz(calib), out)
        peer = onnx.load(out)
        cpu = numerics.sqnr_db(reference, run_over(make_session(peer, outputs=observed), data, observed))
    except Exception as exc:  # the peer's own failure (to quantize, or to run on the CPU) is a result too
        return [*row, f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}", "—", "—",
                f"{time.perf_counter() - start:.0f}"]
    peer = fix_symbolic_dims(peer, data, {}) if profile.static_shapes else peer
    try:
        with tempfile.TemporaryDirectory() as tmp:
            check = profile.verify(peer, data, observed, reference, tmp)
    except OnnxmpError as exc:
        return [*row, f"refused: {exc}", "—", f"{cpu:.2f}", f"{time.perf_counter() - start:.0f}"]
    placement = _placement(check) + (f"; {note}" if note else "")
    return [*row, placement, f"{check['sqnr_db']:.2f}", f"{cpu:.2f}", f"{time.perf_counter() - start:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="default: digits and every prepared zoo model")
    parser.add_argument("--targets", nargs="*", default=list(BUDGETS))
    # 8 samples were too few for a classifier's logits: ppocr_cls on HTP read 18.99 dB for onnxmp and
    # 23.08 for the QNN flow on 8 (5de1896), 24.02 and 20.65 on 32 (same code), through the offset its
    # last GlobalAveragePool keeps (README)
    parser.add_argument("--samples", type=int, default=32, help="calibration samples (first N of calib.npz)")
    args = parser.parse_args()
    header = ["model", "target", "candidates", "budget", "chosen mix (groups)", "BOPs", "placement on the target",
              "SQNR on target dB", "SQNR onnxruntime CPU dB", "s"]
    rows, notes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for bench in samples_calib_only(bench_models(args.models), "targets_table",
                                        "takes the first --samples samples of one .npz"):
            arrays = np.load(bench.calib)
            calib = os.path.join(tmp, f"{bench.name}.npz")
            np.savez(calib, **{k: arrays[k][: args.samples] for k in arrays.files})
            for target in args.targets:
                notes[f"{bench.name}/{target}"] = (f"onnxmp {git_state()}, "
                                                   f"{min(args.samples, len(arrays[arrays.files[0]]))} samples")
                row, refused = run(bench, target, calib)
                rows.append(row)
                if refused:
                    notes[f"{bench.name}/{target}"] += f"; {refused}"
                print(" | ".join(row), flush=True)
                for qnn_flow in PEER_WAYS.get(target, ()):
                    rows.append(peer_on_target(bench, target, calib, tmp, qnn_flow))
                    print(" | ".join(rows[-1]), flush=True)
    publish_merged("targets_edge.md", ("Deployment targets, measured by `python benchmarks/targets_table.py` "
            "(calibration samples per model in its note). BOPs relative to the target's all-highest "
            "candidate. SQNR at the pre-softmax/sigmoid outputs against the float model on the calibration "
            "samples, computed by the target's runtime (QNN HTP emulated on x86-64 by onnxruntime-qnn; OpenVINO "
            "CPU plugin at its default inference precision) and by onnxruntime CPU on the same exported file. "
            "Models and targets can be run one at a time (`--models NAME --targets T`); each row keeps its "
            "note (a note naming only the model covers its rows without a note of their own)."), header, rows, notes,
            key_cells=2)


if __name__ == "__main__":
    main()
