#!/usr/bin/env python3
"""seqlab against CTranslate2 on the same translation model (issue #16, item 3).

    cargo build --release -p seqlab-cli
    /work/venv/bin/python bench/ct2.py --checkpoint runs/mt-bible-small-fairseq [--runs 3]

The model must be exportable (pre-norm, `model.positions = "fairseq"`, shared embeddings;
see seqlab_mt::hf): it is exported with `seqlab export --format hf` and converted with
CTranslate2's Transformers converter, fp32 and int8. Every row translates the same test set
(default data/sample/bible.en-es.test.tsv) with beam 4, length penalty = the run's, batch 32,
at 1 and 2 threads (seqlab: RAYON_NUM_THREADS; CTranslate2: intra_threads, inter_threads=1).
Rows alternate seqlab / ct2 fp32 / ct2 int8, each in a fresh process, --runs times; the table
gives median target tokens/s (target tokens = tokenizer ids of the output + <eos>, counted the
same way for every system), BLEU (sacrebleu's 13a, by `seqlab bleu`) and how many outputs
equal seqlab's. Timed sections exclude model loading on both sides (seqlab's own
"translated N sentences in S s"; ct2's translate_batch wall time).

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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seqlab_exe(profile):
    return os.environ.get("SEQLAB", str(ROOT / "target" / profile / "seqlab"))


def run(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr}")
    return r


CT2_CHILD = r"""
import json, sys, time, ctranslate2
from transformers import AutoTokenizer
model, hf, src_file, beam, lp, threads, out = sys.argv[1:8]
tok = AutoTokenizer.from_pretrained(hf)
srcs = [l.rstrip("\n").split("\t")[0] for l in open(src_file, encoding="utf-8") if l.strip()]
toks = [tok.convert_ids_to_tokens(tok(s)["input_ids"]) for s in srcs]
tr = ctranslate2.Translator(model, device="cpu", inter_threads=1, intra_threads=int(threads))
tr.translate_batch(toks[:8], beam_size=int(beam), length_penalty=float(lp), max_batch_size=32)  # warm-up
t0 = time.perf_counter()
r = tr.translate_batch(toks, beam_size=int(beam), length_penalty=float(lp), max_batch_size=32,
                       batch_type="examples", max_decoding_length=256)
secs = time.perf_counter() - t0
hyps = [tok.decode(tok.convert_tokens_to_ids(x.hypotheses[0]), skip_special_tokens=True).strip() for x in r]
open(out, "w", encoding="utf-8").write("".join(h + "\n" for h in hyps))
print(json.dumps({"secs": secs}))
"""


def target_tokens(tok, hyps):
    return sum(len(tok(h, add_special_tokens=False)["input_ids"]) + 1 for h in hyps)


def bleu(exe, hyp_file, ref_file):
    r = run([exe, "bleu", "--json", hyp_file, ref_file])
    return json.loads(r.stdout)["score"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="seqlab translation run or checkpoint folder")
    ap.add_argument("--test", default=str(ROOT / "data/sample/bible.en-es.test.tsv"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--length-penalty", type=float, default=0.6)
    ap.add_argument("--profile", default="release")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    exe = seqlab_exe(a.profile)
    from transformers import AutoTokenizer
    from ctranslate2.converters import TransformersConverter

    work = Path(tempfile.mkdtemp(prefix="seqlab-ct2-"))
    hf = work / "hf"
    run([exe, "export", "--format", "hf", "--checkpoint", a.checkpoint, str(hf)])
    models = {}
    for q in ["float32", "int8"]:
        models[q] = work / f"ct2-{q}"
        TransformersConverter(str(hf)).convert(str(models[q]), quantization=None if q == "float32" else q)
    tok = AutoTokenizer.from_pretrained(str(hf))
    refs = work / "refs.txt"
    pairs = [l.rstrip("\n").split("\t") for l in open(a.test, encoding="utf-8") if l.strip()]
    refs.write_text("".join(p[1] + "\n" for p in pairs), encoding="utf-8")
    child = work / "ct2_child.py"
    child.write_text(CT2_CHILD)
    rows = []
    for threads in [int(t) for t in a.threads.split(",")]:
        secs = {"seqlab": [], "ct2-fp32": [], "ct2-int8": []}
        hyps, loaded = {}, False
        for _ in range(a.runs):
            loaded |= os.getloadavg()[0] > threads
            out = work / f"seqlab-{threads}.txt"
            env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
            r = run([exe, "translate", "--checkpoint", a.checkpoint, "--input", a.test, "--tsv", "--output", str(out),
                     "--decoder", "beam", "--beam-size", str(a.beam), "--length-penalty", str(a.length_penalty),
                     "--batch-size", "32"], env=env)
            secs["seqlab"].append(float(re.search(r"in ([0-9.]+) s", r.stderr).group(1)))
            hyps["seqlab"] = out
            for q, name in [("float32", "ct2-fp32"), ("int8", "ct2-int8")]:
                out = work / f"{name}-{threads}.txt"
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                r = run([sys.executable, str(child), str(models[q]), str(hf), a.test, str(a.beam),
                         str(a.length_penalty), str(threads), str(out)], env=env)
                secs[name].append(json.loads(r.stdout.strip().split("\n")[-1])["secs"])
                hyps[name] = out
        base = hyps["seqlab"].read_text(encoding="utf-8").split("\n")
        for name, s in secs.items():
            h = hyps[name].read_text(encoding="utf-8").split("\n")
            n_tok = target_tokens(tok, [x for x in h if x])
            rows.append({
                "system": name, "threads": threads, "tok_per_s": n_tok / statistics.median(s),
                "secs_median": statistics.median(s), "target_tokens": n_tok,
                "bleu": bleu(exe, str(hyps[name]), str(refs)),
                "same_as_seqlab": sum(x == y for x, y in zip(h, base) if x or y), "sentences": len(pairs),
                "loaded": loaded,
            })
    if a.json:
        print(json.dumps(rows, indent=1))
    print(f"{'system':<10} {'threads':>7} {'tok/s':>9} {'BLEU':>6} {'same as seqlab':>15}")
    for r in rows:
        flag = "  LOADED" if r["loaded"] else ""
        print(f"{r['system']:<10} {r['threads']:>7} {r['tok_per_s']:>9.0f} {r['bleu']:>6.2f} "
              f"{r['same_as_seqlab']:>7}/{r['sentences']}{flag}")


if __name__ == "__main__":
    main()
