"""seqlab w2v vs gensim 4.4 on the same prepared text: words/s, analogy accuracy,
WordSim353 / SimLex-999 Spearman, peak RSS. Prints a markdown table.

    /work/venv/bin/python bench/w2v_vs_gensim.py [--epochs 5] [--threads 2] [--models sg,cbow]
        [--seeds 1,2,3] [--seqlab $CARGO_TARGET_DIR/debug/seqlab] [--corpus ../shared/data/w2v/corpus.en.txt]

Every (model, seed) trains seqlab then gensim with that seed; with several seeds the table
ends with each trainer's medians per model (quality from one run is within seed noise:
gensim's own CBOW analogy accuracy spread over 2.3 points across seeds 1-3, 2026-11-30). words/s is marked
LOADED when the 1-minute load average before a run exceeded --threads: a figure from a
loaded machine is not a speed measurement.

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
import statistics
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
             alpha=a["alpha"], min_alpha=a["alpha"] * 1e-4, seed=a["seed"], epochs=a["epochs"])
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
acc, sections = kv.evaluate_word_analogies(qw, restrict_vocab=30000, case_insensitive=True)
total = sections[-1]
ws_r = kv.evaluate_word_pairs(ws, case_insensitive=True)
sl_r = kv.evaluate_word_pairs(sl, case_insensitive=True)
# n_analogy: questions evaluated (all four words among the first 30k of the file); it differs
# between two files only if their vocabulary orders differ at the cut.
print(json.dumps({"analogy": acc, "n_analogy": len(total["correct"]) + len(total["incorrect"]),
                  "wordsim_spearman": float(ws_r[1][0]), "simlex_spearman": float(sl_r[1][0]),
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


def seqlab_train_cmd(a, model, prepared, out, seed=1):
    sg = model == "sg"
    return [a.seqlab, "w2v", "train", "--input", prepared, "--output", out, "--quiet",
            "--model", "skipgram" if sg else "cbow", "--dim", "100", "--window", "5",
            "--negative", "5", "--sample", "1e-3", "--min-count", "5", "--epochs", str(a.epochs),
            "--alpha", str(alpha_of(model)), "--threads", str(a.threads), "--format", "binary",
            "--seed", str(seed)]


def alpha_of(model):
    return 0.025 if model == "sg" else 0.05


def parse_seqlab_stats(err):
    """(vocabulary, corpus tokens, training seconds) from `seqlab w2v train`'s last line."""
    m = re.search(r"vocabulary (\d+) words .*?, (\d+) tokens.*?train ([\d.]+)s", err)
    return int(m.group(1)), int(m.group(2)), float(m.group(3))


