"""Makes the variable-length recurrent reference cases in crates/seqlab-nn/tests/golden
(`*_packed.safetensors`), in the same format as shared/golden, plus an int64 `input.lengths`.

PyTorch reference: pack_padded_sequence(x, lengths, batch_first, enforce_sorted=False) →
nn.LSTM/GRU/RNN → pad_packed_sequence(batch_first, total_length=T). Not needed by the tests.

    /work/venv/bin/python scripts/make_recurrent_packed_cases.py
"""
import json
import os

import torch
from safetensors.torch import save_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "seqlab-nn", "tests", "golden")


def make(name, module, cfg, batch, seq, lengths, with_state, seed):
    torch.manual_seed(seed)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[module]
    m = cls(**cfg)
    d = 2 if cfg.get("bidirectional") else 1
    h_out = cfg.get("proj_size", 0) or cfg["hidden_size"]
    shape = (batch, seq, cfg["input_size"]) if cfg.get("batch_first") else (seq, batch, cfg["input_size"])
    x = torch.randn(shape, requires_grad=True)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    inputs = {"x": x}
    state = None
    if with_state:
        h0 = torch.randn(d * cfg.get("num_layers", 1), batch, h_out, requires_grad=True)
        inputs["h0"] = h0
        state = h0
        if module == "lstm":
            c0 = torch.randn(d * cfg.get("num_layers", 1), batch, cfg["hidden_size"], requires_grad=True)
            inputs["c0"] = c0
            state = (h0, c0)
    packed = pack_padded_sequence(x, lengths_t, batch_first=cfg.get("batch_first", False), enforce_sorted=False)
    res = m(packed, state)
    out, _ = pad_packed_sequence(res[0], batch_first=cfg.get("batch_first", False), total_length=seq)
    outputs = {"out": out}
    if module == "lstm":
        outputs["hn"], outputs["cn"] = res[1]
    else:
        outputs["hn"] = res[1]
    probes = {k: torch.randn(v.shape) for k, v in outputs.items()}
    loss = sum((v * probes[k]).sum() for k, v in outputs.items())
    loss.backward()
    t = {}
    for k, p in m.state_dict().items():
        t[f"param.{k}"] = p.detach().clone()
    for k, p in m.named_parameters():
        t[f"grad.param.{k}"] = p.grad.detach().clone()
    for k, v in inputs.items():
        t[f"input.{k}"] = v.detach().clone()
        t[f"grad.input.{k}"] = v.grad.detach().clone()
    t["input.lengths"] = lengths_t
    for k, v in outputs.items():
        t[f"output.{k}"] = v.detach().contiguous()
        t[f"probe.{k}"] = probes[k]
    meta = {
        "module": module,
        "config": json.dumps(cfg, sort_keys=True),
        "loss_outputs": json.dumps(list(outputs)),
        "torch_version": torch.__version__,
        "note": "variable lengths: pack_padded_sequence(enforce_sorted=False) -> module -> "
        "pad_packed_sequence(total_length=T)",
    }
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, f"{name}.safetensors"), metadata=meta)
    print(name, {k: tuple(v.shape) for k, v in t.items() if k.startswith("output")})


base = {"input_size": 5, "hidden_size": 7, "num_layers": 2, "bidirectional": True, "bias": True}
make("lstm_packed", "lstm", {**base, "batch_first": True}, 4, 6, [3, 6, 1, 4], True, 11)
make("lstm_proj_packed", "lstm", {**base, "bidirectional": False, "hidden_size": 8, "proj_size": 3,
                                  "batch_first": False}, 3, 5, [2, 5, 4], False, 12)
make("gru_packed", "gru", {**base, "batch_first": False}, 4, 6, [6, 2, 5, 1], True, 13)
make("rnn_packed", "rnn", {**base, "batch_first": True, "nonlinearity": "tanh"}, 3, 5, [4, 5, 2], True, 14)


def make_seed(name, cell, batch, seq, lengths, seed):
    """`seed_model` with variable lengths and a bidirectional layer: the feature is the last
    layer's final state of each direction (forward: last valid step; backward: t = 0), i.e.
    cat(hn[-2], hn[-1]) of the packed run — seqlab's RecurrentClassifier semantics."""
    torch.manual_seed(seed)
    cfg = {"cell": cell, "input_size": 5, "hidden_size": 7, "num_layers": 2, "output_size": 3, "bidirectional": True}
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    model = torch.nn.ModuleDict({
        "rnn": cls(5, 7, num_layers=2, batch_first=True, bidirectional=True),
        "fc": torch.nn.Linear(14, 3),
    })
    x = torch.randn(batch, seq, 5, requires_grad=True)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    packed = pack_padded_sequence(x, lengths_t, batch_first=True, enforce_sorted=False)
    _, st = model["rnn"](packed)
    hn = st[0] if cell == "lstm" else st
    y = model["fc"](torch.cat([hn[-2], hn[-1]], dim=1))
    probe = torch.randn(y.shape)
    (y * probe).sum().backward()
    t = {f"param.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    t.update({f"grad.param.{k}": p.grad.detach().clone() for k, p in model.named_parameters()})
    t.update({"input.x": x.detach().clone(), "grad.input.x": x.grad.detach().clone(), "input.lengths": lengths_t,
              "output.y": y.detach().clone(), "probe.y": probe})
    meta = {"module": "seed_model", "config": json.dumps(cfg, sort_keys=True), "loss_outputs": json.dumps(["y"]),
            "torch_version": torch.__version__,
            "note": "packed lengths, bidirectional: y = fc(cat(hn[-2], hn[-1]))"}
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, f"{name}.safetensors"), metadata=meta)
    print(name)


make_seed("seed_lstm_packed_model", "lstm", 4, 6, [3, 6, 1, 4], 21)
make_seed("seed_gru_packed_model", "gru", 3, 5, [5, 2, 4], 22)
