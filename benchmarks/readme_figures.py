"""The README's benchmark summaries, rendered from the results files (no figure copied by hand).

    python benchmarks/readme_figures.py          # rewrite the README's figure blocks
    python benchmarks/readme_figures.py --check  # exit 1 if any block differs from its results file

A block is the text between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->`` in README.md;
NAME picks the renderer below, which reads its results file(s). A broken output (SQNR at or below
0 dB) is written as broken, never compared with another by its distance in dB; every comparison a
block states (faster, at least as good, same cost) is computed here from the table's cells, so it
follows the file when the file is regenerated.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(HERE, "results")
BLOCK = re.compile(r"(<!-- figures:(\w+) -->\n)(.*?)(<!-- /figures:\2 -->)", re.S)
INTEGER_KERNEL = re.compile(r"QLinear|QGemm|Integer")  # how onnxruntime names its integer compute kernels

Row = dict[str, str]


# ---- reading the results files ----------------------------------------------------------------

def read_text(name: str, folder: str = RESULTS) -> str:
    with open(os.path.join(folder, name), encoding="utf-8") as handle:
        return handle.read()


def parse_table(text: str) -> list[Row]:
    """The rows of the first Markdown table in ``text``, keyed by the header cells (a header
    repeated further down, as merged files may hold, is not a row)."""
    lines = [line.strip() for line in text.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    if not cells:
        return []
    header = _unique(cells[0])
    return [dict(zip(header, row, strict=False)) for row in cells[1:] if row != cells[0]]


def read_table(name: str, section: str | None = None, folder: str = RESULTS) -> list[Row]:
    """The rows of the Markdown table in <folder>/<name> (the one under the heading ``section``
    where the file holds several), keyed by the header cells."""
    text = read_text(name, folder)
    if section is not None:
        text = text.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
    return parse_table(text)


def _unique(header: list[str]) -> list[str]:
    """Header cells with repeats numbered ("× float", "× float #2"): deploy.md has one per thread
    count, and a dict keyed by the bare name would silently keep the last."""
    seen: dict[str, int] = {}
    out = []
    for cell in header:
        seen[cell] = seen.get(cell, 0) + 1
        out.append(cell if seen[cell] == 1 else f"{cell} #{seen[cell]}")
    return out


def provenance(name: str, folder: str = RESULTS) -> str:
    """The results file's first line, without its label (where its figures come from)."""
    first = read_text(name, folder).split("\n", 1)[0]
    return first.strip().removeprefix("Measured at:").strip().rstrip(".")


def source(name: str, folder: str = RESULTS) -> str:
    """A block's opening words: the results file it renders and that file's provenance."""
    return f"From [{name}](benchmarks/results/{name}) ({provenance(name, folder)})"


