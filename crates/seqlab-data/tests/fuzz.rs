//! Fuzz-style tests of every reader in seqlab-data (issue 13): thousands of generated inputs
//! each, built from the characters that matter to the formats (tabs, commas, quotes, line
//! ends, invalid UTF-8, numbers at the edges of f64). No input may panic or hang; each gives
//! `Ok` or an error that names its file.

use proptest::prelude::*;
use seqlab_data::{ClsData, LengthPolicy, LmText, Part, TimeSeries, Tokenizer, TokenizerConfig, TokenizerKind};
use std::path::PathBuf;
use std::sync::OnceLock;

/// A scratch file per test thread, rewritten by each case.
fn file(tag: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seqlab-data-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{tag}-{:?}.txt", std::thread::current().id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Byte strings made of the pieces that delimit these formats.
fn format_bytes() -> impl Strategy<Value = Vec<u8>> {
    let pieces: Vec<&'static [u8]> = vec![
        b"a",
        b"b",
        b"word",
        b" ",
        b"\t",
        b"\n",
        b"\r\n",
        b"\r",
        b",",
        b"\"",
        b"\"\"",
        b"label",
        b"pos",
        b"0",
        b"1.5",
        b"-2e3",
        b"1e309",
        b"NaN",
        b"inf",
        b"5e-324",
        b"value",
        b"date",
        b"\xff",
        b"\xc3",
        b"\xc3\xa9",
        "東京\u{3000}".as_bytes(),
        b"\x00",
        b"#",
    ];
    prop::collection::vec(prop::sample::select(pieces), 0..60).prop_map(|v| v.concat())
}

fn tokenizer(kind: TokenizerKind) -> &'static Tokenizer {
    static TOKS: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    let toks = TOKS.get_or_init(|| {
        let text = ["the cat sat on the mat", "a dog, a cat; the end.", "café 東京 naïve"];
        [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe]
            .into_iter()
            .map(|k| {
                let cfg = TokenizerConfig {
                    vocab_size: 300,
                    min_frequency: 1,
                    ..TokenizerConfig::new(k)
                };
                Tokenizer::train(&cfg, text.iter().copied()).unwrap()
            })
            .collect()
    });
    &toks[kind as usize]
}

fn check_names_file<T, E: std::fmt::Display>(r: Result<T, E>, p: &std::path::Path) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e.to_string();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(msg.contains(&name), "error does not name the file: {msg}");
            None
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn lm_text_reader_and_encoders(bytes in format_bytes(), max_len in 0usize..12, kind in 0usize..3) {
        let p = file("lm", &bytes);
        if let Some(t) = check_names_file(LmText::read(&p), &p) {
            let tok = tokenizer([TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe][kind]);
            let _ = t.encode_stream(tok).unwrap();
            let mut w = Vec::new();
            for policy in [LengthPolicy::Error, LengthPolicy::Truncate] {
                if let Ok(seqs) = check_names_file(t.encode_lines(tok, max_len, policy, &mut w), &p).ok_or(()) {
                    prop_assert!(seqs.iter().all(|s| s.len() <= max_len));
                }
            }
        }
    }

    #[test]
    fn classification_tsv_reader(train in format_bytes(), eval in format_bytes(), max_len in 0usize..12) {
        let p = file("cls-train", &train);
        let q = file("cls-eval", &eval);
        if let Some(d) = check_names_file(ClsData::read_train(&p), &p) {
            prop_assert!(d.examples.iter().all(|e| e.label < d.labels.len()));
            let mut w = Vec::new();
            let _ = check_names_file(d.encode(tokenizer(TokenizerKind::Word), max_len, LengthPolicy::Truncate, &mut w), &p);
            let _ = check_names_file(ClsData::read_eval(&q, &d.labels), &q);
        }
    }

    #[test]
    fn time_series_csv_reader(
        body in format_bytes(),
        header in prop::sample::select(vec!["value", "date,value", "\"value\",x", ""]),
        column in prop::sample::select(vec!["value", "x", "", "date"]),
        valid in prop::sample::select(vec![0.0, 0.1, 0.5, 0.99, -0.1, 1.0, f64::NAN]),
        test in prop::sample::select(vec![0.0, 0.2, 0.7, f64::INFINITY]),
        input_len in 0usize..6,
        horizon in 0usize..4,
    ) {
        let p = file("ts", &[header.as_bytes(), b"\n", &body].concat());
        if let Some(ts) = check_names_file(TimeSeries::read_csv(&p, column, valid, test), &p) {
            prop_assert!(ts.raw.iter().all(|v| v.is_finite()));
            for part in [Part::Train, Part::Valid, Part::Test] {
                let _ = ts.windows(part, input_len, horizon);
            }
        }
    }
}

/// Edits of a JSON document: at a pseudo-random spot, remove an entry, or replace a value
/// by one of another type; `choice` picks the spot.
fn mutate_json(v: &mut serde_json::Value, choice: &mut impl Iterator<Item = u32>, replacement: &serde_json::Value) {
    use serde_json::Value;
    let Some(c) = choice.next() else {
        *v = replacement.clone();
        return;
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[c as usize % keys.len()];
            if c % 7 == 0 {
                m.remove(k);
            } else {
                mutate_json(m.get_mut(k).unwrap(), choice, replacement);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let n = a.len();
            if c % 7 == 0 {
                a.remove(c as usize % n);
            } else {
                mutate_json(&mut a[c as usize % n], choice, replacement);
            }
        }
        _ => *v = replacement.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// tokenizer.json: structural edits of the three kinds' real files (and cut-off text),
    /// then encode and decode with whatever loaded.
    #[test]
    fn tokenizer_json_loading(
        kind in 0usize..3,
        path in prop::collection::vec(any::<u32>(), 0..6),
        replacement in prop::sample::select(vec![
            serde_json::json!(null), serde_json::json!(-1), serde_json::json!(4294967296u64),
            serde_json::json!("<unk>"), serde_json::json!([]), serde_json::json!({}),
            serde_json::json!(1.5), serde_json::json!("[UNK]"), serde_json::json!(true),
        ]),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        text in "[a-z東 ,.\\n]{0,20}",
        ids in prop::collection::vec(0u32..400, 0..10),
    ) {
        let tok = tokenizer([TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe][kind]);
        let mut v: serde_json::Value = serde_json::from_str(&tok.to_json().unwrap()).unwrap();
        mutate_json(&mut v, &mut path.into_iter(), &replacement);
        let mut json = v.to_string();
        if truncate {
            let mut at = cut.index(json.len() + 1);
            while !json.is_char_boundary(at) {
                at -= 1;
            }
            json.truncate(at);
        }
        let p = file("tok", json.as_bytes());
        if let Some(t) = check_names_file(Tokenizer::load(&p), &p) {
            if let Ok(enc) = t.encode(&text) {
                prop_assert!(enc.iter().all(|&i| (i as usize) < t.vocab_size().max(1) + 1000));
            }
            let _ = t.decode(&ids, true);
            let _ = t.decode(&ids, false);
        }
    }
}
