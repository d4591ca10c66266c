"""report.html: one self-contained page (inline SVG and CSS, no script, no network) that a person
opens in any browser to see what a run chose and why, built from the JSON record alone."""

from __future__ import annotations

import html
import os

from onnxmp.quant.candidates import Candidate

# SQNR at or above this is an exact match (a float model against itself): drawn at the plot's
# top edge so that one lossless point does not squash every quantized one into a line.
LOSSLESS_DB = 150.0
_W, _H = 720, 420  # SVG size in px
_PAD = {"left": 64, "right": 24, "top": 28, "bottom": 52}

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d2430; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 2em; }
.sub { color: #5b6575; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; margin: 1.2em 0; }
.card { border: 1px solid #d8dde6; border-radius: 6px; padding: .6em .9em; min-width: 11em; }
.card b { display: block; font-size: 1.25em; } .card span { color: #5b6575; font-size: .85em; }
table { border-collapse: collapse; font-size: .9em; } th, td { border-bottom: 1px solid #e3e7ee; padding: .25em .6em;
  text-align: left; vertical-align: top; } th { background: #f4f6f9; } td.n { text-align: right;
  font-variant-numeric: tabular-nums; }
.warn { color: #9a3412; }
svg text { font: 12px system-ui, sans-serif; fill: #333; } svg .axis { stroke: #888; } svg .grid { stroke: #eceff3; }
svg .curve { fill: none; stroke: #9aa3b0; stroke-width: 1.5; }
svg .estimated { fill: #9aa3b0; } svg .measured { fill: #2563eb; } svg .uniform { fill: #16a34a; }
svg .chosen { fill: #dc2626; stroke: #7f1d1d; } svg .point:hover { stroke: #000; stroke-width: 2; }
details { margin-top: .6em; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _mix_text(mix: dict[str, int]) -> str:
    return ", ".join(f"{n}× {c}" for c, n in mix.items())


def _bytes_text(size: float | None) -> str:
    if size is None:
        return "—"
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.2f} {unit}"
    return f"{size:.0f} B"


def _db(value: float | None) -> str:
    if value is None:
        return "—"
    return "lossless" if value >= LOSSLESS_DB else f"{value:.2f} dB"


class _Axes:
    """Data → pixel mapping of the Pareto plot."""

    def __init__(self, xs: list[float], ys: list[float]) -> None:
        finite = [y for y in ys if y < LOSSLESS_DB] or [0.0]
        self.x0, self.x1 = 0.0, max([1.0, *xs]) * 1.02
        low, high = min(finite), max(finite)
        span = max(high - low, 1.0)
        self.y0, self.y1 = low - 0.08 * span, high + 0.12 * span

    def x(self, value: float) -> float:
        inner = _W - _PAD["left"] - _PAD["right"]
        return _PAD["left"] + (value - self.x0) / (self.x1 - self.x0) * inner

    def y(self, value: float) -> float:
        inner = _H - _PAD["top"] - _PAD["bottom"]
        clipped = min(value, self.y1)
        return _PAD["top"] + (self.y1 - clipped) / (self.y1 - self.y0) * inner


def _ticks(low: float, high: float, count: int = 6) -> list[float]:
    raw = (high - low) / count
    step = min((s * 10 ** e for e in range(-3, 4) for s in (1, 2, 2.5, 5) if s * 10 ** e >= raw), default=raw)
    first = -(-low // step) * step
    return [first + i * step for i in range(int((high - first) // step) + 1)]


def pareto_svg(record: dict) -> str:
    """Cost vs output SQNR: Phase 2's curve as estimated (grey line and dots) and where it was
    measured (blue), each uniform assignment (green squares) and the chosen model as onnxruntime
    runs it (red diamond); every mark's <title> says its cost, SQNR and mix (hover)."""
    curve, uniform, chosen = record["pareto_curve"], record["uniform"], record["chosen"]
    xs = [p["relative_cost"] for p in curve] + [u["relative_cost"] for u in uniform.values()] + [chosen["relative_cost"]]
    ys = ([p["estimated_sqnr_db"] for p in curve] + [p["measured_sqnr_db"] for p in curve if p["measured_sqnr_db"] is not None]
          + [u["sqnr_db"] for u in uniform.values()] + [chosen["sqnr_db_ort_default"]])
    ax = _Axes(xs, ys)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
           'role="img" aria-label="Pareto curve">']
    bottom, left = _H - _PAD["bottom"], _PAD["left"]
    for t in _ticks(ax.x0, ax.x1):
        out.append(f'<line class="grid" x1="{ax.x(t):.1f}" y1="{_PAD["top"]}" x2="{ax.x(t):.1f}" y2="{bottom}"/>'
                   f'<text x="{ax.x(t):.1f}" y="{bottom + 16}" text-anchor="middle">{t:g}</text>')
    for t in _ticks(ax.y0, ax.y1):
        out.append(f'<line class="grid" x1="{left}" y1="{ax.y(t):.1f}" x2="{_W - _PAD["right"]}" y2="{ax.y(t):.1f}"/>'
                   f'<text x="{left - 6}" y="{ax.y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<line class="axis" x1="{left}" y1="{bottom}" x2="{_W - _PAD["right"]}" y2="{bottom}"/>'
               f'<line class="axis" x1="{left}" y1="{_PAD["top"]}" x2="{left}" y2="{bottom}"/>')
    metric, base = record["options"]["metric"], record["baseline"]["candidate"]
    out.append(f'<text x="{(left + _W - _PAD["right"]) / 2}" y="{_H - 12}" text-anchor="middle">cost ({_e(metric)}, '
               f'fraction of all-{_e(base)})</text>'
               f'<text transform="translate(16 {(_PAD["top"] + bottom) / 2}) rotate(-90)" text-anchor="middle">'
               'output SQNR vs float (dB)</text>')
    line = " ".join(f'{ax.x(p["relative_cost"]):.1f},{ax.y(p["estimated_sqnr_db"]):.1f}' for p in curve)
    out.append(f'<polyline class="curve" points="{line}"/>')

    def mark(cls: str, x: float, y: float, tip: str, shape: str = "circle", size: float = 3.0) -> None:
        px, py = ax.x(x), ax.y(y)
        title = f"<title>{_e(tip)}</title>"
        if shape == "circle":
            out.append(f'<circle class="point {cls}" cx="{px:.1f}" cy="{py:.1f}" r="{size}">{title}</circle>')
        elif shape == "square":
            out.append(f'<rect class="point {cls}" x="{px - size:.1f}" y="{py - size:.1f}" width="{2 * size}" '
                       f'height="{2 * size}">{title}</rect>')
        else:
            out.append(f'<polygon class="point {cls}" points="{px:.1f},{py - size:.1f} {px + size:.1f},{py:.1f} '
                       f'{px:.1f},{py + size:.1f} {px - size:.1f},{py:.1f}">{title}</polygon>')

    for p in curve:
        tip = f"curve point {p['step']}: cost {p['relative_cost']:.3f}, estimated {_db(p['estimated_sqnr_db'])}; {_mix_text(p['mix'])}"
        mark("estimated", p["relative_cost"], p["estimated_sqnr_db"], tip, size=2.2)
    for p in curve:
        if p["measured_sqnr_db"] is not None:
            tip = (f"curve point {p['step']}: cost {p['relative_cost']:.3f}, measured {_db(p['measured_sqnr_db'])} "
                   f"(estimated {_db(p['estimated_sqnr_db'])}); {_mix_text(p['mix'])}")
            mark("measured", p["relative_cost"], p["measured_sqnr_db"], tip, size=4.0)
    for name, u in uniform.items():
        mark("uniform", u["relative_cost"], u["sqnr_db"], f"uniform {name}: cost {u['relative_cost']:.3f}, {_db(u['sqnr_db'])}",
             shape="square", size=5.0)
        right = ax.x(u["relative_cost"]) > _W - _PAD["right"] - 60  # a label at the right edge goes to the left
        out.append(f'<text x="{ax.x(u["relative_cost"]) + (-8 if right else 8):.1f}" y="{ax.y(u["sqnr_db"]) + 16:.1f}" '
                   f'text-anchor="{"end" if right else "start"}">{_e(name)}</text>')
    mark("chosen", chosen["relative_cost"], chosen["sqnr_db_ort_default"],
         f"chosen: cost {chosen['relative_cost']:.3f}, {_db(chosen['sqnr_db_ort_default'])} on onnxruntime; "
         f"{_mix_text(chosen['mix'])}", shape="diamond", size=8.0)
    legend = (("estimated", "curve (Phase 1 estimate)"), ("measured", "curve, measured"), ("uniform", "uniform"),
              ("chosen", "chosen, exported"))
    x = left + 12
    for cls, text in legend:
        out.append(f'<circle class="{cls}" cx="{x}" cy="14" r="5"/><text x="{x + 9}" y="18">{_e(text)}</text>')
        x += 30 + 7 * len(text)  # about 7 px a character at 12 px
    out.append("</svg>")
    return "\n".join(out)


def _table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="n">{_e(c)}</td>' if j in numeric else f"<td>{_e(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cards(record: dict) -> str:
    chosen, base = record["chosen"], record["baseline"]
    cards = [(f"{chosen['relative_cost']:.3f}", f"cost, fraction of all-{base['candidate']} ({record['options']['metric']})"),
             (_db(chosen["sqnr_db_ort_default"]), "output SQNR on onnxruntime"),
             (_mix_text(chosen["mix"]), f"mix over {record['counts']['groups']} groups")]
    files = record.get("files")
    if files:
        cards.append((_bytes_text(files["output_bytes"]), f"output file (input {_bytes_text(files['input_bytes'])})"))
    latency = record.get("latency")
    if latency:
        ms = latency["ms"]
        cards.append((f"{latency['vs_float']:.2f}× float",
                      f"latency {ms['output']:.3g} ms on {record['deployment_target']['name']} (float {ms['float']:.3g} ms"
                      + (f", uniform W8A8 {ms['uniform W8A8']:.3g} ms" if "uniform W8A8" in ms else "") + ")"))
    if record.get("target"):
        t = record["target"]
        cards.append((f"{t['chosen_score']:.4g}",
                      f"{t['metric']} (baseline {t['baseline_score']:.4g}, threshold {t['threshold']:.4g})"))
    return '<div class="cards">' + "".join(f"<div class=\"card\"><b>{_e(v)}</b><span>{_e(k)}</span></div>"
                                          for v, k in cards) + "</div>"


def _layers(record: dict) -> str:
    candidates = record["options"]["candidates"]
    sens: dict[int, dict[str, float]] = {}
    for s in record["sensitivity"]:
        sens.setdefault(s["group"], {})[s["candidate"]] = s["sqnr_db"]
    rows = []
    for g in record["groups"]:
        cand = Candidate.parse(g["candidate"])
        nodes = ", ".join(g["nodes"]) if g["nodes"] else "(activations) " + ", ".join(g["activations"])
        weight_bytes = g["num_weights"] * cand.w_bits / 8 if g["num_weights"] else 0
        rows.append([g["group"], nodes, g["candidate"], *[_db(sens.get(g["group"], {}).get(c)) for c in candidates],
                     f"{g['macs']:,}", _bytes_text(weight_bytes) if weight_bytes else "—"])
    headers = ["group", "nodes", "chosen", *[f"SQNR at {c}" for c in candidates], "MACs", "weight bytes"]
    numeric = set(range(3, len(headers)))
    return (_table(headers, rows, numeric) +
            "<p class=\"sub\">SQNR at a candidate: the model's output when only this group takes it (Phase 1); "
            "— where the target does not allow it or it equals another candidate.</p>")


def _cell(value) -> object:
    """A verification value for one table cell: lists cut at 8 items, mappings as key: value."""
    if isinstance(value, list):
        return ", ".join(map(str, value[:8])) + (" …" if len(value) > 8 else "")
    if isinstance(value, dict):
        return ", ".join(f"{k}: {f'{v:.2f}' if isinstance(v, float) else v}" for k, v in value.items())
    return value


def _verification(record: dict) -> str:
    target = record["deployment_target"]
    verification = target.get("verification")
    if not verification:
        return f"<p>--target {_e(target['name'])}: no separate runtime check (the output's SQNR above is onnxruntime's).</p>"
    rows = [[key, _cell(value)] for key, value in verification.items()]
    broken = verification.get("broken_promise")
    note = f'<p class="warn">{_e(broken)}</p>' if broken else ""
    return note + _table(["check", "result"], rows)


def report_html(record: dict) -> str:
    """The whole page."""
    name = os.path.basename(record["input"])
    options = record["options"]
    goal = (f"accuracy target: drop at most {options['target_drop']}" if record.get("target")
            else f"budget {options['budget']} of all-{record['baseline']['candidate']} ({options['metric']})")
    timings = record["timings_s"]
    timing_rows = [[stage, f"{seconds:.2f}"] for stage, seconds in timings.items()] + [["total", f"{sum(timings.values()):.2f}"]]
    skipped = record["skipped"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>onnxmp: {_e(name)}</title>", '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>onnxmp: {_e(name)}</h1>",
        f'<p class="sub">--target {_e(record["deployment_target"]["name"])} · {_e(goal)} · candidates '
        f'{_e(", ".join(options["candidates"]))} · {options["calibration_samples"]} calibration samples · '
        f'onnxmp {_e(record["onnxmp_version"])}</p>',
        _cards(record),
        "<h2>Pareto curve</h2>", pareto_svg(record),
        '<p class="sub">Hover a mark for its cost, SQNR and mix. SQNR is measured against the float model on the '
        "calibration data.</p>",
        "<h2>Uniform assignments</h2>",
        _table(["candidate", "relative cost", "SQNR"], [[n, f"{u['relative_cost']:.3f}", _db(u["sqnr_db"])]
                                                       for n, u in record["uniform"].items()], {1, 2}),
        "<h2>Bit-width per group</h2>", _layers(record),
        "<h2>Deployment target</h2>", _verification(record),
        "<h2>Time per stage (s)</h2>", _table(["stage", "seconds"], timing_rows, {1}),
        f"<h2>Kept float ({len(skipped)})</h2>",
        f"<details><summary>tensors without a quantizer, and why</summary>"
        f"{_table(['tensor', 'reason'], [[s['name'], s['reason']] for s in skipped])}</details>",
        '<p class="sub">Everything on this page comes from report.json beside it.</p>',
        "</body></html>",
    ]
    return "\n".join(parts)
