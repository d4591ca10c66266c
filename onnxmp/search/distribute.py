"""Phase 1's groups measured in this process, in local worker processes or on Ray actors.

Each worker builds its own simulator from the same ingredients and measures whole groups;
``sensitivity.measure_group`` depends only on the group, so the results are the same whatever
process measured what, and in whatever order.
"""

from __future__ import annotations

import pickle

from onnxmp.quant.candidates import Candidate
from onnxmp.quant.groups import QuantizerGroup
from onnxmp.runtime.executor import map_with_state
from onnxmp.search.partial import DEFAULT_MAX_MEMORY
from onnxmp.search.sensitivity import GroupResult, Progress, measure_group
from onnxmp.search.simulate import Simulator


class GroupMeasurer:
    """Measures one group per call against the all-highest baseline (``baseline``), from the
    baseline's cut cache where the simulator holds one."""

    def __init__(self, simulator: Simulator, allowed: dict[int, tuple[Candidate, ...]], base_nsr: float) -> None:
        self.simulator = simulator
        self.allowed = allowed
        self.base_nsr = base_nsr
        self.groups = {g.gid: g for g in simulator.plan.groups}
        highest = next(iter(allowed.values()))[-1]
        self.baseline = {gid: highest for gid in self.groups}

    def __call__(self, gid: int) -> GroupResult:
        return measure_group(self.simulator, self.groups[gid], self.allowed[gid], self.base_nsr)


def measurer_from_payload(payload: bytes) -> GroupMeasurer:
    """A worker's measurer, from what ``measure_groups`` pickled (the executor's ``setup``); its
    cut cache lives as long as the worker (--max-memory 0: every evaluation runs the whole graph)."""
    ingredients, allowed, base_nsr, max_memory = pickle.loads(payload)
    measurer = GroupMeasurer(Simulator(*ingredients), allowed, base_nsr)
    if max_memory > 0:
        measurer.simulator.keep_baseline(measurer.baseline, max_memory)
    return measurer


def measure_groups(simulator: Simulator, groups: tuple[QuantizerGroup, ...],
                   allowed: dict[int, tuple[Candidate, ...]], base_nsr: float, workers: int = 1, max_memory: int | None = None,
                   progress: Progress | None = None, backend: str = "local") -> list[GroupResult]:
    """Every group's Phase 1 results, in group order (``allowed``: each group's candidates)."""
    total = len(groups)
    memory = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    if workers <= 1 and backend == "local":
        measurer = GroupMeasurer(simulator, allowed, base_nsr)
        results = []
        with simulator.from_cuts_of(measurer.baseline, memory):
            for done, group in enumerate(groups, 1):
                results.append(measurer(group.gid))
                if progress:
                    progress(done, total, group.label)
        return results
    share = memory // max(1, workers)  # a total budget
    payload = pickle.dumps((simulator.ingredients(), allowed, base_nsr, share))
    labels = {g.gid: g.label for g in groups}
    results = map_with_state(measurer_from_payload, payload, [g.gid for g in groups], workers, backend,
                             (lambda done, gid: progress(done, total, labels[gid])) if progress else None)
    simulator.evaluations += sum(r.evaluations for r in results)
    return results
