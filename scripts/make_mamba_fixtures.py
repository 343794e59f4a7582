#!/usr/bin/env python3
"""Writes reference cases of kind `mamba` into crates/seqlab-nn/tests/golden/ (format:
shared/golden/README.md): more shapes and options than the two shared cases, padded batches
and the step function.

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch safetensors numpy
    .venv-torch/bin/python scripts/make_mamba_fixtures.py [OUT_DIR]

The reference is `state-spaces/mamba`'s `Mamba` mixer (mamba_simple.py, the slow path with
`selective_scan_ref`: a sequential scan), written out here from its equations in plain
PyTorch and evaluated in float64 from float32 parameters and inputs; results are stored as
float32. Optional tensors beyond the shared cases' (the parity test reads them when present):

- `input.key_padding_mask` uint8 (B, L), 1 = padded; the real tokens of a row are contiguous.
  The reference has no padding: each row's real span is run alone, `output.y` is 0 at padded
  positions, and gradients are summed over the separate runs.
- `output.y_step` (B, L, d_model): the reference's `Mamba.step` applied token by token from
  zero states; `output.conv_state` (B, d_inner, d_conv) and `output.ssm_state`
  (B, d_inner, d_state): the states after the last step (not in the loss).
"""
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "crates/seqlab-nn/tests/golden"


