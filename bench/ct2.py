#!/usr/bin/env python3
"""seqlab against CTranslate2 on the same translation model (issue #16, item 3).

    cargo build --release -p seqlab-cli
    # the table on its own (every system, beam 4 and greedy, 1 and 2 threads, --runs each):
    /work/venv/bin/python bench/ct2.py --checkpoint runs/mt-bible-small-fairseq [--runs 3]
    # as rows of the benchmark runner (ct2-fp32-greedy, ct2-fp32-beam4, ct2-int8-greedy,
    # ct2-int8-beam4; checkpoint from $SEQLAB_CT2_CHECKPOINT, default
    # runs/mt-bible-small-fairseq):
    /work/venv/bin/python bench/run.py --rows ct2-fp32-beam4,ct2-int8-beam4,ct2-fp32-greedy,ct2-int8-greedy

The model must be exportable (pre-norm, `model.positions = "fairseq"`, shared embeddings;
see seqlab_mt::hf), e.g. `seqlab train --config configs/mt-bible-small.toml --set
model.positions=fairseq --set run_dir=runs/mt-bible-small-fairseq`. It is exported with
`seqlab export --format hf` and converted with CTranslate2's Transformers converter, fp32 and
int8 (`--work DIR` keeps both between runs). Every run translates the same test set (default
data/sample/bible.en-es.test.tsv, all 200 sentences; --sentences N takes the first N) with
the same beam size (4, or 1 = greedy), the run's length penalty (0.6 unless
--length-penalty), batch 32, at the given threads (seqlab: RAYON_NUM_THREADS; CTranslate2:
intra_threads, inter_threads = 1). Target tokens = tokenizer ids of each output + <eos>,
counted the same way for every system; BLEU is sacrebleu's 13a (by `seqlab bleu`); "same"
counts outputs equal to seqlab's. Timed sections exclude model loading on both sides
(seqlab's own "translated N sentences in S s", which includes its tokenization of the
sources; CTranslate2's translate_batch wall time on pre-tokenized input). Both sides are
warmed up alike before their timed pass: the first WARMUP = 32 test sentences (one batch)
are translated once, untimed, with the same settings (seqlab: `translate --warmup 32`;
$SEQLAB_CT2_WARMUP sets another count, e.g. 200 for a whole warm pass before the timed one;
CTranslate2: a translate_batch call on them), so neither side's figure includes a cold
first pass (fresh memory pages, which some VMs zero very slowly). A seqlab binary without
`--warmup` (before it existed) is refused by its argument parser.

Known difference in the work done: seqlab stops a sentence at its source length + 50 tokens,
CTranslate2 at max_decoding_length = 256 for all; a trained model ends nearly every sentence
with <eos> long before either limit, an untrained one does not (use a trained checkpoint).

With --single SIDE (seqlab, ct2-fp32 or ct2-int8) it runs that side once and prints one JSON
line for bench/run.py: units (target tokens), seconds, units_per_s, sentences, bleu and, for
CTranslate2 when seqlab's output of the same settings is in --work, same_as_seqlab.

The 1-minute load average is read before every round; a row whose rounds saw a load above its
thread count is marked LOADED (its numbers are not a measurement).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = os.environ.get("SEQLAB_CT2_CHECKPOINT", str(ROOT / "runs" / "mt-bible-small-fairseq"))
SIDES = ("seqlab", "ct2-fp32", "ct2-int8")
# Sentences of the untimed warm-up pass on both sides ($SEQLAB_CT2_WARMUP, default 32 = one batch).
WARMUP = int(os.environ.get("SEQLAB_CT2_WARMUP", "32"))


def seqlab_exe(profile):
    return os.environ.get("SEQLAB", str(ROOT / "target" / profile / "seqlab"))


def run(cmd, env=None):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr}")
    return r


CT2_CHILD = r"""
import json, sys, time, ctranslate2
from transformers import AutoTokenizer
model, hf, src_file, beam, lp, threads, out, warmup = sys.argv[1:9]
tok = AutoTokenizer.from_pretrained(hf)
srcs = [l.rstrip("\n").split("\t")[0] for l in open(src_file, encoding="utf-8") if l.strip()]
toks = [tok.convert_ids_to_tokens(tok(s)["input_ids"]) for s in srcs]
tr = ctranslate2.Translator(model, device="cpu", inter_threads=1, intra_threads=int(threads))
tr.translate_batch(toks[:int(warmup)], beam_size=int(beam), length_penalty=float(lp), max_batch_size=32,
                   batch_type="examples", max_decoding_length=256)  # warm-up, as seqlab's --warmup
