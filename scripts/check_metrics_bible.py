"""Larger check (not a test): seqlab bleu/chrf vs sacrebleu on the full bible.en-es and
libreoffice-help.en-de test sets with pseudo-hypotheses (perturbed / shuffled references).

    /work/venv/bin/python scripts/check_metrics_bible.py target/debug/seqlab ../shared/data
"""
import json, random, subprocess, sys
from pathlib import Path
from sacrebleu.metrics import BLEU, CHRF

SEQLAB = sys.argv[1]
DATA = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("../shared/data")
work = Path("/tmp/metrics_bible"); work.mkdir(exist_ok=True)
rows = [l.split("\t") for l in (DATA / "mt" / "bible.en-es.test.tsv").read_text(encoding="utf-8").split("\n") if l]
ref = [es for _, es in rows]
rng = random.Random(7)
vocab = sorted({w for s in ref for w in s.split()})
def perturb(s, strength):
    out = []
    for w in s.split():
        r = rng.random()
        if r < 0.12 * strength: continue
        if r < 0.25 * strength: out.append(rng.choice(vocab)); continue
        out.append(w)
    if len(out) > 3 and rng.random() < 0.5:
        i = rng.randrange(len(out) - 1); out[i], out[i+1] = out[i+1], out[i]
    return " ".join(out)
hyp = [perturb(s, 1.0) for s in ref]
shuffled = ref[:]; rng.shuffle(shuffled)          # wrong-segment hypotheses: low scores
ref2 = [perturb(s, 0.5) for s in ref]
for name, lines in [("ref", ref), ("ref2", ref2), ("hyp", hyp), ("shuf", shuffled)]:
    (work / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
# Also the LibreOffice German test set with a perturbed hypothesis.
rows = [l.split("\t") for l in (DATA / "mt" / "libreoffice-help.en-de.test.tsv").read_text(encoding="utf-8").split("\n") if l]
de = [d for _, d in rows]; vocab = sorted({w for s in de for w in s.split()})
(work / "de_ref.txt").write_text("\n".join(de) + "\n", encoding="utf-8")
(work / "de_hyp.txt").write_text("\n".join(perturb(s, 1.0) for s in de) + "\n", encoding="utf-8")

def run(args):
    return json.loads(subprocess.run([SEQLAB] + args + ["--json"], check=True, capture_output=True, text=True).stdout)
def rd(n): return [l.rstrip() for l in open(work / n, encoding="utf-8", newline="\n")]
worst = 0.0
for hypf, refs in [("hyp.txt", ["ref.txt"]), ("shuf.txt", ["ref.txt"]), ("hyp.txt", ["ref.txt", "ref2.txt"]), ("de_hyp.txt", ["de_ref.txt"])]:
    H = rd(hypf); R = [rd(r) for r in refs]
    paths = [str(work / hypf)] + [str(work / r) for r in refs]
    for metric, obj, extra in [("bleu", BLEU(), []), ("bleu", BLEU(tokenize="intl"), ["--tokenize", "intl"]), ("chrf", CHRF(), []), ("chrf", CHRF(word_order=2), ["--chrf-word-order", "2"])]:
        py = obj.corpus_score(H, R)
        rs = run([metric] + paths + extra)
        d = abs(py.score - rs["score"]); worst = max(worst, d)
        print(f"{hypf:10s} {'+'.join(refs):18s} {metric} {' '.join(extra):22s} sacrebleu={py.score:.12f} seqlab={rs['score']:.12f} |diff|={d:.1e}")
print(f"worst |diff| = {worst:.1e}")
