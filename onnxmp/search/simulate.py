"""One onnxruntime session that simulates any bit-width assignment, switched by feeds.

The simulation model is the prepared float model with (a) each activation quantizer replaced by
standard ops Clip → QuantizeLinear → DequantizeLinear whose scale, zero point and clip bounds are
graph inputs, and (b) each quantized weight and bias turned into a graph input fed with its
dequantized value. Any assignment of candidates to groups is then a set of feeds: no model is
rebuilt and no session created per configuration.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
from collections.abc import Callable, Container, Iterable, Iterator
from typing import TypeVar

import numpy as np
import onnx
from onnx import helper

from onnxmp.errors import ModelError
from onnxmp.model.large import light_copy
from onnxmp.quant import numerics
from onnxmp.quant.candidates import Assignment, Candidate
from onnxmp.quant.groups import QuantPlan
from onnxmp.quant.params import QuantParams
from onnxmp.runtime.data import CalibrationSet
from onnxmp.runtime.session import concatenate_runs, make_session, observed_tensors, run_batches
from onnxmp.search.partial import DEFAULT_MAX_MEMORY, CutCache

logger = logging.getLogger(__name__)

_SUFFIXES = ("scale", "zp", "lo", "hi")
# The simulation graph has a quantizer on every activation of the plan. Where a group is left
# float (FP32), the runs use a copy of the graph without its quantizers (``without_quantizers``),
# as the exported model has none there; only a run that must keep the quantizer in the graph
# (a group float in the evaluated assignment but quantized in Phase 1's baseline) feeds it a
# 16-bit min/max grid instead (noise ~90 dB below the signal).
FLOAT_PROXY_BITS = 16
# Whole-graph sessions kept, one per set of float activations (Phase 2's points each have theirs).
WHOLE_SESSIONS = 4
WEIGHT_CACHE_BYTES = 1 << 30
_PARAM_TYPES = {"zp": onnx.TensorProto.UINT16}
T = TypeVar("T")  # what an evaluation's consumer makes of its runs


def _param_name(tensor: str, what: str) -> str:
    return f"{tensor}::{what}"


def _chain_output(activation: str, graph_inputs: Container[str]) -> str:
    """The tensor ``activation``'s fake quantizer writes (a graph input keeps its name, its
    readers switch to the quantized copy); its parameters are named after it."""
    return activation + "::fq" if activation in graph_inputs else activation


def _fake_quant_nodes(src: str, dst: str) -> list[onnx.NodeProto]:
    """src → dst through Clip → QuantizeLinear → DequantizeLinear reading ``dst::scale`` etc.

    Every quantizer is uint16 so that one graph serves every bit-width; the Clip to the grid's
    float bounds, ``(qmin - zp)·scale`` and ``(qmax - zp)·scale``, does what the narrower type's
    saturation would (clipping before rounding equals clipping after, as the bounds lie on the
    grid). onnxruntime's own quantize kernel rounds exactly as the exported model's does.
    """
    p = {s: _param_name(dst, s) for s in _SUFFIXES}
    clipped, quantized = f"{dst}::clip", f"{dst}::q"
    return [
        helper.make_node("Clip", [src, p["lo"], p["hi"]], [clipped], name=f"{dst}::fq_clip"),
        helper.make_node("QuantizeLinear", [clipped, p["scale"], p["zp"]], [quantized], name=f"{dst}::fq_q"),
        helper.make_node("DequantizeLinear", [quantized, p["scale"], p["zp"]], [dst], name=f"{dst}::fq_dq"),
    ]


def build_simulation_model(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """Functional: a new model simulating quantization with feeds for every parameter."""
    fed = {op.weight for op in plan.weighted_ops} | {op.bias for op in plan.weighted_ops if op.bias}
    sim = light_copy(model, keep={t.name for t in model.graph.initializer} - fed)  # fed weights: no bytes copied
    graph = sim.graph
    for tensor in [t for t in graph.initializer if t.name in fed]:
        graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        graph.initializer.remove(tensor)
    graph_inputs = {i.name for i in graph.input}
    renamed: dict[str, str] = {}  # graph-input activations: readers switch to the quantized copy
    chains: dict[str, list[onnx.NodeProto]] = {}
    for name in plan.activations:
        target = _chain_output(name, graph_inputs)
        for suffix in _SUFFIXES:
            graph.input.append(helper.make_tensor_value_info(_param_name(target, suffix),
                                                              _PARAM_TYPES.get(suffix, onnx.TensorProto.FLOAT), []))
        if name in graph_inputs:
            renamed[name] = name + "::fq"
            chains.setdefault("", []).extend(_fake_quant_nodes(name, name + "::fq"))
        else:
            chains[name] = _fake_quant_nodes(name + "::float", name)
    nodes = list(chains.get("", []))
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
        produced = [o for o in node.output if o in chains]
        for i, name in enumerate(node.output):
            if name in chains:
                node.output[i] = name + "::float"
        nodes.append(node)
        for name in produced:
            nodes.extend(chains[name])
    del graph.node[:]
    graph.node.extend(nodes)
    return sim


def without_quantizers(model: onnx.ModelProto, activations: set[str] | frozenset[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The simulation model (or a suffix of it) with no fake quantizer on these activations, and
    for each tensor renamed away, the name that now holds its value: where a group is left float
    its values are the float model's, computed at the float model's speed (on ppocr_rec the
    quantizer chains took as long as the convolutions). Edits ``model`` in place; copy it first
    where it is shared."""
    sources: dict[str, str] = {}  # the chain's output → its input
    for node in model.graph.node:
        if node.op_type == "Clip" and node.name.endswith("::fq_clip"):
            dst = node.name[: -len("::fq_clip")]
            if dst.removesuffix("::fq") in activations:
                sources[dst] = node.input[0]
    if not sources:
        return model, {}
    graph = model.graph
    chain = {f"{d}::fq_{step}" for d in sources for step in ("clip", "q", "dq")}
    produced = {o for n in graph.node if n.name not in chain for o in n.output}
    renamed = {src: dst for dst, src in sources.items() if src in produced}  # its producer writes dst itself
    readers = {dst: src for dst, src in sources.items() if src not in produced}  # a graph input: read it directly
    nodes = []
    for node in graph.node:
        if node.name in chain:
            continue
        for i, name in enumerate(node.input):
            node.input[i] = readers.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renamed.get(name, name)
        nodes.append(node)
    outputs = {o.name for o in graph.output}
    nodes += [helper.make_node("Identity", [src], [dst]) for dst, src in readers.items() if dst in outputs]
    del graph.node[:]
    graph.node.extend(nodes)
    params = {_param_name(d, step) for d in sources for step in _SUFFIXES}
    for field in (graph.input, graph.initializer):
        for item in [i for i in field if i.name in params]:
            field.remove(item)
    return model, {**renamed, **readers}


