//! Trains the three tokenizer kinds on the bundled Shakespeare sample, saves each as
//! `<out>/<kind>.tokenizer.json` and writes `<out>/<kind>.ids.json` with the ids of every
//! line of the validation sample and the authors validation texts, for
//! `scripts/check_tokenizers_hf.py` to compare with HF Python.
//!
//! `cargo run -p seqlab-data --example export_tokenizers -- <out-dir> [train.txt]`
//! (training text defaults to the bundled sample).

use seqlab_data::{ClsData, LmText, Tokenizer, TokenizerConfig, TokenizerKind};

fn main() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "tok-check".into()));
    std::fs::create_dir_all(&out)?;
    let train = LmText::read(
        std::env::args()
            .nth(2)
            .unwrap_or_else(|| "data/sample/shakespeare.train.txt".into()),
    )?;
    let valid = LmText::read("data/sample/shakespeare.valid.txt")?;
    let cls = ClsData::read_train("data/sample/authors.valid.tsv")?;
    let mut texts: Vec<String> = valid.text.split_inclusive('\n').map(str::to_owned).collect();
    texts.extend(cls.examples.iter().map(|e| e.text.clone()));
    texts.push("Zebras say ünïcode — «quoted» 123!\t<eos> end".into());
    for kind in [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe] {
        let mut cfg = TokenizerConfig::new(kind);
        if kind == TokenizerKind::Bpe {
            cfg.vocab_size = 2000;
        }
        let t0 = std::time::Instant::now();
        let tok = Tokenizer::train(&cfg, train.text.lines())?;
        let secs = t0.elapsed().as_secs_f64();
        tok.save(out.join(format!("{kind}.tokenizer.json")))?;
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect::<Result<_, _>>()?;
        let stream = train.encode_stream(&tok)?;
        println!(
            "{kind}: vocab {} trained in {secs:.2}s; train stream {} tokens ({:.2} bytes/token)",
            tok.vocab_size(),
            stream.len(),
            train.text.len() as f64 / stream.len() as f64
        );
        let cases: Vec<serde_json::Value> = texts
            .iter()
            .zip(&ids)
            .map(|(t, i)| serde_json::json!({"text": t, "ids": i, "decoded": tok.decode(i, false).unwrap()}))
            .collect();
        std::fs::write(out.join(format!("{kind}.ids.json")), serde_json::to_string(&cases)?)?;
    }
    Ok(())
}
