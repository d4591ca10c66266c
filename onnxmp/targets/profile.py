"""What a deployment target runs quantized: the profile each target module declares."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx

from onnxmp.errors import ConfigError
from onnxmp.quant.candidates import DEFAULT_CANDIDATES, Candidate
from onnxmp.quant.cost import LatencyTable
from onnxmp.quant.groups import IntegerPlacement, QuantPlan


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    """What a target runs quantized. ``weight_bits[op_type]`` lists the weight bit-widths a
    weighted op may take (op types not listed: ``default_weight_bits``); ``activation_bits``
    the activation bit-widths any quantizer may take."""

    name: str
    summary: str
    default_weight_bits: frozenset[int]
    activation_bits: frozenset[int]
    weight_bits: dict[str, frozenset[int]] = dataclasses.field(default_factory=dict)
    default_candidates: str = DEFAULT_CANDIDATES  # what the CLI searches when --candidates is not given
    static_shapes: bool = False  # the toolchain refuses symbolic dimensions
    mixed_activation_bits: bool = True  # False: one activation width per model (each width searched apart)
    extra: str | None = None  # pip extra with the target's runtime
    verify: Callable | None = None  # verify(model, data, observed, reference, folder) -> dict
    open_session: Callable | None = None  # model path -> object with run(names, feeds) and get_outputs()
    refuse_broken_promise: bool = False  # verify's "broken_promise" is an error (else a warning)
    # float constant operands of elementwise ops, and constant tables that Gather/Slice read into
    # a quantized tensor, stored quantized behind a DequantizeLinear
    dequantize_constant_operands: bool = False
    extra_quantized_ops: frozenset[str] = frozenset()  # quantized besides groups.QUANTIZED_OPS
    # where activation quantizers go: None, around every op of QUANTIZED_OPS (an accelerator that runs
    # the whole graph in integer); else only where the runtime computes in integer
    placement: IntegerPlacement | None = None
    smooth_quant: bool = False  # SmoothQuant the inputs of MatMuls with constant weights before quantizing
    float_units: bool = False  # with placement None: recognised decompositions (LayerNorm, GELU, ...) stay float
    # with placement None: op types whose output the runtime writes straight at the scale of a Relu/Clip
    # that alone reads it (no quantizer between the two)
    clamp_fused_ops: frozenset[str] = frozenset()
    default_metric: str = "bops"  # the cost metric that tracks what the target pays
    latency: LatencyTable | None = None  # measured time per MAC of each op type and candidate (metric latency)
    # (model, plan, data, weights) -> {node: {"FP32": ms, "W8A8": ms}}: each layer timed on this machine
    measure_latency: Callable | None = None
    # ({name: model}, data) -> {name: ms}: whole models timed on the target's runtime (what ships)
    time_models: Callable | None = None
    runs_float: bool = True  # a layer left float (FP32) runs there (on HTP it would fall back to the CPU)
    range_margin: float = 0.0  # activation ranges widened by this fraction of their width at non-zero ends
    range_margin_ops: frozenset[str] | None = None  # the op types whose outputs take range_margin (None: all)
    rewrite: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None  # float model → ops the target runs
    # activation bit-widths that op types may not read (the runtime's kernels refuse that type)
    activation_readers_refused: dict[int, frozenset[str]] = dataclasses.field(default_factory=dict)

    def allows(self, op_types: set[str], cand: Candidate) -> bool:
        if cand.is_float:
            return self.runs_float
        if cand.a_bits not in self.activation_bits:
            return False
        return all(cand.w_bits in self.weight_bits.get(t, self.default_weight_bits) for t in op_types)

    def families(self, candidates: tuple[Candidate, ...]) -> tuple[tuple[Candidate, ...], ...]:
        """The candidate sets a model's groups may mix: all of them, or, where the target runs one
        activation width per model, one set per width (most expensive set first). Phase 1
        measures every candidate; Phase 2 searches each family and keeps the best point within
        the budget, so a width whose cheapest point is the only one in budget (all-W4A16 at the
        BOPs of W8A8) does not hide a better one of another width (W8A8)."""
        if self.mixed_activation_bits:
            return (candidates,)
        widths = sorted({c.a_bits for c in candidates}, reverse=True)
        return tuple(tuple(c for c in candidates if c.a_bits == bits) for bits in widths)

    def group_candidates(self, plan: QuantPlan, candidates: tuple[Candidate, ...],
                         model: onnx.ModelProto | None = None) -> dict[int, tuple[Candidate, ...]]:
        """Per group, the candidates the target allows (same order). Refuses when the most
        expensive candidate is not allowed everywhere: Phase 1 measures against it. ``model``:
        the graph whose readers ``activation_readers_refused`` applies to."""
        op_types = {op.weight: set() for op in plan.weighted_ops}
        for op in plan.weighted_ops:
            op_types[op.weight].add(op.op_type)
        readers: dict[str, set[str]] = {}
        for node in model.graph.node if model is not None else ():
            for name in node.input:
                readers.setdefault(name, set()).add(node.op_type)
        allowed = {}
        for group in plan.groups:
            types = set().union(*(op_types[w] for w in group.weights)) if group.weights else set()
            read_by = set().union(*(readers.get(a, set()) for a in group.activations)) if group.activations else set()
            allowed[group.gid] = tuple(
                c for c in candidates if self.allows(types, c)
                and not read_by & self.activation_readers_refused.get(c.a_bits, frozenset()))
            if candidates[-1] not in allowed[group.gid]:
                refused = read_by & self.activation_readers_refused.get(candidates[-1].a_bits, frozenset())
                where = (f"activations read by {', '.join(sorted(refused))}" if refused
                         else ', '.join(sorted(types)) or 'activations')
                raise ConfigError(
                    f"--target {self.name} does not run {candidates[-1]} on {where} ({group.label}); use candidates "
                    f"whose most expensive one it allows everywhere ({self.summary})")
        return allowed
