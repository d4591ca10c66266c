"""Phase 1: the SQNR sensitivity list.

For every group and candidate, quantize that group at the candidate with every other group at
the highest candidate, and measure the output SQNR against the float model. Evaluations that
cannot differ are skipped: a group without weights only sees the activation bits, a group
without activations only the weight bits, and the baseline candidate is measured once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from onnxmp import quant
from onnxmp.candidates import Candidate
from onnxmp.groups import QuantizerGroup
from onnxmp.simulate import Simulator

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """Output quality with one group at one candidate (others at the highest)."""

    gid: int
    candidate: Candidate
    nsr: float
    evaluated: bool  # False when the value was reused from an equivalent evaluation

    @property
    def sqnr_db(self) -> float:
        return quant.nsr_to_db(self.nsr)


def effective_key(group: QuantizerGroup, cand: Candidate) -> tuple[int | None, int | None]:
    """What a candidate changes in a group: its weight bits if it has weights, activation bits
    if it has activations."""
    return (cand.w_bits if group.weights else None, cand.a_bits if group.activations else None)


def sensitivity_list(simulator: Simulator, groups: tuple[QuantizerGroup, ...],
                     candidates: tuple[Candidate, ...], progress: Progress | None = None
                     ) -> tuple[float, list[Sensitivity]]:
    """(baseline NSR, every group × candidate measurement), most sensitive first."""
    highest = candidates[-1]
    baseline = {g.gid: highest for g in groups}
    base_nsr = simulator.nsr(baseline)
    todo = [(g, c) for g in groups for c in candidates]
    results: list[Sensitivity] = []
    for done, (group, cand) in enumerate(todo, 1):
        key = effective_key(group, cand)
        if key == effective_key(group, highest):
            results.append(Sensitivity(group.gid, cand, base_nsr, False))
        else:
            twin = next((r for r in results if r.gid == group.gid and r.evaluated
                         and effective_key(group, r.candidate) == key), None)
            if twin is not None:
                results.append(Sensitivity(group.gid, cand, twin.nsr, False))
            else:
                nsr = simulator.nsr({**baseline, group.gid: cand})
                results.append(Sensitivity(group.gid, cand, nsr, True))
        if progress:
            progress(done, len(todo), f"{group.label} {cand}")
    results.sort(key=lambda r: (-r.nsr, r.gid, r.candidate))
    return base_nsr, results
