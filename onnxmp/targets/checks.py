"""Helpers the targets' verifications share: a missing runtime's message, a native library's
log lines, single-sample feeds and the output SQNR of a target's runs."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

from onnxmp.errors import ConfigError
from onnxmp.quant import numerics
from onnxmp.runtime.data import CalibrationSet


def runtime_missing(target: str, extra: str, exc: ImportError) -> ConfigError:
    return ConfigError(f"--target {target} needs its runtime, which is not installed ({exc}); "
                       f"install it with: pip install 'onnxmp[{extra}]'")


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Lines a native library writes to file descriptor 2 meanwhile (runtimes log there, not
    through Python); the list is filled when the block ends."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def single_samples(data: CalibrationSet) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of one sample each, batch axis kept (static-shape models take batch 1)."""
    for feeds in data.feeds():
        if not data.batched:
            yield feeds
            continue
        for i in range(len(next(iter(feeds.values())))):
            yield {name: value[i:i + 1] for name, value in feeds.items()}


def sqnr_of_runs(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], data: CalibrationSet,
                 reference: list[np.ndarray]) -> float:
    """Output SQNR (dB) of ``run`` over every sample against the float reference."""
    chunks: list[list[np.ndarray]] = [[] for _ in reference]
    for feeds in single_samples(data):
        for store, value in zip(chunks, run(feeds), strict=True):
            store.append(np.asarray(value, dtype=np.float32).reshape(-1))
    return numerics.sqnr_db(reference, [np.concatenate(c) for c in chunks])
