"""Calibration data: load it, check it against the model's inputs, and feed it in batches.

An ``.npz`` file (or a folder of them) holds one array per model input, keyed by input name,
samples along the first axis. Without data, onnxmp uses ``calib.npz`` shipped beside the model,
or, with a loud warning, random normal inputs (only meaningful for smoke tests).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper

from onnxmp.errors import CalibrationError, ModelError

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 16
RANDOM_SAMPLES = 8


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and shape (None for a symbolic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    """Validated samples for every model input, and how to cut them into feeds.

    ``batched`` is True when the first axis of the arrays is the model's batch axis (fed in
    chunks of ``batch`` samples); False when the model takes one sample without a batch axis.
    """

    arrays: dict[str, np.ndarray]
    batched: bool
    batch: int
    source: str

    @property
    def num_samples(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def num_feeds(self) -> int:
        """How many model runs ``feeds`` makes (for progress)."""
        return -(-self.num_samples // self.batch) if self.batched else self.num_samples

    def feeds(self) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for one model run each, covering every sample once, in order."""
        n = self.num_samples
        if not self.batched:
            for i in range(n):  # asarray: a 0-d sample must stay an array, not a numpy scalar
                yield {name: np.asarray(arr[i]) for name, arr in self.arrays.items()}
            return
        for start in range(0, n, self.batch):
            yield {name: arr[start:start + self.batch] for name, arr in self.arrays.items()}

    def subset(self, indices: np.ndarray) -> CalibrationSet:
        """The same set restricted to some samples (e.g. held-back evaluation samples)."""
        arrays = {name: arr[indices] for name, arr in self.arrays.items()}
        return dataclasses.replace(self, arrays=arrays)


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


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz file, or of every .npz in a folder concatenated along the first axis."""
    files = sorted(glob.glob(os.path.join(path, "*.npz"))) if os.path.isdir(path) else [path]
    if not files or not all(os.path.isfile(f) for f in files):
        raise CalibrationError(f"{path}: no calibration data there; give an .npz file or a folder of them")
    parts: dict[str, list[np.ndarray]] = {}
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as npz:
                for key in npz.files:
                    parts.setdefault(key, []).append(np.asarray(npz[key]))
        except Exception as exc:
            raise CalibrationError(f"{file}: not a readable .npz file ({exc})") from exc
    try:
        return {key: np.concatenate(chunks, axis=0) for key, chunks in parts.items()}
    except ValueError as exc:
        raise CalibrationError(f"{path}: the .npz files disagree on shapes ({exc})") from exc


def _check_array(spec: InputSpec, arr: np.ndarray, source: str) -> tuple[np.ndarray, bool]:
    """Cast an input's data to the model's dtype and tell whether it carries a batch axis."""
    if arr.dtype.kind not in "fiub" or (arr.dtype.kind == "f") != (spec.dtype.kind == "f"):
        raise CalibrationError(
            f"{source}: input {spec.name!r} has dtype {arr.dtype}, the model wants {spec.dtype}"
        )
    if arr.ndim == 0 or len(arr) == 0:
        raise CalibrationError(f"{source}: input {spec.name!r} has no samples")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise CalibrationError(f"{source}: input {spec.name!r} holds NaN or Inf values")
    if arr.ndim == len(spec.shape) + 1:
        sample_shape, batched = arr.shape[1:], False
    elif arr.ndim == len(spec.shape):
        sample_shape, batched = arr.shape, True
    else:
        raise CalibrationError(
            f"{source}: input {spec.name!r} has shape {arr.shape}, the model wants {_fmt(spec.shape)} "
            "(with samples along the first axis)"
        )
    for got, want in zip(sample_shape[1:] if batched else sample_shape, spec.shape[1:] if batched else spec.shape,
                         strict=True):
        if want is not None and got != want:
            raise CalibrationError(
                f"{source}: input {spec.name!r} has shape {arr.shape}, the model wants {_fmt(spec.shape)}"
            )
    return arr.astype(spec.dtype, copy=False), batched


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _batch_size(specs: list[InputSpec], batched: bool, n: int, source: str) -> int:
    """Samples per run: the model's fixed batch size if it has one, else DEFAULT_BATCH."""
    if not batched:
        return 1
    fixed = {s.shape[0] for s in specs if s.shape and s.shape[0] is not None}
    if not fixed:
        return DEFAULT_BATCH
    size = fixed.pop()
    if fixed or n % size:
        raise CalibrationError(
            f"{source}: the model has a fixed batch size of {size}; give a multiple of {size} samples"
        )
    return size


def load_calibration(path: str, model: onnx.ModelProto) -> CalibrationSet:
    """Read and validate calibration data for ``model``; every problem is a CalibrationError."""
    raw = read_npz(path)
    return make_calibration_set(raw, model, path)


def make_calibration_set(raw: dict[str, np.ndarray], model: onnx.ModelProto, source: str) -> CalibrationSet:
    """Validate in-memory arrays keyed by input name against ``model``."""
    specs = model_inputs(model)
    missing = [s.name for s in specs if s.name not in raw]
    if missing:
        raise CalibrationError(
            f"{source}: no data for model input(s) {', '.join(missing)}; the file has "
            f"{', '.join(sorted(raw)) or 'nothing'}"
        )
    arrays, layouts = {}, set()
    for spec in specs:
        arrays[spec.name], batched = _check_array(spec, raw[spec.name], source)
        layouts.add(batched)
    counts = {len(a) for a in arrays.values()}
    if len(counts) > 1 or len(layouts) > 1:
        raise CalibrationError(f"{source}: inputs disagree on the number of samples or layout")
    batched = layouts.pop()
    n = counts.pop()
    return CalibrationSet(arrays, batched, _batch_size(specs, batched, n, source), source)


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


def resolve_calibration(calib: str | None, model_path: str, model: onnx.ModelProto) -> CalibrationSet:
    """The user's data, else ``calib.npz`` beside the model, else random inputs (warned)."""
    if calib:
        return load_calibration(calib, model)
    shipped = os.path.join(os.path.dirname(os.path.abspath(model_path)), "calib.npz")
    if os.path.isfile(shipped):
        logger.info("using the calibration data shipped beside the model: %s", shipped)
        return load_calibration(shipped, model)
    return random_calibration(model)
