"""The JSON record of a run: what was chosen, why, and how it measured."""

from __future__ import annotations

import onnxmp
from onnxmp import quant


def _group_entry(group, cand, costs) -> dict:
    return {
        "group": group.gid,
        "label": group.label,
        "candidate": str(cand),
        "nodes": list(group.nodes),
        "activations": list(group.activations),
        "weights": list(group.weights),
        "macs": costs.macs[group.gid],
        "num_weights": costs.weights[group.gid],
    }


def build_record(*, input_path, config, plan, calibration, costs, sensitivities, base_nsr, curve,
                 choice, chosen_nsr, measured, uniform, shipped, timings, num_samples, evaluations) -> dict:
    """Everything a user needs to trust (or question) the result, as plain JSON types."""
    assignment = choice.assignment
    baseline_cost = curve.points[0].cost or 1.0
    groups = {g.gid: g for g in plan.groups}
    return {
        "onnxmp_version": onnxmp.__version__,
        "input": input_path,
        "options": {
            "candidates": [str(c) for c in config.candidates],
            "budget": config.budget,
            "metric": config.metric,
            "calibration_samples": num_samples,
        },
        "baseline": {"candidate": str(config.candidates[-1]), "sqnr_db": quant.nsr_to_db(base_nsr),
                     "cost": baseline_cost, **costs.summary(curve.start)},
        "chosen": {
            "curve_index": choice.curve_index,
            "refined": choice.refined,
            "relative_cost": choice.relative_cost,
            "estimated_sqnr_db": quant.nsr_to_db(choice.est_nsr),
            "simulated_sqnr_db": quant.nsr_to_db(chosen_nsr),
            **shipped,
            **costs.summary(assignment),
            "mix": _mix(assignment),
        },
        "groups": [_group_entry(groups[gid], cand, costs) for gid, cand in sorted(assignment.items())],
        "uniform": {name: {**u, "relative_cost": u["cost"] / baseline_cost, } for name, u in uniform.items()},
        "sensitivity": [
            {"group": s.gid, "label": groups[s.gid].label, "candidate": str(s.candidate),
             "sqnr_db": s.sqnr_db, "evaluated": s.evaluated}
            for s in sensitivities
        ],
        "pareto_curve": [
            {"step": p.step, "cost": p.cost, "relative_cost": p.relative_cost,
             "estimated_sqnr_db": quant.nsr_to_db(p.est_nsr),
             "measured_sqnr_db": quant.nsr_to_db(measured[p.step]) if p.step in measured else None,
             "moved": None if p.moved is None else {"group": p.moved[0], "from": str(p.moved[1]), "to": str(p.moved[2])}}
            for p in curve.points
        ],
        "skipped": [{"name": s.name, "reason": s.reason} for s in plan.skips],
        "counts": {"groups": len(plan.groups), "activation_quantizers": len(plan.activations),
                   "weighted_ops": len(plan.weighted_ops), "phase1_evaluations": sum(s.evaluated for s in sensitivities),
                   "simulator_evaluations": evaluations},
        "timings_s": timings,
    }


def _mix(assignment) -> dict[str, int]:
    """How many groups took each candidate."""
    counts: dict[str, int] = {}
    for cand in assignment.values():
        counts[str(cand)] = counts.get(str(cand), 0) + 1
    return dict(sorted(counts.items()))
