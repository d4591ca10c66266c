"""The optimize pipeline: calls the stages in order and holds no math.

load → prepare → quantizers & groups → calibrate → Phase 1 → Phase 2 → pick (budget or
accuracy target) → export → measure. ``analyze`` is the part up to Phase 1, shared by the
``analyze`` command, and cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

import numpy as np
import onnx

from onnxmp._version import __version__
from onnxmp.errors import BudgetTooLowError, ConfigError, ModelError, NothingToQuantizeError, TargetRefusedError
from onnxmp.model.files import check_writable, model_file_bytes, save_json, save_model
from onnxmp.model.graph import subgraph_work
from onnxmp.model.large import is_large, save_with_external_data
from onnxmp.model.loader import load_model, prepare_model
from onnxmp.output.export import dequantize_constant_operands, export_qdq
from onnxmp.output.report import build_record, write_report_dir
from onnxmp.quant import numerics
from onnxmp.quant.calibrate import Calibration, Ranges, fill_histograms, layer_sizes, observe_ranges
from onnxmp.quant.candidates import Assignment, Candidate, parse_candidates
from onnxmp.quant.cost import METRICS, CostModel
from onnxmp.quant.groups import QUANTIZED_OPS, QuantPlan, find_quantizers, weight_array
from onnxmp.quant.params import QuantParams
from onnxmp.quant.smoothing import smooth_matmul_inputs
from onnxmp.rounding.adaround import AdaRoundConfig
from onnxmp.rounding.apply import RoundingReport, adaround_bits, apply_adaround
from onnxmp.runtime.cache import ResultsCache, cache_key
from onnxmp.runtime.data import CalibrationSet, check_layout, collect_feeds, resolve_calibration
from onnxmp.runtime.executor import BACKENDS
from onnxmp.runtime.session import make_session, observed_tensors, run_over
from onnxmp.search.accuracy_target import SearchResult, TargetDrop, binary_search, interpolation_search
from onnxmp.search.evaluate import Evaluator, agreement_evaluator, call_evaluator, labels_evaluator
from onnxmp.search.pareto import Choice, ParetoCurve, choose_for_budget, group_ladder, pareto_curve
from onnxmp.search.partial import DEFAULT_MAX_MEMORY
from onnxmp.search.phase1 import sensitivity_list
from onnxmp.search.refine import Refinement, refine_ranges
from onnxmp.search.sensitivity import Sensitivity
from onnxmp.search.simulate import Simulator
from onnxmp.targets import get_target
from onnxmp.targets.shapes import fix_symbolic_dims, parse_fixed_dims

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int, str], None]
# Session option that keeps onnxruntime from computing INT8-weight MatMuls with 8-bit activations.
PRECISE_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0"}
HELD_BACK_FRACTION = 0.25
DEFAULT_BUDGET = 0.5
# Phase 1 ranks groups on this many calibration samples (spread over the set; 0: all), where each
# evaluation costs about one float pass over them; calibration, the measured points and the
# output's SQNR use every sample. All by default: in benchmarks/phase1_subset.py (5a65f8e), 16
# samples made Phase 1 1.6-3.2x faster on the real models (ppocr_rec 32.8 -> 10.7 s, minilm 40.4
# -> 12.8 s) and shipped the same SQNR on digits and minilm, 0.28-0.93 dB less on ppocr_rec,
# ppocr_det and ppocr_cls (task scores within 0.0017 either way): on ppocr_cls and ppocr_rec that
# is within what SQNR resolves there (benchmarks/sqnr_resolution.py), but no model gained.
DEFAULT_PHASE1_SAMPLES = 0
# under the latency metric the default budget is at least this much (a fraction of the float
# time) above the cheapest point. The cheapest point's cost moves between cold runs with the
# machine's speed (ppocr_det: 0.445 to 0.502 of float in nine runs), so a fixed 0.5 fell on it in
# some runs and a few steps above it in others (26.6 to 35.1 dB); measured from it, the curve's
# steps stay put, and the last 2% of the time are its least efficient moves (on ppocr_det, group 12
# alone: 9 dB estimated for under 1% of the time)
LATENCY_SLACK = 0.02
# how much faster (a fraction of its time) uniform W8A8 must run than the estimate's cheapest point
# to ship in its place where the budget is below the cheapest: more than the timing's noise
CHEAPEST_MARGIN = 0.02
# a uniform point within the budget runs on the target beside the chosen one only where it simulates
# at most this far below it: the simulation's error on a target, ppocr_rec's 3.8 dB on HTP at most
RIVAL_WITHIN_DB = 3.0


@dataclasses.dataclass(frozen=True)
class OptimizeConfig:
    """Every option of ``optimize``; the CLI builds one of these."""

    candidates: tuple[Candidate, ...] | None = None  # None: the target's default candidates
    budget: float | None = None  # None: DEFAULT_BUDGET, or the cheapest assignment where that is below it
    metric: str | None = None  # None: the target's default metric (the one that tracks its latency)
    calib: str | os.PathLike | Iterable[Mapping[str, np.ndarray]] | None = None  # a path, or feeds (see runtime.data)
    calib_layout: str = "auto"  # how a path's arrays are read: "samples", "feeds", or "auto" by their shapes
    report: str | None = None  # JSON record
    report_dir: str | None = None  # JSON record, Pareto plot and Markdown summary
    cache_dir: str | None = None  # results cache; None disables it
    target_drop: str | None = None  # e.g. "1" (absolute) or "1%" (relative); overrides budget
    evaluator: Evaluator | None = None  # scores candidate models for target_drop
    eval_data: str | None = None  # inputs + labels for built-in top-1 accuracy
    adaround: str = "auto"  # "auto": AdaRound weights below 8 bits; "on": below 16; "off"
    adaround_iterations: int = 1000
    measured_points: int = 12  # curve points whose simulated SQNR is measured for the record
    phase1_samples: int = DEFAULT_PHASE1_SAMPLES  # samples (or feeds) Phase 1 measures on, spread over the set; 0: all
    refine_ranges: bool = True  # choose the shipped point's ranges again in its own context (search.refine)
    compare_binary_search: bool = False  # also run plain binary search on the same curve (benchmarks)
    workers: int = 1  # processes for Phase 1 and AdaRound (same results as one)
    backend: str = "local"  # where workers run: "local" processes or "ray"
    max_memory: int = DEFAULT_MAX_MEMORY  # bytes of activations Phase 1 may cache
    target: str = "ort"  # deployment target profile (onnxmp.targets)
    fix_dims: str | None = None  # "name=value,..." for symbolic dimensions of the output model
    eval_on_target: bool = False  # the accuracy-target search scores candidates on the target's runtime
    float_subgraphs: bool = False  # quantize the main graph of a model whose If/Loop/Scan bodies hold weighted ops
    budget_is_default: bool = False  # set by resolved(): no budget was given

    def __post_init__(self) -> None:
        # feeds from Python (a generator, a CalibrationDataReader) are read once, here, so every
        # stage that loads the data again sees all of them
        if self.calib is not None and not isinstance(self.calib, (str, os.PathLike, tuple)):
            object.__setattr__(self, "calib", collect_feeds(self.calib))

    def resolved(self) -> OptimizeConfig:
        """This config with the target's defaults where it leaves the candidates or the metric open."""
        profile = get_target(self.target)
        default = self.budget is None and self.target_drop is None
        return dataclasses.replace(self, candidates=self.candidates or parse_candidates(profile.default_candidates),
                                   metric=self.metric or profile.default_metric,
                                   budget=DEFAULT_BUDGET if default else self.budget,
                                   budget_is_default=self.budget_is_default or default)

    def validate(self) -> None:
        if self.candidates is None or self.metric is None or (self.budget is None and self.target_drop is None):
            return self.resolved().validate()
        if self.metric not in METRICS:
            raise ConfigError(f"unknown --metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if self.target_drop is None and (self.budget is None or not 0 < self.budget <= 1):
            raise ConfigError(f"--budget must be in (0, 1], a fraction of the baseline cost; got {self.budget}")
        if self.target_drop is not None:
            TargetDrop.parse(self.target_drop)
        if self.evaluator is not None and self.eval_data is not None:
            raise ConfigError("give either --eval or --eval-data, not both")
        if not self.candidates:
            raise ConfigError("no candidates given")
        adaround_bits(self.candidates, self.adaround)
        get_target(self.target)
        parse_fixed_dims(self.fix_dims)
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown --backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.max_memory < 0:
            raise ConfigError(f"--max-memory must not be negative, got {self.max_memory}")
        check_layout(self.calib_layout)
        if self.phase1_samples < 0:
            raise ConfigError(f"--phase1-samples must be 0 (all) or more, got {self.phase1_samples}")
        if self.adaround_iterations < 1:
            raise ConfigError(f"--adaround-iters must be at least 1, got {self.adaround_iterations}")


@dataclasses.dataclass
class OptimizeResult:
    model: onnx.ModelProto
    record: dict


@dataclasses.dataclass
class Analysis:
    """Everything up to Phase 1: the prepared model, its quantizers and their sensitivities."""

    model: onnx.ModelProto
    data: CalibrationSet
    heldout: CalibrationSet | None
    plan: QuantPlan
    calibration: Calibration
    params: QuantParams
    simulator: Simulator
    base_nsr: float
    sensitivities: list[Sensitivity]
    cache: ResultsCache
    cache_hit: bool
    timings: dict[str, float]
    rounding: RoundingReport | None
    allowed: dict[int, tuple[Candidate, ...]]  # per group, the candidates the target allows
    costs: CostModel  # what each group costs at each candidate, under every metric


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    logger.info("%s ...", stage)
    start = time.perf_counter()
    yield
    timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - start, 3)  # a stage may run in parts


