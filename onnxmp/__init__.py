"""onnxmp: post-training mixed-precision quantization of ONNX models to deployable QDQ models."""

from __future__ import annotations

__version__ = "0.1.0"

from onnxmp.candidates import Candidate, parse_candidates
from onnxmp.errors import OnnxmpError
from onnxmp.pipeline import OptimizeConfig, OptimizeResult, optimize

__all__ = ["Candidate", "OnnxmpError", "OptimizeConfig", "OptimizeResult", "optimize", "parse_candidates"]
