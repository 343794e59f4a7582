#!/usr/bin/env python3
"""Checks a `seqlab export --format hf` folder with Hugging Face Transformers (and optionally
CTranslate2), and writes the fixtures of crates/seqlab-mt/tests/hf_m2m100.rs.

    # a tiny model trained by seqlab, exported, checked, fixtures written:
    python scripts/check_hf_export.py --make-fixtures
    # any exported model against seqlab's own translations:
    python scripts/check_hf_export.py --hf DIR --checkpoint RUN [--ct2] [--n 200]

Checks:
1. `M2M100ForConditionalGeneration.from_pretrained(DIR)` reports no missing, unexpected or
   mismatched keys; `AutoTokenizer` loads the tokenizer (and appends `<eos>`).
2. Greedy output of HF equals `seqlab translate --decoder greedy` on the test sentences, both
   from the seqlab checkpoint and from the HF folder (`seqlab translate --checkpoint DIR`).
3. With --ct2: CTranslate2's converter converts DIR (fp32 and int8); its greedy and beam-4
   outputs, one sentence per call with seqlab's length limit (source ids + 50), are compared
   with seqlab's, and int8's with fp32's (the first difference shown).
With --make-fixtures it also writes, next to the exported model (kept small: d_model 16,
300 pieces, about 60 KB of weights): `expected.safetensors` (HF's logits on teacher-forced
test pairs, in HF's ids), `hf_greedy.txt` (HF's greedy translations of the first --n test
sentences) and `hf_state_dict.json` (the names and shapes of every tensor in the
`state_dict()` of the M2M100ForConditionalGeneration HF builds from the exported config.json,
and which of them HF ties to `model.shared.weight`).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, M2M100ForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "crates/seqlab-mt/tests/fixtures/hf_m2m100")
TEST = os.path.join(ROOT, "data/sample/bible.en-es.test.tsv")
TINY = """task = "mt"
run_dir = "{run}"
[data]
train = "{root}/data/sample/bible.en-es.train.tsv"
valid = "{root}/data/sample/bible.en-es.valid.tsv"
vocab = "joint"
vocab_size = 300
max_len = 64
batch_tokens = 2000
valid_bleu_sentences = 20
[model]
kind = "transformer"
d_model = 16
nhead = 2
num_encoder_layers = 2
num_decoder_layers = 2
dim_feedforward = 32
dropout = 0.1
norm_first = true
positions = "fairseq"
share_embeddings = true
[optim]
name = "adam"
betas = [0.9, 0.98]
eps = 1e-9
[schedule]
kind = "noam"
d_model = 16
warmup = 100
factor = 1.0
[decode]
beam_size = 4
length_penalty = 0.6
[train]
max_steps = {steps}
eval_every = {steps}
log_every = 50
progress = false
seed = 7
"""


def seqlab(*args):
    exe = os.environ.get("SEQLAB", os.path.join(ROOT, "target/debug/seqlab"))
    r = subprocess.run([exe, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"seqlab {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def sources(n):
    with open(TEST, encoding="utf-8") as f:
        pairs = [l.rstrip("\n").split("\t") for l in f if l.strip()][:n]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def seqlab_translate(checkpoint, srcs, decoder="greedy", beam=None):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(srcs) + "\n")
    args = ["translate", "--checkpoint", checkpoint, "--input", f.name, "--decoder", decoder]
    if beam:
        args += ["--beam-size", str(beam)]
    out = seqlab(*args)
    os.unlink(f.name)
    return out.rstrip("\n").split("\n")


def load_hf(folder):
    model, info = M2M100ForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"HF loading problems: {bad}")
    model.eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("In the beginning")["input_ids"]
    assert ids[-1] == tok.eos_token_id == 2, ids
    print(f"HF loads {folder}: no missing/unexpected/mismatched keys; tokenizer appends <eos>")
    return model, tok


def hf_greedy(model, tok, srcs):
    out = []
    for s in srcs:  # one at a time: the length limit is per sentence, as in seqlab
        enc = tok([s], return_tensors="pt")
        n = enc["input_ids"].shape[1]
        with torch.no_grad():
            g = model.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=n + 50)
        out.append(tok.decode(g[0], skip_special_tokens=True).strip())
    return out


def compare(name_a, a, name_b, b):
    same = sum(x == y for x, y in zip(a, b))
    print(f"{name_a} vs {name_b}: {same}/{len(a)} identical")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            print(f"  first difference, sentence {i}:\n    {name_a}: {x}\n    {name_b}: {y}")
            break
    return same == len(a)


def teacher_forced(model, tok, srcs, refs, n=2, t_max=10):
    src = tok(srcs[:n], return_tensors="pt", padding=True)
    tgt = [tok(r, add_special_tokens=False)["input_ids"][: t_max - 1] for r in refs[:n]]
    t = max(map(len, tgt)) + 1
    dec = torch.full((n, t), tok.pad_token_id, dtype=torch.long)
    for i, ids in enumerate(tgt):
        dec[i, : len(ids) + 1] = torch.tensor([model.config.decoder_start_token_id] + ids)
    with torch.no_grad():
        logits = model(input_ids=src["input_ids"], attention_mask=src["attention_mask"],
                       decoder_input_ids=dec, decoder_attention_mask=(dec != tok.pad_token_id).long()).logits
    return {"src": src["input_ids"], "tgt_in": dec, "logits": logits.contiguous()}


def hf_state_dict(model):
    """Names and shapes HF's model has, and the ones tied to (sharing storage with) the shared
    embedding: what an export must provide, from HF itself rather than from seqlab's table."""
    import transformers
    fresh = M2M100ForConditionalGeneration(model.config)
    sd = fresh.state_dict()
    shared = fresh.model.shared.weight.data_ptr()
    return {
        "transformers": transformers.__version__,
        "tensors": {k: list(v.shape) for k, v in sorted(sd.items())},
        "tied_to_shared": sorted(k for k, v in sd.items() if v.data_ptr() == shared and k != "model.shared.weight"),
    }


def ct2_check(folder, srcs, seqlab_greedy, seqlab_beam):
    import ctranslate2
    from ctranslate2.converters import TransformersConverter
    tok = AutoTokenizer.from_pretrained(folder)
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for quant in ["float32", "int8"]:
            out = os.path.join(d, quant)
            TransformersConverter(folder).convert(out, quantization=None if quant == "float32" else quant)
            tr = ctranslate2.Translator(out, device="cpu", inter_threads=1, intra_threads=1)
            toks = [tok.convert_ids_to_tokens(tok(s)["input_ids"]) for s in srcs]
            for beam in [1, 4]:
                # One sentence per call, so that each gets seqlab's (and HF's) length limit:
                # source ids (with <eos>) + 50; CTranslate2's limit is per call.
                r = [tr.translate_batch([t], beam_size=beam, length_penalty=0.6, max_decoding_length=len(t) + 50,
                                        return_scores=False)[0] for t in toks]
                hyps = [tok.decode(tok.convert_tokens_to_ids(x.hypotheses[0]), skip_special_tokens=True).strip() for x in r]
                res[(quant, beam)] = hyps
    compare("seqlab greedy", seqlab_greedy, "ct2 fp32 greedy", res[("float32", 1)])
    compare("seqlab beam 4", seqlab_beam, "ct2 fp32 beam 4", res[("float32", 4)])
    compare("ct2 fp32 beam 4", res[("float32", 4)], "ct2 int8 beam 4", res[("int8", 4)])
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-fixtures", action="store_true")
    ap.add_argument("--hf")
    ap.add_argument("--checkpoint")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--ct2", action="store_true")
    a = ap.parse_args()
    srcs, refs = sources(a.n)
    if a.make_fixtures:
        work = tempfile.mkdtemp(prefix="seqlab-hf-mt-")
        cfg = os.path.join(work, "tiny.toml")
        with open(cfg, "w") as f:
            f.write(TINY.format(run=os.path.join(work, "run"), root=ROOT, steps=a.steps))
        seqlab("train", "--config", cfg)
        a.checkpoint = os.path.join(work, "run")
        a.hf = os.path.join(FIXTURE, "model")
        shutil.rmtree(a.hf, ignore_errors=True)
        seqlab("export", "--format", "hf", "--checkpoint", a.checkpoint, a.hf)
    model, tok = load_hf(a.hf)
    hf = hf_greedy(model, tok, srcs)
    ok = compare("HF greedy", hf, "seqlab greedy (seqlab checkpoint)", seqlab_translate(a.checkpoint, srcs))
    ok &= compare("HF greedy", hf, "seqlab greedy (HF folder)", seqlab_translate(a.hf, srcs))
    if a.ct2:
        ct2_check(a.hf, srcs, seqlab_translate(a.checkpoint, srcs),
                  seqlab_translate(a.checkpoint, srcs, decoder="beam", beam=4))
    if a.make_fixtures:
        save_file(teacher_forced(model, tok, srcs, refs), os.path.join(FIXTURE, "expected.safetensors"))
        with open(os.path.join(FIXTURE, "hf_greedy.txt"), "w", encoding="utf-8") as f:
            f.write("".join(h + "\n" for h in hf))
        with open(os.path.join(FIXTURE, "hf_state_dict.json"), "w", encoding="utf-8") as f:
            json.dump(hf_state_dict(model), f, indent=1)
            f.write("\n")
        print(f"fixtures written to {FIXTURE}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
