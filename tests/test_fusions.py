"""Graph rewrites for targets: erf-form GELU → Gelu, checked against NumPy's GELU."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmp.model.fusions import fuse_erf_gelu


def _gelu_reference(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _erf_gelu_model(opset: int, half_first: bool, extra_reader: bool = False, by_mul: bool = False
                    ) -> onnx.ModelProto:
    """MatMul → GELU as x·0.5·(1 + erf(x/√2)) (BERT exporters), either x·(1+erf)·0.5 or
    (0.5·x)·(1+erf); ``extra_reader``: the Erf output is also a graph output; ``by_mul``:
    (1/√2)·x instead of x/√2."""
    consts = [numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("sqrt2", math.sqrt(2.0)), ("rsqrt2", 1 / math.sqrt(2.0)), ("one", 1.0), ("half", 0.5))]
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32), "w")
    scaled = (helper.make_node("Mul", ["rsqrt2", "h"], ["d"], name="gelu/Mul_rsqrt2") if by_mul
              else helper.make_node("Div", ["h", "sqrt2"], ["d"], name="gelu/Div"))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             scaled,
             helper.make_node("Erf", ["d"], ["e"], name="gelu/Erf"),
             helper.make_node("Add", ["e", "one"], ["p"], name="gelu/Add")]
    if half_first:
        nodes += [helper.make_node("Mul", ["half", "h"], ["hh"], name="gelu/Half"),
                  helper.make_node("Mul", ["hh", "p"], ["y"], name="gelu/Mul")]
    else:
        nodes += [helper.make_node("Mul", ["h", "p"], ["m"], name="gelu/Mul"),
                  helper.make_node("Mul", ["m", "half"], ["y"], name="gelu/Half")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 6]))
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              outputs, [*consts, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset,domain", [(17, "com.microsoft"), (21, "")])
@pytest.mark.parametrize("half_first,by_mul", [(False, False), (True, False), (False, True)])
def test_erf_gelu_becomes_one_gelu_computing_the_same(opset, domain, half_first, by_mul):
    model = _erf_gelu_model(opset, half_first, by_mul=by_mul)
    fused = fuse_erf_gelu(_erf_gelu_model(opset, half_first, by_mul=by_mul))
    assert [(n.op_type, n.domain) for n in fused.graph.node] == [("MatMul", ""), ("Gelu", domain)]
    names = {t.name for t in fused.graph.initializer}
    assert "w" in names and names.isdisjoint({"rsqrt2" if by_mul else "sqrt2", "one", "half"})  # gone with the ops
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32) * 2
    h = x @ numpy_helper.to_array(model.graph.initializer[-1])
    got = ort.InferenceSession(fused.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _gelu_reference(h.astype(np.float64)), rtol=1e-5, atol=1e-5)


def test_gelu_whose_intermediate_is_read_elsewhere_is_left_alone():
    fused = fuse_erf_gelu(_erf_gelu_model(21, False, extra_reader=True))
    assert "Erf" in [n.op_type for n in fused.graph.node] and "Gelu" not in [n.op_type for n in fused.graph.node]


def test_sqrt2_over_x_is_not_gelu():
    model = _erf_gelu_model(21, False)
    div = next(n for n in model.graph.node if n.op_type == "Div")
    div.input[0], div.input[1] = div.input[1], div.input[0]
    assert "Gelu" not in [n.op_type for n in fuse_erf_gelu(model).graph.node]