def _stage_progress(progress: Progress | None, stage: str):
    """A (done, total, detail) callback for one stage, or None."""
    return (lambda done, total, detail: progress(stage, done, total, detail)) if progress else None


def _split_heldout(data: CalibrationSet, config: OptimizeConfig) -> tuple[CalibrationSet, CalibrationSet | None]:
    """Hold back a quarter of the samples when the default evaluator will score a target."""
    if config.target_drop is None or config.evaluator is not None or config.eval_data is not None:
        return data, None
    n = data.num_samples
    held = max(1, round(n * HELD_BACK_FRACTION))
    if n - held < 1:
        raise ConfigError("--target-drop without --eval needs at least 2 calibration samples (some are held back)")
    order = np.arange(n)
    return data.subset(order[: n - held]), data.subset(order[n - held:])


def analyze(input_path: str, config: OptimizeConfig = OptimizeConfig(), progress: Progress | None = None) -> Analysis:
    """Load, prepare, calibrate and run Phase 1 (or reuse them from the cache)."""
    config = config.resolved()
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        model, data, heldout, plan = _load_and_place(input_path, config, smooth=True)
        profile = get_target(config.target)
        quantized_ops = QUANTIZED_OPS | profile.extra_quantized_ops
    logger.info("%d groups, %d activation quantizers, %d weighted ops, %d calibration samples",
                len(plan.groups), len(plan.activations), len(plan.weighted_ops), data.num_samples)
    bits = adaround_bits(config.candidates, config.adaround)
    options = {"candidates": [str(c) for c in config.candidates], "version": __version__, "target": config.target,
               "adaround_bits": list(bits), "adaround_iterations": config.adaround_iterations if bits else None,
               "phase1_samples": config.phase1_samples}
    cache = ResultsCache(config.cache_dir, cache_key(model, data, options))
    cached = cache.load_json("phase1.json")
    arrays = cache.load_arrays("calibration.npz")
    with _timed(timings, "calibrate"):
        reuse = cached is not None and arrays is not None
        if reuse:
            calibration = Calibration.from_arrays(arrays, cached["calibration"])
            ranges = Ranges({n: s.minimum for n, s in calibration.stats.items()},
                            {n: s.maximum for n, s in calibration.stats.items()},
                            calibration.macs, calibration.activation_elements, calibration.non_finite)
        else:
            ranges = observe_ranges(model, plan, data, _stage_progress(progress, "calibrate"))
        plan = _keep_non_finite_float(model, plan, ranges.non_finite, quantized_ops, profile)
        allowed = profile.group_candidates(plan, config.candidates, model)
    costs = CostModel.build(plan, ranges.macs, _weight_sizes(model), profile.latency,
                            _layer_times(model, plan, data, cache, config, profile, timings), ranges.activation_elements)
    worth = _worth_measuring(plan, allowed, costs, config, profile)
    low = _below_16_bits(plan, worth)
    if reuse and any(not calibration.stats[a].hist.size for a in low if a in calibration.stats):
        reuse = False  # cached under another metric, without a histogram this one needs: fill them again
    with _timed(timings, "calibrate"):
        if not reuse:  # histograms only where Phase 1 may choose an 8- or 4-bit range
            calibration = fill_histograms(model, data, ranges, low, _stage_progress(progress, "calibrate"))
        observed = observed_tensors(model)
        float_session = functools.cache(lambda: make_session(model, outputs=observed))
        largest = 4 * max(ranges.activation_elements.values(), default=0)  # bytes a sample, float32
        runs = data.in_runs_under(largest)  # the float and simulated passes from here on
        reference = _reference(cache, float_session, runs, observed)
        params = QuantParams(model, plan, calibration, profile.range_margin, profile.range_margin_ops)
    hit = reuse and cached.get("groups") == len(plan.groups) and _holds(cached["sensitivity"], worth)
    rounding = None
    if bits:
        with _timed(timings, "adaround"):
            rounding = apply_adaround(model, plan, params, data, bits,
                                      AdaRoundConfig(iterations=config.adaround_iterations), cache,
                                      _stage_progress(progress, "adaround"), config.workers)
    simulator = Simulator(model, plan, params, runs, reference)
    with _timed(timings, "phase1"):
        if hit:
            params.range_method.update({(n, int(b)): m for n, b, m in cached["range_method"]})
            base_nsr = cached["base_nsr"]
            sensitivities = [Sensitivity(gid, Candidate.parse(c), nsr, ev) for gid, c, nsr, ev in cached["sensitivity"]]
            logger.info("Phase 1 results reused from the cache (%s)", cache.folder)
        else:
            subset = _phase1_subset(runs, config.phase1_samples)
            ranker = simulator if subset is runs else simulator.on_data(subset, run_over(float_session(), subset, observed))
            phase1 = sensitivity_list(ranker, plan.groups, config.candidates, _stage_progress(progress, "phase 1"),
                                      config.workers, config.max_memory, config.backend, worth)
            base_nsr, sensitivities = phase1.base_nsr, phase1.sensitivities
            _store_phase1(cache, plan, calibration, params, base_nsr, sensitivities)
    return Analysis(model, data, heldout, plan, calibration, params, simulator, base_nsr, sensitivities,
                    cache, hit, timings, rounding, allowed, costs)


