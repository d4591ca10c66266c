"""Placement on onnxruntime CPU: quantizers where its integer kernels are, exporters' decompositions
(LayerNorm, RMSNorm, GELU, Softmax, SiLU, L2 norm) recognised as units and kept float there;
checked on the graph onnxruntime optimizes the output into, not only on the written one."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxmp import OptimizeConfig, optimize, parse_candidates
from onnxmp.errors import NothingToQuantizeError
from onnxmp.model.patterns import find_units
from onnxmp.quant import numerics
from onnxmp.quant.groups import find_quantizers
from onnxmp.targets.ort import PLACEMENT

D = 16


def _c(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _layernorm(x: str) -> tuple[list, list]:
    n = helper.make_node
    return [n("ReduceMean", [x, "ax"], ["mu"], name="ln_mean"), n("Sub", [x, "mu"], ["d"], name="ln_sub"),
            n("Pow", ["d", "two"], ["d2"], name="ln_pow"), n("ReduceMean", ["d2", "ax"], ["var"], name="ln_var"),
            n("Add", ["var", "eps"], ["ve"], name="ln_eps"), n("Sqrt", ["ve"], ["sd"], name="ln_sqrt"),
            n("Div", ["d", "sd"], ["nd"], name="ln_div"), n("Mul", ["nd", "gamma"], ["g"], name="ln_gamma"),
            n("Add", ["g", "beta"], ["u"], name="ln_beta")], \
        [_c("two", 2.0), _c("eps", 1e-5), _c("gamma", np.linspace(0.5, 1.5, D)), _c("beta", np.linspace(-0.1, 0.1, D)),
         numpy_helper.from_array(np.array([-1], np.int64), "ax")]


def _rmsnorm(x: str) -> tuple[list, list]:
    n = helper.make_node
    return [n("Pow", [x, "two"], ["x2"], name="rms_pow"), n("ReduceMean", ["x2", "ax"], ["ms"], name="rms_mean"),
            n("Add", ["ms", "eps"], ["me"], name="rms_eps"), n("Sqrt", ["me"], ["r"], name="rms_sqrt"),
            n("Div", [x, "r"], ["nx"], name="rms_div"), n("Mul", ["nx", "gamma"], ["u"], name="rms_gamma")], \
        [_c("two", 2.0), _c("eps", 1e-6), _c("gamma", np.linspace(0.5, 1.5, D)),
         numpy_helper.from_array(np.array([-1], np.int64), "ax")]


def _gelu_erf(x: str) -> tuple[list, list]:
    n = helper.make_node
    return [n("Div", [x, "sqrt2"], ["xs"], name="ge_div"), n("Erf", ["xs"], ["e"], name="ge_erf"),
            n("Add", ["e", "one"], ["e1"], name="ge_add"), n("Mul", [x, "e1"], ["xe"], name="ge_mul"),
            n("Mul", ["xe", "half"], ["u"], name="ge_half")], [_c("sqrt2", 2**0.5), _c("one", 1.0), _c("half", 0.5)]


def _gelu_tanh(x: str) -> tuple[list, list]:
    n = helper.make_node
    return [n("Pow", [x, "three"], ["x3"], name="gt_pow"), n("Mul", ["x3", "k"], ["kx3"], name="gt_k"),
            n("Add", [x, "kx3"], ["inner"], name="gt_add"), n("Mul", ["inner", "c"], ["ci"], name="gt_c"),
            n("Tanh", ["ci"], ["t"], name="gt_tanh"), n("Add", ["t", "one"], ["t1"], name="gt_add1"),
            n("Mul", [x, "half"], ["hx"], name="gt_half"), n("Mul", ["hx", "t1"], ["u"], name="gt_mul")], \
        [_c("three", 3.0), _c("k", 0.044715), _c("c", (2 / np.pi) ** 0.5), _c("one", 1.0), _c("half", 0.5)]


def _softmax(x: str) -> tuple[list, list]:
    n = helper.make_node
    return [n("ReduceMax", [x, "ax"], ["mx"], name="sm_max"), n("Sub", [x, "mx"], ["z"], name="sm_sub"),
            n("Exp", ["z"], ["ez"], name="sm_exp"), n("ReduceSum", ["ez", "ax"], ["s"], name="sm_sum"),
            n("Div", ["ez", "s"], ["u"], name="sm_div")], [numpy_helper.from_array(np.array([-1], np.int64), "ax")]


def _silu(x: str) -> tuple[list, list]:
    n = helper.make_node
    return [n("Sigmoid", [x], ["sg"], name="si_sig"), n("Mul", [x, "sg"], ["u"], name="si_mul")], []


def _l2norm(x: str) -> tuple[list, list]:
    n = helper.make_node
    return [n("Mul", [x, x], ["sq"], name="l2_sq"), n("ReduceSum", ["sq", "ax"], ["ss"], name="l2_sum"),
            n("Sqrt", ["ss"], ["nrm"], name="l2_sqrt"), n("Max", ["nrm", "tiny"], ["nm"], name="l2_max"),
            n("Div", [x, "nm"], ["u"], name="l2_div")], \
        [_c("tiny", 1e-12), numpy_helper.from_array(np.array([-1], np.int64), "ax")]


UNITS = {"LayerNorm": _layernorm, "RMSNorm": _rmsnorm, "GELU (erf)": _gelu_erf, "GELU (tanh)": _gelu_tanh,
         "Softmax": _softmax, "SiLU": _silu, "L2 normalisation": _l2norm}


def _sandwich(make_unit, seed: int = 0) -> onnx.ModelProto:
    """x → MatMul → (the unit) → MatMul → y, constant weights: a transformer's block in small."""
    rng = np.random.default_rng(seed)
    nodes, consts = make_unit("h")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), *nodes,
             helper.make_node("MatMul", ["u", "w2"], ["y"], name="mm2")]
    weights = [_c("w1", rng.standard_normal((D, D)) / 4), _c("w2", rng.standard_normal((D, D)) / 4)]
    graph = helper.make_graph(nodes, "unit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, D])], [*weights, *consts])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def optimized_ops(path: str, folder: str) -> collections.Counter:
    """The op types of the graph onnxruntime runs (default optimizations, one thread)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("kind", list(UNITS))
def test_each_decomposition_is_found_as_one_unit(kind):
    model = _sandwich(UNITS[kind])
    units = find_units(model)
    assert [(u.kind, u.entry, u.exit) for u in units] == [(kind, "h", "u")]
    unit_nodes = {n.name for n in model.graph.node} - {"mm1", "mm2"}
    assert set(units[0].nodes) == unit_nodes


def test_plain_arithmetic_and_open_regions_are_not_units():
    n = helper.make_node
    affine = lambda x: ([n("Mul", [x, "a"], ["ax1"], name="mul"), n("Add", ["ax1", "b"], ["u"], name="add")],  # noqa: E731
                        [_c("a", 2.0), _c("b", 1.0)])
    assert find_units(_sandwich(affine)) == []
    # a GELU whose inner tensor is also read outside it is not closed: no unit
    model = _sandwich(_gelu_erf)
    model.graph.output.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, None))
    assert find_units(model) == []


@pytest.mark.parametrize("kind", list(UNITS))
def test_ort_keeps_units_float_between_integer_matmuls(kind, tmp_path):
    model = _sandwich(UNITS[kind], seed=1)
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    x = np.random.default_rng(2).standard_normal((32, 8, D)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = str(tmp_path / "q.onnx")
    result = optimize(path, out, OptimizeConfig(candidates=parse_candidates("W8A8"), budget=1.0,
                                                calib=str(tmp_path / "calib.npz"), cache_dir=None))
    qdq = onnx.load(out)
    quantized = {n.input[0].removesuffix("_float") for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == {"x", "u"}  # the two MatMuls' inputs, nothing inside the unit
    internal = {o for n in model.graph.node if n.name not in ("mm1", "mm2") for o in n.output} - {"u"}
    reasons = {s["name"]: s["reason"] for s in result.record["skipped"]}
    assert all(kind in reasons[t] and "kept float" in reasons[t] for t in internal)
    ops = optimized_ops(out, str(tmp_path))
    assert ops["MatMulIntegerToFloat"] == 2 and ops["MatMul"] == 0  # both MatMuls run in integer
    # the written model computes what onnx's reference evaluator computes for it
    np.testing.assert_allclose(ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"x": x[:4]})[0],
                               ReferenceEvaluator(qdq).run(None, {"x": x[:4]})[0], rtol=1e-3, atol=1e-3)
    reference = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert numerics.sqnr_db([reference], [ReferenceEvaluator(qdq).run(None, {"x": x})[0]]) > 20


def test_accelerator_placement_quantizes_inside_units():
    """Without an integer placement (qnn-htp, openvino) every quantized op's tensors are quantized,
    the LayerNorm's insides included."""
    model = _sandwich(_layernorm)
    plan = find_quantizers(onnx.shape_inference.infer_shapes(model))
    assert {"mu", "d", "sd", "nd", "u"} <= set(plan.activations)
    ort_plan = find_quantizers(onnx.shape_inference.infer_shapes(model), integer=PLACEMENT)
    assert set(ort_plan.activations) == {"x", "u"}


def _residual_cnn(after_add: str | None = None) -> onnx.ModelProto:
    """Conv → Relu → Conv, + the block's input (a residual Add) [→ Relu or Clip] → MaxPool → Conv
    → Tanh."""
    rng = np.random.default_rng(3)
    n = helper.make_node
    bounds = [_c("lo", 0.0), _c("hi", 1e3)] if after_add == "Clip" else []
    clamp = [n(after_add, ["s", *(b.name for b in bounds)], ["sr"], name="clamp")] if after_add else []
    nodes = [n("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]), n("Relu", ["c0"], ["r0"], name="relu0"),
             n("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"], name="relu1"),
             n("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]), n("Add", ["c2", "r0"], ["s"], name="res"),
             *clamp, n("MaxPool", ["sr" if after_add else "s"], ["p"], name="pool", kernel_shape=[2, 2],
                       strides=[2, 2]),
             n("Conv", ["p", "w3"], ["c3"], name="conv3"), n("Tanh", ["c3"], ["y"], name="tanh")]
    weights = [_c("w0", rng.standard_normal((8, 3, 3, 3)) / 3), _c("w1", rng.standard_normal((8, 8, 3, 3)) / 8),
               _c("w2", rng.standard_normal((8, 8, 3, 3)) / 8), _c("w3", rng.standard_normal((4, 8, 1, 1)) / 3),
               *bounds]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_ort_cnn_runs_every_conv_and_the_residual_add_in_integer(tmp_path):
    path = str(tmp_path / "cnn.onnx")
    onnx.save(_residual_cnn(), path)
    x = np.abs(np.random.default_rng(4).standard_normal((16, 3, 16, 16))).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = str(tmp_path / "q.onnx")
    optimize(path, out, OptimizeConfig(candidates=parse_candidates("W8A8"), budget=1.0, calib=str(tmp_path / "calib.npz"),
                                       cache_dir=None))
    quantized = {n.input[0].removesuffix("_float") for n in onnx.load(out).graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == {"x", "r0", "r1", "c2", "s", "p", "c3"}  # Tanh's output stays float
    ops = optimized_ops(out, str(tmp_path))
    assert ops["QLinearConv"] == 4 and ops["QLinearAdd"] == 1 and ops["Conv"] == 0 and ops["FusedConv"] == 0


@pytest.mark.parametrize("clamp", ["Relu", "Clip"])
def test_a_clamp_after_an_integer_add_and_a_maxpool_add_no_requantization(clamp, tmp_path):
    """Add → Relu (or Clip) → MaxPool between integer Convs: the quantizer goes after the clamp
    (which onnxruntime then drops), not also on the Add's output, and the MaxPool's output takes
    its input's scale, so onnxruntime runs both on the 8-bit values: no DequantizeLinear →
    QuantizeLinear pair is left between the first Conv and the Tanh."""
    path = str(tmp_path / "cnn.onnx")
    onnx.save(_residual_cnn(after_add=clamp), path)
    x = np.abs(np.random.default_rng(4).standard_normal((16, 3, 16, 16))).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = str(tmp_path / "q.onnx")
    result = optimize(path, out, OptimizeConfig(candidates=parse_candidates("W8A8"), budget=1.0,
                                                calib=str(tmp_path / "calib.npz"), cache_dir=None))
    written = onnx.load(out).graph
    quantizers = {n.input[0].removesuffix("_float"): n for n in written.node if n.op_type == "QuantizeLinear"}
    assert set(quantizers) == {"x", "r0", "r1", "c2", "sr", "p", "c3"}  # not "s": the Relu's output instead
    assert any(s["name"] == "s" and clamp in s["reason"] for s in result.record["skipped"])
    assert list(quantizers["p"].input[1:]) == list(quantizers["sr"].input[1:]) or all(
        np.array_equal(numpy_helper.to_array(_init(written, a)), numpy_helper.to_array(_init(written, b)))
        for a, b in zip(quantizers["p"].input[1:], quantizers["sr"].input[1:], strict=True))
    ops = optimized_ops(out, str(tmp_path))
    assert ops["QLinearConv"] == 4 and ops["QLinearAdd"] == 1 and ops[clamp] == 0
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1  # the model input; the Tanh's input
    # the written file computes what onnx's reference evaluator computes for it
    got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"x": x[:2]})[0]
    want = ReferenceEvaluator(onnx.load(out)).run(None, {"x": x[:2]})[0]
    np.testing.assert_allclose(got, want, atol=0.02)


def _init(graph: onnx.GraphProto, name: str) -> onnx.TensorProto:
    return next(t for t in graph.initializer if t.name == name)


def test_a_model_with_nothing_the_runtime_computes_in_integer_is_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    with pytest.raises(NothingToQuantizeError):
        find_quantizers(model, integer=PLACEMENT)


def test_fp32_candidate_leaves_groups_float(tmp_path):
    """A group at FP32 has no quantizer: its weights stay float initializers, and the file
    computes what onnx's reference evaluator computes for it; all-FP32 is the float model."""
    from onnxmp.output.export import export_qdq
    from onnxmp.quant.candidates import Candidate

    assert str(Candidate.parse("fp32")) == "FP32" and Candidate.parse("FLOAT").is_float
    assert parse_candidates("FP32,W8A8")[-1].is_float  # the most expensive candidate
    path = str(tmp_path / "cnn.onnx")
    onnx.save(_residual_cnn(), path)
    x = np.abs(np.random.default_rng(4).standard_normal((16, 3, 16, 16))).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = str(tmp_path / "q.onnx")
    result = optimize(path, out, OptimizeConfig(candidates=parse_candidates("W8A8,FP32"), budget=0.3,
                                                calib=str(tmp_path / "calib.npz"), cache_dir=None, metric="memory"))
    mix = result.record["chosen"]["mix"]
    assert mix.get("FP32") and mix.get("W8A8")  # a real mix at this budget
    qdq = onnx.load(out)
    float_weights = {t.name for t in qdq.graph.initializer if t.data_type == TensorProto.FLOAT and t.name.startswith("w")}
    dequantized = {n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    for node in qdq.graph.node:
        if node.op_type == "Conv":
            assert node.input[1] in float_weights | dequantized
    assert float_weights and float_weights != {"w0", "w1", "w2", "w3"}
    np.testing.assert_allclose(ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"x": x[:4]})[0],
                               ReferenceEvaluator(qdq).run(None, {"x": x[:4]})[0], rtol=1e-4, atol=1e-4)
    analysis_model = onnx.load(path)
    plan = find_quantizers(onnx.shape_inference.infer_shapes(analysis_model), integer=PLACEMENT)
    everything_float = export_qdq(onnx.shape_inference.infer_shapes(analysis_model), plan, None,
                                  {g.gid: Candidate.parse("FP32") for g in plan.groups})
    assert [n.op_type for n in everything_float.graph.node] == [n.op_type for n in analysis_model.graph.node]


