#!/usr/bin/env python3
"""Makes the sacrebleu reference fixtures of crates/seqlab-metrics/tests/fixtures/.

Writes small hypothesis/reference files (German and Spanish MT-like segments from
shared/data/mt with deterministic edits, Unicode punctuation and whitespace, empty lines,
multiple references, degenerate cases) and `expected.json` with sacrebleu's exact results.
Files are read back exactly as sacrebleu's CLI reads them (UTF-8, split on "\\n", rstrip()).
Not needed by the tests; rerun only to regenerate:

    /work/venv/bin/python scripts/make_metric_fixtures.py ../shared/data
"""

import json
import random
import sys
from pathlib import Path

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "seqlab-metrics" / "tests" / "fixtures"
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"


def read_tsv(name, n, start=0):
    rows = (DATA / "mt" / name).read_text(encoding="utf-8").split("\n")
    rows = [r.split("\t") for r in rows if r]
    return [tgt for _, tgt in rows[start:start + n]]


def perturb(line, rng, vocab, strength):
    """MT-like errors: dropped, swapped, substituted and duplicated words, punctuation changes."""
    words = line.split()
    out = []
    for w in words:
        r = rng.random()
        if r < 0.10 * strength:
            continue
        if r < 0.20 * strength:
            out.append(rng.choice(vocab))
            continue
        if r < 0.24 * strength:
            out.append(w)
        out.append(w)
    if len(out) > 3 and rng.random() < 0.5 * strength:
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    s = " ".join(out)
    if rng.random() < 0.2:
        s = s.replace(",", " ,")
    if rng.random() < 0.2 and s.endswith("."):
        s = s[:-1] + "…"
    return s


def write(name, lines, newline="\n", final_newline=True):
    text = newline.join(lines) + (newline if final_newline else "")
    (OUT / name).write_bytes(text.encode("utf-8"))
    return name


def read_cli(name):
    """sacrebleu's CLI: open(..., newline="\\n"), line.rstrip()."""
    with open(OUT / name, encoding="utf-8", newline="\n") as f:
        return [line.rstrip() for line in f]


BLEU_CONFIGS = {
    "default": {},
    "lowercase": {"lowercase": True},
    "tok_none": {"tokenize": "none"},
    "tok_intl": {"tokenize": "intl"},
    "tok_char": {"tokenize": "char"},
    "smooth_none": {"smooth_method": "none"},
    "smooth_floor": {"smooth_method": "floor"},
    "smooth_floor_0.5": {"smooth_method": "floor", "smooth_value": 0.5},
    "smooth_add_k": {"smooth_method": "add-k"},
    "effective_order": {"effective_order": True},
}
CHRF_CONFIGS = {
    "default": {},
    "chrf++": {"word_order": 2},
    "lowercase": {"lowercase": True},
    "whitespace": {"whitespace": True},
    "eps_smoothing": {"eps_smoothing": True},
    "chrf++_lowercase": {"word_order": 2, "lowercase": True},
}


