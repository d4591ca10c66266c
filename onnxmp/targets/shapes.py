"""Fixing symbolic dimensions: edge toolchains (QNN HTP) take static shapes only."""

from __future__ import annotations

import onnx

from onnxmp.errors import ConfigError
from onnxmp.runtime.data import CalibrationSet


def parse_fixed_dims(text: str | None) -> dict[str, int]:
    """'batch=1,seq=128' → {'batch': 1, 'seq': 128}."""
    fixed: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, _, value = part.partition("=")
        if not name or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(f"--fix-dims wants name=positive integer pairs, like batch=1,seq=128; got {part!r}")
        fixed[name.strip()] = int(value)
    return fixed


def fix_symbolic_dims(model: onnx.ModelProto, data: CalibrationSet, fixed: dict[str, int],
                      batch: int = 1) -> onnx.ModelProto:
    """A copy whose inputs have static shapes: a symbolic dimension takes its value from
    ``fixed`` (by name), else ``batch`` for a batch axis, else the calibration samples' size;
    shapes inside the graph are inferred again from there."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    sample = data.first_sample()
    for value in graph.input:
        if value.name not in sample:
            continue
        shape = sample[value.name].shape
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_value > 0:
                continue
            name = dim.dim_param
            size = fixed.get(name) if name in fixed else (batch if axis == 0 and data.batched else shape[axis])
            dim.Clear()
            dim.dim_value = int(size)
    del graph.value_info[:]
    for value in graph.output:
        value.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(copy, strict_mode=False, data_prop=True)
    known = {v.name: v for v in inferred.graph.value_info} | {v.name: v for v in inferred.graph.output}
    for value in graph.output:
        if value.name in known and known[value.name].type.tensor_type.HasField("shape"):
            value.type.tensor_type.shape.CopyFrom(known[value.name].type.tensor_type.shape)
    graph.value_info.extend(inferred.graph.value_info)
    return copy
