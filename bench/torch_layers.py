#!/usr/bin/env python3
"""Times the training steps of `seqlab bench layers` in PyTorch (CPU) and runs the seqlab
binary in the same script, printing tokens/s for both and the seqlab/PyTorch ratios.

    python3 -m venv .venv && .venv/bin/pip install torch
    cargo build --release -p seqlab-cli
    .venv/bin/python bench/torch_layers.py [--threads 2] [--steps 5] [--seqlab target/release/seqlab]

Not needed by the tests.
"""
import argparse, json, os, subprocess, time

import torch


def time_steps(tokens, warmup, steps, step):
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return tokens * steps / (time.perf_counter() - t)


def recurrent(kind, steps, warmup):
    b, t, i, h = 32, 64, 256, 512
    net = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(i, h, num_layers=2, batch_first=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(b, t, i)
    probe = torch.randn(b, t, h)

    def step():
        opt.zero_grad(set_to_none=True)
        out, _ = net(x)
        (out * probe).sum().backward()
        opt.step()

    return time_steps(b * t, warmup, steps, step)


def encoder(steps, warmup):
    b, t, d = 32, 128, 512
    layer = torch.nn.TransformerEncoderLayer(d, 8, dim_feedforward=2048, dropout=0.1, batch_first=True)
    layer.train()
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    x = torch.randn(b, t, d)
    probe = torch.randn(b, t, d)

    def step():
        opt.zero_grad(set_to_none=True)
        (layer(x) * probe).sum().backward()
        opt.step()

    return time_steps(b * t, warmup, steps, step)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seqlab", default="target/release/seqlab")
    ap.add_argument("--filter", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    names = [n for n in ("lstm", "gru", "encoder") if not a.filter or a.filter in n]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    cmd = [a.seqlab, "bench", "layers", "--json", "--steps", str(a.steps), "--warmup", str(a.warmup)]
    if a.filter:
        cmd += ["--filter", a.filter]
    ours = {}
    for line in subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.splitlines():
        r = json.loads(line)
        ours[r["model"]] = r["tokens_per_s"]
    print(f"{a.threads} threads, {a.steps} timed steps; torch {torch.__version__}")
    print(f"{'model':8} {'seqlab tok/s':>13} {'torch tok/s':>12} {'ratio':>7}")
    for n in names:
        theirs = encoder(a.steps, a.warmup) if n == "encoder" else recurrent(n, a.steps, a.warmup)
        print(f"{n:8} {ours[n]:13.0f} {theirs:12.0f} {ours[n] / theirs:7.2f}")


if __name__ == "__main__":
    main()
