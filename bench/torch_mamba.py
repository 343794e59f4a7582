#!/usr/bin/env python3
"""PyTorch peer of seqlab's Mamba (issue #17): the same block and language model, for the rows
of bench/run.py (through bench/peers.py and bench/torch_models.py).

The block is `mamba_simple.Mamba` of state-spaces/mamba on its slow path, written out with
torch ops: in_proj (no bias) -> causal depthwise conv1d (kernel d_conv, bias) -> SiLU ->
x_proj -> dt_proj -> softplus -> **selective_scan_ref** (the reference's sequential Python
loop over time, state (B, d_inner, d_state), autograd through every step) -> y * SiLU(z) ->
out_proj. The CUDA kernels of mamba_ssm do not run on a CPU, so this is what "PyTorch Mamba
on a CPU" is; every row's output names the scan (`implementation`) so that nobody mistakes
it for a fused kernel.

Rows:
- `mamba` (bench/peers.py mamba, the layer row; `block` here): 2 x [RMSNorm -> Mamba]
  residual blocks, d_model 256 (d_inner 512, d_state 16, d_conv 4, dt_rank 16), batch 32 x
  seq 128, loss sum(out * probe), AdamW lr 1e-3 (A_log and D without weight decay);
- `mamba-lm` (bench/peers.py model): `MambaLm` built from the config that `seqlab bench model
  --export` wrote (configs/shakespeare-char-mamba.toml), trained by torch_models.bench_lm;
- `mamba-decode` (bench/peers.py generate): `MambaLm.step`, the reference's `Mamba.step`
  per layer, greedy, by torch_models.bench_generate.

    /work/venv/bin/python bench/torch_mamba.py block --threads 1 --steps 3 --warmup 1

Not needed by the tests.
"""
import argparse
import json
import math
import os

import torch
import torch.nn.functional as F

SCAN = "selective_scan_ref (state-spaces/mamba's sequential reference scan, PyTorch autograd)"


# One timing function for every peer (run as `python bench/torch_mamba.py`: bench/ is on sys.path).
from peers import time_units  # noqa: E402


def selective_scan_ref(u, delta, A, B, C, D, z, delta_bias):
    """state-spaces/mamba's selective_scan_ref with delta_softplus=True, real A, B and C of
    shape (batch, d_state, L): u, delta, z (batch, d_inner, L); A (d_inner, d_state)."""
    delta = F.softplus(delta + delta_bias[..., None])
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = A.new_zeros((u.shape[0], A.shape[0], A.shape[1]))
    ys = []
    for i in range(u.shape[2]):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    return (y + u * D[:, None]) * F.silu(z)


