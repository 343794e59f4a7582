#!/usr/bin/env python3
"""Checks that HF Python `tokenizers` loads seqlab's tokenizer.json files and gives the same ids.

    cargo run -p seqlab-data --example export_tokenizers -- /tmp/tok-check
    python scripts/check_tokenizers_hf.py /tmp/tok-check

Needs `pip install tokenizers`. For development only: tests never run this.
"""
import json
import sys

from tokenizers import Tokenizer

out = sys.argv[1] if len(sys.argv) > 1 else "tok-check"
failures = 0
for kind in ["char", "word", "bpe"]:
    tok = Tokenizer.from_file(f"{out}/{kind}.tokenizer.json")
    cases = json.load(open(f"{out}/{kind}.ids.json", encoding="utf-8"))
    bad = 0
    for c in cases:
        ids = tok.encode(c["text"], add_special_tokens=False).ids
        decoded = tok.decode(ids, skip_special_tokens=False)
        if ids != c["ids"] or decoded != c["decoded"]:
            bad += 1
            if bad <= 3:
                print(f"  {kind} mismatch on {c['text']!r}:\n    rust {c['ids'][:20]} {c['decoded']!r}\n    hf   {ids[:20]} {decoded!r}")
    specials = [tok.token_to_id(s) for s in ["<pad>", "<bos>", "<eos>", "<unk>"]]
    print(f"{kind}: vocab {tok.get_vocab_size()}, specials {specials}, {len(cases) - bad}/{len(cases)} texts identical")
    failures += bad + (specials != [0, 1, 2, 3])
sys.exit(1 if failures else 0)
