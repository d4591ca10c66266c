"""Each weighted layer's time on onnxruntime CPU, float and as the W8A8 pattern placement writes,
measured on this machine with the layer's own shapes: the ``latency`` metric of ``--target ort``.

Whether an integer kernel is faster than float depends on the layer, not only on its op type: a
64-channel 3x3 Conv on 56x56 takes 0.42 of its float time as QLinearConv, a small depthwise one
can take longer than in float (``benchmarks/results/deploy.md``). So each layer is timed alone:
its input (one sample, the shape it has in the model) through the layer in float, and through the
layer as the export writes it at W8A8 (QuantizeLinear/DequantizeLinear on the input, an INT8
per-channel weight and INT32 bias behind DequantizeLinear, the output quantized where its kernel
needs it), one thread, interleaved runs, the fastest. The conversions at the layer's ends are in
the W8A8 time: a layer between float ops pays them, but a chain of integer layers pays them once,
which this additive estimate does not see; so where the budget is below (or by default near) the
cheapest point, the pipeline times its point and uniform W8A8 whole (``compare_models``) and ships the faster.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxmp.quant import numerics
from onnxmp.quant.groups import QuantPlan, WeightedOp
from onnxmp.runtime.data import CalibrationSet
from onnxmp.runtime.session import make_session

logger = logging.getLogger(__name__)

RUNS = 15  # interleaved timed runs per layer and variant (after one warm-up run)
# whole models are timed in rounds filling at least this long: a 30-microsecond model (digits)
# needs thousands for a median that separates 5%
COMPARE_SECONDS = 0.3
_QUANTIZED_OUTPUT = frozenset({"Conv", "Gemm"})  # kernels that need their output quantized (targets/ort.py)


def _layer_inputs(model: onnx.ModelProto, plan: QuantPlan, data: CalibrationSet) -> dict[str, np.ndarray]:
    """Each weighted op's input activation for one sample, from one float run."""
    one = data.first_sample()
    names = [n for n in dict.fromkeys(op.activation for op in plan.weighted_ops) if n not in one]
    values = make_session(model, outputs=names).run(names, one) if names else []
    return {**one, **dict(zip(names, values, strict=True))}


def _qdq(nodes: list, inits: list, x: str, name: str) -> str:
    inits += [numpy_helper.from_array(np.array(0.05, np.float32), f"{name}_s"),
              helper.make_tensor(f"{name}_z", TensorProto.UINT8, [], [128])]
    nodes += [helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
              helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])]
    return f"{name}_dq"


