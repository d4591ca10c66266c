"""AdaRound (Nagel et al. 2020): learn whether each weight rounds up or down, in pure NumPy.

Round-to-nearest minimises each weight's own error, not the layer's; AdaRound picks, per weight,
``floor(w/s)`` or ``floor(w/s) + 1`` to minimise the output error ``||(W_q - W) X||^2`` over
captured inputs ``X``. That is ``tr(ΔW G ΔW^T)`` with ``G = X^T X``, so once ``G`` is built a
layer costs the same whatever the calibration set. It separates per output channel and all
channels of a group share the group's ``G``: one vectorised optimisation covers the layer.

Layout: a weight is viewed as ``[groups, out_channels_per_group, K_g]`` rows matching the
``[rows, K_g]`` matrices of :func:`layer_input_matrix` (``matrix @ row`` is the op's output).
The error is measured in integer steps (``Δ = q - w/s``; one scale per row) against ``G``
normalised to a fixed trace, so ``reg_weight`` means the same at every bit-width and layer scale.

Cost: the product ``Δ G`` is ``O·K²`` per step, over a minute for a [256, 2304] layer and 1000
steps; for wide layers ``G`` is replaced by its top eigen-directions plus the diagonal of the
rest (exact diagonal), which keeps the directions that carry the output energy. The steps run
in float32 (set-up, ``G`` and the eigen-decomposition in float64). Inputs are never modified.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np

from onnxmp.errors import ConfigError
from onnxmp.quant import numerics
from onnxmp.rounding.layer_inputs import gram_matrices, layer_input_matrix, num_groups

__all__ = ["AdaRoundConfig", "adaround_layer", "adaround_loss_and_grad", "gram_matrices", "layer_input_matrix",
           "rounding_problem"]

logger = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1  # rectified-sigmoid stretch (the paper's values)
# h = 0.6 tanh(v/2) + 0.5 reaches 0 and 1 at |tanh(v/2)| = 5/6 (zeta + gamma = 1), where dh/dv is:
_DH_CLIPPED = (ZETA - GAMMA) / 4 * (1 - ((2 - ZETA - GAMMA) / (ZETA - GAMMA)) ** 2)
# Trace of the normalised Gram matrix. With reg_weight 0.01, results on real layers (PP-OCR convs,
# MiniLM MatMuls, K from 9 to 2880, 4 and 8 bits) sit on a plateau from about 1e-3 to 1; above
# it the regulariser cannot force h to 0/1 and the final rounding loses what was learnt.
_RECON_TRACE = 0.1
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8
_MAX_RANK = 128  # eigen-directions kept of a wide layer's Gram matrix
_DENSE_MACS = 6.4e7  # a dense product this cheap per step (MACs) is kept exact whatever K
_POWER_ITERATIONS = 3  # subspace iterations of the randomized eigen-solver
_OPT_DTYPE = np.float32  # the steps are memory-bound: float32 halves their cost
_TINY = 1e-30


@dataclasses.dataclass(frozen=True)
class AdaRoundConfig:
    """AdaRound's hyper-parameters; the defaults follow the paper (beta 20 -> 2 after a 20% warm
    start), with ``reg_weight`` relative to the normalised Gram matrix (see ``_RECON_TRACE``)."""

    iterations: int = 1000  # Adam steps per layer
    reg_weight: float = 0.01  # lambda of the rounding regulariser
    beta_start: float = 20.0  # annealed beta of the regulariser, start -> end
    beta_end: float = 2.0
    warm_start: float = 0.2  # fraction of iterations without the regulariser
    learning_rate: float = 1e-2
    max_rows: int = 2048  # rows (patches / tokens) sampled from the captured inputs to build the Gram matrix

    def __post_init__(self) -> None:
        if (self.iterations < 0 or self.reg_weight < 0 or min(self.beta_start, self.beta_end) < 1
                or not 0 <= self.warm_start <= 1 or self.learning_rate <= 0 or self.max_rows < 1):
            raise ConfigError(f"invalid AdaRound settings {self}: iterations >= 0, reg_weight >= 0, betas >= 1, "
                              "0 <= warm_start <= 1, learning_rate > 0 and max_rows >= 1 are needed")


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
    """``Δ ↦ Δ G`` for the per-group normalised Gram matrices: exact, or ``U Λ U^T + diag(d)``."""

    dense: np.ndarray | None  # [G, K, K], or None when low-rank
    basis: np.ndarray | None  # [G, K, r] orthonormal top eigen-directions U
    values: np.ndarray | None  # [G, 1, r] their eigenvalues Λ
    tail: np.ndarray  # [G, 1, K] d: the diagonal of G - U Λ U^T (zero when dense)

    def apply(self, delta: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """``delta`` [G, O, K] times each group's G, into ``out`` (``scratch`` is overwritten)."""
        if self.dense is not None:
            return np.matmul(delta, self.dense, out=out)
        low = delta @ self.basis
        low *= self.values
        np.matmul(low, self.basis.transpose(0, 2, 1), out=out)
        np.multiply(delta, self.tail, out=scratch)
        out += scratch
        return out


