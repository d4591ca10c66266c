"""onnxmp: post-training mixed-precision quantization of ONNX models to deployable QDQ models."""

from __future__ import annotations

from onnxmp._version import __version__
from onnxmp.errors import OnnxmpError
from onnxmp.pipeline import Inspection, OptimizeConfig, OptimizeResult, inspect_model, optimize
from onnxmp.quant.candidates import Candidate, parse_candidates

__all__ = ["Candidate", "Inspection", "OnnxmpError", "OptimizeConfig", "OptimizeResult", "__version__", "inspect_model",
           "optimize", "parse_candidates"]