def test_qnn_htp_refuses_fp32_where_ort_runs_it():
    from onnxmp.quant.candidates import Candidate
    from onnxmp.targets import get_target

    fp32 = Candidate.parse("FP32")
    assert get_target("ort").allows({"Conv"}, fp32) and not get_target("qnn-htp").allows({"Conv"}, fp32)


def test_latency_probes_are_the_integer_kernels_placement_writes(tmp_path):
    """Each layer's W8A8 probe is what onnxruntime runs as an integer kernel (so its time is
    that kernel's), and the float probe a float op; the timing itself is not asserted (noisy)."""
    from onnxmp.model.graph import GraphIndex
    from onnxmp.quant.groups import _try_weighted_op
    from onnxmp.targets.ort_latency import _layer_models

    model = onnx.shape_inference.infer_shapes(_residual_cnn())
    index = GraphIndex.build(model.graph)
    rng = np.random.default_rng(0)
    conv = next(n for n in model.graph.node if n.name == "conv1")
    op = _try_weighted_op(conv, index)
    weight = numpy_helper.to_array(index.initializers[op.weight])
    float_model, q_model = _layer_models(conv, op, weight, rng.standard_normal(8).astype(np.float32),
                                         rng.standard_normal((1, 8, 16, 16)).astype(np.float32))
    for model_, kernel in ((float_model, "Conv"), (q_model, "QLinearConv")):
        path = str(tmp_path / f"{kernel}.onnx")
        onnx.save(model_, path)
        assert optimized_ops(path, str(tmp_path))[kernel] == 1
    mm = _sandwich(_silu)
    mm_index = GraphIndex.build(mm.graph)
    node = mm.graph.node[0]
    op = _try_weighted_op(node, mm_index)
    _, q_model = _layer_models(node, op, numpy_helper.to_array(mm_index.initializers["w1"]), None,
                               rng.standard_normal((1, 8, D)).astype(np.float32))
    onnx.save(q_model, str(tmp_path / "mm.onnx"))
    assert optimized_ops(str(tmp_path / "mm.onnx"), str(tmp_path))["MatMulIntegerToFloat"] == 1


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_interleaved_timing_gives_no_variant_a_fixed_place(count):
    """What ran just before a call, and how long since the variant last ran, sway its time on a
    small model (3% between identical digits graphs by their place in the order). Each round
    calls every variant once, in an order that turns: over many rounds each is first, and follows
    each other, about equally often; the warm-ups come first."""
    from onnxmp.targets.ort_latency import interleaved_ms

    calls: list[int] = []
    runners = [lambda i=i: calls.append(i) for i in range(count)]
    rounds = 300
    ms = interleaved_ms(runners, runs=rounds, warm_ups=2)
    assert len(ms) == count and all(t >= 0 for t in ms)
    warm, timed = calls[:2 * count], calls[2 * count:]
    assert collections.Counter(warm) == {i: 2 for i in range(count)}
    assert len(timed) == rounds * count
    orders = [timed[r * count:(r + 1) * count] for r in range(rounds)]
    assert all(sorted(order) == list(range(count)) for order in orders)
    if count > 1:
        first = collections.Counter(order[0] for order in orders)
        assert set(first) == set(range(count)) and max(first.values()) < 1.4 * rounds / count
        pairs = collections.Counter(itertools.pairwise(timed))
        between = [pairs[(a, b)] for a in range(count) for b in range(count) if a != b]
        assert min(between) > 0.6 * max(between)


