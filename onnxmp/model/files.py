"""Atomic output: a failed or interrupted run never leaves a half-written file, and a written
file gets the permissions the user's umask gives (as any file they create), not the 0600 of a
temporary file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator

import onnx

from onnxmp.errors import OutputError
from onnxmp.model.large import is_large, save_with_external_data


def check_writable(path: str, source: str | None = None) -> None:
    """Fail early (before hours of work) if ``path`` cannot be written or would overwrite the input."""
    folder = os.path.dirname(os.path.abspath(path))
    if source and os.path.abspath(path) == os.path.abspath(source):
        raise OutputError(f"{path}: the output would overwrite the input model; choose another path")
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise OutputError(f"{path}: not writable; check the permissions or choose another path")


@contextlib.contextmanager
def _atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path``, renamed onto it only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".onnxmp-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    """The process's umask: from /proc where Linux shows it, else by setting it and straight back
    (which another thread could see for an instant)."""
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` only when it completes."""
    with _atomic_path(path) as tmp:
        writer(tmp)


def save_model(model: onnx.ModelProto, path: str) -> int:
    """Write the model atomically; one over 1 GB of weights goes with them in ``<path>.data``.
    Returns the bytes written (both files): what a user copies to the device."""
    if not is_large(model):
        write_atomic(path, lambda tmp: onnx.save(model, tmp))
        return os.path.getsize(path)
    data = path + ".data"
    with _atomic_path(path) as tmp_model, _atomic_path(data) as tmp_data:  # the data file lands first
        save_with_external_data(model, tmp_model, tmp_data, os.path.basename(data))
    return os.path.getsize(path) + os.path.getsize(data)


def model_file_bytes(path: str) -> int:
    """Bytes on disk of an ONNX file and the external-data files its tensors name: what a user
    copies to the device."""
    model = onnx.load(path, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(path))
    locations = {entry.value for tensor in _all_tensors(model.graph)
                 for entry in tensor.external_data if entry.key == "location"}
    return os.path.getsize(path) + sum(os.path.getsize(os.path.join(folder, loc)) for loc in locations
                                       if os.path.isfile(os.path.join(folder, loc)))


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_tensors(sub)


def save_json(record: dict, path: str) -> None:
    save_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")


def save_text(path: str, text: str) -> None:
    """Write ``text`` as UTF-8, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    write_atomic(path, write)
