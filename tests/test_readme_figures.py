"""The README's benchmark figures are rendered from the results files by
benchmarks/readme_figures.py; these tests fail when the two disagree."""

from __future__ import annotations

import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import readme_figures  # noqa: E402


def test_readme_figures_match_the_results_files():
    assert readme_figures.main(["--check"]) == 0


def test_readme_has_figure_blocks_for_every_renderer():
    with open(readme_figures.README, encoding="utf-8") as handle:
        names = {m.group(2) for m in readme_figures.BLOCK.finditer(handle.read())}
    assert names == set(readme_figures.RENDERERS)


def test_an_edited_figure_fails_the_check(tmp_path):
    with open(readme_figures.README, encoding="utf-8") as handle:
        text = handle.read()
    start = text.index("<!-- figures:deploy -->")
    line_end = text.index("\n", text.index("\n- ", start) + 1)
    edited = text[:line_end] + " (and faster than ever)" + text[line_end:]
    (tmp_path / "README.md").write_text(edited, encoding="utf-8")
    assert readme_figures.main(["--check", "--readme", str(tmp_path / "README.md")]) == 1


def test_broken_outputs_are_named_broken_not_compared():
    assert readme_figures.sqnr("-0.32") == "**broken** (-0.32 dB)"
    assert readme_figures.sqnr("0.00").startswith("**broken**")
    assert readme_figures.sqnr("-0.41 (broken)") == "**broken** (-0.41 dB)"
    assert readme_figures.sqnr("17.84") == "17.84 dB"


def test_a_repeated_header_keeps_each_column():
    """deploy.md has a "× float" column per thread count and one for OpenVINO; the one-thread
    figure is the first, read here by position from the raw line (not through read_table)."""
    rows = readme_figures.read_table("deploy.md")
    with open(os.path.join(ROOT, "benchmarks", "results", "deploy.md"), encoding="utf-8") as handle:
        lines = [line for line in handle if line.startswith(("| model | variant |", "| digits | onnxmp default |"))]
    header, cells = ([c.strip() for c in line.strip().strip("|").split("|")] for line in lines[:2])
    at = [i for i, cell in enumerate(header) if cell == "× float"]
    assert len(at) == 3 and header[at[0] - 1] == "ms (1 thread)"
    assert readme_figures._unique(["a", "× float", "b", "× float"]) == ["a", "× float", "b", "× float #2"]
    row = next(r for r in rows if r["model"] == "digits" and r["variant"] == "onnxmp default")
    assert [row["× float"], row["× float #2"], row["× float #3"]] == [cells[i] for i in at]


def test_task_scores_at_chance_are_marked_in_every_table():
    """A task score within 2% of the scale above the model's chance level is marked, by the model
    named in the row: digits' chance is the commonest test digit's share (11.4% of 500), counted here."""
    import numpy as np
    from common import markdown_table

    labels = np.load(os.path.join(ROOT, "models", "digits", "test.npz"))["labels"]
    chance = 100.0 * np.bincount(labels).max() / len(labels)
    table = markdown_table(["model", "variant", "task score", "SQNR dB"],
                           [["digits", "broken", f"{chance + 1:.1f}", "-0.5"], ["digits", "fine", "99.4", "38.1"]])
    rows = [line for line in table.splitlines() if line.startswith("| digits")]
    assert "(at chance)" in rows[0] and "(broken)" in rows[0]
    assert "(at chance)" not in rows[1] and "(broken)" not in rows[1]


def _results(folder, name: str, body: str) -> str:
    """A results file in ``folder`` as the scripts write it: the provenance line, then ``body``."""
    (folder / name).write_text("Measured at: commit 0123abc, clean tree.\n\n" + body, encoding="utf-8")
    return str(folder)


