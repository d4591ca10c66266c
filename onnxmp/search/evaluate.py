"""Evaluators: score a candidate QDQ model, higher is better.

* a user's Python callable (``--eval module:function`` or ``path/to/file.py:function``) that is
  given the path of a candidate ONNX model and returns a float;
* top-1 accuracy against labels (``--eval-data labels.npz``: the model inputs keyed by name and
  an integer ``labels`` array);
* by default, agreement with the float model on held-back calibration samples: top-1 agreement
  (%) for classifier-like outputs ([N, classes]), output SQNR (dB) otherwise.

Every call goes through ``call_evaluator``, which turns any failure of the user's code or a
non-finite score into one clear EvaluatorError.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
from collections.abc import Callable

import numpy as np
import onnx

from onnxmp.errors import CalibrationError, EvaluatorError
from onnxmp.quant import numerics
from onnxmp.runtime.data import CalibrationSet, make_calibration_set, read_npz
from onnxmp.runtime.session import make_session, output_names, run_over

EvalFn = Callable[[str], float]
# Opens a model file for inference: an onnxruntime session, or a target's session with the same
# run(names, feeds) / get_outputs() interface (see onnxmp.targets).
OpenSession = Callable[[str], object]


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """A scoring function and what its score means."""

    fn: EvalFn
    metric: str  # e.g. "top-1 accuracy %", "output SQNR dB"
    source: str  # where it came from, for messages and the report


def load_user_evaluator(spec: str) -> Evaluator:
    """Import ``module:function`` (or ``file.py:function``) as an evaluator."""
    module_name, _, func_name = spec.rpartition(":")
    if not module_name or not func_name:
        raise EvaluatorError(f"--eval {spec!r}: write it as module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise EvaluatorError(f"--eval {spec!r}: no such file {module_name}")
            loader_spec = importlib.util.spec_from_file_location("onnxmp_user_evaluator", module_name)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except EvaluatorError:
        raise
    except Exception as exc:
        raise EvaluatorError(f"--eval {spec!r}: importing {module_name} failed ({type(exc).__name__}: {exc})") from exc
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise EvaluatorError(f"--eval {spec!r}: {module_name} has no function {func_name!r}")
    return Evaluator(fn, "user score", spec)


def call_evaluator(evaluator: Evaluator, model_path: str) -> float:
    """Run an evaluator on one model; any failure becomes an EvaluatorError naming the evaluator."""
    try:
        score = evaluator.fn(model_path)
    except Exception as exc:
        raise EvaluatorError(
            f"evaluator {evaluator.source} failed on {os.path.basename(model_path)}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise EvaluatorError(f"evaluator {evaluator.source} returned {score!r}, not a number") from None
    if not math.isfinite(value):
        raise EvaluatorError(f"evaluator {evaluator.source} returned {value}, not a finite score")
    return value


def labels_evaluator(path: str, model: onnx.ModelProto, open_session: OpenSession = make_session,
                     one_by_one: bool = False) -> Evaluator:
    """Top-1 accuracy (%) of the model's first output against the ``labels`` array in ``path``
    (``one_by_one``: feed one sample per run, for static-shape targets)."""
    raw = read_npz(path)
    if "labels" not in raw:
        raise CalibrationError(f"{path}: --eval-data needs an integer 'labels' array beside the inputs")
    labels = raw.pop("labels").reshape(-1)
    data = make_calibration_set(raw, model, path)
    if one_by_one:
        data = dataclasses.replace(data, batch=1)

    def top1(model_path: str) -> float:
        logits = _first_output(open_session(model_path), data)
        predictions = logits.reshape(len(labels), -1).argmax(axis=1)
        return float(100.0 * (predictions == labels).mean())

    if data.num_samples != len(labels):
        raise CalibrationError(f"{path}: {len(labels)} labels for {data.num_samples} samples")
    return Evaluator(top1, "top-1 accuracy %", f"labels in {path}")


def agreement_evaluator(model: onnx.ModelProto, heldout: CalibrationSet, open_session: OpenSession = make_session,
                        one_by_one: bool = False) -> Evaluator:
    """Agreement with the float model on held-back samples: top-1 agreement for classifier-like
    outputs, output SQNR otherwise (candidates opened by ``open_session``)."""
    if one_by_one:
        heldout = dataclasses.replace(heldout, batch=1)
    session = make_session(model)
    names = output_names(model)
    reference = run_over(session, heldout, names)
    shape = session.get_outputs()[0].shape
    classifier = len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1
    if classifier:  # rows of [N, classes] (a feed may hold several)
        float_top1 = reference[0].reshape(-1, shape[1]).argmax(axis=1)

        def agreement(model_path: str) -> float:
            top1 = _first_output(open_session(model_path), heldout).reshape(-1, shape[1]).argmax(axis=1)
            return float(100.0 * (top1 == float_top1).mean())

        return Evaluator(agreement, "top-1 agreement with float %", "held-back calibration samples")

    def sqnr(model_path: str) -> float:
        return numerics.sqnr_db(reference, run_over(open_session(model_path), heldout, names))

    return Evaluator(sqnr, "output SQNR dB", "held-back calibration samples")


def _first_output(session, data: CalibrationSet) -> np.ndarray:
    return run_over(session, data, [session.get_outputs()[0].name])[0]
