"""Writes the small gensim fixture files read by seqlab-w2v's tests (run once, output committed).

    /work/venv/bin/python scripts/make_w2v_fixtures.py crates/seqlab-w2v/tests/fixtures

gensim 4.4: a tiny Word2Vec (dim 8) trained on a toy corpus, saved with
KeyedVectors.save_word2vec_format in text and binary form; the first word and its first
value are written to gensim_small.expected.txt for the test to check.
"""
import sys
from pathlib import Path

import gensim
from gensim.models import Word2Vec

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
sentences = [
    "the king rules the land".split(),
    "the queen rules the land".split(),
    "a man walks in the city".split(),
    "a woman walks in the city".split(),
    "café au lait in paris".split(),
] * 20
m = Word2Vec(sentences, vector_size=8, window=2, min_count=1, workers=1, seed=3, epochs=3)
kv = m.wv
kv.save_word2vec_format(str(out / "gensim_small.txt"), binary=False)
kv.save_word2vec_format(str(out / "gensim_small.bin"), binary=True)
w0 = kv.index_to_key[0]
(out / "gensim_small.expected.txt").write_text(
    f"{len(kv)} {kv.vector_size} {w0} {repr(float(kv[w0][0]))}\n"
    f"# written by gensim {gensim.__version__}\n"
)
print((out / "gensim_small.expected.txt").read_text())