def test_latency_cost_uses_each_layers_measured_ratio():
    from onnxmp.quant.candidates import Candidate
    from onnxmp.quant.cost import CostModel
    from onnxmp.targets.ort import LATENCY

    costs = CostModel(macs={0: 10, 1: 20, 2: 30, 3: 40},
                      weights={0: 1, 1: 1, 2: 1, 3: 1},
                      ops={0: (("a", "Conv", 10),), 1: (("b", "MatMul", 20),), 2: (("c", "Conv", 30),),
                           3: (("d", "Conv", 40),)},
                      latency=LATENCY, layer_ms={"a": {"FP32": 2.0, "W8A8": 3.0}, "b": {"FP32": 1.0, "W8A8": 0.27},
                                                 "c": {"FP32": 1.0, "W8A8": 0.86}, "d": {"FP32": 1.0, "W8A8": 0.84}})
    w8a8, fp32, w8a16 = Candidate(8, 8), Candidate.parse("FP32"), Candidate(8, 16)
    assert costs.group_cost(0, w8a8, "latency") == 15.0  # 10 MACs at 1.5x float: slower in integer
    assert costs.group_cost(0, fp32, "latency") == 10.0
    assert costs.group_cost(1, w8a8, "latency") == pytest.approx(20 * 0.3)  # 0.27 rounded to a tenth
    # a saving inside the timing noise is no saving: 0.86 rounds to 0.9, which counts as float's 1
    assert costs.group_cost(2, w8a8, "latency") == pytest.approx(30.0)
    assert costs.group_cost(3, w8a8, "latency") == pytest.approx(40 * 0.8)  # 0.84: a fifth saved
    assert costs.group_cost(1, w8a16, "latency") == pytest.approx(20 * LATENCY.factor("MatMul", w8a16))


