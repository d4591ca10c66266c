"""Models calibrated with whole feeds (a sequence of any length plus state tensors, one run per
feed): onnxmp's CLI on a folder of feed files against float and onnxruntime's quantize_static.

For each such zoo model (today ``silero_vad``, prepared by ``python models/prepare.py silero_vad``):
float; ``python -m onnxmp optimize --budget 0.5 --calib <calib folder> --no-cache`` (default
target ort); the same with ``--candidates W8A8`` (uniform W8A8); onnxruntime's ``quantize_static``
(QDQ, per-channel INT8 weights, UINT8 activations, min/max) with a ``CalibrationDataReader`` that
yields the same feeds one by one. Columns: the task score on the labelled clips (one run per
clip, as faster-whisper runs the model), SQNR of ``speech_probs`` against float over every
window of the eval clips, ms per clip on onnxruntime CPU with 1 thread (median of interleaved
runs on one eval clip of median length), file size, how many weighted layers (Conv, LSTM: an
input 1 fed by DequantizeLinear) carry QDQ in the written file, and the cold optimize wall time.

    python benchmarks/feeds_table.py [--runs 30]

Writes benchmarks/results/feeds.md and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "models"))

import zoo  # noqa: E402  (models/, on sys.path above)
from common import ROOT, bench_models, git_state, markdown_table, write_result  # noqa: E402

from onnxmp.targets.ort_latency import interleaved_ms, session_runner  # noqa: E402

WEIGHTED = ("Conv", "LSTM", "GRU", "RNN", "MatMul", "Gemm", "ConvTranspose")


def load_feeds(folder: str) -> list[dict[str, np.ndarray]]:
    out = []
    for f in sorted(glob.glob(os.path.join(folder, "*.npz"))):
        with np.load(f) as z:
            out.append({k: z[k] for k in z.files})
    return out


def weighted_qdq(path: str) -> tuple[int, int, list[str]]:
    """(weighted layers whose weight input comes from a DequantizeLinear, weighted layers, the
    float ones' op types) in the written file."""
    model = onnx.load(path)
    producer = {o: n for n in model.graph.node for o in n.output}
    total, quantized, floats = 0, 0, []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED or len(node.input) < 2:
            continue
        if node.op_type in ("MatMul", "Gemm") and not any(
                i in {t.name for t in model.graph.initializer} or (i in producer and producer[i].op_type == "DequantizeLinear")
                for i in node.input[:2]):
            continue  # activation x activation
        total += 1
        src = producer.get(node.input[1])
        if src is not None and src.op_type == "DequantizeLinear":
            quantized += 1
        else:
            floats.append(node.op_type)
    return quantized, total, floats


def cli_optimize(model: str, out: str, calib: str, report: str, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "onnxmp", "optimize", model, out, "--calib", calib, "--no-cache", "--report", report,
           *extra]
    print("$", " ".join(os.path.relpath(c, ROOT) if os.path.isabs(c) and c.startswith(ROOT) else c for c in cmd),
          flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"onnxmp optimize failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    print("\n".join(done.stdout.strip().splitlines()[-8:]), flush=True)
    return seconds


class FeedReader:
    """onnxruntime CalibrationDataReader over whole feeds, one per get_next()."""

    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def ort_static(model: str, out: str, feeds) -> float:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("Reader", (FeedReader, CalibrationDataReader), {})(feeds)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        with contextlib.chdir(tmp):
            quant_pre_process(os.path.abspath(model), pre)
        quantize_static(pre, out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return time.perf_counter() - start


def sqnr_db(reference: np.ndarray, values: np.ndarray) -> float:
    noise = float(np.sum((values.astype(np.float64) - reference) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise)


def one_thread_session(path: str):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def latencies(paths: dict[str, str], feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    """Median ms of one run over ``feed``, variants interleaved run by run (onnxmp's own timer)."""
    runners = [session_runner(one_thread_session(p), feed) for p in paths.values()]
    return dict(zip(paths, interleaved_ms(runners, runs), strict=True))


def run_model(bench, runs: int, folder: str) -> tuple[list[list[str]], list[str]]:
    data = zoo.load_npz(zoo.paths(bench.name)["eval"])
    feeds = load_feeds(bench.calib)
    reference = np.concatenate(zoo.vad_speech_probs(bench.model, data))
    labels = data["label"]
    variants: dict[str, dict] = {"float": {"path": bench.model, "seconds": None}}
    notes: list[str] = []
    for label, extra in (("onnxmp --budget 0.5", ["--budget", "0.5"]),
                         ("onnxmp uniform W8A8 (--candidates W8A8)", ["--candidates", "W8A8"])):
        out = os.path.join(folder, f"{len(variants)}.onnx")
        report = out + ".json"
        seconds = cli_optimize(bench.model, out, bench.calib, report, extra)
        with open(report, encoding="utf-8") as handle:
            record = json.load(handle)
        variants[label] = {"path": out, "seconds": seconds, "record": record}
    out = os.path.join(folder, "ort.onnx")
    label = "onnxruntime quantize_static W8A8"
    try:
        variants[label] = {"path": out, "seconds": ort_static(bench.model, out, feeds)}
        one_thread_session(out)
    except Exception as exc:
        variants.pop(label, None)
        notes.append(f"{label} failed on this model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")

    lengths = np.diff(data["offsets"])
    clip = int(np.argsort(lengths)[len(lengths) // 2])
    feed = next(f for i, (f, _) in enumerate(zoo.vad_clip_feeds(data)) if i == clip)
    ms = latencies({k: v["path"] for k, v in variants.items()}, feed, runs)

    float_model = onnx.load(bench.model)
    lstm_weights = [i for n in float_model.graph.node if n.op_type == "LSTM" for i in n.input[1:4] if i]
    lstm_nodes = [n.name for n in float_model.graph.node if n.op_type == "LSTM" and n.name]
    rows = []
    for label, v in variants.items():
        probs = np.concatenate(zoo.vad_speech_probs(v["path"], data))
        score = 100 * float(np.mean((probs > 0.5) == (labels == 1)))
        q, total, floats = weighted_qdq(v["path"])
        record = v.get("record")
        mix = (", ".join(f"{n}×{c}" for c, n in record["chosen"]["mix"].items()) if record else "—")
        rows.append([label, f"{score:.2f}", "∞" if label == "float" else f"{sqnr_db(reference, probs):.2f}",
                     f"{ms[label]:.2f}", f"{os.path.getsize(v['path']) / 1024:.0f}",
                     "—" if label == "float" else f"{q} / {total}" + (f" ({', '.join(floats)} float)" if floats else ""),
                     mix, "—" if v["seconds"] is None else f"{v['seconds']:.1f}"])
        if record:
            listed = [f"{s['name']}: {s['reason']}" for s in record.get("skipped", [])
                      if s["name"] in lstm_weights + lstm_nodes or s["reason"].startswith("LSTM kept float")]
            notes.append(f"{label}: record's budget choice {json.dumps(record['chosen'].get('budget_choice'))}; "
                         f"its chosen SQNR (onnxmp's own, on the calibration feeds) "
                         f"{record['chosen']['sqnr_db_ort_default']:.2f} dB; "
                         f"LSTM weights {', '.join(lstm_weights)}: "
                         + (f"kept float, the record says: {'; '.join(listed)}" if listed else
                            "kept float with no entry in the record's kept-float list (`skipped`)"))
    clip_s = lengths[clip] * 512 / 16000
    caption = (
        f"# Whole-feed calibration: {bench.name}\n\n"
        f"Measured by `python benchmarks/feeds_table.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` at "
        f"{git_state()}, onnxruntime {ort.__version__}, {os.cpu_count()} cores (shared). Calibration: "
        f"`{os.path.relpath(bench.calib, ROOT)}/`, {len(feeds)} feed files (one clip each, "
        f"{min(len(f['input']) for f in feeds)}–{max(len(f['input']) for f in feeds)} windows, h = c = 0), "
        "run one by one. **frame accuracy %**: speech_probs > 0.5 against the per-window labels over "
        f"{len(labels)} windows of {len(lengths)} eval clips, one run per clip (speech {100 * labels.mean():.1f}% "
        f"of windows, so always-speech scores {100 * labels.mean():.1f}). **SQNR**: speech_probs vs float over those "
        f"windows. **ms / clip**: onnxruntime CPU, 1 intra-op and 1 inter-op thread (as faster-whisper), "
        f"median of {runs} interleaved runs on eval clip {clip} ({lengths[clip]} windows, {clip_s:.1f} s of audio). "
        "**weighted layers with QDQ**: Conv/LSTM nodes whose weight input comes from a DequantizeLinear in the "
        "written file. **cold s**: the whole `onnxmp optimize ... --no-cache` command (a fresh process), or the "
        "quantize_static call with its pre-processing.")
    header = ["config", "frame accuracy %", "speech_probs SQNR dB", "ms / clip", "KiB", "weighted layers with QDQ",
              "mix (groups)", "cold s"]
    return rows, [caption, header, notes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    benches = [b for b in bench_models() if b.calib_feeds]
    if not benches:
        raise SystemExit("no prepared model with whole-feed calibration: run `python models/prepare.py silero_vad`")
    parts = []
    for bench in benches:
        if bench.name != "silero_vad":
            print(f"feeds_table: skipping {bench.name}: its evaluator is not silero_vad's speech_probs", flush=True)
            continue
        with tempfile.TemporaryDirectory() as folder:
            rows, (caption, header, notes) = run_model(bench, args.runs, folder)
        parts.append(caption + "\n\n" + markdown_table(header, rows) + "\n" + "".join(f"\n- {n}" for n in notes) + "\n")
    text = "\n".join(parts)
    print(text)
    write_result("feeds.md", text)


if __name__ == "__main__":
    main()
