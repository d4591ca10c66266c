"""An integer accelerator that runs the whole graph quantized, for toolchains onnxmp has no
profile of (most NPU compilers take this QDQ layout): quantizers on the float inputs and outputs
of every op in ``groups.QUANTIZED_OPS``, every candidate, symbolic shapes allowed. The output is
measured on onnxruntime CPU only, where this layout is slower than float: for a CPU deployment
use ``ort``."""

from __future__ import annotations

from onnxmp.targets.profile import TargetProfile

PROFILE = TargetProfile(
    name="generic",
    summary="an integer accelerator: quantizers around every quantizable op, 4, 8 and 16-bit weights and "
            "activations (4-bit activations not into MaxPool, which onnxruntime, the measuring runtime, refuses)",
    default_weight_bits=frozenset({4, 8, 16}),
    activation_bits=frozenset({4, 8, 16}),
    activation_readers_refused={4: frozenset({"MaxPool"})},
)
