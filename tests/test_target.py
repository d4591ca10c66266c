"""The accuracy-target search on synthetic monotone curves: same answer as exhaustive search,
fewer evaluations than plain binary search."""

from __future__ import annotations

import numpy as np
import pytest

from onnxmp.errors import ConfigError
from onnxmp.search.accuracy_target import TargetDrop, binary_search, interpolation_search


def _curves(seed: int, count: int = 40):
    """Monotone decreasing 'real' scores and a noisy-but-monotone estimate of them."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    drops = rng.exponential(1.0, n) * np.linspace(0.2, 3.0, n) ** 2  # falls faster at the cheap end
    real = 40.0 - np.concatenate([[0.0], np.cumsum(drops[1:])])
    estimate = np.sort(real + rng.normal(0, 0.5, n))[::-1]  # a prior that is close, not exact
    return real, estimate


@pytest.mark.parametrize("seed", range(40))
def test_interpolation_matches_exhaustive_with_fewer_evaluations(seed):
    real, estimate = _curves(seed)
    rng = np.random.default_rng(1000 + seed)
    threshold = real[0] - rng.uniform(0.1, real[0] - real[-1] + 1)
    exhaustive = max(i for i in range(len(real)) if real[i] >= threshold)
    known = {0: real[0]}
    inter = interpolation_search(len(real), lambda i: real[i], threshold, estimate, known)
    plain = binary_search(len(real), lambda i: real[i], threshold, known)
    assert inter.index == plain.index == exhaustive
    assert len(inter.scores) <= len(plain.scores) + 1


def test_interpolation_is_cheaper_on_average():
    inter_total = plain_total = 0
    for seed in range(40):
        real, estimate = _curves(seed)
        threshold = real[0] - 0.3 * (real[0] - real[-1])
        known = {0: real[0]}
        inter_total += len(interpolation_search(len(real), lambda i, r=real: r[i], threshold, estimate, known).scores)
        plain_total += len(binary_search(len(real), lambda i, r=real: r[i], threshold, known).scores)
    assert inter_total < 0.8 * plain_total


def test_whole_curve_meets_a_loose_target():
    real = np.linspace(40, 30, 20)
    result = interpolation_search(20, lambda i: real[i], 10.0, real, {0: 40.0})
    assert result.index == 19 and set(result.scores) == {0, 19}


def test_target_drop_parsing():
    assert TargetDrop.parse("1").threshold(80.0) == 79.0
    assert TargetDrop.parse("1%").threshold(80.0) == pytest.approx(79.2)
    with pytest.raises(ConfigError):
        TargetDrop.parse("one")
