#!/usr/bin/env python
"""Train the small digits CNN used by onnxmp's README and write it as ONNX.

Run from the repository root:

    python models/digits/make_digits_cnn.py

Writes, next to this script:
    digits_cnn.onnx  - float32 model, opset 13, IR 8, input "input" [N,1,8,8],
                       output "logits" [N,10]; BatchNormalization kept as
                       separate nodes (the quantizer folds them itself).
    calib.npz        - key "input": float32 [64,1,8,8], drawn from the TRAIN split.
    test.npz         - keys "input": float32 [500,1,8,8], "labels": int64 [500].

Data: scikit-learn's bundled ``load_digits`` (1797 real 8x8 handwritten digits,
pixel values 0..16, BSD-3-Clause), scaled to [0, 1] by x / 16.

PyTorch is needed only here, at preparation time. The ONNX graph is written by
hand with ``onnx.helper`` from the trained weights, so no exporter can fuse
BatchNormalization into the convolutions.
"""

import os
import time

import numpy as np

SEED = 0
N_TEST = 500
N_CALIB = 64
EPOCHS = 40
BATCH = 64
LR = 3e-3
BN_EPS = 1e-5
OPSET = 13
IR_VERSION = 8

HERE = os.path.dirname(os.path.abspath(__file__))
ONNX_PATH = os.path.join(HERE, "digits_cnn.onnx")
CALIB_PATH = os.path.join(HERE, "calib.npz")
TEST_PATH = os.path.join(HERE, "test.npz")


# --------------------------------------------------------------------------- data
def load_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    assert x.shape == (1797, 1, 8, 8), x.shape
    perm = np.random.RandomState(SEED).permutation(len(x))
    test_idx, train_idx = perm[:N_TEST], perm[N_TEST:]
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def random_shift(xb, rng):
    """Shift each image by a random offset in {-1,0,1}^2, filling with zeros."""
    n = xb.shape[0]
    padded = np.pad(xb, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dy = rng.randint(0, 3, size=n)
    dx = rng.randint(0, 3, size=n)
    out = np.empty_like(xb)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
    return out


# -------------------------------------------------------------------------- model
def build_torch_model():
    import torch.nn as nn

    def cbr(cin, cout, k, relu=True):
        layers = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                  nn.BatchNorm2d(cout, eps=BN_EPS)]
        if relu:
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbr(1, 16, 3)
            self.branch_a = cbr(16, 16, 1)
            self.branch_b = cbr(16, 16, 3)
            self.fuse = cbr(32, 32, 1)
            self.res1 = cbr(32, 32, 3)
            self.res2 = cbr(32, 32, 3, relu=False)
            self.pool = nn.MaxPool2d(2, 2)
            self.head = cbr(32, 48, 3)
            self.fc = nn.Linear(48, 10)

        def forward(self, x):
            import torch

            s = self.stem(x)
            c = torch.cat([self.branch_a(s), self.branch_b(s)], dim=1)
            f = self.fuse(c)
            r = torch.relu(self.res2(self.res1(f)) + f)
            h = self.head(self.pool(r))
            return self.fc(h.mean(dim=(2, 3)))

    return DigitsCNN()


