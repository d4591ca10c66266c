"""ppocr_det's task score (models/zoo.py): panoptic quality of text boxes. F1 at IoU >= 0.5
could not tell float from W4A8 (0.9953 for both); PQ must separate boxes that are all found
but fit worse, which F1 cannot."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models"))

import zoo

GT = np.array([[10, 10, 110, 30], [10, 50, 210, 70]], dtype=np.float64)


def _score(det: np.ndarray) -> tuple[float, float]:
    """(F1 at IoU >= 0.5, PQ) of ``det`` against GT."""
    ious = zoo.matched_ious(det, GT)
    tp = len(ious)
    f1 = 0.0 if tp == 0 else 2 * tp / (len(det) + len(GT))
    return f1, zoo.panoptic_quality(ious, len(det), len(GT))


def test_perfect_boxes_score_one():
    assert _score(GT.copy()) == (1.0, 1.0)


def test_looser_boxes_keep_f1_but_lower_pq():
    loose = GT + np.array([-4, -2, 4, 2])  # every line still found, each box 4 px wider, 2 px taller
    f1, pq = _score(loose)
    assert f1 == 1.0
    # by hand: box 1 is 100x20 inside 108x24, box 2 is 200x20 inside 208x24
    expected = (100 * 20 / (108 * 24) + 200 * 20 / (208 * 24)) / 2
    assert pq == pytest.approx(expected) and pq < 0.85


def test_a_missed_line_costs_half_a_box_in_pq():
    f1, pq = _score(GT[:1])
    assert f1 == pytest.approx(2 / 3)
    assert pq == pytest.approx(1.0 / (1 + 0.5))  # TP 1 (IoU 1), FN 1
