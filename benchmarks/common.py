"""Shared by the benchmark scripts: the models to run on, and Markdown output."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "models"))

import zoo  # noqa: E402


@dataclasses.dataclass(frozen=True)
class BenchModel:
    """A real model with calibration data and a task score (higher is better)."""

    name: str
    model: str
    calib: str
    metric: str
    # the task score of a file, kept per evaluation item (zoo.ItemScores; its .score is the metric)
    evaluate_items: Callable[[str], zoo.ItemScores]
    # from one run of a file: its task score and the same metric with the float model's answers as
    # the labels (zoo.task_scores)
    task_scores: Callable[[str], tuple[zoo.ItemScores, zoo.ItemScores]]
    # calib is a folder of whole feeds (one .npz per feed, e.g. a sequence plus state tensors, run
    # one by one), not one .npz of samples along the first axis
    calib_feeds: bool = False
    chance: float = 0.0  # the task score that carries no information (zoo.chance_level)
    # mean cosine of a variant's sentence embeddings against float's on the evaluation sentences
    # (None: the model has none; zoo.sentence_cosine)
    sentence_cosine: Callable[[str], float | None] = lambda path: None
    # the whole pipeline's score where the model is one stage of it (None: not; zoo.end_to_end_items)
    end_to_end_items: Callable[[str], zoo.ItemScores | None] = lambda path: None

    def evaluate(self, path: str) -> float:
        """The task score of the file at ``path``."""
        return self.evaluate_items(path).score


DIGITS_TEST = os.path.join(ROOT, "models", "digits", "test.npz")


def _digits_chance() -> float:
    """Top-1 % of always answering the commonest digit of the test set."""
    labels = np.load(DIGITS_TEST)["labels"]
    return float(100.0 * np.bincount(labels).max() / len(labels))


DIGITS = os.path.join(ROOT, "models", "digits", "digits_cnn.onnx")


def _digits_answers(path: str) -> np.ndarray:
    test = np.load(DIGITS_TEST)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": test["input"]})[0].argmax(1)


def _top1(answers: np.ndarray, truth: np.ndarray) -> zoo.ItemScores:
    """Top-1 % per test image: 100 if right, 0 if wrong."""
    return zoo.ItemScores(100.0 * (answers == truth), np.ones(len(truth)))


def _digits_top1(path: str) -> zoo.ItemScores:
    return _top1(_digits_answers(path), np.load(DIGITS_TEST)["labels"])


@functools.cache
def _digits_float_answers() -> np.ndarray:
    return _digits_answers(DIGITS)


def _digits_task_scores(path: str) -> tuple[zoo.ItemScores, zoo.ItemScores]:
    """Top-1 % against the labels and against the float model's answers, from one run of ``path``."""
    answers = _digits_answers(path)
    return _top1(answers, np.load(DIGITS_TEST)["labels"]), _top1(answers, _digits_float_answers())


def bench_models(names: list[str] | None = None) -> list[BenchModel]:
    """The shipped digits CNN plus every zoo model already prepared (python models/prepare.py)."""
    models = [BenchModel("digits", DIGITS, os.path.join(ROOT, "models", "digits", "calib.npz"), "top-1 %",
                         _digits_top1, _digits_task_scores, chance=_digits_chance())]
    for name, spec in zoo.MODELS.items():
        paths = zoo.paths(name)
        feeds = spec.calib_feeds
        if os.path.isfile(paths["model"]) and (os.path.isdir if feeds else os.path.isfile)(paths["calib"]):
            models.append(BenchModel(name, str(paths["model"]), str(paths["calib"]), spec.metric,
                                     lambda p, n=name: zoo.evaluate_items(n, p),
                                     lambda p, n=name: zoo.task_scores(n, p), feeds, zoo.chance_level(name),
                                     lambda p, n=name: zoo.sentence_cosine(n, p),
                                     lambda p, n=name: zoo.end_to_end_items(n, p)))
    if names:
        models = [m for m in models if m.name in names]
    return models


def samples_calib_only(benches: list[BenchModel], table: str, why: str) -> list[BenchModel]:
    """``benches`` without the models whose calibration set is a folder of whole feeds, each
    skipped with a printed reason: for tables that read calibration data as one .npz of samples
    (``why`` says what they do with it). benchmarks/feeds_table.py benchmarks those models."""
    kept = []
    for bench in benches:
        if bench.calib_feeds:
            print(f"{table}: skipping {bench.name}: its calibration set ({bench.calib}) is a folder of whole "
                  f"feeds (a sequence plus state per file, run one by one), and this table {why}; "
                  "benchmarks/feeds_table.py benchmarks it", flush=True)
        else:
            kept.append(bench)
    return kept


BROKEN = "(broken)"
AT_CHANCE = "(at chance)"
CHANCE_MARGIN = 0.02  # of the metric's scale (1, or 100 for a percentage): a score this close to chance tells nothing


