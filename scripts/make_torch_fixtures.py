"""Generates every kind of PyTorch reference case ("golden" fixture) that seqlab-nn's parity
test (`crates/seqlab-nn/tests/torch_parity.rs`) runs. The format is described in
`crates/seqlab-nn/tests/golden/README.md`. The tests never need Python; this script is how
the committed cases were (re)made and how new ones are added.

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch safetensors numpy
    .venv-torch/bin/python scripts/make_torch_fixtures.py --out /tmp/fresh-golden
    SEQLAB_TORCH_FIXTURES=/tmp/fresh-golden cargo test -p seqlab-nn --test torch_parity

`--only NAME[,NAME...]` writes just those cases (e.g. `--only mha_weights_grad` to add one
case to `crates/seqlab-nn/tests/golden`). Every case is float32 on the CPU with dropout 0, from
its own fixed seed, so a rerun with the same PyTorch reproduces the same tensors.

Kinds: rnn, lstm, gru (with h0/c0, proj_size, and packed variable lengths), seed_model,
layer_norm, batch_norm1d, embedding, sdpa, mha (including a loss on the attention weights),
positional_encoding, encoder_layer, decoder_layer, transformer, seq2seq_tied, cross_entropy,
adamw.
"""
import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CASES = {}


def case(fn):
    """Registers a case maker under its function name (= the file name)."""
    CASES[fn.__name__] = fn
    return fn


def save(out_dir, name, module, cfg, loss_outputs, tensors, note=None):
    meta = {
        "module": module,
        "config": json.dumps(cfg, sort_keys=True),
        "loss_outputs": json.dumps(loss_outputs),
        "torch_version": torch.__version__,
    }
    if note:
        meta["note"] = note
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    path = os.path.join(out_dir, f"{name}.safetensors")
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    print(f"{name:28} {module:20} {len(tensors)} tensors")


def standard(module_obj, inputs, outputs, loss_outputs, params=None):
    """Forms L = Σ sum(output_k * probe_k) over `loss_outputs`, back-propagates, and returns the
    case's tensors: param.*, input.*, output.*, probe.*, grad.param.*, grad.input.*.
    `params`: the named tensors saved as `param.*` (default: the module's state_dict)."""
    t = {}
    if module_obj is not None:
        sd = params if params is not None else module_obj.state_dict()
        for k, p in sd.items():
            t[f"param.{k}"] = p
    for k, v in inputs.items():
        t[f"input.{k}"] = v
    for k, v in outputs.items():
        t[f"output.{k}"] = v
    if loss_outputs:
        probes = {k: torch.randn(outputs[k].shape) for k in loss_outputs}
        loss = sum((outputs[k] * probes[k]).sum() for k in loss_outputs)
        loss.backward()
        for k, p in probes.items():
            t[f"probe.{k}"] = p
        if module_obj is not None:
            for k, p in module_obj.named_parameters():
                if p.grad is not None:
                    t[f"grad.param.{k}"] = p.grad
        for k, v in inputs.items():
            if v.is_floating_point() and v.requires_grad and v.grad is not None:
                t[f"grad.input.{k}"] = v.grad
    return t


def randn(*shape, grad=True):
    return torch.randn(*shape).requires_grad_(grad)


# ---------------------------------------------------------------- recurrent
RNN_CLASSES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
PACKED_NOTE = "variable lengths: pack_padded_sequence(enforce_sorted=False) -> module -> pad_packed_sequence(total_length=T)"


