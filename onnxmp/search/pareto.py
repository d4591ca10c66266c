"""Phase 2: the Pareto greedy curve, and picking a point on it for a budget.

Start with every group at its most expensive candidate. Each step lowers the one group whose
next-cheaper candidate adds the least estimated noise per unit of cost saved. Noise from
different groups is taken as additive (independent quantization noise): the estimated NSR of
an assignment is the baseline NSR plus, per group, what that group alone added in Phase 1.
Per group, candidates that cost no less than a more accurate one are dominated and left out
of its ladder (for example the activation bits of a group that has no weights under BOPs), so
every step of the curve saves cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from onnxmp.errors import BudgetTooLowError, ConfigError
from onnxmp.quant.candidates import Candidate

CostFn = Callable[[int, Candidate], float]


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """One point of the curve: the assignment after ``step`` moves."""

    step: int
    cost: float
    relative_cost: float
    est_nsr: float
    moved: tuple[int, Candidate, Candidate] | None  # (group id, from, to); None at the start


@dataclasses.dataclass(frozen=True)
class ParetoCurve:
    start: dict[int, Candidate]
    points: tuple[CurvePoint, ...]
    ladders: dict[int, list[Candidate]]
    base_nsr: float
    baseline_cost: float  # what relative costs are fractions of (the all-highest assignment's cost)
    candidates: tuple[Candidate, ...] = ()  # the candidates the curve was built from (one family of them)

    def assignment_at(self, index: int) -> dict[int, Candidate]:
        """Replay the first ``index`` moves from the all-highest start."""
        assignment = dict(self.start)
        for point in self.points[1:index + 1]:
            gid, _, to = point.moved
            assignment[gid] = to
        return assignment


def group_ladder(gid: int, candidates: tuple[Candidate, ...], nsr: dict[tuple[int, Candidate], float],
                 cost: CostFn) -> list[Candidate]:
    """The group's candidates from most to least expensive, each strictly cheaper than the one
    before and, among equal-cost candidates, the one with the most bits (a measured difference
    between equal-cost candidates of a weightless group is interaction noise, not precision).
    A candidate that costs no less than one with at least its bits is left out (under latency, a
    layer that runs slower at W8A8 than in float): the ladder starts at the most precise one. The
    ladder depends on the costs alone (``nsr`` only orders candidates that differ in nothing else),
    so it is known before Phase 1 measures anything."""
    def dominated(c: Candidate) -> bool:
        return any(o != c and cost(gid, o) <= cost(gid, c) and o.w_bits >= c.w_bits and o.a_bits >= c.a_bits
                   for o in candidates)

    ordered = sorted(candidates, key=lambda c: (-cost(gid, c), -c.w_bits, -c.a_bits, nsr.get((gid, c), 0.0)))
    ladder: list[Candidate] = []
    for cand in ordered:
        if dominated(cand) and any(not dominated(o) for o in candidates):
            continue
        if not ladder or cost(gid, cand) < cost(gid, ladder[-1]):
            ladder.append(cand)
    return ladder


def pareto_curve(gids: list[int], candidates: tuple[Candidate, ...], nsr: dict[tuple[int, Candidate], float],
                 base_nsr: float, cost: CostFn, allowed: dict[int, tuple[Candidate, ...]] | None = None,
                 baseline_cost: float | None = None) -> ParetoCurve:
    """The greedy curve from all-highest down to the cheapest reachable assignment.

    ``cost(gid, cand)`` is the group's cost at a candidate; ``nsr[(gid, cand)]`` its Phase 1
    noise-to-signal ratio; ``allowed[gid]`` narrows a group's candidates (a target's rules). A
    measurement below the baseline (a lower bit-width that happened to cancel other noise) counts
    as adding no noise, so the estimate never improves by quantizing. Relative costs are fractions
    of ``baseline_cost`` (default: the curve's own start), so that curves over different candidate
    families (one activation width each) are read against one budget.
    """
    nsr = {key: max(value, base_nsr) for key, value in nsr.items()}
    ladders = {g: group_ladder(g, (allowed or {}).get(g, candidates), nsr, cost) for g in gids}
    position = {g: 0 for g in gids}
    start = {g: ladders[g][0] for g in gids}
    baseline_cost = baseline_cost or sum(cost(g, start[g]) for g in gids) or 1.0
    total_cost = float(sum(cost(g, start[g]) for g in gids))
    est = base_nsr + sum(nsr[(g, start[g])] - base_nsr for g in gids)
    points = [CurvePoint(0, total_cost, total_cost / baseline_cost, est, None)]
    while True:
        best = None
        for g in gids:
            if position[g] + 1 >= len(ladders[g]):
                continue
            cur, nxt = ladders[g][position[g]], ladders[g][position[g] + 1]
            saving = cost(g, cur) - cost(g, nxt)
            ratio = (nsr[(g, nxt)] - nsr[(g, cur)]) / saving
            if best is None or ratio < best[0]:
                best = (ratio, g, cur, nxt)
        if best is None:
            break
        _, g, cur, nxt = best
        position[g] += 1
        total_cost -= cost(g, cur) - cost(g, nxt)
        est += nsr[(g, nxt)] - nsr[(g, cur)]
        points.append(CurvePoint(len(points), total_cost, total_cost / baseline_cost, est, (g, cur, nxt)))
    return ParetoCurve(start, tuple(points), ladders, base_nsr, baseline_cost, tuple(candidates))


@dataclasses.dataclass(frozen=True)
class Choice:
    """The assignment picked for a budget; ``curve_index`` is the greedy point it started from."""

    assignment: dict[int, Candidate]
    cost: float
    relative_cost: float
    est_nsr: float
    curve_index: int
    refined: bool  # True when the budget-filling step changed the greedy point


def pick_for_budget(curve: ParetoCurve, budget: float) -> int:
    """Index of the first (most accurate) point whose relative cost is within ``budget``."""
    if not budget > 0:
        raise ConfigError(f"--budget must be a positive fraction of the baseline cost, got {budget}")
    for index, point in enumerate(curve.points):
        if point.relative_cost <= budget + 1e-9:
            return index
    cheapest = curve.points[-1].relative_cost
    raise BudgetTooLowError(
        f"--budget {budget} is below the cheapest assignment the candidates allow "
        f"({cheapest:.3f} of the baseline); raise the budget or add lower candidates", cheapest)


def _estimate(assignment: dict[int, Candidate], nsr: dict, base_nsr: float) -> float:
    return base_nsr + sum(nsr[(g, c)] - base_nsr for g, c in assignment.items())


def choose_for_budget(curve: ParetoCurve, budget: float, nsr: dict[tuple[int, Candidate], float],
                      cost: CostFn) -> Choice:
    """The best assignment within ``budget`` found around the greedy curve.

    The greedy's first point within budget can undershoot it by a whole step. So also try,
    from the point just above the budget, every single move down any group's ladder that lands
    within budget, keep the lowest estimated noise, then spend what budget is left raising
    groups back (most noise removed per unit of cost first).
    """
    index = pick_for_budget(curve, budget)
    baseline_cost = curve.baseline_cost
    limit = budget * baseline_cost * (1 + 1e-9)
    total = lambda a: sum(cost(g, c) for g, c in a.items())  # noqa: E731
    best = curve.assignment_at(index)
    if index > 0:
        above = curve.assignment_at(index - 1)
        for g, ladder in curve.ladders.items():
            for lower in ladder[ladder.index(above[g]) + 1:]:
                trial = {**above, g: lower}
                if total(trial) <= limit and _estimate(trial, nsr, curve.base_nsr) < _estimate(best, nsr, curve.base_nsr):
                    best = trial
    best = _fill_budget(best, curve.ladders, nsr, cost, limit)
    est = _estimate(best, nsr, curve.base_nsr)
    refined = best != curve.assignment_at(index)
    return Choice(best, float(total(best)), float(total(best)) / baseline_cost, est, index, refined)


def _fill_budget(assignment: dict[int, Candidate], ladders: dict[int, list[Candidate]], nsr: dict,
                 cost: CostFn, limit: float) -> dict[int, Candidate]:
    """Raise groups one rung at a time while the budget allows, best noise saving per cost first."""
    current = dict(assignment)
    spent = sum(cost(g, c) for g, c in current.items())
    while True:
        options = []
        for g, ladder in ladders.items():
            pos = ladder.index(current[g])
            if pos == 0:
                continue
            up = ladder[pos - 1]
            extra = cost(g, up) - cost(g, current[g])
            gain = nsr[(g, current[g])] - nsr[(g, up)]
            if spent + extra <= limit and gain > 0:
                options.append((gain / extra, g, up, extra))
        if not options:
            return current
        _, g, up, extra = max(options, key=lambda o: (o[0], -o[1]))
        current[g] = up
        spent += extra
