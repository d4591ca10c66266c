"""Units exporters decompose into elementwise ops: LayerNorm, RMSNorm, GELU (erf and tanh forms),
Softmax, SiLU/Swish and L2 normalisation, recognised so a target can treat each as one thing
(keep it float between integer kernels, or quantize it whole).

A unit is a *closed region*: one entry tensor, one exit tensor, and between them only
elementwise and reduction ops whose other inputs are constants, every intermediate tensor read
only inside the region. The region is then named by the ops it holds (a LayerNorm has a
mean, a subtraction and a square root; a GELU an Erf or a Tanh; ...); a region that matches no
name is not a unit. Read-only: the model is never changed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import onnx

from onnxmp.model.graph import GraphIndex

logger = logging.getLogger(__name__)

# Ops a decomposed unit is made of (elementwise, reductions over the unit's own values).
UNIT_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "ReduceMean", "ReduceSum", "ReduceMax",
    "ReduceL2", "ReduceSumSquare", "Erf", "Tanh", "Sigmoid", "Exp", "Max", "Clip", "Neg", "Cast",
})
_MAX_UNIT_NODES = 16  # the longest decomposition named here (tanh-GELU with its affine) has 9


@dataclasses.dataclass(frozen=True)
class Unit:
    """One recognised decomposition: its kind, entry and exit tensors and its nodes."""

    kind: str
    entry: str
    exit: str
    nodes: tuple[str, ...]
    tensors: tuple[str, ...]  # computed inside the unit, the exit included

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.nodes[0]} .. {self.nodes[-1]}, {len(self.nodes)} nodes)"


def _kind(ops: Counter) -> str | None:
    """The unit a region's op counts make, or None (a region of other arithmetic)."""
    if ops["Erf"]:
        return "GELU (erf)"
    if ops["Tanh"] and (ops["Pow"] or ops["Mul"] >= 3):
        return "GELU (tanh)"
    if ops["Exp"] and (ops["ReduceSum"] or ops["Div"]):
        return "Softmax"
    if ops["ReduceMean"] >= 2 and ops["Sub"] and (ops["Sqrt"] or ops["Reciprocal"]):
        return "LayerNorm"
    if ops["ReduceMean"] and (ops["Pow"] or ops["Mul"]) and (ops["Sqrt"] or ops["Reciprocal"]) and not ops["Sub"]:
        return "RMSNorm"
    if (ops["ReduceL2"] or ((ops["ReduceSum"] or ops["ReduceSumSquare"]) and ops["Sqrt"])) and ops["Div"]:
        return "L2 normalisation"
    if ops["Sigmoid"] and ops["Mul"] and sum(ops.values()) <= 3:
        return "SiLU"
    return None


def _region(entry: str, index: GraphIndex, constant: set[str], order: dict[str, int]) -> list[onnx.NodeProto]:
    """The nodes reachable from ``entry`` through unit ops whose every non-constant input is the
    entry or computed in the region, in graph order."""
    inside: dict[str, onnx.NodeProto] = {}
    values = {entry}
    frontier = [entry]
    while frontier and len(inside) <= _MAX_UNIT_NODES:
        tensor = frontier.pop()
        for node in index.readers.get(tensor, []):
            if node.name in inside or node.op_type not in UNIT_OPS:
                continue
            if all(not n or n in values or n in constant for n in node.input):
                inside[node.name] = node
                values.update(o for o in node.output if o)
                frontier.extend(o for o in node.output if o)
    return sorted(inside.values(), key=lambda n: order[n.name])


def _closed_exit(nodes: list[onnx.NodeProto], index: GraphIndex) -> str | None:
    """The region's one tensor read outside it (or a graph output), when there is exactly one."""
    names = {n.name for n in nodes}
    escaping = [o for node in nodes for o in node.output if o and (
        o in index.graph_outputs or any(r.name not in names for r in index.readers.get(o, [])))]
    return escaping[0] if len(escaping) == 1 else None


def _trim(nodes: list[onnx.NodeProto], entry: str, index: GraphIndex) -> list[onnx.NodeProto]:
    """The region cut back from its end until one tensor leaves it (a grown region may run on into
    arithmetic that branches off); empty when a node cut off reads the entry or the inside of what
    is left (then the region was not a unit with one exit)."""
    kept = list(nodes)
    while kept and _closed_exit(kept, index) is None:
        kept.pop()
    if not kept:
        return []
    exit_name = _closed_exit(kept, index)
    inside = {entry} | {o for n in kept for o in n.output if o} - {exit_name}
    if any(set(n.input) & inside for n in nodes[len(kept):]):
        return []
    return kept


def find_units(model: onnx.ModelProto, constant: set[str] | None = None) -> list[Unit]:
    """Every recognised unit of the main graph, in graph order, none overlapping another.
    ``constant``: tensors computed from initializers alone (initializers always count)."""
    graph = model.graph
    index = GraphIndex.build(graph)
    constant = set(index.initializers) | (constant or set())
    order = {node.name: i for i, node in enumerate(graph.node)}
    taken: set[str] = set()
    units = []
    entries = [*index.graph_inputs, *(o for node in graph.node for o in node.output if o)]
    for entry in entries:
        if entry in constant:
            continue
        nodes = _trim(_region(entry, index, constant, order), entry, index)
        if len(nodes) < 2 or len(nodes) > _MAX_UNIT_NODES or any(n.name in taken for n in nodes):
            continue
        kind = _kind(Counter(n.op_type for n in nodes))
        exit_name = _closed_exit(nodes, index)
        if kind is None or exit_name is None:
            continue
        tensors = tuple(o for n in nodes for o in n.output if o)
        units.append(Unit(kind, entry, exit_name, tuple(n.name for n in nodes), tensors))
        taken.update(n.name for n in nodes)
    for unit in units:
        logger.debug("unit %s", unit.label)
    return units