def recurrent(out, name, module, cfg, batch, seq, with_state, seed, lengths=None):
    torch.manual_seed(seed)
    m = RNN_CLASSES[module](**cfg)
    d = 2 if cfg.get("bidirectional") else 1
    layers = cfg.get("num_layers", 1)
    h_out = cfg.get("proj_size", 0) or cfg["hidden_size"]
    bf = cfg.get("batch_first", False)
    x = randn(*((batch, seq, cfg["input_size"]) if bf else (seq, batch, cfg["input_size"])))
    inputs = {"x": x}
    state = None
    if with_state:
        inputs["h0"] = randn(d * layers, batch, h_out)
        state = inputs["h0"]
        if module == "lstm":
            inputs["c0"] = randn(d * layers, batch, cfg["hidden_size"])
            state = (inputs["h0"], inputs["c0"])
    if lengths is None:
        y, st = m(x, state)
    else:
        lengths_t = torch.tensor(lengths, dtype=torch.int64)
        packed = pack_padded_sequence(x, lengths_t, batch_first=bf, enforce_sorted=False)
        y, st = m(packed, state)
        y, _ = pad_packed_sequence(y, batch_first=bf, total_length=seq)
    outputs = {"out": y}
    if module == "lstm":
        outputs["hn"], outputs["cn"] = st
    else:
        outputs["hn"] = st
    t = standard(m, inputs, outputs, list(outputs))
    note = None
    if lengths is not None:
        t["input.lengths"] = lengths_t
        note = PACKED_NOTE
    save(out, name, module, cfg, list(outputs), t, note)


BASE = {"input_size": 5, "hidden_size": 7, "num_layers": 2, "bidirectional": True, "bias": True}
ONE = {"input_size": 5, "hidden_size": 7, "num_layers": 1, "bidirectional": False, "bias": False, "batch_first": False}


@case
def rnn_0(out):
    recurrent(out, "rnn_0", "rnn", {**BASE, "batch_first": True, "nonlinearity": "tanh"}, 4, 3, True, 1)


@case
def rnn_1(out):
    recurrent(out, "rnn_1", "rnn", {**ONE, "nonlinearity": "relu"}, 3, 4, False, 2)


@case
def lstm_0(out):
    recurrent(out, "lstm_0", "lstm", {**BASE, "batch_first": True}, 3, 4, True, 3)


@case
def lstm_1(out):
    recurrent(out, "lstm_1", "lstm", ONE, 3, 4, False, 4)


@case
def gru_0(out):
    recurrent(out, "gru_0", "gru", {**BASE, "batch_first": True}, 3, 4, True, 5)


@case
def gru_1(out):
    recurrent(out, "gru_1", "gru", ONE, 3, 4, False, 6)


@case
def lstm_proj(out):
    cfg = {**BASE, "bidirectional": False, "hidden_size": 8, "proj_size": 3, "batch_first": True}
    recurrent(out, "lstm_proj", "lstm", cfg, 3, 4, False, 7)


@case
def lstm_packed(out):
    recurrent(out, "lstm_packed", "lstm", {**BASE, "batch_first": True}, 4, 6, True, 11, [3, 6, 1, 4])


@case
def lstm_proj_packed(out):
    cfg = {**BASE, "bidirectional": False, "hidden_size": 8, "proj_size": 3, "batch_first": False}
    recurrent(out, "lstm_proj_packed", "lstm", cfg, 3, 5, False, 12, [2, 5, 4])


@case
def gru_packed(out):
    recurrent(out, "gru_packed", "gru", {**BASE, "batch_first": False}, 4, 6, True, 13, [6, 2, 5, 1])


@case
def rnn_packed(out):
    cfg = {**BASE, "batch_first": True, "nonlinearity": "tanh"}
    recurrent(out, "rnn_packed", "rnn", cfg, 3, 5, True, 14, [4, 5, 2])


