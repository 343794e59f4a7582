#!/usr/bin/env python3
"""PyTorch peers of `seqlab bench` (issue #12): the same rows, the same shapes and optimizer,
printing the same JSON object per row. `bench/run.py` runs these alternately with seqlab;
run one by hand with

    /work/venv/bin/python bench/peers.py lstm --steps 5 --warmup 1 --threads 2

Rows: the layer rows (rnn, lstm, gru, lstm-proj, lstm-bidir, encoder, decoder, and mamba from
bench/torch_mamba.py: one training step = forward, loss sum(out * probe), backward, AdamW lr
1e-3), `sgemm` (torch.mm of two n x n f32 matrices), `model --export DIR` (a whole preset,
from the tokenizer and resolved config that `seqlab bench model --export DIR` wrote;
bench/torch_models.py), `translate` (greedy / beam decoding of the same architecture;
bench/torch_models.py) and `generate` (greedy LM generation one token at a time with the
recurrent state, LSTM or Mamba; bench/torch_models.py).

Only set-up-free steps are timed (after --warmup untimed ones); `cpu_seconds` is this
process's CPU time (all threads, getrusage(RUSAGE_SELF)) over the timed section, as seqlab's.
"""
import argparse
import json
import os
import resource
import time
import warnings

import torch

# PyTorch's notes on nested tensors and oneDNN fallbacks are not results.
warnings.filterwarnings("ignore", category=UserWarning)

LAYER_ROWS = ("rnn", "lstm", "gru", "lstm-proj", "lstm-bidir", "encoder", "decoder")


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sync():
    """Waits for queued GPU work, so that a timed section ends when its kernels have run."""
    if torch.cuda.is_available() and torch.get_default_device().type == "cuda":
        torch.cuda.synchronize()


def time_units(warmup, steps, f):
    """Calls f() warmup times untimed, then steps times timed; f returns the units it processed.
    Returns the fields of seqlab's `Timing` (seqlab_train::bench::time_units)."""
    assert steps > 0, "the number of timed steps must be > 0"
    for _ in range(warmup):
        f()
    sync()
    c0, t0 = cpu_seconds(), time.perf_counter()
    units = 0
    for _ in range(steps):
        units += f()
    sync()
    secs = time.perf_counter() - t0
    return {"steps": steps, "units": units, "seconds": secs, "cpu_seconds": cpu_seconds() - c0,
            "units_per_s": units / max(secs, 1e-12)}


def train_step(opt, out, probe):
    (out * probe).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def recurrent(name, warmup, steps):
    b, t, i, h = 32, 64, 256, 512
    kw = dict(num_layers=2, batch_first=True)
    if name == "rnn":
        net = torch.nn.RNN(i, h, nonlinearity="tanh", **kw)
    elif name == "gru":
        net = torch.nn.GRU(i, h, **kw)
    else:
        net = torch.nn.LSTM(i, h, proj_size=256 if name == "lstm-proj" else 0,
                            bidirectional=name == "lstm-bidir", **kw)
    out_features = (2 if name == "lstm-bidir" else 1) * (256 if name == "lstm-proj" else h)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(b, t, i)
    probe = torch.randn(b, t, out_features)

    def step():
        out, _ = net(x)
        train_step(opt, out, probe)
        return b * t

    return time_units(warmup, steps, step)


def transformer_layer(name, warmup, steps):
    b, t, d = 32, 128, 512
    kw = dict(dim_feedforward=2048, dropout=0.1, batch_first=True)
    x = torch.randn(b, t, d)
    probe = torch.randn(b, t, d)
    if name == "encoder":
        layer = torch.nn.TransformerEncoderLayer(d, 8, **kw).train()
        fwd = lambda: layer(x)
    else:
        layer = torch.nn.TransformerDecoderLayer(d, 8, **kw).train()
        memory = torch.randn(b, t, d)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(t)
        fwd = lambda: layer(x, memory, tgt_mask=mask, tgt_is_causal=True)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)

    def step():
        train_step(opt, fwd(), probe)
        return b * t

    return time_units(warmup, steps, step)


def sgemm(n, warmup, steps):
    a, b = torch.randn(n, n), torch.randn(n, n)

    def step():
        torch.mm(a, b)
        return 2 * n ** 3

    r = time_units(warmup, steps, step)
    r["gflops"] = r["units_per_s"] / 1e9
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("row", help="layer row (mamba included), sgemm, model, translate or generate")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, default=2048, help="sgemm: n")
    ap.add_argument("--export", help="model, translate, generate: the folder `seqlab bench model --export` wrote")
    ap.add_argument("--data", help="model: the training file, as seqlab's config names it (default: config.json's)")
    ap.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    ap.add_argument("--beam-size", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32, help="translate, generate: sequences decoded together")
    ap.add_argument("--tokens", type=int, default=128, help="generate: tokens per sequence in one timed step")
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: every tensor and module is created there")
    ap.add_argument("--tf32", action="store_true",
                    help="CUDA: TF32 tensor-core matmuls and convolutions (default: full fp32)")
    a = ap.parse_args()
    torch.set_default_device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    extra = {}
    if a.row in LAYER_ROWS:
        r = transformer_layer(a.row, a.warmup, a.steps) if a.row in ("encoder", "decoder") \
            else recurrent(a.row, a.warmup, a.steps)
        unit = "tokens"
    elif a.row == "sgemm":
        r, unit = sgemm(a.size, a.warmup, a.steps), "flop"
    elif a.row == "mamba":
        import torch_mamba
        r, unit = torch_mamba.bench_block(a.warmup, a.steps), "tokens"
    elif a.row in ("model", "translate", "generate"):
        import torch_models
        if a.row == "model":
            r, extra = torch_models.bench_model(a.export, a.warmup, a.steps)
        elif a.row == "generate":
            r, extra = torch_models.bench_generate(a.export, a.batch_size, a.tokens, a.warmup, a.steps)
        else:
            r, extra = torch_models.bench_translate(a.export, a.decoder, a.beam_size, a.batch_size,
                                                    a.sentences, a.warmup, a.steps)
        unit = "tokens"
    else:
        raise SystemExit(f"unknown row {a.row!r} (known: {', '.join(LAYER_ROWS)}, mamba, sgemm, model, translate, "
                         "generate)")
    out = {"row": a.row, "side": "pytorch", "unit": unit, "threads": torch.get_num_threads(),
           "torch": torch.__version__, **r, **extra}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