class Mamba(torch.nn.Module):
    """mamba_simple.Mamba (slow path), parameter names as its state_dict."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2):
        super().__init__()
        self.d_inner, self.d_state, self.d_conv = expand * d_model, d_state, d_conv
        self.dt_rank = math.ceil(d_model / 16)
        di = self.d_inner
        self.in_proj = torch.nn.Linear(d_model, 2 * di, bias=False)
        self.conv1d = torch.nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1)
        self.x_proj = torch.nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = torch.nn.Linear(self.dt_rank, di)
        dt = torch.exp(torch.rand(di) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = torch.nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = torch.nn.Parameter(torch.ones(di))
        self.out_proj = torch.nn.Linear(di, d_model, bias=False)

    def forward(self, h):
        L = h.shape[1]
        xz = self.in_proj(h).transpose(1, 2)  # (B, 2 d_inner, L)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :L])
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2 d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        y = selective_scan_ref(x, dt, -torch.exp(self.A_log), B.transpose(1, 2), C.transpose(1, 2), self.D, z,
                               self.dt_proj.bias)
        return self.out_proj(y.transpose(1, 2))

    def step(self, h, conv_state, ssm_state):
        """The reference's Mamba.step: h (B, d_model); states updated in place."""
        x, z = self.in_proj(h).chunk(2, dim=-1)
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = F.silu((conv_state * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        dA = torch.exp(dt[..., None] * -torch.exp(self.A_log))
        ssm_state.copy_(ssm_state * dA + (dt * x)[..., None] * B[:, None])
        y = (ssm_state * C[:, None]).sum(-1) + self.D * x
        return self.out_proj(y * F.silu(z))


class MambaLm(torch.nn.Module):
    """mixer_seq_simple.MambaLMHeadModel without MLPs: embedding, pre-norm residual blocks,
    final RMSNorm, output tied to the embedding."""

    def __init__(self, vocab, d_model, n_layer, **kw):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, d_model)
        self.norms = torch.nn.ModuleList(torch.nn.RMSNorm(d_model, eps=1e-5) for _ in range(n_layer))
        self.mixers = torch.nn.ModuleList(Mamba(d_model, **kw) for _ in range(n_layer))
        self.norm_f = torch.nn.RMSNorm(d_model, eps=1e-5)

    def forward(self, ids):
        h = self.embedding(ids)
        for norm, mixer in zip(self.norms, self.mixers):
            h = h + mixer(norm(h))
        return self.norm_f(h) @ self.embedding.weight.t()

    @classmethod
    def from_config(cls, m, vocab):
        """From the `[model]` table of a seqlab run config (`kind = "mamba"`)."""
        return cls(vocab, m["d_model"], m["num_layers"], d_state=m["d_state"], d_conv=m["d_conv"],
                   expand=m["expand"])

    def param_groups(self):
        return param_groups(self)

    def init_state(self, batch):
        """Zero (conv, ssm) states per layer: (B, d_inner, d_conv), (B, d_inner, d_state)."""
        return [(torch.zeros(batch, m.d_inner, m.d_conv), torch.zeros(batch, m.d_inner, m.d_state))
                for m in self.mixers]

    def step(self, ids, states):
        """ids (B,) -> logits (B, V); `states` (from init_state) updated in place."""
        h = self.embedding(ids)
        for norm, mixer, (cs, ss) in zip(self.norms, self.mixers, states):
            h = h + mixer.step(norm(h), cs, ss)
        return self.norm_f(h) @ self.embedding.weight.t(), states


def no_decay(name):
    """A_log and D are kept out of weight decay, as in the reference (and seqlab)."""
    return name.endswith("A_log") or name.endswith(".D") or name == "D"


def param_groups(model):
    """AdamW parameter groups: the rest, then A_log and D with weight_decay 0."""
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if not no_decay(n)]},
            {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}]


class Blocks(torch.nn.Module):
    """Pre-norm residual blocks x + mixer(RMSNorm(x)) (the `mamba` layer row)."""

    def __init__(self, d_model, n_layer):
        super().__init__()
        self.norms = torch.nn.ModuleList(torch.nn.RMSNorm(d_model, eps=1e-5) for _ in range(n_layer))
        self.mixers = torch.nn.ModuleList(Mamba(d_model) for _ in range(n_layer))

    def forward(self, h):
        for norm, mixer in zip(self.norms, self.mixers):
            h = h + mixer(norm(h))
        return h


def bench_block(warmup, steps):
    """The `mamba` layer row (same shapes, loss and optimizer as `seqlab bench mamba`)."""
    b, t, d = 32, 128, 256
    net = Blocks(d, 2)
    opt = torch.optim.AdamW(param_groups(net), lr=1e-3)
    x, probe = torch.randn(b, t, d), torch.randn(b, t, d)

    def step():
        (net(x) * probe).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return b * t

    r = time_units(warmup, steps, step)
    r["implementation"] = SCAN
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("row", choices=("block",))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    r = bench_block(a.warmup, a.steps)
    r.update(row="mamba", side="pytorch", unit="tokens", threads=a.threads, torch=torch.__version__)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
