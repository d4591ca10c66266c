"""Every ONNX model in, a valid model or one clear error out (issue 8).

The corpus: (a) onnx's own backend test models, from the installed ``onnx`` wheel, that hold at
least one op onnxmp quantizes (``onnxmp.groups.QUANTIZED_OPS``); those stock onnxruntime cannot
run on their own test inputs are counted as skipped. (b) Graphs built here for what that corpus
lacks: an If with a Conv in each branch and a Loop (with ``--float-subgraphs``), dynamic batch and sequence dims, an
initializer read by two Convs, one weight read by a Gemm and a MatMul, a MatMul self-attention
block (also with a -inf causal mask), and one CNN at opsets 13 to 21 (and with its initializers
listed as graph inputs, as old exporters wrote them).

Each model goes through ``onnxmp optimize -q --no-cache --no-adaround`` with calibration data
made from its test inputs: the sample and two perturbed copies, along the batch axis when every
input has the same fixed first dimension, else along a new leading axis. The run must exit 0
with an output that passes ``onnx.checker`` full check, holds only standard-domain ops, loads in
onnxruntime and gives outputs of the float model's shapes, finite wherever the float model's are,
on the calibration inputs; or exit 1 with one stderr line starting ``onnxmp: error:``. Anything
else (exit 2, an escaped exception, more lines, an "internal error") is a failure. The built
graphs must all be quantized.

Where the data comes from. The onnx 1.23.2 wheel ships ``simple``, ``pytorch-operator`` and
``pytorch-converted`` as folders with ``test_data_set_0``, ``light`` as flat files without test
inputs, and no ``node`` folder: the node models are made in memory by the wheel's own generators
(``onnx.backend.test.case.node.collect_testcases``, what ``backend-test-tools generate-data``
writes to ``node/``); a wheel that ships ``node/`` is read from disk instead. ``light`` is left
out: its ten ImageNet networks come without test inputs, and the smallest (SqueezeNet at
224x224) alone takes about 20 s.

Size. Of the 2,024 backend models (140 on disk, 1,884 node), 798 hold a quantized op (700 of them
node models). The test runs all 798: 71 s alone, 145 s on two shared cores (627 quantized, 132
refused, 39 skipped, measured by this test's own run; ``tests/corpus_refusals.tsv`` was written
from it). The refusals are
pinned by model and reason in ``tests/corpus_refusals.tsv`` (opset 6, below
``onnxmp.loader.MIN_OPSET``; no quantizable float op; sequence or optional inputs;
already-quantized models; NaN in the calibration data; one opset conversion onnx cannot do;
MatMuls inside a Scan body, which would stay float), so a
model that quantizes today and is refused tomorrow fails the test, whatever its error line says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import os
import warnings
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_cnn
from onnx import TensorProto, helper, numpy_helper

from onnxmp.cli import main
from onnxmp.quant.groups import QUANTIZED_OPS

BACKEND_DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
DISK_KINDS = ("node", "simple", "light", "pytorch-operator", "pytorch-converted")
NODE_STRIDE = 1  # every node model (the whole corpus)
REFUSALS = os.path.join(os.path.dirname(__file__), "corpus_refusals.tsv")
SAMPLES = 3  # the test sample and two perturbed copies
STANDARD_DOMAINS = {"", "ai.onnx"}


@dataclasses.dataclass
class Case:
    """One model and one test sample per real input (a list for a sequence, None for an empty
    optional); ``batch_axis`` says whether the first axis of every input is a batch axis."""

    name: str
    model: onnx.ModelProto
    sample: dict[str, object]
    batch_axis: bool | None = None  # None: decide from the declared shapes
    expect_quantized: bool = False  # built here: must quantize (and onnxruntime is not asked first)
    more_feeds: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)  # also checked
    options: tuple[str, ...] = ()  # more optimize options


@dataclasses.dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # "quantized", "refused", "skipped" or "failed"
    detail: str = ""


# ---------------------------------------------------------------------------- the backend corpus


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of a graph and of its subgraphs (If branches, Loop and Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _all_nodes(sub)


def _has_quantized_op(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QUANTIZED_OPS for node in _all_nodes(model.graph))


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _read_value(path: str, type_proto: onnx.TypeProto) -> object:
    """A test input file as numpy: a tensor, a list for a sequence, None for an empty optional."""
    with open(path, "rb") as handle:
        data = handle.read()
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(data)
        return numpy_helper.to_list(proto)
    if kind == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(data)
        return numpy_helper.to_optional(proto)
    tensor = TensorProto()
    tensor.ParseFromString(data)
    return numpy_helper.to_array(tensor)


def _disk_cases() -> list[Case]:
    cases = []
    for kind in DISK_KINDS:
        for folder in sorted(glob.glob(os.path.join(BACKEND_DATA, kind, "*", ""))):
            if not os.path.isfile(os.path.join(folder, "model.onnx")):
                continue
            model = onnx.load(os.path.join(folder, "model.onnx"))
            inputs = _real_inputs(model)
            files = [os.path.join(folder, "test_data_set_0", f"input_{i}.pb") for i in range(len(inputs))]
            if not all(os.path.isfile(f) for f in files):
                continue
            sample = {i.name: _read_value(f, i.type) for i, f in zip(inputs, files, strict=True)}
            cases.append(Case(f"{kind}/{os.path.basename(os.path.dirname(folder))}", model, sample))
    return cases


def _node_cases() -> list[Case]:
    """The node models from the wheel's generators (the wheel ships no ``node`` data folder)."""
    if glob.glob(os.path.join(BACKEND_DATA, "node", "*", "model.onnx")):
        return []  # read from disk instead
    from onnx.backend.test.case import node

    with warnings.catch_warnings():  # the generators compute some expected NaN/Inf on purpose
        warnings.simplefilter("ignore")
        generated = node.collect_testcases(None)
    cases = []
    for test in sorted(generated, key=lambda t: t.name):
        inputs, _ = test.data_sets[0]
        names = [i.name for i in _real_inputs(test.model)]
        sample = {name: _as_value(value) for name, value in zip(names, inputs, strict=False)}
        cases.append(Case("node/" + test.name, test.model, sample))
    return cases


