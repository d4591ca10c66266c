"""Qualcomm's HTP (Hexagon NPU) through onnxruntime's QNN execution provider (``onnxmp[qnn]``).

Rules learned from the backend itself (``onnxruntime-qnn`` 2.7.0, HTP emulated on x86-64): a
static-shape QDQ model at W8A8, W4A8, W8A16 or W4A16 runs entirely on HTP (Conv, Gemm, MatMul,
Add, Concat, pooling, LayerNormalization, Softmax; the graph-input QuantizeLinear and
graph-output DequantizeLinear stay on the CPU by design); 16-bit weights are refused
("QNN.backendValidateOpConfig() failed ... FullyConnected"), and a symbolic dimension makes every
node fall back ("Cannot get shape"). Weight bit-widths mix freely (W4A8 with W8A8, W4A16 with
W8A16 run entirely on HTP), but a model mixing 8 and 16-bit activations leaves the weight and bias
DequantizeLinear of the layers at the boundaries on the CPU (measured on the digits CNN: 8 of 11
nodes), or fails to load (an NHWC Conv no EP takes); onnxruntime's own QNN mixed-precision flow
inserts conversion ops there, which onnxmp's export does not yet write. A float constant operand
of a quantized Div (PaddleOCR's hard-swish x·relu6(x+3)/6) in front of a Conv makes the backend
refuse the whole graph (QNN_COMMON_ERROR_MEM_ALLOC at finalize, found by bisecting ppocr_cls);
stored quantized behind a DequantizeLinear it runs (ppocr_cls 739/742 nodes on HTP). MiniLM was
refused the same way (bisected over slices of the graph): by its float word-embedding table read
by a Gather, and by float ReduceSum → Sqrt → Max (the L2 normalisation) between quantized ops;
with the table stored quantized and those ops quantized, it loads. Erf has no HTP kernel (each
erf-form GELU falls back to the CPU and splits the graph) while Gelu runs. So: weights 4 or 8
bits, one activation bit-width per model (8 or 16: Phase 2 searches each and keeps the better point
within the budget), static shapes, constant
operands of Add/Sub/Mul/Div/Max/Min and constant tables of Gather/Slice quantized, ReduceSum,
Sqrt, Max and Min quantized, erf-form GELU written as Gelu, the ranges of Div's results with
headroom (``RANGE_MARGIN``), no quantizer between an Add/Sub/Mul and the Relu/Clip after it
(``CLAMP_FUSED_OPS``).
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import onnx

from onnxmp.errors import TargetRefusedError
from onnxmp.model.fusions import fuse_erf_gelu
from onnxmp.runtime.data import CalibrationSet
from onnxmp.runtime.session import with_outputs
from onnxmp.targets.checks import captured_stderr, runtime_missing, single_samples, sqnr_of_runs
from onnxmp.targets.profile import TargetProfile

logger = logging.getLogger(__name__)

EP = "QNNExecutionProvider"
# HTP can wrap around instead of saturating where a result lands just past its range end (a
# BERT-style L2 normalisation's Div gave +0.64 for -0.65, the calibrated minimum): 1% headroom
# at each end other than 0 (2.6 steps at 8 bits, ~650 at 16; costs < 0.2 dB of resolution).
RANGE_MARGIN = 0.01
# Only where that was seen: elsewhere the headroom cost HTP accuracy. `onnxmp optimize
# models/digits/digits_cnn.onnx --target qnn-htp --candidates W8A8` on the first 32 samples of its
# calib.npz: 37.73 dB on HTP with it on every activation (38.85 dB on the CPU), 39.03 dB with it
# on Div's results only, of which the CNN has none (39.06 on the CPU).
WRAPPING_OPS = frozenset({"Div"})
# HTP writes the result of these straight at the scale of a Relu or Clip that alone reads it: with
# a QuantizeLinear/DequantizeLinear pair between, its output is bit-identical to the graph without
# one (an Add, Sub or Mul of two 8-bit tensors, then Relu or Clip(0, 6); the digits CNN's residual
# Add → Relu on 232 samples), where onnxruntime rounds twice (1-2 steps apart). So no quantizer
# goes there, and the simulation computes what HTP does. Div, Max and Concat keep it (HTP rounds
# at their outputs as written).
CLAMP_FUSED_OPS = frozenset({"Add", "Sub", "Mul"})
_REASON = re.compile(r"node `?([^`\s]+)`?(?: of type `?([^`\s]+)`?)?(.*)$")


def _runtime():
    try:
        import onnxruntime as ort
        import onnxruntime_qnn
    except ImportError as exc:
        raise runtime_missing("qnn-htp", "qnn", exc) from exc
    if not any(d.ep_name == EP for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(EP, onnxruntime_qnn.get_library_path())
    return ort, onnxruntime_qnn


def htp_session(model: onnx.ModelProto, profile_prefix: str | None = None):
    """A session on the HTP backend (CPU fallback allowed), and the backend's log lines."""
    ort, qnn = _runtime()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    options = ort.SessionOptions()
    options.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path()})
    options.log_severity_level = 2  # warnings carry the backend's validation failures
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    with captured_stderr() as lines:
        try:
            session = ort.InferenceSession(model.SerializeToString(), options)
        except Exception as exc:
            raise TargetRefusedError(f"the QNN HTP backend cannot load the model: {str(exc).strip().splitlines()[0]}") from exc
    return session, lines


def _fallback_reasons(lines: list[str]) -> dict[str, str]:
    """Node name → the backend's message, from its warnings."""
    reasons: dict[str, str] = {}
    for line in lines:
        if "qnn" not in line.lower() and "Cannot get shape" not in line:
            continue
        text = re.sub(r"^.*?\] ", "", re.sub(r"\x1b\[[0-9;]*m", "", line)).strip()
        match = _REASON.search(text)
        if match:
            reasons.setdefault(match.group(1), text)
    return reasons


