"""Phase 2 on hand-computable cases."""

from __future__ import annotations

import pytest

from onnxmp.errors import BudgetTooLowError
from onnxmp.quant.candidates import Candidate, parse_candidates
from onnxmp.search.pareto import choose_for_budget, group_ladder, pareto_curve, pick_for_budget

W4A8, W8A8, W8A16 = Candidate(4, 8), Candidate(8, 8), Candidate(8, 16)
CANDS = parse_candidates("W4A8,W8A8,W8A16")


def _bops(macs):
    return lambda g, c: macs[g] * c.w_bits * c.a_bits


def test_greedy_lowers_least_noise_per_saved_cost_first():
    # group 0: 100 MACs, very robust; group 1: 100 MACs, sensitive to W4.
    macs = {0: 100, 1: 100}
    base = 1e-4
    nsr = {(0, W8A16): base, (0, W8A8): 2e-4, (0, W4A8): 3e-4,
           (1, W8A16): base, (1, W8A8): 2e-4, (1, W4A8): 1e-1}
    curve = pareto_curve([0, 1], CANDS, nsr, base, _bops(macs))
    moves = [(p.moved[0], str(p.moved[2])) for p in curve.points[1:]]
    # Each W8A16→W8A8 saves 6400 for +1e-4; group 0's W4A8 saves 3200 for +1e-4; group 1's W4A8 costs +0.0998.
    assert moves == [(0, "W8A8"), (1, "W8A8"), (0, "W4A8"), (1, "W4A8")]
    costs = [p.cost for p in curve.points]
    assert costs == [25600, 19200, 12800, 9600, 6400]
    # Noise adds up: baseline + (3e-4 - base) from group 0 at W4A8 + (2e-4 - base) from group 1 at W8A8.
    assert curve.points[3].est_nsr == pytest.approx(4e-4)
    assert curve.assignment_at(3) == {0: W4A8, 1: W8A8}


def test_budget_choice_refines_a_greedy_step_that_undershoots():
    # Groups 0 and 1 carry the MACs; group 2 is tiny but sensitive. Budget 0.5 = uniform W8A8.
    macs = {0: 100, 1: 100, 2: 1}
    base = 1e-4
    nsr = {(0, W8A16): base, (0, W8A8): 2e-4, (0, W4A8): 1e-2,
           (1, W8A16): base, (1, W8A8): 2e-4, (1, W4A8): 2e-2,
           (2, W8A16): base, (2, W8A8): 5e-3, (2, W4A8): 9e-2}
    cost = _bops(macs)
    curve = pareto_curve([0, 1, 2], CANDS, nsr, base, cost)
    # Greedy: 0→W8A8, 1→W8A8 (0.5025 of the baseline), then 0→W4A8 jumps to 0.378.
    assert pick_for_budget(curve, 0.5) == 3
    assert curve.points[3].relative_cost == pytest.approx((3200 + 6400 + 128) / 25728)
    choice = choose_for_budget(curve, 0.5, nsr, cost)
    # Lowering group 2 instead lands exactly on the budget with half the added noise.
    assert choice.assignment == {0: W8A8, 1: W8A8, 2: W8A8} and choice.refined
    assert choice.relative_cost == pytest.approx(0.5)
    assert choice.est_nsr == pytest.approx(base + 1e-4 + 1e-4 + 4.9e-3)
    with pytest.raises(BudgetTooLowError, match="below the cheapest") as refused:
        pick_for_budget(curve, 0.1)
    cheapest = (3200 + 3200 + 32) / 25728  # every group at W4A8
    assert refused.value.cheapest == pytest.approx(cheapest)
    assert pick_for_budget(curve, refused.value.cheapest) == len(curve.points) - 1


