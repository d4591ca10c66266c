"""Stage 4: calibrate activation ranges, and measure each weighted op's MACs per sample.

Two float passes over the calibration set: the first finds each activation's min and max (and
each weighted op's MACs, each activation's size), the second fills a histogram over that span,
for the activations that may take fewer than 16 bits (the caller says which, once it knows the
costs the first pass measured). Ranges per bit-width come from the histogram: min/max at 16 bits;
at 8 bits and below both min/max and the MSE-optimal clip are candidates, and Phase 1
(``sensitivity``) keeps, per tensor, the one that gives the better output SQNR. A tensor without a
histogram takes min/max at every width.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import onnx

from onnxmp.quant import numerics
from onnxmp.quant.groups import QuantPlan
from onnxmp.runtime.data import CalibrationSet
from onnxmp.runtime.session import make_session

logger = logging.getLogger(__name__)

HIST_BINS = 2048
# Samples per run of the two passes, which fetch every watched activation (see ``in_runs_of``).
RUN_SAMPLES = 4


@dataclasses.dataclass(frozen=True)
class ActivationStats:
    """Observed distribution of one activation tensor over the calibration set."""

    minimum: float
    maximum: float
    hist: np.ndarray
    edges: np.ndarray
    zeros: int  # values exactly 0, which quantize without error (with an empty hist: not counted)
    _mse_ranges: dict[int, tuple[float, float]] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def params(self, bits: int, method: str = "mse", margin: float = 0.0) -> tuple[np.float32, int]:
        """(scale, zero point) for this tensor at ``bits`` bits, by ``method`` ("minmax" or "mse";
        16 bits always uses min/max), the range widened by ``margin`` of its width at each end that
        is not 0.
        The MSE search runs once per bit-width (Phase 1 asks for each range many times;
        recomputing it was 30% of Phase 1 on a 60-layer CNN)."""
        if bits >= 16 or method == "minmax" or not self.hist.size:
            lo, hi = self.minimum, self.maximum
        else:
            if bits not in self._mse_ranges:
                self._mse_ranges[bits] = numerics.mse_range(self.hist, self.edges, bits, self.zeros)
            lo, hi = self._mse_ranges[bits]
        width = hi - lo  # an end at 0 stays (a ReLU output keeps zero point 0, which fusions expect)
        return numerics.activation_params(lo - margin * width if lo < 0 else lo, hi + margin * width if hi > 0 else hi, bits)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Per-activation statistics and per-weighted-op MACs per sample."""

    stats: dict[str, ActivationStats]
    macs: dict[str, int]  # weighted op node name -> multiply-accumulates per sample
    non_finite: tuple[str, ...] = ()  # activations holding NaN or Inf on some sample: no stats, stay float
    activation_elements: dict[str, int] = dataclasses.field(default_factory=dict)  # tensor -> elements per sample

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and JSON metadata for the results cache (tensor names can hold any character,
        so arrays are keyed by position)."""
        names = sorted(self.stats)
        arrays = {}
        for i, name in enumerate(names):
            st = self.stats[name]
            arrays[f"hist{i}"], arrays[f"edges{i}"] = st.hist, st.edges
        meta = {"names": names, "macs": self.macs, "non_finite": list(self.non_finite),
                "activation_elements": self.activation_elements,
                "scalars": [[self.stats[n].minimum, self.stats[n].maximum, self.stats[n].zeros] for n in names]}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> Calibration:
        stats = {}
        for i, (name, (lo, hi, zeros)) in enumerate(zip(meta["names"], meta["scalars"], strict=True)):
            stats[name] = ActivationStats(lo, hi, arrays[f"hist{i}"], arrays[f"edges{i}"], int(zeros))
        return cls(stats, {k: int(v) for k, v in meta["macs"].items()}, tuple(meta.get("non_finite", ())),
                   {k: int(v) for k, v in meta.get("activation_elements", {}).items()})


def _observed_values(model: onnx.ModelProto, data: CalibrationSet, names: list[str]):
    """Yield (batch size, {tensor: array}) per run for the given tensors (inputs read from data)."""
    graph_inputs = data.input_names
    produced = [n for n in names if n not in graph_inputs]
    session = make_session(model, optimized=False, outputs=produced) if produced else None
    for feeds in data.feeds():
        # no session run without names: onnxruntime would return every graph output instead
        values = dict(zip(produced, session.run(produced, feeds), strict=True)) if session else {}
        values.update({n: feeds[n] for n in names if n in graph_inputs})
        first = next(iter(feeds.values()))
        yield (len(first) if data.batched else 1), values


@dataclasses.dataclass(frozen=True)
class Ranges:
    """What the first pass saw: each activation's min and max, each weighted op's MACs and each
    activation's elements per sample, and the activations holding NaN or Inf."""

    lo: dict[str, float]
    hi: dict[str, float]
    macs: dict[str, int]
    activation_elements: dict[str, int]
    non_finite: tuple[str, ...]


