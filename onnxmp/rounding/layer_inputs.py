"""The matrix a layer's weights multiply, from its captured float input (for AdaRound).

Conv: im2col patches; ConvTranspose: for each output position, the inputs each kernel tap reads;
Gemm and MatMul: rows of the input. One matrix per group of a grouped convolution, so that
``matrix @ weight_row`` is the layer's output (bias aside). Rows are sampled with a fixed seed
to bound memory; ``gram_matrices`` reduces them to ``X^T X``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# ----------------------------------------------------------------------------- attributes


def _attr_ints(attrs: dict, name: str, default: Sequence[int]) -> tuple[int, ...]:
    value = attrs.get(name)
    return tuple(int(v) for v in value) if value is not None and len(value) else tuple(default)


def _auto_pad(attrs: dict) -> str:
    value = attrs.get("auto_pad", "NOTSET")
    return value.decode() if isinstance(value, bytes) else str(value)


def num_groups(op_type: str, attrs: dict, weight_shape: tuple[int, ...]) -> int:
    """How many independent input matrices the layer has: Conv ``group``, batched MatMul slices."""
    if op_type in ("Conv", "ConvTranspose"):
        return int(attrs.get("group", 1))
    if op_type == "MatMul":
        return math.prod(weight_shape[:-2])
    return 1


# ----------------------------------------------------------------------------- input matrices


def _sample_rows(total: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted row indices, all of them or ``max_rows`` drawn without replacement."""
    if total <= max_rows:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=max_rows, replace=False))