def gensim_args(a, model, prepared, out, seed=1):
    return dict(dim=100, window=5, negative=5, sample=1e-3, min_count=5, epochs=a.epochs, threads=a.threads,
                sg=int(model == "sg"), alpha=alpha_of(model), corpus=str(prepared), out=out, seed=seed)


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
    ap.add_argument("--seeds", default="1", help="comma-separated seeds; each trainer runs once per seed")
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    ap.add_argument("--seqlab", default=str(Path(target) / "debug" / "seqlab"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "w2v-bench"))
    ap.add_argument("--skip-gensim", action="store_true")
    ap.add_argument("--single", choices=("seqlab", "gensim"),
                    help="train the one model of --models with this trainer only; print one JSON line")
    ap.add_argument("--prepared", help="the prepared corpus (default: prepared by this script under --work)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "log.txt", "a")
    qw, ws, sl = DATA / "eval" / "questions-words.txt", DATA / "eval" / "wordsim353.tsv", DATA / "eval" / "simlex999.txt"

    prepared = Path(a.prepared) if a.prepared else work / f"prepared-{Path(a.corpus).stem}.txt"
    if not prepared.exists():
        tmp = prepared.with_suffix(f".{os.getpid()}.tmp")
        run([a.seqlab, "w2v", "prepare", "--input", a.corpus, "--output", tmp, "--lowercase", "--strip-punct"], log)
        os.replace(tmp, prepared)
    if a.single:
        return single(a, prepared, log)

    seeds = [int(x) for x in a.seeds.split(",")]
    rows = []
    for model in a.models.split(","):
        for seed in seeds:
            for trainer in ("seqlab",) if a.skip_gensim else ("seqlab", "gensim"):
                rows.append(train_and_eval(a, trainer, model, seed, prepared, work, log, (qw, ws, sl)))
                json.dump(rows, open(work / "results.json", "w"), indent=1)

    print(f"\nepochs {a.epochs}, threads {a.threads}, dim 100, window 5, negative 5, sample 1e-3, min-count 5, "
          f"seeds {a.seeds}")
    print("| model | trainer | seed | vocab | train s | words/s | analogy (restrict 30k) | questions | WS353 ρ | SimLex ρ "
          "| peak RSS MiB | load before | seqlab-eval (acc, ws, sl) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        se = ", ".join(f"{x:.4f}" for x in r["seqlab_eval"])
        print(f"| {r['model']} | {r['trainer']} | {r['seed']} | {r['vocab']} | {r['train_s']:.1f} | {wps_cell(a, r)} "
              f"| {100 * r['analogy']:.2f}% | {r['n_analogy']} | {r['wordsim_spearman']:.4f} "
              f"| {r['simlex_spearman']:.4f} | {r['rss_mib']:.0f} | {r['load']:.2f} | {se} |")
    print("\nMedians over seeds " + a.seeds + ":")
    print("| model | trainer | runs | words/s | analogy | WS353 ρ | SimLex ρ |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for model in a.models.split(","):
        for trainer in ("seqlab", "gensim"):
            rs = [r for r in rows if r["model"] == model and r["trainer"] == trainer]
            if not rs:
                continue
            m = {k: statistics.median(r[k] for r in rs) for k in ("wps", "analogy", "wordsim_spearman", "simlex_spearman")}
            loaded = any(r["load"] > a.threads for r in rs)
            med[model, trainer] = (m, loaded)
            w = f"{m['wps']:,.0f}" + (" LOADED" if loaded else "")
            print(f"| {model} | {trainer} | {len(rs)} | {w} | {100 * m['analogy']:.2f}% | {m['wordsim_spearman']:.4f} "
                  f"| {m['simlex_spearman']:.4f} |")
    for model in a.models.split(","):
        if (model, "seqlab") in med and (model, "gensim") in med:
            (s, ls), (g, lg) = med[model, "seqlab"], med[model, "gensim"]
            note = " (LOADED machine: not a speed figure)" if ls or lg else ""
            print(f"{model}: seqlab/gensim median words/s = {s['wps'] / g['wps']:.2f}x{note}")


def wps_cell(a, r):
    return f"{r['wps']:,.0f}" + (" LOADED" if r["load"] > a.threads else "")


def train_and_eval(a, trainer, model, seed, prepared, work, log, evals):
    """Trains one model with one trainer and seed; evaluates the vectors with gensim's
    evaluators and (cross-check) seqlab's."""
    qw, ws, sl = evals
    out = work / f"{trainer}-{model}-s{seed}.bin"
    load = os.getloadavg()[0]
    if trainer == "seqlab":
        _, err, _, rss = run_rss(seqlab_train_cmd(a, model, prepared, out, seed), log)
        vocab, tokens, secs = parse_seqlab_stats(err)
    else:
        args = gensim_args(a, model, prepared, str(out), seed)
        o, _, _, rss = run_rss([sys.executable, "-c", GENSIM_TRAIN, json.dumps(args)], log)
        g = json.loads(o.strip().splitlines()[-1])
        vocab, tokens, secs = g["vocab_size"], g["tokens"], g["train_seconds"]
    res = {"trainer": trainer, "model": model, "seed": seed, "vocab": vocab, "train_s": secs,
           "wps": tokens * a.epochs / secs, "rss_mib": rss, "load": load}
    res.update(json.loads(run([sys.executable, "-c", GENSIM_EVAL, out, "1", qw, ws, sl], log)[0]))
    ea = json.loads(run([a.seqlab, "w2v", "eval-analogy", out, qw, "--json"], log)[0])
    es = json.loads(run([a.seqlab, "w2v", "eval-similarity", out, ws, "--json"], log)[0])
    el = json.loads(run([a.seqlab, "w2v", "eval-similarity", out, sl, "--json"], log)[0])
    res["seqlab_eval"] = (ea["overall"]["accuracy"], es["spearman"], el["spearman"])
    return res

if __name__ == "__main__":
    main()
