"""onnxmp's exception types.

Every error a user can cause (bad file, bad option, bad data) is an ``OnnxmpError``; the CLI
prints its message on one line and exits non-zero. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class OnnxmpError(Exception):
    """Base class of the errors a user can hit; the message says what is wrong and what to do."""


class ModelError(OnnxmpError):
    """The input model cannot be read, is malformed, or cannot be quantized."""


class AlreadyQuantizedError(ModelError):
    """The input model already holds quantize/dequantize or integer ops."""


class NothingToQuantizeError(ModelError):
    """The model has no op onnxmp can quantize."""


class TargetRefusedError(ModelError):
    """The deployment target's runtime refuses the exported model, or runs part of what it was
    promised elsewhere (a fallback the target's profile calls an error)."""


class CalibrationError(OnnxmpError):
    """Calibration data is missing, mismatched or not finite."""


class ConfigError(OnnxmpError):
    """An option has an invalid value (unknown candidate, budget out of range, ...)."""


class BudgetTooLowError(ConfigError):
    """The budget is below the cheapest assignment the candidates allow (``cheapest``: that
    assignment's cost relative to the baseline, for a caller that wants to retry there)."""

    def __init__(self, message: str, cheapest: float) -> None:
        super().__init__(message)
        self.cheapest = cheapest


class OutputError(OnnxmpError):
    """An output file cannot be written."""


class EvaluatorError(OnnxmpError):
    """A user-supplied evaluator failed or returned something that is not a score."""
