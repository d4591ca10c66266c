"""AdaRound: learn whether each weight rounds up or down (Nagel et al. 2020), in pure NumPy.

Round-to-nearest minimises each weight's own error, not the layer's output error; AdaRound picks,
per weight, ``floor(w/s)`` or ``floor(w/s) + 1`` to minimise ``||(W_q - W) X||^2`` over captured
inputs ``X``. That error is ``tr(ΔW G ΔW^T)`` with ``G = X^T X``, so after capture a layer costs
the same whatever the calibration set size. It separates per output channel, and every channel
(row) of a group shares that group's ``G``: the optimisation runs on all rows at once.

Layout: every weight is viewed as ``[groups, out_channels_per_group, K_g]``, matching the
``[rows, K_g]`` input matrices of :func:`layer_input_matrix`, so that ``patches @ row`` is the op's
output. The error is measured in integer steps (``Δ = q - w/s``, one scale per row), which makes
``reg_weight`` mean the same at every bit-width and layer scale.

For wide layers the Gram matrix is replaced by its top eigen-directions plus a flat tail
(``G ≈ U (Λ - c) U^T + c I``, exact trace): the dense product costs ``O·K²`` per step, which for
a [256, 2304] layer and 1000 steps is over a minute on a laptop; the approximation keeps the
directions that carry the output energy at a fraction of the cost.

Everything is functional: inputs are never modified.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1  # rectified-sigmoid stretch (paper's values)
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8
_MAX_RANK = 128  # eigen-directions kept of a wide layer's Gram matrix
_POWER_ITERATIONS = 3  # subspace iterations of the randomized eigen-solver
_TINY = 1e-30
_RECON_SCALE = 1.0


@dataclasses.dataclass(frozen=True)
class AdaRoundConfig:
    iterations: int = 1000  # Adam steps per layer
    reg_weight: float = 0.01  # lambda of the rounding regulariser
    beta_start: float = 20.0  # annealed beta of the regulariser, start -> end
    beta_end: float = 2.0
    warm_start: float = 0.2  # fraction of iterations without the regulariser
    learning_rate: float = 1e-2
    max_rows: int = 2048  # rows (patches / tokens) sampled from the captured inputs to build the Gram matrix


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


def _conv_transpose_geometry(attrs: dict, in_size: Sequence[int], kernel: Sequence[int],
                             strides: Sequence[int], dilations: Sequence[int]) -> tuple[tuple[int, ...], ...]:
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
        shape = (len(n),) + tuple(ij.shape[1] if a == j else 1 for a in range(nd))
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


# ----------------------------------------------------------------------------- weight layout


def weight_rows(w: np.ndarray, op_type: str, attrs: dict) -> np.ndarray:
    """``w`` as [groups, out_channels_per_group, K_g], rows matching :func:`layer_input_matrix`."""
    groups = num_groups(op_type, attrs, w.shape)
    if op_type == "Conv":  # [O, C/g, *k]
        return w.reshape(groups, w.shape[0] // groups, -1)
    if op_type == "ConvTranspose":  # [C, O/g, *k]: a row is one output channel over (c, k)
        per = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1)
        return per.transpose(0, 2, 1, 3).reshape(groups, w.shape[1], -1)
    if op_type == "Gemm":
        return (w if int(attrs.get("transB", 0)) else w.T)[None]
    return w.reshape(groups, w.shape[-2], w.shape[-1]).transpose(0, 2, 1)  # MatMul [..., K, N]


def rows_to_weight(rows: np.ndarray, shape: tuple[int, ...], op_type: str, attrs: dict) -> np.ndarray:
    """Inverse of :func:`weight_rows`."""
    if op_type == "Conv":
        return rows.reshape(shape)
    if op_type == "ConvTranspose":
        groups = rows.shape[0]
        per = rows.reshape(groups, shape[1], shape[0] // groups, -1)
        return per.transpose(0, 2, 1, 3).reshape(shape)
    if op_type == "Gemm":
        return rows[0] if int(attrs.get("transB", 0)) else rows[0].T
    return rows.transpose(0, 2, 1).reshape(shape)


def _full_scale(scale: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """The per-channel scale broadcast to every element of the weight."""
    view = [1] * len(shape)
    view[axis] = -1
    return np.broadcast_to(np.asarray(scale, np.float64).reshape(view), shape)


# ----------------------------------------------------------------------------- the loss


@dataclasses.dataclass(frozen=True, eq=False)
class GramOperator:
    """``Δ ↦ Δ G`` for a stack of per-group normalised Gram matrices: exact, or low-rank plus flat tail."""

    dense: np.ndarray | None  # [G, K, K], or None when low-rank
    basis: np.ndarray | None  # [G, K, r] orthonormal top eigen-directions
    excess: np.ndarray | None  # [G, 1, r] their eigenvalues minus the tail
    tail: np.ndarray  # [G, 1, 1] mean eigenvalue of the directions left out

    def apply(self, delta: np.ndarray) -> np.ndarray:
        """``delta`` [G, O, K] times each group's G."""
        if self.dense is not None:
            return delta @ self.dense
        low = ((delta @ self.basis) * self.excess) @ self.basis.transpose(0, 2, 1)
        return low + self.tail * delta