def _layer_models(node: onnx.NodeProto, op: WeightedOp, weight: np.ndarray, bias: np.ndarray | None,
                  x: np.ndarray) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The layer alone in float, and as placement writes it at W8A8."""
    attrs = list(node.attribute)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    extra = ["b"] if bias is not None else []
    f_inits = [numpy_helper.from_array(weight, "w"), *([numpy_helper.from_array(bias, "b")] if bias is not None else [])]
    f_node = helper.make_node(op.op_type, ["x", "w", *extra], ["y"])
    f_node.attribute.extend(attrs)
    float_model = helper.make_model(helper.make_graph([f_node], "layer", [x_info], [out], f_inits),
                                    opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    nodes, inits = [], []
    xq = _qdq(nodes, inits, "x", "xa")
    scale = numerics.weight_scales(weight, op.axis, 8)
    ints = numerics.quantize_symmetric(weight, scale, op.axis, 8).astype(np.int8)
    inits += [numpy_helper.from_array(ints, "wq"), numpy_helper.from_array(scale.astype(np.float32), "ws"),
              numpy_helper.from_array(np.zeros(scale.shape, np.int8), "wz")]
    nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wdq"], axis=op.axis))
    q_inputs = [xq, "wdq"]
    if bias is not None:
        b_scale = np.maximum(np.float32(0.05) * scale.reshape(-1), np.float32(1e-12)).astype(np.float32)
        # the time, not the values; in float64, where 2**31 - 1 is exact (float32 rounds it up: an overflowing cast)
        b_ints = np.clip(np.round(bias.astype(np.float64) / b_scale), -(2**31), 2**31 - 1).astype(np.int32)
        inits += [numpy_helper.from_array(b_ints, "bq"),
                  numpy_helper.from_array(b_scale, "bs"), numpy_helper.from_array(np.zeros(b_scale.shape, np.int32), "bz")]
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bdq"], axis=0))
        q_inputs.append("bdq")
    q_node = helper.make_node(op.op_type, q_inputs, ["yf"])
    q_node.attribute.extend(attrs)
    nodes.append(q_node)
    last = _qdq(nodes, inits, "yf", "ya") if op.op_type in _QUANTIZED_OUTPUT else "yf"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    q_model = helper.make_model(helper.make_graph(nodes, "layer", [x_info], [out], inits),
                                opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return float_model, q_model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def round_orders(count: int, seed: int = 0) -> Iterator[list[int]]:
    """The order of ``count`` variants in each round: a fresh random permutation (seeded: the same
    rounds every time), so that on average each runs in every position, after every other and at
    every distance from its last call alike. What ran just before a call, and how long ago it last
    ran itself, sway its time on a small model (two identical digits graphs, 30 microseconds a
    run: 1.03x or 0.97x of each other in a fixed order by which one followed the float model;
    in an order where one ran every other call, it took 0.97x of its twin)."""
    rng = np.random.default_rng(seed)
    while True:
        yield [int(i) for i in rng.permutation(count)]


def interleaved_ms(runners: Sequence[Callable[[], object]], runs: int, min_seconds: float = 0.0,
                   statistic=np.median, warm_ups: int = 1) -> list[float]:
    """Milliseconds of one call of each runner, the median (or ``statistic``, e.g. np.min for the
    fastest) of calls taken in turn (interleaved, so a noisy neighbour slows them all alike; each
    round in the order ``round_orders`` gives), after ``warm_ups`` calls each: at least ``runs``
    rounds, more where they would take under ``min_seconds`` (as the first round took)."""
    times: list[list[float]] = [[] for _ in runners]
    for run in runners:
        for _ in range(warm_ups):
            run()
    orders, done = round_orders(len(runners)), 0
    while done < runs:
        round_start = time.perf_counter()
        for index in next(orders):
            start = time.perf_counter()
            runners[index]()
            times[index].append(time.perf_counter() - start)
        if not done:
            runs = max(runs, math.ceil(min_seconds / max(time.perf_counter() - round_start, 1e-6)))
        done += 1
    return [1e3 * float(statistic(t)) for t in times]


def session_runner(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    """One run of ``session`` on ``feeds``, for ``interleaved_ms``."""
    return lambda: session.run(None, feeds)


def measure_layers(model: onnx.ModelProto, plan: QuantPlan, data: CalibrationSet, weights,
                   runs: int = RUNS) -> dict[str, dict[str, float]]:
    """Per weighted op (node name): {"FP32": ms, "W8A8": ms} on onnxruntime CPU, one thread, the
    fastest of ``runs`` runs: a neighbour only ever slows a run, and the ratio of two fastest runs
    moves less between passes than that of two medians, so fewer ratios cross a rounding boundary
    (ppocr_det, five passes of 15 runs: 5 and 12 of 64 layers' rounded ratios changed with the
    fastest, 25 and 35 with the median; MiniLM 1 of 36 against 4).
    ``weights(name)``: an initializer's float values. A layer whose W8A8 model onnxruntime
    cannot run gets its float time for both (it would not be faster)."""
    inputs = _layer_inputs(model, plan, data)
    by_name = {n.name: n for n in model.graph.node}
    times: dict[str, dict[str, float]] = {}
    for op in plan.weighted_ops:
        x = np.ascontiguousarray(inputs[op.activation], dtype=np.float32)
        bias = weights(op.bias) if op.bias else None
        float_model, q_model = _layer_models(by_name[op.node], op, weights(op.weight), bias, x)
        sessions = [_session(float_model)]
        try:
            sessions.append(_session(q_model))
        except Exception as exc:
            logger.debug("W8A8 probe of %s does not load (%s)", op.node, exc)
        ms = interleaved_ms([session_runner(s, {"x": x}) for s in sessions], runs, statistic=np.min)
        times[op.node] = {"FP32": ms[0], "W8A8": ms[-1]}
    faster = sum(t["W8A8"] < t["FP32"] for t in times.values())
    logger.info("latency: %d of %d layers run faster at W8A8 than in float on this machine", faster, len(times))
    return times


def compare_models(models: dict[str, onnx.ModelProto], data: CalibrationSet, runs: int = 20,
                   min_seconds: float = COMPARE_SECONDS) -> dict[str, float]:
    """Median milliseconds of one sample through each whole model (one thread, interleaved), as
    the output is deployed: the measurement of what ships, beside the per-layer estimate."""
    sessions = {name: _session(model) for name, model in models.items()}
    feeds = data.first_sample()
    ms = interleaved_ms([session_runner(s, feeds) for s in sessions.values()], runs, min_seconds)
    return dict(zip(sessions, ms, strict=True))