def _worth_measuring(plan: QuantPlan, allowed: dict[int, tuple[Candidate, ...]], costs: CostModel,
                     config: OptimizeConfig, profile) -> dict[int, tuple[Candidate, ...]]:
    """Per group, the candidates Phase 2 can choose: those on its ladder in some candidate family
    (a candidate that costs no less than a more precise one never is), and its most expensive one.
    Phase 1 measures only these: on ``ort`` a weightless group, or a layer whose W8A8 kernel is no
    faster than float, stays float whatever it would measure (72 of ppocr_cls's 81 groups)."""
    cost = lambda g, c: costs.group_cost(g, c, config.metric)  # noqa: E731
    worth = {}
    for group in plan.groups:
        options = allowed[group.gid]
        rungs = {c for family in profile.families(config.candidates)
                 for c in group_ladder(group.gid, tuple(o for o in options if o in family), {}, cost)}
        worth[group.gid] = tuple(c for c in options if c in rungs or c == options[-1])
    skipped = sum(len(worth[g]) < len(allowed[g]) for g in worth)
    if skipped:
        logger.info("%d of %d groups have candidates no budget would choose (%s costs no less than a more precise "
                    "one); Phase 1 does not measure those", skipped, len(worth), config.metric)
    return worth


def _reference(cache: ResultsCache, session: Callable[[], object], data: CalibrationSet,
               observed: list[str]) -> list[np.ndarray]:
    """The float model's values of the observed tensors over ``data``, from the cache or one float pass."""
    stored = cache.load_arrays("reference.npz")
    if stored is not None and len(stored) == len(observed):
        return [stored[f"t{i}"] for i in range(len(observed))]
    reference = run_over(session(), data, observed)
    cache.save_arrays("reference.npz", {f"t{i}": value for i, value in enumerate(reference)})
    return reference


def _phase1_subset(data: CalibrationSet, count: int) -> CalibrationSet:
    """``count`` samples (or feeds) spread evenly over ``data``, or ``data`` itself when it holds
    no more (or ``count`` is 0)."""
    if not count or data.num_samples <= count:
        return data
    return data.subset(np.unique(np.linspace(0, data.num_samples - 1, count).round().astype(int)))


def _below_16_bits(plan: QuantPlan, worth: dict[int, tuple[Candidate, ...]]) -> set[str]:
    """The activations of groups that Phase 1 measures below 16 bits (their range may be clipped)."""
    return {a for g in plan.groups if any(c.a_bits < 16 for c in worth[g.gid]) for a in g.activations}


def _holds(entries: list, worth: dict[int, tuple[Candidate, ...]]) -> bool:
    """Whether cached Phase 1 entries cover every candidate worth measuring (a cache written
    under another metric may lack some)."""
    have = {(gid, c) for gid, c, *_ in entries}
    return all((gid, str(c)) in have for gid, options in worth.items() for c in options)


def _load_and_place(input_path: str, config: OptimizeConfig, smooth: bool
                    ) -> tuple[onnx.ModelProto, CalibrationSet, CalibrationSet | None, QuantPlan]:
    """The prepared model (rewritten for the target, SmoothQuant-scaled where it applies and
    ``smooth``), the calibration samples (and the held-back ones) and where its quantizers go."""
    model = prepare_model(load_model(input_path), os.path.dirname(os.path.abspath(input_path)))
    _check_subgraphs(model, config.float_subgraphs)
    profile = get_target(config.target)
    if profile.rewrite is not None:
        model = profile.rewrite(model)
    data, heldout = _split_heldout(resolve_calibration(config.calib, input_path, model, config.calib_layout), config)
    if profile.smooth_quant and smooth:
        model, _ = smooth_matmul_inputs(model, data)
    plan = find_quantizers(model, quantized_ops=QUANTIZED_OPS | profile.extra_quantized_ops, integer=profile.placement,
                           float_units=profile.float_units, clamp_fused_ops=profile.clamp_fused_ops)
    return model, data, heldout, plan


def _check_subgraphs(model: onnx.ModelProto, keep_float: bool) -> None:
    """Refuse a model whose control-flow bodies hold weighted work (their ops would stay float
    while the record spoke of a quantized model), unless the user keeps them float knowingly."""
    busy = [w for w in subgraph_work(model.graph) if w.ops]
    if busy and not keep_float:
        more = f" (and {len(busy) - 1} more such nodes)" if len(busy) > 1 else ""
        raise ModelError(f"{busy[0].describe()}{more}: onnxmp quantizes the main graph only, so that work would "
                         "stay float. Export the model without control flow around it (e.g. with the If folded for "
                         "the input you deploy), or pass --float-subgraphs to quantize the main graph and keep the "
                         "bodies float (recorded)")


