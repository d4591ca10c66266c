"""The optimize pipeline: calls the stages in order and holds no math.

load → prepare → quantizers & groups → calibrate → Phase 1 → Phase 2 → pick → export → measure.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np
import onnx

from onnxmp import quant
from onnxmp.calibrate import calibrate, select_ranges
from onnxmp.candidates import DEFAULT_CANDIDATES, Candidate, parse_candidates
from onnxmp.cost import METRICS, CostModel
from onnxmp.data import resolve_calibration
from onnxmp.errors import ConfigError, ModelError
from onnxmp.export import export_qdq
from onnxmp.files import check_writable, save_json, save_model
from onnxmp.groups import find_quantizers
from onnxmp.loader import load_model, prepare_model
from onnxmp.params import QuantParams
from onnxmp.report import build_record
from onnxmp.search import choose_for_budget, pareto_curve
from onnxmp.sensitivity import sensitivity_list
from onnxmp.session import make_session, output_names, run_over
from onnxmp.simulate import Simulator

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int, str], None]
# Session option that keeps onnxruntime from computing INT8-weight MatMuls with 8-bit activations.
PRECISE_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0"}


@dataclasses.dataclass(frozen=True)
class OptimizeConfig:
    """Every option of ``optimize``; the CLI builds one of these."""

    candidates: tuple[Candidate, ...] = parse_candidates(DEFAULT_CANDIDATES)
    budget: float = 0.5
    metric: str = "bops"
    calib: str | None = None
    report: str | None = None
    measured_points: int = 12  # curve points whose real SQNR is measured, besides the chosen one

    def validate(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"unknown --metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if not 0 < self.budget <= 1:
            raise ConfigError(f"--budget must be in (0, 1], a fraction of the baseline cost; got {self.budget}")
        if not self.candidates:
            raise ConfigError("no candidates given")


@dataclasses.dataclass
class OptimizeResult:
    model: onnx.ModelProto
    record: dict


class _Timer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, stage: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()
                logger.info("%s ...", stage)

            def __exit__(self, *exc):
                timer.times[stage] = round(time.perf_counter() - self.start, 3)

        return _Span()


def optimize(input_path: str, output_path: str | None, config: OptimizeConfig = OptimizeConfig(),
             progress: Progress | None = None) -> OptimizeResult:
    """Quantize ``input_path`` to a mixed-precision QDQ model within ``config.budget``.

    Writes ``output_path`` (and ``config.report``) atomically when given; returns the model and
    the JSON record either way.
    """
    config.validate()
    for path in (output_path, config.report):
        if path:
            check_writable(path, input_path)
    timer = _Timer()
    with timer("load"):
        original = load_model(input_path)
        model = prepare_model(original)
        data = resolve_calibration(config.calib, input_path, model)
        plan = find_quantizers(model)
    logger.info("%d groups, %d activation quantizers, %d weighted ops, %d calibration samples",
                len(plan.groups), len(plan.activations), len(plan.weighted_ops), data.num_samples)
    with timer("calibrate"):
        calibration = calibrate(model, plan, data)
        reference = run_over(make_session(model), data, output_names(model))
        params = QuantParams(model, plan, calibration)
        simulator = Simulator(model, plan, params, data, reference)
        ranges = select_ranges(simulator, params, plan.groups, config.candidates, _stage_progress(progress, "ranges"))
        logger.info("activation ranges below 16 bits: %s", ranges)
    with timer("phase1"):
        base_nsr, sensitivities = sensitivity_list(simulator, plan.groups, config.candidates,
                                                   _stage_progress(progress, "phase 1"))
    with timer("phase2"):
        sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
        costs = CostModel.build(plan, calibration, sizes)
        table = {(s.gid, s.candidate): s.nsr for s in sensitivities}
        group_cost = lambda g, c: costs.group_cost(g, c, config.metric)  # noqa: E731
        curve = pareto_curve([g.gid for g in plan.groups], config.candidates, table, base_nsr, group_cost)
        choice = choose_for_budget(curve, config.budget, table, group_cost)
        measured = _measure_curve(simulator, curve, config.measured_points)
        chosen_nsr = simulator.nsr(choice.assignment)
        uniform = {str(c): _uniform_point(simulator, costs, plan, c, config.metric) for c in config.candidates}
    with timer("export"):
        qdq = export_qdq(model, plan, params, choice.assignment)
        shipped = _measure_exported(qdq, data, reference)
    record = build_record(
        input_path=input_path, config=config, plan=plan, calibration=calibration, costs=costs,
        sensitivities=sensitivities, base_nsr=base_nsr, curve=curve, choice=choice, chosen_nsr=chosen_nsr,
        measured=measured,
        uniform=uniform, shipped=shipped, timings=timer.times, num_samples=data.num_samples,
        evaluations=simulator.evaluations,
    )
    if output_path:
        save_model(qdq, output_path)
    if config.report:
        save_json(record, config.report)
    return OptimizeResult(qdq, record)


def _stage_progress(progress: Progress | None, stage: str):
    """A (done, total, detail) callback for one stage, or None."""
    return (lambda done, total, detail: progress(stage, done, total, detail)) if progress else None


def _measure_curve(simulator: Simulator, curve, count: int) -> dict[int, float]:
    """Simulated NSR at up to ``count`` points spread evenly along the curve (ends included)."""
    spread = np.linspace(0, len(curve.points) - 1, num=min(count, len(curve.points)))
    return {i: simulator.nsr(curve.assignment_at(i)) for i in sorted({int(round(i)) for i in spread})}


def _uniform_point(simulator: Simulator, costs: CostModel, plan, cand: Candidate, metric: str) -> dict:
    """Cost and simulated SQNR with every group at one candidate (the uniform baselines)."""
    assignment = {g.gid: cand for g in plan.groups}
    return {"cost": costs.total(assignment, metric), "sqnr_db": quant.nsr_to_db(simulator.nsr(assignment))}


def _measure_exported(qdq: onnx.ModelProto, data, reference: list[np.ndarray]) -> dict:
    """Check the exported model and measure its SQNR as stock onnxruntime runs it."""
    try:
        onnx.checker.check_model(qdq, full_check=True)
    except Exception as exc:  # a bug, not a user error: keep the message precise
        raise ModelError(f"internal error: the exported model fails onnx.checker: {exc}") from exc
    names = output_names(qdq)
    default = run_over(make_session(qdq), data, names)
    precise = run_over(make_session(qdq, extra_config=PRECISE_SESSION_CONFIG), data, names)
    return {
        "sqnr_db_ort_default": quant.sqnr_db(reference, default),
        "sqnr_db_ort_precise": quant.sqnr_db(reference, precise),
        "precise_session_config": PRECISE_SESSION_CONFIG,
    }