def seed_model(out, name, cell, batch, seq, seed, lengths=None):
    """`seed_model`: recurrent layer (batch_first) → feature of the last step → nn.Linear.
    Unidirectional without lengths: out[:, -1]. With lengths (bidirectional): the last layer's
    final state of each direction, cat(hn[-2], hn[-1]) — seqlab's RecurrentClassifier."""
    torch.manual_seed(seed)
    bidir = lengths is not None
    cfg = {"cell": cell, "input_size": 5, "hidden_size": 7, "num_layers": 2, "output_size": 3}
    if bidir:
        cfg["bidirectional"] = True
    d = 2 if bidir else 1
    model = torch.nn.ModuleDict({
        "rnn": RNN_CLASSES[cell](5, 7, num_layers=2, batch_first=True, bidirectional=bidir),
        "fc": torch.nn.Linear(7 * d, 3),
    })
    x = randn(batch, seq, 5)
    inputs = {"x": x}
    if lengths is None:
        y = model["fc"](model["rnn"](x)[0][:, -1])
        note = None
    else:
        lengths_t = torch.tensor(lengths, dtype=torch.int64)
        _, st = model["rnn"](pack_padded_sequence(x, lengths_t, batch_first=True, enforce_sorted=False))
        hn = st[0] if cell == "lstm" else st
        y = model["fc"](torch.cat([hn[-2], hn[-1]], dim=1))
        note = "packed lengths, bidirectional: y = fc(cat(hn[-2], hn[-1]))"
    t = standard(model, inputs, {"y": y}, ["y"])
    if lengths is not None:
        t["input.lengths"] = lengths_t
    save(out, name, "seed_model", cfg, ["y"], t, note)


@case
def seed_rnn_model(out):
    seed_model(out, "seed_rnn_model", "rnn", 3, 4, 31)


@case
def seed_lstm_model(out):
    seed_model(out, "seed_lstm_model", "lstm", 3, 4, 32)


@case
def seed_gru_model(out):
    seed_model(out, "seed_gru_model", "gru", 3, 4, 33)


@case
def seed_lstm_packed_model(out):
    seed_model(out, "seed_lstm_packed_model", "lstm", 4, 6, 21, [3, 6, 1, 4])


@case
def seed_gru_packed_model(out):
    seed_model(out, "seed_gru_packed_model", "gru", 3, 5, 22, [5, 2, 4])


