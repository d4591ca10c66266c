"""Candidates: the (weight bits, activation bits) pairs a quantizer group may take."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from onnxmp.errors import ConfigError

WEIGHT_BITS = (4, 8, 16)
ACTIVATION_BITS = (4, 8, 16)  # 4: UINT4 (ONNX opset 21), for W4A4 with LSQ fine-tuning
DEFAULT_CANDIDATES = "W4A8,W8A8,W8A16"
# a group left in float: no quantizer on its weights or activations (written FP32)
FLOAT_BITS = 32
FLOAT_NAMES = ("FP32", "FLOAT")
_PATTERN = re.compile(r"^W(\d+)A(\d+)$")


@dataclasses.dataclass(frozen=True, order=True)
class Candidate:
    """One bit-width choice for a group: weights at ``w_bits``, activations at ``a_bits``."""

    w_bits: int
    a_bits: int

    def __str__(self) -> str:
        return "FP32" if self.is_float else f"W{self.w_bits}A{self.a_bits}"

    @property
    def is_float(self) -> bool:
        """The group is not quantized at all (the most expensive candidate there is)."""
        return self.w_bits == FLOAT_BITS

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """Parse ``W8A16``-style text, or ``FP32`` (left float); raise ConfigError naming the allowed values."""
        if text.strip().upper() in FLOAT_NAMES:
            return cls(FLOAT_BITS, FLOAT_BITS)
        match = _PATTERN.match(text.strip().upper())
        if not match:
            raise ConfigError(f"unknown candidate {text!r}: write it as W<bits>A<bits>, e.g. W8A8, or FP32")
        w_bits, a_bits = int(match.group(1)), int(match.group(2))
        if w_bits not in WEIGHT_BITS or a_bits not in ACTIVATION_BITS:
            raise ConfigError(
                f"unsupported candidate {text!r}: weight bits must be one of {WEIGHT_BITS} "
                f"and activation bits one of {ACTIVATION_BITS}"
            )
        return cls(w_bits, a_bits)


def parse_candidates(text: str) -> tuple[Candidate, ...]:
    """Parse a comma-separated candidate list, sorted from cheapest to most expensive."""
    items = [part for part in text.split(",") if part.strip()]
    if not items:
        raise ConfigError("--candidates is empty: give at least one, e.g. W4A8,W8A8,W8A16")
    return sort_candidates({Candidate.parse(item) for item in items})


def sort_candidates(candidates: set[Candidate] | tuple[Candidate, ...]) -> tuple[Candidate, ...]:
    """Cheapest first: by bits per MAC (w*a), then weight bits."""
    return tuple(sorted(candidates, key=lambda c: (c.w_bits * c.a_bits, c.w_bits, c.a_bits)))


# group id -> the candidate it takes: one point of the search
Assignment = Mapping[int, "Candidate"]
