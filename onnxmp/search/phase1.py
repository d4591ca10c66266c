"""Phase 1: the sensitivity list over every group, most sensitive first, and each activation's
chosen range method (one group's measurement: ``sensitivity``; spreading groups over workers:
``distribute``)."""

from __future__ import annotations

import logging

from onnxmp.quant.candidates import Candidate
from onnxmp.quant.groups import QuantizerGroup
from onnxmp.search.distribute import measure_groups
from onnxmp.search.sensitivity import RANGE_METHODS, GroupResult, Phase1, Progress, reset_ranges
from onnxmp.search.simulate import Simulator

logger = logging.getLogger(__name__)


def collect(base_nsr: float, results: list[GroupResult]) -> Phase1:
    """The sensitivity list, most sensitive first, from every group's results (in any order)."""
    sensitivities = [s for r in results for s in r.sensitivities]
    sensitivities.sort(key=lambda r: (-r.nsr, r.gid, r.candidate))
    methods = {(n, b): m for r in results for n, b, m in r.range_method}
    return Phase1(base_nsr, sensitivities, methods, 1 + sum(r.evaluations for r in results))


def sensitivity_list(simulator: Simulator, groups: tuple[QuantizerGroup, ...], candidates: tuple[Candidate, ...],
                     progress: Progress | None = None, workers: int = 1, max_memory: int | None = None,
                     backend: str = "local", allowed: dict[int, tuple[Candidate, ...]] | None = None) -> Phase1:
    """Phase 1 over every group, in this process or in ``workers`` processes (same result).
    ``allowed``: per group, the candidates the target allows (default: all; each includes the
    most expensive one). Leaves each activation's chosen range method in ``simulator.params``."""
    reset_ranges(simulator.params, groups, candidates)
    highest = candidates[-1]
    base_nsr = simulator.nsr({g.gid: highest for g in groups})
    allowed = allowed or {g.gid: candidates for g in groups}
    results = measure_groups(simulator, groups, allowed, base_nsr, workers, max_memory, progress, backend)
    phase1 = collect(base_nsr, results)
    simulator.params.range_method.update(phase1.range_method)
    counts = {m: sum(v == m for v in phase1.range_method.values()) for m in RANGE_METHODS}
    logger.info("Phase 1: %d evaluations; activation ranges below 16 bits: %s", phase1.evaluations, counts)
    return phase1