t0 = time.perf_counter()
r = tr.translate_batch(toks, beam_size=int(beam), length_penalty=float(lp), max_batch_size=32,
                       batch_type="examples", max_decoding_length=256)
secs = time.perf_counter() - t0
hyps = [tok.decode(tok.convert_tokens_to_ids(x.hypotheses[0]), skip_special_tokens=True).strip() for x in r]
open(out, "w", encoding="utf-8").write("".join(h + "\n" for h in hyps))
print(json.dumps({"secs": secs}))
"""


def prepare(a, exe):
    """Export and convert once into the work folder (reused when already there): the HF
    folder, the CTranslate2 models, the test sources (first --sentences) and references."""
    from ctranslate2.converters import TransformersConverter
    import shutil
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    hf, fresh = work / "hf", work / "hf-fresh"
    # Exported every time (seconds); the conversions are redone only when the export changed
    # (another checkpoint in the same --work folder).
    shutil.rmtree(fresh, ignore_errors=True)
    run([exe, "export", "--format", "hf", "--checkpoint", a.checkpoint, fresh])
    changed = not (hf / "model.safetensors").exists() or \
        (hf / "model.safetensors").read_bytes() != (fresh / "model.safetensors").read_bytes()
    if changed:
        shutil.rmtree(hf, ignore_errors=True)
    else:
        shutil.rmtree(fresh)
    if changed:
        fresh.rename(hf)
    models = {}
    for side, q in [("ct2-fp32", "float32"), ("ct2-int8", "int8")]:
        models[side] = work / side
        if changed or not (models[side] / "model.bin").exists():
            TransformersConverter(str(hf)).convert(str(models[side]), quantization=None if q == "float32" else q,
                                                   force=True)
    pairs = [l.rstrip("\n").split("\t") for l in open(a.test, encoding="utf-8") if l.strip()]
    if a.sentences:
        pairs = pairs[: a.sentences]
    test = work / f"test-{len(pairs)}.tsv"
    test.write_text("".join("\t".join(p[:2]) + "\n" for p in pairs), encoding="utf-8")
    refs = work / f"refs-{len(pairs)}.txt"
    refs.write_text("".join(p[1] + "\n" for p in pairs), encoding="utf-8")
    child = work / "ct2_child.py"
    child.write_text(CT2_CHILD)
    return hf, models, test, refs, child, len(pairs)


def translate(side, a, exe, prep, threads, beam, out):
    """Translates the test set with one system; returns the timed seconds."""
    hf, models, test, _, child, _ = prep
    if side == "seqlab":
        dec = ["--decoder", "greedy"] if beam == 1 else ["--decoder", "beam", "--beam-size", str(beam),
                                                          "--length-penalty", str(a.length_penalty)]
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        r = run([exe, "translate", "--checkpoint", a.checkpoint, "--input", test, "--tsv", "--output", out, *dec,
                 "--batch-size", "32", "--warmup", str(WARMUP)], env=env)
        # Two decimals in seqlab's message: never divide by zero on a tiny set.
        return max(float(re.search(r"in ([0-9.]+) s", r.stderr).group(1)), 0.005)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = run([sys.executable, child, models[side], hf, test, beam, a.length_penalty, threads, out, WARMUP], env=env)
    return json.loads(r.stdout.strip().split("\n")[-1])["secs"]


def target_tokens(tok, hyps):
    return sum(len(tok(h, add_special_tokens=False)["input_ids"]) + 1 for h in hyps)


def bleu(exe, hyp_file, ref_file):
    r = run([exe, "bleu", "--json", hyp_file, ref_file])
    return json.loads(r.stdout)["score"]


def lines(path):
    return Path(path).read_text(encoding="utf-8").rstrip("\n").split("\n")


def same(a, b):
    return sum(x == y for x, y in zip(lines(a), lines(b)))


def single(a, exe):
    """One run of one side → one JSON line (bench/run.py's child protocol)."""
    from transformers import AutoTokenizer
    prep = prepare(a, exe)
    hf, _, _, refs, _, n = prep
    out = Path(a.work) / f"{a.single}-beam{a.beam}-{n}.txt"
    secs = translate(a.single, a, exe, prep, a.threads, a.beam, out)
    tokens = target_tokens(AutoTokenizer.from_pretrained(str(hf)), lines(out))
    r = {"row": f"{a.single}-beam{a.beam}", "side": a.single, "threads": a.threads, "units": tokens,
         "seconds": secs, "cpu_seconds": None, "units_per_s": tokens / secs, "sentences": n,
         "bleu": bleu(exe, out, refs)}
    base = Path(a.work) / f"seqlab-beam{a.beam}-{n}.txt"
    if a.single != "seqlab" and base.exists():
        r["same_as_seqlab"] = same(out, base)
    print(json.dumps(r))


def table(a, exe):
    from transformers import AutoTokenizer
    prep = prepare(a, exe)
    hf, _, _, refs, _, n = prep
    tok = AutoTokenizer.from_pretrained(str(hf))
    rows = []
    for beam in [int(b) for b in a.beams.split(",")]:
        for threads in [int(t) for t in a.threads_list.split(",")]:
            secs, outs, loaded = {s: [] for s in SIDES}, {}, False
            for _ in range(a.runs):
                loaded |= os.getloadavg()[0] > threads
                for side in SIDES:
                    outs[side] = Path(a.work) / f"{side}-beam{beam}-t{threads}.txt"
                    secs[side].append(translate(side, a, exe, prep, threads, beam, outs[side]))
            for side in SIDES:
                n_tok = target_tokens(tok, lines(outs[side]))
                med = statistics.median(secs[side])
                rows.append({"system": side, "beam": beam, "threads": threads, "tok_per_s": n_tok / med,
                             "sent_per_s": n / med, "secs_median": med, "target_tokens": n_tok,
                             "bleu": bleu(exe, outs[side], refs), "same_as_seqlab": same(outs[side], outs["seqlab"]),
                             "sentences": n, "loaded": loaded})
    if a.json:
        print(json.dumps(rows, indent=1))
    print(f"{'system':<10} {'beam':>4} {'threads':>7} {'sent/s':>8} {'tok/s':>9} {'BLEU':>6} {'same as seqlab':>15}")
    for r in rows:
        flag = "  LOADED" if r["loaded"] else ""
        print(f"{r['system']:<10} {r['beam']:>4} {r['threads']:>7} {r['sent_per_s']:>8.1f} {r['tok_per_s']:>9.0f} "
              f"{r['bleu']:>6.2f} {r['same_as_seqlab']:>7}/{r['sentences']}{flag}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="seqlab translation run or checkpoint folder")
    ap.add_argument("--test", default=str(ROOT / "data/sample/bible.en-es.test.tsv"))
    ap.add_argument("--sentences", type=int, default=0, help="first N test sentences (default all)")
    ap.add_argument("--threads-list", default="1,2", help="table mode: thread counts")
    ap.add_argument("--beams", default="4,1", help="table mode: beam sizes (1 = greedy)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--length-penalty", type=float, default=0.6)
    ap.add_argument("--profile", default="release")
    ap.add_argument("--seqlab", help="the seqlab binary (default target/PROFILE/seqlab, or $SEQLAB)")
    ap.add_argument("--work", help="folder for the export, the converted models and outputs (default: a new temp folder)")
    ap.add_argument("--single", choices=SIDES, help="run one side once and print one JSON line (bench/run.py)")
    ap.add_argument("--beam", type=int, default=4, help="--single: beam size (1 = greedy)")
    ap.add_argument("--threads", type=int, default=1, help="--single: threads")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    exe = a.seqlab or seqlab_exe(a.profile)
    if not Path(a.checkpoint).exists():
        sys.exit(f"{a.checkpoint}: no such checkpoint (train an exportable model first; see --help)")
    a.work = a.work or tempfile.mkdtemp(prefix="seqlab-ct2-")
    if a.single:
        single(a, exe)
    else:
        table(a, exe)


if __name__ == "__main__":
    main()