def init_params(g, d_model, d_state, d_conv, expand, dt_rank, bias, conv_bias):
    """The reference's initialisation, then A_log and D perturbed so that the test does not
    rely on their special initial values."""
    d_inner = expand * d_model

    def uni(shape, bound):
        return (torch.rand(shape, generator=g) * 2 - 1) * bound

    p = {"in_proj.weight": uni((2 * d_inner, d_model), d_model ** -0.5)}
    if bias:
        p["in_proj.bias"] = uni((2 * d_inner,), d_model ** -0.5)
    p["conv1d.weight"] = uni((d_inner, 1, d_conv), d_conv ** -0.5)
    if conv_bias:
        p["conv1d.bias"] = uni((d_inner,), d_conv ** -0.5)
    p["x_proj.weight"] = uni((dt_rank + 2 * d_state, d_inner), d_inner ** -0.5)
    p["dt_proj.weight"] = uni((d_inner, dt_rank), dt_rank ** -0.5)
    dt = torch.exp(torch.rand(d_inner, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
    p["dt_proj.bias"] = dt + torch.log(-torch.expm1(-dt))
    a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
    p["A_log"] = a_log + 0.1 * torch.randn(a_log.shape, generator=g)
    p["D"] = 1 + 0.1 * torch.randn(d_inner, generator=g)
    p["out_proj.weight"] = uni((d_model, d_inner), d_inner ** -0.5)
    if bias:
        p["out_proj.bias"] = uni((d_model,), d_inner ** -0.5)
    return {k: v.float().contiguous() for k, v in p.items()}


def selective_scan_ref(u, delta, A, B, C, D, z, delta_bias):
    """u, delta, z (b, d, l); A (d, n); B, C (b, n, l): the reference's sequential scan."""
    delta = F.softplus(delta + delta_bias[..., None])
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = u.new_zeros((u.shape[0], A.shape[0], A.shape[1]))
    ys = []
    for i in range(u.shape[2]):
        x = dA[:, :, i] * x + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def mixer_forward(p, x, cfg):
    """mamba_simple.Mamba.forward without the fused path: x (b, l, d_model)."""
    d_inner, d_state, d_conv, dt_rank = cfg["d_inner"], cfg["d_state"], cfg["d_conv"], cfg["dt_rank"]
    L = x.shape[1]
    xz = (p["in_proj.weight"] @ x.reshape(-1, x.shape[2]).t()).reshape(2 * d_inner, x.shape[0], L).permute(1, 0, 2)
    if "in_proj.bias" in p:
        xz = xz + p["in_proj.bias"][:, None]
    A = -torch.exp(p["A_log"])
    xs, z = xz.chunk(2, dim=1)
    xs = F.conv1d(xs, p["conv1d.weight"], p.get("conv1d.bias"), padding=d_conv - 1, groups=d_inner)[..., :L]
    xs = F.silu(xs)
    x_dbl = F.linear(xs.permute(0, 2, 1).reshape(-1, d_inner), p["x_proj.weight"])
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    dt = (p["dt_proj.weight"] @ dt.t()).reshape(d_inner, x.shape[0], L).permute(1, 0, 2)
    B = B.reshape(x.shape[0], L, d_state).permute(0, 2, 1)
    C = C.reshape(x.shape[0], L, d_state).permute(0, 2, 1)
    y = selective_scan_ref(xs, dt, A, B, C, p["D"], z, p["dt_proj.bias"])
    return F.linear(y.permute(0, 2, 1), p["out_proj.weight"], p.get("out_proj.bias"))


def mixer_step(p, x, conv_state, ssm_state, cfg):
    """mamba_simple.Mamba.step without the fused kernels: x (b, d_model)."""
    d_state, dt_rank = cfg["d_state"], cfg["dt_rank"]
    xz = F.linear(x, p["in_proj.weight"], p.get("in_proj.bias"))
    xs, z = xz.chunk(2, dim=-1)
    conv_state = torch.roll(conv_state, shifts=-1, dims=-1)
    conv_state[:, :, -1] = xs
    xs = torch.sum(conv_state * p["conv1d.weight"][:, 0, :], dim=-1)
    if "conv1d.bias" in p:
        xs = xs + p["conv1d.bias"]
    xs = F.silu(xs)
    x_db = F.linear(xs, p["x_proj.weight"])
    dt, B, C = torch.split(x_db, [dt_rank, d_state, d_state], dim=-1)
    dt = F.softplus(F.linear(dt, p["dt_proj.weight"]) + p["dt_proj.bias"])
    A = -torch.exp(p["A_log"])
    dA = torch.exp(torch.einsum("bd,dn->bdn", dt, A))
    dB = torch.einsum("bd,bn->bdn", dt, B)
    ssm_state = ssm_state * dA + xs[:, :, None] * dB
    y = torch.einsum("bdn,bn->bd", ssm_state, C) + p["D"] * xs
    y = y * F.silu(z)
    return F.linear(y, p["out_proj.weight"], p.get("out_proj.bias")), conv_state, ssm_state


def make_case(name, seed, batch, seq_len, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto",
              bias=False, conv_bias=True, padding=None, step=False):
    g = torch.Generator().manual_seed(seed)
    rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
    cfg = {"d_model": d_model, "d_state": d_state, "d_conv": d_conv, "expand": expand,
           "d_inner": expand * d_model, "dt_rank": rank, "bias": bias, "conv_bias": conv_bias}
    params32 = init_params(g, d_model, d_state, d_conv, expand, rank, bias, conv_bias)
    x32 = torch.randn(batch, seq_len, d_model, generator=g)
    probe32 = torch.randn(batch, seq_len, d_model, generator=g)
    params = {k: v.double().requires_grad_() for k, v in params32.items()}
    x = x32.double().requires_grad_()
    spans = [(0, seq_len)] * batch
    if padding is not None:
        side, lengths = padding
        spans = [(0, n) if side == "right" else (seq_len - n, seq_len) for n in lengths]
    # The reference has no padding: run every real span alone, zero elsewhere.
    rows = []
    for b, (s, e) in enumerate(spans):
        yb = mixer_forward(params, x[b:b + 1, s:e], cfg)
        rows.append(F.pad(yb, (0, 0, s, seq_len - e)))
    y = torch.cat(rows, 0)
    (y * probe32.double()).sum().backward()
    t = {f"param.{k}": v for k, v in params32.items()}
    t["input.x"] = x32
    t["probe.y"] = probe32
    t["output.y"] = y.detach().float()
    t["grad.input.x"] = x.grad.float()
    for k, v in params.items():
        t[f"grad.param.{k}"] = v.grad.float()
    if padding is not None:
        mask = torch.ones(batch, seq_len, dtype=torch.uint8)
        for b, (s, e) in enumerate(spans):
            mask[b, s:e] = 0
        t["input.key_padding_mask"] = mask
    if step:
        with torch.no_grad():
            conv = torch.zeros(batch, cfg["d_inner"], d_conv, dtype=torch.float64)
            ssm = torch.zeros(batch, cfg["d_inner"], d_state, dtype=torch.float64)
            outs = []
            for i in range(seq_len):
                o, conv, ssm = mixer_step(params, x[:, i].detach(), conv, ssm, cfg)
                outs.append(o)
            t["output.y_step"] = torch.stack(outs, 1).float()
            t["output.conv_state"] = conv.float()
            t["output.ssm_state"] = ssm.float()
            assert torch.allclose(t["output.y_step"], t["output.y"], rtol=1e-4, atol=1e-5), name
    md = {
        "module": "mamba",
        "config": json.dumps(cfg, sort_keys=True),
        "loss_outputs": json.dumps(["y"]),
        "torch_version": torch.__version__,
        "note": "state-spaces/mamba Mamba mixer (mamba_simple.py slow path, selective_scan_ref), "
                "batch-first x (B, L, d_model) -> y; scripts/make_mamba_fixtures.py, float64 reference",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, str(OUT / f"{name}.safetensors"), metadata=md)
    print(f"{name}: {cfg} B={batch} L={seq_len} padding={padding} step={step}")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    make_case("mamba_conv_nobias_step", 1, batch=2, seq_len=6, d_model=8, d_state=4, conv_bias=False, step=True)
    make_case("mamba_bias_rank4_step", 2, batch=3, seq_len=5, d_model=12, d_state=6, d_conv=2, expand=1,
              dt_rank=4, bias=True, step=True)
    make_case("mamba_expand3_long", 3, batch=2, seq_len=70, d_model=10, d_state=16, expand=3, dt_rank=2)
    make_case("mamba_dconv1", 4, batch=2, seq_len=4, d_model=6, d_state=3, d_conv=1, step=True)
    make_case("mamba_pad_right", 5, batch=3, seq_len=8, d_model=8, d_state=5, d_conv=3,
              padding=("right", [8, 3, 5]))
    make_case("mamba_pad_left", 6, batch=3, seq_len=8, d_model=8, d_state=5, bias=True,
              padding=("left", [8, 2, 6]))