def placement(model: onnx.ModelProto, feeds: dict[str, np.ndarray], folder: str) -> tuple[list[dict], int, list[str]]:
    """(nodes that ran on the CPU with op type and the backend's reason, HTP partitions, log lines)."""
    session, lines = htp_session(model, os.path.join(folder, "qnn_profile"))
    session.run(None, feeds)
    with open(session.end_profiling(), encoding="utf-8") as handle:
        events = json.load(handle)
    reasons = _fallback_reasons(lines)
    cpu, partitions = [], 0
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name, provider = event["name"][: -len("_kernel_time")], event["args"].get("provider")
        if provider == EP:
            partitions += 1
        else:
            cpu.append({"node": name, "op_type": event["args"].get("op_name", ""), "reason": reasons.get(name, ""),
                        "shapes": [list(next(iter(t.values()))) for t in event["args"].get("input_type_shape", [])[:1]
                                   + event["args"].get("output_type_shape", [])[:1]]})
    return cpu, partitions, lines


def _by_design(entry: dict, model: onnx.ModelProto) -> bool:
    """Graph-input QuantizeLinear and graph-output DequantizeLinear run on the CPU by design.
    onnxruntime may rename such a node ("DequantizeLinear_token_31"): then it is recognised by
    its op type and the static shape of a graph input (output) made of Q (DQ) nodes."""
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    node = next((n for n in model.graph.node if n.name == entry["node"]), None)
    if node is not None:
        return ((node.op_type == "QuantizeLinear" and node.input[0] in inputs)
                or (node.op_type == "DequantizeLinear" and _reaches_only_outputs(node.output[0], model, outputs)))
    shapes = entry.get("shapes") or [[]]
    if entry["op_type"] == "QuantizeLinear":
        return shapes[0] in [_static_shape(v) for v in model.graph.input]
    producers = {o: n for n in model.graph.node for o in n.output}

    def made_by_dq(name: str) -> bool:  # through Identity nodes
        node = producers.get(name)
        while node is not None and node.op_type == "Identity":
            node = producers.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    return entry["op_type"] == "DequantizeLinear" and shapes[-1] in [
        _static_shape(v) for v in model.graph.output if made_by_dq(v.name)]


def _reaches_only_outputs(tensor: str, model: onnx.ModelProto, outputs: set[str]) -> bool:
    """``tensor`` is a graph output, or only Identity nodes lead from it to graph outputs (the
    float end of the graph, which stays on the CPU; PaddleOCR models end in an Identity)."""
    if tensor in outputs:
        return True
    readers = [n for n in model.graph.node if tensor in n.input]
    return bool(readers) and all(n.op_type == "Identity" and _reaches_only_outputs(n.output[0], model, outputs)
                                 for n in readers)


def _static_shape(value: onnx.ValueInfoProto) -> list[int] | None:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value for d in dims] if dims and all(d.dim_value > 0 for d in dims) else None


def verify(model: onnx.ModelProto, data: CalibrationSet, observed: list[str], reference: list[np.ndarray],
           folder: str) -> dict:
    """Where the exported model runs on HTP, and its output SQNR as HTP computes it."""
    probe = with_outputs(model, observed)
    first = next(iter(single_samples(data)))
    cpu, partitions, _ = placement(probe, first, folder)
    by_design = [c["node"] for c in cpu if _by_design(c, probe)]
    unexpected = [c for c in cpu if c["node"] not in by_design]
    session, _ = htp_session(probe)
    sqnr = sqnr_of_runs(lambda feeds: session.run(observed, feeds), data, reference)
    return {
        "target": "qnn-htp", "nodes": len(model.graph.node), "htp_partitions": partitions,
        "on_target": len(probe.graph.node) - len(cpu), "on_cpu": len(cpu),
        "fallback": unexpected, "cpu_by_design": by_design,
        "sqnr_db": sqnr, "promise_kept": not unexpected,
        "broken_promise": None if not unexpected else (
            f"{len(unexpected)} quantized node(s) fall back to the CPU, e.g. {unexpected[0]['node']} "
            f"({unexpected[0]['op_type']}): {unexpected[0]['reason'] or 'no reason given'}"),
    }


def open_session(path: str):
    """An HTP session on a model file (for the accuracy-target search)."""
    return htp_session(onnx.load(path))[0]


PROFILE = TargetProfile(
    name="qnn-htp",
    summary="Qualcomm HTP runs 4 and 8-bit weights with 8 or 16-bit activations (one width per model), "
            "static shapes only",
    default_weight_bits=frozenset({4, 8}),
    activation_bits=frozenset({8, 16}),
    # every width HTP runs: at the BOPs of W8A8 all-W4A16 was the only 16-bit point (21.6 dB on a small CNN
    # where W8A8 gives 37.1 dB); searching each width apart finds the better one
    default_candidates="W4A8,W8A8,W4A16,W8A16",
    static_shapes=True,
    mixed_activation_bits=False,
    runs_float=False,  # a float layer leaves HTP for the CPU: the graph splits
    dequantize_constant_operands=True,
    extra_quantized_ops=frozenset({"ReduceSum", "Sqrt", "Max", "Min"}),
    range_margin=RANGE_MARGIN,
    range_margin_ops=WRAPPING_OPS,
    clamp_fused_ops=CLAMP_FUSED_OPS,
    rewrite=fuse_erf_gelu,
    extra="qnn",
    verify=verify,
    open_session=open_session,
    refuse_broken_promise=True,
)
