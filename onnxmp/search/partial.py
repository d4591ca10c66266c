"""Partial re-evaluation: run only the part of the simulation that a configuration changes.

Phase 1 changes one group at a time against a fixed baseline assignment. The baseline's values at
a few cut points of the graph are computed once and kept; an evaluation then starts at the last
cut before the first node whose feeds differ from the baseline's, in a session on the graph's
suffix from that cut. Cuts sit where few tensors are live, spread evenly along the graph; as many
as fit in the memory budget are kept (what does not fit is recomputed from an earlier cut).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxmp.model.graph import subgraph_reads
from onnxmp.model.large import is_large, is_large_size, light_copy
from onnxmp.runtime.data import CalibrationSet
from onnxmp.runtime.session import make_session, run_session

logger = logging.getLogger(__name__)

DEFAULT_CUTS = 16
DEFAULT_MAX_MEMORY = 2 << 30  # bytes of cached activations
SUFFIX_SESSIONS = 4  # suffix sessions kept (one per cut and set of groups changed)


Prune = Callable[[onnx.ModelProto, frozenset[str]], tuple[onnx.ModelProto, dict[str, str]]]


@dataclasses.dataclass(frozen=True)
class Cut:
    """A point between two nodes: the suffix starts at node ``position`` and needs ``live``."""

    position: int
    live: tuple[str, ...]


def node_reads(node: onnx.NodeProto) -> set[str]:
    return (set(node.input) | subgraph_reads(node)) - {""}


def first_readers(graph: onnx.GraphProto) -> dict[str, int]:
    """Index of the first node reading each tensor."""
    first: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node_reads(node):
            first.setdefault(name, i)
    return first


def find_cuts(graph: onnx.GraphProto, fed: set[str], observed: Iterable[str], count: int = DEFAULT_CUTS,
              inside: frozenset[int] = frozenset()) -> list[Cut]:
    """Up to ``count - 1`` cuts, one per equal stretch of the node list, each where the fewest
    tensors are live (made before it, other than constants and ``fed`` parameters, and read at or
    after it, or observed), never at a position in ``inside`` (within a unit that pruning may
    remove whole)."""
    nodes = list(graph.node)
    n = len(nodes)
    if n < 2 or count < 2:
        return []
    constant = {t.name for t in graph.initializer} | fed
    made = {i.name: -1 for i in graph.input if i.name not in constant}
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        made.update({o: i for o in node.output if o})
        for name in node_reads(node):
            last_use[name] = i
    last_use.update({name: n for name in observed})
    # tensor t is live at cut k (before node k) when made[t] < k <= last_use[t]
    delta = np.zeros(n + 2, np.int64)
    for name, at in made.items():
        end = last_use.get(name, at)
        if end > at:
            delta[at + 1] += 1
            delta[end + 1] -= 1
    live_count = np.cumsum(delta)[: n + 1]
    positions = []
    for j in range(1, count):
        lo, hi = max(1, round((j - 0.5) * n / count)), min(n - 1, round((j + 0.5) * n / count))
        if lo > hi:
            continue
        window = [k for k in range(lo, hi + 1) if k not in inside]
        if not window:
            continue
        centre = j * n / count
        best = min(window, key=lambda k: (live_count[k], abs(k - centre)))
        if not positions or best > positions[-1]:
            positions.append(int(best))
    return [Cut(k, tuple(sorted(t for t, at in made.items() if at < k <= last_use.get(t, at)))) for k in positions]


def suffix_model(model: onnx.ModelProto, cut: Cut, outputs: list[str], types: dict[str, tuple[int, list]],
                 constants: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The nodes from ``cut.position`` on, reading the cut's live tensors as graph inputs
    (``types``: element type and shape of each, as the baseline run gave them; a loop's body
    needs its inputs' shapes). Graph inputs named in ``constants`` become initializers of
    those values (onnxruntime folds constants and lays out constant convolution weights)."""
    graph = model.graph
    constants = constants or {}
    nodes = list(graph.node)[cut.position:]
    reads = set().union(*(node_reads(n) for n in nodes)) if nodes else set()
    inputs = [helper.make_tensor_value_info(name, *types[name]) for name in cut.live]
    live = set(cut.live)
    inputs += [i for i in graph.input if i.name in reads and i.name not in live and i.name not in constants]
    initializers = [t for t in graph.initializer if t.name in reads]
    initializers += [numpy_helper.from_array(value, name) for name, value in constants.items() if name in reads]
    suffix = helper.make_graph(
        nodes, graph.name + "_suffix", inputs,
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs], initializers)
    made = {o for n in nodes for o in n.output}
    suffix.value_info.extend(v for v in graph.value_info if v.name in made)
    return helper.make_model(suffix, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _observed_type(batches: list[np.ndarray]) -> tuple[int, list]:
    """Element type and shape of a tensor over all batches: a dimension that varies is symbolic."""
    shapes = {b.shape for b in batches}
    first = batches[0].shape
    dims = [d if all(len(s) == len(first) and s[i] == d for s in shapes) else f"d{i}" for i, d in enumerate(first)]
    rank_varies = len({len(s) for s in shapes}) > 1
    return helper.np_dtype_to_tensor_dtype(batches[0].dtype), None if rank_varies else dims


@dataclasses.dataclass
class _Suffix:
    """A suffix session and the parameter feeds it takes as inputs (the rest are baked in)."""

    session: object
    baked_bytes: int
    inputs: frozenset[str]


class CutCache:
    """The baseline's live tensors at the kept cuts, per calibration batch, and suffix sessions
    from them (made when first needed), one per cut and set of groups an evaluation changes. A
    suffix session takes as inputs only the feeds of those groups; the others are baked in at
    their baseline values while the baked bytes fit what ``max_memory`` leaves (never when the
    weights fed to the simulation are over ``large.LARGE_BYTES``), and the quantizers of groups
    the baseline leaves float are pruned. Constants let onnxruntime fold them and choose its
    layouts (NCHWc convolutions): Phase 1 of a 100-layer CNN ran in 25 s instead of 34 s (MatMul
    weights are not pre-packed, see ``session.NO_PREPACKING``). Pruning computes the float groups
    as the whole graph does: a 16-bit quantizer standing in for float moved ppocr_cls's SQNR by
    up to 1.3 dB (benchmarks/sqnr_resolution.py)."""

    def __init__(self, model: onnx.ModelProto, data: CalibrationSet, observed: list[str], fed: set[str],
                 baseline_feeds: dict[str, np.ndarray], max_memory: int = DEFAULT_MAX_MEMORY,
                 count: int = DEFAULT_CUTS, feed_groups: Iterable[frozenset[str]] = (), prune: Prune | None = None,
                 inside: frozenset[int] = frozenset(), window_sessions: bool = False) -> None:
        """``feed_groups``: the sets of feeds that change together (one per quantizer group);
        a suffix takes those of the groups an evaluation changes as inputs, so what it bakes in
        depends only on the plan and that evaluation, not on which groups this process measured
        before (baked and fed weights run different kernels: results would differ in the last
        bits between one process and several). ``prune``: given a model (the whole one or a
        suffix) and the feeds that vary there, the model with the nodes the baseline makes
        pass-through removed (edited in place), and for each tensor renamed away the one that
        holds its value; ``inside``: node positions no cut may take (within what ``prune`` removes
        whole, whose inner tensors would not exist). ``window_sessions`` (only where what ``prune``
        removes does not depend on what varies): a suffix also takes the feeds of every group first
        read between its cut and the next as inputs, so that one session per cut serves all the
        groups there (a 200-layer CNN's Phase 1 cost 1.42 float passes per evaluation with a
        session per group, 1.10 with one per cut: benchmarks/results/phase1_speed.md)."""
        self.model = model
        self._prune = prune
        self._feed_groups = [g for g in feed_groups if g]
        self.data = data
        self.observed = observed
        self.baseline_feeds = baseline_feeds
        self._first_reader = first_readers(model.graph)
        candidates = find_cuts(model.graph, fed, observed, count, inside)
        self.cuts, self.values = self._fill(candidates, max_memory)
        self.types = {name: _observed_type([batch[name] for batch in batches])
                      for batches in self.values.values() for name in batches[0]}
        self.bytes = sum(v.nbytes for batches in self.values.values() for batch in batches for v in batch.values())
        self._sessions: collections.OrderedDict[tuple[int, frozenset[str]], _Suffix] = collections.OrderedDict()
        self._produced_by_position: dict[int, set[str]] = {}
        self._windows = self._window_feeds() if window_sessions else {}
        # the simulation model holds no weights (they are fed): a large model shows in its feeds
        large = is_large(model) or is_large_size(sum(v.nbytes for v in baseline_feeds.values()))
        self._bake_budget = 0 if large else max(0, max_memory - self.bytes)
        logger.info("partial re-evaluation: %d cuts kept of %d, %.1f MB cached", len(self.cuts), len(candidates),
                    self.bytes / 2**20)

    def _fill(self, candidates: list[Cut], max_memory: int):
        """Run the baseline once, keeping the live tensors of the cuts that fit in ``max_memory``:
        the first batch measures each cut's size, the largest cuts are dropped until the rest fit."""
        if not candidates:
            return [], {}
        batches = list(self.data.feeds())
        wanted = sorted({name for cut in candidates for name in cut.live})
        model, alias = self.model, {}
        if self._prune is not None:
            model, alias = self._prune(light_copy(self.model, keep=None), frozenset())
        session = make_session(model, optimized=False, outputs=[alias.get(n, n) for n in wanted],
                               keep_float_weights=True)
        takes = {i.name for i in session.get_inputs()}
        baseline = {k: v for k, v in self.baseline_feeds.items() if k in takes}

        def run(names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            """The cut tensors by their names in the simulation model (two may hold one value once pruned)."""
            actual = list(dict.fromkeys(alias.get(n, n) for n in names))
            got = dict(zip(actual, run_session(session, actual, {**feeds, **baseline}), strict=True))
            return {n: got[alias.get(n, n)] for n in names}
        first = run(wanted, batches[0])
        size = {cut.position: sum(first[t].nbytes for t in cut.live) * len(batches) for cut in candidates}
        kept = list(candidates)
        while kept and sum(size[c.position] for c in kept) > max_memory:
            kept.remove(max(kept, key=lambda c: size[c.position]))
        names = sorted({name for cut in kept for name in cut.live})
        values: dict[int, list[dict[str, np.ndarray]]] = {c.position: [] for c in kept}
        for i, feeds in enumerate(batches):
            got = first if i == 0 else run(names, feeds)
            for cut in kept:
                values[cut.position].append({t: got[t] for t in cut.live})
        return kept, values

    def _window_feeds(self) -> dict[int, frozenset[str]]:
        """Per kept cut, the feeds of the groups whose evaluations start from it (first read
        between it and the next cut)."""
        windows: dict[int, frozenset[str]] = {}
        for group in self._feed_groups:
            cut = self.cut_before(self.start_of_change(group))
            if cut is not None:
                windows[cut.position] = windows.get(cut.position, frozenset()) | group
        return windows

    def changed(self, feeds: dict[str, np.ndarray]) -> set[str]:
        """Names of the feeds that differ from the baseline's."""
        differ = set()
        for name, value in feeds.items():
            base = self.baseline_feeds.get(name)
            if base is value or (base is not None and base.shape == value.shape and np.array_equal(base, value)):
                continue
            differ.add(name)
        return differ

    def start_of_change(self, changed: set[str]) -> int:
        """Index of the first node that reads a changed feed (the node count when none)."""
        start = len(self.model.graph.node)
        return min((self._first_reader.get(name, start) for name in changed), default=start)

    def cut_before(self, start: int) -> Cut | None:
        usable = [c for c in self.cuts if c.position <= start]
        return usable[-1] if usable else None

    def discard(self, cut: Cut) -> None:
        """Stop using ``cut`` (its suffix failed to run) and free its cached values."""
        self.cuts.remove(cut)
        self.bytes -= sum(v.nbytes for batch in self.values.pop(cut.position) for v in batch.values())
        for key in [k for k in self._sessions if k[0] == cut.position]:
            self._bake_budget += self._sessions.pop(key).baked_bytes

    def _suffix(self, cut: Cut, changed: set[str], computed: list[str]) -> _Suffix:
        """The cut's suffix session for evaluations that change ``changed``: the feeds of every
        group those belong to stay inputs, the others are baked in at their baseline values (or
        pruned away where the baseline leaves their group float), so a session depends only on
        which groups an evaluation changes, never on what was evaluated before; the last
        SUFFIX_SESSIONS are kept (Phase 1 evaluates a group a few times in a row). With window
        sessions, the feeds of the groups in the cut's window stay inputs too."""
        varying = frozenset(changed.union(*(g for g in self._feed_groups if g & changed),
                                          self._windows.get(cut.position, ())))
        key = (cut.position, varying)
        have = self._sessions.get(key)
        if have is not None:
            self._sessions.move_to_end(key)
            return have
        reads = set().union(*(node_reads(n) for n in list(self.model.graph.node)[cut.position:]))
        constants = {n: v for n, v in self.baseline_feeds.items() if n in reads and n not in varying}
        baked = sum(v.nbytes for v in constants.values())
        if baked > self._bake_budget:
            constants, baked = {}, 0
        self._bake_budget -= baked
        model = suffix_model(self.model, cut, computed, self.types, constants)
        if self._prune is not None:
            model, _ = self._prune(model, varying)
        session = make_session(model, keep_float_weights=True)
        made = self._sessions[key] = _Suffix(session, baked, frozenset(i.name for i in session.get_inputs()))
        while len(self._sessions) > SUFFIX_SESSIONS:
            self._bake_budget += self._sessions.popitem(last=False)[1].baked_bytes
        return made

    def batches(self, cut: Cut, feeds: dict[str, np.ndarray], changed: set[str]) -> Iterator[list[np.ndarray]]:
        """The observed tensors, a calibration batch at a time (flattened float32), computed from
        ``cut`` on (``changed``: the feeds that differ from the baseline). Observed tensors made
        before the cut come from the cache."""
        produced = self._produced_by_position.get(cut.position)
        if produced is None:
            produced = self._produced_by_position[cut.position] = {
                o for node in list(self.model.graph.node)[cut.position:] for o in node.output}
        computed = [name for name in self.observed if name in produced]
        suffix = self._suffix(cut, changed, computed)
        params = {k: v for k, v in feeds.items() if k in suffix.inputs}
        for cached in self.values[cut.position]:
            got = dict(zip(computed, run_session(suffix.session, computed, {**cached, **params}), strict=True)) \
                if computed else {}
            yield [np.asarray(got[name] if name in got else cached[name], dtype=np.float32).reshape(-1)
                   for name in self.observed]