def _conv_pads(attrs: dict, in_size: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(begin, end) pads of a Conv, resolving ``auto_pad`` as the ONNX spec does."""
    nd, mode = len(kernel), _auto_pad(attrs)
    if mode == "VALID":
        return (0,) * nd, (0,) * nd
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (-(-s // st) - 1) * st + (k - 1) * d + 1 - s)
                 for s, k, st, d in zip(in_size, kernel, strides, dilations, strict=True)]
        small = tuple(t // 2 for t in total)
        large = tuple(t - t // 2 for t in total)
        return (small, large) if mode == "SAME_UPPER" else (large, small)
    pads = _attr_ints(attrs, "pads", (0,) * 2 * nd)
    return pads[:nd], pads[nd:]


def _conv_transpose_geometry(attrs: dict, in_size: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                             dilations: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(output size, begin pads) of a ConvTranspose: explicit pads, or ``output_shape``/auto_pad."""
    nd, mode = len(kernel), _auto_pad(attrs)
    out_pad = _attr_ints(attrs, "output_padding", (0,) * nd)
    full = [st * (s - 1) + op + (k - 1) * d + 1
            for s, k, st, d, op in zip(in_size, kernel, strides, dilations, out_pad, strict=True)]
    out_shape = _attr_ints(attrs, "output_shape", ())
    if out_shape or mode in ("SAME_UPPER", "SAME_LOWER"):
        out = out_shape[-nd:] if out_shape else tuple(s * st for s, st in zip(in_size, strides, strict=True))
        total = [f - o for f, o in zip(full, out, strict=True)]
        begin = tuple(t // 2 if mode == "SAME_UPPER" else t - t // 2 for t in total)
        return tuple(out), begin
    pads = (0,) * 2 * nd if mode == "VALID" else _attr_ints(attrs, "pads", (0,) * 2 * nd)
    out = tuple(f - b - e for f, b, e in zip(full, pads[:nd], pads[nd:], strict=True))
    return out, pads[:nd]


def _gather_patches(x: np.ndarray, n: np.ndarray, idx: list[np.ndarray], valid: list[np.ndarray]) -> np.ndarray:
    """[R, C, *kernel] patches: ``x[n, :, idx_0, idx_1, ...]`` per row, zero where not ``valid``."""
    nd = len(idx)
    xt = np.moveaxis(x, 1, -1)  # [N, *S, C]
    index, mask = [n.reshape((-1,) + (1,) * nd)], np.ones((len(n),) + (1,) * nd, dtype=x.dtype)
    for j, (ij, vj) in enumerate(zip(idx, valid, strict=True)):
        shape = (len(n), *(ij.shape[1] if a == j else 1 for a in range(nd)))
        index.append(np.clip(ij, 0, x.shape[2 + j] - 1).reshape(shape))
        mask = mask * vj.reshape(shape)
    patches = xt[tuple(index)] * mask[..., None]  # [R, *k, C]
    return np.moveaxis(patches, -1, 1)


def _conv_rows(op_type: str, attrs: dict, x: np.ndarray, weight_shape: tuple[int, ...], max_rows: int,
               seed: int) -> np.ndarray:
    """Sampled [R, C, *kernel] input patches of a Conv or ConvTranspose."""
    kernel, in_size = weight_shape[2:], x.shape[2:]
    nd = len(kernel)
    strides = _attr_ints(attrs, "strides", (1,) * nd)
    dilations = _attr_ints(attrs, "dilations", (1,) * nd)
    if op_type == "Conv":
        begin, end = _conv_pads(attrs, in_size, kernel, strides, dilations)
        out = tuple((s + b + e - (k - 1) * d - 1) // st + 1
                    for s, b, e, k, d, st in zip(in_size, begin, end, kernel, dilations, strides, strict=True))
    else:
        out, begin = _conv_transpose_geometry(attrs, in_size, kernel, strides, dilations)
    rows = _sample_rows(x.shape[0] * math.prod(out), max_rows, seed)
    n, *pos = np.unravel_index(rows, (x.shape[0], *out))
    idx, valid = [], []
    for j in range(nd):
        k = np.arange(kernel[j]) * dilations[j]
        if op_type == "Conv":  # input i = p*s + k*d - pad
            i = pos[j][:, None] * strides[j] + k[None, :] - begin[j]
            ok = np.ones_like(i, dtype=bool)
        else:  # output p = i*s + k*d - pad, so i = (p + pad - k*d) / s where that is whole
            num = pos[j][:, None] + begin[j] - k[None, :]
            i, ok = num // strides[j], num % strides[j] == 0
        idx.append(i)
        valid.append(ok & (i >= 0) & (i < in_size[j]))
    return _gather_patches(x, n, idx, valid)


def _matmul_rows(x: np.ndarray, weight_shape: tuple[int, ...], max_rows: int, seed: int) -> list[np.ndarray]:
    """Per weight slice of a (batched) MatMul, the sampled [R, K] rows of ``x`` it multiplies."""
    k, batch = weight_shape[-2], weight_shape[:-2]
    x = x.reshape(1, k) if x.ndim == 1 else x
    if not batch:
        flat = x.reshape(-1, k)
        return [flat[_sample_rows(len(flat), max_rows, seed)]]
    full = np.broadcast_shapes(x.shape[:-2], batch)
    xb = np.broadcast_to(x, full + x.shape[-2:]).reshape(-1, math.prod(batch), x.shape[-2], k)
    slices = [xb[:, g].reshape(-1, k) for g in range(xb.shape[1])]
    return [s[_sample_rows(len(s), max_rows, seed)] for s in slices]


def layer_input_matrix(op_type: str, attrs: dict, x: np.ndarray, weight_shape: tuple[int, ...], max_rows: int,
                       seed: int = 0) -> list[np.ndarray]:
    """The matrix each output channel's weights multiply, from the layer's captured float input ``x``.

    Conv: im2col patches (strides, pads, auto_pad, dilations, group); ConvTranspose: for each output
    position, the inputs each kernel tap reads (zero where none); Gemm: ``x`` [M, K] (transA and
    alpha honoured); MatMul: ``x`` [..., K] flattened to rows, one matrix per slice of a batched
    weight. One [rows, K_g] matrix per group, rows sampled without replacement (fixed seed) down to
    ``max_rows``, so that ``matrix @ weight_row`` is the layer's output (bias aside).
    """
    if op_type in ("Conv", "ConvTranspose"):
        patches = _conv_rows(op_type, attrs, x, tuple(weight_shape), max_rows, seed)
        groups = num_groups(op_type, attrs, weight_shape)
        per_group = patches.reshape(len(patches), groups, -1)
        return [np.ascontiguousarray(per_group[:, g]) for g in range(groups)]
    if op_type == "Gemm":
        a = x.T if int(attrs.get("transA", 0)) else x
        a = a * np.asarray(attrs.get("alpha", 1.0), dtype=a.dtype)
        return [a[_sample_rows(len(a), max_rows, seed)]]
    if op_type == "MatMul":
        return _matmul_rows(x, tuple(weight_shape), max_rows, seed)
    raise ValueError(f"AdaRound does not handle {op_type}")


def gram_matrices(inputs: list[np.ndarray]) -> list[np.ndarray]:
    """X^T X per group (float64), so a layer's cost does not grow with the calibration set after capture."""
    return [x.astype(np.float64).T @ x.astype(np.float64) for x in inputs]
