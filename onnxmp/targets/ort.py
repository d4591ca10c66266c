"""onnxruntime's CPU execution provider: every candidate, symbolic shapes allowed (the default)."""

from __future__ import annotations

from onnxmp.targets.profile import TargetProfile

PROFILE = TargetProfile(
    name="ort",
    summary="onnxruntime CPU runs QDQ with 4, 8 and 16-bit weights and 4, 8 and 16-bit activations "
            "(4-bit activations not into MaxPool)",
    default_weight_bits=frozenset({4, 8, 16}),
    activation_bits=frozenset({4, 8, 16}),
    # onnxruntime (1.32) moves DequantizeLinear past MaxPool, whose kernel has no 4-bit types:
    # the session fails to load ("Type 'tensor(uint4)' of input parameter ... of operator (MaxPool)")
    activation_readers_refused={4: frozenset({"MaxPool"})},
)
