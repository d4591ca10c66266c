"""LSQ training, run by the onnxruntime-training environment's Python (not imported by onnxmp).

    <train-env>/bin/python trainer.py WORKDIR

WORKDIR holds ``job.json`` (what to train), ``train.onnx`` (the LSQ training graph) and
``data.npz`` (inputs, and ``target`` or ``labels``; with ``"feeds": n``, n whole feeds keyed
``"<feed>/<name>"``). Writes ``artifacts/`` (onnxruntime-training's training, eval and optimizer
graphs and the checkpoint), a checkpoint after every epoch
(``checkpoint``, ``progress.json``: a rerun resumes after the last finished epoch), one JSON line
per epoch on stdout, and ``learned.npz`` (every trainable parameter) at the end. With
``"mode": "gradients"`` it runs one forward and backward pass and writes ``gradients.npz``.

Depends only on numpy, onnx and onnxruntime-training (1.19.2): its ``onnxruntime.training``
package imports torch for ``optim``, which is not used here, so that module is stubbed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types

import numpy as np
import onnx

sys.modules.setdefault("onnxruntime.training.optim", types.ModuleType("onnxruntime.training.optim"))
from onnxruntime.training import artifacts  # noqa: E402
from onnxruntime.training.api import CheckpointState, Module, Optimizer  # noqa: E402


def _artifacts(workdir: str, job: dict) -> str:
    folder = os.path.join(workdir, "artifacts")
    if os.path.isfile(os.path.join(folder, "checkpoint")):
        return folder
    os.makedirs(folder, exist_ok=True)
    model = onnx.load(os.path.join(workdir, "train.onnx"))
    trainable = set(job["trainable"])
    frozen = [t.name for t in model.graph.initializer if t.name not in trainable]
    loss = artifacts.LossType.CrossEntropyLoss if job["loss"] == "cross_entropy" else artifacts.LossType.MSELoss
    artifacts.generate_artifacts(model, requires_grad=sorted(trainable), frozen_params=frozen, loss=loss,
                                 optimizer=artifacts.OptimType.AdamW, artifact_directory=folder)
    return folder


def _batches(data: dict[str, np.ndarray], inputs: list[str], batch: int, seed: int, drop_last: bool = False,
             feeds: int = 0):
    """Shuffled batches; ``drop_last``: only full ones (a graph with static shapes); ``feeds``:
    the data is that many whole feeds (``"<feed>/<name>"``), one per step."""
    if feeds:
        for i in np.random.default_rng(seed).permutation(feeds):
            yield [data[f"{i}/{name}"] for name in inputs]
        return
    n = len(data[inputs[0]])
    order = np.random.default_rng(seed).permutation(n)
    for start in range(0, n, batch):
        index = order[start:start + batch]
        if drop_last and len(index) < batch:
            return
        yield [data[name][index] for name in inputs]


def main(workdir: str) -> None:
    with open(os.path.join(workdir, "job.json"), encoding="utf-8") as handle:
        job = json.load(handle)
    folder = _artifacts(workdir, job)
    checkpoint = os.path.join(workdir, "checkpoint")
    progress_path = os.path.join(workdir, "progress.json")
    resumed = os.path.isfile(checkpoint) and os.path.isfile(progress_path)
    state = CheckpointState.load_checkpoint(checkpoint if resumed else os.path.join(folder, "checkpoint"))
    module = Module(os.path.join(folder, "training_model.onnx"), state, os.path.join(folder, "eval_model.onnx"))
    data = dict(np.load(os.path.join(workdir, "data.npz")))
    target = "labels" if job["loss"] == "cross_entropy" else "target"
    if job["loss"] == "cross_entropy":
        data[target] = data[target].astype(np.int64)
    names = job["inputs"] + [target]
    if job.get("mode") == "gradients":
        module.train()
        module.lazy_reset_grad()
        loss = module(*[data[f"0/{n}" if job.get("feeds") else n] for n in names])
        grads = {name: np.array(state.parameters[name].grad) for name in job["trainable"]}
        np.savez(os.path.join(workdir, "gradients.npz"), loss=np.float64(loss), **grads)
        return
    optimizer = Optimizer(os.path.join(folder, "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(job["learning_rate"])
    done = 0
    if resumed:
        with open(progress_path, encoding="utf-8") as handle:
            done = json.load(handle)["epochs_done"]
    for epoch in range(done, job["epochs"]):
        start, losses = time.perf_counter(), []
        module.train()
        for batch in _batches(data, names, job["batch"], job["seed"] + epoch, job.get("drop_last", False),
                              job.get("feeds", 0)):
            losses.append(float(module(*batch)))
            optimizer.step()
            module.lazy_reset_grad()
        CheckpointState.save_checkpoint(state, checkpoint)
        with open(progress_path, "w", encoding="utf-8") as handle:
            json.dump({"epochs_done": epoch + 1}, handle)
        print(json.dumps({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - start}),
              flush=True)
    learned = {name: np.array(state.parameters[name].data) for name in job["trainable"]}
    np.savez(os.path.join(workdir, "learned.npz"), **learned)


if __name__ == "__main__":
    main(sys.argv[1])
