"""seqlab w2v vs gensim 4.4 on the same prepared text: words/s, analogy accuracy,
WordSim353 / SimLex-999 Spearman, peak RSS. Prints a markdown table.

    /work/venv/bin/python bench/w2v_vs_gensim.py [--epochs 5] [--threads 2] [--models sg,cbow]
        [--seqlab $CARGO_TARGET_DIR/debug/seqlab] [--corpus ../shared/data/w2v/corpus.en.txt]

With `--single seqlab|gensim` it trains one model with one trainer, evaluates nothing and
prints one JSON line (words/s): the word2vec rows of bench/run.py, which alternate the two
trainers and take medians (docs/BENCHMARKS.md).

The raw corpus is prepared once by `seqlab w2v prepare --lowercase --strip-punct`; both
trainers read that file (gensim through `corpus_file`, its fastest path). words/s is
corpus tokens x epochs / training time (vocabulary scan excluded for both). Quality is
measured by gensim's own evaluators on both vector files (so gensim must load ours), and
seqlab's evaluators are run on both as a cross-check. Peak RSS is each process's ru_maxrss.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"

GENSIM_TRAIN = r"""
import json, sys, time, logging
from gensim.models import Word2Vec
a = json.loads(sys.argv[1])
m = Word2Vec(vector_size=a["dim"], window=a["window"], negative=a["negative"], hs=0,
             sample=a["sample"], min_count=a["min_count"], workers=a["threads"], sg=a["sg"],
             alpha=a["alpha"], min_alpha=a["alpha"] * 1e-4, seed=1, epochs=a["epochs"])
t0 = time.time()
m.build_vocab(corpus_file=a["corpus"])
t1 = time.time()
m.train(corpus_file=a["corpus"], total_words=m.corpus_total_words, epochs=a["epochs"])
t2 = time.time()
if a.get("out"):
    m.wv.save_word2vec_format(a["out"], binary=True)
print(json.dumps({"vocab_seconds": t1 - t0, "train_seconds": t2 - t1, "vocab_size": len(m.wv),
                  "tokens": m.corpus_total_words}))
"""

GENSIM_EVAL = r"""
import json, sys, logging
from gensim.models import KeyedVectors
path, binary, qw, ws, sl = sys.argv[1:6]
kv = KeyedVectors.load_word2vec_format(path, binary=binary == "1")
acc, _ = kv.evaluate_word_analogies(qw, restrict_vocab=30000, case_insensitive=True)
ws_r = kv.evaluate_word_pairs(ws, case_insensitive=True)
sl_r = kv.evaluate_word_pairs(sl, case_insensitive=True)
print(json.dumps({"analogy": acc, "wordsim_spearman": float(ws_r[1][0]), "simlex_spearman": float(sl_r[1][0]),
                  "vocab": len(kv), "dim": kv.vector_size}))
"""


def run(cmd, log):
    """Runs cmd, returns (stdout, stderr, seconds, peak RSS in MiB)."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN only cumulatively,
    # so peak RSS is read by wrapping with /usr/bin/time below instead.
    secs = time.time() - t0
    log.write(f"$ {' '.join(map(str, cmd))}\n{out}\n{err}\n")
    log.flush()
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n{err[-3000:]}")
    return out, err, secs


def run_rss(cmd, log):
    out, err, secs = run(["/usr/bin/time", "-f", "MAXRSS_KB=%M"] + [str(c) for c in cmd], log)
    m = re.findall(r"MAXRSS_KB=(\d+)", err)
    return out, err, secs, int(m[-1]) / 1024 if m else float("nan")


def seqlab_train_cmd(a, model, prepared, out):
    sg = model == "sg"
    return [a.seqlab, "w2v", "train", "--input", prepared, "--output", out, "--quiet",
            "--model", "skipgram" if sg else "cbow", "--dim", "100", "--window", "5",
            "--negative", "5", "--sample", "1e-3", "--min-count", "5", "--epochs", str(a.epochs),
            "--alpha", str(alpha_of(model)), "--threads", str(a.threads), "--format", "binary"]


def alpha_of(model):
    return 0.025 if model == "sg" else 0.05


def parse_seqlab_stats(err):
    """(vocabulary, corpus tokens, training seconds) from `seqlab w2v train`'s last line."""
    m = re.search(r"vocabulary (\d+) words .*?, (\d+) tokens.*?train ([\d.]+)s", err)
    return int(m.group(1)), int(m.group(2)), float(m.group(3))


def gensim_args(a, model, prepared, out):
    return dict(dim=100, window=5, negative=5, sample=1e-3, min_count=5, epochs=a.epochs, threads=a.threads,
                sg=int(model == "sg"), alpha=alpha_of(model), corpus=str(prepared), out=out)