def _table(header: list[str], rows: list[str]) -> str:
    """A Markdown table from a header and rows written as "a | b | c"."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [f"| {r} |" for r in rows]) + "\n"


DEPLOY = _table(
    ["model", "variant", "cost (latency est.)", "task score", "SQNR dB", "mean cosine", "ms (1 thread)", "× float",
     "ms (2 threads)", "× float ", "ms OpenVINO (1 thread)", "× float  ", "kernels (integer / float)",
     "activation quantizers", "KiB"],
    ["m | float | 1.000 | 0.90 | float | 1 | 1.0 | 1.00 | 1.0 | 1.00 | | | none / 2 Conv | 0 | 10",
     "m | onnxmp uniform W8A8 | 0.800 | 0.90 | -0.50 (broken) | 0.5 | 0.7 | 0.70 | 0.7 | 0.70 | | | 2 QLinearConv / none | 4 | 5",
     "m | onnxmp default | 0.700 | 0.80 | 12.00 | 0.99 | 1.2 | 1.20 | 1.2 | 1.20 | | | 1 QLinearConv / 1 Conv | 2 | 7",
     "m | onnxmp budget 0.35 | 0.700 | 0.80 | 12.00 | 0.99 | 1.1 | 1.10 | 1.2 | 1.20 | | | 1 QLinearConv / 1 Conv | 2 | 7",
     "m | onnxmp budget 0.9 | 0.950 | 0.90 | 13.00 | 0.99 | 1.1 | 1.10 | 1.2 | 1.20 | | | 1 QLinearConv / 1 Conv | 2 | 7",
     "m | onnxruntime quantize_static W8A8 | — | 0.10 (at chance) | -1.00 (broken) | 0.3 | 0.6 | 0.60 | 0.6 | 0.60 | | "
     "| 2 QLinearConv / none | 4 | 5"])


def test_deploy_comparisons_are_computed_from_the_cells(tmp_path):
    """Slower than quantize_static, not faster than float, below uniform W8A8 in task score but not
    in SQNR (uniform W8A8 is broken), and a costlier point not compared: all read off the table."""
    text = readme_figures.deploy(_results(tmp_path, "deploy.md", DEPLOY))
    assert text.splitlines()[0].startswith("From [deploy.md](benchmarks/results/deploy.md) (commit 0123abc, clean tree)")
    assert "`quantize_static` 0.60× (onnxmp default slower)" in text
    assert "task score 0.10 (at chance), SQNR **broken** (-1.00 dB)" in text
    assert "default (1.20× float" in text and "**below it** in task score;" in text
    assert "budget 0.9 costs more (0.950 vs 0.800): not compared" in text
    assert "faster than float on one thread: 0 of 1 models (not: m)" in text
    assert "m default and budget 0.35 (1.20× and 1.10×)" in text


def test_a_task_score_gap_within_the_interval_is_not_below_uniform(tmp_path):
    """With the paired interval in the table, a lower task score whose interval reaches 0 is not
    "below" uniform W8A8; one whose whole interval is below 0 is."""
    header = ["model", "variant", "cost (latency est.)", "task score", "task score − uniform W8A8 [95%]", "SQNR dB",
              "mean cosine", "× float", "kernels (integer / float)", "KiB"]
    text = readme_figures.deploy(_results(tmp_path, "deploy.md", _table(header, [
        "m | float | 1.000 | 0.9000 | -0.0100 [-0.0300, +0.0100] | float | 1 | 1.00 | none / 2 Conv | 10",
        "m | onnxmp uniform W8A8 | 0.800 | 0.9100 | — | 20.00 | 0.99 | 0.70 | 2 QLinearConv / none | 5",
        "m | onnxmp default | 0.700 | 0.9050 | -0.0050 [-0.0120, +0.0010] | 25.00 | 0.99 | 0.60 | 1 QLinearConv / 1 Conv | 7",
        "m | onnxmp budget 0.35 | 0.600 | 0.8900 | -0.0200 [-0.0310, -0.0090] | 22.00 | 0.99 | 0.50 | 2 QLinearConv / none "
        "| 6"]) + "\n- **m/end to end**: the pipeline's score: float 0.9 (+0.01 [-0.01, +0.03])\n"))
    assert "  - end to end: the pipeline's score: float 0.9 (+0.01 [-0.01, +0.03])." in text
    assert "default (0.60× float, task score 0.9050, SQNR 25.00 dB, mean cosine 0.99, task score − uniform's " \
           "-0.0050 [-0.0120, +0.0010] at 95%): at least as good" in text
    assert "budget 0.35 (0.50× float" in text and "at 95%): **below it** in task score." in text


def test_two_broken_outputs_are_equally_broken():
    assert readme_figures.sqnr_order("-0.5 (broken)", "-3.0 (broken)") == 0
    assert readme_figures.sqnr_order("0.10", "-3.0 (broken)") == 1
    assert readme_figures.sqnr_order("12.00", "13.00") == -1


def test_adaround_compares_only_points_of_equal_cost(tmp_path):
    folder = _results(tmp_path, "adaround.md", _table(
        ["model", "config", "rounding", "BOPs", "SQNR dB", "task score", "AdaRound s/layer", "layers×bits"],
        ["m | uniform W4A8 | nearest | 0.250 | -0.99 (broken) | 0.1950 | — | —",
         "m | uniform W4A8 | AdaRound | 0.250 | -0.55 (broken) | 0.1250 | 13.41 | 36×1",
         "m | mixed, budget 0.3 | nearest | 0.292 | 9.71 | 0.5500 | — | —",
         "m | mixed, budget 0.3 | AdaRound | 0.299 | 13.47 | 0.5725 | 11.44 | 36×2"]))
    text = readme_figures.adaround(folder)
    assert "uniform W4A8 (same assignment, BOPs 0.250): SQNR **broken** either way" in text
    assert "mixed, budget 0.3: BOPs 0.292 with nearest rounding, 0.299 with AdaRound" in text
    assert "13.47" not in text and "AdaRound 13.41 s per layer" in text


def test_zoo_renders_each_section_and_its_verdict(tmp_path):
    folder = _results(tmp_path, "zoo.md", """# onnxmp on the model zoo

## m

<!-- zoo:m -->
**m**: 8 calibration samples; task score = top1 on the model's labelled evaluation set.

| model | config | task score | SQNR dB | BOPs | memory | KiB | total s | mix (groups) |
|---|---|---|---|---|---|---|---|---|
| m | float | 0.5550 | ∞ | — | — | 9 | — | — |
| m | uniform W8A8 | 0.1575 | -0.63 (broken) | 0.500 | 1.000 | 5 | 1 | 2×W8A8 |
| m | onnxmp budget 0.35 | 0.5500 | 14.56 | 0.347 | 0.694 | 6 | 2 | 1×W4A8, 1×W8A16 |

**m: yes**, 1 of 1 mixed points (budget 0.35) beat the uniform point. Per point: budget 0.35 (BOPs 0.347) vs uniform W8A8.
<!-- /zoo:m -->
""")
    line = readme_figures.zoo(folder).splitlines()[1]
    assert line.startswith("- m (top1): float: 0.5550; uniform W8A8: 0.1575, **broken** (-0.63 dB); "
                           "budget 0.35: 0.5500, 14.56 dB at 0.347 BOPs.")
    assert "quantize_static" not in line and line.endswith("(budget 0.35) beat the uniform point.")


def test_ort_kernels_tells_integer_kernels_by_name(tmp_path):
    folder = _results(tmp_path, "ort_kernels.md", """## One weighted op

| op | variant | compute kernel after optimization | ms | × float |
|---|---|---|---|---|
| Gemm | float | 1 Gemm | 0.040 | 1.00 |
| Gemm | W8A8, output quantized | 1 QGemm | 0.026 | 0.64 |
| Gemm | W4A8 | 1 Gemm | 0.230 | 5.69 |
| Gemm | W8A16 | 1 Gemm | 0.079 | 1.96 |

## An op between two QLinearConvs, quantized on both sides
""")
    text = readme_figures.ort_kernels(folder)
    assert "- Gemm: integer kernel for W8A8, output quantized (1 QGemm, 0.64×); the other 2 quantized variants " \
           "compute in float, 1.96-5.69×." in text


def test_placement_names_what_leaves_the_target():
    cell = "679/751 nodes on HTP in 20 partition(s); CPU: 72 (1 graph-boundary Q/DQ by design; fallback: x)"
    assert readme_figures._placement(cell) == "679/751 nodes on HTP in 20 partitions, 72 nodes on the CPU"
    assert readme_figures._placement("64/66 nodes on HTP in 1 partition(s); CPU: 2 (2 graph-boundary Q/DQ by design)") \
        == "64/66 nodes on HTP in 1 partition, only the graph-boundary Q/DQ on the CPU"
