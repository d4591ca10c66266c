"""The results cache: Phase 1 (and AdaRound) results keyed by the model, the data and the options.

A second run on the same model and calibration data with another budget or accuracy target
reuses them and skips straight to Phase 2. Entries are plain JSON and ``.npz`` files (no
pickle), written atomically; a changed model, data set or option gives a new key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os

import numpy as np
import onnx

from onnxmp.errors import OutputError
from onnxmp.model.files import save_json, write_atomic
from onnxmp.model.large import light_copy
from onnxmp.runtime.data import CalibrationSet

logger = logging.getLogger(__name__)

# Bump when what is cached changes meaning, so old entries are not misread.
CACHE_FORMAT = 2


@functools.cache
def code_digest() -> str:
    """A digest of onnxmp's own source files: results computed by other code are not reused
    (a version number is not bumped for every change that moves a result)."""
    digest = hashlib.sha256()
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # onnxmp/, every subpackage
    files = sorted(os.path.relpath(os.path.join(folder, name), package)
                   for folder, _, names in os.walk(package) for name in names if name.endswith(".py"))
    for name in files:
        with open(os.path.join(package, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]


def cache_key(model: onnx.ModelProto, data: CalibrationSet, options: dict) -> str:
    """A digest of the prepared model, every calibration array and the options that shape results."""
    digest = hashlib.sha256()
    digest.update(light_copy(model).SerializeToString(deterministic=True))
    for tensor in model.graph.initializer:  # the big ones' bytes, one at a time (a model may exceed 2 GB)
        if tensor.HasField("raw_data"):
            digest.update(tensor.raw_data)
    digest.update(data.digest())
    digest.update(json.dumps({"format": CACHE_FORMAT, "code": code_digest(), **options}, sort_keys=True).encode())
    return digest.hexdigest()[:24]


class ResultsCache:
    """One cache entry (a folder); ``root=None`` disables caching."""

    def __init__(self, root: str | None, key: str) -> None:
        self.folder = os.path.join(root, key) if root else None
        if self.folder:
            try:
                os.makedirs(self.folder, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create the cache folder {self.folder} ({exc.strerror}); "
                                  "pass --cache-dir elsewhere or --no-cache") from exc

    def _path(self, name: str) -> str | None:
        return os.path.join(self.folder, name) if self.folder else None

    def load_json(self, name: str) -> dict | None:
        path = self._path(name)
        if not path or not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            logger.warning("ignoring unreadable cache file %s", path)
            return None

    def save_json(self, name: str, record: dict) -> None:
        path = self._path(name)
        if path:
            save_json(record, path)

    def load_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        path = self._path(name)
        if not path or not os.path.isfile(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (OSError, ValueError):
            logger.warning("ignoring unreadable cache file %s", path)
            return None

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        path = self._path(name)
        if path:
            def write(tmp: str) -> None:
                with open(tmp, "wb") as handle:
                    np.savez(handle, **arrays)

            write_atomic(path, write)
