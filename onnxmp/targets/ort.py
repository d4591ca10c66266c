"""onnxruntime's CPU execution provider: every candidate, symbolic shapes allowed (the default).

Placement follows what onnxruntime (1.32, CPU, default optimizations) turns into integer kernels,
read off the graphs it optimizes QDQ models into (``SessionOptions.optimized_model_filepath``;
``benchmarks/ort_kernels.py`` prints the table):

- Conv with an 8-bit activation input and per-channel or per-tensor INT8 weight becomes
  QLinearConv only when its output is quantized too (after a fused Relu); with a float output it
  stays a float Conv behind DequantizeLinear. Gemm becomes QGemm under the same condition.
  MatMul with a constant INT8 weight becomes MatMulIntegerToFloat with a float output, or
  QLinearMatMul with a quantized one.
- Between such kernels, Add, Mul, Concat, AveragePool, GlobalAveragePool, Sigmoid, LeakyRelu and
  Softmax run as QLinear* kernels, and MaxPool, Resize, Transpose, Reshape, Split and the other
  data-movement ops run on the 8-bit values, but only where their output has their input's scale
  and zero point (else they run in float between a DequantizeLinear and a QuantizeLinear: so
  their outputs take their input's, ``groups.tied_scales``); Tanh, HardSigmoid, HardSwish and a
  standalone Relu run in float behind a DequantizeLinear.
- A Relu or Clip after such an op disappears into the QuantizeLinear of its output (whose range
  it already clamps to), so the quantizer goes there and not also on the op's output, which would
  leave a DequantizeLinear → QuantizeLinear requantization (on digits' Add → Relu → MaxPool).
- 16-bit activations, 4-bit weights and ConvTranspose get no integer kernel: they compute in
  float, behind their DequantizeLinear.

So activation quantizers go on the activation inputs of Conv / MatMul / Gemm, on the outputs
Conv and Gemm need quantized, and through the ops above while every input is quantized; every
other tensor, and the inside of a LayerNorm, GELU, Softmax, SiLU or L2-norm decomposition,
stays float (a QuantizeLinear/DequantizeLinear pair no kernel absorbs is pure overhead here).

Since only W8A8 can be faster than float here, the default candidates are W8A8 and FP32 (a group
left float), and the default cost is ``latency``: each layer's own time, float and W8A8, measured
on this machine (``ort_latency``), because whether the integer kernel wins depends on the layer's
shape (a small depthwise Conv can be slower in integer than in float).
"""

from __future__ import annotations

from onnxmp.quant.cost import LatencyTable
from onnxmp.quant.groups import IntegerPlacement
from onnxmp.targets.ort_latency import compare_models, measure_layers
from onnxmp.targets.profile import TargetProfile

PLACEMENT = IntegerPlacement(
    kernels=frozenset({"Conv", "MatMul", "Gemm"}),
    quantized_output=frozenset({"Conv", "Gemm"}),
    int8_ops=frozenset({
        "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu", "Softmax",
        "MaxPool", "GlobalMaxPool", "Resize", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
        "Split", "Slice", "Gather", "DepthToSpace", "SpaceToDepth",
    }),
)

# Time per MAC relative to float, one thread (benchmarks/results/ort_kernels.md): W8A8 is an integer
# kernel where placement gives it its quantized output; every other quantized candidate computes in
# float behind its DequantizeLinear, slower than float. A group at FP32 is not quantized (1 by definition).
LATENCY = LatencyTable({
    "Conv": {"W8A8": 0.42, "quantized": 1.6},
    "MatMul": {"W8A8": 0.29, "W8A16": 1.59, "W4A16": 1.73, "W4A8": 2.69, "quantized": 1.7},
    "Gemm": {"W8A8": 0.64, "W8A16": 1.96, "quantized": 5.7},
    "ConvTranspose": {"quantized": 1.25},
}, source="benchmarks/ort_kernels.py at d3fdfbc: a 64-channel 3x3 Conv, a 384x384 MatMul, an 8x512x256 Gemm, "
          "a 32-channel ConvTranspose")

PROFILE = TargetProfile(
    name="ort",
    summary="onnxruntime CPU runs QDQ with 4, 8 and 16-bit weights and 4, 8 and 16-bit activations "
            "(4-bit activations not into MaxPool)",
    default_weight_bits=frozenset({4, 8, 16}),
    activation_bits=frozenset({4, 8, 16}),
    # onnxruntime (1.32) moves DequantizeLinear past MaxPool, whose kernel has no 4-bit types:
    # the session fails to load ("Type 'tensor(uint4)' of input parameter ... of operator (MaxPool)")
    activation_readers_refused={4: frozenset({"MaxPool"})},
    placement=PLACEMENT,
    # what is faster than float here: W8A8 integer kernels; a sensitive group stays float, at float speed
    default_candidates="W8A8,FP32",
    default_metric="latency",
    latency=LATENCY,
    measure_latency=measure_layers,
    time_models=compare_models,
    smooth_quant=True,
)