class Simulator:
    """Evaluates assignments on the calibration set in one reused session."""

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan, params: QuantParams,
                 data: CalibrationSet, reference: list[np.ndarray]) -> None:
        """``reference``: the float model's values of ``observed_tensors(model)`` on ``data``."""
        self.model = model
        self.plan = plan
        self.params = params
        self.data = data
        self.reference = reference
        self._graph_inputs = data.input_names
        self.observed = observed_tensors(model)
        self._model = build_simulation_model(model, plan)
        self._params = {name: frozenset(_param_name(_chain_output(name, self._graph_inputs), s) for s in _SUFFIXES)
                        for name in plan.activations}  # each activation's quantizer parameter feeds
        self._whole: collections.OrderedDict[frozenset[str], tuple[object, frozenset[str]]] = collections.OrderedDict()
        self._partial: CutCache | None = None
        self._act_group = plan.group_of_activation()
        self._weight_group = plan.group_of_weight()
        self._cache: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
        self._weight_bytes = 0
        self._settled: dict[tuple, float] = {}
        self._signal: list[float] | None = None  # the reference's power per output, once
        self.evaluations = 0

    def on_data(self, data: CalibrationSet, reference: list[np.ndarray]) -> Simulator:
        """The same simulation (session, parameters, cached feeds) over other data, e.g. Phase 1's
        subset of the calibration samples; ``reference``: the float model's values there."""
        other = copy.copy(self)
        other.data, other.reference, other._partial, other.evaluations = data, reference, None, 0
        other._settled, other._signal = {}, None
        return other

    def ingredients(self) -> tuple:
        """What another process needs to build the same simulator: ``Simulator(*ingredients)``."""
        return self.model, self.plan, self.params, self.data, self.reference

    def _cached(self, key: tuple, make) -> np.ndarray:
        """Feeds by key; dequantized weights are evicted oldest first beyond WEIGHT_CACHE_BYTES
        (remade on demand: cheap next to a model run, and a large model's weights would not fit
        twice more)."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = self._cache[key] = make()
        if key[0] == "w":
            self._weight_bytes += value.nbytes
            for old in [k for k in self._cache if k[0] == "w" and k != key]:
                if self._weight_bytes <= WEIGHT_CACHE_BYTES:
                    break
                self._weight_bytes -= self._cache.pop(old).nbytes
        return value

    def activation_feeds(self, name: str, bits: int, method: str | None = None) -> dict[str, np.ndarray]:
        """The feeds that quantize activation ``name`` at ``bits`` (range by ``method``)."""
        target = _chain_output(name, self._graph_inputs)
        scale, zp = self.params.activation(name, bits, method)
        qmin, qmax = numerics.unsigned_range(bits)
        lo, hi = (np.float32(qmin - zp) * scale, np.float32(qmax - zp) * scale)
        values = {"scale": np.array(scale, np.float32), "zp": np.array(zp, np.uint16),
                  "lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}
        return {_param_name(target, s): v for s, v in values.items()}

    def feeds_for(self, assignment: Assignment) -> dict[str, np.ndarray]:
        """Every parameter feed of the simulation model for one assignment."""
        feeds: dict[str, np.ndarray] = {}
        for name in self.plan.activations:
            bits = min(assignment[self._act_group[name]].a_bits, FLOAT_PROXY_BITS)
            method = self.params.range_method.get((name, bits))
            feeds.update(self._cached(("a", name, bits, method), lambda n=name, b=bits: self.activation_feeds(n, b)))
        for op in self.plan.weighted_ops:
            cand = assignment[self._weight_group[op.weight]]
            if cand.is_float:
                feeds[op.weight] = self.params.float_weight(op.weight)
                if op.bias:
                    feeds[op.bias] = self.params.float_weight(op.bias)
                continue
            feeds[op.weight] = self._cached(("w", op.weight, cand.w_bits),
                                            lambda o=op, c=cand: self.params.weight(o, c.w_bits).dequantized())
            if op.bias:  # the int32 bias scale follows the input activation's scale, hence its range method
                method = self.params.range_method.get((op.activation, cand.a_bits))
                feeds[op.bias] = self._cached(("b", op.node, cand, method), lambda o=op, c=cand: self._bias_value(o, c))
        return feeds

    def _bias_value(self, op, cand: Candidate) -> np.ndarray:
        bias = self.params.bias(op, cand.w_bits, min(cand.a_bits, FLOAT_PROXY_BITS))
        return bias.dequantized() if bias is not None else self.params.float_weight(op.bias)

    def outputs(self, assignment: Assignment, overrides: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Model outputs over the calibration set; ``overrides`` replace some parameter feeds."""
        return self._evaluate(assignment, overrides, lambda runs: concatenate_runs(runs, len(self.observed)))

    def _evaluate(self, assignment: Assignment, overrides: dict[str, np.ndarray] | None,
                  consume: Callable[[Iterable[list[np.ndarray]]], T]) -> T:
        """``consume`` of the observed outputs, a run at a time: from the cut before the first
        change where the baseline's values are kept, else (or where onnxruntime cannot run that
        suffix: ``consume`` starts again) over the whole graph."""
        self.evaluations += 1
        feeds = self._feeds(assignment, overrides)
        if self._partial is not None:
            changed = self._partial.changed(feeds)
            cut = self._partial.cut_before(self._partial.start_of_change(changed))
            if cut is not None:
                try:
                    return consume(self._partial.batches(cut, feeds, changed))
                except ModelError as exc:  # a graph onnxruntime cannot run from that cut: run it whole
                    logger.debug("partial evaluation from node %d failed (%s); not using that cut", cut.position, exc)
                    self._partial.discard(cut)
        return consume(self._whole_runs(assignment, feeds))

    def whole_outputs(self, assignment: Assignment, overrides: dict[str, np.ndarray] | None = None,
                      keep_quantizers: frozenset[str] = frozenset()) -> list[np.ndarray]:
        """Model outputs over the whole graph, never from a cut, with the quantizers of
        ``keep_quantizers`` left in the graph where ``assignment`` leaves them float (their
        parameters from ``overrides``): how a stand-in for float measures (sqnr_resolution.py)."""
        runs = self._whole_runs(assignment, self._feeds(assignment, overrides), keep_quantizers)
        return concatenate_runs(runs, len(self.observed))

    def _feeds(self, assignment: Assignment, overrides: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        feeds = self.feeds_for(assignment)
        return {**feeds, **overrides} if overrides else feeds

    def _whole_runs(self, assignment: Assignment, feeds: dict[str, np.ndarray],
                    keep_quantizers: frozenset[str] = frozenset()) -> Iterator[list[np.ndarray]]:
        """The whole graph's runs over the calibration set, without the quantizers of the
        activations ``assignment`` leaves float (but ``keep_quantizers``)."""
        session, inputs = self._whole_session(self.float_activations(assignment) - keep_quantizers)
        return run_batches(session, self.data, self.observed, {k: v for k, v in feeds.items() if k in inputs})

    def float_activations(self, assignment: Assignment) -> frozenset[str]:
        """The activations whose group ``assignment`` leaves float: no quantizer in the run."""
        return frozenset(a for a in self.plan.activations if assignment[self._act_group[a]].is_float)

    def _whole_session(self, float_acts: frozenset[str]) -> tuple[object, frozenset[str]]:
        """A session on the whole simulation model without the quantizers of ``float_acts`` (the
        last few kept: a session takes about as long to make as one run of a small model), and
        its inputs."""
        if float_acts in self._whole:
            self._whole.move_to_end(float_acts)
            return self._whole[float_acts]
        model, _ = without_quantizers(light_copy(self._model, keep=None), float_acts) if float_acts else (self._model, {})
        session = make_session(model, outputs=self.observed, keep_float_weights=True)
        made = self._whole[float_acts] = (session, frozenset(i.name for i in session.get_inputs()))
        while len(self._whole) > WHOLE_SESSIONS:
            self._whole.popitem(last=False)
        return made

    def _inside_chains(self) -> frozenset[int]:
        """Node positions within a fake quantizer (after its Clip or its QuantizeLinear): no cut
        goes there, as a pruned chain's inner tensors do not exist."""
        return frozenset(i + 1 for i, node in enumerate(self._model.graph.node)
                         if node.name.endswith(("::fq_clip", "::fq_q")))

    def _pruner(self, baseline: Assignment, float_fixed: bool):
        """For the cut cache: a suffix (or the whole model) without the quantizers of the
        activations that ``baseline`` leaves float and whose parameters do not vary there (with
        ``float_fixed``, whatever varies: no evaluation quantizes them)."""
        floating = self.float_activations(baseline)

        def prune(model: onnx.ModelProto, varying: frozenset[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
            return without_quantizers(model, floating if float_fixed else
                                      {a for a in floating if not self._params[a] & varying})
        return prune

    def keep_baseline(self, assignment: Assignment, max_memory: int = DEFAULT_MAX_MEMORY,
                      float_fixed: bool = False) -> None:
        """Cache ``assignment``'s values at cut points, so that evaluations that differ from it
        only late in the graph run only from there on (Phase 1: one group changed at a time).
        ``float_fixed``: every evaluation leaves the groups ``assignment`` leaves float float
        (range refinement), so no suffix keeps their quantizers."""
        feeds = self.feeds_for(assignment)
        # a suffix session can serve every group after its cut where which quantizers are pruned
        # does not depend on the groups an evaluation changes
        fixed = float_fixed or not self.float_activations(assignment)
        try:
            self._partial = CutCache(self._model, self.data, self.observed, set(feeds), feeds, max_memory,
                                     feed_groups=self.group_feeds(), prune=self._pruner(assignment, float_fixed),
                                     inside=self._inside_chains(), window_sessions=fixed)
        except ModelError as exc:  # onnxruntime cannot output some cut tensor: evaluate whole graphs
            logger.info("partial re-evaluation unavailable (%s); every evaluation runs the whole model", exc)
            self._partial = None

    def group_feeds(self) -> list[frozenset[str]]:
        """Per group, every parameter feed that its candidate sets: its activations' quantizer
        parameters, its weights with their biases, and the biases of the ops reading its
        activations (a bias's int32 scale follows its input's)."""
        found = []
        for group in self.plan.groups:
            names = set().union(*(self._params[a] for a in group.activations))
            for op in self.plan.weighted_ops:
                if op.weight in group.weights:
                    names.update(n for n in (op.weight, op.bias) if n)
                elif op.bias and op.activation in group.activations:
                    names.add(op.bias)
            found.append(frozenset(names))
        return found

    def drop_baseline(self) -> None:
        self._partial = None

    @contextlib.contextmanager
    def from_cuts_of(self, assignment: Assignment, max_memory: int = DEFAULT_MAX_MEMORY,
                     float_fixed: bool = False) -> Iterator[None]:
        """Meanwhile, evaluations run from cached cuts of ``assignment``'s values (``keep_baseline``);
        ``max_memory`` 0: every one runs the whole graph."""
        if max_memory <= 0:
            yield
            return
        self.keep_baseline(assignment, max_memory, float_fixed)
        try:
            yield
        finally:
            self.drop_baseline()

    @property
    def cached_bytes(self) -> int:
        return self._partial.bytes if self._partial is not None else 0

    def nsr(self, assignment: Assignment, overrides: dict[str, np.ndarray] | None = None) -> float:
        """Noise-to-signal ratio of the observed outputs against the float reference."""
        if self._signal is None:
            self._signal = numerics.signal_powers(self.reference)
        return self._evaluate(assignment, overrides,
                              lambda runs: numerics.runs_noise_ratio(self.reference, runs, self._signal))

    def forget_settled(self) -> None:
        """Drop ``settled_nsr``'s memo (the range methods changed since)."""
        self._settled.clear()

    def settled_nsr(self, assignment: Assignment) -> float:
        """``nsr``, evaluated once per assignment: for Phase 2 and later, once every range method
        is settled (Phase 1 changes them while it measures, so it calls ``nsr``)."""
        key = tuple(sorted((gid, str(c)) for gid, c in assignment.items()))
        if key not in self._settled:
            self._settled[key] = self.nsr(assignment)
        return self._settled[key]