def single(a, prepared, log):
    """One trainer, one model, no evaluation: one JSON line in bench/peers.py's format
    (units = corpus tokens x epochs; cpu_seconds None: the runner takes the process's)."""
    model = a.models.split(",")[0]
    if a.single == "seqlab":
        _, err, _ = run(seqlab_train_cmd(a, model, prepared, Path(a.work) / f"single-{model}.bin"), log)
        vocab, tokens, secs = parse_seqlab_stats(err)
    else:
        o, _, _ = run([sys.executable, "-c", GENSIM_TRAIN, json.dumps(gensim_args(a, model, prepared, None))], log)
        g = json.loads(o.strip().splitlines()[-1])
        vocab, tokens, secs = g["vocab_size"], g["tokens"], g["train_seconds"]
    units = tokens * a.epochs
    print(json.dumps({"row": f"w2v-{model}", "side": a.single, "unit": "words", "threads": a.threads,
                      "steps": a.epochs, "units": units, "seconds": secs, "cpu_seconds": None,
                      "units_per_s": units / secs, "vocab": vocab}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(DATA / "w2v" / "corpus.en.txt"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="sg,cbow")
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    ap.add_argument("--seqlab", default=str(Path(target) / "debug" / "seqlab"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "w2v-bench"))
    ap.add_argument("--skip-gensim", action="store_true")
    ap.add_argument("--single", choices=("seqlab", "gensim"),
                    help="train the one model of --models with this trainer only; print one JSON line")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "log.txt", "a")
    qw, ws, sl = DATA / "eval" / "questions-words.txt", DATA / "eval" / "wordsim353.tsv", DATA / "eval" / "simlex999.txt"

    prepared = work / f"prepared-{Path(a.corpus).stem}.txt"
    if not prepared.exists():
        tmp = prepared.with_suffix(f".{os.getpid()}.tmp")
        run([a.seqlab, "w2v", "prepare", "--input", a.corpus, "--output", tmp, "--lowercase", "--strip-punct"], log)
        os.replace(tmp, prepared)
    if a.single:
        return single(a, prepared, log)

    rows = []
    for model in a.models.split(","):
        # seqlab
        out_s = work / f"seqlab-{model}.bin"
        _, err, _, rss = run_rss(seqlab_train_cmd(a, model, prepared, out_s), log)
        vocab, tokens, secs = parse_seqlab_stats(err)
        res = {"trainer": "seqlab", "model": model, "vocab": vocab, "train_s": secs,
               "wps": tokens * a.epochs / secs, "rss_mib": rss,
               "vectors_mib": vocab * 100 * 4 / 2**20}
        res.update(json.loads(run([sys.executable, "-c", GENSIM_EVAL, out_s, "1", qw, ws, sl], log)[0]))
        rows.append(res)
        # gensim
        if not a.skip_gensim:
            out_g = work / f"gensim-{model}.bin"
            args = gensim_args(a, model, prepared, str(out_g))
            o, _, _, rss = run_rss([sys.executable, "-c", GENSIM_TRAIN, json.dumps(args)], log)
            g = json.loads(o.strip().splitlines()[-1])
            res = {"trainer": "gensim", "model": model, "vocab": g["vocab_size"], "train_s": g["train_seconds"],
                   "wps": g["tokens"] * a.epochs / g["train_seconds"], "rss_mib": rss,
                   "vectors_mib": g["vocab_size"] * 100 * 4 / 2**20}
            res.update(json.loads(run([sys.executable, "-c", GENSIM_EVAL, out_g, "1", qw, ws, sl], log)[0]))
            rows.append(res)
        # Cross-check: seqlab's own evaluator on every file of this model.
        for r in rows[-2:] if not a.skip_gensim else rows[-1:]:
            f = work / f"{r['trainer']}-{model}.bin"
            ea = json.loads(run([a.seqlab, "w2v", "eval-analogy", f, qw, "--json"], log)[0])
            es = json.loads(run([a.seqlab, "w2v", "eval-similarity", f, ws, "--json"], log)[0])
            el = json.loads(run([a.seqlab, "w2v", "eval-similarity", f, sl, "--json"], log)[0])
            r["seqlab_eval"] = (ea["overall"]["accuracy"], es["spearman"], el["spearman"])
        json.dump(rows, open(work / "results.json", "w"), indent=1)

    print(f"\nepochs {a.epochs}, threads {a.threads}, dim 100, window 5, negative 5, sample 1e-3, min-count 5")
    print("| model | trainer | vocab | train s | words/s | analogy (restrict 30k) | WS353 ρ | SimLex ρ | peak RSS MiB | vectors MiB | seqlab-eval (acc, ws, sl) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        se = ", ".join(f"{x:.4f}" for x in r["seqlab_eval"])
        print(f"| {r['model']} | {r['trainer']} | {r['vocab']} | {r['train_s']:.1f} | {r['wps']:,.0f} | {100 * r['analogy']:.2f}% "
              f"| {r['wordsim_spearman']:.4f} | {r['simlex_spearman']:.4f} | {r['rss_mib']:.0f} | {r['vectors_mib']:.1f} | {se} |")
    for model in a.models.split(","):
        s = [r for r in rows if r["model"] == model]
        if len(s) == 2:
            print(f"{model}: seqlab/gensim words/s = {s[0]['wps'] / s[1]['wps']:.2f}x")


if __name__ == "__main__":
    main()