def test_the_record_times_the_output_against_float_and_uniform_w8a8(tmp_path):
    path = str(tmp_path / "cnn.onnx")
    onnx.save(_residual_cnn(), path)
    np.savez(tmp_path / "calib.npz", x=np.abs(np.random.default_rng(4).standard_normal((8, 3, 16, 16))).astype(np.float32))
    record = optimize(path, None, OptimizeConfig(calib=str(tmp_path / "calib.npz"), cache_dir=None, metric="bops",
                                                 budget=0.25)).record
    latency = record["latency"]
    assert set(latency["ms"]) == {"float", "output", "uniform W8A8"} and all(v > 0 for v in latency["ms"].values())
    assert latency["vs_float"] == pytest.approx(latency["ms"]["output"] / latency["ms"]["float"])


def test_openvino_quantizes_around_ops_but_keeps_units_float():
    from onnxmp.targets import get_target

    model = onnx.shape_inference.infer_shapes(_sandwich(_gelu_erf))
    profile = get_target("openvino")
    plan = find_quantizers(model, quantized_ops=frozenset({"MatMul", "Mul", "Add", "Div", "Erf"}),
                           integer=profile.placement, float_units=profile.float_units)
    assert set(plan.activations) == {"x", "h", "u", "y"}  # the MatMuls' inputs and outputs, nothing inside
    everything = find_quantizers(model, quantized_ops=frozenset({"MatMul", "Mul", "Add", "Div", "Erf"}))
    assert {"xs", "e", "e1", "xe"} <= set(everything.activations)