def _as_value(value: object) -> object:
    """A generator's test input as onnxruntime takes it (they hold numpy scalars and protos too)."""
    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


def _onnxruntime_runs(case: Case) -> bool:
    try:
        _session(case.model).run(None, case.sample)
    except Exception:
        return False
    return True


def backend_cases(node_stride: int = NODE_STRIDE) -> list[Case]:
    """Backend models with a quantized op; every ``node_stride``-th node model."""
    node = [c for c in _node_cases() if _has_quantized_op(c.model)]
    return [c for c in _disk_cases() if _has_quantized_op(c.model)] + node[::node_stride]


# --------------------------------------------------------------------------- calibration data


def _declared_dim0(info: onnx.ValueInfoProto) -> int | None:
    shape = info.type.tensor_type.shape
    if not info.type.HasField("tensor_type") or not shape.dim:
        return None
    dim = shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _has_batch_axis(case: Case) -> bool:
    """True when every input has the same fixed first dimension: onnxmp then feeds the samples,
    concatenated along that axis, in chunks of exactly that size."""
    if case.batch_axis is not None:
        return case.batch_axis
    dims = {_declared_dim0(i) for i in _real_inputs(case.model)}
    arrays = [v for v in case.sample.values() if isinstance(v, np.ndarray)]
    return (len(dims) == 1 and None not in dims and bool(arrays)
            and all(a.ndim >= 1 and len(a) == next(iter(dims)) for a in arrays))