# ---------------------------------------------------------------- norms, embedding, losses
def randomize_affine(m):
    """Non-trivial weight/bias, so that a code path ignoring them fails."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape) * 0.5 + (1.0 if p.dim() == 1 and p is m.weight else 0.0))


@case
def layer_norm(out):
    torch.manual_seed(41)
    cfg = {"normalized_shape": 8, "eps": 1e-5}
    m = torch.nn.LayerNorm(8, eps=1e-5)
    randomize_affine(m)
    x = randn(2, 3, 8)
    t = standard(m, {"x": x}, {"y": m(x)}, ["y"])
    save(out, "layer_norm", "layer_norm", cfg, ["y"], t)


def batch_norm(out, name, shape, seed):
    torch.manual_seed(seed)
    cfg = {"num_features": 6, "eps": 1e-5, "momentum": 0.1}
    m = torch.nn.BatchNorm1d(6, eps=1e-5, momentum=0.1)
    randomize_affine(m)
    x = randn(*shape)
    x_eval = torch.randn(*shape)
    m.train()
    y = m(x)
    m.eval()
    y_eval = m(x_eval)
    # The fresh buffers are the module's defaults; the case holds the parameters only.
    params = dict(m.named_parameters())
    t = standard(m, {"x": x, "x_eval": x_eval}, {"y": y, "y_eval": y_eval}, ["y"], params=params)
    t["state.running_mean"] = m.running_mean
    t["state.running_var"] = m.running_var
    save(out, name, "batch_norm1d", cfg, ["y"], t)


@case
def batch_norm_2d(out):
    batch_norm(out, "batch_norm_2d", (4, 6), 42)


@case
def batch_norm_3d(out):
    batch_norm(out, "batch_norm_3d", (4, 6, 5), 43)


@case
def embedding(out):
    torch.manual_seed(44)
    cfg = {"num_embeddings": 11, "embedding_dim": 6, "padding_idx": 0}
    m = torch.nn.Embedding(**cfg)
    ids = torch.tensor([[1, 4, 0, 10, 4], [0, 2, 3, 7, 9]], dtype=torch.int64)
    t = standard(m, {"ids": ids}, {"y": m(ids)}, ["y"])
    save(out, "embedding", "embedding", cfg, ["y"], t)


@case
def cross_entropy_ls(out):
    torch.manual_seed(45)
    cfg = {"ignore_index": 0, "label_smoothing": 0.1, "reduction": "mean"}
    logits = randn(8, 10)
    target = torch.tensor([3, 0, 9, 1, 0, 5, 2, 7], dtype=torch.int64)
    loss = torch.nn.functional.cross_entropy(logits, target, **cfg).reshape(1)
    t = standard(None, {"logits": logits, "target": target}, {"loss": loss}, ["loss"])
    save(out, "cross_entropy_ls", "cross_entropy", cfg, ["loss"], t)


@case
def adamw_clip(out):
    torch.manual_seed(46)
    cfg = {"lr": 0.01, "betas": [0.9, 0.98], "eps": 1e-9, "weight_decay": 0.01, "max_grad_norm": 1.0, "steps": 3}
    w = torch.nn.Parameter(torch.randn(4, 5))
    b = torch.nn.Parameter(torch.randn(5))
    t = {"param.w": w.detach().clone(), "param.b": b.detach().clone()}
    opt = torch.optim.AdamW([w, b], lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                            weight_decay=cfg["weight_decay"])
    for i in range(cfg["steps"]):
        gw, gb = torch.randn(4, 5) * 2.0, torch.randn(5) * 2.0
        t[f"input.grad_w.{i}"], t[f"input.grad_b.{i}"] = gw, gb
        w.grad, b.grad = gw.clone(), gb.clone()
        torch.nn.utils.clip_grad_norm_([w, b], cfg["max_grad_norm"])
        opt.step()
        t[f"output.w.{i}"], t[f"output.b.{i}"] = w.detach().clone(), b.detach().clone()
    save(out, "adamw_clip", "adamw", cfg, [], t,
         "output.w.i = params after step i; each step clips the global grad norm of (grad_w.i, grad_b.i) "
         "to max_grad_norm first")


# ---------------------------------------------------------------- attention
def sinusoidal(max_len, d):
    """The paper's table as in PyTorch's tutorial: pe[pos, 2i] = sin(pos / 10000^(2i/d)),
    pe[pos, 2i+1] = cos(...)."""
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(max_len, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


@case
def positional_encoding(out):
    cfg = {"d_model": 16, "max_len": 64}
    save(out, "positional_encoding", "positional_encoding", cfg, [], {"output.pe": sinusoidal(64, 16)})


@case
def sdpa_causal(out):
    torch.manual_seed(51)
    cfg = {"is_causal": True, "scale": None}
    q, k, v = randn(2, 3, 6, 8), randn(2, 3, 6, 8), randn(2, 3, 6, 8)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = standard(None, {"q": q, "k": k, "v": v}, {"y": y}, ["y"])
    save(out, "sdpa_causal", "sdpa", cfg, ["y"], t)


@case
def sdpa_mask(out):
    torch.manual_seed(52)
    cfg = {"is_causal": False, "scale": None, "mask_convention": "1 = may attend"}
    q, k, v = randn(2, 3, 5, 8), randn(2, 3, 6, 8), randn(2, 3, 6, 8)
    mask = torch.rand(5, 6) > 0.4
    mask[:, 0] = True  # every query may attend somewhere (no fully masked row)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    t = standard(None, {"q": q, "k": k, "v": v}, {"y": y}, ["y"])
    t["input.attn_mask"] = mask.to(torch.uint8)
    save(out, "sdpa_mask", "sdpa", cfg, ["y"], t)


def causal_bool(n):
    """True = may NOT attend (strictly above the diagonal), nn.Transformer's boolean form."""
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)


def padding(lengths, total):
    """key_padding_mask: True = padded key."""
    return torch.arange(total).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


