"""The paths for models over 1 GiB (``large.LARGE_BYTES``; never one protobuf message), run on a
small model by lowering the threshold: the result must equal the ordinary path's, byte for byte."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import make_cnn

from onnxmp import OptimizeConfig, optimize
from onnxmp.model import large
from onnxmp.model.large import light_copy, save_with_external_data
from onnxmp.runtime.session import make_session


@pytest.fixture
def external_cnn(tmp_path):
    """The tiny CNN saved with its weights in an external data file, and calibration data."""
    path = tmp_path / "ext" / "cnn.onnx"
    path.parent.mkdir()
    onnx.save(make_cnn(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="cnn.onnx.data", size_threshold=64)
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    return path


def test_large_model_paths_give_the_same_output(external_cnn, tmp_path, monkeypatch):
    """Both runs cold (a cache each), so calibration and Phase 1 really run on the large path."""
    calib = str(tmp_path / "calib.npz")
    monkeypatch.setattr(large, "_BIG_TENSOR", 64)
    taken = []
    is_large_size = large.is_large_size
    monkeypatch.setattr(large, "is_large_size", lambda size: taken.append(is_large_size(size)) or taken[-1])
    config = lambda cache: OptimizeConfig(calib=calib, cache_dir=str(tmp_path / cache), adaround="off")  # noqa: E731
    ordinary = optimize(str(external_cnn), str(tmp_path / "small.onnx"), config("cache-small")).record
    assert taken and not any(taken)
    taken.clear()
    monkeypatch.setattr(large, "LARGE_BYTES", 1024)  # the tiny CNN now counts as large
    big = optimize(str(external_cnn), str(tmp_path / "big.onnx"), config("cache-big")).record
    assert any(taken)  # the large-model paths were taken
    assert not big["cache"]["hit"] and not ordinary["cache"]["hit"]
    assert big["timings_s"]["calibrate"] > 0 and big["timings_s"]["phase1"] > 0
    assert big["counts"]["simulator_evaluations"] == ordinary["counts"]["simulator_evaluations"] > 0
    assert [(s["group"], s["candidate"]) for s in big["sensitivity"]] == \
        [(s["group"], s["candidate"]) for s in ordinary["sensitivity"]]
    assert big["chosen"] == ordinary["chosen"]
    # the large output is written with external data, and holds the same model
    assert os.path.exists(tmp_path / "big.onnx.data")
    a = onnx.load(str(tmp_path / "small.onnx"))
    b = onnx.load(str(tmp_path / "big.onnx"))
    assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in a.graph.initializer} == \
        {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in b.graph.initializer}


def test_light_copy_and_external_save_leave_the_model_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(large, "_BIG_TENSOR", 64)
    model = make_cnn()
    before = model.SerializeToString()
    light = light_copy(model)
    assert light.ByteSize() < model.ByteSize() and model.SerializeToString() == before
    path = str(tmp_path / "m.onnx")
    save_with_external_data(model, path)
    assert model.SerializeToString() == before
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(make_session(path).run(None, {"x": x})[0], make_session(model).run(None, {"x": x})[0])


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "int64", "bool", "int4", "uint4"])
def test_tensor_bytes_is_the_raw_data_length(dtype):
    """The size from shape and type (no copy of the bytes) equals what the tensor holds."""
    values = np.arange(-3, 4, dtype=np.int8)[np.arange(35) % 7].reshape(5, 7)
    if dtype in ("int4", "uint4"):
        elem = onnx.TensorProto.INT4 if dtype == "int4" else onnx.TensorProto.UINT4
        tensor = onnx.helper.make_tensor("t", elem, values.shape, (values if dtype == "int4" else values + 3).ravel().tolist())
        tensor = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), "t")  # stored as raw_data
    else:
        tensor = onnx.numpy_helper.from_array(values.astype(dtype), "t")
    assert tensor.HasField("raw_data")
    assert large.tensor_bytes(tensor) == len(tensor.raw_data)
