#!/usr/bin/env python3
"""The benchmark runner of issue #12: seqlab against its PyTorch peer on every row, honestly.

    cargo build --release -p seqlab-cli
    /work/venv/bin/python bench/run.py                      # the full suite (docs/BENCHMARKS.md)
    /work/venv/bin/python bench/run.py --quick              # smoke check: 1 run each, tiny steps
    /work/venv/bin/python bench/run.py --rows lstm,gru --threads 2 --runs 5 --json

For every row and thread count it alternates seqlab and PyTorch runs (A B A B ...), each a
fresh process, --runs times each, and prints medians: units/s (tokens/s; sentences/s and
tokens/s for decoding; words/s for word2vec), CPU-seconds per 1k units, peak RSS of each side,
the seqlab/PyTorch ratio, and the achieved GFLOP/s of each side as a fraction of this
machine's sgemm peak (the best of `seqlab bench sgemm` and torch.mm 2048^3 at that thread
count, measured first). Under the table it also prints the hardware's limit, independent FMA
chains on every thread (`seqlab bench fma`), and the sgemm peak's share of it, so that a row's
share of the hardware is its share of the sgemm peak times that.

Rules (docs/BENCHMARKS.md): during every child run the runner measures the CPU time that
*other* processes used: machine-wide busy time from /proc/stat over the run, minus the
child's own CPU time (os.wait4's rusage, its threads and children included) and the
runner's. When other processes kept more than --max-other-load cores busy (default 0.25)
during any run of a row, the row is LOADED and no ratio is printed for it (--force prints it,
still labelled LOADED). The 1-minute load average is not used: the runner's own previous
round leaves it at 1.0-1.3 after a 1-thread run, which flagged quiet machines.

Threads: RAYON_NUM_THREADS for seqlab; torch.set_num_threads + OMP_NUM_THREADS/MKL_NUM_THREADS
for PyTorch. Timed sections exclude set-up and warm-up on both sides (each child reports its
own timed wall and CPU seconds, getrusage(RUSAGE_SELF) over the section); peak RSS and the
whole-process CPU come from the child's rusage (os.wait4).

Adding a row is one entry in ROWS.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "runs" / "bench"

# --- analytic FLOPs per unit (training: forward + backward = 3x the forward matmul FLOPs) ---


def recurrent_flops(gates, inp, hidden, layers=2, dirs=1, proj=0):
    """Forward matmul FLOPs per token of a stacked RNN/LSTM/GRU (2 per multiply-add):
    per layer and direction gates*hidden*(in + h_out) weights, plus hidden*proj for proj_size."""
    h_out = proj or hidden
    total, x = 0, inp
    for _ in range(layers):
        total += dirs * 2 * (gates * hidden * (x + h_out) + hidden * proj)
        x = dirs * h_out
    return total


def encoder_layer_flops(d, ff, t):
    """Forward FLOPs per token: Q,K,V,out projections, FFN, and the T-long score and value products."""
    return 2 * (4 * d * d + 2 * d * ff) + 2 * 2 * t * d


def decoder_layer_flops(d, ff, t, s):
    """Self-attention (full T x T products, as PyTorch computes them), cross-attention (Q and
    out on the target, K and V of an S-long memory per target token), FFN."""
    return 2 * (4 * d * d + 4 * d * d + 2 * d * ff) + 2 * 2 * t * d + 2 * 2 * s * d


def train(fwd):
    return 3 * fwd


def mamba_flops(d, n_layer, vocab=0, n=16, k=4, expand=2):
    """Forward FLOPs per token of n_layer Mamba blocks: in_proj d x 2 d_inner, x_proj d_inner x
    (dt_rank + 2n), dt_proj dt_rank x d_inner, out_proj d_inner x d; the depthwise conv
    (2 d_inner k) and the scan (~6 d_inner n: exp(dt A) h + dt B u, C h), plus an output layer
    d x vocab. Norms and gates are left out."""
    di, r = expand * d, -(-d // 16)
    per_layer = 2 * (d * 2 * di + di * (r + 2 * n) + r * di + di * d) + 2 * di * k + 6 * di * n
    return n_layer * per_layer + 2 * d * vocab


def mt_transformer_flops(info):
    """mt-bible-small per target token, taking source length = target length (a rough
    approximation), mean length L = tokens per pass / sentences not known here: attention
    score terms use L = 40. Output projection d x V (tied embedding)."""
    d, ff, v, L = 256, 1024, info.get("vocab", 8000), 40
    enc = 3 * encoder_layer_flops(d, ff, L)
    dec = 3 * decoder_layer_flops(d, ff, L, L)
    return train(enc + dec + 2 * d * v)


def mt_decode_flops(beam):
    """mt-bible-small decoding per output token (the row's unit), from the seqlab side's mean
    source length S and output length T per sentence: the encoder once per sentence (forward
    only), the cross-attention keys/values once per sentence and layer, then per step and beam
    row the decoder layers' projections (self q,k,v,out; cross q,out), FFN, the attention over
    the caches (mean self length T/2, cross length S) and the output projection d x V. Beam
    search computes `beam` rows per sentence at every step (step 0's single row is ignored)."""
    def flops(info):
        d, ff, v, n_layer = 256, 1024, info.get("vocab", 8000), 3
        sents = max(info["sentences"] / max(info["steps"], 1), 1)
        s = info["source_tokens_per_pass"] / sents
        t = max(info["output_tokens_per_pass"] / sents, 1)
        enc = s * n_layer * encoder_layer_flops(d, ff, s)
        cross_kv = n_layer * s * 2 * 2 * d * d
        step = n_layer * (2 * (4 * d * d + 2 * d * d + 2 * d * ff) + 2 * 2 * (t / 2 + s) * d) + 2 * d * v
        return (enc + cross_kv + beam * t * step) / t
    return flops


def mt_rnn_flops(info):
    """mt-bible-rnn per target token (source length = target length): bidirectional 2-layer
    LSTM encoder (256 per direction, input 256), 2-layer LSTM decoder 512 with attention
    (scores, context and the combination layer taken as 3 x 512 x 512), output 512 x V."""
    v, L = info.get("vocab", 8000), 40
    enc = recurrent_flops(4, 256, 256, dirs=2)
    dec = recurrent_flops(4, 256, 512)
    att = 2 * (2 * L * 512 + 3 * 512 * 512)
    return train(enc + dec + att + 2 * 512 * v)


def bert_mini_flops(info):
    """BERT-mini per token: 4 encoder layers d256 ff1024 at T = 128, the MLM transform
    (d x d) and decoder (d x V) on every position (PyTorch's BertForPreTraining computes all)."""
    d, ff, v, t = 256, 1024, info.get("vocab", 8000), 128
    return train(4 * encoder_layer_flops(d, ff, t) + 2 * d * d + 2 * d * v)


def char_lstm_flops(info):
    """The main job: embedding 64, 2-layer LSTM 256, output 256 x V (V = characters)."""
    return train(recurrent_flops(4, 64, 256) + 2 * 256 * info.get("vocab", 80))


def authors_transformer_flops(info):
    """Author-ID classifier per token: 2 encoder layers d128 ff512 at T = 96 (max_len)."""
    return train(2 * encoder_layer_flops(128, 512, 96))


# --- the rows ---


@dataclass
class Row:
    """One benchmark row. `seqlab` are the arguments after `seqlab`, `peer` those after
    `bench/peers.py` (or a whole command when `peer_cmd`); both may use {steps}, {warmup},
    {threads}, {export} and {corpus}. `flops` gives FLOPs per unit from the seqlab side's
    JSON (plus `vocab` when an export folder has a tokenizer); None = no GFLOP/s column."""
    name: str
    seqlab: list
    peer: list
    steps: int
    # Untimed steps first, the same on both sides. This VM zeroes a process's fresh pages
    # slowly and erratically (kernel clear_page_erms was 35-78 % of the samples of slow
    # 1-warm-up LSTM runs, 2026-12-01): with one warm-up step seqlab's 2-thread LSTM row
    # measured 8,300-17,500 tok/s run to run, with three 16,900-17,900; PyTorch's moved
    # less (12,300-13,100 either way). Training runs last thousands of steps: the rows
    # measure the steady state.
    warmup: int = 3
    quick_steps: int = 1
    unit: str = "tok/s"
    flops: Optional[Callable[[dict], float]] = None
    threads: Optional[tuple] = None  # restricts --threads
    needs: Optional[Path] = None  # skipped with a message when absent
    peer_cmd: bool = False
    note: str = ""
    peer_name: str = "pytorch"  # what {side} becomes for the peer in a peer_cmd
    prepare: Optional[list] = None  # seqlab arguments run once, untimed, before the rounds


def layer(name, steps, fwd):
    return Row(name, ["bench", name, "--json", "--steps", "{steps}", "--warmup", "{warmup}"],
               [name, "--steps", "{steps}", "--warmup", "{warmup}", "--threads", "{threads}"],
               steps=steps, flops=lambda info, f=fwd: train(f))


SAMPLE_MT = ["--set", "data.train=data/sample/bible.en-es.train.tsv",
             "--set", "data.valid=data/sample/bible.en-es.valid.tsv",
             "--set", "data.test=data/sample/bible.en-es.test.tsv"]


def model(name, config, sets, steps, flops, note="", warmup=3):
    return Row(name, ["bench", "model", "--json", "--config", config, *sets, "--export", "{export}",
                      "--steps", "{steps}", "--warmup", "{warmup}"],
               ["model", "--export", "{export}", "--steps", "{steps}", "--warmup", "{warmup}",
                "--threads", "{threads}"],
               steps=steps, warmup=warmup, flops=flops, note=note)


def decode(name, decoder):
    beam = 1 if decoder == "greedy" else 4
    flags = ["--decoder", decoder, "--beam-size", "4", "--batch-size", "32", "--sentences", "{sentences}"]
    return Row(name, ["bench", "translate", "--json", "--config", "configs/mt-bible-small.toml", *SAMPLE_MT,
                      *flags, "--steps", "{steps}", "--warmup", "{warmup}"],
               ["translate", "--export", "{export}", *flags, "--steps", "{steps}", "--warmup", "{warmup}",
                "--threads", "{threads}"],
               steps=1, warmup=1 if decoder == "greedy" else 0, unit="sent/s", flops=mt_decode_flops(beam),
               # The peer builds the same model from the tokenizer and config that one
               # (untimed) `seqlab bench model` step exports.
               prepare=["bench", "model", "--json", "--config", "configs/mt-bible-small.toml", *SAMPLE_MT,
                        "--export", "{export}", "--steps", "1", "--warmup", "0"],
               note="untrained mt-bible-small (random weights, seed 42): outputs run to the length "
                    "limit (source + 50), so both sides do the same work per sentence")


SAMPLE_LM = ["--set", "data.train=data/sample/shakespeare.train.txt",
             "--set", "data.valid=data/sample/shakespeare.valid.txt",
             "--set", "data.test=data/sample/shakespeare.valid.txt"]

MAMBA_SCAN = ("PyTorch side: bench/torch_mamba.py, the reference's slow path with selective_scan_ref "
              "(sequential Python loop over time, autograd) - mamba_ssm's CUDA kernels do not run on a CPU")


def generate(name, config, steps=3):
    """Greedy LM generation, batch 32 x {tokens} tokens after a 1-token prompt, untrained model
    of `config` on the bundled Shakespeare sample; the peer builds it from the exported config."""
    flags = ["--batch-size", "32", "--tokens", "{tokens}"]
    return Row(name, ["bench", "generate", "--json", "--config", config, *SAMPLE_LM, *flags,
                      "--steps", "{steps}", "--warmup", "{warmup}"],
               ["generate", "--export", "{export}", *flags, "--steps", "{steps}", "--warmup", "{warmup}",
                "--threads", "{threads}"],
               steps=steps,
               prepare=["bench", "model", "--json", "--config", config, *SAMPLE_LM, "--export", "{export}",
                        "--steps", "1", "--warmup", "0"],
               note=f"{config} untrained (seed 42), greedy, batch 32, one token per call with the recurrent "
                    "state (seqlab: LmTask::greedy_batch; Mamba through its step function), <eos> does not stop; "
                    "mamba-decode vs char-lstm-decode compares the two at the same budget (~3.5 M parameters each)")


def w2v(model_name):
    return Row(f"w2v-{model_name}", [], [sys.executable, str(BENCH / "w2v_vs_gensim.py"), "--single", "{side}",
                                          "--models", model_name, "--epochs", "{steps}", "--threads", "{threads}",
                                          "--corpus", "{corpus}", "--seqlab", "{seqlab}", "--work", "{export}"],
               steps=1, warmup=0, unit="words/s", threads=(2,), needs=SHARED / "w2v" / "corpus.en.txt",
               peer_cmd=True, peer_name="gensim", note="dim 100, window 5, negative 5, sample 1e-3; steps = epochs; gensim 4 "
                                   "corpus_file; quality: bench/w2v_vs_gensim.py")


CT2_CHECKPOINT = Path(os.environ.get("SEQLAB_CT2_CHECKPOINT", ROOT / "runs" / "mt-bible-small-fairseq"))


def ct2(quant, decoder):
    """seqlab translate against CTranslate2 (bench/ct2.py --single) on one trained exportable
    model, exported to HF and converted (fp32 or int8); {steps} is unused (one pass over the
    test set per run)."""
    beam = 1 if decoder == "greedy" else 4
    side = f"ct2-{quant}"
    return Row(f"{side}-{decoder}", [], [sys.executable, str(BENCH / "ct2.py"), "--single", "{side}", "--beam", str(beam),
                                         "--threads", "{threads}", "--checkpoint", str(CT2_CHECKPOINT),
                                         "--work", "{export}", "--seqlab", "{seqlab}",
                                         "--sentences", "{test_sentences}"],
               steps=1, warmup=0, unit="sent/s", needs=CT2_CHECKPOINT, peer_cmd=True, peer_name=side,
               note=f"{CT2_CHECKPOINT.name} (set SEQLAB_CT2_CHECKPOINT): data/sample test set (200 sentences), "
                    f"beam {beam}, batch 32; BLEU and identical outputs beside; the CPU-s column counts the "
                    f"whole bench/ct2.py process (export, conversion, BLEU), not the timed section")


ROWS = [
    layer("rnn", 5, recurrent_flops(1, 256, 512)),
    layer("lstm", 4, recurrent_flops(4, 256, 512)),
    layer("gru", 4, recurrent_flops(3, 256, 512)),
    layer("lstm-proj", 4, recurrent_flops(4, 256, 512, proj=256)),
    layer("lstm-bidir", 3, recurrent_flops(4, 256, 512, dirs=2)),
    layer("encoder", 4, encoder_layer_flops(512, 2048, 128)),
    layer("decoder", 3, decoder_layer_flops(512, 2048, 128, 128)),
    Row("mamba", ["bench", "mamba", "--json", "--steps", "{steps}", "--warmup", "{warmup}"],
        ["mamba", "--steps", "{steps}", "--warmup", "{warmup}", "--threads", "{threads}"],
        steps=2, flops=lambda info: train(mamba_flops(256, 2)),
        note="2 x [RMSNorm -> Mamba] blocks, d_model 256, batch 32 x 128, AdamW (A_log, D without weight "
             "decay); " + MAMBA_SCAN),
    model("mt-bible-small", "configs/mt-bible-small.toml", SAMPLE_MT, 6, mt_transformer_flops,
          "bundled sample (4,000 pairs): BPE vocabulary smaller than on the full data"),
    model("mt-bible-rnn", "configs/mt-bible-rnn.toml", SAMPLE_MT, 4, mt_rnn_flops,
          "bundled sample (4,000 pairs)"),
    model("bert-mini", "configs/bert-mini.toml", ["--set", "data.corpus=data/sample/kjv.en.txt"], 4,
          bert_mini_flops, "bundled KJV sample"),
    # 30 steps (~0.6 s at 2 threads): with 10, PyTorch's 1-thread runs spread over 25.6-33.2k tok/s.
    model("char-lstm", "configs/sample-char-lstm.toml", [], 30, char_lstm_flops, "the main job"),
    model("authors-transformer", "configs/authors-transformer.toml",
          ["--set", "data.train=data/sample/authors.train.tsv", "--set", "data.valid=data/sample/authors.valid.tsv",
           "--set", "data.test=data/sample/authors.test.tsv"], 10, authors_transformer_flops,
          "bundled sample (300 passages)"),
    model("mamba-lm", "configs/shakespeare-char-mamba.toml", SAMPLE_LM, 1,
          lambda info: train(mamba_flops(256, 8, info.get("vocab", 65))),
          "the Shakespeare preset (8 blocks, d_model 256) on the bundled sample; " + MAMBA_SCAN),
    decode("translate-greedy", "greedy"),
    decode("translate-beam4", "beam"),
    generate("mamba-decode", "configs/shakespeare-char-mamba.toml"),
    generate("char-lstm-decode", "configs/shakespeare-char-lstm.toml"),
    w2v("sg"),
    w2v("cbow"),
    ct2("fp32", "beam4"),
    ct2("int8", "beam4"),
    ct2("fp32", "greedy"),
    ct2("int8", "greedy"),
]


# --- running children ---


def run_child(cmd, env):
    """Runs cmd; returns (its last JSON line, rusage). Fails loudly with the child's stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        o, e = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {shlex.join(map(str, cmd))}\n{e[-3000:]}")
    for line in reversed(o.strip().splitlines()):
        try:
            return json.loads(line), ru
        except json.JSONDecodeError:
            continue
    raise RuntimeError(f"no JSON line from {shlex.join(map(str, cmd))}\nstdout: {o[-2000:]}\nstderr: {e[-2000:]}")


def envs(threads):
    base = dict(os.environ)
    for k in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        base.pop(k, None)
    seqlab = dict(base, RAYON_NUM_THREADS=str(threads))
    torch = dict(base, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return seqlab, torch


CLK_TCK = os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds():
    """CPU seconds the whole machine has been busy since boot (/proc/stat: user, nice, system,
    irq, softirq and steal time, all CPUs)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def others_cores(busy, own, child, wall):
    """Average cores other processes kept busy during a child run: machine-wide busy CPU
    seconds minus the child's (all its threads and children) and the runner's own, over the
    wall time. /proc/stat counts in clock ticks (1/CLK_TCK s per CPU), so a quiet machine
    reads within ~0.01 of 0 on runs of seconds; clamped at 0."""
    return max(0.0, busy - own - child) / max(wall, 1e-9)


def measure(cmd, env):
    busy0, own0, t0 = busy_cpu_seconds(), self_cpu_seconds(), time.monotonic()
    r, ru = run_child(cmd, env)
    wall = time.monotonic() - t0
    child = ru.ru_utime + ru.ru_stime
    r["rss_mib"] = ru.ru_maxrss / 1024
    r["process_cpu_seconds"] = child
    r["others_cores"] = others_cores(busy_cpu_seconds() - busy0, self_cpu_seconds() - own0, child, wall)
    return r


def sgemm_peak(seqlab, threads, quick):
    """Best GFLOP/s of seqlab's candle matmul and torch.mm at 2048^3 (3 runs each, or 1), and
    the best of the FMA limit (`seqlab bench fma`; None where it is not measured: a CPU without
    AVX-512F or AVX2 + FMA, or a seqlab binary without the command, which is reported)."""
    s_env, t_env = envs(threads)
    steps = "2" if quick else "5"
    best, fmas = {}, []
    for _ in range(1 if quick else 3):
        a = measure([seqlab, "bench", "sgemm", "--json", "--steps", steps, "--warmup", "1"], s_env)
        b = measure([sys.executable, str(BENCH / "peers.py"), "sgemm", "--steps", steps, "--warmup", "1",
                     "--threads", str(threads)], t_env)
        best["seqlab"] = max(best.get("seqlab", 0), a["gflops"])
        best["pytorch"] = max(best.get("pytorch", 0), b["gflops"])
        try:
            fmas.append(measure([seqlab, "bench", "fma", "--json", "--steps", steps, "--warmup", "1"], s_env)["gflops"])
        except RuntimeError as e:
            if "this CPU has neither" not in str(e):
                print(f"  warning: `seqlab bench fma` failed, no FMA limit: {str(e)[-300:]}", file=sys.stderr)
    best["fma"] = max(fmas, default=None)
    best["peak"] = max(best["seqlab"], best["pytorch"])
    return best


def fmt(x, nd=0):
    if x is None or x != x:
        return "—"
    return f"{x:,.{nd}f}"


def export_info(export):
    """`vocab` from an exported tokenizer.json, for the FLOPs formulas."""
    tok = Path(export) / "tokenizer.json"
    if not tok.exists():
        return {}
    t = json.loads(tok.read_text())
    vocab = t.get("model", {}).get("vocab", {})
    ids = list(vocab.values()) + [a["id"] for a in t.get("added_tokens", [])]
    return {"vocab": max(ids) + 1} if ids else {}


def run_row(row, threads, a, seqlab, peak):
    """All rounds of one row at one thread count → a result dict."""
    steps = row.quick_steps if a.quick else row.steps
    warmup = 0 if a.quick else row.warmup if a.warmup is None or row.warmup == 0 else a.warmup
    export = WORK / row.name
    export.mkdir(parents=True, exist_ok=True)
    corpus = row.needs
    if row.name.startswith("w2v") and a.quick and corpus is not None:
        corpus = quick_corpus(corpus)
    subst = dict(steps=steps, warmup=warmup, threads=threads, export=export, corpus=corpus, seqlab=seqlab,
                 sentences=8 if a.quick else 64, tokens=16 if a.quick else 128,
                 test_sentences=8 if a.quick else 0)
    s_env, t_env = envs(threads)
    if row.prepare:
        run_child([seqlab] + [str(x).format(**subst) for x in row.prepare], s_env)
    runs = 1 if a.quick else a.runs
    res = {"row": row.name, "threads": threads, "unit": row.unit, "loadavg": [], "seqlab": [], "pytorch": []}
    for _ in range(runs):
        # Recorded for reference only (it includes the runner's own previous round).
        res["loadavg"].append(os.getloadavg()[0])
        for side in ("seqlab", "pytorch"):
            if row.peer_cmd:
                # The wrapped script names its sides itself (word2vec: seqlab, gensim).
                name = side if side == "seqlab" else row.peer_name
                cmd = [str(x).format(side=name, **subst) for x in row.peer]
                env = s_env if side == "seqlab" else t_env
            elif side == "seqlab":
                cmd, env = [seqlab] + [str(x).format(**subst) for x in row.seqlab], s_env
            else:
                cmd = [sys.executable, str(BENCH / "peers.py")] + [str(x).format(**subst) for x in row.peer]
                env = t_env
            res[side].append(measure(cmd, env))
    res["others_cores"] = [r["others_cores"] for side in ("seqlab", "pytorch") for r in res[side]]
    res["loaded"] = max(res["others_cores"]) > a.max_other_load
    info = dict(res["seqlab"][0], **export_info(export))
    for side in ("seqlab", "pytorch"):
        rs = res[side]
        med = lambda k: statistics.median(r[k] for r in rs)
        per_s = med("units_per_s")
        res[f"{side}_units_per_s"] = per_s
        # The timed section's CPU when the child reports it, else (word2vec) the whole process's.
        cpu = lambda r: r["cpu_seconds"] if r.get("cpu_seconds") is not None else r["process_cpu_seconds"]
        res[f"{side}_cpu_per_1k"] = statistics.median(1000 * cpu(r) / max(r["units"], 1) for r in rs)
        res[f"{side}_rss_mib"] = med("rss_mib")
        if row.unit == "sent/s":
            res[f"{side}_sent_per_s"] = statistics.median(r["sentences"] / r["seconds"] for r in rs)
        if row.flops is not None and peak:
            g = row.flops(info) * per_s / 1e9
            res[f"{side}_gflops"] = g
            res[f"{side}_peak_frac"] = g / peak
    res["ratio"] = res["seqlab_units_per_s"] / res["pytorch_units_per_s"]
    # Translation rows against CTranslate2 also report quality: BLEU, outputs equal to seqlab's.
    if "bleu" in res["pytorch"][-1]:
        res["seqlab_bleu"], res["pytorch_bleu"] = res["seqlab"][-1]["bleu"], res["pytorch"][-1]["bleu"]
        res["same_as_seqlab"] = res["pytorch"][-1].get("same_as_seqlab")
    return res


def quick_corpus(corpus):
    """The first ~4 MB of the word2vec corpus, for --quick."""
    out = WORK / "w2v-quick-corpus.txt"
    if not out.exists():
        with open(corpus, "rb") as f:
            data = f.read(4 << 20)
        out.write_bytes(data[: data.rfind(b"\n") + 1])
    return out


def n_threads(t):
    """'1 thread', '2 threads'."""
    return f"{t} thread{'s' if t != 1 else ''}"


def table(results, a, peaks):
    lines = ["| row | threads | seqlab | PyTorch (gensim for w2v, CTranslate2 for ct2-*) | seqlab / PyTorch | CPU-s per 1k units "
             "(seqlab / PyTorch) | peak RSS MiB (seqlab / PyTorch) | GFLOP/s, share of sgemm peak, of FMA limit "
             "(seqlab / PyTorch) "
             "| other processes' load during runs, cores (max) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['row']} | {r['threads']} | skipped: {r['skipped']} | | | | | | |")
            continue
        u = r["unit"]
        if u == "sent/s":
            s = f"{fmt(r['seqlab_sent_per_s'], 1)} sent/s ({fmt(r['seqlab_units_per_s'])} tok/s)"
            p = f"{fmt(r['pytorch_sent_per_s'], 1)} sent/s ({fmt(r['pytorch_units_per_s'])} tok/s)"
            if "pytorch_bleu" in r:
                s += f", BLEU {r['seqlab_bleu']:.2f}"
                p += f", BLEU {r['pytorch_bleu']:.2f}, {fmt(r['same_as_seqlab'])} outputs = seqlab's"
        else:
            s, p = f"{fmt(r['seqlab_units_per_s'])} {u}", f"{fmt(r['pytorch_units_per_s'])} {u}"
        if r["loaded"] and not a.force:
            ratio = "LOADED"
        elif r["loaded"]:
            ratio = f"{r['ratio']:.2f} (LOADED)"
        elif a.quick:
            # No warm-up and one step: a cold first step, not a measurement.
            ratio = f"{r['ratio']:.2f} (smoke)"
        else:
            ratio = f"**{r['ratio']:.2f}**"
        cpu = f"{r['seqlab_cpu_per_1k']:.3f} / {r['pytorch_cpu_per_1k']:.3f}"
        rss = f"{fmt(r['seqlab_rss_mib'])} / {fmt(r['pytorch_rss_mib'])}"
        if "seqlab_gflops" in r:
            fma = r.get("fma_limit_gflops")
            share = lambda side: (f"{r[f'{side}_gflops']:.1f} ({100 * r[f'{side}_peak_frac']:.0f} %"
                                  + (f", {100 * r[f'{side}_gflops'] / fma:.0f} %)" if fma else ")"))
            gf = f"{share('seqlab')} / {share('pytorch')}"
        else:
            gf = "—"
        loads = f"{max(r['others_cores']):.2f}"
        lines.append(f"| {r['row']} | {r['threads']} | {s} | {p} | {ratio} | {cpu} | {rss} | {gf} | {loads} |")
    peak_line = "; ".join(f"{n_threads(t)}: {v['peak']:.1f} GFLOP/s "
                          f"(seqlab {v['seqlab']:.1f}, torch.mm {v['pytorch']:.1f})" for t, v in peaks.items())
    fma_line = "; ".join(f"{n_threads(t)}: {v['fma']:.1f} GFLOP/s (the sgemm peak is "
                         f"{100 * v['peak'] / v['fma']:.0f} % of it)" for t, v in peaks.items() if v["fma"])
    fma_line = f"FMA limit (`seqlab bench fma`, independent FMA chains on every thread): {fma_line}\n" if fma_line else ""
    return "\n".join(lines) + f"\n\nsgemm peak (2048^3 f32, best of both): {peak_line}\n" + fma_line


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def shown_path(p):
    """p relative to the repository when inside it, else absolute."""
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def default_seqlab():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for p in (target / "release" / "seqlab", target / "debug" / "seqlab"):
        if p.exists():
            return str(p)
    return str(target / "release" / "seqlab")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", help=f"comma-separated rows (default: all): {', '.join(r.name for r in ROWS)}")
    ap.add_argument("--runs", type=int, default=3, help="runs per side per row and thread count (>= 3 for a claim)")
    ap.add_argument("--threads", help="thread counts, comma-separated (default 1,2; --quick: 2)")
    ap.add_argument("--quick", action="store_true", help="smoke check, not a measurement: 1 run per side, "
                                                         "1 step without warm-up, 8 sentences to decode, a 4 MB "
                                                         "word2vec corpus, 2 threads")
    ap.add_argument("--warmup", type=int, help="untimed warm-up steps of both sides for every row that "
                    "warms up (default: each row's own, 3 for layer and model rows)")
    ap.add_argument("--force", action="store_true", help="print ratios of LOADED rows too (still labelled)")
    ap.add_argument("--max-other-load", type=float, default=0.25,
                    help="a row is LOADED when other processes kept more than this many cores busy during any "
                         "of its runs (default 0.25)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per row and thread count")
    ap.add_argument("--seqlab", default=default_seqlab(), help="the seqlab binary (default: target/release, "
                                                                  "else target/debug)")
    a = ap.parse_args()
    threads = [int(t) for t in (a.threads or ("2" if a.quick else "1,2")).split(",")]
    by_name = {r.name: r for r in ROWS}
    names = a.rows.split(",") if a.rows else [r.name for r in ROWS]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        sys.exit(f"unknown rows {unknown}; known: {', '.join(by_name)}")
    if not Path(a.seqlab).exists():
        sys.exit(f"{a.seqlab}: no seqlab binary; build it: cargo build --release -p seqlab-cli")
    if a.runs < 1:
        sys.exit("--runs must be >= 1")
    # No torch import here: a child's ru_maxrss includes the runner's resident memory at fork
    # (exec records the old address space's high-water mark), so the runner stays small.
    started = time.time()
    command = "python bench/run.py " + shlex.join(sys.argv[1:])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    torch_version = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip() or "missing"
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    header = (f"Command: `{command}` ({date}; seqlab `{shown_path(a.seqlab)}`, PyTorch "
              f"{torch_version}; {machine()}; {'QUICK smoke check, not a measurement; ' if a.quick else ''}"
              f"peak RSS includes the runner's {floor:.0f} MiB copied at fork; "
              f"{1 if a.quick else a.runs} alternating runs per side, medians)")
    print(header, flush=True)
    peaks = {}
    for t in threads:
        peaks[t] = sgemm_peak(a.seqlab, t, a.quick)
        fma = f"{peaks[t]['fma']:.1f}" if peaks[t]["fma"] else "not measured"
        print(f"  sgemm peak at {n_threads(t)}: {peaks[t]['peak']:.1f} GFLOP/s, FMA limit {fma}",
              file=sys.stderr, flush=True)
    results = []
    for n in names:
        row = by_name[n]
        for t in threads:
            if row.threads and t not in row.threads:
                continue
            if row.needs and not row.needs.exists():
                r = {"row": n, "threads": t, "skipped": f"{row.needs} is absent (development data only)"}
                print(f"  {n}: skipped: {r['skipped']}", file=sys.stderr, flush=True)
            else:
                t0 = time.time()
                r = run_row(row, t, a, a.seqlab, peaks[t]["peak"])
                r["sgemm_peak_gflops"], r["fma_limit_gflops"] = peaks[t]["peak"], peaks[t]["fma"]
                print(f"  {n} @ {t} threads: seqlab {r['seqlab_units_per_s']:.1f} vs {row.peer_name} "
                      f"{r['pytorch_units_per_s']:.1f} {row.unit}{' LOADED' if r['loaded'] else ''} "
                      f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
            results.append(r)
            if a.json:
                print(json.dumps(r, default=str), flush=True)
    print()
    print(table(results, a, peaks))
    notes = [f"- {r.name}: {r.note}" for r in ROWS if r.name in names and r.note]
    if notes:
        print("Rows:\n" + "\n".join(notes))
    print(f"\nTotal time {(time.time() - started) / 60:.1f} min.")


if __name__ == "__main__":
    main()
