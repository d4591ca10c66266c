"""onnxruntime's CPU execution provider: every candidate, symbolic shapes allowed (the default)."""

from __future__ import annotations

from onnxmp.targets import TargetProfile

PROFILE = TargetProfile(
    name="ort",
    summary="onnxruntime CPU runs QDQ with 4, 8 and 16-bit weights and 8 and 16-bit activations",
    default_weight_bits=frozenset({4, 8, 16}),
    activation_bits=frozenset({8, 16}),
)
