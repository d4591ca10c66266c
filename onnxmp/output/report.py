"""What a run tells its user: the JSON record, an HTML page, a Markdown summary and (optionally) a PNG plot."""

from __future__ import annotations

import logging
import os

from onnxmp._version import __version__
from onnxmp.model.files import save_json, save_text, write_atomic
from onnxmp.output.html import report_html
from onnxmp.quant import numerics

logger = logging.getLogger(__name__)


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


def build_record(*, input_path, config, plan, costs, sensitivities, base_nsr, curve, choice, chosen_nsr,
                 measured, uniform, shipped, timings, num_samples, evaluations, target, cache, adaround,
                 on_target=None, latency=None, budget_choice=None, baseline=None, families=None,
                 refinement=None) -> dict:
    """Everything a user needs to trust (or question) the result, as plain JSON types.
    ``baseline``: the all-highest assignment (default: the curve's start); ``families``: where
    the target runs one activation width per model, what each width's search chose;
    ``refinement``: what choosing the ranges again in the chosen point's context changed."""
    assignment = choice.assignment
    baseline_cost = curve.baseline_cost
    groups = {g.gid: g for g in plan.groups}
    return {
        "onnxmp_version": __version__,
        "input": input_path,
        "options": {
            "candidates": [str(c) for c in config.candidates],
            "budget": config.budget if config.target_drop is None else None,
            "target_drop": config.target_drop,
            "metric": config.metric,
            "calibration_samples": num_samples,
        },
        "baseline": {"candidate": str(config.candidates[-1]), "sqnr_db": numerics.nsr_to_db(base_nsr),
                     "cost": baseline_cost, **costs.summary(curve.start if baseline is None else baseline)},
        "chosen": {
            "curve_index": choice.curve_index,
            "refined": choice.refined,
            "relative_cost": choice.relative_cost,
            "estimated_sqnr_db": numerics.nsr_to_db(choice.est_nsr),
            "simulated_sqnr_db": numerics.nsr_to_db(chosen_nsr),
            **shipped,
            **costs.summary(assignment),
            "mix": _mix(assignment),
            "budget_choice": budget_choice,  # the search's own pick before a measured point replaced it
            "families": families,  # one activation width per model: each width's choice
            "range_refinement": None if refinement is None else {
                "sqnr_db_before": numerics.nsr_to_db(refinement.nsr_before),
                "sqnr_db_after": numerics.nsr_to_db(refinement.nsr_after),
                "flipped": [{"tensor": n, "bits": b, "method": m} for n, b, m in refinement.flipped],
                "evaluations": refinement.evaluations},
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
             "estimated_sqnr_db": numerics.nsr_to_db(p.est_nsr),
             "measured_sqnr_db": numerics.nsr_to_db(measured[p.step]) if p.step in measured else None,
             "moved": None if p.moved is None else {"group": p.moved[0], "from": str(p.moved[1]), "to": str(p.moved[2])},
             "mix": mix}
            for p, mix in zip(curve.points, _curve_mixes(curve), strict=True)
        ],
        "skipped": [{"name": s.name, "reason": s.reason} for s in plan.skips],
        "counts": {"groups": len(plan.groups), "activation_quantizers": len(plan.activations),
                   "weighted_ops": len(plan.weighted_ops), "phase1_evaluations": sum(s.evaluated for s in sensitivities),
                   "simulator_evaluations": evaluations},
        "target": target,
        "deployment_target": {"name": config.target, "fixed_dims": config.fix_dims, "verification": on_target},
        "latency": latency,  # the output, the float model and uniform W8A8 timed on the target's runtime
        "adaround": adaround,
        "cache": cache,
        "timings_s": timings,
        "files": None,  # the written output's and the input's bytes on disk, once written
    }


def _curve_mixes(curve) -> list[dict[str, int]]:
    """The mix at every curve point, replaying the moves once (not once per point)."""
    counts = _mix(curve.start)
    mixes = []
    for point in curve.points:
        if point.moved is not None:
            _, old, new = point.moved
            counts[str(old)] -= 1
            counts[str(new)] = counts.get(str(new), 0) + 1
        mixes.append({c: n for c, n in sorted(counts.items()) if n})
    return mixes


def _mix(assignment) -> dict[str, int]:
    """How many groups took each candidate."""
    counts: dict[str, int] = {}
    for cand in assignment.values():
        counts[str(cand)] = counts.get(str(cand), 0) + 1
    return dict(sorted(counts.items()))


