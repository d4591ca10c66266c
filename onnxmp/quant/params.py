"""Quantization parameters of every quantizer at every bit-width it may take.

Computed lazily and cached: activation (scale, zero point) from the calibration statistics,
per-channel weight scales and integer weights, and int32 biases (scale = input scale × weight
scale, as integer kernels expect). The simulation and the export read the same values, so what
was measured is what ships. AdaRound plugs in through ``set_rounded``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from onnxmp.quant import numerics
from onnxmp.quant.calibrate import Calibration
from onnxmp.quant.groups import QuantPlan, WeightedOp, tied_scales, weight_array

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_KEEP_FLOAT_BYTES = 16 << 20  # float weights up to this size are cached


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """A weight at some bit-width: integers, per-channel scales, and their float product."""

    q: np.ndarray  # integers in the signed range of ``bits``, in the narrowest numpy type holding them
    scale: np.ndarray  # float32, one per channel along ``axis``
    axis: int
    bits: int

    def dequantized(self) -> np.ndarray:
        shape = [1] * self.q.ndim
        shape[self.axis] = -1
        values = self.q.astype(np.float32)
        values *= self.scale.reshape(shape)  # in place: one float copy of a big weight
        return values


@dataclasses.dataclass(frozen=True)
class QuantizedBias:
    q: np.ndarray  # int32
    scale: np.ndarray  # float32 per channel

    def dequantized(self) -> np.ndarray:
        return (self.q.astype(np.float32) * self.scale).astype(np.float32)


def compact_integers(q: np.ndarray, bits: int) -> np.ndarray:
    """Integers of ``bits`` bits in int8 (up to 8 bits) or int16: a quarter or half of int32."""
    return np.ascontiguousarray(q, dtype=np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32)


def round_to_nearest(w: np.ndarray, scale: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """Default weight rounding: nearest, ties to even, saturated."""
    return numerics.quantize_symmetric(w, scale, axis, bits)


class QuantParams:
    """Lazily computed, cached quantization parameters for one model, plan and calibration."""

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan, calibration: Calibration,
                 range_margin: float = 0.0, margin_ops: frozenset[str] | None = None) -> None:
        """``range_margin``: the ranges of the activations that ops of ``margin_ops`` write (None:
        every activation) widened by this fraction of their width at their ends other than 0 (a
        target whose kernels of those ops wrap around instead of saturating there)."""
        self.plan = plan
        self.calibration = calibration
        self.range_margin = range_margin
        self._model = model
        self._ops = {op.node: op for op in plan.weighted_ops}
        self._activations = set(plan.activations)
        self._tied = tied_scales(model.graph, self._activations)  # output -> the input whose scale it takes
        self._margined = self._activations if margin_ops is None else {
            o for n in model.graph.node if n.op_type in margin_ops for o in n.output} & self._activations
        self._weights: dict[tuple[str, int], QuantizedWeight] = {}
        self._floats: dict[str, np.ndarray] = {}
        self._rounded: dict[tuple[str, int], np.ndarray] = {}  # AdaRounded integers, by (weight, bits)
        self.range_method: dict[tuple[str, int], str] = {}  # (tensor, bits) -> method; default "mse"

    def float_weight(self, name: str) -> np.ndarray:
        """The float values of an initializer; big ones are read from the model each time rather
        than kept twice (a model's weights can be most of the memory)."""
        if name in self._floats:
            return self._floats[name]
        values = weight_array(self._model, name)
        if values.nbytes <= _KEEP_FLOAT_BYTES:
            self._floats[name] = values
        return values

    def activation(self, name: str, bits: int, method: str | None = None) -> tuple[np.float32, int]:
        name = self._tied.get(name, name)
        chosen = method or self.range_method.get((name, bits), "mse")
        return self.calibration.stats[name].params(bits, chosen, self.range_margin if name in self._margined else 0.0)

    def weight(self, op: WeightedOp, bits: int) -> QuantizedWeight:
        key = (op.weight, bits)
        if key not in self._weights:
            w = self.float_weight(op.weight)
            scale = numerics.weight_scales(w, op.axis, bits)
            q = self._rounded.get(key)
            if q is None:
                q = round_to_nearest(w, scale, op.axis, bits)
            self._weights[key] = QuantizedWeight(compact_integers(q, bits), scale, op.axis, bits)
        return self._weights[key]

    def set_rounded(self, weight: str, bits: int, q: np.ndarray) -> None:
        """Use these integers (e.g. from AdaRound, on the same scales) for ``weight`` at ``bits``."""
        self._rounded[(weight, bits)] = compact_integers(q, bits)
        self._weights.pop((weight, bits), None)

    def bias(self, op: WeightedOp, w_bits: int, a_bits: int) -> QuantizedBias | None:
        """The int32 bias of ``op``, or None when it would overflow int32 or its input is not
        quantized (then it stays float)."""
        if op.bias is None or op.activation not in self._activations:
            return None
        act_scale, _ = self.activation(op.activation, a_bits)
        scale = (np.float32(act_scale) * self.weight(op, w_bits).scale).astype(np.float32)
        scale = np.maximum(scale, np.float32(1e-30))
        q = np.round(self.float_weight(op.bias).astype(np.float64) / scale)
        if np.abs(q).max(initial=0) > INT32_MAX:
            return None
        return QuantizedBias(q.astype(np.int32), scale)
