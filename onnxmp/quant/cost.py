"""The cost model: BOPs (MACs × weight bits × activation bits), weight memory (bits), bytes
(weights and quantized activations at their widths: what a deployment moves), or the latency a
runtime was measured to take per MAC of each op type at each candidate.

Conv, ConvTranspose, Gemm and MatMul all count, so transformers (whose linear layers are
MatMul) have something to mix. Under ``bops``, ``memory`` and ``latency`` a group without weights
costs nothing: its quantize/dequantize pairs are not counted (under ``latency``, placement keeps
those few: a runtime's own integer ops between its integer kernels). Under ``bytes`` every
quantized activation counts at its width per sample (a float one at 32 bits), so no quantizer
is free: on an accelerator a 16-bit tensor moves twice the bytes of an 8-bit one.
"""

from __future__ import annotations

import dataclasses

from onnxmp.errors import ConfigError
from onnxmp.quant.candidates import Assignment, Candidate
from onnxmp.quant.groups import QuantPlan

METRICS = ("bops", "memory", "bytes", "latency")
# a measured W8A8 layer counts as faster than float only where it saves at least this fraction of
# its float time: between passes on a shared 2-core machine a layer's ratio moved by up to 0.18
# (ppocr_det, three passes: p2o.Conv.34 0.71-0.89, p2o.Conv.2 0.94-1.05); a layer inside that
# band would join the cheapest point in one run and not the next (p2o.Conv.2: 32.0 against 25.5 dB
# measured, for an estimated 0.2% of the float time)
MIN_MEASURED_SAVING = 0.2
METRIC_HELP = ("bops: MACs x weight bits x activation bits; memory: weight bits; bytes: weight bytes plus, per "
               "sample, every quantized activation tensor's bytes at its width (float: 4 bytes an element); latency: "
               "MACs x each layer's time relative to float on the target's runtime, W8A8 measured layer by layer on "
               "this machine, other candidates their op type's measured factor (targets: ort)")


@dataclasses.dataclass(frozen=True)
class LatencyTable:
    """Time per MAC of each weighted op type at each candidate, relative to the same op in float,
    as measured on one runtime (used where a layer's own time was not measured):
    ``factors[op_type][str(candidate)]``; candidates not listed take ``factors[op_type]["quantized"]``;
    FP32 is 1 by definition."""

    factors: dict[str, dict[str, float]]
    source: str  # what measured it

    def factor(self, op_type: str, cand: Candidate) -> float:
        if cand.is_float:
            return 1.0
        table = self.factors.get(op_type, {})
        return table.get(str(cand), table.get("quantized", 1.0))


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Per-group MACs and weight counts, so any assignment's cost is a cheap sum."""

    macs: dict[int, int]  # group id -> MACs per sample of its weighted ops
    weights: dict[int, int]  # group id -> number of weights
    ops: dict[int, tuple[tuple[str, str, int], ...]] = dataclasses.field(default_factory=dict)  # (node, type, MACs)
    latency: LatencyTable | None = None
    layer_ms: dict[str, dict[str, float]] | None = None  # node -> {"FP32": ms, "W8A8": ms}, measured
    activations: dict[int, int] = dataclasses.field(default_factory=dict)  # group id -> activation elements per sample

    @classmethod
    def build(cls, plan: QuantPlan, layer_macs: dict[str, int], weight_sizes: dict[str, int],
              latency: LatencyTable | None = None, layer_ms: dict[str, dict[str, float]] | None = None,
              activation_elements: dict[str, int] | None = None) -> CostModel:
        """``activation_elements``: elements per sample of each activation tensor (metric bytes)."""
        group_of = plan.group_of_weight()
        macs = {g.gid: 0 for g in plan.groups}
        weights = {g.gid: 0 for g in plan.groups}
        ops: dict[int, list[tuple[str, str, int]]] = {g.gid: [] for g in plan.groups}
        counted: set[str] = set()
        for op in plan.weighted_ops:
            gid = group_of[op.weight]
            macs[gid] += layer_macs[op.node]
            ops[gid].append((op.node, op.op_type, layer_macs[op.node]))
            if op.weight not in counted:  # a shared weight is stored once
                weights[gid] += weight_sizes[op.weight]
                counted.add(op.weight)
        sizes = activation_elements or {}
        acts = {g.gid: sum(sizes.get(a, 0) for a in g.activations) for g in plan.groups}
        return cls(macs, weights, {g: tuple(v) for g, v in ops.items()}, latency, layer_ms, acts)

    def group_cost(self, gid: int, cand: Candidate, metric: str) -> float:
        if metric == "bops":
            return float(self.macs[gid] * cand.w_bits * cand.a_bits)
        if metric == "memory":
            return float(self.weights[gid] * cand.w_bits)
        if metric == "bytes":
            return (self.weights[gid] * cand.w_bits + self.activations.get(gid, 0) * cand.a_bits) / 8.0
        if metric == "latency":
            if self.latency is None:
                raise ConfigError("--metric latency needs a target whose runtime's latency was measured (--target ort)")
            return float(sum(self._layer_time(node, op_type, macs, cand) for node, op_type, macs in self.ops[gid]))
        raise ConfigError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")

    def _layer_time(self, node: str, op_type: str, macs: int, cand: Candidate) -> float:
        """A layer's time at a candidate, in float-MAC units: its MACs times the candidate's time
        relative to float, for W8A8 the ratio measured on the layer itself (rounded to a tenth,
        and no less than 1 where it saves less than ``MIN_MEASURED_SAVING``, so that timing noise
        rarely changes a choice), else its op type's factor."""
        measured = (self.layer_ms or {}).get(node)
        if measured is not None and not cand.is_float and str(cand) in measured:
            ratio = round(measured[str(cand)] / max(measured["FP32"], 1e-9), 1)
            return macs * (ratio if ratio <= 1 - MIN_MEASURED_SAVING else max(ratio, 1.0))
        return macs * self.latency.factor(op_type, cand)

    def total(self, assignment: Assignment, metric: str) -> float:
        return float(sum(self.group_cost(gid, cand, metric) for gid, cand in assignment.items()))

    def summary(self, assignment: Assignment) -> dict[str, float]:
        """Both metrics, in absolute units (BOPs per sample, bytes of weights)."""
        return {"bops": self.total(assignment, "bops"), "memory_bytes": self.total(assignment, "memory") / 8.0}
