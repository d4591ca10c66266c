"""A model over protobuf's 2 GB limit (external data) through ``onnxmp optimize``: peak memory
against the model's size, and time per stage.

    python benchmarks/large_model.py [--layers 9] [--samples 4]

Builds a synthetic MLP (MatMul + Relu, 4096↔16384 float32 weights, 256 MB each: 9 layers make
2.2 GB) streamed to disk one weight at a time, runs the CLI on it in a child process (no
AdaRound: its Gram matrices of 16384-wide inputs are a separate cost), and reads the child's peak
resident memory. Writes benchmarks/results/large_model.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from common import publish
from onnx import TensorProto, helper

WIDTH, HIDDEN = 4096, 16384


def write_big_mlp(folder: str, layers: int, seed: int = 0) -> tuple[str, int]:
    """The model file and its data file, written one weight at a time; returns (path, data bytes)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    data_path = os.path.join(folder, "model.onnx.data")
    with open(data_path, "wb") as data:
        for i in range(layers):
            rows, cols = (WIDTH, HIDDEN) if i % 2 == 0 else (HIDDEN, WIDTH)
            cols = WIDTH if i == layers - 1 else cols
            w = (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(rows)).astype(np.float32)
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[rows, cols])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "model.onnx.data"), ("offset", str(data.tell())), ("length", str(w.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            data.write(w.tobytes())
            inits.append(tensor)
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
                      helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
            x = f"r{i}"
    graph = helper.make_graph(nodes, "big_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", WIDTH])], inits)
    path = os.path.join(folder, "model.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path, os.path.getsize(data_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        path, size = write_big_mlp(folder, args.layers)
        calib = os.path.join(folder, "calib.npz")
        np.savez(calib, x=np.random.default_rng(1).standard_normal((args.samples, WIDTH)).astype(np.float32))
        out, report = os.path.join(folder, "out.onnx"), os.path.join(folder, "report.json")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "onnxmp", "optimize", path, out, "--calib", calib, "--no-adaround",
                               "--no-cache", "-q", "--report", report], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        if done.returncode != 0:
            raise SystemExit(f"onnxmp failed: {done.stderr.strip()}")
        with open(report, encoding="utf-8") as handle:
            record = json.load(handle)
        out_size = os.path.getsize(out) + (os.path.getsize(out + ".data") if os.path.exists(out + ".data") else 0)
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in record["timings_s"].items())
        rows = [[f"MLP {args.layers}×MatMul", f"{size / 2**30:.2f}", f"{peak / 2**30:.2f}", f"{peak / size:.2f}×",
                 f"{out_size / 2**30:.2f}", ", ".join(f"{n}×{c}" for c, n in record["chosen"]["mix"].items()),
                 f"{record['chosen']['sqnr_db_ort_default']:.2f}", stages, f"{seconds:.0f}"]]
    header = ["model", "weights GiB", "peak RSS GiB", "peak / weights", "output GiB", "chosen mix", "SQNR dB",
              "stages", "total s"]
    publish("large_model.md", ("A model over 2 GB through `onnxmp optimize` (default candidates and budget, no AdaRound, "
            f"{args.samples} calibration samples), measured by `python benchmarks/large_model.py`. Peak RSS is the "
            "optimize process's. The weights are read from the external data file once (into the prepared "
            "model); onnxruntime sessions on the float model load their own copy while they live; Phase 1 feeds "
            "its simulation dequantized float weights (a float copy while a run lasts, at most 1 GB of them "
            "cached) next to the integer weights of each candidate bit-width (int8)."), header, rows)


if __name__ == "__main__":
    main()