@dataclasses.dataclass
class Inspection:
    """What a run would quantize, found in seconds before any calibration (``--dry-run``)."""

    plan: QuantPlan
    allowed: dict[int, tuple[Candidate, ...]]  # per group, the candidates the target allows
    macs: dict[int, int]  # per group, MACs per sample of its weighted ops
    weights: dict[int, int]  # per group, number of weights
    config: OptimizeConfig
    activation_elements: dict[int, int] = dataclasses.field(default_factory=dict)  # per group, per sample


def inspect_model(input_path: str, config: OptimizeConfig = OptimizeConfig()) -> Inspection:
    """Groups, the candidates each may take on the target, their MACs and weights, and every
    tensor kept float with its reason: the plan ``optimize`` would search, from the graph and one
    float run on one feed (for the shapes), with no statistics, no Phase 1 and nothing written."""
    config = config.resolved()
    config.validate()
    model, data, _, plan = _load_and_place(input_path, config, smooth=False)
    profile = get_target(config.target)
    allowed = profile.group_candidates(plan, config.candidates, model)
    macs, activation_elements = layer_sizes(model, plan, data)
    costs = CostModel.build(plan, macs, _weight_sizes(model), activation_elements=activation_elements)
    return Inspection(plan, allowed, costs.macs, costs.weights, config, costs.activations)


def _weight_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Elements of every initializer."""
    return {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}


def _keep_non_finite_float(model: onnx.ModelProto, plan: QuantPlan, non_finite: tuple[str, ...],
                           quantized_ops: frozenset[str], profile) -> QuantPlan:
    """The plan without the activations that hold NaN or Inf on the calibration data (an
    attention mask of -inf): no scale can represent them, so they stay float."""
    if not non_finite:
        return plan
    logger.info("%d activation(s) hold NaN or Inf on the calibration data and stay float: %s",
                len(non_finite), ", ".join(non_finite[:5]))
    try:
        return find_quantizers(model, dict.fromkeys(non_finite, "NaN or Inf on the calibration data"),
                               quantized_ops, profile.placement, profile.float_units, profile.clamp_fused_ops)
    except NothingToQuantizeError as exc:
        raise ModelError(f"the float model computes NaN or Inf at {non_finite[0]!r} and every other "
                         "tensor onnxmp could quantize, on the calibration data; check the model and the scale "
                         "of the data") from exc


def _store_phase1(cache: ResultsCache, plan, calibration, params, base_nsr, sensitivities) -> None:
    arrays, meta = calibration.to_arrays()
    cache.save_arrays("calibration.npz", arrays)
    cache.save_json("phase1.json", {
        "groups": len(plan.groups),
        "calibration": meta,
        "range_method": [[n, b, m] for (n, b), m in sorted(params.range_method.items())],
        "base_nsr": base_nsr,
        "sensitivity": [[s.gid, str(s.candidate), s.nsr, s.evaluated] for s in sensitivities],
    })


def optimize(input_path: str, output_path: str | None, config: OptimizeConfig = OptimizeConfig(),
             progress: Progress | None = None) -> OptimizeResult:
    """Quantize ``input_path`` to a mixed-precision QDQ model within ``config.budget`` (or the
    cheapest one within ``config.target_drop`` of the baseline score).

    Writes ``output_path`` and the reports atomically when given; returns the model and the JSON
    record either way.
    """
    config = config.resolved()
    config.validate()
    for path in (output_path, config.report):
        if path:
            check_writable(path, input_path)
    analysis = analyze(input_path, config, progress)
    timings, simulator, plan = analysis.timings, analysis.simulator, analysis.plan
    with _timed(timings, "phase2"):
        profile = get_target(config.target)
        costs = analysis.costs
        table = {(s.gid, s.candidate): s.nsr for s in analysis.sensitivities}
        group_cost = lambda g, c: costs.group_cost(g, c, config.metric)  # noqa: E731
        curves = _family_curves(analysis, profile.families(config.candidates), table, group_cost)
        uniform = _uniform_points(analysis, config)
    target_record, before_fallback, families, refinement = None, None, None, None
    if config.target_drop is not None:
        with _timed(timings, "target search"):
            curve, choice, target_record = _search_target_families(analysis, curves, table, group_cost, config,
                                                                   progress)
        with _timed(timings, "phase2"):
            measured = _measure_curve(simulator, curve, config.measured_points)
            chosen_nsr = simulator.settled_nsr(choice.assignment)
        qdq, shipped, latency, on_target = _ship(analysis, choice, config, profile)
    else:
        asked = config.budget
        with _timed(timings, "phase2"):
            ranked, config, families = _choose_among_families(simulator, curves, config, table, group_cost)
        timed_cheapest = None
        for rank, (curve, greedy) in enumerate(ranked):
            # the measured points, and the choice they may replace: points near the budget's choice
            # differ from it in a few groups, so they run from cached cuts of its values
            with _timed(timings, "phase2"), simulator.from_cuts_of(greedy.assignment, config.max_memory):
                measured = _measure_curve(simulator, curve, config.measured_points, config.budget)
                choice, chosen_nsr = _best_within_budget(simulator, curve, greedy, measured, uniform,
                                                         analysis.allowed, config, group_cost)
            # below the cheapest point, or (by default, under latency) near it: the fastest model is asked for
            if config.budget != asked and rank == 0:
                with _timed(timings, "phase2"):
                    choice, chosen_nsr, timed_cheapest = _fastest_of_cheapest(analysis, curve, choice, chosen_nsr,
                                                                              uniform, config, profile, group_cost)
            before_fallback = _budget_choice_entry(simulator, greedy, choice)
            methods = dict(simulator.params.range_method)
            if config.refine_ranges:
                with _timed(timings, "refine ranges"):
                    refinement = refine_ranges(simulator, choice.assignment, table, max_memory=config.max_memory)
                    chosen_nsr = refinement.nsr_after
            try:
                qdq, shipped, latency, on_target = _ship(analysis, choice, config, profile)
                if latency is not None and timed_cheapest is not None:
                    latency["cheapest_timed"] = timed_cheapest
                break
            except TargetRefusedError as exc:  # the runtime refused this width: the next best one
                _set_range_methods(simulator, methods)
                if rank + 1 == len(ranked):
                    raise
                logger.warning("%s; taking the best point of %s instead", exc, _family_name(ranked[rank + 1][0]))
                families[rank]["refused_on_target"] = str(exc)
        rival = _uniform_rival(analysis, curve, choice, chosen_nsr, uniform, config) if on_target else None
        if rival is not None:
            shipment = _better_on_target(analysis, Shipment(choice, chosen_nsr, refinement, qdq, shipped, latency,
                                                            on_target), rival, methods, table, config, profile)
            if shipment.choice is rival[1]:
                before_fallback["fallback"] = f"{rival[0]}, more accurate on {profile.name}"
            choice, chosen_nsr, refinement, qdq, shipped, latency, on_target = shipment
    record = build_record(
        input_path=input_path, config=config, plan=plan, costs=costs, sensitivities=analysis.sensitivities,
        base_nsr=analysis.base_nsr, curve=curve, choice=choice, chosen_nsr=chosen_nsr, measured=measured,
        uniform=uniform, shipped=shipped, timings=timings, num_samples=analysis.data.num_samples,
        baseline=curves[0].start, families=families,
        evaluations=simulator.evaluations, target=target_record, on_target=on_target, latency=latency,
        budget_choice=before_fallback, refinement=refinement,
        cache={"folder": analysis.cache.folder, "hit": analysis.cache_hit},
        adaround=None if analysis.rounding is None else {**dataclasses.asdict(analysis.rounding),
                                                          "seconds_per_layer": analysis.rounding.seconds_per_layer},
    )
    if output_path:
        record["files"] = {"output": output_path, "output_bytes": save_model(qdq, output_path),
                           "input_bytes": model_file_bytes(input_path)}
    if config.report:
        save_json(record, config.report)
    if config.report_dir:
        write_report_dir(record, config.report_dir)
    return OptimizeResult(qdq, record)


def _layer_times(model: onnx.ModelProto, plan: QuantPlan, data: CalibrationSet, cache: ResultsCache,
                 config: OptimizeConfig, profile, timings: dict[str, float]) -> dict | None:
    """Each weighted layer's measured time on the target (metric latency), from the cache or timed now."""
    if config.metric != "latency" or profile.measure_latency is None or not plan.weighted_ops:
        return None
    cached = cache.load_json("latency.json")
    if cached is not None and set(cached) == {op.node for op in plan.weighted_ops}:
        return cached
    with _timed(timings, "latency"):
        times = profile.measure_latency(model, plan, data, functools.partial(weight_array, model))
    cache.save_json("latency.json", times)
    return times