def _variants(value: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The test sample and perturbed copies; parameter-like inputs (integers, vectors) repeat."""
    if value.dtype.kind != "f" or value.ndim < 2:
        return [value] * SAMPLES
    noise = [1 + 0.05 * rng.standard_normal(value.shape) for _ in range(SAMPLES - 1)]
    return [value, *[(value * n).astype(value.dtype) for n in noise]]


def calibration(case: Case) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """The .npz arrays (tensor inputs only) and the feeds onnxmp will run them as."""
    rng = np.random.default_rng(0)
    batched = _has_batch_axis(case)
    arrays, per_sample = {}, []
    for name, value in case.sample.items():
        if not isinstance(value, np.ndarray):
            continue  # a sequence or an optional: no .npz can hold it, onnxmp must refuse
        copies = _variants(value, rng)
        arrays[name] = np.concatenate(copies) if batched else np.stack(copies)
        per_sample.append((name, copies))
    feeds = [{name: copies[k] for name, copies in per_sample} for k in range(SAMPLES)]
    return arrays, feeds


# ------------------------------------------------------------------------------ the check


def _output_problem(out_path: str, case: Case, feeds: list[dict[str, np.ndarray]]) -> str | None:
    """Why the written model breaks the output contract, or None."""
    model = onnx.load(out_path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        return f"checker: {str(exc).splitlines()[0]}"
    domains = {node.domain for node in _all_nodes(model.graph)}
    if not domains <= STANDARD_DOMAINS or model.functions:
        return f"ops of non-standard domains {sorted(domains - STANDARD_DOMAINS)}"
    try:
        quantized, reference = _session(out_path), _session(case.model)
    except Exception as exc:
        return f"onnxruntime cannot load it: {str(exc).splitlines()[0]}"
    for feed in feeds + case.more_feeds:
        try:
            outputs = quantized.run(None, feed)
        except Exception as exc:
            return f"onnxruntime fails running it: {str(exc).splitlines()[0]}"
        for got, want in zip(outputs, reference.run(None, feed), strict=True):
            got, want = np.asarray(got), np.asarray(want)
            if got.shape != want.shape:
                return f"output shape {got.shape}, the float model's is {want.shape}"
            if got.dtype.kind == "f" and not np.isfinite(got[np.isfinite(want)]).all():
                return "non-finite outputs where the float model's are finite"
    return None


def run_case(case: Case, folder: str, target: str = "generic") -> Outcome:
    """Quantize one model with the CLI and classify what happened (``generic``: quantizers around
    every quantizable op, the placement that takes every op type through the pipeline)."""
    if not case.expect_quantized and not _onnxruntime_runs(case):
        return Outcome(case.name, "skipped")
    os.makedirs(folder, exist_ok=True)
    model_path, calib_path = os.path.join(folder, "model.onnx"), os.path.join(folder, "calib.npz")
    out_path = os.path.join(folder, "out.onnx")
    onnx.save(case.model, model_path)
    arrays, feeds = calibration(case)
    np.savez(calib_path, **arrays)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            code = main(["optimize", model_path, out_path, "-q", "--no-cache", "--calib", calib_path,
                         "--no-adaround", "--target", target, *case.options])
    except BaseException as exc:  # an escaped exception is a failure, whatever it is
        return Outcome(case.name, "failed", f"raised {type(exc).__name__}: {exc}")
    err = stderr.getvalue().strip()
    if code == 1:
        lines = err.splitlines()
        if os.path.exists(out_path):
            return Outcome(case.name, "failed", f"refused ({err}) but left an output file behind")
        if len(lines) == 1 and lines[0].startswith("onnxmp: error:") and "internal error" not in err:
            return Outcome(case.name, "refused", err)
        return Outcome(case.name, "failed", f"exit 1 but stderr is {err!r}")
    if code != 0:
        return Outcome(case.name, "failed", f"exit {code}: {err}")
    problem = _output_problem(out_path, case, feeds)
    return Outcome(case.name, "failed" if problem else "quantized", problem or "")


# ------------------------------------------------------------------ graphs built for this test


def _weight(rng: np.random.Generator, name: str, *shape: int) -> TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)


def _const(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inputs, outputs, inits, opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "corpus", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _float_info(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _images(rng: np.random.Generator, channels: int = 3, size: int = 8) -> np.ndarray:
    return rng.standard_normal((2, channels, size, size)).astype(np.float32)


def _control_flow(rng: np.random.Generator) -> Case:
    """A Conv stem, an If with a Conv in each branch (one weight from the outer scope, one local),
    a Loop whose body runs a Conv on a weight the top level quantizes, and a Gemm head."""
    then_branch = helper.make_graph(
        [helper.make_node("Conv", ["h", "w_then"], ["t"], pads=[1, 1, 1, 1])], "then", [], [_float_info("t", None)])
    else_branch = helper.make_graph(
        [helper.make_node("Conv", ["h", "w_else"], ["e"], pads=[1, 1, 1, 1])], "else", [],
        [_float_info("e", None)], [_weight(rng, "w_else", 8, 8, 3, 3)])
    body = helper.make_graph(
        [helper.make_node("Conv", ["v", "w_mid"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Mul", ["c", "half"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _float_info("v", None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _float_info("v_out", None)],
        [_const("half", np.float32(0.5))])
    nodes = [
        helper.make_node("Conv", ["x", "w_stem"], ["stem"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["stem"], ["h"]),
        helper.make_node("Conv", ["h", "w_mid"], ["mid"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["mid"], ["mean"], keepdims=0),
        helper.make_node("Greater", ["mean", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["branch"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Loop", ["trips", "", "branch"], ["looped"], body=body),
        helper.make_node("GlobalAveragePool", ["looped"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w_fc"], ["y"], transB=1),
    ]
    inits = [_weight(rng, "w_stem", 8, 3, 3, 3), _weight(rng, "w_mid", 8, 8, 3, 3), _weight(rng, "w_then", 8, 8, 3, 3),
             _weight(rng, "w_fc", 4, 8), _const("zero", np.float32(0)), _const("trips", np.int64(2))]
    model = _model(nodes, [_float_info("x", ["N", 3, 8, 8])], [_float_info("y", ["N", 4])], inits)
    # the bodies' Convs would stay float: refused without --float-subgraphs (test_feeds.py checks that)
    return Case("built/if_loop", model, {"x": _images(rng)}, batch_axis=True, expect_quantized=True,
                options=("--float-subgraphs",))


def _dynamic_dims(rng: np.random.Generator) -> Case:
    """Symbolic batch and sequence dims; the output must still run at other lengths."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("Add", ["a", "b1"], ["ab"]),
        helper.make_node("Relu", ["ab"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    inits = [_weight(rng, "w1", 16, 32), _const("b1", np.zeros(32, np.float32)), _weight(rng, "w2", 32, 8)]
    model = _model(nodes, [_float_info("x", ["N", "T", 16])], [_float_info("y", ["N", "T", 8])], inits)
    other = [{"x": rng.standard_normal((n, t, 16)).astype(np.float32)} for n, t in ((1, 3), (5, 11))]
    return Case("built/dynamic_batch_and_sequence", model, {"x": rng.standard_normal((2, 7, 16)).astype(np.float32)},
                batch_axis=True, expect_quantized=True, more_feeds=other)


def _shared_initializer(rng: np.random.Generator) -> Case:
    """One initializer read by two Convs in a row."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [_weight(rng, "w", 8, 8, 3, 3), _const("b", 0.1 * rng.standard_normal(8).astype(np.float32))]
    model = _model(nodes, [_float_info("x", ["N", 8, 8, 8])], [_float_info("y", ["N", 8, 8, 8])], inits)
    return Case("built/shared_initializer_two_convs", model, {"x": _images(rng, 8)}, batch_axis=True,
                expect_quantized=True)


def _weight_two_layers(rng: np.random.Generator, trans_b: int) -> Case:
    """One weight read by a Gemm and a MatMul: the same per-channel axis (transB=0), or a conflicting
    one (transB=1, which onnxmp leaves to the first layer)."""
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["y"]),
    ]
    inits = [_weight(rng, "w", 16, 16), _const("b", 0.1 * rng.standard_normal(16).astype(np.float32))]
    model = _model(nodes, [_float_info("x", ["N", 16])], [_float_info("y", ["N", 16])], inits)
    return Case(f"built/gemm_and_matmul_one_weight_transB{trans_b}", model,
                {"x": rng.standard_normal((4, 16)).astype(np.float32)}, batch_axis=True, expect_quantized=True)


def _attention(rng: np.random.Generator, causal: bool) -> Case:
    """LayerNorm, MatMul Q/K/V on constant weights, Q K^T between two activations, Softmax,
    MatMul with V, output projection, residual Add; optionally a causal mask of -inf."""
    dim, length = 16, 6
    scores = "scaled"
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
        helper.make_node("MatMul", ["h", "wq"], ["q"]),
        helper.make_node("MatMul", ["h", "wk"], ["k"]),
        helper.make_node("MatMul", ["h", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "inv_sqrt_d"], ["scaled"]),
    ]
    inits = [_const("gamma", np.ones(dim, np.float32)), _const("beta", np.zeros(dim, np.float32)),
             _weight(rng, "wq", dim, dim), _weight(rng, "wk", dim, dim), _weight(rng, "wv", dim, dim),
             _weight(rng, "wo", dim, dim), _const("inv_sqrt_d", np.float32(1 / np.sqrt(dim)))]
    if causal:
        mask = np.triu(np.full((length, length), -np.inf, np.float32), k=1)
        nodes.append(helper.make_node("Add", ["scaled", "mask"], ["masked"]))
        inits.append(_const("mask", mask))
        scores = "masked"
    nodes += [
        helper.make_node("Softmax", [scores], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"]),
        helper.make_node("MatMul", ["a", "wo"], ["o"]),
        helper.make_node("Add", ["o", "x"], ["y"]),
    ]
    model = _model(nodes, [_float_info("x", ["N", length, dim])], [_float_info("y", ["N", length, dim])], inits)
    name = "built/self_attention" + ("_causal_neg_inf_mask" if causal else "")
    return Case(name, model, {"x": rng.standard_normal((2, length, dim)).astype(np.float32)}, batch_axis=True,
                expect_quantized=True)


def _cnn(rng: np.random.Generator, opset: int, initializers_as_inputs: bool = False) -> Case:
    """conftest's CNN (BatchNorm, Concat, residual Add, Gemm head) at one opset; optionally with
    its initializers also listed as graph inputs, as old exporters wrote them."""
    model = make_cnn(seed=opset, opset=opset)
    name = f"built/cnn_opset{opset}"
    if initializers_as_inputs:
        model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                 for t in model.graph.initializer)
        name += "_initializers_as_inputs"
    return Case(name, model, {"x": _images(rng)}, batch_axis=True, expect_quantized=True)


def built_cases() -> list[Case]:
    rng = np.random.default_rng(8)
    return [
        _control_flow(rng), _dynamic_dims(rng), _shared_initializer(rng),
        _weight_two_layers(rng, 0), _weight_two_layers(rng, 1), _attention(rng, False), _attention(rng, True),
        *[_cnn(rng, opset) for opset in (13, 15, 17, 19, 21)], _cnn(rng, 13, initializers_as_inputs=True),
    ]


# --------------------------------------------------------------------------------- the tests


def _run_all(cases: list[Case], folder: str, target: str = "generic") -> list[Outcome]:
    return [run_case(case, os.path.join(folder, str(i)), target) for i, case in enumerate(cases)]


def _summary(outcomes: list[Outcome]) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("quantized", "refused", "skipped", "failed")}
    return (f"corpus: {len(outcomes)} tried, {counts['quantized']} quantized, {counts['refused']} refused, "
            f"{counts['skipped']} skipped (onnxruntime cannot run), {counts['failed']} failed")


def _report(capsys: pytest.CaptureFixture, folder: str, label: str, outcomes: list[Outcome]) -> str:
    """The summary line, on the terminal (also without -s) and in a file with every outcome."""
    line = f"{label} {_summary(outcomes)}"
    with open(os.path.join(folder, "summary.txt"), "w", encoding="utf-8") as handle:
        handle.write(line + "\n" + "".join(f"{o.status:9} {o.name} {o.detail}\n" for o in outcomes))
    with capsys.disabled():
        print(f"\n{line} (every model: {folder}/summary.txt)")
    return line


def _failures(outcomes: list[Outcome]) -> str:
    return "\n".join(f"  {o.name}: {o.detail}" for o in outcomes if o.status == "failed")


def test_backend_corpus(tmp_path_factory, capsys):
    """onnx's backend models: every one that onnxruntime runs gives a valid model or one clear error."""
    folder = str(tmp_path_factory.mktemp("backend"))
    outcomes = _run_all(backend_cases(), folder)
    line = _report(capsys, folder, "backend", outcomes)
    assert not _failures(outcomes), f"{line}\n{_failures(outcomes)}"
    assert len(outcomes) >= 790, f"{line}: did the installed onnx stop shipping its test data?"
    expected = expected_refusals()
    got = {o.name: refusal_reason(o.detail) for o in outcomes if o.status == "refused"}
    new = {n: got[n] for n in got if expected.get(n) != got[n]}
    gone = {n: r for n, r in expected.items() if n not in got and any(o.name == n for o in outcomes)}
    assert not new, f"{line}: refused, not expected (or for another reason): {new}"
    assert not gone, f"{line}: expected refusals that no longer happen (update {REFUSALS}): {gone}"


REASONS = (("opset below 7", "is older than 7"), ("nothing to quantize", "has no op onnxmp can quantize"),
           ("sequence input", "is a sequence"), ("optional input", "is an optional"),
           ("already quantized", "already quantized"), ("opset conversion", "cannot convert the model from opset"),
           ("NaN or Inf in the data", "holds NaN or Inf"),
           ("weighted ops in a subgraph", "quantizes the main graph only"))


def refusal_reason(message: str) -> str:
    """The short reason of a refusal line (``other: ...`` when it names none of the known ones)."""
    return next((key for key, text in REASONS if text in message), f"other: {message}")


def expected_refusals() -> dict[str, str]:
    """The pinned refusals: model name -> reason."""
    with open(REFUSALS, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip() and not line.startswith("#")]
    return {name: reason for name, reason in rows}


@pytest.mark.parametrize("target", ["generic", "ort"])
def test_built_corpus(tmp_path_factory, capsys, target):
    """Control flow, dynamic dims, shared weights, attention and opsets 13 to 21: all quantized,
    around every op (generic) and where onnxruntime computes in integer (ort)."""
    folder = str(tmp_path_factory.mktemp(f"built-{target}"))
    outcomes = _run_all(built_cases(), folder, target)
    line = _report(capsys, folder, f"built ({target})", outcomes)
    not_quantized = "\n".join(f"  {o.name}: {o.status} {o.detail}" for o in outcomes if o.status != "quantized")
    assert not not_quantized, f"{line}\n{not_quantized}"