def mha(out, name, l, s, seed, kpm_lengths=None, attn_mask=None, average=True, weights_in_loss=False):
    torch.manual_seed(seed)
    cfg = {"embed_dim": 16, "num_heads": 4, "bias": True, "batch_first": True}
    if not average:
        cfg["average_attn_weights"] = False
    m = torch.nn.MultiheadAttention(16, 4, bias=True, batch_first=True)
    with torch.no_grad():
        m.in_proj_bias.normal_(0, 0.1)
        m.out_proj.bias.normal_(0, 0.1)
    query, key, value = randn(2, l, 16), randn(2, s, 16), randn(2, s, 16)
    kpm = padding(kpm_lengths, s) if kpm_lengths is not None else None
    y, w = m(query, key, value, key_padding_mask=kpm, attn_mask=attn_mask, need_weights=True,
             average_attn_weights=average)
    loss_outputs = ["y", "weights"] if weights_in_loss else ["y"]
    t = standard(m, {"query": query, "key": key, "value": value}, {"y": y, "weights": w}, loss_outputs)
    if kpm is not None:
        t["input.key_padding_mask"] = kpm.to(torch.uint8)
    if attn_mask is not None:
        t["input.attn_mask"] = attn_mask.to(torch.uint8) if attn_mask.dtype == torch.bool else attn_mask
    note = None
    if weights_in_loss:
        note = "the loss includes the attention weights: PyTorch returns them differentiable"
    save(out, name, "mha", cfg, loss_outputs, t, note)


@case
def mha_cross(out):
    mha(out, "mha_cross", 4, 7, 61, kpm_lengths=[7, 4])


@case
def mha_self_causal(out):
    mha(out, "mha_self_causal", 6, 6, 62, attn_mask=causal_bool(6))


@case
def mha_self_padding(out):
    mha(out, "mha_self_padding", 5, 5, 63, kpm_lengths=[5, 3])


@case
def mha_weights_grad(out):
    """A loss on both the output and the head-averaged weights, with padding."""
    mha(out, "mha_weights_grad", 5, 5, 64, kpm_lengths=[5, 3], weights_in_loss=True)


@case
def mha_weights_grad_heads(out):
    """A loss on both the output and the per-head weights, with an additive float mask."""
    torch.manual_seed(65)
    additive = torch.randn(4, 6) * 0.5
    additive[0, 5] = float("-inf")
    mha(out, "mha_weights_grad_heads", 4, 6, 66, attn_mask=additive, average=False, weights_in_loss=True)


# ---------------------------------------------------------------- transformer
LAYER = {"d_model": 16, "nhead": 4, "dim_feedforward": 32, "dropout": 0.0, "batch_first": True,
         "layer_norm_eps": 1e-5}


def randomize_biases(m):
    """PyTorch starts attention biases at zero; non-zero ones make the case test them."""
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("in_proj_bias") or n.endswith("out_proj.bias"):
                p.normal_(0, 0.1)


def encoder_layer(out, name, activation, norm_first, seed):
    torch.manual_seed(seed)
    cfg = {**LAYER, "activation": activation, "norm_first": norm_first}
    m = torch.nn.TransformerEncoderLayer(**cfg).eval()
    randomize_biases(m)
    src = randn(2, 6, 16)
    kpm = padding([6, 4], 6)
    y = m(src, src_key_padding_mask=kpm)
    t = standard(m, {"src": src}, {"y": y}, ["y"])
    t["input.src_key_padding_mask"] = kpm.to(torch.uint8)
    save(out, name, "encoder_layer", cfg, ["y"], t)


@case
def encoder_layer_post_relu(out):
    encoder_layer(out, "encoder_layer_post_relu", "relu", False, 71)


@case
def encoder_layer_pre_gelu(out):
    encoder_layer(out, "encoder_layer_pre_gelu", "gelu", True, 72)


