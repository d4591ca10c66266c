"""Every benchmark results file says, on its first line, which commit it was measured at and
whether the tree was clean (or that it was not recorded): a figure without its commit cannot be
checked against the code it claims to describe. Every file now names one; the files that once said
"an unrecorded commit" were measured again."""

from __future__ import annotations

import os
import re

import pytest

RESULTS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results")
FILES = sorted(f for f in os.listdir(RESULTS) if f.endswith(".md"))
COMMIT = re.compile(r"\b[0-9a-f]{7,40}\b")  # a commit hash: "an unrecorded commit" no longer passes
TREE = re.compile(r"clean tree|with uncommitted changes|tree state not recorded")


def test_there_are_results_files():
    assert len(FILES) >= 10


@pytest.mark.parametrize("name", FILES)
def test_results_file_records_its_commit_and_tree(name):
    with open(os.path.join(RESULTS, name), encoding="utf-8") as handle:
        first = handle.readline()
    assert first.startswith("Measured at:"), f"{name}: the first line must be 'Measured at: commit ...'"
    assert COMMIT.search(first), f"{name}: the first line names no commit: {first!r}"
    assert TREE.search(first), f"{name}: the first line does not say whether the tree was clean: {first!r}"
