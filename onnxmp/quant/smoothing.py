"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before W8A8.

A transformer's MatMul inputs (LayerNorm outputs, GELU outputs) hold a few channels far larger
than the rest; one per-tensor 8-bit scale then leaves the other channels a handful of levels.
Per input channel j of a MatMul activation X read by MatMuls with constant weights W (rows j),
s_j = max|X_j|^α / max|W_j|^(1-α) evens the ranges: X·W = (X / s)·(s W), exactly, in float. The
division is a float Mul written in front of those MatMuls (other readers of X, a residual Add,
keep X), the rows of each W are scaled by s; only where that lowers the W8A8 error of X·W on
the calibration rows (a GELU output's skewed channels can get worse). Functional: a new model;
the input is not changed.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxmp.model.graph import GraphIndex
from onnxmp.model.large import is_large
from onnxmp.quant import numerics
from onnxmp.runtime.data import CalibrationSet
from onnxmp.runtime.session import make_session, run_over

logger = logging.getLogger(__name__)

ALPHA = 0.5  # the paper's default for W8A8
RANGE_SAMPLES = 16  # calibration samples whose channel ranges set s
MIN_SPREAD = 4.0  # a tensor whose channels' max |value| spread less than this gains too little to rewrite
ERROR_ROWS = 512  # rows of the sampled activation on which smoothing must lower the W8A8 error


def _matmul_readers(model: onnx.ModelProto, index: GraphIndex) -> dict[str, list[onnx.NodeProto]]:
    """Float activations → the MatMuls reading them with a constant 2-D float weight [K, N]."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    weight_readers = {}
    for node in model.graph.node:
        for name in node.input:
            weight_readers[name] = weight_readers.get(name, 0) + 1
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        x, w = node.input
        weight = index.initializers.get(w)
        if weight is None or x in index.initializers or len(weight.dims) != 2 or not index.is_float(w) \
                or weight_readers[w] != 1:  # a weight another op reads too cannot be scaled for this one
            continue
        readers.setdefault(x, []).append(node)
    return readers


def _w8a8_error(x: np.ndarray, weights: list[np.ndarray]) -> float:
    """Relative squared error of x·W with x per-tensor UINT8 (min/max) and W per-column INT8, over
    every weight: the layer-output error smoothing is meant to lower."""
    scale, zp = numerics.activation_params(min(float(x.min()), 0.0), max(float(x.max()), 0.0), 8)
    xq = numerics.fake_quant_asymmetric(x, scale, zp, 8)
    error = signal = 0.0
    for w in weights:
        wq = numerics.fake_quant_symmetric(w, numerics.weight_scales(w, 1, 8), 1, 8)
        exact = x @ w
        error += float(((xq @ wq - exact) ** 2).sum())
        signal += float((exact ** 2).sum())
    return error / max(signal, 1e-30)


def smooth_matmul_inputs(model: onnx.ModelProto, data: CalibrationSet, alpha: float = ALPHA) -> tuple[onnx.ModelProto, int]:
    """The model with every MatMul activation whose channels' ranges differ by ``MIN_SPREAD`` or
    more smoothed, and how many were (one float pass over ``data`` finds the ranges)."""
    if is_large(model):  # the rewrite copies the model; a model over 1 GiB is left as it is
        return model, 0
    index = GraphIndex.build(model.graph)
    readers = _matmul_readers(model, index)
    if not readers:
        return model, 0
    names = list(readers)
    sample = data.subset(np.arange(min(RANGE_SAMPLES, data.num_samples)))
    values = run_over(make_session(model, outputs=names), sample, names)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    nodes_by_name = {n.name: n for n in out.graph.node}
    added: list[tuple[int, onnx.NodeProto]] = []
    order = {n.name: i for i, n in enumerate(out.graph.node)}
    smoothed = 0
    for name, x in zip(names, values, strict=True):
        weights = {n.input[1]: numpy_helper.to_array(inits[n.input[1]]).astype(np.float64) for n in readers[name]}
        channels = {w.shape[0] for w in weights.values()}
        if len(channels) != 1 or x.size % next(iter(channels)):
            continue
        x_max = np.abs(x.reshape(-1, next(iter(channels)))).max(axis=0).astype(np.float64)  # run_over flattens
        w_max = np.max([np.abs(w).max(axis=1) for w in weights.values()], axis=0)
        live = (x_max > 0) & (w_max > 0)
        if not live.any() or x_max[live].max() < MIN_SPREAD * np.median(x_max[live]):
            continue
        s = np.ones_like(x_max)
        s[live] = x_max[live] ** alpha / w_max[live] ** (1 - alpha)
        s = s / np.exp(np.mean(np.log(s[live])))  # geometric mean 1: the weights keep their overall scale
        rows = x.reshape(-1, x_max.shape[0])[:ERROR_ROWS].astype(np.float64)
        if _w8a8_error(rows / s, [w * s[:, None] for w in weights.values()]) >= _w8a8_error(rows, list(weights.values())):
            continue  # smoothing does not help this one (a GELU output's skewed channels, often)
        for w_name, w in weights.items():
            inits[w_name].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), w_name))
        inv_name, smooth_name = f"{name}_smooth_inv", f"{name}_smoothed"
        out.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv_name))
        first = min(order[n.name] for n in readers[name])
        added.append((first, helper.make_node("Mul", [name, inv_name], [smooth_name], name=f"{name}/SmoothQuant")))
        info = next((v for v in (*out.graph.value_info, *out.graph.input) if v.name == name), None)
        typed = onnx.ValueInfoProto()
        if info is not None:
            typed.CopyFrom(info)
        else:
            typed.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        typed.name = smooth_name
        out.graph.value_info.append(typed)  # the same type and shape as what it scales
        for node in readers[name]:
            nodes_by_name[node.name].input[0] = smooth_name
        smoothed += 1
    if not smoothed:
        return model, 0
    nodes = list(out.graph.node)
    for position, node in sorted(added, key=lambda a: -a[0]):
        nodes.insert(position, node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    logger.info("SmoothQuant: %d MatMul input(s) smoothed (alpha %.2f)", smoothed, alpha)
    return out, smoothed
