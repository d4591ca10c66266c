"""Task scores kept per evaluation item (models/zoo.py): the per-item sums give the pooled
metric, and the paired bootstrap interval of two scores' difference has the width the
binomial arithmetic predicts, so "at least as good" can be judged against what the set resolves."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models"))

import zoo


def test_page_items_pool_to_panoptic_quality():
    rng = np.random.default_rng(0)
    gts, dets = [], []
    for _ in range(12):
        gt = np.sort(rng.uniform(0, 200, size=(int(rng.integers(1, 5)), 4)), axis=1)[:, [0, 2, 1, 3]]
        gt = np.column_stack([gt[:, 0], gt[:, 1], gt[:, 0] + 40, gt[:, 1] + 12])
        det = gt[: int(rng.integers(0, len(gt) + 1))] + rng.normal(0, 2, size=(1, 4))
        if rng.random() < 0.3:  # a false positive far from every line
            det = np.vstack([det, [[500, 500, 540, 512]]])
        gts.append(gt)
        dets.append(det)
    pooled = [iou for d, g in zip(dets, gts, strict=True) for iou in zoo.matched_ious(d, g)]
    expected = zoo.panoptic_quality(pooled, sum(map(len, dets)), sum(map(len, gts)))
    assert zoo.page_items(dets, gts).score == pytest.approx(expected, rel=1e-12)


def test_char_items_pool_to_one_minus_edit_rate():
    preds, truths = ["hel1o wor", "abc", ""], ["hello world", "abc", "xy"]
    # by hand, spaces removed: "hel1owor" vs "helloworld" 3 edits; "abc" 0; "" vs "xy" 2; 15 characters
    items = zoo.char_items(preds, truths)
    assert items.score == pytest.approx(1 - 5 / 15)
    assert items.numerator.tolist() == [7, 3, 0] and items.denominator.tolist() == [10, 3, 2]


def test_same_scores_differ_by_nothing():
    items = zoo.ItemScores(np.array([1.0, 0.0, 1.0, 1.0]), np.ones(4))
    assert zoo.paired_difference(items, items) == (0.0, 0.0, 0.0)


def test_interval_matches_the_binomial_width():
    # 4000 items; a and b disagree on 160 of them, a right on 90 of those, b on 70
    n, a_only, b_only = 4000, 90, 70
    a, b = np.ones(n), np.ones(n)
    a[:b_only] = 0
    b[b_only:b_only + a_only] = 0
    diff, low, high = zoo.paired_difference(zoo.ItemScores(a, np.ones(n)), zoo.ItemScores(b, np.ones(n)))
    assert diff == pytest.approx((a_only - b_only) / n)
    # paired (McNemar) normal approximation: sd of the difference sqrt(a_only + b_only - (a_only - b_only)^2 / n) / n
    half = 1.96 * np.sqrt(a_only + b_only - (a_only - b_only) ** 2 / n) / n
    assert low < diff < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert low < 0 < high  # 20 net items of 4000: not resolved


def test_a_clear_difference_is_resolved():
    n = 1000
    a, b = np.ones(n), np.ones(n)
    b[:60] = 0  # b wrong on 60 items where a is right, never the other way
    _, low, high = zoo.paired_difference(zoo.ItemScores(a, np.ones(n)), zoo.ItemScores(b, np.ones(n)))
    assert 0 < low < 0.06 < high


def test_different_item_sets_are_refused():
    with pytest.raises(ValueError, match="not the same set"):
        zoo.paired_difference(zoo.ItemScores(np.ones(3), np.ones(3)), zoo.ItemScores(np.ones(4), np.ones(4)))


def _linear_classifier(path, weight: np.ndarray) -> str:
    """x [N, 4] -> logits [N, 2] = x @ weight: a stand-in for ppocr_cls with its input and output names."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(weight.astype(np.float32), "w")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_agreement_scores_a_variant_against_the_float_models_answers(tmp_path, monkeypatch):
    """A fake ppocr_cls cache: the task score compares answers with the labels, the agreement with
    the float model's answers (1 for float itself); both checked against NumPy."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "ppocr_cls"
    folder.mkdir()
    x = rng.standard_normal((300, 4)).astype(np.float32)
    label = rng.integers(0, 2, 300)
    np.savez(folder / "eval.npz", x=x, label=label)
    weight = rng.standard_normal((4, 2))
    float_path = _linear_classifier(folder / "model.onnx", weight)
    variant = _linear_classifier(tmp_path / "variant.onnx", weight + rng.normal(0, 0.4, weight.shape))
    monkeypatch.setattr(zoo, "CACHE_DIR", tmp_path)

    ours, theirs = (x @ weight.astype(np.float32)).argmax(1), (x @ _weight_of(variant)).argmax(1)
    assert zoo.evaluate("ppocr_cls", variant) == pytest.approx(np.mean(theirs == label))
    task, agreement = zoo.task_scores("ppocr_cls", variant)
    assert task.score == pytest.approx(np.mean(theirs == label))
    assert agreement.score == pytest.approx(np.mean(theirs == ours))
    assert 0.5 < agreement.score < 1.0  # the perturbation changed some answers
    assert zoo.task_scores("ppocr_cls", float_path)[1].score == 1.0


def _weight_of(path: str) -> np.ndarray:
    from onnx import load, numpy_helper

    return numpy_helper.to_array(load(path).graph.initializer[0])


def test_pages_are_read_top_to_bottom_and_scored_by_characters():
    """Boxes are read top to bottom, then left to right, each crop once; a missed line costs its
    characters and a box on no text its reading (``char_items`` on the joined page texts)."""
    pages = np.zeros((2, 64, 96, 3), dtype=np.uint8)
    pages[0, 40:50, 10:60] = 200  # the lower line is brighter: the reader tells the crops apart by it
    pages[0, 5:15, 10:60] = 100
    boxes = [np.array([[10, 40, 59, 49], [10, 5, 59, 14]]), np.array([[0, 0, 30, 20]])]
    seen = []

    def read(batch: np.ndarray) -> list[str]:
        seen.append(len(batch))
        bright = batch[:, :, :, :8].reshape(len(batch), -1).max(axis=1)  # normalised to [-1, 1]; the left
        # columns are the crop's own (the right ones may be padding, 0)
        return ["low line" if b > 0.5 else "top line" if b > -0.5 else "noise" for b in bright]

    readings = zoo.page_readings(boxes, pages, read)
    assert readings == ["top linelow line", "noise"] and seen == [3]
    items = zoo.char_items(readings, ["top line low line", ""])
    # page 1 exact (14 characters without spaces); page 2 has no text: its 5 read characters are
    # errors against nothing, so the pooled score is (14 - 5) / 14
    assert items.score == pytest.approx((14 - 5) / 14)
