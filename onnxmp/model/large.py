"""Models over protobuf's 2 GB limit: never serialize or copy their weights whole.

A model proto holding more than 2 GB cannot be serialized, so onnx's tools that go through bytes
(the checker, the version converter, shape inference) and onnxruntime's session from bytes
fail on it. For such models those tools run on a *light copy* (every field but the big
initializers' bytes), the bytes are then given to the result tensor by tensor, sessions are
made from a file with external data, and a copy of a model holds only the weights it keeps.
The source proto is never modified (protobuf arenas do not give cleared bytes back).
"""

from __future__ import annotations

import math
import os

import onnx
from google.protobuf.message import Message

LARGE_BYTES = 1 << 30  # above this much initializer data, a model takes the large-model paths
_BIG_TENSOR = 1 << 12  # initializers smaller than this are always copied (shape inference may read them)
_PACKED_4BIT = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, name)}


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """About the bytes a tensor's data takes, without touching them: under protobuf's upb backend
    ``ByteSize()`` serializes the message (two transient copies of a 256 MB weight) and reading
    ``raw_data`` makes one; a raw tensor's size follows from its shape and type."""
    if not tensor.HasField("raw_data") or tensor.data_type == onnx.TensorProto.STRING:
        return tensor.ByteSize()  # typed fields: small tensors in practice
    count = math.prod(tensor.dims)
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def is_large(model: onnx.ModelProto) -> bool:
    return is_large_size(sum(tensor_bytes(t) for t in model.graph.initializer))


def is_large_size(size: int) -> bool:
    """True when ``size`` bytes of weights take the large-model paths."""
    return size > LARGE_BYTES


def _copy_fields(src: Message, dst: Message, skip: set[str]) -> None:
    """Every set field but ``skip``, never reading a skipped one (reading ``raw_data`` makes a
    Python copy of the bytes: ``ListFields`` did, 2 x 256 MB of transient memory for one weight)."""
    for field in src.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            if len(getattr(src, field.name)):
                getattr(dst, field.name).extend(getattr(src, field.name))
        elif not src.HasField(field.name):
            continue
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(getattr(src, field.name))
        else:
            setattr(dst, field.name, getattr(src, field.name))


def _is_big(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("raw_data") and tensor_bytes(tensor) > _BIG_TENSOR


def light_copy(model: onnx.ModelProto, keep: set[str] | None = frozenset()) -> onnx.ModelProto:
    """A copy of ``model`` whose big initializers have no bytes, except those named in ``keep``
    (all of them when None): what a copy costs is what it keeps."""
    copy = onnx.ModelProto()
    _copy_fields(model, copy, {"graph"})
    _copy_fields(model.graph, copy.graph, {"initializer"})
    for tensor in model.graph.initializer:
        new = copy.graph.initializer.add()
        if _is_big(tensor) and keep is not None and tensor.name not in keep:
            _copy_fields(tensor, new, {"raw_data"})
        else:
            new.CopyFrom(tensor)
    return copy


def fill_from(model: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """In place: initializers of ``model`` without bytes get those of ``source``'s initializer of
    the same name (after a tool ran on a light copy)."""
    by_name = {t.name: t for t in source.graph.initializer}
    for tensor in model.graph.initializer:
        origin = by_name.get(tensor.name)
        if origin is not None and _is_big(origin) and not tensor.HasField("raw_data") and not tensor.external_data:
            tensor.raw_data = origin.raw_data


def save_with_external_data(model: onnx.ModelProto, path: str, data_path: str | None = None,
                            location: str | None = None) -> None:
    """Write ``model`` as ``path`` plus a data file (default ``path + '.data'``, named in the model
    as ``location``) holding its big initializers, one tensor at a time (works above 2 GB);
    ``model`` is unchanged."""
    data_path = data_path or path + ".data"
    location = location or os.path.basename(data_path)
    light = light_copy(model)
    big = {t.name: t for t in model.graph.initializer if _is_big(t)}
    with open(data_path, "wb") as data:
        for tensor in light.graph.initializer:
            if tensor.name not in big:
                continue
            raw = big[tensor.name].raw_data
            offset = data.tell()
            data.write(raw)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    with open(path, "wb") as handle:
        handle.write(light.SerializeToString())
