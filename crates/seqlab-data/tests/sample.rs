//! The bundled sample (`data/sample/`) goes through the whole pipeline.

use std::path::PathBuf;

use seqlab_data::{
    pad_batch, token_budget_batches, BudgetConfig, ClsData, LengthPolicy, LmText, Part, StreamBatcher, TimeSeries,
    Tokenizer, TokenizerConfig, TokenizerKind,
};

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/sample")
        .join(name)
}

#[test]
fn char_lm_on_shakespeare_sample() {
    let train = LmText::read(sample("shakespeare.train.txt")).unwrap();
    let valid = LmText::read(sample("shakespeare.valid.txt")).unwrap();
    let tok = Tokenizer::train(&TokenizerConfig::new(TokenizerKind::Char), train.text.lines()).unwrap();
    assert!(tok.vocab_size() > 60 && tok.vocab_size() < 100, "{}", tok.vocab_size());
    let stream = train.encode_stream(&tok).unwrap();
    assert_eq!(stream.len(), train.text.chars().count());
    assert_eq!(tok.decode(&stream[..200], false).unwrap(), train.text[..200]);
    let v = valid.encode_stream(&tok).unwrap();
    let unk = v.iter().filter(|&&i| i == tok.unk_id()).count();
    assert!(unk * 1000 < v.len(), "{unk} unknown chars in validation");
    let b = StreamBatcher::new(&stream, 32).unwrap();
    let c = b.chunk(0, 64).unwrap();
    assert_eq!((c.batch, c.len, c.input.len()), (32, 64, 2048));
}

#[test]
fn authors_classification_sample() {
    let train = ClsData::read_train(sample("authors.train.tsv")).unwrap();
    assert_eq!(
        train.labels.names(),
        ["austen", "bible-kjv", "bible-web", "melville", "milton", "shakespeare"]
    );
    let valid = ClsData::read_eval(sample("authors.valid.tsv"), &train.labels).unwrap();
    let test = ClsData::read_eval(sample("authors.test.tsv"), &train.labels).unwrap();
    assert_eq!(
        (train.examples.len(), valid.examples.len(), test.examples.len()),
        (300, 200, 200)
    );
    let mut cfg = TokenizerConfig::new(TokenizerKind::Bpe);
    cfg.vocab_size = 1000;
    let tok = Tokenizer::train(&cfg, train.examples.iter().map(|e| e.text.as_str())).unwrap();
    let mut warnings = Vec::new();
    let (seqs, labels) = valid.encode(&tok, 128, LengthPolicy::Truncate, &mut warnings).unwrap();
    assert_eq!(labels.len(), seqs.len());
    assert!(seqs.iter().all(|s| s.len() <= 128 && s[0] == tok.bos_id()));
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let batches = token_budget_batches(&lengths, &BudgetConfig::new(2048), Some((1, 0))).unwrap();
    let p = pad_batch(&seqs, &batches[0], tok.pad_id());
    assert!(p.batch * p.max_len <= 2048);
    assert_eq!(
        p.mask.iter().map(|&m| m as usize).sum::<usize>(),
        p.lengths.iter().sum::<usize>()
    );
}

#[test]
fn sunspot_sample() {
    let ts = TimeSeries::read_csv(sample("sunspot-month.csv"), "sunspot.month", 0.1, 0.1).unwrap();
    assert_eq!(ts.raw.len(), 3177);
    assert_eq!(ts.raw[0], 58.0);
    let w = ts.windows(Part::Test, 24, 1).unwrap();
    assert_eq!(w.n, ts.range(Part::Test).len());
    let train_mean: f32 = {
        let r = ts.range(Part::Train);
        ts.normalized[r.clone()].iter().sum::<f32>() / r.len() as f32
    };
    assert!(train_mean.abs() < 1e-4);
}
