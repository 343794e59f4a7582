"""PyTorch side of crates/seqlab-nn/examples/bench_recurrent.rs: training-step throughput of
a 2-layer LSTM/GRU (input 256, hidden 512, batch 32, seq 64), forward + backward of
sum(out * probe) + plain SGD update, on 2 CPU threads.

    /work/venv/bin/python bench/torch_recurrent.py [lstm|gru|both] [steps]
"""
import sys
import time

import torch

torch.set_num_threads(2)
INPUT, HIDDEN, LAYERS, BATCH, SEQ = 256, 512, 2, 32, 64


def bench(cell, steps):
    torch.manual_seed(0)
    m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](INPUT, HIDDEN, num_layers=LAYERS)
    x = torch.randn(SEQ, BATCH, INPUT)
    probe = torch.randn(SEQ, BATCH, HIDDEN)
    lr = 1e-3

    def step():
        for p in m.parameters():
            p.grad = None
        out, _ = m(x)
        (out * probe).sum().backward()
        with torch.no_grad():
            for p in m.parameters():
                p -= lr * p.grad

    step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    tps = steps * BATCH * SEQ / secs
    print(f"torch {cell}: {steps} steps in {secs:.2f}s, {1e3 * secs / steps:.1f} ms/step, {tps:.0f} tokens/s (wall); "
          f"{steps * BATCH * SEQ / cpu:.0f} tokens per CPU-second")


which = sys.argv[1] if len(sys.argv) > 1 else "both"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
for c in ("lstm", "gru"):
    if which in (c, "both"):
        bench(c, steps)