def write_report_dir(record: dict, folder: str) -> None:
    """report.json, report.html (self-contained), summary.md and, where matplotlib is installed
    (the ``report`` extra), pareto.png in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    save_json(record, os.path.join(folder, "report.json"))
    save_text(os.path.join(folder, "report.html"), report_html(record))
    plotted = plot_pareto(record, os.path.join(folder, "pareto.png"))
    save_text(os.path.join(folder, "summary.md"), summary_markdown(record, "pareto.png" if plotted else None))


def plot_pareto(record: dict, path: str) -> bool:
    """Cost vs SQNR: the greedy curve (estimated and measured), uniform points and the choice."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no pareto.png (report.html has the plot; pip install 'onnxmp[report]' "
                    "for the PNG)")
        return False
    curve = record["pareto_curve"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot([p["relative_cost"] for p in curve], [p["estimated_sqnr_db"] for p in curve], "-", color="0.6",
            label="Pareto curve (Phase 1 estimate)")
    measured = [p for p in curve if p["measured_sqnr_db"] is not None]
    ax.plot([p["relative_cost"] for p in measured], [p["measured_sqnr_db"] for p in measured], "o", color="tab:blue",
            label="curve points, measured")
    for name, point in record["uniform"].items():
        ax.plot(point["relative_cost"], point["sqnr_db"], "s", color="tab:green")
        ax.annotate(f"uniform {name}", (point["relative_cost"], point["sqnr_db"]), textcoords="offset points",
                    xytext=(5, -12), fontsize=8)
    chosen = record["chosen"]
    ax.plot(chosen["relative_cost"], chosen["sqnr_db_ort_default"], "*", color="tab:red", markersize=14,
            label="chosen (exported, onnxruntime)")
    ax.set_xlabel(f"cost ({record['options']['metric']}, fraction of all-{record['baseline']['candidate']})")
    ax.set_ylabel("output SQNR vs float (dB)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(os.path.basename(record["input"]))
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return True


def on_target_line(record: dict) -> str | None:
    """The output's SQNR as the target's own runtime computes it (and, where the budget's point and
    a uniform one both ran there, both figures), or None where no runtime checked it."""
    verification = record["deployment_target"].get("verification") or {}
    if verification.get("sqnr_db") is None:
        return None
    line = f"on {record['deployment_target']['name']}'s runtime: output SQNR {verification['sqnr_db']:.2f} dB"
    compared = verification.get("compared_sqnr_db")
    if compared:
        line += ("; " + ", ".join(f"{k} {v:.2f} dB" for k, v in compared.items() if k != "shipped")
                 + f" there: {compared['shipped']} ships")
    return line


def summary_markdown(record: dict, plot: str | None) -> str:
    """A short human-readable summary with the per-layer bit-width table."""
    chosen, base = record["chosen"], record["baseline"]
    lines = [f"# onnxmp: {os.path.basename(record['input'])}", ""]
    goal = (f"accuracy target: drop at most {record['options']['target_drop']}" if record["target"]
            else f"budget {record['options']['budget']:.3f} of all-{base['candidate']} {record['options']['metric']}")
    lines += [f"- {goal}",
              f"- chosen cost: {chosen['relative_cost']:.3f} (BOPs {chosen['bops']:.4g}, weights {chosen['memory_bytes']:.0f} bytes)",
              f"- output SQNR: {chosen['sqnr_db_ort_default']:.2f} dB on onnxruntime (default session), "
              f"{chosen['simulated_sqnr_db']:.2f} dB simulated; all-{base['candidate']}: {base['sqnr_db']:.2f} dB",
              f"- mix: {', '.join(f'{n}× {c}' for c, n in chosen['mix'].items())}"]
    on_target = on_target_line(record)
    if on_target:
        lines.append(f"- {on_target}")
    if record["target"]:
        t = record["target"]
        lines.append(f"- {t['metric']}: baseline {t['baseline_score']:.4g}, chosen {t['chosen_score']:.4g} "
                     f"(threshold {t['threshold']:.4g}), {t['evaluations']} real evaluations")
    lines += ["", "| uniform | cost | SQNR dB |", "|---|---|---|"]
    lines += [f"| {n} | {u['relative_cost']:.3f} | {u['sqnr_db']:.2f} |" for n, u in record["uniform"].items()]
    lines += ["", "The whole report, with the Pareto curve: report.html."]
    if plot:
        lines += ["", f"![Pareto curve]({plot})"]
    lines += ["", "## Bit-width per group", "", "| group | candidate | nodes | MACs | weights |", "|---|---|---|---|---|"]
    for g in record["groups"]:
        nodes = ", ".join(g["nodes"]) or "(activations only: " + ", ".join(g["activations"][:3]) + ")"
        lines.append(f"| {g['group']} | {g['candidate']} | {nodes} | {g['macs']} | {g['num_weights']} |")
    lines += ["", f"Skipped (kept float): {len(record['skipped'])}; timings (s): {record['timings_s']}", ""]
    return "\n".join(lines)