def _top_eigen(g: np.ndarray, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``rank`` eigenpairs of stacked PSD matrices [G, K, K], by randomized subspace iteration
    (a few products with G instead of a full O(K³) eigendecomposition)."""
    sketch = np.random.default_rng(seed).standard_normal((g.shape[-1], rank + 16))
    basis = np.linalg.qr(g @ sketch)[0]
    for _ in range(_POWER_ITERATIONS):
        basis = np.linalg.qr(g @ basis)[0]
    values, vectors = np.linalg.eigh(basis.transpose(0, 2, 1) @ g @ basis)
    return values[:, ::-1][:, :rank], (basis @ vectors)[:, :, ::-1][:, :, :rank]


def gram_operator(grams: Sequence[np.ndarray], max_rank: int | None = None, seed: int = 0) -> GramOperator:
    """The Gram matrices normalised to unit trace (so ``reg_weight`` means the same on every
    layer), kept dense when small and as top eigen-directions plus a flat tail when wide."""
    max_rank = _MAX_RANK if max_rank is None else max_rank
    stack = np.stack([np.asarray(g, np.float64) for g in grams])
    trace = np.trace(stack, axis1=1, axis2=2)[:, None, None]
    stack = stack * (_RECON_SCALE / np.maximum(trace, _TINY))
    k = stack.shape[-1]
    if k <= 2 * max_rank:
        return GramOperator(stack, None, None, np.zeros((len(stack), 1, 1)))
    values, vectors = _top_eigen(stack, max_rank, seed)
    values = np.maximum(values, 0.0)
    tail = np.maximum(np.trace(stack, axis1=1, axis2=2) - values.sum(axis=1), 0.0) / (k - max_rank)
    tail = tail[:, None, None]
    return GramOperator(None, vectors, np.maximum(values[:, None, :] - tail, 0.0), tail)


@dataclasses.dataclass(frozen=True, eq=False)
class RoundingProblem:
    """One layer's rounding choice, in the [groups, out_channels, K_g] row layout, integer units."""

    floor: np.ndarray  # floor(w/s)
    base: np.ndarray  # Δ = q - w/s when rounding down (free elements) or the fixed value (others)
    free: np.ndarray  # 1.0 where rounding up and down still differ after clipping, else 0.0
    gram: GramOperator
    bits: int


def rounding_problem(w: np.ndarray, scale: np.ndarray, axis: int, bits: int, grams: Sequence[np.ndarray],
                     op_type: str, attrs: dict, seed: int = 0) -> RoundingProblem:
    """Set up the rounding of ``w`` at ``bits`` with per-channel ``scale`` along ``axis``."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    ratio = np.asarray(w, np.float64) / _full_scale(scale, w.shape, axis)
    u = weight_rows(ratio, op_type, attrs)
    floor = np.floor(u)
    free = (floor >= qmin) & (floor <= qmax - 1)
    base = np.where(free, floor - u, np.clip(floor, qmin, qmax) - u)
    return RoundingProblem(floor, base, free.astype(np.float64), gram_operator(grams, seed=seed), bits)


def rectified_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h(V) = clip(sigmoid(V) (ζ - γ) + γ, 0, 1)`` and its derivative (zero where clipped), which
    lets h reach exactly 0 or 1, unlike a plain sigmoid."""
    sig = 0.5 * np.tanh(0.5 * v) + 0.5
    stretched = sig * (ZETA - GAMMA) + GAMMA
    inside = (stretched > 0.0) & (stretched < 1.0)
    return np.clip(stretched, 0.0, 1.0), np.where(inside, (ZETA - GAMMA) * sig * (1.0 - sig), 0.0)


def initial_v(problem: RoundingProblem) -> np.ndarray:
    """V with h(V) equal to the fractional part of w/s: the optimisation starts from the float weight."""
    frac = np.where(problem.free > 0, -problem.base, 0.5)
    sig = (frac - GAMMA) / (ZETA - GAMMA)
    return np.log(sig) - np.log1p(-sig)


def adaround_loss_and_grad(v: np.ndarray, problem: RoundingProblem, reg_weight: float,
                           beta: float | None) -> tuple[float, np.ndarray]:
    """Loss ``Σ_rows Δ G Δ^T + λ Σ (1 - |2h-1|^β)`` and its gradient w.r.t. ``v`` (same shape).

    ``beta`` None leaves the regulariser out (the warm start). Δ = floor + h(V) - w/s on the
    elements still free to round either way; the others contribute their fixed error.
    """
    h, dh = rectified_sigmoid(v)
    delta = problem.base + problem.free * h
    g_delta = problem.gram.apply(delta)
    loss = float(np.sum(delta * g_delta))
    grad_h = 2.0 * g_delta
    if beta is not None and reg_weight:
        centred = 2.0 * h - 1.0
        mag = np.abs(centred)
        pow_m1 = mag ** (beta - 1.0)
        loss += reg_weight * float(np.sum(problem.free * (1.0 - pow_m1 * mag)))
        grad_h -= (2.0 * reg_weight * beta) * pow_m1 * np.sign(centred)
    return loss, grad_h * problem.free * dh


# ----------------------------------------------------------------------------- the optimisation


def _beta_at(step: int, config: AdaRoundConfig) -> float | None:
    """The regulariser's beta at ``step``: None during the warm start, then linear start -> end."""
    warm = int(config.warm_start * config.iterations)
    if step < warm:
        return None
    progress = (step - warm) / max(config.iterations - warm - 1, 1)
    return config.beta_start + (config.beta_end - config.beta_start) * progress


def optimise_v(problem: RoundingProblem, config: AdaRoundConfig) -> np.ndarray:
    """Adam on V over ``config.iterations`` steps, returning the final V."""
    v = initial_v(problem)
    m, s = np.zeros_like(v), np.zeros_like(v)
    (b1, b2), lr = _ADAM_BETAS, config.learning_rate
    for step in range(config.iterations):
        loss, grad = adaround_loss_and_grad(v, problem, config.reg_weight, _beta_at(step, config))
        m = b1 * m + (1.0 - b1) * grad
        s = b2 * s + (1.0 - b2) * grad * grad
        v = v - (lr / (1.0 - b1 ** (step + 1))) * m / (np.sqrt(s / (1.0 - b2 ** (step + 1))) + _ADAM_EPS)
        if step % 100 == 0 or step == config.iterations - 1:
            logger.debug("adaround step %d/%d: loss %.6g", step, config.iterations, loss)
    return v


def adaround_layer(w: np.ndarray, scale: np.ndarray, axis: int, bits: int, grams: list[np.ndarray], op_type: str,
                   attrs: dict, config: AdaRoundConfig = AdaRoundConfig(), seed: int = 0) -> np.ndarray:
    """Integer weights (int32, shape of ``w``, signed ``bits`` range), each ``floor(w/s)`` or
    ``floor(w/s) + 1`` clipped to the range, chosen to minimise ``tr(ΔW G ΔW^T)``.

    ``scale`` is per channel along ``axis``, the output-channel axis of the weight (Conv 0,
    ConvTranspose 1, Gemm 1 or 0 with transB, MatMul ndim-1); ``grams`` come from
    :func:`gram_matrices` of :func:`layer_input_matrix`. Pure: ``w`` is not modified.
    """
    problem = rounding_problem(w, scale, axis, bits, grams, op_type, attrs, seed)
    v = optimise_v(problem, config)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = np.clip(problem.floor + problem.free * (v >= 0.0), qmin, qmax)
    return rows_to_weight(q, tuple(w.shape), op_type, attrs).astype(np.int32)
