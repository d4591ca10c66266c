"""The README's benchmark summaries, rendered from the results files (no figure copied by hand).

    python benchmarks/readme_figures.py          # rewrite the README's figure blocks
    python benchmarks/readme_figures.py --check  # exit 1 if any block differs from its results file

A block is the text between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->`` in README.md;
NAME picks the renderer below, which reads one results file. A broken output (SQNR at or below
0 dB) is written as broken, never compared with another by its distance in dB.
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
BLOCK = re.compile(r"(<!-- figures:(\w+) -->\n)(.*?)(<!-- /figures:\2 -->)", re.S)


def read_table(name: str, section: str | None = None) -> list[dict[str, str]]:
    """The rows of the Markdown table in benchmarks/results/<name> (the one under the heading
    ``section`` where the file holds several), keyed by the header cells."""
    with open(os.path.join(HERE, "results", name), encoding="utf-8") as handle:
        text = handle.read()
    if section is not None:
        text = text.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in text.splitlines(keepends=True) if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header = _unique(cells[0])
    return [dict(zip(header, row, strict=False)) for row in cells[1:] if [c.strip() for c in row] != cells[0]]


def _unique(header: list[str]) -> list[str]:
    """Header cells with repeats numbered ("× float", "× float #2"): deploy.md has one per thread
    count, and a dict keyed by the bare name would silently keep the last."""
    seen: dict[str, int] = {}
    out = []
    for cell in header:
        seen[cell] = seen.get(cell, 0) + 1
        out.append(cell if seen[cell] == 1 else f"{cell} #{seen[cell]}")
    return out


def provenance(name: str) -> str:
    """The results file's first line, without its label (where its figures come from)."""
    with open(os.path.join(HERE, "results", name), encoding="utf-8") as handle:
        return handle.readline().strip().removeprefix("Measured at:").strip().rstrip(".")


def sqnr(text: str) -> str:
    """An SQNR cell as the README writes it: ``x dB``, or ``broken (x dB)`` at or below 0 dB."""
    try:
        value = float(text.replace("(broken)", "").strip())
    except ValueError:
        return text
    return f"**broken** ({value:.2f} dB)" if value <= 0 else f"{value:.2f} dB"


def phase1_speed() -> str:
    lines = [f"From [phase1_speed.md](benchmarks/results/phase1_speed.md) ({provenance('phase1_speed.md')}):"]
    for row in read_table("phase1_speed.md"):
        lines.append(
            f"- {row['model']} ({row['groups']} groups, {row['samples']} samples): naive {row['naive s']} s for "
            f"{row['naive evals']} distinct configurations"
            + (f", lean naive (only that group quantized) {row['lean naive s']} s for {row['lean naive evals']}"
               if "lean naive s" in row else "")
            + f"; onnxmp ({row['onnxmp evals']} evaluations, range choice "
            f"included) whole-graph {row['whole-graph s']} s, partial re-evaluation {row['partial s']} s "
            f"({row['speed-up (1 process)']}), `--workers 2` {row['partial, 2 workers s']} s "
            f"({row['speed-up (2 workers)']})"
            + (f", {row['vs lean naive (1 process)']} the lean naive way's speed" if "lean naive s" in row else "")
            + "; peak RSS MB whole / partial / 2 workers: "
            + f"{row['peak RSS MB whole / partial / 2 workers']}; lists within {row['max SQNR gap dB']} dB of the naive way.")
    return "\n".join(lines)


def deploy() -> str:
    lines = [f"From [deploy.md](benchmarks/results/deploy.md) ({provenance('deploy.md')}), one thread:"]
    rows = read_table("deploy.md")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = {r["variant"]: r for r in rows if r["model"] == model}
        base, ours = mine["float"], mine["onnxmp default"]
        peer = mine.get("onnxruntime quantize_static W8A8")
        text = (f"- {model}: onnxmp default {ours['× float']}× float, task score {ours['task score']} (float "
                f"{base['task score']}), SQNR {sqnr(ours['SQNR dB'])}")
        if peer:
            text += (f"; onnxruntime `quantize_static` {peer['× float']}×, task score {peer['task score']}, "
                     f"SQNR {sqnr(peer['SQNR dB'])}")
        lines.append(text + ".")
    return "\n".join(lines)


def targets_edge() -> str:
    lines = [f"From [targets_edge.md](benchmarks/results/targets_edge.md) ({provenance('targets_edge.md')}), "
             "SQNR on the target's runtime vs onnxruntime CPU on the same file (for `qnn-htp` at budget 0.5, the "
             "BOPs of W8A8, beside onnxruntime's own W8A8 model there):"]
    for row in read_table("targets_edge.md"):
        if row["target"] == "ort":
            continue
        what = ("onnxruntime's `quantize_static` W8A8" if row["candidates"].startswith("onnxruntime")
                else f"onnxmp at budget {row['budget']} ({row['chosen mix (groups)']})")
        on_target = ("refused by the target's runtime" if row["placement on the target"].startswith("refused")
                     else sqnr(row["SQNR on target dB"]))
        lines.append(f"- {row['model']} on {row['target']}, {what}: {on_target} vs "
                     f"{sqnr(row['SQNR onnxruntime CPU dB'])} on onnxruntime CPU.")
    return "\n".join(lines)


def cold_speed() -> str:
    """Cold optimize time against NNCF, before and after, with the output's quality either side."""
    lines = [f"From [cold_speed.md](benchmarks/results/cold_speed.md) ({provenance('cold_speed.md')}) against "
             f"[cold_speed_before.md](benchmarks/results/cold_speed_before.md) ({provenance('cold_speed_before.md')}); "
             "onnxmp's cold `optimize --budget 0.5` and NNCF's `nncf.quantize` on the same data, one run each:"]
    before = {r["model"]: r for r in read_table("cold_speed_before.md", "## Time")}
    before_q = {r["model"]: r for r in read_table("cold_speed_before.md", "## Quality")}
    quality = {r["model"]: r for r in read_table("cold_speed.md", "## Quality")}
    for row in read_table("cold_speed.md", "## Time"):
        model, was, q, was_q = row["model"], before.get(row["model"]), quality[row["model"]], before_q.get(row["model"])
        text = (f"- {model}: onnxmp {row['onnxmp total s']} s ({row['onnxmp / NNCF']} NNCF's {row['NNCF total s']} s)"
                + (f", was {was['onnxmp total s']} s ({was['onnxmp / NNCF']})" if was else "")
                + f"; task score {q['onnxmp score']}, SQNR {sqnr(q['onnxmp SQNR dB'])}"
                + (f" (was {was_q['onnxmp score']}, {sqnr(was_q['onnxmp SQNR dB'])})" if was_q else "")
                + f"; NNCF {q['NNCF score']}, {sqnr(q['NNCF SQNR dB'])}.")
        lines.append(text)
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[], str]] = {"phase1_speed": phase1_speed, "deploy": deploy, "cold_speed": cold_speed,
                                           "targets_edge": targets_edge}


def render(readme: str) -> str:
    """The README with every figure block rendered from its results file."""
    def block(match: re.Match) -> str:
        name = match.group(2)
        if name not in RENDERERS:
            raise SystemExit(f"README.md: no renderer for figures:{name}")
        return match.group(1) + RENDERERS[name]() + "\n" + match.group(4)
    return BLOCK.sub(block, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the README differs")
    parser.add_argument("--readme", default=README)
    args = parser.parse_args(argv)
    with open(args.readme, encoding="utf-8") as handle:
        text = handle.read()
    rendered = render(text)
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
