"""Phase 1, one group at a time: its SQNR at every candidate, and its activations' range method.

For every group and candidate, quantize that group at the candidate with every other group at
the highest candidate, and measure the output SQNR against the float model. Evaluations that
cannot differ are skipped: a group without weights only sees the activation bits, a group
without activations only the weight bits, and the baseline candidate is measured once.

Below 16 bits an activation's range is either its min/max or the MSE-optimal clip. The one to
use is decided here, per group and activation bit-width, by output SQNR: at the most expensive
candidate with those activation bits, the group is measured with both (one extra evaluation,
skipped where the two ranges practically agree) and keeps the better. While one group is
measured every other group keeps min/max, so each group's measurements depend on nothing
measured before them: groups can be measured in any order, in any process.

Every group's evaluations differ from the baseline only from that group on, so the simulator
keeps the baseline's values at cut points and runs only the rest of the graph (``partial``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from onnxmp.quant import numerics
from onnxmp.quant.candidates import Candidate
from onnxmp.quant.groups import QuantizerGroup
from onnxmp.quant.params import QuantParams
from onnxmp.search.simulate import Simulator

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
RANGE_METHODS = ("minmax", "mse")
SAME_RANGE_TOLERANCE = 0.02  # fraction of the range width under which two ranges count as one


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """Output quality with one group at one candidate (others at the highest)."""

    gid: int
    candidate: Candidate
    nsr: float
    evaluated: bool  # False when the value was reused from an equivalent evaluation

    @property
    def sqnr_db(self) -> float:
        return numerics.nsr_to_db(self.nsr)


@dataclasses.dataclass(frozen=True)
class GroupResult:
    """What Phase 1 measured for one group."""

    gid: int
    sensitivities: tuple[Sensitivity, ...]
    range_method: tuple[tuple[str, int, str], ...]  # (tensor, bits, method) for each bits < 16
    evaluations: int


@dataclasses.dataclass(frozen=True)
class Phase1:
    """The sensitivity list (most sensitive first), the baseline NSR and the range methods."""

    base_nsr: float
    sensitivities: list[Sensitivity]
    range_method: dict[tuple[str, int], str]
    evaluations: int


def effective_key(group: QuantizerGroup, cand: Candidate) -> tuple[int | None, int | None]:
    """What a candidate changes in a group: its weight bits if it has weights, activation bits
    if it has activations."""
    return (cand.w_bits if group.weights else None, cand.a_bits if group.activations else None)


def low_activation_bits(candidates: tuple[Candidate, ...]) -> dict[int, Candidate]:
    """Each activation bit-width below 16 → the most expensive candidate with it (candidates
    sort cheapest first)."""
    return {c.a_bits: c for c in candidates if c.a_bits < 16}


def reset_ranges(params: QuantParams, groups: tuple[QuantizerGroup, ...], candidates: tuple[Candidate, ...]) -> None:
    """Every activation at min/max below 16 bits: the state each group is measured against."""
    for group in groups:
        for name in group.activations:
            for bits in low_activation_bits(candidates):
                params.range_method[(name, bits)] = "minmax"


def nearly_same_range(params: QuantParams, name: str, bits: int, tolerance: float = SAME_RANGE_TOLERANCE) -> bool:
    """True when the MSE clip changes the min/max range by less than ``tolerance`` of its width."""
    s_mm, z_mm = params.activation(name, bits, "minmax")
    s_mse, z_mse = params.activation(name, bits, "mse")
    width = float(s_mm) * (2**bits - 1)
    lo_mm, lo_mse = -z_mm * float(s_mm), -z_mse * float(s_mse)
    hi_mm, hi_mse = lo_mm + width, lo_mse + float(s_mse) * (2**bits - 1)
    return abs(lo_mm - lo_mse) + abs(hi_mm - hi_mse) < tolerance * max(width, 1e-12)


def measure_group(simulator: Simulator, group: QuantizerGroup, candidates: tuple[Candidate, ...],
                  base_nsr: float) -> GroupResult:
    """Choose the group's range methods, then measure it at every candidate. Leaves the
    simulator's range methods as it found them."""
    params = simulator.params
    highest = candidates[-1]
    baseline = {g.gid: highest for g in simulator.plan.groups}
    measured: dict[tuple, float] = {effective_key(group, highest): base_nsr}
    evaluations = 0

    def evaluate(cand: Candidate) -> float:
        nonlocal evaluations
        evaluations += 1
        return simulator.nsr({**baseline, group.gid: cand})

    chosen: dict[tuple[str, int], str] = {}
    for bits, cand in sorted(low_activation_bits(candidates).items()) if group.activations else ():
        key = effective_key(group, cand)
        minmax = measured.get(key)
        if minmax is None:
            minmax = evaluate(cand)
        method, nsr = "minmax", minmax
        if not all(nearly_same_range(params, name, bits) for name in group.activations):
            _set_method(params, group, bits, "mse")
            mse = evaluate(cand)
            if mse < minmax:
                method, nsr = "mse", mse
        _set_method(params, group, bits, method)
        chosen.update({(name, bits): method for name in group.activations})
        measured[key] = nsr
    fresh = set(measured) - {effective_key(group, highest)}
    results = []
    for cand in candidates:
        key = effective_key(group, cand)
        if key not in measured:
            measured[key] = evaluate(cand)
            fresh.add(key)
        results.append(Sensitivity(group.gid, cand, measured[key], key in fresh))
        fresh.discard(key)
    for bits in low_activation_bits(candidates) if group.activations else ():
        _set_method(params, group, bits, "minmax")
    return GroupResult(group.gid, tuple(results), tuple((n, b, m) for (n, b), m in sorted(chosen.items())),
                       evaluations)


def _set_method(params: QuantParams, group: QuantizerGroup, bits: int, method: str) -> None:
    for name in group.activations:
        params.range_method[(name, bits)] = method
