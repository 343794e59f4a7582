"""PyTorch copies of seqlab's whole-model rows and decoders, for bench/peers.py (issue #12).

Each reads the folder `seqlab bench model --export DIR` wrote: `config.json` (the resolved run
config, defaults filled in) and `tokenizer.json` (loaded with the `tokenizers` package, so both
sides see the same token ids), builds the same architecture, optimizer (Adam/AdamW/SGD of
`[optim]`), schedule (`[schedule]`, the step's rate as seqlab's `Schedule::lr`), gradient
clipping (`train.clip_norm`) and loss (label smoothing), and times optimizer updates after
warm-up ones. Batches are built as seqlab builds them (token-budget batches over a pool of
1,000 length-sorted sequences; LM streams cut into bptt chunks; BERT sentence pairs with 15 %
masking), with Python's RNG instead of seqlab's: the same shapes and statistics, not the
same batches. Tokens are counted as seqlab's task counts them (`TrainTask::train_loss`):
target tokens with <eos> for translation, batch x bptt for the LM, real tokens for
classification, masked tokens for BERT.
"""
import json
import math
import random
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from peers import time_units

PAD, BOS, EOS = 0, 1, 2


def load_export(export):
    d = Path(export)
    if not (d / "config.json").exists():
        raise SystemExit(f"{d}/config.json is missing: run `seqlab bench model ... --export {d}` first "
                         "(bench/run.py does, before the peer)")
    cfg = json.loads((d / "config.json").read_text())
    return cfg, Tokenizer.from_file(str(d / "tokenizer.json"))


def schedule_lr(cfg, step):
    """seqlab_train::Schedule::lr (step counted from 1)."""
    s = cfg.get("schedule") or {"kind": "constant", "lr": cfg["optim"]["lr"]}
    step = max(step, 1)
    if s["kind"] == "constant":
        return s["lr"]
    if s["kind"] == "warmup_cosine":
        if s["warmup"] > 0 and step <= s["warmup"]:
            return s["lr"] * step / s["warmup"]
        if step >= s["total"]:
            return s["min_lr"]
        p = (step - s["warmup"]) / max(s["total"] - s["warmup"], 1)
        return s["min_lr"] + 0.5 * (s["lr"] - s["min_lr"]) * (1 + math.cos(math.pi * p))
    if s["kind"] == "noam":
        return s["factor"] * s["d_model"] ** -0.5 * min(step ** -0.5, step * max(s["warmup"], 1) ** -1.5)
    raise SystemExit(f"schedule {s['kind']!r} not replicated in bench/torch_models.py")


def optimizer(params, cfg):
    o = cfg["optim"]
    kw = dict(lr=schedule_lr(cfg, 1), weight_decay=o["weight_decay"])
    if o["name"] == "adam":
        return torch.optim.Adam(params, betas=tuple(o["betas"]), eps=o["eps"], **kw)
    if o["name"] == "adamw":
        return torch.optim.AdamW(params, betas=tuple(o["betas"]), eps=o["eps"], **kw)
    return torch.optim.SGD(params, momentum=o["momentum"], **kw)


def train_steps(model, cfg, batches, loss_fn, warmup, steps):
    """The run engine's step: lr of the schedule, forward, backward, clip, optimizer update."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # Models with parameters outside weight decay (Mamba's A_log and D) name their groups.
    opt = optimizer(model.param_groups() if hasattr(model, "param_groups") else params, cfg)
    clip = cfg["train"].get("clip_norm")
    state = {"step": 0}

    def step():
        state["step"] += 1
        for g in opt.param_groups:
            g["lr"] = schedule_lr(cfg, state["step"])
        loss, n = loss_fn(next(batches))
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return n

    return time_units(warmup, steps, step)


def token_budget_batches(lengths, max_tokens, rng, pool=1000):
    """seqlab_data::token_budget_batches: shuffle, sort pools by length, cut at the budget
    (rows x longest <= max_tokens, padding included), shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i:i + pool], key=lambda k: lengths[k])
        cur, longest = [], 0
        for k in chunk:
            l = max(lengths[k], longest)
            if cur and (len(cur) + 1) * l > max_tokens:
                batches.append(cur)
                cur, longest = [], 0
            longest = max(longest, lengths[k])
            cur.append(k)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def forever(make_epoch):
    while True:
        yield from make_epoch()


def pad(seqs, value=PAD):
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


