"""Accuracy targets: the cheapest point of the Pareto curve whose measured score meets a target.

Quality falls (close to) monotonically along the curve, so the answer is found by search, not
by evaluating every point. ``interpolation_search`` guesses where the score crosses the target
by interpolating the last measured bracket against the curve's Phase 1 estimate (which tracks
the real score closely), and falls back to bisection whenever a guess does not shrink the
bracket enough, so it never needs many more evaluations than plain binary search and usually
far fewer. ``binary_search`` is the plain method, kept for comparison.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

from onnxmp.errors import ConfigError

ScoreAt = Callable[[int], float]


@dataclasses.dataclass(frozen=True)
class TargetDrop:
    """An allowed drop from the baseline score: absolute, or relative (``percent``)."""

    value: float
    percent: bool

    @classmethod
    def parse(cls, text: str) -> TargetDrop:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", text)
        if not match:
            raise ConfigError(f"--target-drop {text!r}: give a number (absolute drop) or N% (relative)")
        return cls(float(match.group(1)), bool(match.group(2)))

    def threshold(self, baseline: float) -> float:
        return baseline - abs(baseline) * self.value / 100.0 if self.percent else baseline - self.value

    def __str__(self) -> str:
        return f"{self.value:g}{'%' if self.percent else ''}"


@dataclasses.dataclass
class SearchResult:
    index: int  # the cheapest index meeting the threshold
    scores: dict[int, float]  # every real evaluation, by curve index


class _Memo:
    def __init__(self, score_at: ScoreAt, known: dict[int, float] | None) -> None:
        self.score_at = score_at
        self.scores: dict[int, float] = dict(known or {})

    def __call__(self, index: int) -> float:
        if index not in self.scores:
            self.scores[index] = self.score_at(index)
        return self.scores[index]


def binary_search(count: int, score_at: ScoreAt, threshold: float, known: dict[int, float] | None = None
                  ) -> SearchResult:
    """Plain bisection for the last index (of ``count``) whose score is >= ``threshold``."""
    score = _Memo(score_at, known)
    if score(count - 1) >= threshold:
        return SearchResult(count - 1, score.scores)
    lo, hi = 0, count - 1  # lo meets the target, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if score(mid) >= threshold else (lo, mid)
    return SearchResult(lo, score.scores)


def interpolation_search(count: int, score_at: ScoreAt, threshold: float, estimate: Sequence[float],
                         known: dict[int, float] | None = None) -> SearchResult:
    """The last index whose score is >= ``threshold``, by interpolation with a bisection guard.

    ``estimate[i]`` is a monotone prior of the score at index i (Phase 1's estimated quality);
    the real scores of the bracket ends map it onto the evaluator's scale. ``score_at(0)`` must
    meet the threshold.
    """
    score = _Memo(score_at, known)
    if score(count - 1) >= threshold:
        return SearchResult(count - 1, score.scores)
    lo, hi = 0, count - 1  # lo meets the target, hi does not
    score(lo)
    while hi - lo > 1:
        width = hi - lo
        guess = _interpolate(lo, hi, score.scores[lo], score.scores[hi], threshold, estimate)
        if score(guess) >= threshold:
            lo = guess
            neighbour = lo + 1  # confirm the predicted crossing from its failing side
        else:
            hi = guess
            neighbour = hi - 1
        if hi - lo > 1:
            lo, hi = (neighbour, hi) if score(neighbour) >= threshold else (lo, neighbour)
        if hi - lo > 1 and hi - lo > width // 2:  # the guess shrank the bracket too little: bisect once
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if score(mid) >= threshold else (lo, mid)
    return SearchResult(lo, score.scores)


def _interpolate(lo: int, hi: int, s_lo: float, s_hi: float, threshold: float, estimate: Sequence[float]) -> int:
    """The index strictly inside (lo, hi) where the line through the bracket's scores, drawn
    against the estimate, crosses the threshold; placed just on the passing side of it."""
    e_lo, e_hi = estimate[lo], estimate[hi]
    if s_lo == s_hi or e_lo == e_hi:
        return (lo + hi) // 2
    fraction = (s_lo - threshold) / (s_lo - s_hi)
    target_estimate = e_lo + fraction * (e_hi - e_lo)
    inside = range(lo + 1, hi)
    passing = [i for i in inside if (estimate[i] - target_estimate) * (e_lo - e_hi) >= 0]
    return passing[-1] if passing else lo + 1
