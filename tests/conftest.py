"""Tiny ONNX models built inline for the tests, with seeded weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmp import OptimizeConfig, parse_candidates

# The search's mechanics on the layout that quantizes around every op (many groups, every op type)
# with the paper's candidates and cost: what the tests of Phase 1, Phase 2, AdaRound and the cache
# exercise. The default target's own choices (placement, FP32, latency) are tested in test_placement.
CLASSIC = {"target": "generic", "candidates": parse_candidates("W4A8,W8A8,W8A16"), "metric": "bops"}


def classic(**options) -> OptimizeConfig:
    """An OptimizeConfig on CLASSIC, ``options`` overriding it."""
    return OptimizeConfig(**{**CLASSIC, **options})


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def make_cnn(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """A CNN with a tensor read by two convs, a Concat, a residual Add, BatchNorm and a Gemm head."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: rng.standard_normal(shape).astype(np.float32) / np.sqrt(np.prod(shape[1:]))  # noqa: E731
    inits = [
        _init("stem.w", w(8, 3, 3, 3)), _init("stem.b", rng.standard_normal(8) * 0.1),
        _init("bn.scale", 1 + 0.1 * rng.standard_normal(8)), _init("bn.bias", 0.1 * rng.standard_normal(8)),
        _init("bn.mean", 0.1 * rng.standard_normal(8)), _init("bn.var", 1 + 0.1 * rng.random(8)),
        _init("a.w", w(8, 8, 1, 1)), _init("b.w", w(8, 8, 3, 3)),
        _init("fuse.w", w(8, 16, 1, 1)), _init("res.w", w(8, 8, 3, 3)),
        _init("fc.w", w(10, 8)), _init("fc.b", rng.standard_normal(10) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "stem.w", "stem.b"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["stem", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["stem_relu"], name="stem_relu"),
        helper.make_node("Conv", ["stem_relu", "a.w"], ["a"], name="branch_a"),
        helper.make_node("Conv", ["stem_relu", "b.w"], ["b"], name="branch_b", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "fuse.w"], ["fuse"], name="fuse"),
        helper.make_node("Relu", ["fuse"], ["fuse_relu"], name="fuse_relu"),
        helper.make_node("Conv", ["fuse_relu", "res.w"], ["res"], name="res", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["res", "fuse_relu"], ["add"], name="add"),
        helper.make_node("GlobalAveragePool", ["add"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def cnn_path(tmp_path):
    """The tiny CNN saved to disk with 32 seeded calibration samples beside it."""
    path = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(path))
    x = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    return path