@case
def decoder_layer(out):
    torch.manual_seed(73)
    cfg = {**LAYER, "activation": "relu", "norm_first": False}
    m = torch.nn.TransformerDecoderLayer(**cfg).eval()
    randomize_biases(m)
    tgt, memory = randn(2, 5, 16), randn(2, 6, 16)
    tgt_mask, tkpm, mkpm = causal_bool(5), padding([5, 3], 5), padding([6, 4], 6)
    y = m(tgt, memory, tgt_mask=tgt_mask, tgt_key_padding_mask=tkpm, memory_key_padding_mask=mkpm)
    t = standard(m, {"tgt": tgt, "memory": memory}, {"y": y}, ["y"])
    t["input.tgt_mask"] = tgt_mask.to(torch.uint8)
    t["input.tgt_key_padding_mask"] = tkpm.to(torch.uint8)
    t["input.memory_key_padding_mask"] = mkpm.to(torch.uint8)
    save(out, "decoder_layer", "decoder_layer", cfg, ["y"], t)


@case
def transformer(out):
    torch.manual_seed(74)
    cfg = {**LAYER, "activation": "relu", "norm_first": False, "num_encoder_layers": 2, "num_decoder_layers": 2}
    m = torch.nn.Transformer(**cfg).eval()
    randomize_biases(m)
    src, tgt = randn(2, 6, 16), randn(2, 5, 16)
    skpm, tkpm, tgt_mask = padding([6, 4], 6), padding([5, 3], 5), causal_bool(5)
    y = m(src, tgt, tgt_mask=tgt_mask, src_key_padding_mask=skpm, tgt_key_padding_mask=tkpm,
          memory_key_padding_mask=skpm)
    t = standard(m, {"src": src, "tgt": tgt}, {"y": y}, ["y"])
    t["input.tgt_mask"] = tgt_mask.to(torch.uint8)
    t["input.src_key_padding_mask"] = skpm.to(torch.uint8)
    t["input.tgt_key_padding_mask"] = tkpm.to(torch.uint8)
    t["input.memory_key_padding_mask"] = skpm.to(torch.uint8)
    save(out, "transformer", "transformer", cfg, ["y"], t)


@case
def seq2seq_tied(out):
    torch.manual_seed(75)
    d, vocab, pad = 16, 13, 0
    cfg = {"d_model": d, "nhead": 4, "dim_feedforward": 32, "num_layers": 2, "vocab_size": vocab, "pad_id": pad,
           "note": "logits = transformer(embed(src)*sqrt(d)+pe, embed(tgt)*sqrt(d)+pe) @ embed.weight^T; "
                   "nn.Transformer keeps its final encoder/decoder LayerNorm"}
    model = torch.nn.ModuleDict({
        "embed": torch.nn.Embedding(vocab, d),
        "transformer": torch.nn.Transformer(d, 4, 2, 2, 32, dropout=0.0, batch_first=True),
    }).eval()
    randomize_biases(model)
    src = torch.tensor([[5, 3, 8, 2, 9, 1, 4], [7, 2, 6, 11, 0, 0, 0]], dtype=torch.int64)
    tgt = torch.tensor([[1, 6, 3, 12, 2], [1, 4, 9, 0, 0]], dtype=torch.int64)
    pe = sinusoidal(64, d)

    def embed(ids):
        return model["embed"](ids) * math.sqrt(d) + pe[: ids.shape[1]]

    skpm, tkpm = src == pad, tgt == pad
    h = model["transformer"](embed(src), embed(tgt), tgt_mask=causal_bool(tgt.shape[1]), src_key_padding_mask=skpm,
                             tgt_key_padding_mask=tkpm, memory_key_padding_mask=skpm)
    logits = h @ model["embed"].weight.T
    t = standard(model, {"src": src, "tgt": tgt}, {"logits": logits}, ["logits"])
    save(out, "seq2seq_tied", "seq2seq_tied", cfg, ["logits"], t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write the *.safetensors cases into (created)")
    ap.add_argument("--only", default="", help="comma-separated case names (default: every case)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    for n in names:
        CASES[n](args.out)


if __name__ == "__main__":
    main()
