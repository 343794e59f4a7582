"""PyTorch CPU reference for crates/seqlab-nn/examples/bench_attention.rs.

/work/venv/bin/python bench/torch_encoder.py [steps] [dropout] [batch] [seq]
One nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True), training step =
forward + backward of sum(y * probe) + plain SGD update, torch.set_num_threads(2).
"""
import sys, time, torch

torch.set_num_threads(2)
args = sys.argv[1:]
steps = int(args[0]) if len(args) > 0 else 5
dropout = float(args[1]) if len(args) > 1 else 0.1
batch = int(args[2]) if len(args) > 2 else 32
seq = int(args[3]) if len(args) > 3 else 128
torch.manual_seed(0)
layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, dropout=dropout, batch_first=True).train()
opt = torch.optim.SGD(layer.parameters(), lr=1e-4)
x = torch.randn(batch, seq, 512)
probe = torch.randn(batch, seq, 512)
times = []
for step in range(steps + 1):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = (layer(x) * probe).sum()
    loss.backward()
    opt.step()
    dt = time.perf_counter() - t0
    if step > 0:
        times.append(dt)
times.sort()
med = times[len(times) // 2]
print(f"torch {torch.__version__} encoder layer B={batch} L={seq} dropout={dropout}: "
      f"median step {med*1e3:.1f} ms, {batch*seq/med:.0f} tokens/s (best {batch*seq/times[0]:.0f})")
