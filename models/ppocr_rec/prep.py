"""Build ``models/.cache/ppocr_rec``: the PP-OCRv4 text recogniser from rapidocr's wheel.

Model: ``ch_PP-OCRv4_rec_infer.onnx`` (SVTR-LCNet backbone + CTC head, opset 12, input ``x``
float32 [N, 3, 48, W], output softmax [N, W/8, 6625]), copied byte for byte from
``rapidocr-onnxruntime==1.4.4``. Its character dictionary (6623 entries, Chinese plus all
printable ASCII) is in the model's ``metadata_props['character']``, as rapidocr reads it;
rapidocr's ``CTCLabelDecode`` adds 'blank' at index 0 and ' ' at the end (6625 classes). The
full class list is stored in ``eval.npz['charset']`` so that a quantized model without the
metadata still decodes.

Data: spans of 1-6 words of real English sentences from the Python standard library's
docstrings (printable ASCII), rendered with the machine's TrueType fonts (random font, size,
margins, grey levels, mild noise). Only lines whose crop fits rapidocr's default recogniser
shape are kept (``ceil(48 * w / h) <= 320``), so rapidocr's ``TextRecognizer.resize_norm_img``
with ``rec_img_shape = [3, 48, 320]`` gives exactly width 320 for each of them: resize to
height 48 keeping the aspect ratio, ``(x/255 - 0.5)/0.5``, zero-pad on the right to 320.

Sets (disjoint sentences): eval 400 lines, calib 64, calib2 64; calib_ood is 64 images of
uniform noise in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PACKAGE, VERSION = "rapidocr-onnxruntime", "1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
SHA256 = "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"

SEED = 20251124
IMG_H, IMG_W = 48, 320
N_EVAL, N_CALIB = 400, 64
MAX_WORDS = 6


def load_charset(model_path: Path, common) -> list[str]:
    onnx = common.need("onnx")
    m = onnx.load(str(model_path), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    chars = meta["character"].splitlines()  # exactly rapidocr's get_character_list
    return ["blank", *chars, " "]


def render_fitting(sentence: str, fonts, rng, common, charset: set[str]):
    """Render a random span of ``sentence`` that fits the 48x320 input; None if impossible."""
    words = [w for w in sentence.split() if all(c in charset for c in w)]
    if not words:
        return None
    k = min(int(rng.integers(1, MAX_WORDS + 1)), len(words))
    start = int(rng.integers(0, len(words) - k + 1))
    font = fonts[int(rng.integers(len(fonts)))]
    size = int(rng.integers(20, 45))
    seed = int(rng.integers(2**31))
    while k >= 1:
        text = " ".join(words[start:start + k])
        img = common.render_line(text, font, size, np.random.default_rng(seed))
        h, w = img.shape[:2]
        if int(np.ceil(IMG_H * w / h)) <= IMG_W:
            return text, img
        k -= 1
    return None


def build(out: Path, common, force: bool = False) -> dict:
    common.need("PIL", "Pillow")
    fonts = common.find_fonts()
    wheel = common.fetch_wheel(PACKAGE, VERSION)
    model = common.extract_from_wheel(wheel, MEMBER, out / "model.onnx", SHA256)
    charset = load_charset(model, common)
    common.log(f"  character dictionary: {len(charset)} classes (blank + {len(charset) - 2} + space)")

    rng = np.random.default_rng(SEED)
    sentences = common.docstring_sentences(ascii_only=True)
    order = rng.permutation(len(sentences))
    sentences = [sentences[i] for i in order]
    known = set(charset[1:])

    sets: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    it = iter(sentences)
    for key, n in (("eval", N_EVAL), ("calib", N_CALIB), ("calib2", N_CALIB)):
        texts, xs = [], []
        while len(texts) < n:
            r = render_fitting(next(it), fonts, rng, common, known)  # StopIteration: corpus too small
            if r is None:
                continue
            text, img = r
            texts.append(text)
            xs.append(common.ppocr_resize_norm(img, IMG_H, IMG_W))
        sets[key] = (texts, xs)

    texts, xs = sets["eval"]
    common.log(f"  eval: {len(texts)} lines, {sum(len(t) for t in texts)} characters, e.g. {texts[:3]}")
    common.save_npz(out / "eval.npz", x=np.stack(xs), text=np.array(texts), charset=np.array(charset))
    common.save_npz(out / "calib.npz", x=np.stack(sets["calib"][1]))
    common.save_npz(out / "calib2.npz", x=np.stack(sets["calib2"][1]))
    ood = rng.uniform(-1.0, 1.0, size=(N_CALIB, 3, IMG_H, IMG_W)).astype(np.float32)
    common.save_npz(out / "calib_ood.npz", x=ood)
    return {
        "sha256": SHA256,
        "n_eval": N_EVAL,
        "n_calib": N_CALIB,
        "n_classes": len(charset),
        "fonts": [f.name for f in fonts],
        "input": {"x": [None, 3, IMG_H, IMG_W]},
        "calib_ood": "uniform noise in [-1, 1]",
        "metric_note": "1 - sum(edit distance)/sum(len), spaces removed from prediction and truth",
    }
