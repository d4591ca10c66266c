"""Quantizer groups come from topology alone."""

from __future__ import annotations

import onnx
import pytest
from conftest import make_cnn

from onnxmp.errors import NothingToQuantizeError
from onnxmp.model.loader import prepare_model
from onnxmp.quant.groups import find_quantizers


@pytest.fixture
def plan():
    return find_quantizers(prepare_model(make_cnn()))


def _group_with(plan, tensor):
    return next(g for g in plan.groups if tensor in g.activations)


def test_concat_inputs_and_output_share_one_group(plan):
    group = _group_with(plan, "cat")
    assert {"a", "b", "cat"} <= set(group.activations)
    assert "fuse" in group.nodes  # and the Conv that reads the Concat


def test_a_tensor_read_by_two_convs_has_one_quantizer_and_one_group(plan):
    assert plan.activations.count("stem_relu") == 1
    group = _group_with(plan, "stem_relu")
    assert {"branch_a", "branch_b"} <= set(group.nodes)
    assert {"a.w", "b.w"} <= set(group.weights)


def test_weight_and_input_activation_in_one_group(plan):
    group = _group_with(plan, "x")
    assert group.nodes == ("stem",) and len(group.weights) == 1


def test_residual_input_shared_by_conv_and_add(plan):
    group = _group_with(plan, "fuse_relu")
    assert "res" in group.nodes
    assert "add" in plan.activations  # the Add's output is quantized too


def test_conv_output_feeding_relu_is_fused_not_quantized(plan):
    assert "bn" not in plan.activations and "fuse" not in plan.activations
    assert any(s.name == "fuse" and "fused" in s.reason for s in plan.skips)


def test_gemm_and_matmul_count_as_weighted(plan):
    assert any(op.op_type == "Gemm" and op.axis == 0 for op in plan.weighted_ops)  # transB=1: [N, K]
    matmul = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {1,2,3,4,5,6,7,8,9,10,11,12}> {
            y = MatMul(x, w)
        }""")
    plan = find_quantizers(prepare_model(matmul))
    assert [(op.op_type, op.axis, op.reduction) for op in plan.weighted_ops] == [("MatMul", 1, 4)]


def test_model_without_quantizable_ops_is_refused():
    model = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[N, 4] x) => (float[N, 4] y) { y = Exp(x) }""")
    with pytest.raises(NothingToQuantizeError):
        find_quantizers(prepare_model(model))


def test_tensors_computed_from_constants_are_not_activation_quantizers():
    """A bias reshaped at run time (Reshape of an initializer) added to a MatMul output: the
    reshaped constant stays float; the MatMul output is still quantized."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Reshape", ["b", "shape"], ["b2"], name="reshape_bias"),
             helper.make_node("Add", ["m", "b2"], ["y"], name="add_bias")]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1, 3], np.int64), "shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    plan = find_quantizers(prepare_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])))
    assert "b2" not in plan.activations and {"m", "y"} <= set(plan.activations)
    assert any(s.name == "b2" and "constant" in s.reason for s in plan.skips)