def bleu_record(s):
    return {
        "score": s.score, "precisions": s.precisions, "bp": s.bp, "ratio": s.ratio,
        "sys_len": s.sys_len, "ref_len": s.ref_len, "counts": s.counts, "totals": s.totals,
        "line": s.format(),
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261122)
    cases = []

    # German: LibreOffice help (MPL-2.0 text), edited hypotheses, Unicode quotes, empty lines.
    de = read_tsv("libreoffice-help.en-de.valid.tsv", 40)
    de_vocab = sorted({w for line in de for w in line.split()})
    de_hyp = [perturb(line, rng, de_vocab, 1.0) for line in de]
    de_hyp = [h.replace('"', "„", 1).replace('"', "“", 1) for h in de_hyp]
    de_hyp[5] = ""            # empty hypothesis line
    de_hyp[17] = ""
    de_ref = list(de)
    de_ref[17] = ""           # both empty
    de_ref[23] = ""           # empty reference only
    cases.append({"name": "de", "hyp": write("de.hyp", de_hyp),
                  "refs": [write("de.ref", de_ref)]})

    # Spanish: Bible (public domain), two references; CRLF in one file, no final newline in another.
    es = read_tsv("bible.en-es.valid.tsv", 50, start=100)
    es_vocab = sorted({w for line in es for w in line.split()})
    es_ref2 = [perturb(line, rng, es_vocab, 0.6) for line in es]
    es_hyp = [perturb(line, rng, es_vocab, 1.2) for line in es]
    for i in range(0, 50, 7):
        es_hyp[i] = "¿" + es_hyp[i].rstrip(".") + "?"
    for i in range(3, 50, 11):
        es_hyp[i] = "«" + es_hyp[i] + "»"
    es_hyp[10] = ""
    cases.append({"name": "es_2refs", "hyp": write("es.hyp", es_hyp, newline="\r\n"),
                  "refs": [write("es.ref", es), write("es.ref2", es_ref2, final_newline=False)]})
    cases.append({"name": "es_1ref", "hyp": "es.hyp", "refs": ["es.ref"]})

    # Hand-made: Unicode punctuation/whitespace, HTML entities, numbers, hyphens, case, Greek.
    uni_ref = [
        "„Das ist gut“, sagte er – und ging.",
        "El precio es 1.234,56 € (aprox.) — ¿verdad?",
        "Call 555-1234 or e-mail <info@example.com> &amp; ask for \"Ann\".",
        "ΟΔΟΣ ΣΟΦΟΣ και η Σοφία.",
        "Tab\tseparated\u00a0words\u2009with\u3000odd\u001fspaces.",
        "It's 3.5% of $1,000,000 in 2020.",
        "Wait... what?! (Really?) [yes] {no} ~tilde~ a|b",
        "",
        "Über 50-60 Seiten – Größe: 12pt; Straße.",
        "<skipped> line with skipped marker",
    ]
    uni_hyp = [
        "\"Das ist gut\", sagte er - und ging.",
        "El precio es 1.234,56 € aprox. ¿verdad ?",
        "Call 555 - 1234 or email <info@example.com> & ask for “Ann”.",
        "οδος σοφος και η σοφια.",
        "Tab separated words\u2009with odd spaces .",
        "It is 3.5 % of $ 1,000,000 in 2020 .",
        "Wait … what ?! ( Really ? ) [ yes ] { no } ~ tilde ~ a | b",
        "extra words here",
        "Uber 50-60 Seiten — Grösse : 12 pt ; Strasse .",
        "line with skipped marker",
    ]
    cases.append({"name": "unicode", "hyp": write("unicode.hyp", uni_hyp),
                  "refs": [write("unicode.ref", uni_ref)]})

    # Degenerate: all-empty hypothesis, no n-gram matches at all, a perfect match.
    short = de[:5]
    cases.append({"name": "empty_hyp", "hyp": write("empty.hyp", [""] * 5),
                  "refs": [write("short.ref", short)]})
    cases.append({"name": "no_match", "hyp": write("nomatch.hyp", ["xyzzy plugh"] * 5),
                  "refs": ["short.ref"]})
    cases.append({"name": "identical", "hyp": "short.ref", "refs": ["short.ref"]})
    cases.append({"name": "one_short_segment", "hyp": write("tiny.hyp", ["la casa"]),
                  "refs": [write("tiny.ref", ["la casa azul"])]})

    for case in cases:
        hyps = read_cli(case["hyp"])
        refs = [read_cli(r) for r in case["refs"]]
        case["bleu"] = {k: bleu_record(BLEU(**cfg).corpus_score(hyps, refs))
                        for k, cfg in BLEU_CONFIGS.items()}
        case["chrf"] = {k: {"score": (s := CHRF(**cfg).corpus_score(hyps, refs)).score,
                            "line": s.format()}
                        for k, cfg in CHRF_CONFIGS.items()}
        # Sentence level as sacrebleu's CLI does it (--sentence-level turns effective order on).
        sb, sc = BLEU(effective_order=True), CHRF()
        case["sentence_bleu"] = [sb.sentence_score(h, list(r)).score for h, *r in zip(hyps, *refs)]
        case["sentence_chrf"] = [sc.sentence_score(h, list(r)).score for h, *r in zip(hyps, *refs)]

    meta = {"made_with": f"sacrebleu {sacrebleu.__version__}", "script": "scripts/make_metric_fixtures.py",
            "configs": {"bleu": BLEU_CONFIGS, "chrf": CHRF_CONFIGS}}
    (OUT / "expected.json").write_text(
        json.dumps({"meta": meta, "cases": cases}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
