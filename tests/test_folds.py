"""Prepare-stage folds: a BatchNormalization written as Mul and Add by a per-channel constant (as
paddle2onnx writes it), or a bias added apart, merge into the Conv before them; the prepared model
computes what onnx's reference evaluator computes for the original."""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxmp.model.loader import prepare_model


def _c(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _model(after: list, extra_inits: list, outputs: tuple[str, ...] = ("y",)) -> onnx.ModelProto:
    """Conv(x, w, b) → ``after`` (reads "c", writes "y"), 4 output channels."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]), *after]
    inits = [_c("w", rng.standard_normal((4, 3, 3, 3))), _c("b", rng.standard_normal(4)), *extra_inits]
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _same_outputs(model: onnx.ModelProto, prepared: onnx.ModelProto) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})
    got = ReferenceEvaluator(prepared).run(None, {"x": x})
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def test_a_batchnorm_written_as_mul_and_add_folds_into_the_conv():
    """Mul by a reshaped (4,) scale, then Add of a (1, 4, 1, 1) shift, then Relu: one Conv and
    the Relu remain, and the Reshape that computed the scale is gone with them."""
    n = helper.make_node
    after = [n("Reshape", ["scale", "shape"], ["scale4"], name="reshape"), n("Mul", ["c", "scale4"], ["m"], name="mul"),
             n("Add", ["shift", "m"], ["a"], name="add"), n("Relu", ["a"], ["y"], name="relu")]
    model = _model(after, [_c("scale", [0.5, -2.0, 3.0, 0.1]), _c("shape", [4, 1, 1], np.int64),
                           _c("shift", np.arange(4).reshape(1, 4, 1, 1))])
    prepared = prepare_model(model)
    assert _ops(prepared) == {"Conv": 1, "Relu": 1}
    _same_outputs(model, prepared)


def test_constants_that_do_not_broadcast_per_channel_are_not_folded():
    """A Mul along the width (shape (8,)), an Add whose Conv output is also read elsewhere, and
    a Mul by a run-time tensor stay as they are."""
    n = helper.make_node
    after = [n("Mul", ["c", "along_width"], ["m"], name="mul"), n("Add", ["m", "x0"], ["y"], name="add"),
             n("Conv", ["x", "w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             n("Add", ["c2", "shift"], ["a2"], name="add2"), n("Mul", ["a2", "c2"], ["z"], name="square")]
    model = _model(after, [_c("along_width", np.linspace(1, 2, 8)), _c("shift", np.ones((4, 1, 1))),
                           _c("x0", np.ones((1, 4, 1, 1)))], outputs=("y", "z"))
    prepared = prepare_model(model)
    assert _ops(prepared) == {"Conv": 2, "Mul": 2, "Add": 2}
    _same_outputs(model, prepared)
