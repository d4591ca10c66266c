"""Corrupted inputs never crash: a valid model or one clear error line; never a half-written file."""

from __future__ import annotations

import os
import random

import numpy as np
import onnx
import pytest
from conftest import classic

from onnxmp import optimize
from onnxmp.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "models", "digits", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "models", "digits", "calib.npz")


def _flipped(seed: int) -> bytes:
    rng = random.Random(seed)
    with open(DIGITS, "rb") as handle:
        data = bytearray(handle.read())
    for _ in range(rng.choice([1, 5, 50])):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


@pytest.mark.parametrize("seed", range(24))
def test_bit_flipped_models_give_a_model_or_one_clear_error(tmp_path, capsys, seed):
    path, out = tmp_path / "flip.onnx", tmp_path / "out.onnx"
    path.write_bytes(_flipped(seed))
    before = path.read_bytes()
    code = main(["optimize", str(path), str(out), "-q", "--no-cache", "--calib", CALIB, "--no-adaround"])
    err = capsys.readouterr().err
    assert code in (0, 1), err
    assert path.read_bytes() == before
    if code == 1:
        assert err.startswith("onnxmp: error:") and len(err.strip().splitlines()) == 1
        assert not out.exists()
    else:
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert not list(tmp_path.glob(".onnxmp-*"))


@pytest.mark.parametrize("size", [0, 10, 1000, 100_000])
def test_truncated_models(tmp_path, capsys, size):
    path = tmp_path / "cut.onnx"
    with open(DIGITS, "rb") as handle:
        path.write_bytes(handle.read()[:size])
    assert main(["optimize", str(path), str(tmp_path / "o.onnx"), "-q", "--no-cache"]) == 1
    assert "onnxmp: error:" in capsys.readouterr().err


def test_output_is_byte_identical_across_runs(tmp_path):
    # the paper's cost: the default latency metric times this machine's kernels, which is not repeatable
    config = classic(calib=CALIB, adaround_iterations=200)
    optimize(DIGITS, str(tmp_path / "a.onnx"), config)
    optimize(DIGITS, str(tmp_path / "b.onnx"), config)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_interrupt_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    import onnxmp.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "sensitivity_list", interrupted)
    out = tmp_path / "o.onnx"
    assert main(["optimize", DIGITS, str(out), "-q", "--no-cache"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_nan_or_huge_calibration_data(tmp_path, capsys):
    x = np.load(CALIB)["input"].copy()
    x[0, 0, 0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", input=x)
    assert main(["optimize", DIGITS, str(tmp_path / "o.onnx"), "-q", "--no-cache", "--calib",
                 str(tmp_path / "inf.npz")]) == 1
    assert "NaN or Inf" in capsys.readouterr().err