def by_model(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows grouped by their model cell, in the file's order."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row["model"], []).append(row)
    return groups


# ---- cells ------------------------------------------------------------------------------------

def number(cell: str) -> float | None:
    """A cell's leading number ("-1.20 (broken)", "0.500 ⁿ", "1,789"), or None ("—", "cached")."""
    try:
        return float(cell.split()[0].replace(",", ""))
    except (ValueError, IndexError):
        return None


def sqnr(text: str) -> str:
    """An SQNR cell as the README writes it: ``x dB``, or ``broken (x dB)`` at or below 0 dB."""
    try:
        value = float(text.replace("(broken)", "").strip())
    except ValueError:
        return text
    return f"**broken** ({value:.2f} dB)" if value <= 0 else f"{value:.2f} dB"


def sqnr_order(a: str, b: str) -> int:
    """-1, 0 or 1 as SQNR cell ``a`` is worse, as good as, or better than ``b``: two broken outputs
    are equally broken (no distance in dB between them means anything)."""
    x, y = number(a), number(b)
    if x is None or y is None or (x <= 0 and y <= 0):
        return 0
    return (x > y) - (x < y)


def score_order(a: str, b: str) -> int:
    """-1, 0 or 1 as task-score cell ``a`` is below, equal to, or above ``b``."""
    x, y = number(a), number(b)
    return 0 if x is None or y is None else (x > y) - (x < y)


def _span(values: list[float], unit: str = "") -> str:
    """``a-b`` (or ``a`` alone) of the values, two decimals: a range stated from the cells."""
    low, high = min(values), max(values)
    return f"{low:.2f}{unit}" if low == high else f"{low:.2f}-{high:.2f}{unit}"


# ---- renderers --------------------------------------------------------------------------------

def phase1_speed(folder: str = RESULTS) -> str:
    lines = [f"{source('phase1_speed.md', folder)}:"]
    for row in read_table("phase1_speed.md", folder=folder):
        lean = "lean naive s" in row
        lines.append(
            f"- {row['model']} ({row['groups']} groups, {row['samples']} samples): naive {row['naive s']} s for "
            f"{row['naive evals']} distinct configurations"
            + (f", lean naive (only that group quantized) {row['lean naive s']} s for {row['lean naive evals']}"
               if lean else "")
            + f"; onnxmp ({row['onnxmp evals']} evaluations, range choice "
            f"included) whole-graph {row['whole-graph s']} s, partial re-evaluation {row['partial s']} s "
            f"({row['speed-up (1 process)']}), `--workers 2` {row['partial, 2 workers s']} s "
            f"({row['speed-up (2 workers)']})"
            + (f", {row['vs lean naive (1 process)']} the lean naive way's speed" if lean else "")
            + (f"; a partial evaluation costs {row['partial s per evaluation, in float passes']} whole float passes "
               f"({row['float pass s']} s each)" if "float pass s" in row else "")
            + "; peak RSS MB whole / partial / 2 workers: "
            + f"{row['peak RSS MB whole / partial / 2 workers']}; lists within {row['max SQNR gap dB']} dB of the naive way.")
    return "\n".join(lines)


def ort_kernels(folder: str = RESULTS) -> str:
    """Per op, which quantized variants onnxruntime runs with an integer kernel and at what cost;
    the rest compute in float behind their DequantizeLinear (the latency metric's factors)."""
    rows = read_table("ort_kernels.md", "## One weighted op", folder)
    lines = [f"{source('ort_kernels.md', folder)}, one weighted op on one thread against the float op:"]
    behind: list[float] = []
    for op in dict.fromkeys(r["op"] for r in rows):
        line, floats = _op_kernels(op, [r for r in rows if r["op"] == op and r["variant"] != "float"])
        lines.append(line)
        behind += floats
    if behind:
        lines.append(f"- Every quantized variant without an integer kernel: {_span(behind, '×')} float.")
    return "\n".join(lines)


def _op_kernels(op: str, quantized: list[Row]) -> tuple[str, list[float]]:
    """One op's line, and the × float of its variants that compute in float."""
    integer = [r for r in quantized if INTEGER_KERNEL.search(r["compute kernel after optimization"])]
    floats = [v for r in quantized if r not in integer and (v := number(r["× float"])) is not None]
    text = (f"- {op}: integer kernel for " + ", ".join(
        f"{r['variant']} ({r['compute kernel after optimization']}, {r['× float']}×)" for r in integer)
        if integer else f"- {op}: no integer kernel")
    if floats:
        text += f"; {'the other' if integer else 'all'} {len(floats)} quantized variants compute in float, {_span(floats, '×')}"
    return text + ".", floats


def deploy(folder: str = RESULTS) -> str:
    """Per real model, what ships at the default budget on one thread, against float, onnxruntime's
    ``quantize_static`` and uniform W8A8 (where that costs as much or more)."""
    rows = read_table("deploy.md", folder=folder)
    notes = dict(re.findall(r"^- \*\*(\S+)/end to end\*\*: (.*)$", read_text("deploy.md", folder), re.M))
    lines = [f"{source('deploy.md', folder)}, one thread:"]
    defaults = {}
    for model, mine in by_model(rows).items():
        variants = {r["variant"]: r for r in mine}
        if "onnxmp default" not in variants:
            continue
        defaults[model] = variants["onnxmp default"]
        lines.append(_deploy_line(model, variants))
        lines += _vs_uniform(variants)
        if model in notes:
            lines.append(f"  - end to end: {notes[model]}.")
    lines.append(_faster_than_float(defaults))
    lines += _same_file_spread(rows)
    return "\n".join(lines)


def _faster_than_float(defaults: dict[str, Row]) -> str:
    """How many models' default output runs faster than float on one thread, naming the others."""
    slow = [m for m, r in defaults.items() if (number(r["× float"]) or 1.0) >= 1.0]
    return (f"- onnxmp's default output faster than float on one thread: {len(defaults) - len(slow)} of {len(defaults)} "
            "models" + (f" (not: {', '.join(slow)})" if slow else "") + ".")


def _quality(row: Row) -> str:
    sentence, agreement = row.get("sentence cosine (eval)", "—"), row.get("agreement with float")
    return (f"task score {row['task score']}" + ("" if agreement is None else f", agreement with float {agreement}")
            + f", SQNR {sqnr(row['SQNR dB'])}, mean cosine {row['mean cosine']}"
            + ("" if sentence == "—" else f", sentence cosine on the evaluation sentences {sentence}"))


def _deploy_line(model: str, variants: dict[str, Row]) -> str:
    """The default output against float and against onnxruntime's ``quantize_static`` W8A8."""
    ours, base = variants["onnxmp default"], variants["float"]
    text = f"- {model}: onnxmp default {ours['× float']}× float, {_quality(ours)} (float task score {base['task score']})"
    peer = variants.get("onnxruntime quantize_static W8A8")
    if peer:
        a, b = number(ours["× float"]), number(peer["× float"])
        pace = "" if a is None or b is None else " (onnxmp default at least as fast)" if a <= b else " (onnxmp default slower)"
        text += f"; onnxruntime `quantize_static` {peer['× float']}×{pace}, {_quality(peer)}"
    return text + "."


def _vs_uniform(variants: dict[str, Row]) -> list[str]:
    """Each onnxmp mixed point against uniform W8A8 where that costs as much or more (estimated
    latency): at least as good on task score and SQNR, or below it on which."""
    uniform = variants.get("onnxmp uniform W8A8")
    cost = number(uniform["cost (latency est.)"]) if uniform else None
    if uniform is None or cost is None:
        return []
    parts = []
    for name, row in variants.items():
        mine = number(row["cost (latency est.)"])
        if not name.startswith("onnxmp ") or row is uniform or mine is None:
            continue
        label = name.removeprefix("onnxmp ")
        if mine > cost + 1e-9:
            parts.append(f"{label} costs more ({row['cost (latency est.)']} vs {uniform['cost (latency est.)']}): not compared")
            continue
        below = [what for what, order in (("task score", _score_against_uniform(row, uniform)),
                                          ("SQNR", sqnr_order(row["SQNR dB"], uniform["SQNR dB"]))) if order < 0]
        interval = row.get(VS_UNIFORM, "—")
        parts.append(f"{label} ({row['× float']}× float, {_quality(row)}"
                     + ("" if interval == "—" else f", task score − uniform's {interval} at 95%") + "): "
                     + (f"**below it** in {' and '.join(below)}" if below else "at least as good"))
    return [f"  - against uniform W8A8 ({uniform['× float']}× float, {_quality(uniform)}) at no more estimated "
            f"cost: " + "; ".join(parts) + "."] if parts else []


VS_UNIFORM = "task score − uniform W8A8 [95%]"


def _score_against_uniform(row: Row, uniform: Row) -> int:
    """-1 where a variant's task score is below uniform W8A8's by more than the evaluation set
    resolves (the upper end of the difference's 95% interval below 0), 0 where the set cannot tell
    them apart, 1 where it is above by more; plain score order where the table has no interval."""
    cell = row.get(VS_UNIFORM, "—")
    if cell == "—":
        return score_order(row["task score"], uniform["task score"])
    low, high = (float(x) for x in cell.split("[")[1].rstrip("]").split(","))
    return -1 if high < 0 else 1 if low > 0 else 0


def _same_file_spread(rows: list[Row]) -> list[str]:
    """Rows of one model alike in everything but time are the same file timed twice: their spread
    is this machine's noise, the margin within which no latency comparison means anything."""
    files: dict[tuple, list[Row]] = {}
    for r in rows:
        if r["variant"].startswith("onnxmp "):
            key = (r["model"], r["cost (latency est.)"], r["task score"], r["SQNR dB"], r["kernels (integer / float)"], r["KiB"])
            files.setdefault(key, []).append(r)
    spreads = [f"{same[0]['model']} {' and '.join(r['variant'].removeprefix('onnxmp ') for r in same)} "
               f"({' and '.join(r['× float'] + '×' for r in same)})"
               for same in files.values() if len(same) > 1 and len({r["× float"] for r in same}) > 1]
    return [f"- The same file timed twice (rows alike but for time; the spread is this machine's noise): "
            f"{'; '.join(spreads)}."] if spreads else []


# targets_table.py's peer rows, by their candidates cell
PEER_NAMES = {"onnxruntime quantize_static W8A8": "onnxruntime's `quantize_static` W8A8",
              "onnxruntime QNN flow W8A8": "onnxruntime's QNN flow W8A8 (`qnn_preprocess_model`, `get_qnn_qdq_config`)"}


def targets_edge(folder: str = RESULTS) -> str:
    lines = [f"{source('targets_edge.md', folder)}, SQNR on the target's runtime vs onnxruntime CPU on the same file "
             "(for `qnn-htp` at budget 0.5, the BOPs of W8A8, beside onnxruntime's own W8A8 model there):"]
    for row in read_table("targets_edge.md", folder=folder):
        if row["target"] == "ort":
            continue
        peer = PEER_NAMES.get(row["candidates"])
        what = peer or f"onnxmp at budget {row['budget']} ({row['chosen mix (groups)']})"
        placement = row["placement on the target"]
        on_target = ("refused by the target's runtime" if placement.startswith("refused")
                     else f"{sqnr(row['SQNR on target dB'])} ({_placement(placement)})")
        lines.append(f"- {row['model']} on {row['target']}, {what}: {on_target} vs "
                     f"{sqnr(row['SQNR onnxruntime CPU dB'])} on onnxruntime CPU.")
    return "\n".join(lines)


def _placement(cell: str) -> str:
    """A placement cell, short: HTP's partitions and what runs on the CPU beyond the graph-boundary
    Q/DQ; OpenVINO's integer weighted layers and activation×activation layers left float."""
    htp = re.match(r"(\d+)/(\d+) nodes on HTP in (\d+) partition\(s\); CPU: (\d+) \((\d+) graph-boundary", cell)
    if htp:
        on, total, parts, cpu, boundary = htp.groups()
        rest = "only the graph-boundary Q/DQ on the CPU" if cpu == boundary else f"{cpu} nodes on the CPU"
        return f"{on}/{total} nodes on HTP in {parts} partition{'s' if parts != '1' else ''}, {rest}"
    vino = re.match(r"(\d+/\d+) weighted layers integer.*?; (\d+) activation×activation", cell)
    if vino:
        return f"{vino.group(1)} weighted layers integer, {vino.group(2)} activation×activation layers not integer"
    return cell.split(";")[0]


def cold_speed(folder: str = RESULTS) -> str:
    """Cold optimize time against NNCF, before and after, with the output's quality either side."""
    lines = [f"{source('cold_speed.md', folder)} against {source('cold_speed_before.md', folder).removeprefix('From ')}; "
             "onnxmp's cold `optimize --budget 0.5` and NNCF's `nncf.quantize` on the same data, one run each:"]
    before = {r["model"]: r for r in read_table("cold_speed_before.md", "## Time", folder)}
    before_q = {r["model"]: r for r in read_table("cold_speed_before.md", "## Quality", folder)}
    quality = {r["model"]: r for r in read_table("cold_speed.md", "## Quality", folder)}
    for row in read_table("cold_speed.md", "## Time", folder):
        model, was, q, was_q = row["model"], before.get(row["model"]), quality[row["model"]], before_q.get(row["model"])
        nncf = (f"{row['onnxmp / NNCF']} NNCF's {row['NNCF total s']} s" if number(row["NNCF total s"]) is not None
                else "NNCF failed")
        passes = (f"; in float passes over the data ({row['float pass ms']} ms each), onnxmp's stages "
                  f"{row['onnxmp stages in float passes']}, NNCF's call {row['NNCF call in float passes']}"
                  if "float pass ms" in row else "")
        text = (f"- {model}: onnxmp {row['onnxmp total s']} s ({nncf})"
                + (f", was {was['onnxmp total s']} s ({was['onnxmp / NNCF']})" if was else "") + passes
                + f"; task score {q['onnxmp score']}, SQNR {sqnr(q['onnxmp SQNR dB'])}"
                + (f" (was {was_q['onnxmp score']}, {sqnr(was_q['onnxmp SQNR dB'])})" if was_q else "")
                + (f"; with `--phase1-samples 16 --no-range-refinement` {row['onnxmp fast total s']} s "
                   f"({row['onnxmp fast / NNCF']}), task score {q['onnxmp fast score']}, "
                   f"SQNR {sqnr(q['onnxmp fast SQNR dB'])}" if "onnxmp fast total s" in row else "")
                + f"; NNCF {q['NNCF score']}, {sqnr(q['NNCF SQNR dB'])}"
                + "".join(f"; cached rerun at budget {k.split()[3]}: {v} s ({row['cached rerun / cold']} the cold run)"
                          for k, v in row.items() if k.startswith("cached rerun at "))
                + ".")
        lines.append(text)
    return "\n".join(lines)


def zoo(folder: str = RESULTS) -> str:
    """Per model: float, uniform W8A8, every onnxmp mixed point and ``quantize_static`` (task score,
    SQNR, BOPs), and the verdict zoo_table.py computes (mixed vs uniform of the same or higher cost)."""
    lines = [f"{source('zoo.md', folder)}; task score, SQNR and BOPs relative to all-W8A16:"]
    for name, body in re.findall(r"<!-- zoo:(\S+) -->\n(.*?)\n<!-- /zoo:\1 -->", read_text("zoo.md", folder), re.S):
        rows = {r["config"]: r for r in parse_table(body)}
        metric = re.search(r"task score = (.+?) on the model", body)
        points = [f"float: {rows['float']['task score']}"] if "float" in rows else []
        points += [f"{config.removeprefix('onnxmp ')}: {_point(row, config != 'uniform W8A8')}"
                   for config, row in rows.items() if config == "uniform W8A8" or config.startswith("onnxmp ")]
        points += [f"`quantize_static` W8A8: {_point(row, False)}" for config, row in rows.items()
                   if config.startswith("onnxruntime quantize_static")]
        verdict = next((line.split(" Per point:")[0] for line in body.splitlines() if line.startswith(f"**{name}: ")), "")
        lines.append(f"- {name}" + (f" ({metric.group(1)})" if metric else "") + ": " + "; ".join(points) + "."
                     + (f" {verdict.strip()}" if verdict else ""))
    return "\n".join(lines)


def _point(row: Row, bops: bool) -> str:
    return f"{row['task score']}, {sqnr(row['SQNR dB'])}" + (f" at {row['BOPs']} BOPs" if bops else "")


def adaround(folder: str = RESULTS) -> str:
    """Nearest rounding against AdaRound per model and configuration: a gain is stated only where
    both points cost the same (BOPs), else the two are of different cost and not compared."""
    lines = [f"{source('adaround.md', folder)}, nearest rounding → AdaRound:"]
    for model, mine in by_model(read_table("adaround.md", folder=folder)).items():
        parts, per_layer = [], ""
        for config in dict.fromkeys(r["config"] for r in mine):
            pair = {r["rounding"]: r for r in mine if r["config"] == config}
            near, ada = pair.get("nearest"), pair.get("AdaRound")
            if near is None or ada is None:
                continue
            parts.append(_rounding_pair(config, near, ada))
            if config.startswith("uniform") and number(ada["AdaRound s/layer"]) is not None:
                per_layer = f" AdaRound {ada['AdaRound s/layer']} s per layer and bit-width."
        lines.append(f"- {model}: " + "; ".join(parts) + "." + per_layer)
    return "\n".join(lines)


def _rounding_pair(config: str, near: Row, ada: Row) -> str:
    if number(near["BOPs"]) != number(ada["BOPs"]):
        return (f"{config}: BOPs {near['BOPs']} with nearest rounding, {ada['BOPs']} with AdaRound (another mix): "
                "points of different cost, not compared")
    same = (f"same assignment, BOPs {near['BOPs']}" if config.startswith("uniform")
            else f"BOPs {near['BOPs']} with either rounding, the mix may differ")
    a, b = number(near["SQNR dB"]), number(ada["SQNR dB"])
    quality = ("SQNR **broken** either way" if a is not None and b is not None and a <= 0 and b <= 0
               else f"SQNR {sqnr(near['SQNR dB'])} → {sqnr(ada['SQNR dB'])}")
    return f"{config} ({same}): {quality}, task score {near['task score']} → {ada['task score']}"


def robustness(folder: str = RESULTS) -> str:
    """Kendall τ between the sensitivity lists of two calibration sets, and how many entries add no
    measurable noise (their order is noise, so they pull τ down)."""
    lines = [f"{source('robustness.md', folder)}; Kendall τ-b between the sensitivity lists (1: same ranking, "
             "0: unrelated):"]
    for r in read_table("robustness.md", folder=folder):
        lines.append(
            f"- {r['model']} ({r['groups']} groups, samples calib/calib2/ood {r['samples calib/calib2/ood']}): "
            f"τ-b {r['τ-b calib vs calib2']} between disjoint sets, {r['τ-b calib vs ood']} against out-of-domain data "
            f"(most sensitive third: {r['τ-b top ⅓: calib2 / ood']}); top-k overlap {r['top-k overlap calib2']} and "
            f"{r['top-k overlap ood']}; {r['entries ≤ baseline NSR']} of {r['evaluated entries']} evaluated entries "
            "add no measurable noise.")
    return "\n".join(lines)


def large_model(folder: str = RESULTS) -> str:
    lines = [f"{source('large_model.md', folder)}:"]
    for r in read_table("large_model.md", folder=folder):
        lines.append(f"- {r['model']}, {r['weights GiB']} GiB of weights: peak resident memory {r['peak RSS GiB']} GiB "
                     f"({r['peak / weights']} the weights), {r['total s']} s in all ({r['stages']}); output "
                     f"{r['output GiB']} GiB, chosen mix {r['chosen mix']}, SQNR {sqnr(r['SQNR dB'])}.")
    return "\n".join(lines)


def graph_ir(folder: str = RESULTS) -> str:
    text = read_text("graph_ir.md", folder)
    weight = re.search(r"one edit of a model with an? (.+?) weight", text)
    lines = [f"{source('graph_ir.md', folder)}" + (f", one edit of a model with a {weight.group(1)} weight" if weight else "")
             + ":"]
    for r in parse_table(text):
        rise = re.search(r"\(\+(\d+)\)", r["peak RSS during the edit (MB)"])
        lines.append(f"- {r['way']}: " + (f"peak RSS +{rise.group(1)} MB over {r['RSS after load (MB)']} MB after the load, "
                                          f"{r['time of the edit (s)']} s" if rise else r["RSS after load (MB)"]) + ".")
    return "\n".join(lines)


def sqnr_resolution(folder: str = RESULTS) -> str:
    """Per model, the shipped point's SQNR and how far changes that should not matter move it."""
    lines = [f"{source('sqnr_resolution.md', folder)}; the shipped point's simulated SQNR and what moved it:"]
    for r in read_table("sqnr_resolution.md", folder=folder):
        moves = []
        if number(r["stand-in SQNR dB (min / max)"]) is not None:
            moves.append(f"one of {r['stand-ins']} float activations behind a 16-bit quantizer "
                         f"{r['stand-in SQNR dB (min / max)'].replace(' / ', ' to ')} dB")
        if number(r["input x (1 ± 1e-6) SQNR dB"]) is not None:
            moves.append(f"inputs x (1 ± 1e-6) {r['input x (1 ± 1e-6) SQNR dB'].replace(' / ', ' and ')} dB")
        lines.append(f"- {r['model']}: {sqnr(r['simulated SQNR dB'])}; " + ("; ".join(moves) + f" (largest move "
                     f"{r['largest move dB']} dB)" if moves else "nothing to perturb") + ".")
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[str], str]] = {
    "phase1_speed": phase1_speed, "deploy": deploy, "cold_speed": cold_speed, "targets_edge": targets_edge,
    "ort_kernels": ort_kernels, "zoo": zoo, "adaround": adaround, "robustness": robustness,
    "large_model": large_model, "graph_ir": graph_ir, "sqnr_resolution": sqnr_resolution}


def render(readme: str, folder: str = RESULTS) -> str:
    """The README with every figure block rendered from its results file."""
    def block(match: re.Match) -> str:
        name = match.group(2)
        if name not in RENDERERS:
            raise SystemExit(f"README.md: no renderer for figures:{name}")
        return match.group(1) + RENDERERS[name](folder) + "\n" + match.group(4)
    return BLOCK.sub(block, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the README differs")
    parser.add_argument("--readme", default=README)
    parser.add_argument("--results", default=RESULTS, help="folder of the results files (default benchmarks/results)")
    args = parser.parse_args(argv)
    with open(args.readme, encoding="utf-8") as handle:
        text = handle.read()
    rendered = render(text, args.results)
    if args.check:
        stale = [m.group(2) for m, n in zip(BLOCK.finditer(text), BLOCK.finditer(rendered), strict=True)
                 if m.group(0) != n.group(0)]
        if stale:
            print(f"README.md figure blocks out of date: {', '.join(stale)}; run python benchmarks/readme_figures.py",
                  file=sys.stderr)
            return 1
        return 0
    with open(args.readme, "w", encoding="utf-8") as handle:
        handle.write(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
