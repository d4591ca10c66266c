"""Intel's OpenVINO, compiled for its CPU plugin (``onnxmp[openvino]``).

Rules learned from the runtime itself (``openvino`` 2026.4, CPU plugin): QDQ Conv, Gemm and
MatMul with 8-bit weights and 8-bit activations run in integer precision (u8); 4-bit weights run
as integers only in FullyConnected layers (Gemm / MatMul, i4 weight compression), a 4-bit Conv
is decompressed and computed in floating point; 16-bit activations are not computed in integer
(the layer runs in bf16/f32 with the rounding emulated). So: activations 8 bits; weights 8 bits,
or 4 on Gemm and MatMul. Symbolic shapes are fine.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import onnx

from onnxmp.errors import TargetRefusedError
from onnxmp.runtime.data import CalibrationSet
from onnxmp.runtime.session import with_outputs
from onnxmp.targets.checks import runtime_missing, sqnr_of_runs
from onnxmp.targets.profile import TargetProfile

WEIGHTED_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"}
INTEGER = {"u8", "i8", "u4", "i4"}


def _runtime():
    try:
        import openvino
    except ImportError as exc:
        raise runtime_missing("openvino", "openvino", exc) from exc
    return openvino


def _info(op, key: str) -> str:
    info = op.get_rt_info()
    return info[key].astype(str) if key in info else ""


def compile_cpu(path: str):
    ov = _runtime()
    core = ov.Core()
    try:
        return core.compile_model(core.read_model(path), "CPU")
    except Exception as exc:  # OpenVINO's message is a stack of "Exception from <file>" lines: keep the cause
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from")]
        raise TargetRefusedError(f"OpenVINO cannot compile the model: {' '.join(lines)[:400] or str(exc)[:400]}") from exc


def layer_precisions(compiled) -> dict[str, list[str]]:
    """Weighted layers of the compiled model by runtime precision (e.g. {'u8': [...], 'bf16': [...]})."""
    by_precision: dict[str, list[str]] = collections.defaultdict(list)
    for op in compiled.get_runtime_model().get_ordered_ops():
        if _info(op, "layerType") in WEIGHTED_LAYERS:
            by_precision[_info(op, "runtimePrecision")].append(op.get_friendly_name())
    return dict(by_precision)


@dataclasses.dataclass(frozen=True)
class _Output:
    name: str


class OpenVinoSession:
    """onnxruntime's session interface over an OpenVINO CPU compiled model."""

    def __init__(self, path: str) -> None:
        self.compiled = compile_cpu(path)
        self._request = self.compiled.create_infer_request()
        self._outputs = [_Output(o.get_any_name()) for o in self.compiled.outputs]

    def get_outputs(self) -> list[_Output]:
        return self._outputs

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer(feeds)
        ports = {name: next(o for o in self.compiled.outputs if name in o.get_names())
                 for name in (names or [o.name for o in self._outputs])}
        return [np.asarray(result[port]) for port in ports.values()]


def _layers_with_weights(model: onnx.ModelProto) -> set[str]:
    """Names (node and output) of the Conv / Gemm / MatMul nodes whose second input is a
    dequantized constant: the layers the profile promises in integer precision. A MatMul of two
    activations (attention scores) is not one of them."""
    constants = {t.name for t in model.graph.initializer}
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants}
    return {name for n in model.graph.node
            if n.op_type in {"Conv", "ConvTranspose", "Gemm", "MatMul"} and len(n.input) > 1 and n.input[1] in dequantized
            for name in (n.name, n.output[0])}


def verify(model: onnx.ModelProto, data: CalibrationSet, observed: list[str], reference: list[np.ndarray],
           folder: str) -> dict:
    """Which layers OpenVINO's CPU plugin runs in integer precision (those with quantized weights
    must), and the output SQNR as it computes it (its default inference precision on this CPU)."""
    path = os.path.join(folder, "openvino_probe.onnx")
    onnx.save(with_outputs(model, observed), path)
    session = OpenVinoSession(path)
    precisions = layer_precisions(session.compiled)
    sqnr = sqnr_of_runs(lambda feeds: session.run(observed, feeds), data, reference)
    weighted = _layers_with_weights(model)
    layers = [(name, precision) for precision, names in precisions.items() for name in names]
    # OpenVINO names a layer after the ONNX node, plus suffixes such as "/WithoutBiases"
    has_weights = lambda layer: any(layer == w or layer.startswith(w + "/") for w in weighted)  # noqa: E731
    with_weights = [(n, p) for n, p in layers if has_weights(n)]
    not_integer = sorted(n for n, p in with_weights if p not in INTEGER)
    return {
        "target": "openvino", "device": "CPU", "weighted_layers": len(with_weights),
        "integer_layers": sum(p in INTEGER for _, p in with_weights),
        "precisions": {k: len(v) for k, v in precisions.items()},
        "not_integer": not_integer,
        "other_layers_not_integer": sorted(n for n, p in layers if not has_weights(n) and p not in INTEGER),
        "inference_precision": str(session.compiled.get_property("INFERENCE_PRECISION_HINT")),
        "sqnr_db": sqnr, "promise_kept": not not_integer,
        "broken_promise": None if not not_integer else (
            f"{len(not_integer)} weighted layer(s) do not run in integer precision: {', '.join(not_integer[:5])}"),
    }


PROFILE = TargetProfile(
    name="openvino",
    summary="OpenVINO CPU computes in integer 8-bit activations with 8-bit weights, or 4-bit on Gemm/MatMul",
    default_weight_bits=frozenset({8}),
    activation_bits=frozenset({8}),
    weight_bits={"Gemm": frozenset({4, 8}), "MatMul": frozenset({4, 8})},
    default_candidates="W4A8,W8A8",
    # LayerNorm, GELU, Softmax, ... decompositions stay float, as NNCF leaves them for this runtime
    # (8-bit quantizers inside a LayerNorm's variance or a GELU break transformers)
    float_units=True,
    extra="openvino",
    verify=verify,
    open_session=OpenVinoSession,
)