def sinusoidal(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe


def read_tsv(path):
    rows = []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n").rstrip("\r")
        if "\t" in line:
            rows.append(line.split("\t", 1))
    return rows


# --- translation ---


class Seq2SeqTransformer(torch.nn.Module):
    """seqlab_nn::Seq2SeqTransformer: shared embedding x sqrt(d) + sinusoidal positions,
    nn.Transformer (batch first), output projection tied to the embedding."""

    def __init__(self, m, vocab, max_len=1024):
        super().__init__()
        d = m["d_model"]
        self.d = d
        self.embed = torch.nn.Embedding(vocab, d)
        torch.nn.init.normal_(self.embed.weight, 0.0, d ** -0.5)
        self.register_buffer("pe", sinusoidal(max_len, d))
        self.drop = torch.nn.Dropout(m["dropout"])
        self.transformer = torch.nn.Transformer(
            d, m["nhead"], m["num_encoder_layers"], m["num_decoder_layers"], m["dim_feedforward"], m["dropout"],
            activation=m["activation"], batch_first=True, norm_first=m["norm_first"])

    def emb(self, ids, offset=0):
        x = self.embed(ids) * math.sqrt(self.d) + self.pe[offset:offset + ids.shape[1]]
        return self.drop(x)

    def encode(self, src):
        kpm = src.eq(PAD)
        return self.transformer.encoder(self.emb(src), src_key_padding_mask=kpm), kpm

    def forward(self, src, tgt):
        memory, kpm = self.encode(src)
        t = tgt.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        h = self.transformer.decoder(self.emb(tgt), memory, tgt_mask=mask, tgt_is_causal=True,
                                     tgt_key_padding_mask=tgt.eq(PAD), memory_key_padding_mask=kpm)
        return h @ self.embed.weight.T

    # Incremental decoding with a key/value cache (as seqlab's begin_decode/decode_step).
    def begin(self, memory, kpm):
        caches = []
        for layer in self.transformer.decoder.layers:
            w, b = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
            d = self.d
            k = F.linear(memory, w[d:2 * d], b[d:2 * d])
            v = F.linear(memory, w[2 * d:], b[2 * d:])
            caches.append({"ck": self.heads(k), "cv": self.heads(v), "k": None, "v": None})
        return {"caches": caches, "pos": 0, "mask": (~kpm)[:, None, None, :]}

    def heads(self, x):
        b, t, _ = x.shape
        h = self.transformer.nhead
        return x.view(b, t, h, self.d // h).transpose(1, 2)

    def attend(self, attn, q_in, k, v, mask):
        d = self.d
        q = self.heads(F.linear(q_in, attn.in_proj_weight[:d], attn.in_proj_bias[:d]))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b = q_in.shape[0]
        return attn.out_proj(o.transpose(1, 2).reshape(b, 1, d))

    def step(self, tokens, st):
        x = self.emb(tokens[:, None], st["pos"])
        d = self.d
        for layer, c in zip(self.transformer.decoder.layers, st["caches"]):
            sa = layer.self_attn
            y = layer.norm1(x) if layer.norm_first else x
            k = self.heads(F.linear(y, sa.in_proj_weight[d:2 * d], sa.in_proj_bias[d:2 * d]))
            v = self.heads(F.linear(y, sa.in_proj_weight[2 * d:], sa.in_proj_bias[2 * d:]))
            c["k"] = k if c["k"] is None else torch.cat([c["k"], k], 2)
            c["v"] = v if c["v"] is None else torch.cat([c["v"], v], 2)
            if layer.norm_first:
                x = x + self.attend(sa, y, c["k"], c["v"], None)
                x = x + self.attend(layer.multihead_attn, layer.norm2(x), c["ck"], c["cv"], st["mask"])
                x = x + layer._ff_block(layer.norm3(x))
            else:
                x = layer.norm1(x + self.attend(sa, x, c["k"], c["v"], None))
                x = layer.norm2(x + self.attend(layer.multihead_attn, x, c["ck"], c["cv"], st["mask"]))
                x = layer.norm3(x + layer._ff_block(x))
        st["pos"] += 1
        x = self.transformer.decoder.norm(x) if self.transformer.decoder.norm is not None else x
        return (x[:, 0] @ self.embed.weight.T)

    def reorder(self, st, idx):
        for c in st["caches"]:
            c["k"], c["v"] = c["k"][idx], c["v"][idx]


class RnnSeq2Seq(torch.nn.Module):
    """seqlab_mt::rnn::RnnSeq2Seq: bidirectional LSTM encoder (hidden/2 per direction), LSTM
    decoder started from the encoder's joined final states, global attention (Luong "general":
    linear_in, softmax, context, tanh(linear_out[ctx; out])), generator."""

    def __init__(self, m, vocab):
        super().__init__()
        e, h, l = m["embed_dim"], m["hidden_size"], m["num_layers"]
        self.h, self.l = h, l
        self.embed = torch.nn.Embedding(vocab, e, padding_idx=PAD)
        torch.nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.encoder = torch.nn.LSTM(e, h // 2, l, batch_first=True, dropout=m["dropout"], bidirectional=True)
        self.decoder = torch.nn.LSTM(e, h, l, batch_first=True, dropout=m["dropout"])
        self.linear_in = torch.nn.Linear(h, h, bias=False)
        self.linear_out = torch.nn.Linear(2 * h, h, bias=False)
        self.generator = torch.nn.Linear(h, vocab)
        self.drop = torch.nn.Dropout(m["dropout"])

    def encode(self, src):
        lengths = src.ne(PAD).sum(1)
        x = self.drop(self.embed(src))
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (hn, cn) = self.encoder(packed)
        memory, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        b = src.shape[0]
        join = lambda t: t.view(self.l, 2, b, self.h // 2).transpose(1, 2).reshape(self.l, b, self.h)
        bias = torch.zeros(src.shape, dtype=torch.float32).masked_fill(src.eq(PAD), float("-inf"))[:, None, :]
        return memory, bias, (join(hn), join(cn))

    def decode(self, tgt, memory, bias, state):
        out, state = self.decoder(self.drop(self.embed(tgt)), state)
        scores = self.linear_in(out) @ memory.transpose(1, 2) + bias
        ctx = torch.softmax(scores, -1) @ memory
        h = self.drop(torch.tanh(self.linear_out(torch.cat([ctx, out], -1))))
        return self.generator(h), state

    def forward(self, src, tgt):
        memory, bias, state = self.encode(src)
        return self.decode(tgt, memory, bias, state)[0]


def mt_model(cfg, vocab):
    m = cfg["model"]
    return Seq2SeqTransformer(m, vocab) if m["kind"] == "transformer" else RnnSeq2Seq(m, vocab)


def mt_encoded(tok, path, max_len=None, max_ratio=None):
    pairs = read_tsv(path)
    src = [e.ids for e in tok.encode_batch([p[0] for p in pairs])]
    tgt = [e.ids for e in tok.encode_batch([p[1] for p in pairs])]
    out = []
    for s, t in zip(src, tgt):
        if max_len is not None:
            # seqlab_mt::parallel::filter_by_length with max_len - 1 and max_ratio.
            if len(s) > max_len - 1 or len(t) > max_len - 1 or not s or not t:
                continue
            if max(len(s), len(t)) / max(min(len(s), len(t)), 1) > max_ratio:
                continue
        out.append((s + [EOS], t))
    return out


def bench_mt(cfg, tok, warmup, steps):
    d = cfg["data"]
    data = mt_encoded(tok, d["train"], d["max_len"], d["max_ratio"])
    model = mt_model(cfg, tok.get_vocab_size())
    lengths = [max(len(s), len(t) + 1) for s, t in data]
    rng = random.Random(cfg["train"]["seed"])
    batches = forever(lambda: ([data[i] for i in b] for b in token_budget_batches(lengths, d["batch_tokens"], rng)))
    smoothing = cfg["loss"]["label_smoothing"]

    def loss_fn(batch):
        src = pad([s for s, _ in batch])
        tin = pad([[BOS] + t for _, t in batch])
        tout = pad([t + [EOS] for _, t in batch])
        logits = model(src, tin)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tout.reshape(-1), ignore_index=PAD,
                               label_smoothing=smoothing)
        return loss, int(tout.ne(PAD).sum())

    return train_steps(model, cfg, batches, loss_fn, warmup, steps), {"vocab": tok.get_vocab_size()}


# --- language model (char LSTM, Mamba) ---


class LstmLm(torch.nn.Module):
    """seqlab_tasks::models::LmNet::Recurrent: embedding, dropout, LSTM, dropout, linear."""

    def __init__(self, m, vocab):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, m["embed_dim"])
        cell = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[m["kind"]]
        self.rnn = cell(m["embed_dim"], m["hidden_size"], m["num_layers"], batch_first=True, dropout=m["dropout"])
        self.drop = torch.nn.Dropout(m["dropout"])
        self.out = torch.nn.Linear(m["hidden_size"], vocab)

    def forward(self, ids):
        h, _ = self.rnn(self.drop(self.embed(ids)))
        return self.out(self.drop(h))

    def init_state(self, batch):
        return None

    def step(self, ids, state):
        """ids (B,) -> logits (B, V) and the new (h, c) (eval mode: no dropout)."""
        h, state = self.rnn(self.embed(ids)[:, None], state)
        return self.out(h[:, 0]), state


def lm_model(m, vocab):
    """The LM of a `[model]` table: LstmLm, or bench/torch_mamba.py's MambaLm."""
    if m["kind"] in ("lstm", "gru"):
        return LstmLm(m, vocab)
    if m["kind"] == "mamba":
        import torch_mamba
        return torch_mamba.MambaLm.from_config(m, vocab)
    raise SystemExit(f"LM model.kind {m['kind']!r} has no peer in bench/torch_models.py")


def bench_lm(cfg, tok, warmup, steps):
    d = cfg["data"]
    ids = tok.encode(open(d["train"], encoding="utf-8").read()).ids
    b, bptt = d["batch_size"], d["bptt"]
    n = (len(ids) - 1) // b
    x = torch.tensor(ids[:n * b]).view(b, n)
    y = torch.tensor(ids[1:n * b + 1]).view(b, n)
    chunks = list(range(0, n - bptt + 1, bptt))
    rng = random.Random(cfg["train"]["seed"])
    model = lm_model(cfg["model"], tok.get_vocab_size())
    smoothing = cfg.get("loss", {}).get("label_smoothing", 0.0)

    def epoch():
        order = chunks[:]
        rng.shuffle(order)
        return ((x[:, i:i + bptt], y[:, i:i + bptt]) for i in order)

    def loss_fn(batch):
        xi, yi = batch
        logits = model(xi)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yi.reshape(-1),
                               label_smoothing=smoothing), xi.numel()

    return train_steps(model, cfg, forever(epoch), loss_fn, warmup, steps), {"vocab": tok.get_vocab_size()}


def bench_generate(export, batch, tokens, warmup, steps):
    """`seqlab bench generate`'s peer (LmTask::greedy_batch): an untrained LM of the exported
    config continues `batch` copies of the prompt "\n" greedily by `tokens` tokens each, one
    token per call with the recurrent state (nn.LSTM's (h, c); Mamba.step's conv and SSM
    states), never stopping at <eos>. One timed step = one whole generation from fresh
    states; units = batch x tokens."""
    cfg, tok = load_export(export)
    if cfg["task"] != "lm":
        raise SystemExit(f"generate needs an lm config, the export has task {cfg['task']!r}")
    torch.manual_seed(cfg["train"]["seed"])
    model = lm_model(cfg["model"], tok.get_vocab_size()).eval()
    prompt = torch.tensor(tok.encode("\n").ids or [EOS]).repeat(batch, 1)

    @torch.no_grad()
    def step():
        state = model.init_state(batch)
        for i in range(prompt.shape[1]):
            logits, state = model.step(prompt[:, i], state)
        for _ in range(tokens - 1):
            logits, state = model.step(logits.argmax(-1), state)
        return batch * tokens

    r = time_units(warmup, steps, step)
    what = ("the reference's Mamba.step per layer" if cfg["model"]["kind"] == "mamba"
            else f"torch.nn.{cfg['model']['kind'].upper()} one step at a time with its (h, c)")
    return r, {"vocab": tok.get_vocab_size(), "implementation": what,
               "shape": f"batch {batch}, {tokens} tokens per sequence after a 1-token prompt"}


# --- classification (Transformer encoder, mean-pooled) ---


class TransformerClassifier(torch.nn.Module):
    """seqlab_tasks::models::ClsNet::Transformer: embedding x sqrt(d) + sinusoidal positions,
    dropout, encoder (final norm when pre-norm), mean over real tokens, linear."""

    def __init__(self, m, vocab, classes):
        super().__init__()
        d = m["d_model"]
        self.d = d
        self.embed = torch.nn.Embedding(vocab, d, padding_idx=PAD)
        torch.nn.init.normal_(self.embed.weight, 0.0, d ** -0.5)
        self.register_buffer("pe", sinusoidal(m["max_positions"], d))
        self.drop = torch.nn.Dropout(m["dropout"])
        layer = torch.nn.TransformerEncoderLayer(d, m["nhead"], m["dim_feedforward"], m["dropout"],
                                                 activation=m["activation"], batch_first=True,
                                                 norm_first=m["norm_first"])
        self.enc = torch.nn.TransformerEncoder(layer, m["num_layers"],
                                               norm=torch.nn.LayerNorm(d) if m["norm_first"] else None,
                                               enable_nested_tensor=False)
        self.fc = torch.nn.Linear(d, classes)

    def forward(self, ids):
        pad_mask = ids.eq(PAD)
        x = self.drop(self.embed(ids) * math.sqrt(self.d) + self.pe[:ids.shape[1]])
        h = self.enc(x, src_key_padding_mask=pad_mask)
        keep = (~pad_mask).unsqueeze(-1).float()
        return self.fc((h * keep).sum(1) / keep.sum(1).clamp(min=1))


def bench_classify(cfg, tok, warmup, steps):
    d = cfg["data"]
    if cfg["model"]["kind"] != "transformer":
        raise SystemExit(f"classify model.kind {cfg['model']['kind']!r} has no peer in bench/torch_models.py")
    rows = read_tsv(d["train"])
    labels = sorted({r[1] for r in rows})
    # seqlab_data's ClsData: `<bos> text <eos>`, at most max_len tokens in all.
    seqs = [[BOS] + e.ids[:d["max_len"] - 2] + [EOS] for e in tok.encode_batch([r[0] for r in rows])]
    y = [labels.index(r[1]) for r in rows]
    model = TransformerClassifier(cfg["model"], tok.get_vocab_size(), len(labels))
    rng = random.Random(cfg["train"]["seed"])
    lengths = [len(s) for s in seqs]
    batches = forever(lambda: iter(token_budget_batches(lengths, d["batch_tokens"], rng)))
    smoothing = cfg.get("loss", {}).get("label_smoothing", 0.0)

    def loss_fn(idx):
        logits = model(pad([seqs[i] for i in idx]))
        return F.cross_entropy(logits, torch.tensor([y[i] for i in idx]), label_smoothing=smoothing), \
            sum(lengths[i] for i in idx)

    return train_steps(model, cfg, batches, loss_fn, warmup, steps), {"vocab": tok.get_vocab_size()}


# --- BERT pretraining ---


def bench_bert(cfg, tok, warmup, steps):
    """transformers' BertModel with the pretraining heads applied to the masked positions only
    (as seqlab's BertForPreTraining), MLM + NSP loss; sentence pairs as seqlab_bert's
    PairCorpus, [CLS] A [SEP] B [SEP] cut to max_len, 15 % masked (80/10/10)."""
    from transformers import BertConfig, BertModel
    m, d = cfg["model"], cfg["data"]
    vocab = tok.get_vocab_size()
    special = {t: tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]")}
    special["[PAD]"] = PAD  # seqlab-data's <pad>
    missing = [t for t, i in special.items() if i is None]
    if missing:
        raise SystemExit(f"BERT tokenizer.json lacks {missing}")
    bc = BertConfig(vocab_size=vocab, hidden_size=m["hidden_size"], num_hidden_layers=m["num_hidden_layers"],
                    num_attention_heads=m["num_attention_heads"], intermediate_size=m["intermediate_size"],
                    max_position_embeddings=m["max_position_embeddings"], type_vocab_size=m["type_vocab_size"],
                    hidden_dropout_prob=m["hidden_dropout_prob"], attention_probs_dropout_prob=m["hidden_dropout_prob"],
                    layer_norm_eps=m["layer_norm_eps"], initializer_range=m["initializer_range"],
                    pad_token_id=special["[PAD]"], attn_implementation="sdpa")

    class Pretrain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            h = bc.hidden_size
            self.bert = BertModel(bc)
            self.transform = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.GELU(),
                                                 torch.nn.LayerNorm(h, eps=bc.layer_norm_eps))
            self.mlm_bias = torch.nn.Parameter(torch.zeros(vocab))
            self.nsp = torch.nn.Linear(h, 2)

        def forward(self, ids, segs, attn, masked):
            out = self.bert(input_ids=ids, token_type_ids=segs, attention_mask=attn)
            h = out.last_hidden_state.reshape(-1, bc.hidden_size)[masked]
            mlm = self.transform(h) @ self.bert.embeddings.word_embeddings.weight.T + self.mlm_bias
            return mlm, self.nsp(out.pooler_output)

    model = Pretrain()
    # seqlab_bert's PairCorpus: one paragraph per line (the last valid_paragraphs held out),
    # sentences cut after . ! ? + whitespace; anchors = sentences followed by another in the
    # same paragraph; B is the next sentence (50 %) or one of another paragraph.
    paras = [l.strip() for l in open(d["corpus"], encoding="utf-8") if l.strip()][:-d["valid_paragraphs"]]
    texts, par = [], []
    for p_i, p in enumerate(paras):
        for snt in re.split(r"(?<=[.!?])\s+", p):
            if snt.strip():
                texts.append(snt.strip())
                par.append(p_i)
    sents = [e.ids for e in tok.encode_batch(texts)]
    anchors = [i for i in range(len(sents) - 1) if par[i + 1] == par[i]]
    rng = random.Random(cfg["train"]["seed"])
    b, max_len, mp = d["batch_size"], d["max_len"], d["mask_prob"]

    def example(k):
        a_i = anchors[k]
        is_next = rng.random() < 0.5
        b_i = a_i + 1
        while not is_next and par[b_i] == par[a_i]:
            b_i = rng.randrange(len(sents))
        a, bb = sents[a_i], sents[b_i]
        room = max_len - 3
        while len(a) + len(bb) > room:
            if len(a) >= len(bb):
                a = a[:-1]
            else:
                bb = bb[:-1]
        ids = [special["[CLS]"]] + a + [special["[SEP]"]] + bb + [special["[SEP]"]]
        segs = [0] * (len(a) + 2) + [1] * (len(bb) + 1)
        cand = [i for i, t in enumerate(ids) if t not in (special["[CLS]"], special["[SEP]"])]
        chosen = rng.sample(cand, min(len(cand), max(1, round(mp * len(cand))))) if cand else []
        labels = [(p, ids[p]) for p in sorted(chosen)]
        for p in chosen:
            u = rng.random()
            ids[p] = special["[MASK]"] if u < 0.8 else (rng.randrange(4, special["[CLS]"]) if u < 0.9 else ids[p])
        return ids, segs, labels, int(not is_next)

    def epoch():
        order = list(range(len(anchors)))
        rng.shuffle(order)
        return (order[i:i + b] for i in range(0, len(order), b))

    def loss_fn(idx):
        ex = [example(k) for k in idx]
        ids, segs = pad([e[0] for e in ex], special["[PAD]"]), pad([e[1] for e in ex], 0)
        attn = ids.ne(special["[PAD]"]).long()
        width = ids.shape[1]
        masked = torch.tensor([r * width + p for r, e in enumerate(ex) for p, _ in e[2]])
        mlm_y = torch.tensor([t for e in ex for _, t in e[2]])
        mlm, nsp = model(ids, segs, attn, masked)
        loss = F.cross_entropy(mlm, mlm_y) + F.cross_entropy(nsp, torch.tensor([e[3] for e in ex]))
        return loss, len(mlm_y)

    return train_steps(model, cfg, forever(epoch), loss_fn, warmup, steps), {"vocab": vocab}