def _stand_in_ort(tmp_path, monkeypatch, uniform_faster: bool, conv1_ratio: float = 2.0) -> str:
    """The residual CNN and its calibration samples, on ``ort`` with stand-in timings: conv1 at
    ``conv1_ratio`` of its float time at W8A8, every other layer at 0.4; timed whole, the faster of
    the estimate's point and uniform W8A8 is the one the test names."""
    from onnxmp import pipeline
    from onnxmp.targets.ort import PROFILE

    def layer_times(model, plan, data, weights):
        return {op.node: {"FP32": 1.0, "W8A8": conv1_ratio if op.node == "conv1" else 0.4} for op in plan.weighted_ops}

    def time_models(models, data):
        fast = "uniform W8A8" if uniform_faster else "cheapest estimate"
        return {name: 1.0 if name in (fast, "output") else 1.5 for name in models}

    profile = dataclasses.replace(PROFILE, measure_latency=layer_times, time_models=time_models)
    monkeypatch.setattr(pipeline, "get_target", lambda name: profile)
    path = str(tmp_path / "cnn.onnx")
    onnx.save(_residual_cnn(), path)
    np.savez(tmp_path / "calib.npz", x=np.abs(np.random.default_rng(4).standard_normal((8, 3, 16, 16))).astype(np.float32))
    return path


