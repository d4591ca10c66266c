"""Calibration data: load it, check it against the model's inputs, and feed it to the model.

Calibration data is a sequence of feeds, each a dict input name → array exactly as the model
takes it (onnxruntime's ``CalibrationDataReader``, NNCF's dataset of input dicts). Forms:

- **samples** (``.npz``, or a folder of them concatenated): one array per input with samples
  along the first axis. Where that axis is the model's batch axis the samples run in batches;
  where the model has no batch axis (one more dimension than the input) they run one by one.
- **feeds**: a Python iterable of dicts or a ``CalibrationDataReader`` (API); a folder of ``.npz``
  files, one feed each, or one ``.npz`` whose arrays are one feed (CLI). Every feed runs alone,
  as given: nothing is cut or concatenated along an axis that may be time or state, and shapes
  may differ between feeds (sequences of different lengths, a scalar input).

``layout="auto"`` tells the two apart by the shapes: samples wherever the arrays read as samples,
else feeds; ``"samples"`` or ``"feeds"`` says which is meant where the shapes cannot tell.
Without data, onnxmp uses ``calib.npz`` shipped beside the model, or, with a loud warning,
random normal inputs (only meaningful for smoke tests).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import onnx
from onnx import helper

from onnxmp.errors import CalibrationError, ConfigError, ModelError

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 16
# the simulator's runs hold their largest activation under this many bytes: a run that overflows
# the caches costs more per sample (float passes over the calibration samples, runs of 4 / 8 / 16
# samples: ppocr_rec, 960 KiB a sample, 0.71 / 0.75 / 1.03 s; ppocr_det, 3 MiB, 0.39 / 0.44 /
# 0.56 s; MiniLM, 768 KiB, 1.07 / 1.01 / 1.08 s; ppocr_cls, 150 KiB, 0.055 / 0.045 / 0.042 s;
# 2 MiB of L2 per core, 32 MiB of L3)
RUN_BYTES = 12 << 20
RANDOM_SAMPLES = 8
LAYOUTS = ("auto", "samples", "feeds")
_FORMS = ("onnxmp reads calibration data as samples (an .npz keyed by input name, samples along the first axis, "
          "or a folder of such files) or as whole feeds (a folder of .npz files or one .npz, each holding one "
          "feed whose arrays fit the model's inputs as they are; in Python also an iterable of dicts or an "
          "onnxruntime CalibrationDataReader); --calib-layout says which where the shapes cannot tell")

Feed = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and shape (None for a symbolic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    """Validated calibration data and how it runs: batched samples (``arrays``, samples along the
    model's batch axis, ``batch`` per run) or whole feeds (``items``, one run each)."""

    source: str
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    batch: int = DEFAULT_BATCH
    items: tuple[Feed, ...] = ()
    fixed_batch: bool = False  # the model's batch axis has a fixed size: every run takes ``batch`` samples

    @property
    def batched(self) -> bool:
        """True when runs take slices of ``arrays`` along the model's batch axis."""
        return bool(self.arrays)

    @property
    def input_names(self) -> frozenset[str]:
        return frozenset(self.arrays or self.items[0])

    @property
    def num_samples(self) -> int:
        """Samples (batched data) or feeds: the unit of held-back splits and of labels."""
        return len(next(iter(self.arrays.values()))) if self.batched else len(self.items)

    @property
    def num_feeds(self) -> int:
        """How many model runs ``feeds`` makes (for progress)."""
        return -(-self.num_samples // self.batch) if self.batched else len(self.items)

    def feeds(self) -> Iterator[Feed]:
        """Feeds for one model run each, covering every sample once, in order."""
        if not self.batched:
            yield from self.items
            return
        for start in range(0, self.num_samples, self.batch):
            yield {name: arr[start:start + self.batch] for name, arr in self.arrays.items()}

    def in_runs_of(self, samples: int) -> CalibrationSet:
        """The same samples in runs of at most ``samples`` (where the model's batch is free): a
        pass that fetches every activation holds them all for one run, and memory new to the
        process costs a page fault per page (ppocr_rec: 1.6 GB per run of 16 samples, its first
        range pass 4.7 s; in runs of 4, 2.3 s)."""
        if not self.batched or self.fixed_batch or self.batch <= samples:
            return self
        return dataclasses.replace(self, batch=samples)

    def in_runs_under(self, sample_bytes: int, run_bytes: int = RUN_BYTES) -> CalibrationSet:
        """The same samples in runs of a power of two of them (at most ``batch``) whose largest
        activation, ``sample_bytes`` a sample, stays under ``run_bytes`` where one sample allows."""
        fit = max(1, run_bytes // max(sample_bytes, 1))
        return self.in_runs_of(1 << (fit.bit_length() - 1))

    def first_sample(self) -> Feed:
        """One sample as the model takes it: the first feed, cut to one sample where batched
        (batch axis kept), for timing and shape runs."""
        if self.batched:
            return {name: arr[:1] for name, arr in self.arrays.items()}
        return self.items[0]

    def subset(self, indices: np.ndarray) -> CalibrationSet:
        """The same set restricted to some samples or feeds (e.g. held-back evaluation samples)."""
        if self.batched:
            return dataclasses.replace(self, arrays={name: arr[indices] for name, arr in self.arrays.items()})
        return dataclasses.replace(self, items=tuple(self.items[i] for i in indices))

    def digest(self) -> bytes:
        """A digest of every value and how it is fed (for the results cache)."""
        digest = hashlib.sha256(f"batch={self.batch if self.batched else 'feeds'}".encode())
        for feed in [self.arrays] if self.batched else self.items:
            for name in sorted(feed):
                arr = np.ascontiguousarray(feed[name])
                digest.update(f"{name}|{arr.dtype}|{arr.shape}".encode())
                digest.update(arr.tobytes())
        return digest.digest()


_NON_TENSOR = {"sequence_type": "a sequence", "optional_type": "an optional", "map_type": "a map",
               "sparse_tensor_type": "a sparse tensor"}


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real (non-initializer) inputs of a model with their dtypes and shapes."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise ModelError(
                f"input {value.name!r} is {_NON_TENSOR.get(kind, 'not a tensor')}; onnxmp quantizes models "
                "whose inputs are tensors (calibration data holds one array per input)"
            )
        tensor_type = value.type.tensor_type
        # Some exporters write -1 (or 0) for a dynamic dimension instead of a dim_param.
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tensor_type.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def _npz_files(path: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(path, "*.npz"))) if os.path.isdir(path) else [path]
    if not files or not all(os.path.isfile(f) for f in files):
        raise CalibrationError(f"{path}: no calibration data there; give an .npz file or a folder of them")
    return files


def _read_one(file: str) -> Feed:
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {key: np.asarray(npz[key]) for key in npz.files}
    except Exception as exc:
        raise CalibrationError(f"{file}: not a readable .npz file ({exc})") from exc


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz file, or of every .npz in a folder concatenated along the first axis
    (the samples form)."""
    return _concatenated([_read_one(file) for file in _npz_files(path)], path)


def _concatenated(contents: list[Feed], path: str) -> dict[str, np.ndarray]:
    """The files' arrays joined along the first axis, key by key."""
    parts: dict[str, list[np.ndarray]] = {}
    for content in contents:
        for key, value in content.items():
            parts.setdefault(key, []).append(value)
    try:
        return {key: np.concatenate(chunks, axis=0) for key, chunks in parts.items()}
    except ValueError as exc:
        raise CalibrationError(f"{path}: the .npz files disagree on shapes ({exc}); if each file is one "
                               "whole feed, pass --calib-layout feeds") from exc


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_values(spec: InputSpec, arr: np.ndarray, source: str) -> np.ndarray:
    """The array cast to the model's dtype, after the checks every layout shares."""
    if arr.dtype.kind not in "fiub" or (arr.dtype.kind == "f") != (spec.dtype.kind == "f"):
        raise CalibrationError(f"{source}: input {spec.name!r} has dtype {arr.dtype}, the model wants {spec.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise CalibrationError(f"{source}: input {spec.name!r} holds NaN or Inf values")
    return arr.astype(spec.dtype, copy=False)


def _fits(shape: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(shape) == len(want) and all(w is None or g == w for g, w in zip(shape, want, strict=True))


def _mismatch(spec: InputSpec, arr: np.ndarray, source: str, layout: str) -> CalibrationError:
    as_what = {"samples": " (with samples along the first axis)", "feeds": " (one whole feed)"}.get(layout, "")
    return CalibrationError(f"{source}: input {spec.name!r} has shape {list(arr.shape)}, the model wants "
                            f"{_fmt(spec.shape)}{as_what}; {_FORMS}")


def _check_names(raw: Mapping[str, np.ndarray], specs: list[InputSpec], source: str) -> None:
    missing = [s.name for s in specs if s.name not in raw]
    if missing:
        raise CalibrationError(f"{source}: no data for model input(s) {', '.join(missing)}; it has "
                               f"{', '.join(sorted(raw)) or 'nothing'}")


def _as_samples(raw: Mapping[str, np.ndarray], specs: list[InputSpec], source: str) -> CalibrationSet:
    """Read arrays as samples along the first axis, or raise why they are not."""
    batched_layouts, arrays = set(), {}
    for spec in specs:
        arr = np.asarray(raw[spec.name])
        if _fits(arr.shape[1:], spec.shape) and arr.ndim == len(spec.shape) + 1:
            batched_layouts.add(False)
        elif arr.ndim > 0 and _fits(arr.shape, (None, *spec.shape[1:])):
            batched_layouts.add(True)
        else:
            raise _mismatch(spec, arr, source, "samples")
        if len(arr) == 0:
            raise CalibrationError(f"{source}: input {spec.name!r} has no samples")
        arrays[spec.name] = _check_values(spec, arr, source)
    counts = {name: len(a) for name, a in arrays.items()}
    if len(set(counts.values())) > 1 or len(batched_layouts) > 1:
        detail = ", ".join(f"{name} {list(arrays[name].shape)}" for name in counts)
        raise CalibrationError(f"{source}: as samples along the first axis the inputs disagree on the number of "
                               f"samples or on having a batch axis ({detail}); {_FORMS}")
    if batched_layouts.pop():
        fixed = _fixed_batch(specs, next(iter(counts.values())), source)
        return CalibrationSet(source, arrays, fixed or DEFAULT_BATCH, fixed_batch=fixed is not None)
    n = next(iter(counts.values()))  # no batch axis: every sample is a whole feed (asarray keeps a 0-d array)
    return CalibrationSet(source, items=tuple({k: np.asarray(a[i]) for k, a in arrays.items()} for i in range(n)))


def _as_feed(raw: Mapping[str, np.ndarray], specs: list[InputSpec], source: str) -> Feed:
    """Check one whole feed against the model's inputs."""
    _check_names(raw, specs, source)
    feed = {}
    for spec in specs:
        arr = np.asarray(raw[spec.name])
        if not _fits(arr.shape, spec.shape):
            raise _mismatch(spec, arr, source, "feeds")
        if arr.size == 0:
            raise CalibrationError(f"{source}: input {spec.name!r} is empty (shape {list(arr.shape)})")
        feed[spec.name] = _check_values(spec, arr, source)
    return feed


def _fixed_batch(specs: list[InputSpec], n: int, source: str) -> int | None:
    """The model's fixed batch size, if it has one."""
    fixed = {s.shape[0] for s in specs if s.shape and s.shape[0] is not None}
    if not fixed:
        return None
    size = fixed.pop()
    if fixed or n % size:
        raise CalibrationError(f"{source}: the model has a fixed batch size of {size}; give a multiple of {size} samples")
    return size


def make_calibration_set(raw: Mapping[str, np.ndarray], model: onnx.ModelProto, source: str,
                         layout: str = "auto") -> CalibrationSet:
    """Validate in-memory arrays keyed by input name against ``model``: samples along the first
    axis, or one whole feed (``layout``; "auto" reads samples where the shapes allow it)."""
    check_layout(layout)
    specs = model_inputs(model)
    _check_names(raw, specs, source)
    if layout == "feeds":
        return feeds_set([_as_feed(raw, specs, source)], source)
    try:
        return _as_samples(raw, specs, source)
    except CalibrationError as as_samples:
        if layout == "samples":
            raise
        try:
            feed = _as_feed(raw, specs, source)
        except CalibrationError:
            raise as_samples from None
        logger.info("%s: read as one whole feed (the arrays do not read as samples along the first axis)", source)
        return feeds_set([feed], source)


def feeds_set(feeds: Iterable[Feed], source: str) -> CalibrationSet:
    """Whole feeds (already checked), one run each."""
    items = tuple(feeds)
    if not items:
        raise CalibrationError(f"{source}: no feeds; {_FORMS}")
    return CalibrationSet(source, items=items)


def load_calibration(path: str, model: onnx.ModelProto, layout: str = "auto") -> CalibrationSet:
    """Read and validate an .npz or a folder of them (``layout`` as in ``make_calibration_set``;
    a folder's files are each one feed when they do not read as samples together)."""
    check_layout(layout)
    files = _npz_files(path)
    contents = [_read_one(file) for file in files]  # each file read once, whichever reading holds
    if len(files) == 1:
        return make_calibration_set(contents[0], model, path, layout)
    specs = model_inputs(model)

    def as_feeds() -> CalibrationSet:
        return feeds_set((_as_feed(c, specs, f) for f, c in zip(files, contents, strict=True)), path)

    if layout == "feeds":
        return as_feeds()
    try:
        return make_calibration_set(_concatenated(contents, path), model, path, "samples")
    except CalibrationError as as_samples:
        if layout == "samples":
            raise
        try:
            return as_feeds()
        except CalibrationError as feeds_error:
            raise CalibrationError(f"{feeds_error} (as samples: {str(as_samples).split('; ')[0]})") from None


def collect_feeds(feeds: Iterable[Mapping[str, np.ndarray]] | object) -> tuple[Mapping[str, np.ndarray], ...]:
    """Every feed of an iterable of dicts, or of an object with ``get_next()`` returning a dict
    until None (onnxruntime's ``CalibrationDataReader``), read once into a tuple."""
    if hasattr(feeds, "get_next"):
        reader = feeds
        return tuple(iter(lambda: reader.get_next(), None))
    try:
        return tuple(feeds)
    except TypeError:
        raise CalibrationError(f"calibration data of type {type(feeds).__name__} is neither a path, an iterable "
                               f"of feeds nor a CalibrationDataReader; {_FORMS}") from None


def calibration_from_feeds(feeds: Iterable[Mapping[str, np.ndarray]], model: onnx.ModelProto,
                           source: str = "calibration feeds") -> CalibrationSet:
    """Whole feeds from Python (see ``collect_feeds``), each checked against the model's inputs."""
    specs = model_inputs(model)
    checked = []
    for i, feed in enumerate(collect_feeds(feeds)):
        if not isinstance(feed, Mapping):
            raise CalibrationError(f"{source}: feed {i} is a {type(feed).__name__}, not a dict of input name → array")
        checked.append(_as_feed(feed, specs, f"{source}, feed {i}"))
    return feeds_set(checked, source)


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown calibration layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def random_calibration(model: onnx.ModelProto, seed: int = 0) -> CalibrationSet:
    """Random normal inputs, for models shipped without data; results mean little."""
    rng = np.random.default_rng(seed)
    raw = {}
    for spec in model_inputs(model):
        if spec.dtype.kind != "f":
            raise CalibrationError(
                f"input {spec.name!r} is {spec.dtype}: random data cannot stand in for it; give --calib"
            )
        if any(d is None for d in spec.shape[1:]):
            raise CalibrationError(
                f"input {spec.name!r} has symbolic dimensions {_fmt(spec.shape)}; give --calib"
            )
        shape = (RANDOM_SAMPLES, *spec.shape[1:]) if spec.shape else (RANDOM_SAMPLES,)
        raw[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    logger.warning(
        "no calibration data given: using %d random samples; the chosen bit-widths will not "
        "reflect real inputs. Pass --calib data.npz for a real result.", RANDOM_SAMPLES
    )
    return make_calibration_set(raw, model, "random inputs")


def resolve_calibration(calib: str | os.PathLike | Iterable[Mapping[str, np.ndarray]] | None, model_path: str,
                        model: onnx.ModelProto, layout: str = "auto") -> CalibrationSet:
    """The user's data (a path, or feeds from Python), else ``calib.npz`` beside the model,
    else random inputs (warned)."""
    if calib is not None and not isinstance(calib, (str, os.PathLike)):
        return calibration_from_feeds(calib, model)
    if calib:
        return load_calibration(os.fspath(calib), model, layout)
    shipped = os.path.join(os.path.dirname(os.path.abspath(model_path)), "calib.npz")
    if os.path.isfile(shipped):
        logger.info("using the calibration data shipped beside the model: %s", shipped)
        return load_calibration(shipped, model, layout)
    return random_calibration(model)