def bench_model(export, warmup, steps):
    cfg, tok = load_export(export)
    task = cfg["task"]
    fn = {"mt": bench_mt, "lm": bench_lm, "classify": bench_classify, "bert-pretrain": bench_bert}.get(task)
    if fn is None:
        raise SystemExit(f"task {task!r} has no PyTorch peer in bench/torch_models.py")
    torch.manual_seed(cfg["train"]["seed"])
    r, extra = fn(cfg, tok, warmup, steps)
    return r, dict(extra, task=task)


# --- decoding ---


def max_lens(src, cap):
    return [min(int(n) + 50, cap) for n in src.ne(PAD).sum(1)]


@torch.no_grad()
def greedy(model, src, cap):
    limits = max_lens(src, cap)
    b = len(limits)
    memory, kpm = model.encode(src)
    st = model.begin(memory, kpm)
    out, done = [[] for _ in range(b)], [False] * b
    feed = torch.full((b,), BOS, dtype=torch.long)
    for t in range(max(limits)):
        if all(done):
            break
        nxt = torch.log_softmax(model.step(feed, st), -1).argmax(-1).tolist()
        for i in range(b):
            if done[i]:
                nxt[i] = EOS
                continue
            if nxt[i] == EOS:
                done[i] = True
            else:
                out[i].append(nxt[i])
                done[i] = t + 1 >= limits[i]
        feed = torch.tensor(nxt)
    return out


