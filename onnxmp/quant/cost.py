"""The cost model: BOPs (MACs × weight bits × activation bits), weight memory (bits), or the
latency a runtime was measured to take per MAC of each op type at each candidate.

Conv, ConvTranspose, Gemm and MatMul all count, so transformers (whose linear layers are
MatMul) have something to mix. Groups without weights cost nothing under any metric: their
quantize/dequantize pairs are not counted (under ``latency``, placement keeps those few: a
runtime's own integer ops between its integer kernels).
"""

from __future__ import annotations

import dataclasses

from onnxmp.errors import ConfigError
from onnxmp.quant.calibrate import Calibration
from onnxmp.quant.candidates import Assignment, Candidate
from onnxmp.quant.groups import QuantPlan

METRICS = ("bops", "memory", "latency")
METRIC_HELP = ("bops: MACs x weight bits x activation bits; memory: weight bits; latency: MACs x the time per MAC "
               "the target's runtime was measured to take for that op type at that candidate, relative to float "
               "(targets with a latency table: ort)")


@dataclasses.dataclass(frozen=True)
class LatencyTable:
    """Time per MAC of each weighted op type at each candidate, relative to the same op in float,
    as measured on one runtime. ``factors[op_type][str(candidate)]``; candidates not listed take
    ``factors[op_type]["quantized"]``; FP32 is 1 by definition."""

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
    ops: dict[int, tuple[tuple[str, int], ...]] = dataclasses.field(default_factory=dict)  # (op type, MACs)
    latency: LatencyTable | None = None

    @classmethod
    def build(cls, plan: QuantPlan, calibration: Calibration, weight_sizes: dict[str, int],
              latency: LatencyTable | None = None) -> CostModel:
        group_of = plan.group_of_weight()
        macs = {g.gid: 0 for g in plan.groups}
        weights = {g.gid: 0 for g in plan.groups}
        ops: dict[int, list[tuple[str, int]]] = {g.gid: [] for g in plan.groups}
        counted: set[str] = set()
        for op in plan.weighted_ops:
            gid = group_of[op.weight]
            macs[gid] += calibration.macs[op.node]
            ops[gid].append((op.op_type, calibration.macs[op.node]))
            if op.weight not in counted:  # a shared weight is stored once
                weights[gid] += weight_sizes[op.weight]
                counted.add(op.weight)
        return cls(macs, weights, {g: tuple(v) for g, v in ops.items()}, latency)

    def group_cost(self, gid: int, cand: Candidate, metric: str) -> float:
        if metric == "bops":
            return float(self.macs[gid] * cand.w_bits * cand.a_bits)
        if metric == "memory":
            return float(self.weights[gid] * cand.w_bits)
        if metric == "latency":
            if self.latency is None:
                raise ConfigError("--metric latency needs a target whose runtime's latency was measured (--target ort)")
            return float(sum(macs * self.latency.factor(op_type, cand) for op_type, macs in self.ops[gid]))
        raise ConfigError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")

    def total(self, assignment: Assignment, metric: str) -> float:
        return float(sum(self.group_cost(gid, cand, metric) for gid, cand in assignment.items()))

    def summary(self, assignment: Assignment) -> dict[str, float]:
        """Both metrics, in absolute units (BOPs per sample, bytes of weights)."""
        return {"bops": self.total(assignment, "bops"), "memory_bytes": self.total(assignment, "memory") / 8.0}