def _choose_for_budget(curve: ParetoCurve, config: OptimizeConfig, table: dict,
                       group_cost) -> tuple[Choice, OptimizeConfig]:
    """The budget's choice, and the config with the budget used. Where the budget is below what
    the target can run, the cheapest assignment, with a warning, when no budget was given or the
    metric is measured on this machine (latency: how low a model can go depends on its kernels
    here, so the same command must not fail on one machine and pass on another); else an error.
    Under latency the default budget is at least ``LATENCY_SLACK`` above the cheapest point."""
    cheapest = curve.points[-1].relative_cost
    slacked = min(cheapest + LATENCY_SLACK, 1.0)
    if config.budget_is_default and config.metric == "latency" and config.budget < slacked:
        logger.info("default budget: %.3f of the float time, %g above the cheapest assignment's %.3f on this "
                    "machine", slacked, LATENCY_SLACK, cheapest)
        config = dataclasses.replace(config, budget=slacked)
    try:
        return choose_for_budget(curve, config.budget, table, group_cost), config
    except BudgetTooLowError as exc:
        if not (config.budget_is_default or config.metric == "latency"):
            raise
        where = " on this machine" if config.metric == "latency" else ""
        logger.warning("the budget %g is below the cheapest assignment on --target %s (%.3f of the most precise "
                       "one's %s%s); taking the cheapest", config.budget, config.target, exc.cheapest, config.metric, where)
        config = dataclasses.replace(config, budget=exc.cheapest)
        return choose_for_budget(curve, exc.cheapest, table, group_cost), config


def _family_curves(analysis: Analysis, families: tuple[tuple[Candidate, ...], ...], table: dict,
                   group_cost) -> list[ParetoCurve]:
    """One Pareto curve per candidate family the target lets a model mix (one, or one per
    activation width), every curve's costs relative to the first (most expensive) one's start. A
    family that some group cannot take at all is left out."""
    gids = [g.gid for g in analysis.plan.groups]
    curves: list[ParetoCurve] = []
    for family in families:
        allowed = {g: tuple(c for c in analysis.allowed[g] if c in family) for g in gids}
        if not all(allowed.values()):
            logger.info("candidates %s: some group can take none of them; not searched", ",".join(map(str, family)))
            continue
        curves.append(pareto_curve(gids, family, table, analysis.base_nsr, group_cost, allowed,
                                   curves[0].baseline_cost if curves else None))
    return curves


def _family_name(curve: ParetoCurve) -> str:
    return ",".join(map(str, curve.candidates))


def _choose_among_families(simulator: Simulator, curves: list[ParetoCurve], config: OptimizeConfig, table: dict,
                           group_cost) -> tuple[list[tuple[ParetoCurve, Choice]], OptimizeConfig, list[dict] | None]:
    """The budget's choice on each family's curve, best simulated first (each family's choice is
    evaluated once; the next one serves where the target's runtime refuses the first); with one
    family, its choice. Also what each family gave, in that order, for the record."""
    if len(curves) == 1:
        greedy, config = _choose_for_budget(curves[0], config, table, group_cost)
        return [(curves[0], greedy)], config, None
    options = []
    for curve in curves:
        with contextlib.suppress(BudgetTooLowError):
            choice = choose_for_budget(curve, config.budget, table, group_cost)
            options.append((simulator.settled_nsr(choice.assignment), curve, choice))
    if not options:  # below every family's cheapest point: the cheapest family decides, as with one
        cheapest = min(curves, key=lambda c: c.points[-1].relative_cost)
        greedy, config = _choose_for_budget(cheapest, config, table, group_cost)
        options = [(simulator.settled_nsr(greedy.assignment), cheapest, greedy)]
    options.sort(key=lambda o: o[0])
    families = [{"candidates": _family_name(curve), "relative_cost": choice.relative_cost,
                 "simulated_sqnr_db": numerics.nsr_to_db(nsr)} for nsr, curve, choice in options]
    logger.info("one activation width per model: %s; %s first", "; ".join(
        f"{f['candidates']} at {f['relative_cost']:.3f} of the cost {f['simulated_sqnr_db']:.2f} dB" for f in families),
        families[0]["candidates"])
    return [(curve, choice) for _, curve, choice in options], config, families