def mark_broken(cell: str) -> str:
    """An SQNR cell at or below 0 dB (the output is no closer to float than silence) marked
    broken, so no table or summary reads it as a quality to compare; other cells unchanged."""
    try:
        value = float(str(cell).split()[0])
    except (ValueError, IndexError):
        return str(cell)
    return f"{cell} {BROKEN}" if value <= 0 and BROKEN not in str(cell) else str(cell)


def mark_chance(cell: str, chance: float | None) -> str:
    """A task-score cell within ``CHANCE_MARGIN`` of the metric's scale above its chance level
    marked at chance (a model that has lost its task); other cells unchanged."""
    try:
        value = float(str(cell).split()[0])
    except (ValueError, IndexError):
        return str(cell)
    if chance is None or AT_CHANCE in str(cell):
        return str(cell)
    scale = 100.0 if chance > 1 or value > 1 else 1.0
    return f"{cell} {AT_CHANCE}" if value <= chance + CHANCE_MARGIN * scale else str(cell)


def chance_levels() -> dict[str, float]:
    """Each benchmark model's chance level, by name."""
    return {m.name: m.chance for m in bench_models()}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; cells of SQNR columns at or below 0 dB are marked broken, and task-score
    cells (columns named "... score") at chance marked so, by the model in the row's first cell."""
    sqnr_columns = {i for i, name in enumerate(header) if "SQNR" in name and "gap" not in name}  # a gap is no SQNR
    score_columns = {i for i, name in enumerate(header) if name.endswith("score") and name != "float score"}
    chance = chance_levels() if score_columns else {}
    rows = [[mark_broken(c) if i in sqnr_columns else mark_chance(c, chance.get(row[0])) if i in score_columns
             else str(c) for i, c in enumerate(row)] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def publish(name: str, caption: str, header: list[str], rows: list[list[str]]) -> None:
    """Print the caption and the table, and write them to benchmarks/results/<name>."""
    text = caption + "\n\n" + markdown_table(header, rows) + "\n"
    print(text)
    write_result(name, text)


def publish_merged(name: str, caption: str, header: list[str], rows: list[list[str]],
                   notes: dict[str, str] | None = None, key_cells: int = 1) -> str:
    """Like publish, but rows whose first ``key_cells`` cells (the model, and e.g. the target) no
    row of ``rows`` has, and notes not given again, are kept from the previous file, so models
    can be benchmarked one run at a time; returns the text."""
    path = os.path.join(HERE, "results", name)
    rerun = {tuple(row[:key_cells]) for row in rows}
    renoted = set(notes or {}) | ({row[0] for row in rows} if key_cells == 1 else set())
    old_rows: list[list[str]] = []
    old_notes: dict[str, str] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if (line.startswith("| ") and len(cells) == len(header) and cells != [h.strip() for h in header]
                    and tuple(cells[:key_cells]) not in rerun):
                old_rows.append(cells)
        old_notes = {a: b for a, b in re.findall(r"^- \*\*(\S+)\*\*: (.*)$", text, re.M) if a not in renoted}
    order = [m.name for m in bench_models()]
    rank = {n: i for i, n in enumerate(order)}
    merged = sorted(old_rows + rows,  # stable: row order kept per model (and key)
                    key=lambda r: (rank.get(r[0], len(order)), *r[1:key_cells]))
    all_notes = {**old_notes, **(notes or {})}
    noted = sorted(all_notes, key=lambda n: (rank.get(n.split("/")[0], len(order)), n))  # "model" or "model/key"
    text = (caption + "\n\n" + markdown_table(header, merged) + "\n"
            + "".join(f"\n- **{n}**: {all_notes[n]}" for n in noted) + ("\n" if all_notes else ""))
    print(text)
    write_result(name, text, merged=True)
    return text


def git_state() -> str:
    """The commit the package was run at, and whether the tree (onnxmp/, benchmarks/ and models/
    scripts; results files and model caches excluded) was clean."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "onnxmp", "benchmarks",
                                "models", ":!benchmarks/results"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {commit}" + (" with uncommitted changes" if dirty else ", clean tree")


PROVENANCE = "Measured at:"  # the first line of every results file (tests/test_results_files.py)


def provenance_line(merged: bool = False) -> str:
    """Where a results file's figures come from; a merged file's rows keep their own notes."""
    if merged:
        return f"{PROVENANCE} each row at the commit its note names; this file written at {git_state()}."
    return f"{PROVENANCE} {git_state()}."


def write_result(name: str, text: str, merged: bool = False) -> None:
    """benchmarks/results/<name>, with the provenance line first (unless the text has one)."""
    if not text.startswith(PROVENANCE):
        text = provenance_line(merged) + "\n\n" + text
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", name), "w", encoding="utf-8") as handle:
        handle.write(text)