def observe_ranges(model: onnx.ModelProto, plan: QuantPlan, data: CalibrationSet,
                   progress: Callable[[int, int, str], None] | None = None) -> Ranges:
    """The first float pass over ``data``. ``progress(done, total, detail)`` hears of every run
    (of both passes: the total counts two)."""
    data = data.in_runs_of(RUN_SAMPLES)
    total = 2 * data.num_feeds
    names = list(plan.activations)
    out_of = {op.node: op.macs_tensor for op in plan.weighted_ops}
    watched = list(dict.fromkeys(names + list(out_of.values())))
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    out_elems: dict[str, int] = {}
    act_elems = dict.fromkeys(names, 0)
    non_finite: set[str] = set()
    samples = 0
    for run, (count, values) in enumerate(_observed_values(model, data, watched), 1):
        if progress:
            progress(run, total, "ranges")
        samples += count
        for name in names:
            arr = values[name]
            act_elems[name] += arr.size
            if arr.size and not np.isfinite(arr).all():
                non_finite.add(name)
            elif arr.size:
                lo[name] = min(lo[name], float(arr.min()))
                hi[name] = max(hi[name], float(arr.max()))
        for out in out_of.values():
            out_elems[out] = out_elems.get(out, 0) + values[out].size
    return Ranges(lo, hi, _macs_per_sample(plan, out_elems, samples),
                  {n: round(count / max(samples, 1)) for n, count in act_elems.items()},
                  tuple(n for n in names if n in non_finite))


def fill_histograms(model: onnx.ModelProto, data: CalibrationSet, ranges: Ranges, names: set[str] | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> Calibration:
    """The second float pass: a histogram over each activation's range, for ``names`` (default:
    every activation with a finite range); the others keep min/max only. Skipped when none needs one."""
    data = data.in_runs_of(RUN_SAMPLES)
    edges = {n: (min(ranges.lo[n], 0.0), max(ranges.hi[n], 0.0)) for n in ranges.lo
             if np.isfinite(ranges.lo[n]) and n not in ranges.non_finite and (names is None or n in names)}
    hists = {n: np.zeros(HIST_BINS, np.int64) for n in edges}
    zeros = dict.fromkeys(edges, 0)
    if edges:
        for run, (_, values) in enumerate(_observed_values(model, data, list(edges)), 1):
            if progress:
                progress(data.num_feeds + run, 2 * data.num_feeds, "histograms")
            for name, (lo, hi) in edges.items():  # equal-width bins: numpy's fast path, no sort
                hists[name] += np.histogram(values[name], bins=HIST_BINS, range=(lo, hi) if hi > lo else None)[0]
                zeros[name] += int(np.count_nonzero(values[name] == 0))
    elif progress:
        progress(2 * data.num_feeds, 2 * data.num_feeds, "histograms")
    stats = {}
    for name in ranges.lo:
        if name in ranges.non_finite:
            continue
        if not np.isfinite(ranges.lo[name]):
            logger.warning("activation %s was empty on every calibration sample; its range is [0, 0]", name)
            stats[name] = ActivationStats(0.0, 0.0, np.zeros(1, np.int64), np.zeros(2), 0)
        elif name in edges:
            lo, hi = edges[name]
            stats[name] = ActivationStats(ranges.lo[name], ranges.hi[name], hists[name],
                                          np.linspace(lo, hi, HIST_BINS + 1), zeros[name])
        else:
            stats[name] = ActivationStats(ranges.lo[name], ranges.hi[name], np.zeros(0, np.int64), np.zeros(0), 0)
    return Calibration(stats, ranges.macs, ranges.non_finite, ranges.activation_elements)


def calibrate(model: onnx.ModelProto, plan: QuantPlan, data: CalibrationSet,
              progress: Callable[[int, int, str], None] | None = None) -> Calibration:
    """Both passes, with a histogram for every activation. Activations that hold NaN or Inf (an
    attention mask of -inf) get no statistics and are listed instead."""
    return fill_histograms(model, data, observe_ranges(model, plan, data, progress), None, progress)


def _macs_per_sample(plan: QuantPlan, out_elems: dict[str, int], samples: int) -> dict[str, int]:
    """Each weighted op's MACs per sample: its output elements per sample times its reduction."""
    return {op.node: round(out_elems[op.macs_tensor] / max(samples, 1)) * op.reduction for op in plan.weighted_ops}


def layer_sizes(model: onnx.ModelProto, plan: QuantPlan, data: CalibrationSet) -> tuple[dict[str, int], dict[str, int]]:
    """MACs per sample of each weighted op and elements per sample of each activation, from one
    float run on the first feed: the shapes a dry run needs, without the statistics of a calibration."""
    outputs = list(dict.fromkeys([op.macs_tensor for op in plan.weighted_ops] + list(plan.activations)))
    count, values = next(_observed_values(model, data, outputs))
    sizes = {name: values[name].size for name in outputs}
    return _macs_per_sample(plan, sizes, count), {n: round(sizes[n] / max(count, 1)) for n in plan.activations}