def _best_within_budget(simulator: Simulator, curve: ParetoCurve, choice: Choice, measured: dict[int, float],
                        uniform: dict[str, dict], allowed: dict, config: OptimizeConfig, group_cost
                        ) -> tuple[Choice, float]:
    """The budget choice, unless a measured curve point or uniform assignment within the budget
    measured better: Phase 1's additive-noise estimate can be wrong where noises interact, and
    what was measured wins over what was estimated."""
    baseline_cost = curve.baseline_cost
    best = (simulator.settled_nsr(choice.assignment), choice)
    options = [(nsr, curve.assignment_at(i), i) for i, nsr in measured.items()]
    options += [(uniform[str(c)]["nsr"], uniform_assignment(allowed, c), -1)
                for c in curve.candidates]  # one width per model: this curve's
    for nsr, assignment, index in options:
        cost = sum(group_cost(g, c) for g, c in assignment.items())
        if cost <= config.budget * baseline_cost * (1 + 1e-9) and nsr < best[0]:
            logger.info("a measured %s point within budget beats the estimate's choice: %.2f dB vs %.2f dB",
                        "curve" if index >= 0 else "uniform", numerics.nsr_to_db(nsr), numerics.nsr_to_db(best[0]))
            best = (nsr, Choice(assignment, cost, cost / baseline_cost, nsr, index, True))
    return best[1], best[0]


def _fastest_of_cheapest(analysis: Analysis, curve: ParetoCurve, choice: Choice, chosen_nsr: float,
                         uniform: dict[str, dict], config: OptimizeConfig, profile, group_cost
                         ) -> tuple[Choice, float, dict | None]:
    """Where the budget is below the cheapest point, or by default within ``LATENCY_SLACK`` of it
    (the fastest model is asked for), the estimate's point and uniform W8A8 timed whole on the
    target's runtime, and the faster one kept: the per-layer estimate prices each integer layer
    with the conversions at its ends, which a chain of integer layers does not run, so the
    all-integer model can be the faster one (digits: 0.77x float against 0.82x for the mix the
    estimate put level with it, benchmarks/results/deploy.md at 000bf26). Returns the choice, its
    NSR and what was timed."""
    w8a8 = Candidate(8, 8)
    if profile.time_models is None or w8a8 not in curve.candidates or is_large(analysis.model):
        return choice, chosen_nsr, None
    assignment = uniform_assignment(analysis.allowed, w8a8)
    if assignment == choice.assignment:
        return choice, chosen_nsr, None
    models = {name: _deployable(_export(analysis, a), analysis.data, config)
              for name, a in (("cheapest estimate", choice.assignment), ("uniform W8A8", assignment))}
    ms = profile.time_models(models, analysis.data)
    faster = ms["uniform W8A8"] < ms["cheapest estimate"] * (1 - CHEAPEST_MARGIN)
    logger.info("the budget is below the cheapest point: timed whole, the estimate's cheapest point takes %.3f ms, "
                "uniform W8A8 %.3f ms; %s ships", ms["cheapest estimate"], ms["uniform W8A8"],
                "uniform W8A8" if faster else "the estimate's point")
    timed = {"ms": ms, "shipped": "uniform W8A8" if faster else "cheapest estimate"}
    if not faster:
        return choice, chosen_nsr, timed
    cost = float(sum(group_cost(g, c) for g, c in assignment.items()))
    nsr = uniform[str(w8a8)]["nsr"]
    return Choice(assignment, cost, cost / curve.baseline_cost, nsr, -1, True), nsr, timed


def _set_range_methods(simulator: Simulator, methods: Mapping[tuple[str, int], str]) -> None:
    simulator.params.range_method.clear()
    simulator.params.range_method.update(methods)
    simulator.forget_settled()


def _uniform_rival(analysis: Analysis, curve: ParetoCurve, choice: Choice, chosen_nsr: float,
                   uniform: dict[str, dict], config: OptimizeConfig) -> tuple[str, Choice] | None:
    """The uniform point within the budget that simulated best, where the choice is another
    point and that one simulated within ``RIVAL_WITHIN_DB`` of it: what ``_better_on_target``
    runs beside it."""
    limit = config.budget * curve.baseline_cost * (1 + 1e-9)
    fits = [c for c in config.candidates if not c.is_float and uniform[str(c)]["cost"] <= limit]
    if not fits:
        return None
    cand = min(fits, key=lambda c: uniform[str(c)]["nsr"])
    point = uniform[str(cand)]
    if numerics.nsr_to_db(point["nsr"]) < numerics.nsr_to_db(chosen_nsr) - RIVAL_WITHIN_DB:
        return None
    assignment = uniform_assignment(analysis.allowed, cand)
    if assignment == choice.assignment:
        return None
    return f"uniform {cand}", Choice(assignment, point["cost"], point["cost"] / curve.baseline_cost, point["nsr"], -1, True)


class Shipment(NamedTuple):
    """A point as it ships: the choice, its simulated NSR, its range refinement, the exported
    model, its measurements on onnxruntime, its latency and its verification on the target."""

    choice: Choice
    nsr: float
    refinement: Refinement | None
    model: onnx.ModelProto
    shipped: dict
    latency: dict | None
    on_target: dict | None


def _better_on_target(analysis: Analysis, first: Shipment, rival: tuple[str, Choice], methods: Mapping, table: dict,
                      config: OptimizeConfig, profile) -> Shipment:
    """Run the rival uniform point on the target's runtime too, and ship the one more accurate
    there. The simulation is onnxruntime's arithmetic, and a target rounds differently: on HTP
    25-55% of the values of the digits CNN's deeper activations differ from onnxruntime's by a
    step or more (its 32 calibration samples), so points the simulation puts level part there:
    its 1×W4A8 + 10×W8A8 mix gave 39.04 dB on the CPU and 38.09 on HTP (targets_edge.md at
    cfd700e), uniform W8A8 39.06 and 39.03 (``--candidates W8A8``). ``first``: the chosen point
    as shipped."""
    simulator, timings = analysis.simulator, analysis.timings
    name, choice = rival
    kept = dict(simulator.params.range_method)
    _set_range_methods(simulator, methods)
    nsr, refinement = choice.est_nsr, None
    if config.refine_ranges:
        with _timed(timings, "refine ranges"):
            refinement = refine_ranges(simulator, choice.assignment, table, max_memory=config.max_memory)
            nsr = refinement.nsr_after
    try:
        second = Shipment(choice, nsr, refinement, *_ship(analysis, choice, config, profile))
    except TargetRefusedError as exc:
        logger.info("%s does not run on %s as promised (%s): the chosen point ships", name, profile.name, exc)
        _set_range_methods(simulator, kept)
        return first
    db = {"chosen point": first.on_target["sqnr_db"], name: second.on_target["sqnr_db"]}
    winner = second if db[name] > db["chosen point"] else first
    logger.info("on %s: the chosen point %.2f dB, %s %.2f dB; %s ships", profile.name, db["chosen point"], name,
                db[name], name if winner is second else "the chosen point")
    if winner is first:
        _set_range_methods(simulator, kept)
    winner.on_target["compared_sqnr_db"] = {**db, "shipped": name if winner is second else "chosen point"}
    return winner


