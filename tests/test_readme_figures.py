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
        lines = [line for line in handle if line.startswith("| digits | onnxmp default |")]
    cells = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    assert readme_figures._unique(["a", "× float", "b", "× float"]) == ["a", "× float", "b", "× float #2"]
    row = next(r for r in rows if r["model"] == "digits" and r["variant"] == "onnxmp default")
    assert row["× float"] == cells[7] and row["× float #2"] == cells[9] and row["× float #3"] == cells[11]


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