def test_budget_fill_raises_groups_back_when_budget_is_left():
    macs = {0: 100, 1: 10}
    base = 1e-4
    nsr = {(0, W8A16): base, (0, W8A8): 2e-4, (0, W4A8): 1e-2,
           (1, W8A16): base, (1, W8A8): 1.01e-4, (1, W4A8): 1.1e-3}
    cost = _bops(macs)
    curve = pareto_curve([0, 1], CANDS, nsr, base, cost)
    # Greedy: group 1 → W8A8 (0.954), then group 0 → W8A8 (0.5): budget 0.9 picks the 0.5 point,
    # leaving room to raise group 1 back to W8A16 (0.545).
    assert pick_for_budget(curve, 0.9) == 2
    choice = choose_for_budget(curve, 0.9, nsr, cost)
    assert choice.assignment == {0: W8A8, 1: W8A16} and choice.refined
    assert choice.relative_cost == pytest.approx((6400 + 1280) / 14080)


def test_ladder_drops_equal_cost_candidates_for_weightless_groups():
    nsr = {(0, c): 1e-3 * (3 - i) for i, c in enumerate(CANDS)}
    assert group_ladder(0, CANDS, nsr, lambda g, c: 0.0) == [W8A16]


def test_a_candidate_slower_and_less_precise_than_another_leaves_the_ladder():
    """Under latency a layer may run slower at W8A8 than in float: W8A8 is then dominated by FP32
    and the group's ladder is FP32 alone; under BOPs more bits always cost more, nothing leaves."""
    from onnxmp.quant.candidates import Candidate
    from onnxmp.search.pareto import group_ladder

    w8a8, fp32 = Candidate(8, 8), Candidate.parse("FP32")
    nsr = {(0, w8a8): 1e-3, (0, fp32): 1e-9}
    assert group_ladder(0, (w8a8, fp32), nsr, lambda g, c: 1.5 if c == w8a8 else 1.0) == [fp32]
    assert group_ladder(0, (w8a8, fp32), nsr, lambda g, c: 0.4 if c == w8a8 else 1.0) == [fp32, w8a8]


def test_phase1_skips_only_what_no_budget_could_choose(monkeypatch):
    """On ``ort`` with a group whose W8A8 kernels time slower than float, Phase 1 measures neither
    that group's W8A8 nor any weightless group; the budget choices, made again from a Phase 1 that
    measured every candidate of every group, are the same."""
    import dataclasses

    from onnxmp import OptimizeConfig
    from onnxmp.pipeline import _family_curves, analyze
    from onnxmp.search.pareto import choose_for_budget
    from onnxmp.search.phase1 import sensitivity_list
    from onnxmp.targets import ort as ort_target

    def timings(model, plan, data, weights):  # the first weighted layer's group slower at W8A8, the others faster
        first = plan.group_of_weight()[plan.weighted_ops[0].weight]
        return {op.node: {"FP32": 1.0, "W8A8": 1.5 if plan.group_of_weight()[op.weight] == first else 0.4}
                for op in plan.weighted_ops}

    monkeypatch.setattr(ort_target, "PROFILE", dataclasses.replace(ort_target.PROFILE, measure_latency=timings))
    config = OptimizeConfig(calib="models/digits/calib.npz", cache_dir=None).resolved()
    analysis = analyze("models/digits/digits_cnn.onnx", config)
    measured = {(s.gid, s.candidate) for s in analysis.sensitivities if s.evaluated}
    slow = analysis.plan.group_of_weight()[analysis.plan.weighted_ops[0].weight]
    weightless = {g.gid for g in analysis.plan.groups if not g.weights}
    assert measured and not {gid for gid, _ in measured} & ({slow} | weightless)
    full = sensitivity_list(analysis.simulator, analysis.plan.groups, config.candidates, allowed=analysis.allowed)
    assert {(s.gid, s.candidate) for s in full.sensitivities if s.evaluated} > measured
    cost = lambda g, c: analysis.costs.group_cost(g, c, config.metric)  # noqa: E731

    def choices(sensitivities) -> list[dict]:
        table = {(s.gid, s.candidate): s.nsr for s in sensitivities}
        curve = _family_curves(analysis, (config.candidates,), table, cost)[0]
        return [choose_for_budget(curve, budget, table, cost).assignment for budget in (1.0, 0.97, 0.95, 0.93)]

    assert choices(analysis.sensitivities) == choices(full.sensitivities)