def _budget_choice_entry(simulator: Simulator, greedy: Choice, choice: Choice) -> dict:
    """What the search chose for the budget before any measured point replaced it, and which
    one did (``fallback``): a test of mixed precision must look at this, not at the final pick,
    which is never worse than a uniform point by construction."""
    fallback = None
    if choice is not greedy:
        mix = "/".join(sorted({str(c) for c in choice.assignment.values()}))
        fallback = f"uniform {mix}" if choice.curve_index < 0 else f"measured curve point {choice.curve_index}"
    return {"relative_cost": greedy.relative_cost, "estimated_sqnr_db": numerics.nsr_to_db(greedy.est_nsr),
            "simulated_sqnr_db": numerics.nsr_to_db(simulator.settled_nsr(greedy.assignment)), "fallback": fallback}


def _ship(analysis: Analysis, choice: Choice, config: OptimizeConfig, profile
          ) -> tuple[onnx.ModelProto, dict, dict | None, dict | None]:
    """Export the choice and measure what ships: its SQNR on onnxruntime, its latency, and its
    verification on the target's runtime (``TargetRefusedError`` where the runtime refuses it)."""
    timings, simulator = analysis.timings, analysis.simulator
    if all(c.is_float for c in choice.assignment.values()):
        logger.warning("no group is worth quantizing on --target %s within the budget (%s): the output is the "
                       "float model", config.target, config.metric)
    with _timed(timings, "export"):
        qdq = _export(analysis, choice.assignment)
        shipped = _measure_exported(qdq, simulator.data, simulator.observed, simulator.reference)
    qdq = _deployable(qdq, analysis.data, config)
    latency = _time_shipped(profile, qdq, choice.assignment, analysis, config, timings)
    on_target = None
    if profile.verify is not None:
        with _timed(timings, "verify on target"):
            on_target = _verify_on_target(profile, qdq, analysis, simulator)
    return qdq, shipped, latency, on_target


def _verify_on_target(profile, qdq: onnx.ModelProto, analysis: Analysis, simulator: Simulator) -> dict:
    """Run the exported model where it will be deployed; refuse when the profile's promise is
    broken there and the profile says that is an error (else warn)."""
    with tempfile.TemporaryDirectory(prefix="onnxmp-target-") as folder:
        report = profile.verify(qdq, analysis.data, simulator.observed, simulator.reference, folder)
    logger.info("on %s: %s", profile.name, {k: v for k, v in report.items() if not isinstance(v, list)})
    broken = report.get("broken_promise")
    if broken and profile.refuse_broken_promise:
        raise TargetRefusedError(f"--target {profile.name}: {broken}")
    if broken:
        logger.warning("on %s, %s", profile.name, broken)
    return report


def _export(analysis: Analysis, assignment: Assignment) -> onnx.ModelProto:
    return export_qdq(analysis.model, analysis.plan, analysis.params, assignment)


def _search_target_families(analysis: Analysis, curves: list[ParetoCurve], table, group_cost, config: OptimizeConfig,
                            progress: Progress | None) -> tuple[ParetoCurve, Choice, dict]:
    """The accuracy-target search on each family's curve; the cheapest point that meets the
    target wins (with one family, that family's point)."""
    found, baseline = [], None
    for curve in curves:  # the first family's start is the baseline every family's points are held to
        suffix = "" if len(curves) == 1 else "-" + _slug(_family_name(curve))
        choice, record = _search_target(analysis, curve, table, group_cost, config, progress, suffix, baseline)
        baseline = record["baseline_score"]
        found.append((record["chosen_score"] < record["threshold"], choice.cost, curve, choice, record))
    _, _, curve, choice, record = min(found, key=lambda f: (f[0], f[1]))
    if len(found) > 1:
        record["families"] = [{"candidates": _family_name(c), "chosen_index": r["chosen_index"],
                               "relative_cost": ch.relative_cost, "score": r["chosen_score"]}
                              for _, _, c, ch, r in found]
    return curve, choice, record


def _search_target(analysis: Analysis, curve: ParetoCurve, table, group_cost, config: OptimizeConfig,
                   progress: Progress | None, key_suffix: str = "", baseline: float | None = None
                   ) -> tuple[Choice, dict]:
    """Find the cheapest curve point whose measured score is within the target drop.

    Each probe exports the point's real QDQ model and scores it; scores are stored in the cache
    as they come, so a failing evaluator loses nothing and a rerun resumes.
    """
    evaluator = _make_evaluator(analysis, config)
    drop = TargetDrop.parse(config.target_drop)
    key = f"scores-{_slug(evaluator.source)}{key_suffix}.json"
    stored = analysis.cache.load_json(key) or {}
    scores: dict[int, float] = {int(k): v for k, v in stored.items()}
    fresh: list[int] = []

    def score_at(index: int) -> float:
        if index not in scores:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, f"point{index}.onnx")
                onnx.save(_deployable(_export(analysis, curve.assignment_at(index)), analysis.data, config), path)
                scores[index] = call_evaluator(evaluator, path)
            fresh.append(index)
            analysis.cache.save_json(key, {str(k): v for k, v in scores.items()})
            if progress:
                progress("target", len(fresh), len(fresh), f"point {index}: {scores[index]:.4g}")
            logger.info("curve point %d (cost %.3f): %s = %.4f", index, curve.points[index].relative_cost,
                        evaluator.metric, scores[index])
        return scores[index]

    start = score_at(0)
    baseline = start if baseline is None else baseline
    threshold = drop.threshold(baseline)
    estimate = [-p.est_nsr for p in curve.points]
    if start < threshold:  # a family whose most precise point misses the target has nothing to offer
        result = SearchResult(0, {0: start})
    else:
        result = interpolation_search(len(curve.points), score_at, threshold, estimate, {0: start})
    plain = None
    if config.compare_binary_search and start >= threshold:
        plain = binary_search(len(curve.points), score_at, threshold, {0: start})
    point = curve.points[result.index]
    choice = Choice(curve.assignment_at(result.index), point.cost, point.relative_cost, point.est_nsr,
                    result.index, False)
    record = {
        "target_drop": str(drop), "metric": evaluator.metric, "evaluator": evaluator.source,
        "baseline_score": baseline, "threshold": threshold, "chosen_index": result.index,
        "chosen_score": scores[result.index], "evaluations": len(result.scores),
        "new_evaluations": len(fresh),
        "binary_search_evaluations": None if plain is None else len(plain.scores),
        "binary_search_index": None if plain is None else plain.index,
        "evaluated_points": [{"index": i, "relative_cost": curve.points[i].relative_cost, "score": s}
                             for i, s in sorted(result.scores.items())],
    }
    return choice, record