def train(model, xtr, ytr, xte, yte):
    import torch
    import torch.nn.functional as F

    rng = np.random.RandomState(SEED + 1)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps_per_epoch = int(np.ceil(len(xtr) / BATCH))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, total_steps=EPOCHS * steps_per_epoch)
    t0 = time.time()
    for epoch in range(EPOCHS):
        model.train()
        perm = rng.permutation(len(xtr))
        tot_loss = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            xb = torch.from_numpy(random_shift(xtr[idx], rng))
            yb = torch.from_numpy(ytr[idx])
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(idx)
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            model.eval()
            with torch.no_grad():
                acc = (model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean()
            print(f"epoch {epoch + 1:3d}  loss {tot_loss / len(xtr):.4f}  "
                  f"test acc {acc:.4f}  ({time.time() - t0:.1f}s)")
    model.eval()
    return model


# ---------------------------------------------------------------- ONNX by hand
def to_onnx(model):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def arr(t):
        return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))

    def init(name, value):
        inits.append(numpy_helper.from_array(value, name))
        return name

    def conv_bn(prefix, seq, x, relu=True):
        conv, bn = seq[0], seq[1]
        k = conv.kernel_size[0]
        p = conv.padding[0]
        w = init(f"{prefix}/conv.weight", arr(conv.weight))
        c_out = f"{prefix}/conv_out"
        nodes.append(helper.make_node(
            "Conv", [x, w], [c_out], name=f"{prefix}/conv",
            kernel_shape=[k, k], pads=[p, p, p, p], strides=[1, 1],
            dilations=[1, 1], group=1))
        bn_in = [c_out,
                 init(f"{prefix}/bn.scale", arr(bn.weight)),
                 init(f"{prefix}/bn.bias", arr(bn.bias)),
                 init(f"{prefix}/bn.mean", arr(bn.running_mean)),
                 init(f"{prefix}/bn.var", arr(bn.running_var))]
        b_out = f"{prefix}/bn_out"
        nodes.append(helper.make_node(
            "BatchNormalization", bn_in, [b_out], name=f"{prefix}/bn",
            epsilon=float(bn.eps), momentum=0.9))
        if not relu:
            return b_out
        r_out = f"{prefix}/relu_out"
        nodes.append(helper.make_node("Relu", [b_out], [r_out], name=f"{prefix}/relu"))
        return r_out

    s = conv_bn("stem", model.stem, "input")
    a = conv_bn("branch_a", model.branch_a, s)   # stem output read by two convs
    b = conv_bn("branch_b", model.branch_b, s)
    nodes.append(helper.make_node("Concat", [a, b], ["concat_out"], name="concat", axis=1))
    f = conv_bn("fuse", model.fuse, "concat_out")
    r = conv_bn("res/1", model.res1, f)
    r = conv_bn("res/2", model.res2, r, relu=False)
    nodes.append(helper.make_node("Add", [r, f], ["res/add_out"], name="res/add"))
    nodes.append(helper.make_node("Relu", ["res/add_out"], ["res/relu_out"], name="res/relu"))
    nodes.append(helper.make_node("MaxPool", ["res/relu_out"], ["pool_out"], name="pool",
                                  kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]))
    h = conv_bn("head", model.head, "pool_out")
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["gap_out"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap_out"], ["flatten_out"], name="flatten", axis=1))
    nodes.append(helper.make_node(
        "Gemm", ["flatten_out", init("fc.weight", arr(model.fc.weight)),
                 init("fc.bias", arr(model.fc.bias))],
        ["logits"], name="fc", alpha=1.0, beta=1.0, transB=1))

    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits)
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="onnxmp/models/digits/make_digits_cnn.py", producer_version="1",
        doc_string="Small CNN trained on scikit-learn load_digits (8x8, x/16). "
                   "BatchNormalization deliberately left unfused.")
    m.ir_version = IR_VERSION
    m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    onnx.checker.check_model(m, full_check=True)
    return m


# ------------------------------------------------------------------------- main
def main():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    xtr, ytr, xte, yte = load_data()
    print(f"train {xtr.shape}  test {xte.shape}")

    model = train(build_torch_model(), xtr, ytr, xte, yte)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(xte)).numpy()

    import onnx
    import onnxruntime as ort

    m = to_onnx(model)
    onnx.save(m, ONNX_PATH)

    calib_idx = np.random.RandomState(SEED + 2).choice(len(xtr), N_CALIB, replace=False)
    calib = np.ascontiguousarray(xtr[np.sort(calib_idx)])
    np.savez_compressed(CALIB_PATH, input=calib)
    np.savez_compressed(TEST_PATH, input=np.ascontiguousarray(xte), labels=yte)

    # ---- verify: reload everything from disk and run with onnxruntime
    m2 = onnx.load(ONNX_PATH)
    onnx.checker.check_model(m2, full_check=True)
    n_bn = sum(n.op_type == "BatchNormalization" for n in m2.graph.node)
    assert n_bn == 7, n_bn
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(ONNX_PATH, so, providers=["CPUExecutionProvider"])
    t = np.load(TEST_PATH)
    c = np.load(CALIB_PATH)
    assert t["input"].dtype == np.float32 and t["input"].shape == (N_TEST, 1, 8, 8)
    assert t["labels"].dtype == np.int64 and t["labels"].shape == (N_TEST,)
    assert c["input"].dtype == np.float32 and c["input"].shape == (N_CALIB, 1, 8, 8)
    ort_logits = sess.run(["logits"], {"input": t["input"]})[0]
    diff = float(np.abs(ort_logits - torch_logits).max())
    acc = float((ort_logits.argmax(1) == t["labels"]).mean())
    sess.run(["logits"], {"input": c["input"]})  # calib runs too

    ops = {}
    for n in m2.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    n_params = sum(int(np.prod(i.dims)) for i in m2.graph.initializer)
    print(f"nodes {len(m2.graph.node)}  {ops}")
    print(f"initializer values {n_params}")
    for p in (ONNX_PATH, CALIB_PATH, TEST_PATH):
        print(f"wrote {os.path.relpath(p)}  {os.path.getsize(p)} bytes")
    print(f"max |onnx - torch| logits diff: {diff:.3e}")
    print(f"ONNX test top-1 accuracy: {acc:.4f} ({int(round(acc * N_TEST))}/{N_TEST})")
    assert diff < 1e-4, diff
    assert os.path.getsize(ONNX_PATH) < 300_000
    assert os.path.getsize(CALIB_PATH) < 200_000 and os.path.getsize(TEST_PATH) < 200_000


if __name__ == "__main__":
    main()
