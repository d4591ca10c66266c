"""``onnxmp finetune``: LSQ fine-tuning of a QDQ model's step sizes and weights.

The main process builds the training graph (``lsq``), writes a job folder, and runs
``trainer.py`` in a separate environment with onnxruntime-training (it would replace the
inference package if installed beside it); the learned parameters come back as an ``.npz`` and
are written into a plain QDQ model: activation scales replaced, weights requantized with their
learned per-channel step, int32 biases requantized with input scale × weight scale.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxmp.errors import CalibrationError, ConfigError, ModelError
from onnxmp.finetune.lsq import TrainingGraph, training_graph
from onnxmp.model.files import save_model
from onnxmp.model.loader import load_model, prepare_model
from onnxmp.output.export import integer_tensor
from onnxmp.quant import numerics
from onnxmp.runtime.data import CalibrationSet, load_calibration, make_calibration_set, read_npz
from onnxmp.runtime.session import make_session, observed_tensors, run_session
from onnxmp.targets.shapes import fix_symbolic_dims

logger = logging.getLogger(__name__)

# onnx 1.17: the newest whose default IR version (10) onnxruntime-training 1.19.2 loads
TRAINING_PACKAGES = ("onnxruntime-training-cpu==1.19.2", "onnx==1.17.0", "numpy")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer.py")


def default_train_env() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "onnxmp", "train-env")


def train_python(env: str | None = None) -> str:
    """The training environment's Python: $ONNXMP_TRAIN_PYTHON, else ``env``'s."""
    explicit = os.environ.get("ONNXMP_TRAIN_PYTHON")
    if explicit:
        return explicit
    return os.path.join(os.path.abspath(env or default_train_env()), "bin", "python")


def setup_train_env(env: str | None = None) -> str:
    """Create the training environment once (a venv with onnxruntime-training); returns its Python."""
    env = os.path.abspath(env or default_train_env())
    if sys.version_info >= (3, 13):
        raise ConfigError("onnxruntime-training 1.19.2 needs Python 3.12 or older; run the setup with such a Python")
    subprocess.run([sys.executable, "-m", "venv", env], check=True)
    subprocess.run([os.path.join(env, "bin", "python"), "-m", "pip", "install", "-q", *TRAINING_PACKAGES], check=True)
    return os.path.join(env, "bin", "python")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 5
    learning_rate: float = 1e-4
    batch: int = 16
    seed: int = 0
    train_env: str | None = None
    calib_layout: str = "auto"  # how the data's arrays are read (runtime.data.LAYOUTS)


def run_worker(workdir: str, job: dict, progress: Callable[[dict], None] | None = None,
               env: str | None = None) -> None:
    """Run ``trainer.py`` on a job folder in the training environment, relaying its progress."""
    python = train_python(env)
    if not os.path.isfile(python):
        raise ConfigError(f"no LSQ training environment at {python}; create it once with: onnxmp finetune --setup")
    with open(os.path.join(workdir, "job.json"), "w", encoding="utf-8") as handle:
        json.dump(job, handle)
    process = subprocess.Popen([python, WORKER, workdir], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("{") and progress:
            progress(json.loads(line))
    err = process.stderr.read()
    code = process.wait()
    if code != 0:  # the runtime logs info lines on stderr too: report the last other one
        lines = [ln for ln in err.strip().splitlines() if ln.strip() and "[I:" not in ln and "[W:" not in ln]
        cause = f"killed by signal {-code}" if code < 0 else (lines[-1].strip() if lines else f"exit status {code}")
        raise ModelError(f"LSQ training failed in the training environment ({os.path.basename(python)}): "
                         f"{cause[:300]}; the job is kept in {workdir}")


def _training_data(train: dict[str, np.ndarray] | None, float_model: onnx.ModelProto, labels: np.ndarray | None,
                   source: str, layout: str = "auto") -> tuple[CalibrationSet, dict[str, np.ndarray], str]:
    """The validated inputs (``train``'s arrays, or the folder ``source``), and them plus the loss
    target: the labels (cross-entropy), or the float model's values of the trained output
    (distillation by mean squared error)."""
    data = make_calibration_set(train, float_model, source, layout) if train is not None else load_calibration(
        source, float_model, layout)
    if not data.batched:
        return data, *_feed_training_data(data, float_model, labels, source)
    if labels is not None:
        if len(labels) != data.num_samples:
            raise CalibrationError(f"{source}: {len(labels)} labels for {data.num_samples} samples")
        return data, {**data.arrays, "labels": labels.astype(np.int64).reshape(-1)}, "cross_entropy"
    name = trained_output(float_model)
    session = make_session(float_model, outputs=[name])
    values = [run_session(session, [name], feeds)[0] for feeds in data.feeds()]
    target = np.concatenate(values)
    return data, {**data.arrays, "target": target}, "mse"


def _feed_training_data(data: CalibrationSet, float_model: onnx.ModelProto, labels: np.ndarray | None,
                        source: str) -> tuple[dict[str, np.ndarray], str]:
    """Whole feeds, trained one per step: each input and its distillation target stored under
    ``"<feed>/<name>"`` (shapes may differ between feeds)."""
    if labels is not None:
        raise CalibrationError(f"{source}: labels need samples along the first axis; with whole feeds (a model "
                               "without a batch axis, or feeds of their own shapes) LSQ distils from the float model "
                               "instead: give no labels")
    name = trained_output(float_model)
    session = make_session(float_model, outputs=[name])
    stored: dict[str, np.ndarray] = {}
    for i, feed in enumerate(data.feeds()):
        stored.update({f"{i}/{k}": v for k, v in feed.items()})
        stored[f"{i}/target"] = run_session(session, [name], feed)[0]
    return stored, "mse"


def trained_output(model: onnx.ModelProto) -> str:
    """The tensor the loss reads: the first output, or the logits where a Softmax / Sigmoid
    squashes it (cross-entropy wants logits; distilling probabilities lets the logits drift)."""
    return observed_tensors(model)[0]


def _trained_part(graph: TrainingGraph, name: str) -> TrainingGraph:
    """The training graph up to ``name``; quantizers after it (a Softmax output's) keep their
    post-training scales."""
    model = _ending_at(graph.model, name)
    kept = {t.name for t in model.graph.initializer}
    return dataclasses.replace(graph, model=model, quantizers=tuple(q for q in graph.quantizers if q.scale in kept),
                               weights=tuple(w for w in graph.weights if w in kept))


def _ending_at(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The graph with ``name`` as its only output and the nodes it does not need removed."""
    if [o.name for o in model.graph.output] == [name]:
        return model
    producers = {o: n for n in model.graph.node for o in n.output}
    needed, stack = set(), [name]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(i for i in node.input if i)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [n for n in model.graph.node if id(n) in needed]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    del out.graph.output[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    info = known.get(name)
    if info is None or not info.type.tensor_type.HasField("shape"):  # the training runtime wants a rank
        raise ModelError(f"cannot infer the shape of {name}, the tensor LSQ trains on")
    out.graph.output.append(info)
    used = {i for n in kept for i in n.input}
    live = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(live)
    return out


def finetune(quantized: str, float_path: str, output: str, data_path: str, config: FinetuneConfig = FinetuneConfig(),
             workdir: str | None = None, progress: Callable[[dict], None] | None = None,
             labels_path: str | None = None) -> dict:
    """LSQ-fine-tune ``quantized`` (an onnxmp QDQ model of ``float_path``) on ``data_path`` and
    write the result to ``output``. ``workdir`` keeps the job (a rerun resumes from its last
    checkpoint). Returns a record of the epochs."""
    qdq = load_qdq_model(quantized)
    float_model = prepare_model(load_model(float_path), os.path.dirname(os.path.abspath(float_path)))
    graph = training_graph(qdq, float_model)
    graph = _trained_part(graph, trained_output(float_model))
    raw = None if os.path.isdir(data_path) else read_npz(data_path)  # a folder: samples or feeds, no labels
    labels = raw.pop("labels", None) if raw is not None else None
    if labels_path:
        try:
            labels = np.load(labels_path)
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{labels_path}: cannot read labels ({exc})") from exc
    inputs, data, loss = _training_data(raw, float_model, labels, data_path, config.calib_layout)
    workdir = workdir or output + ".lsq"
    os.makedirs(workdir, exist_ok=True)
    batch = min(config.batch, inputs.num_samples)
    static = _needs_static_shapes(graph.model)
    train_model = graph.model
    if static:
        train_model = fix_symbolic_dims(graph.model, inputs, {}, batch)
    onnx.save(train_model, os.path.join(workdir, "train.onnx"))
    np.savez(os.path.join(workdir, "data.npz"), **data)
    epochs: list[dict] = []

    def relay(line: dict) -> None:
        epochs.append(line)
        if progress:
            progress(line)

    job = {"trainable": [q.scale for q in graph.quantizers] + list(graph.weights), "loss": loss,
           "inputs": [i.name for i in graph.model.graph.input], "epochs": config.epochs, "batch": batch,
           "drop_last": static, "feeds": 0 if inputs.batched else inputs.num_feeds,
           "learning_rate": config.learning_rate, "seed": config.seed}
    run_worker(workdir, job, relay, config.train_env)
    learned = dict(np.load(os.path.join(workdir, "learned.npz")))
    save_model(write_back(qdq, graph, learned), output)
    return {"epochs": epochs, "workdir": workdir, "loss": loss}


def _needs_static_shapes(model: onnx.ModelProto) -> bool:
    """onnxruntime-training's MaxPoolGrad sizes its output from the graph's static shapes (with
    symbolic ones it fails: "Can broadcast 0 by ... 96"), so such graphs train at one batch size."""
    return any(n.op_type == "MaxPool" for n in model.graph.node)


def load_qdq_model(path: str) -> onnx.ModelProto:
    """A QDQ model (the float-model checks of ``load_model`` would refuse it)."""
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        raise ModelError(f"{path}: not a QDQ model; give finetune the output of onnxmp optimize")
    return model


def write_back(qdq: onnx.ModelProto, graph: TrainingGraph, learned: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The QDQ model with the learned step sizes and weights: integer weights requantized with
    the learned step, int32 biases with learned input scale × learned weight scale."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    inits = {t.name: t for t in out.graph.initializer}
    producers = {o: n for n in out.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in out.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    scale_of: dict[str, np.ndarray] = {}  # dequantized tensor -> learned scale
    for q in graph.quantizers:
        dq = producers[q.tensor]
        scale = np.asarray(learned[q.scale], np.float32)
        scale_of[q.tensor] = scale
        if q.kind == "activation":
            qn = producers[dq.input[0]]
            for name in {qn.input[1], dq.input[1]}:
                _replace(inits[name], scale.reshape(numpy_helper.to_array(inits[name]).shape))
        else:
            w = np.asarray(learned[q.tensor + "_lsq_float"], np.float32)
            ints = numerics.quantize_symmetric(w, scale, q.axis if q.axis is not None else 0, q.bits) if scale.ndim else \
                np.clip(np.round(w / scale), *numerics.signed_range(q.bits)).astype(np.int32)
            _replace(inits[dq.input[1]], scale)
            inits[dq.input[0]].CopyFrom(integer_tensor(dq.input[0], ints, q.bits))
    quantized = {q.tensor for q in graph.quantizers}
    for trained in graph.weights:
        name = trained.removesuffix("_lsq_float")
        if name in quantized:
            continue
        dq = producers[name]  # an int32 bias
        layer = readers[name][0]
        s_in, s_w = scale_of.get(layer.input[0]), scale_of.get(layer.input[1])
        if s_in is None or s_w is None:
            raise ModelError(f"bias {name}: cannot find the learned scales of {layer.name}'s input and weight")
        scale = (np.float32(s_in) * s_w).astype(np.float32)
        ints = np.round(np.asarray(learned[trained], np.float32) / scale)
        _replace(inits[dq.input[1]], scale)
        inits[dq.input[0]].CopyFrom(integer_tensor(dq.input[0], np.clip(ints, -(2**31), 2**31 - 1), 32))
    return out


def _replace(tensor: TensorProto, values: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(np.asarray(values, dtype=np.float32), tensor.name))
