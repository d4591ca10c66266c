"""The cost model: BOPs (MACs × weight bits × activation bits) or weight memory (bits).

Conv, ConvTranspose, Gemm and MatMul all count, so transformers (whose linear layers are
MatMul) have something to mix. Groups without weights cost nothing under either metric.
"""

from __future__ import annotations

import dataclasses

from onnxmp.errors import ConfigError
from onnxmp.quant.calibrate import Calibration
from onnxmp.quant.candidates import Assignment, Candidate
from onnxmp.quant.groups import QuantPlan

METRICS = ("bops", "memory")


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Per-group MACs and weight counts, so any assignment's cost is a cheap sum."""

    macs: dict[int, int]  # group id -> MACs per sample of its weighted ops
    weights: dict[int, int]  # group id -> number of weights

    @classmethod
    def build(cls, plan: QuantPlan, calibration: Calibration, weight_sizes: dict[str, int]) -> CostModel:
        group_of = plan.group_of_weight()
        macs = {g.gid: 0 for g in plan.groups}
        weights = {g.gid: 0 for g in plan.groups}
        counted: set[str] = set()
        for op in plan.weighted_ops:
            gid = group_of[op.weight]
            macs[gid] += calibration.macs[op.node]
            if op.weight not in counted:  # a shared weight is stored once
                weights[gid] += weight_sizes[op.weight]
                counted.add(op.weight)
        return cls(macs, weights)

    def group_cost(self, gid: int, cand: Candidate, metric: str) -> float:
        if metric == "bops":
            return float(self.macs[gid] * cand.w_bits * cand.a_bits)
        if metric == "memory":
            return float(self.weights[gid] * cand.w_bits)
        raise ConfigError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")

    def total(self, assignment: Assignment, metric: str) -> float:
        return float(sum(self.group_cost(gid, cand, metric) for gid, cand in assignment.items()))

    def summary(self, assignment: Assignment) -> dict[str, float]:
        """Both metrics, in absolute units (BOPs per sample, bytes of weights)."""
        return {"bops": self.total(assignment, "bops"), "memory_bytes": self.total(assignment, "memory") / 8.0}