def _make_evaluator(analysis: Analysis, config: OptimizeConfig) -> Evaluator:
    """The scorer of candidate models; with ``eval_on_target`` the built-in ones run each
    candidate on the target's runtime (a user's function gets the file the target would get)."""
    if config.evaluator is not None:
        return config.evaluator
    profile = get_target(config.target)
    on_target = config.eval_on_target and profile.open_session is not None
    opener = profile.open_session if on_target else make_session
    one_by_one = on_target and profile.static_shapes
    if config.eval_data is not None:
        return labels_evaluator(config.eval_data, analysis.model, opener, one_by_one)
    return agreement_evaluator(analysis.model, analysis.heldout, opener, one_by_one)


def _time_shipped(profile, qdq: onnx.ModelProto, assignment: Assignment, analysis: Analysis,
                  config: OptimizeConfig, timings: dict[str, float]) -> dict | None:
    """The output (``qdq``, of ``assignment``) timed on the target's runtime against the float
    model and uniform W8A8 (one sample, one thread, interleaved runs), with a warning when it is
    slower than float."""
    if profile.time_models is None or is_large(analysis.model):
        return None
    models = {"float": analysis.model, "output": qdq}
    w8a8 = Candidate(8, 8)
    if w8a8 in config.candidates:
        uniform = uniform_assignment(analysis.allowed, w8a8)  # the output itself where it is uniform W8A8
        models["uniform W8A8"] = qdq if uniform == assignment else _deployable(_export(analysis, uniform),
                                                                              analysis.data, config)
    with _timed(timings, "latency of the output"):
        ms = profile.time_models(models, analysis.data)
    record = {"ms": ms, "vs_float": ms["output"] / ms["float"], "threads": 1, "samples_per_run": 1}
    if record["vs_float"] > 1.0:
        logger.warning("the output takes %.2fx the float model's time on %s here (one thread, one sample); "
                       "nothing quantized runs faster than float at this budget", record["vs_float"], profile.name)
    return record


def _deployable(qdq: onnx.ModelProto, data: CalibrationSet, config: OptimizeConfig) -> onnx.ModelProto:
    """The exported model as the target takes it (static shapes, quantized constant operands
    where it needs them)."""
    profile = get_target(config.target)
    if profile.dequantize_constant_operands:
        qdq = dequantize_constant_operands(qdq)
    if profile.static_shapes or config.fix_dims:
        return fix_symbolic_dims(qdq, data, parse_fixed_dims(config.fix_dims))
    return qdq


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)[:60]


def _measure_curve(simulator: Simulator, curve: ParetoCurve, count: int, budget: float | None = None) -> dict[int, float]:
    """Simulated NSR at up to ``count`` points spread evenly along the curve (ends included), or,
    with a ``budget``, at the ``count // 2`` points just within it: only points within the budget
    can replace its choice, the estimate is likeliest to misorder those nearest the choice, and
    each costs a whole-graph evaluation (12 spread over ppocr_rec's curve took 50 s)."""
    if budget is not None:
        first = next((i for i, p in enumerate(curve.points) if p.relative_cost <= budget + 1e-9), len(curve.points) - 1)
        indices = range(first, min(first + max(count // 2, 1), len(curve.points)))
    else:
        indices = sorted({round(i) for i in np.linspace(0, len(curve.points) - 1, num=min(count, len(curve.points)))})
    return {i: simulator.settled_nsr(curve.assignment_at(i)) for i in indices}


def uniform_assignment(allowed: dict[int, tuple[Candidate, ...]], cand: Candidate) -> dict[int, Candidate]:
    """Every group at ``cand``; where the target does not allow it, at the group's highest of the
    same activation width (a target may run one width per model), else its highest."""
    def fallback(options: tuple[Candidate, ...]) -> Candidate:
        return ([o for o in options if o.a_bits == cand.a_bits] or list(options))[-1]
    return {gid: cand if cand in options else fallback(options) for gid, options in allowed.items()}


def _uniform_points(analysis: Analysis, config: OptimizeConfig) -> dict[str, dict]:
    """Cost and simulated SQNR with every group at one candidate (the uniform baselines), for
    every candidate; all-FP32 is the float model itself (no noise), not its 16-bit simulation.
    The SQNRs do not depend on the budget or the metric: kept in the cache with Phase 1's results."""
    stored = (analysis.cache.load_json("uniform.json") or {}) if analysis.cache_hit else {}
    points = {}
    for cand in config.candidates:
        assignment = uniform_assignment(analysis.allowed, cand)
        if str(cand) not in stored:
            stored[str(cand)] = 0.0 if cand.is_float else analysis.simulator.settled_nsr(assignment)
        nsr = stored[str(cand)]
        points[str(cand)] = {"cost": analysis.costs.total(assignment, config.metric), "nsr": nsr,
                             "sqnr_db": numerics.nsr_to_db(nsr)}
    analysis.cache.save_json("uniform.json", stored)
    return points


def _measure_exported(qdq: onnx.ModelProto, data: CalibrationSet, names: list[str],
                      reference: list[np.ndarray]) -> dict:
    """Check the exported model and measure its SQNR as stock onnxruntime runs it, on the same
    tensors (names are kept by the export) as the simulation."""
    try:
        if is_large(qdq):  # the checker takes a model over 2 GB only as files
            with tempfile.TemporaryDirectory(prefix="onnxmp-check-") as folder:
                save_with_external_data(qdq, os.path.join(folder, "model.onnx"))
                onnx.checker.check_model(os.path.join(folder, "model.onnx"), full_check=True)
        else:
            onnx.checker.check_model(qdq, full_check=True)
    except Exception as exc:  # a bug, not a user error: keep the message precise
        raise ModelError(f"internal error: the exported model fails onnx.checker: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="onnxmp-optimized-") as folder:
        optimized = None if is_large(qdq) else os.path.join(folder, "optimized.onnx")
        default = run_over(make_session(qdq, outputs=names, optimized_path=optimized), data, names)
        # the precise config sets only MatMulNBits' accuracy: without one the sessions compute alike
        nbits = optimized is None or any(n.op_type == "MatMulNBits" for n in onnx.load(optimized).graph.node)
    precise = run_over(make_session(qdq, extra_config=PRECISE_SESSION_CONFIG, outputs=names), data, names) \
        if nbits else default
    return {
        "sqnr_db_ort_default": numerics.sqnr_db(reference, default),
        "sqnr_db_ort_precise": numerics.sqnr_db(reference, precise),
        "precise_session_config": PRECISE_SESSION_CONFIG,
    }