def _top_eigen(g: np.ndarray, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``rank`` eigenpairs of stacked PSD matrices [G, K, K], by randomized subspace iteration
    (a few products with G instead of a full O(K³) eigendecomposition)."""
    sketch = np.random.default_rng(seed).standard_normal((g.shape[-1], rank + 16))
    basis = np.linalg.qr(g @ sketch)[0]
    for _ in range(_POWER_ITERATIONS):
        basis = np.linalg.qr(g @ basis)[0]
    values, vectors = np.linalg.eigh(basis.transpose(0, 2, 1) @ g @ basis)
    return values[:, ::-1][:, :rank], (basis @ vectors)[:, :, ::-1][:, :, :rank]


def gram_operator(grams: Sequence[np.ndarray], rows: int, max_rank: int | None = None, seed: int = 0,
                  dtype: type = np.float64) -> GramOperator:
    """The Gram matrices scaled to a fixed trace (so ``reg_weight`` means the same on every layer).

    Kept dense when that is no dearer than the approximation (``K <= 2 max_rank``) or cheap anyway
    for ``rows`` weight rows; else the top ``max_rank`` eigen-directions plus the diagonal of the
    rest, which costs ``2 r K`` instead of ``K²`` per row and step.
    """
    max_rank = _MAX_RANK if max_rank is None else max_rank
    stack = np.stack([np.asarray(g, np.float64) for g in grams])
    trace = np.trace(stack, axis1=1, axis2=2)[:, None, None]
    stack = stack * (_RECON_TRACE / np.maximum(trace, _TINY))
    k = stack.shape[-1]
    if k <= 2 * max_rank or rows * k * k <= _DENSE_MACS:
        return GramOperator(stack.astype(dtype), None, None, np.zeros((len(stack), 1, k), dtype))
    values, vectors = _top_eigen(stack, max_rank, seed)
    values = np.maximum(values, 0.0)
    residual = np.diagonal(stack, axis1=1, axis2=2) - np.einsum("gkr,gr->gk", vectors**2, values)
    tail = np.maximum(residual, 0.0)[:, None, :]
    return GramOperator(None, vectors.astype(dtype), values[:, None, :].astype(dtype), tail.astype(dtype))


@dataclasses.dataclass(frozen=True, eq=False)
class RoundingProblem:
    """One layer's rounding choice, in the [groups, out_channels, K_g] row layout, integer units."""

    floor: np.ndarray  # floor(w/s)
    base: np.ndarray  # Δ = q - w/s when rounding down (free elements) or the fixed value (others)
    free: np.ndarray  # 1.0 where rounding up and down still differ after clipping, else 0.0
    gram: GramOperator


def rounding_problem(w: np.ndarray, scale: np.ndarray, axis: int, bits: int, grams: Sequence[np.ndarray],
                     op_type: str, attrs: dict, seed: int = 0, dtype: type = np.float64) -> RoundingProblem:
    """Set up the rounding of ``w`` at ``bits`` with per-channel ``scale`` along ``axis``; the
    optimisation then runs in ``dtype`` (the set-up itself is float64)."""
    qmin, qmax = numerics.signed_range(bits)
    if np.any(np.asarray(scale) <= 0):
        raise ValueError("AdaRound needs positive weight scales")
    ratio = np.asarray(w, np.float64) / _full_scale(scale, w.shape, axis)
    u = np.ascontiguousarray(weight_rows(ratio, op_type, attrs))
    if len(grams) != u.shape[0] or any(g.shape != (u.shape[2], u.shape[2]) for g in grams):
        raise ValueError(f"{op_type} weight {w.shape} needs {u.shape[0]} Gram matrices of size {u.shape[2]}, "
                         f"got {[g.shape for g in grams]}")
    floor = np.floor(u)
    free = (floor >= qmin) & (floor <= qmax - 1)
    base = np.where(free, floor - u, np.clip(floor, qmin, qmax) - u)
    gram = gram_operator(grams, u.shape[0] * u.shape[1], seed=seed, dtype=dtype)
    return RoundingProblem(floor, base.astype(dtype), free.astype(dtype), gram)


def rectified_sigmoid(v: np.ndarray) -> np.ndarray:
    """``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``: unlike a plain sigmoid it reaches exactly 0 and 1."""
    sigmoid = 0.5 * np.tanh(0.5 * v) + 0.5  # no overflow for large |v|, unlike 1 / (1 + exp(-v))
    return np.clip(sigmoid * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(problem: RoundingProblem) -> np.ndarray:
    """V with h(V) equal to the fractional part of w/s: the optimisation starts from the float weight."""
    frac = np.where(problem.free > 0, -problem.base, 0.5)
    sig = (frac - GAMMA) / (ZETA - GAMMA)
    return (np.log(sig) - np.log1p(-sig)).astype(problem.base.dtype)


class _Objective:
    """The loss and its gradient for one problem, computed in preallocated buffers: the arrays are
    as large as the layer and evaluated ``iterations`` times, and fresh temporaries of that size
    (page faults on every allocation) cost more than the arithmetic."""

    def __init__(self, problem: RoundingProblem) -> None:
        self.problem = problem
        self.t, self.h, self.delta, self.grad, self.scratch = (np.empty_like(problem.base) for _ in range(5))
        self.mask = np.empty(problem.base.shape, dtype=bool)
        self.n_free = float(problem.free.sum())

    def __call__(self, v: np.ndarray, reg_weight: float, beta: float | None) -> tuple[float, np.ndarray]:
        """(loss, gradient); the gradient is a buffer that the next call overwrites."""
        p, t, h, delta, grad, scratch = self.problem, self.t, self.h, self.delta, self.grad, self.scratch
        np.multiply(v, 0.5, out=t)
        np.tanh(t, out=t)  # sigmoid(v) = (1 + t) / 2, so h = 0.6 t + 0.5 before clipping
        np.multiply(t, (ZETA - GAMMA) / 2, out=h)
        h += (ZETA + GAMMA) / 2
        np.clip(h, 0.0, 1.0, out=h)
        np.multiply(p.free, h, out=delta)
        delta += p.base
        p.gram.apply(delta, grad, scratch)
        loss = float(np.vdot(delta, grad))
        grad *= 2.0
        if beta is not None and reg_weight:
            loss += self._add_regulariser(grad, reg_weight, beta)
        np.multiply(t, t, out=scratch)  # dh/dv = (zeta-gamma)/4 (1 - t²), 0 where h is clipped
        scratch *= -(ZETA - GAMMA) / 4
        scratch += (ZETA - GAMMA) / 4
        np.greater(scratch, _DH_CLIPPED, out=self.mask)
        scratch *= self.mask
        scratch *= p.free
        grad *= scratch
        return loss, grad

    def _add_regulariser(self, grad: np.ndarray, reg_weight: float, beta: float) -> float:
        """Add λ d/dh Σ(1 - |2h-1|^β) to ``grad`` and return the regulariser (consumes ``h``)."""
        centred, odd = self.h, self.delta
        centred *= 2.0
        centred -= 1.0
        np.abs(centred, out=odd)
        if beta >= 2.0:
            np.power(odd, beta - 2.0, out=odd)
            odd *= centred  # sign(c) |c|^(β-1) = |c|^(β-2) c, with no sign() pass
        else:
            np.power(odd, beta - 1.0, out=odd)
            np.copysign(odd, centred, out=odd)
        np.multiply(odd, centred, out=centred)  # |c|^β
        reg = reg_weight * (self.n_free - float(np.vdot(centred, self.problem.free)))
        odd *= 2.0 * reg_weight * beta
        grad -= odd
        return reg


def adaround_loss_and_grad(v: np.ndarray, problem: RoundingProblem, reg_weight: float,
                           beta: float | None) -> tuple[float, np.ndarray]:
    """Loss ``Σ_rows Δ G Δ^T + λ Σ_free (1 - |2h-1|^β)`` and its gradient w.r.t. ``v`` (same shape).

    ``beta`` None leaves the regulariser out (the warm start). Δ = floor + h(V) - w/s on the
    elements still free to round either way; the others contribute their fixed error. Computed
    in the problem's dtype.
    """
    loss, grad = _Objective(problem)(v, reg_weight, beta)
    return loss, grad


# ----------------------------------------------------------------------------- the optimisation


def _beta_at(step: int, config: AdaRoundConfig) -> float | None:
    """The regulariser's beta at ``step``: None during the warm start, then linear start -> end."""
    warm = int(config.warm_start * config.iterations)
    if step < warm:
        return None
    progress = (step - warm) / max(config.iterations - warm - 1, 1)
    return config.beta_start + (config.beta_end - config.beta_start) * progress


class _Adam:
    """Adam, updated in place (the arrays are as large as the layer). The moments are kept
    unnormalised (``m' = b1 m' + g``, ``s' = b2 s' + g²``, the (1 - b) factors folded into the
    step) to save passes over the arrays."""

    def __init__(self, like: np.ndarray, learning_rate: float) -> None:
        self.m, self.s, self.tmp = np.zeros_like(like), np.zeros_like(like), np.empty_like(like)
        self.lr, self.step = learning_rate, 0

    def update(self, v: np.ndarray, grad: np.ndarray) -> None:
        """One step on ``v`` in place; ``grad`` is consumed."""
        (b1, b2), self.step = _ADAM_BETAS, self.step + 1
        m, s, tmp = self.m, self.s, self.tmp
        m *= b1
        m += grad
        grad *= grad
        s *= b2
        s += grad
        np.sqrt(s, out=tmp)
        tmp *= math.sqrt((1.0 - b2) / (1.0 - b2**self.step))
        tmp += _ADAM_EPS
        np.divide(m, tmp, out=tmp)
        tmp *= self.lr * (1.0 - b1) / (1.0 - b1**self.step)
        v -= tmp


def optimise_v(problem: RoundingProblem, config: AdaRoundConfig) -> np.ndarray:
    """Adam on V over ``config.iterations`` steps, returning the final V."""
    v = initial_v(problem)
    adam, objective = _Adam(v, config.learning_rate), _Objective(problem)
    for step in range(config.iterations):
        loss, grad = objective(v, config.reg_weight, _beta_at(step, config))
        adam.update(v, grad)
        if step % 200 == 0 or step == config.iterations - 1:
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
    problem = rounding_problem(w, scale, axis, bits, grams, op_type, attrs, seed, _OPT_DTYPE)
    v = optimise_v(problem, config)
    flipped = float(np.sum(problem.free * ((v >= 0) != (problem.base <= -0.5))))
    logger.debug("adaround %s %s at %d bits (%s Gram): %.1f%% of the weights rounded away from nearest",
                 op_type, w.shape, bits, "dense" if problem.gram.dense is not None else "low-rank",
                 100.0 * flipped / max(float(problem.free.sum()), 1.0))
    q = np.clip(problem.floor + problem.free * (v >= 0.0), *numerics.signed_range(bits))  # h(v) >= 1/2: up
    return np.ascontiguousarray(rows_to_weight(q, tuple(w.shape), op_type, attrs), dtype=np.int32)
