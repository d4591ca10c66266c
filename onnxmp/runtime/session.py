"""Creating onnxruntime sessions and running a model over a calibration set."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
import onnxruntime as ort

from onnxmp.errors import ModelError
from onnxmp.model.large import is_large, save_with_external_data
from onnxmp.runtime.data import CalibrationSet

# onnxruntime (1.2x) re-quantizes float constant weights and biases of Conv/MatMul between Q/DQ
# activations to int8/int32 at session creation; the simulation's sessions, whose suffixes bake the
# (already fake-quantized) baseline weights in as constants, must compute with the weights given.
KEEP_FLOAT_WEIGHTS = ["WeightBiasQuantization"]
# It also pre-packs constant MatMul weights for a kernel that sums in another order than the one
# for fed weights: on-grid sums then fall on the other side of the next quantizer's rounding ties
# (MiniLM's Phase 1 SQNRs moved by up to 0.06 dB between baked and fed weights).
NO_PREPACKING = {"session.disable_prepacking": "1"}
# onnxruntime threads per session when set (worker processes: their share of the cores), else
# onnxruntime's default (one per physical core).
THREADS_VARIABLE = "ONNXMP_THREADS"
# Every session allocates from one arena registered with onnxruntime's environment, instead of an
# arena of its own: a fresh arena's memory is new to the process, and its first two runs (the
# second lays out the memory pattern) fault every page in. Phase 1 makes a session per cut and
# runs each a few times: on ppocr_det (32 samples of 3x256x384) the first evaluation at a cut took
# 1.1 s and the next ones 0.3 s; with one arena Phase 1 took 18 s instead of 29 s, same results.
SHARED_ARENA = {"session.use_env_allocators": "1"}


def make_session(model: onnx.ModelProto | bytes | str, optimized: bool = True,
                 extra_config: dict[str, str] | None = None, outputs: list[str] | None = None,
                 keep_float_weights: bool = False, optimized_path: str | None = None) -> ort.InferenceSession:
    """A CPU session on a model (proto, serialized bytes or path), also computing ``outputs``
    (any tensor names, whatever their types; a proto is not copied for them). A model over
    ``large.LARGE_BYTES`` goes through a temporary file with external data. ``keep_float_weights``
    (simulation sessions): constant weights compute as they are and as they would if fed (no
    re-quantization, no pre-packing); else the session is onnxruntime's default.
    ``optimized_path``: where onnxruntime also writes the graph it optimized the model into."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Pool threads spin while waiting for work (onnxruntime's default): Phase 1 of a 100-layer CNN,
    # thousands of small nodes per run, took 27.6 s with sleeping threads, 23.1 s with spinning
    # ones. A worker process gets its share of the cores so that pools do not compete.
    threads = os.environ.get(THREADS_VARIABLE, "")
    options.intra_op_num_threads = int(threads) if threads.isdigit() else 0
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    _register_shared_arena()
    for key, value in {**SHARED_ARENA, **(NO_PREPACKING if keep_float_weights else {}), **(extra_config or {})}.items():
        options.add_session_config_entry(key, value)
    disabled = KEEP_FLOAT_WEIGHTS if keep_float_weights else []
    if not isinstance(model, onnx.ModelProto):
        return _session(model, options, disabled)
    with _added_outputs(model, outputs or []):
        if not is_large(model):
            return _session(model.SerializeToString(), options, disabled)
        with tempfile.TemporaryDirectory(prefix="onnxmp-session-") as folder:
            path = os.path.join(folder, "model.onnx")
            save_with_external_data(model, path)
            return _session(path, options, disabled)


@functools.cache
def _register_shared_arena() -> None:
    """The process's one CPU arena (made once; every session takes ``SHARED_ARENA``)."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, None)


def _session(payload: bytes | str, options: ort.SessionOptions, disabled: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0]}") from exc


@contextlib.contextmanager
def _added_outputs(model: onnx.ModelProto, names: list[str]) -> Iterator[None]:
    """``model`` with these extra graph outputs (untyped: onnxruntime infers them) meanwhile."""
    present = {o.name for o in model.graph.output}
    extra = [n for n in dict.fromkeys(names) if n not in present]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
    try:
        yield
    finally:
        for _ in extra:
            model.graph.output.pop()


def run_session(session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One run; onnxruntime's failure becomes a one-line ModelError."""
    try:
        return session.run(names, feeds)
    except Exception as exc:
        raise ModelError(f"onnxruntime failed running the model: {str(exc).strip().splitlines()[0]}") from exc


def run_batches(session: ort.InferenceSession, data: CalibrationSet, output_names: list[str],
                extra_feeds: dict[str, np.ndarray] | None = None) -> Iterator[list[np.ndarray]]:
    """Run every sample, a run at a time: each run's outputs, flattened float32."""
    for feeds in data.feeds():
        if extra_feeds:
            feeds = {**feeds, **extra_feeds}
        yield [np.asarray(value, dtype=np.float32).reshape(-1) for value in run_session(session, output_names, feeds)]


def run_over(session: ort.InferenceSession, data: CalibrationSet, output_names: list[str],
             extra_feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Run every sample; each output's values over all runs, flattened and concatenated."""
    return concatenate_runs(run_batches(session, data, output_names, extra_feeds), len(output_names))


def concatenate_runs(runs: Iterable[list[np.ndarray]], count: int) -> list[np.ndarray]:
    """Each of ``count`` outputs' values over ``runs``, concatenated."""
    chunks: list[list[np.ndarray]] = [[] for _ in range(count)]
    for values in runs:
        for store, value in zip(chunks, values, strict=True):
            store.append(value)
    return [np.concatenate(store) for store in chunks]


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


# Output activations whose inputs are measured instead: they squash differences (a saturated
# softmax hides a wrong logit), which makes SQNR of their outputs a poor, noisy sensitivity signal.
_SQUASHING_OUTPUT_OPS = {"Softmax", "LogSoftmax", "Sigmoid"}
_SHAPE_ONLY_OPS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}


def observed_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors SQNR is measured on: the graph outputs, except that an output made by a
    Softmax / LogSoftmax / Sigmoid (possibly followed by reshapes) is measured at that op's input,
    the logits."""
    producers = {o: n for n in model.graph.node for o in n.output}
    observed = []
    for name in output_names(model):
        node = producers.get(name)
        while node is not None and node.op_type in _SHAPE_ONLY_OPS:
            node = producers.get(node.input[0])
        observed.append(node.input[0] if node is not None and node.op_type in _SQUASHING_OUTPUT_OPS else name)
    return list(dict.fromkeys(observed))


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the given float tensors."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy
