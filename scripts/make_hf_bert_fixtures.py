#!/usr/bin/env python3
"""Fixtures for seqlab's Hugging Face BERT import (crates/seqlab-bert/tests/hf_bert.rs).

Writes crates/seqlab-bert/tests/fixtures/hf_bert/:

- `tokenizer/`: a WordPiece vocabulary (2000 pieces, uncased) trained on data/sample, the
  files HF writes for it (`vocab.txt`, `tokenizer_config.json`, `tokenizer.json`) and
  `ids.bin`: HF `BertTokenizer` (the fast one; `BertTokenizerFast` before transformers 5) ids ([CLS] ... [SEP]) of every text listed in
  `texts.json` (lines of data/sample files plus hand-written hard cases), as
  little-endian u16, each text's ids preceded by their count. The slow Python
  `BertTokenizer` is checked to agree with the fast one on every text.
- one folder per model case: an HF model folder (`config.json`, `model.safetensors`,
  `vocab.txt` of a 100-piece vocabulary) and `expected.safetensors` with the inputs
  (`input_ids`, `token_type_ids`, `attention_mask`, i64) and HF's outputs
  (`last_hidden_state`, and where the checkpoint has them `pooler_output`,
  `prediction_logits`, `seq_relationship_logits`), f32.

Cases cover several layer counts, both LayerNorm naming schemes on the hub
(`LayerNorm.weight/bias` and the older `LayerNorm.gamma/beta`), with and without the `bert.`
prefix (`BertForPreTraining` vs bare `BertModel`), and a model without pooler.

Prediction cases (`seqlab predict` on an HF folder, crates/seqlab-bert/tests/hf_bert.rs):

- `predict_cls`: a `BertForSequenceClassification` (3 labels named in `id2label`) and
  `expected.json`: HF's class probabilities (softmax of the logits of `[CLS] text [SEP]`)
  for a few texts;
- `predict_mlm`: a `BertForMaskedLM` (MLM head, no pooler, no NSP head) and
  `expected.json`: for texts holding `[MASK]`, HF's 5 most probable tokens and their
  probabilities (softmax over the vocabulary) at each mask, in text order.

Run: /work/venv/bin/python scripts/make_hf_bert_fixtures.py [--predict-only]
(torch, transformers, tokenizers; --predict-only writes only the prediction cases)
"""
import json
import os
import struct
import sys

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (BertConfig, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification,
                          BertModel, BertTokenizer)

try:  # transformers >= 5: BertTokenizer is the fast one, the Python one is "legacy"
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as SlowBertTokenizer
except ImportError:  # transformers 4
    from transformers import BertTokenizer as SlowBertTokenizer
    from transformers import BertTokenizerFast as BertTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates/seqlab-bert/tests/fixtures/hf_bert")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Texts of the tokenizer check: (file, tab column or None, number of lines from the top).
SOURCES = [
    ("data/sample/kjv.en.txt", None, 1500),
    ("data/sample/authors.train.tsv", 0, 300),
    ("data/sample/authors.valid.tsv", 0, 200),
    ("data/sample/authors.test.tsv", 0, 200),
    ("data/sample/bible.en-es.test.tsv", 0, 200),
    ("data/sample/bible.en-es.test.tsv", 1, 200),
]
# Cases the sample files do not cover: accents (stripped when uncased), CJK (split per
# character), control characters (removed), a word longer than max_input_chars_per_word
# (100: becomes [UNK]), unknown characters, punctuation runs, spacing oddities.
EXTRA = [
    "Ünïcödé ÀÉÎÕÜ ñandú façade naïve café",
    "東京大阪 are cities; 北京 too.",
    "tab\there, nul\x00 and bell\x07 go",
    "a" * 101 + " short",
    "a" * 100 + " exactly",
    "emoji 🙂 and ☃ snowman",
    "!!!???...,,,;;;",
    "   leading and trailing   ",
    "",
    "HELLO World MiXeD",
    "don't won't can't it's",
    "[CLS] literal specials [SEP] [MASK]",
    "zzzzqqqxxj",
]


