#!/usr/bin/env python3
"""Ring all-reduce cost model for docs/SCALING.md (no dependencies).

Usage: python3 bench/scaling_model.py MT_STEP_S BERT_STEP_S
  MT_STEP_S / BERT_STEP_S: compute time of one micro-batch per rank, in seconds (docs/SCALING.md
  says how they were measured). Prints the markdown tables of the document.
"""
import sys

def transformer_params(vocab, d, ff, enc, dec, shared=True):
    attn = 4 * d * d + 4 * d                      # in_proj (3 d x d + 3 d) + out_proj (d x d + d)
    ffn = 2 * d * ff + ff + d
    enc_layer = attn + ffn + 2 * 2 * d            # + 2 LayerNorms
    dec_layer = 2 * attn + ffn + 3 * 2 * d        # self + cross attention, 3 LayerNorms
    emb = vocab * d * (1 if shared else 3)        # source, target, output projection tied
    return emb + enc * enc_layer + dec * dec_layer + 2 * 2 * d + vocab   # final norms, output bias

def bert_params(vocab, d, ff, layers, max_pos, types=2):
    emb = (vocab + max_pos + types) * d + 2 * d
    layer = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 2 * 2 * d
    pooler = d * d + d
    mlm = d * d + d + 2 * d + vocab               # transform + LayerNorm + decoder bias (weight tied)
    nsp = 2 * d + 2
    return emb + layers * layer + pooler + mlm + nsp

ALPHA = 30e-6  # seconds per message hop over TCP (latency term)

def allreduce_s(n, nbytes, gbit):
    if n == 1:
        return 0.0
    bw = gbit * 1e9 / 8
    return 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * ALPHA

def main():
    mt_step, bert_step = float(sys.argv[1]), float(sys.argv[2])
    models = [
        ("mt-base", transformer_params(16000, 512, 2048, 6, 6), mt_step),
        ("bert-small", bert_params(8000, 512, 2048, 4, 128), bert_step),
    ]
    for name, p, step in models:
        nbytes = 4 * p
        print(f"\n### {name}: {p/1e6:.1f} M parameters, {nbytes/1e6:.0f} MB of f32 gradients all-reduced per update\n")
        print(f"compute per micro-batch and rank: {step:.1f} s\n")
        print("| nodes | Gbit/s | all-reduce (s) | per-rank batch fixed, accum 1 | same, accum 4 | global batch fixed, accum 1 |")
        print("|---:|---:|---:|---:|---:|---:|")
        for gbit in (10, 25, 100):
            for n in (2, 4, 8, 16, 32, 64):
                t = allreduce_s(n, nbytes, gbit)
                e1 = step / (step + t)
                e4 = 4 * step / (4 * step + t)
                es = (step / n) / (step / n + t)
                print(f"| {n} | {gbit} | {t:.3f} | {100*e1:.1f} % | {100*e4:.1f} % | {100*es:.1f} % |")

if __name__ == "__main__":
    main()
