"""Build ``models/.cache/ppocr_det``: the PP-OCRv4 text detector (DBNet) from rapidocr's wheel.

Model: ``ch_PP-OCRv4_det_infer.onnx`` (PP-LCNet backbone + DB head, opset 12, input ``x``
float32 [N, 3, H, W] with H, W multiples of 32, output the text-probability map
[N, 1, H, W]), copied byte for byte from ``rapidocr-onnxruntime==1.4.4``.

Data: synthetic "pages" of 256 x 384 pixels carrying 3-8 horizontal lines of real English text
(spans of the Python standard library's docstrings) rendered with the machine's TrueType fonts
at 14-28 px (random font, position, grey levels, mild noise). The ground truth of a line is
its ink's horizontal extent by the font's line height (cap/ascender to descender), as text-line
annotations are drawn. Preprocessing is rapidocr's ``DetPreProcess`` with
``limit_type='max'``, ``limit_side_len=960`` (PaddleOCR's own detector default; under it a page
this size is fed unresized, 256 and 384 being multiples of 32), BGR, ``(x/255 - 0.5)/0.5``.
(rapidocr's own config uses ``limit_type='min', limit_side_len=736``, which would upscale every
page to at least 736 px: 8x the activations, too heavy for 32-sample calibration sets.)

Sets (disjoint sentences): eval 400 pages, calib 32, calib2 32; calib_ood is 32 images of
uniform noise in [-1, 1]. The eval set's last 352 pages are drawn after every other set (so
calib* are what they were when eval held 48 pages, too few to tell quantized models apart).

Metric (``zoo``): panoptic quality of the text boxes (F1 of one-to-one matches at IoU >= 0.5
times their mean IoU) after a NumPy re-implementation of rapidocr's ``DBPostProcess`` (thresh
0.3, box_thresh 0.5, unclip 1.6, 2x2 dilation, fast score) with axis-aligned boxes (all text
here is horizontal).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PACKAGE, VERSION = "rapidocr-onnxruntime", "1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
SHA256 = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"

SEED = 20251126
PAGE_H, PAGE_W = 256, 384
N_EVAL, N_CALIB = 48, 32
N_EVAL_MORE = 352  # eval pages drawn after the calibration sets


def render_page(sentences, fonts, rng: np.random.Generator):
    """One page (uint8 BGR [H, W, 3]), its line boxes [(x0, y0, x1, y1)] and their texts,
    consuming sentences."""
    from PIL import Image, ImageDraw, ImageFont

    bg = int(rng.integers(190, 256))
    ink = int(rng.integers(0, 90))
    page = Image.new("L", (PAGE_W, PAGE_H), color=bg)
    draw = ImageDraw.Draw(page)
    boxes, texts = [], []
    y = int(rng.integers(6, 24))
    n_lines = int(rng.integers(3, 9))
    while len(boxes) < n_lines:
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(14, 29)))
        words = next(sentences).split()
        x = int(rng.integers(6, PAGE_W // 4))
        k = int(rng.integers(1, len(words) + 1))
        start = int(rng.integers(0, len(words) - k + 1))
        text = None
        while k >= 1:
            t = " ".join(words[start:start + k])
            x0, tp, r, b = draw.textbbox((x, y), t, font=font)
            if r <= PAGE_W - 6:
                text = t
                break
            k -= 1
        if text is None:
            continue
        if b > PAGE_H - 6:
            break
        draw.text((x, y), text, font=font, fill=ink)
        # ground truth: the ink's horizontal extent, the line's full height (cap/ascender to
        # descender, as text-line annotations are drawn), so "use" and "Typed" get equal heights
        _, lt, _, lb = draw.textbbox((x, y), "Hg", font=font)
        boxes.append((x0, min(tp, lt), r, max(b, lb)))
        texts.append(text)
        y = b + int(rng.integers(int(0.5 * (b - tp)) + 4, int(1.5 * (b - tp)) + 8))
    a = np.asarray(page, dtype=np.float32)
    a = np.repeat(a[:, :, None], 3, axis=2)
    a = a + rng.normal(0.0, float(rng.uniform(0.0, 4.0)), size=a.shape).astype(np.float32)
    return np.clip(np.round(a), 0, 255).astype(np.uint8), boxes, texts


def normalize(pages: np.ndarray) -> np.ndarray:
    """rapidocr DetPreProcess at ratio 1: (x/255 - 0.5)/0.5, HWC -> CHW."""
    x = (pages.astype(np.float32) * (1 / 255.0) - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def build(out: Path, common, force: bool = False) -> dict:
    common.need("PIL", "Pillow")
    fonts = common.find_fonts()
    wheel = common.fetch_wheel(PACKAGE, VERSION)
    common.extract_from_wheel(wheel, MEMBER, out / "model.onnx", SHA256)

    rng = np.random.default_rng(SEED)
    sentences = common.docstring_sentences(ascii_only=True)
    order = rng.permutation(len(sentences))
    it = iter([sentences[i] for i in order])

    def render(n: int, first: int = 0):
        """``n`` pages, their line boxes and each box's page number (counted from ``first``)."""
        pages, boxes, page_idx, texts = [], [], [], []
        for i in range(n):
            img, bx, tx = render_page(it, fonts, rng)
            pages.append(img)
            boxes += bx
            texts += tx
            page_idx += [first + i] * len(bx)
        return (np.stack(pages), np.array(boxes, dtype=np.float32).reshape(-1, 4),
                np.array(page_idx, dtype=np.int64), np.array(texts))

    sets = {key: render(n) for key, n in (("eval", N_EVAL), ("calib", N_CALIB), ("calib2", N_CALIB))}
    common.save_npz(out / "calib.npz", x=normalize(sets["calib"][0]))
    common.save_npz(out / "calib2.npz", x=normalize(sets["calib2"][0]))
    ood = rng.uniform(-1.0, 1.0, size=(N_CALIB, 3, PAGE_H, PAGE_W)).astype(np.float32)
    common.save_npz(out / "calib_ood.npz", x=ood)
    pages, boxes, page_idx, texts = (np.concatenate(parts) for parts in zip(sets["eval"], render(N_EVAL_MORE, N_EVAL),
                                                                              strict=True))
    common.log(f"  eval: {len(pages)} pages, {len(boxes)} text lines")
    common.save_npz(out / "eval.npz", x=normalize(pages), boxes=boxes, box_page=page_idx, text=texts)
    return {
        "sha256": SHA256,
        "n_eval": len(pages),
        "n_eval_boxes": len(boxes),
        "n_calib": N_CALIB,
        "fonts": [f.name for f in fonts],
        "input": {"x": [None, 3, PAGE_H, PAGE_W]},
        "calib_ood": "uniform noise in [-1, 1]",
    }