@torch.no_grad()
def beam(model, src, k, alpha, cap):
    """seqlab_mt::decode's beam search: 2k candidates per sentence, finished hypotheses
    scored log-prob / len^alpha, a sentence stops with k finished or at its length limit."""
    limits = max_lens(src, cap)
    b = len(limits)
    memory, kpm = model.encode(src)
    memory, kpm = memory.repeat_interleave(k, 0), kpm.repeat_interleave(k, 0)
    st = model.begin(memory, kpm)
    scores = torch.full((b * k,), float("-inf"))
    scores[::k] = 0.0
    hyps = [[] for _ in range(b * k)]
    finished = [[] for _ in range(b)]
    done = [False] * b
    feed = torch.full((b * k,), BOS, dtype=torch.long)
    norm = lambda s, n: s / max(n, 1) ** alpha
    for t in range(max(limits)):
        if all(done):
            break
        logp = torch.log_softmax(model.step(feed, st), -1)
        top_v, top_i = (logp + scores[:, None]).topk(2 * k, -1)
        reorder = list(range(b * k))
        new_scores, new_hyps = scores.clone(), [h[:] for h in hyps]
        for s in range(b):
            if done[s]:
                continue
            cand = []
            for j in range(k):
                r = s * k + j
                if scores[r] != float("-inf"):
                    cand += [(float(v), j, int(i)) for v, i in zip(top_v[r], top_i[r])]
            cand.sort(key=lambda c: (-c[0], c[1], c[2]))
            last, live = t + 1 >= limits[s], 0
            for score, j, v in cand:
                if live == k:
                    break
                prev = hyps[s * k + j]
                if v == EOS:
                    if len(finished[s]) < k:
                        finished[s].append((norm(score, len(prev) + 1), prev))
                    continue
                r = s * k + live
                h = prev + [v]
                if last:
                    finished[s].append((norm(score, len(h)), h))
                new_scores[r], new_hyps[r], reorder[r] = score, h, s * k + j
                live += 1
            for r in range(s * k + live, (s + 1) * k):
                new_scores[r] = float("-inf")
            if len(finished[s]) >= k or last or live == 0:
                done[s] = True
        scores, hyps = new_scores, new_hyps
        feed = torch.tensor([EOS if done[r // k] or scores[r] == float("-inf") else (hyps[r][-1] if hyps[r] else BOS)
                             for r in range(b * k)])
        model.reorder(st, torch.tensor(reorder))
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


def bench_translate(export, decoder, beam_size, batch_size, sentences, warmup, steps):
    """Decoding with an untrained model of the exported `mt` config (seed = train.seed), the
    first `sentences` sources of its data.test, sorted by length and batched as seqlab's
    translate_ids; units are output tokens."""
    cfg, tok = load_export(export)
    if cfg["model"]["kind"] != "transformer":
        raise SystemExit("the decoding peer covers the Transformer only")
    torch.manual_seed(cfg["train"]["seed"])
    model = Seq2SeqTransformer(cfg["model"], tok.get_vocab_size()).eval()
    cap = model.pe.shape[0]
    srcs = [e.ids[:cap - 1] + [EOS] for e in tok.encode_batch([p[0] for p in read_tsv(cfg["data"]["test"])[:sentences]])]
    srcs.sort(key=len, reverse=True)
    alpha = cfg["decode"]["length_penalty"]
    state = {}

    def one_pass():
        n = 0
        for i in range(0, len(srcs), batch_size):
            src = pad(srcs[i:i + batch_size])
            outs = greedy(model, src, cap) if decoder == "greedy" else beam(model, src, beam_size, alpha, cap)
            n += sum(len(o) for o in outs)
        state["tokens"] = n
        return n

    r = time_units(warmup, steps, one_pass)
    return r, {"sentences": len(srcs) * steps, "output_tokens_per_pass": state["tokens"],
               "source_tokens_per_pass": sum(map(len, srcs))}