def test_the_default_latency_budget_sits_a_fixed_slack_above_the_cheapest_point(tmp_path, monkeypatch):
    """Where the cheapest point costs more than 0.5 - LATENCY_SLACK of float's time, the default
    budget is LATENCY_SLACK above it (the cheapest point's cost moves with the machine's speed,
    the steps above it do not), and the choice is timed whole against uniform W8A8; a budget
    given is kept as given."""
    from onnxmp.pipeline import LATENCY_SLACK

    # conv1 saves a tenth of its time at W8A8, within the timing noise: it costs as much as float
    path = _stand_in_ort(tmp_path, monkeypatch, uniform_faster=False, conv1_ratio=0.9)
    config = OptimizeConfig(calib=str(tmp_path / "calib.npz"), cache_dir=None)
    default = optimize(path, None, config).record
    cheapest = default["pareto_curve"][-1]["relative_cost"]
    assert 0.5 - LATENCY_SLACK < cheapest < 1 - LATENCY_SLACK
    assert default["options"]["budget"] == pytest.approx(cheapest + LATENCY_SLACK)
    assert default["chosen"]["relative_cost"] <= cheapest + LATENCY_SLACK + 1e-9
    assert "cheapest_timed" in default["latency"]
    given = optimize(path, None, dataclasses.replace(config, budget=cheapest + LATENCY_SLACK / 2)).record
    assert given["options"]["budget"] == pytest.approx(cheapest + LATENCY_SLACK / 2)
    assert "cheapest_timed" not in given["latency"]


