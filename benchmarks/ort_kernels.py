"""Which QDQ patterns onnxruntime CPU turns into integer kernels, and what each costs: the facts
behind ``--target ort``'s placement (``onnxmp/targets/ort.py``).

    python benchmarks/ort_kernels.py [--runs 50]

Part 1: one weighted op (a 64-channel 3x3 Conv on 56x56, a 128x384 by 384x384 MatMul, an 8x512 by
512x256 Gemm, a 2x2 stride-2 ConvTranspose) behind an activation QuantizeLinear/DequantizeLinear
pair and a per-channel weight DequantizeLinear, with and without a quantizer on its output, at
8 and 16-bit activations and 8 and 4-bit weights: the compute kernel in the graph onnxruntime
optimizes it into (default optimizations) and its latency against the float op (one thread,
median of interleaved runs). Part 2: an op between two QLinearConvs, quantized on both sides:
the kernel it runs as (QLinear*, the op itself on 8-bit values, or float behind a
DequantizeLinear).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import git_state, markdown_table, write_result  # noqa: E402

from onnxmp.targets.ort_latency import interleaved_ms, session_runner  # noqa: E402

COMPUTE = ("QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "MatMulNBits", "Conv", "FusedConv",
           "MatMul", "FusedMatMul", "Gemm", "ConvTranspose")
RNG = np.random.default_rng(0)


class Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def qdq(self, x: str, name: str, bits: int = 8, zero: int | None = None) -> str:
        elem = TensorProto.UINT8 if bits == 8 else TensorProto.UINT16
        zp = (128 if bits == 8 else 32768) if zero is None else zero
        self.inits += [numpy_helper.from_array(np.array(0.05, np.float32), name + "_s"),
                       helper.make_tensor(name + "_z", elem, [], [zp])]
        self.nodes += [helper.make_node("QuantizeLinear", [x, name + "_s", name + "_z"], [name + "_q"]),
                       helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"], [name + "_dq"])]
        return name + "_dq"

    def weight(self, name: str, w: np.ndarray, axis: int, bits: int) -> str:
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=reduce) / (7 if bits == 4 else 127)).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        ints = np.round(w / scale.reshape(shape)).astype(np.int8)
        elem = TensorProto.INT4 if bits == 4 else TensorProto.INT8
        self.inits += [helper.make_tensor(name + "_q", elem, w.shape, ints.ravel().tolist()),
                       numpy_helper.from_array(scale, name + "_s"),
                       helper.make_tensor(name + "_z", elem, [len(scale)], [0] * len(scale))]
        self.nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"], [name + "_w"], axis=axis))
        return name + "_w"

    def model(self, x_shape: list[int], output: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


OPS = {  # op: (input shape, weight shape, per-channel axis, attributes, bias length)
    "Conv": ([1, 64, 56, 56], (64, 64, 3, 3), 0, {"pads": [1, 1, 1, 1]}, None),
    "MatMul": ([1, 128, 384], (384, 384), 1, {}, None),
    "Gemm": ([8, 512], (256, 512), 0, {"transB": 1}, 256),
    "ConvTranspose": ([1, 32, 28, 28], (32, 32, 2, 2), 1, {"strides": [2, 2]}, None),
}


def weighted(op: str, a_bits: int | None, w_bits: int, out_q: bool) -> tuple[onnx.ModelProto, list[int]]:
    x_shape, w_shape, axis, attrs, bias = OPS[op]
    b = Builder()
    w = (RNG.standard_normal(w_shape) * 0.1).astype(np.float32)
    extra = []
    if bias:
        b.inits.append(numpy_helper.from_array(RNG.standard_normal(bias).astype(np.float32), "bias"))
        extra = ["bias"]
    if a_bits is None:
        b.inits.append(numpy_helper.from_array(w, "w"))
        b.nodes.append(helper.make_node(op, ["x", "w", *extra], ["y"], **attrs))
        return b.model(x_shape, "y"), x_shape
    b.nodes.append(helper.make_node(op, [b.qdq("x", "xa", a_bits), b.weight("w", w, axis, w_bits), *extra], ["y"], **attrs))
    return b.model(x_shape, b.qdq("y", "ya", a_bits) if out_q else "y"), x_shape


BETWEEN = {  # op between two QLinearConvs: (node inputs after the first conv's outputs a, b; attributes)
    "Add": (["a", "b"], {}), "Mul": (["a", "b"], {}), "Concat": (["a", "b"], {"axis": 1}),
    "MaxPool": (["a"], {"kernel_shape": [2, 2], "strides": [1, 1], "pads": [0, 0, 1, 1]}),
    "AveragePool": (["a"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}), "GlobalAveragePool": (["a"], {}),
    "Sigmoid": (["a"], {}), "LeakyRelu": (["a"], {"alpha": 0.1}), "Softmax": (["a"], {"axis": 1}),
    "Tanh": (["a"], {}), "HardSigmoid": (["a"], {}), "HardSwish": (["a"], {}), "Relu": (["a"], {}),
    "Transpose": (["a"], {"perm": [0, 1, 3, 2]}), "Resize": (["a", "", "rs"], {"mode": "nearest"}),
}


def between(op: str) -> onnx.ModelProto:
    b = Builder()
    b.inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "rs"))
    x = b.qdq("x", "xin")
    outs = {}
    for name in ("a", "b"):
        w = b.weight(name + "w", (RNG.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32), 0, 8)
        b.nodes.append(helper.make_node("Conv", [x, w], [name + "c"], pads=[1, 1, 1, 1]))
        outs[name] = b.qdq(name + "c", name)
    inputs, attrs = BETWEEN[op]
    b.nodes.append(helper.make_node(op, [outs.get(i, i) for i in inputs], ["m"], **attrs))
    return b.model([1, 16, 32, 32], b.qdq("m", "mq"))


def optimized(model: onnx.ModelProto, threads: int = 1) -> tuple[ort.InferenceSession, collections.Counter]:
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return session, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    rows = []
    for op in OPS:
        float_model, shape = weighted(op, None, 8, False)
        variants = [(f"W{w}A{a}" + (", output quantized" if q else ""), weighted(op, a, w, q)[0])
                    for a in (8, 16) for w in (8, 4) for q in (True, False)]
        sessions, kernels = [], []
        for _, model in [("float", float_model), *variants]:
            session, ops = optimized(model)
            sessions.append(session)
            kernels.append(", ".join(f"{ops[k]} {k}" for k in COMPUTE if ops[k]))
        feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
        times = interleaved_ms([session_runner(s, feeds) for s in sessions], args.runs)
        for (label, _), kernel, ms in zip([("float", None), *variants], kernels, times, strict=True):
            rows.append([op, label, kernel, f"{ms:.3f}", f"{ms / times[0]:.2f}"])
    part2 = []
    for op in BETWEEN:
        _, ops = optimized(between(op))
        qlinear = [k for k in ops if k.startswith("QLinear") and k != "QLinearConv"]
        # one QuantizeLinear left (the graph input's) means the op took the 8-bit values as they came
        runs_as = qlinear[0] if qlinear else (f"{op} on 8-bit values" if ops["QuantizeLinear"] == 1
                                               else f"float {op} behind DequantizeLinear")
        part2.append([op, runs_as, str(ops["QuantizeLinear"]), str(ops["DequantizeLinear"])])
    text = (f"# onnxruntime CPU kernels for QDQ patterns\n\nMeasured by `python benchmarks/ort_kernels.py --runs {args.runs}` "
            f"at {git_state()}, onnxruntime {ort.__version__}, one thread, median of {args.runs} interleaved runs.\n\n"
            "## One weighted op\n\n" + markdown_table(["op", "variant", "compute kernel after optimization", "ms", "× float"], rows)
            + "\n\n## An op between two QLinearConvs, quantized on both sides\n\n"
            + markdown_table(["op", "runs as", "QuantizeLinear left", "DequantizeLinear left"], part2) + "\n")
    print(text)
    write_result("ort_kernels.md", text)


if __name__ == "__main__":
    main()