def read_texts():
    texts = []
    for path, col, n in SOURCES:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            lines = f.read().split("\n")
        lines = [l for l in lines if l.strip()][:n]
        for l in lines:
            texts.append(l.split("\t")[col] if col is not None else l)
    return texts + EXTRA


def train_wordpiece(texts, vocab_size, folder):
    """An uncased WordPiece vocabulary; HF's files for it; returns the fast tokenizer."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    os.makedirs(folder, exist_ok=True)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t, _ in vocab))
    fast = BertTokenizer.from_pretrained(folder, do_lower_case=True)
    assert fast.vocab_size == len(vocab), (fast.vocab_size, len(vocab))
    return fast


def write_ids(path, all_ids):
    with open(path, "wb") as f:
        for ids in all_ids:
            assert max(ids) < 65536
            f.write(struct.pack("<H", len(ids)))
            f.write(struct.pack(f"<{len(ids)}H", *ids))


def tokenizer_fixture(texts):
    folder = os.path.join(OUT, "tokenizer")
    fast = train_wordpiece(texts, 2000, folder)
    fast.save_pretrained(folder)
    for f in ("special_tokens_map.json",):
        p = os.path.join(folder, f)
        if os.path.exists(p):
            os.remove(p)
    slow = SlowBertTokenizer(vocab_file=os.path.join(folder, "vocab.txt"), do_lower_case=True)
    assert slow.vocab_size == fast.vocab_size
    ids = [fast(t)["input_ids"] for t in texts]
    bad = [i for i, t in enumerate(texts) if slow(t)["input_ids"] != ids[i]]
    if bad:
        print(f"slow and fast HF tokenizers differ on {len(bad)} texts, e.g. {texts[bad[0]]!r}", file=sys.stderr)
        sys.exit(1)
    write_ids(os.path.join(folder, "ids.bin"), ids)
    with open(os.path.join(folder, "texts.json"), "w", encoding="utf-8") as f:
        json.dump({"sources": [list(s) for s in SOURCES], "extra": EXTRA}, f, ensure_ascii=False, indent=1)
    print(f"tokenizer: {len(texts)} texts, {sum(map(len, ids))} ids")


def randomise(model, gen):
    # Weights far from the N(0, 0.02) default, so that every term of the computation shows
    # in the outputs (tiny weights would hide a wrong LayerNorm or a swapped bias).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def model_case(name, layers, heads_pretraining, old_names, pooler, seed, small_texts):
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    fast = train_wordpiece(small_texts, 100, folder)
    vocab = fast.vocab_size
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=48,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-12,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if heads_pretraining:
        model = BertForPreTraining(cfg)
    else:
        model = BertModel(cfg, add_pooling_layer=pooler)
    randomise(model, gen)
    if heads_pretraining:
        model.tie_weights()
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    st = os.path.join(folder, "model.safetensors")
    if old_names:
        # The older TF-ported checkpoints on the hub: LayerNorm.gamma / LayerNorm.beta.
        sd = load_file(st)
        sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in sd.items()}
        save_file(sd, st, metadata={"format": "pt"})
        # HF itself still loads it (it renames gamma/beta when loading).
        again = type(model).from_pretrained(folder) if heads_pretraining else BertModel.from_pretrained(folder, add_pooling_layer=pooler)
        for (a, pa), (b, pb) in zip(model.state_dict().items(), again.state_dict().items()):
            assert a == b and torch.equal(pa, pb), a
    texts = ["in the beginning god", "and the earth was void", "light"]
    enc = fast(texts[:2], texts[1:], padding=True, return_tensors="pt", return_token_type_ids=True)
    enc = {k: v for k, v in enc.items()}
    with torch.no_grad():
        if heads_pretraining:
            out = model(**enc, output_hidden_states=True)
            tensors = {
                "last_hidden_state": out.hidden_states[-1],
                "pooler_output": model.bert.pooler(out.hidden_states[-1]),
                "prediction_logits": out.prediction_logits,
                "seq_relationship_logits": out.seq_relationship_logits,
            }
        else:
            out = model(**enc)
            tensors = {"last_hidden_state": out.last_hidden_state}
            if pooler:
                tensors["pooler_output"] = out.pooler_output
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        tensors[k] = enc[k].to(torch.int64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "expected.safetensors"))
    keys = sorted(load_file(st).keys())
    print(f"{name}: {len(keys)} tensors, e.g. {keys[:3]}; input {tuple(enc['input_ids'].shape)}")


def tiny_config(vocab, layers, **extra):
    return BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=48, type_vocab_size=2, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, attn_implementation="eager", **extra)


def predict_cases(small_texts):
    """Folders `seqlab predict` answers from, with HF's answers (see the module docs)."""
    texts = ["in the beginning god created the heaven", "and the earth was without form", "light",
             "he said unto them , follow me"]
    # Sequence classification: HF's probabilities of each text on its own.
    folder = os.path.join(OUT, "predict_cls")
    os.makedirs(folder, exist_ok=True)
    fast = train_wordpiece(small_texts, 100, folder)
    labels = {0: "law", 1: "prophets", 2: "gospel"}
    cfg = tiny_config(fast.vocab_size, 2, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(5)
    model = BertForSequenceClassification(cfg)
    randomise(model, torch.Generator().manual_seed(5))
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    rows = []
    with torch.no_grad():
        for t in texts:
            p = torch.softmax(model(**fast(t, return_tensors="pt")).logits[0], -1)
            rows.append({"text": t, "probabilities": [float(x) for x in p]})
    with open(os.path.join(folder, "expected.json"), "w", encoding="utf-8") as f:
        json.dump({"labels": [labels[i] for i in range(3)], "cases": rows}, f, indent=1)
    print(f"predict_cls: {len(rows)} texts, labels {labels}")
    # Masked-word fill: HF's top 5 at every [MASK].
    folder = os.path.join(OUT, "predict_mlm")
    os.makedirs(folder, exist_ok=True)
    fast = train_wordpiece(small_texts, 100, folder)
    torch.manual_seed(6)
    model = BertForMaskedLM(tiny_config(fast.vocab_size, 2))
    randomise(model, torch.Generator().manual_seed(6))
    model.tie_weights()
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    masked = ["in the [MASK] god created", "[MASK] the earth was [MASK] form", "and god said , let there be [MASK] ."]
    rows = []
    with torch.no_grad():
        for t in masked:
            enc = fast(t, return_tensors="pt")
            logits = model(**enc).logits[0]
            at = (enc["input_ids"][0] == fast.mask_token_id).nonzero().flatten().tolist()
            masks = []
            for i in at:
                p = torch.softmax(logits[i], -1)
                top = torch.topk(p, 5)
                masks.append([{"token": fast.convert_ids_to_tokens(int(k)), "probability": float(v)}
                              for v, k in zip(top.values, top.indices)])
            rows.append({"text": t, "masks": masks})
    with open(os.path.join(folder, "expected.json"), "w", encoding="utf-8") as f:
        json.dump({"cases": rows}, f, indent=1)
    print(f"predict_mlm: {len(rows)} texts, {sum(len(r['masks']) for r in rows)} masks")


def main():
    texts = read_texts()
    small = texts[:400]
    if "--predict-only" in sys.argv[1:]:
        predict_cases(small)
        return
    tokenizer_fixture(texts)
    model_case("l1_pretraining", 1, True, False, True, 1, small)
    model_case("l2_pretraining_gamma_beta", 2, True, True, True, 2, small)
    model_case("l3_bare", 3, False, False, True, 3, small)
    model_case("l2_bare_gamma_beta_no_pooler", 2, False, True, False, 4, small)
    predict_cases(small)


if __name__ == "__main__":
    main()
