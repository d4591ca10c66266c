"""Phase 1 wall time: the naive way (a fresh QDQ model and onnxruntime session per group and
candidate) versus onnxmp (one reused session, bit-widths switched by feeds), in one run.

    python benchmarks/phase1_speed.py [--layers 200] [--models digits ...]

Both compute the same sensitivity list (checked: the SQNRs agree within 0.01 dB, since the
naive way runs the exported QDQ model and onnxmp its float simulation). Writes
benchmarks/results/phase1_speed.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import onnx
from common import bench_models, markdown_table, write_result
from onnx import TensorProto, helper, numpy_helper

from onnxmp import OptimizeConfig, quant
from onnxmp.export import export_qdq
from onnxmp.pipeline import analyze
from onnxmp.session import make_session, run_over, with_outputs


def deep_cnn(layers: int, seed: int = 0) -> onnx.ModelProto:
    """A synthetic deep residual CNN with ``layers`` weighted layers on 3×32×32 inputs (random
    weights: for timing only)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    channels = 16
    inits.append(numpy_helper.from_array((rng.standard_normal((channels, 3, 3, 3)) * 0.3).astype(np.float32), "w0"))
    nodes.append(helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c0"], ["r0"], name="relu0"))
    x = "r0"
    for i in range(1, layers - 1):
        w = (rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2 / (9 * channels)) * 0.5).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Add", [f"c{i}", x], [f"a{i}"], name=f"add{i}"))
        nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    inits.append(numpy_helper.from_array(rng.standard_normal((channels, 10)).astype(np.float32), "fc"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc"], ["logits"], name="fc"))
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def naive_phase1(analysis, candidates) -> tuple[float, dict]:
    """A fresh exported model and session per (group, candidate), every other group at the highest."""
    highest = candidates[-1]
    baseline = {g.gid: highest for g in analysis.plan.groups}
    names = analysis.simulator.observed
    start = time.perf_counter()
    results = {}
    for group in analysis.plan.groups:
        for cand in candidates:
            model = export_qdq(analysis.model, analysis.plan, analysis.params, {**baseline, group.gid: cand})
            session = make_session(with_outputs(model, names), optimized=False)  # no integer-kernel fusion
            outputs = run_over(session, analysis.data, names)
            results[(group.gid, cand)] = quant.sqnr_db(analysis.simulator.reference, outputs)
    return time.perf_counter() - start, results


def measure(name: str, path: str, calib: str) -> list[str]:
    config = OptimizeConfig(calib=calib, adaround="off")
    analysis = analyze(path, config)
    ours = analysis.timings["phase1"]
    evaluations = sum(s.evaluated for s in analysis.sensitivities) + 1
    naive, naive_results = naive_phase1(analysis, config.candidates)
    ours_results = {(s.gid, s.candidate): s.sqnr_db for s in analysis.sensitivities}
    gap = max(abs(naive_results[k] - ours_results[k]) for k in ours_results if ours_results[k] < 150)
    return [name, str(len(analysis.plan.weighted_ops)), str(len(analysis.plan.groups)), str(analysis.data.num_samples),
            f"{len(naive_results)}", f"{evaluations}", f"{naive:.1f}", f"{ours:.1f}", f"{naive / ours:.1f}×",
            f"{gap:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--models", nargs="*", default=["digits"])
    args = parser.parse_args()
    header = ["model", "weighted layers", "groups", "samples", "naive evals", "onnxmp evals", "naive s",
              "onnxmp s", "speed-up", "max SQNR gap dB"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "deep.onnx")
        onnx.save(deep_cnn(args.layers), path)
        x = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
        np.savez(os.path.join(tmp, "calib.npz"), input=x)
        rows.append(measure(f"synthetic deep CNN ({args.layers} layers)", path, os.path.join(tmp, "calib.npz")))
        print(" | ".join(rows[-1]), flush=True)
    for bench in bench_models(args.models):
        rows.append(measure(bench.name, bench.model, bench.calib))
        print(" | ".join(rows[-1]), flush=True)
    text = ("Phase 1 (candidates W4A8,W8A8,W8A16, no AdaRound): the naive way builds and runs a fresh QDQ "
            "model per group and candidate; onnxmp reuses one session and skips evaluations that cannot "
            "differ. Measured in one run.\n\n" + markdown_table(header, rows) + "\n")
    print(text)
    write_result("phase1_speed.md", text)


if __name__ == "__main__":
    main()