@pytest.mark.parametrize("uniform_faster", [True, False])
def test_below_the_cheapest_point_the_faster_of_it_and_uniform_w8a8_timed_whole_ships(uniform_faster, tmp_path,
                                                                                      monkeypatch):
    """The per-layer estimate says conv1 runs slower at W8A8 than in float, so its cheapest point
    keeps conv1 float; timed whole (here by a stand-in runtime whose answer the test sets), uniform
    W8A8 ships where it is faster, and the record says what was timed and why."""
    path = _stand_in_ort(tmp_path, monkeypatch, uniform_faster)
    record = optimize(path, None, OptimizeConfig(calib=str(tmp_path / "calib.npz"), cache_dir=None, budget=0.01)).record
    timed = record["latency"]["cheapest_timed"]
    assert set(timed["ms"]) == {"cheapest estimate", "uniform W8A8"}
    shipped = {g["candidate"] for g in record["groups"] if g.get("weights")}
    if uniform_faster:
        assert timed["shipped"] == "uniform W8A8" and shipped == {"W8A8"}
        assert record["chosen"]["budget_choice"]["fallback"] == "uniform W8A8"
    else:
        assert timed["shipped"] == "cheapest estimate" and shipped == {"W8A8", "FP32"}
        assert record["chosen"]["budget_choice"]["fallback"] is None
