"""Stage 6: AdaRound, per weighted layer and weight bit-width, plugged into the parameters.

The float inputs of every layer to round are captured in one onnxruntime pass over the
calibration set and reduced, batch by batch, to per-group Gram matrices (rows sampled, so memory
stays bounded); each (layer, bit-width) is then optimised by ``adaround.adaround_layer`` and its
integer weights replace round-to-nearest in ``QuantParams``. Phase 1 therefore measures each
candidate with its AdaRounded weights, and the export splices, per layer, the weights of the
bit-width the layer got. Results go to the results cache, so a rerun does not redo them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from onnxmp.errors import ConfigError
from onnxmp.quant.candidates import Candidate
from onnxmp.quant.groups import QuantPlan, WeightedOp
from onnxmp.quant.params import QuantParams
from onnxmp.rounding.adaround import AdaRoundConfig, adaround_layer, layer_input_matrix
from onnxmp.runtime.cache import ResultsCache
from onnxmp.runtime.data import CalibrationSet
from onnxmp.runtime.executor import parallel_map
from onnxmp.runtime.session import make_session

logger = logging.getLogger(__name__)

ADAROUND_MODES = ("auto", "on", "off")
ROWS_PER_INPUT = 4  # sampled rows per reduction element: fewer overfits the sampled rows


@dataclasses.dataclass(frozen=True)
class RoundingReport:
    """What AdaRound did: layers × bit-widths rounded, reused from the cache, and time."""

    bits: tuple[int, ...]
    layers: int
    optimised: int
    cached: int
    seconds: float

    @property
    def seconds_per_layer(self) -> float:
        return self.seconds / self.optimised if self.optimised else 0.0


def adaround_bits(candidates: tuple[Candidate, ...], mode: str) -> tuple[int, ...]:
    """Weight bit-widths to AdaRound: below 8 bits by default ("auto"), below 16 with "on"."""
    if mode not in ADAROUND_MODES:
        raise ConfigError(f"unknown AdaRound mode {mode!r}; use one of {', '.join(ADAROUND_MODES)}")
    limit = {"auto": 8, "on": 16, "off": 0}[mode]
    return tuple(sorted({c.w_bits for c in candidates if c.w_bits < limit}))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def capture_grams(model: onnx.ModelProto, ops: list[WeightedOp], data: CalibrationSet, max_rows: int
                  ) -> dict[str, list[np.ndarray]]:
    """Per layer, the Gram matrices of its input rows, accumulated over the calibration set."""
    nodes = {n.name: n for n in model.graph.node}
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    names = list(dict.fromkeys(op.activation for op in ops))
    produced = [n for n in names if n not in data.input_names]
    session = make_session(model, optimized=False, outputs=produced)
    batches = data.num_feeds
    grams: dict[str, list[np.ndarray]] = {}
    for index, feeds in enumerate(data.feeds()):
        # (onnxruntime reads an empty name list as "every output")
        values = dict(zip(produced, session.run(produced, feeds), strict=True)) if produced else {}
        values.update({n: feeds[n] for n in names if n in data.input_names})
        for op in ops:
            rows = max(max_rows, ROWS_PER_INPUT * op.reduction) // batches + 1
            mats = layer_input_matrix(op.op_type, _attrs(nodes[op.node]), values[op.activation], shapes[op.weight], rows, seed=index)
            new = [m.astype(np.float64).T @ m.astype(np.float64) for m in mats]
            grams[op.node] = new if op.node not in grams else [a + b for a, b in zip(grams[op.node], new, strict=True)]
    return grams


def apply_adaround(model: onnx.ModelProto, plan: QuantPlan, params: QuantParams, data: CalibrationSet,
                   bits: tuple[int, ...], config: AdaRoundConfig, cache: ResultsCache,
                   progress: Callable[[int, int, str], None] | None = None, workers: int = 1) -> RoundingReport:
    """AdaRound every weighted layer at every bit-width in ``bits``; in place on ``params``.
    Layers are independent, so ``workers`` processes share them (same result)."""
    start = time.perf_counter()
    ops = list({op.weight: op for op in reversed(plan.weighted_ops)}.values())[::-1]  # one per weight
    index = {op.weight: i for i, op in enumerate(ops)}
    stored = cache.load_arrays("adaround.npz") or {}
    todo = [(op, b) for op in ops for b in bits if f"w{index[op.weight]}_b{b}" not in stored]
    grams = capture_grams(model, list({op.node: op for op, _ in todo}.values()), data, config.max_rows) if todo else {}
    nodes = {n.name: n for n in model.graph.node}
    results = dict(stored)
    # the scale of nearest rounding is the one AdaRound keeps
    jobs = [(params.float_weight(op.weight), params.weight(op, b).scale, op.axis, b, grams[op.node], op.op_type,
             _attrs(nodes[op.node]), config) for op, b in todo]
    for done, ((op, b), q) in enumerate(zip(todo, parallel_map(adaround_layer, jobs, workers), strict=True), 1):
        results[f"w{index[op.weight]}_b{b}"] = q
        if progress:
            progress(done, len(todo), f"{op.node} W{b}")
    for op in ops:
        for b in bits:
            params.set_rounded(op.weight, b, results[f"w{index[op.weight]}_b{b}"])
    if todo:
        cache.save_arrays("adaround.npz", results)
    seconds = time.perf_counter() - start
    report = RoundingReport(bits, len(ops), len(todo), len(ops) * len(bits) - len(todo), round(seconds, 3))
    logger.info("AdaRound: %d layer x bit-width optimised (%.2f s each), %d from the cache",
                report.optimised, report.seconds_per_layer, report.cached)
    return report
