//! Fuzz-style tests of every word2vec reader (issue 13 §5): vector files (text, binary,
//! safetensors + vocabulary, with and without the format override), the corpus reader
//! (vocabulary count, byte ranges, `prepare`) and the analogy / similarity evaluation files.
//! Thousands of generated and mutated inputs; each must give `Ok` with the documented
//! invariants, or an error naming the file — never a panic (proptest reports a panic as a
//! failure with the shrunk input) and never a hang (every reader is bounded by the file).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use seqlab_w2v::eval::{eval_analogy, eval_similarity, Index};
use seqlab_w2v::format::{load, load_as, save, vocab_path, Format, WordVectors};
use seqlab_w2v::text::{prepare_file, ranges, ChunkReader, TextOptions};
use seqlab_w2v::vocab::Vocab;

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("w2v-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh file with these bytes (unique name per case, so cases never see each other's).
fn file(ext: &str, bytes: &[u8]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = scratch().join(format!("case{}.{ext}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The invariants of a loaded file, or that the error names the file.
fn check_loaded(p: &Path, r: anyhow::Result<WordVectors>) {
    match r {
        Ok(wv) => {
            wv.check().unwrap();
            // What loaded also indexes and round-trips.
            let ix = Index::new(&wv).unwrap();
            if let Some(w) = wv.words.first() {
                assert!(ix.similar(w, 3).is_ok());
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let name = p.file_name().unwrap().to_string_lossy();
            assert!(msg.contains(&*name), "error does not name the file: {msg}");
        }
    }
    std::fs::remove_file(p).ok();
}

/// Characters corpora and vector files are made of: ASCII letters and digits, number syntax,
/// ASCII and Unicode whitespace, multi-byte letters.
fn text_char() -> impl Strategy<Value = char> {
    prop::sample::select(vec![
        'a', 'b', 'z', 'Q', '0', '1', '9', '.', '-', '+', 'e', 'E', ' ', ' ', ' ', '\t', '\n', '\n', '\r', '\u{a0}',
        '\u{3000}', '\u{2028}', '\u{85}', 'é', '東', '京', '\u{fffd}', ':', '#', '\'',
    ])
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(text_char(), 0..max).prop_map(|c| c.into_iter().collect())
}

/// Valid word vectors: distinct words, small dims.
fn word_vectors() -> impl Strategy<Value = WordVectors> {
    (1usize..6, prop::collection::btree_set("[a-zé東<>]{1,6}", 0..6))
        .prop_flat_map(|(dim, words)| {
            let n = words.len();
            (
                Just(dim),
                Just(words.into_iter().collect::<Vec<_>>()),
                prop::collection::vec(prop::num::f32::ANY, n * dim),
            )
        })
        .prop_map(|(dim, words, vectors)| WordVectors::new(words, dim, vectors, None).unwrap())
}

/// Byte-level mutations: overwrite, insert, delete, truncate.
#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that matter to the parsers are drawn often.
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(vec![b' ', b'\n', b'0', b'9', b'-', b'.', 0xff, 0xe9, 0xc3])
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = b.len();
        match *m {
            Mutation::Set(i, x) if n > 0 => b[i % n] = x,
            Mutation::Insert(i, x) => b.insert(i % (n + 1), x),
            Mutation::Delete(i) if n > 0 => {
                b.remove(i % n);
            }
            Mutation::Truncate(i) => b.truncate(i % (n + 1)),
            _ => {}
        }
    }
    b
}

fn saved(wv: &WordVectors, format: Format) -> Vec<u8> {
    let p = file("tmp", b"");
    save(wv, &p, format).unwrap();
    let b = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).ok();
    b
}

/// Every way a vector file can be read.
fn load_all_ways(bytes: &[u8]) {
    for format in [None, Some(Format::Text), Some(Format::Binary)] {
        let p = file("vec", bytes);
        check_loaded(&p, load_as(&p, format));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    /// Valid files load back exactly, whatever the format and detection.
    #[test]
    fn valid_files_round_trip(wv in word_vectors(), binary in any::<bool>()) {
        let format = if binary { Format::Binary } else { Format::Text };
        let p = file("vec", &saved(&wv, format));
        for f in [None, Some(format)] {
            let back = load_as(&p, f).unwrap();
            prop_assert_eq!(&back.words, &wv.words);
            // Exact bits, except that text keeps no NaN payload (it writes `NaN`).
            let bits = |v: &[f32]| v.iter().map(|x| if x.is_nan() && !binary { 0 } else { x.to_bits() }).collect::<Vec<_>>();
            prop_assert_eq!(bits(&back.vectors), bits(&wv.vectors));
        }
    }

    #[test]
    fn mutated_text_files(wv in word_vectors(), ms in prop::collection::vec(mutation(), 1..6)) {
        load_all_ways(&mutate(saved(&wv, Format::Text), &ms));
    }

    #[test]
    fn mutated_binary_files(wv in word_vectors(), ms in prop::collection::vec(mutation(), 1..6)) {
        load_all_ways(&mutate(saved(&wv, Format::Binary), &ms));
    }

    /// A plausible header over arbitrary bytes (the header is the only thing checked first).
    #[test]
    fn header_then_arbitrary_bytes(v in 0usize..5, dim in prop_oneof![0usize..5, Just(usize::MAX), Just(1 << 40)],
                                   rest in prop::collection::vec(any::<u8>(), 0..120)) {
        let mut b = format!("{v} {dim}\n").into_bytes();
        b.extend(rest);
        load_all_ways(&b);
    }

    #[test]
    fn header_then_text(head in "[0-9 ]{0,8}\n?", body in text(200)) {
        let mut b = head.into_bytes();
        b.extend(body.into_bytes());
        load_all_ways(&b);
    }

    #[test]
    fn arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..200)) {
        load_all_ways(&b);
    }

    #[test]
    fn mutated_safetensors(wv in word_vectors(), ms in prop::collection::vec(mutation(), 0..4),
                           vocab_ms in prop::collection::vec(mutation(), 0..4)) {
        let p = file("safetensors", b"");
        save(&wv, &p, Format::Safetensors).unwrap();
        let st = std::fs::read(&p).unwrap();
        std::fs::write(&p, mutate(st, &ms)).unwrap();
        let vp = vocab_path(&p);
        let vocab = std::fs::read(&vp).unwrap();
        std::fs::write(&vp, mutate(vocab, &vocab_ms)).unwrap();
        match load(&p) {
            Ok(wv) => wv.check().unwrap(),
            Err(e) => {
                // Names the tensor file or its vocabulary, whichever is wrong.
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                let msg = format!("{e:#}");
                prop_assert!(msg.contains(&stem), "{}", msg);
            }
        }
        std::fs::remove_file(&p).ok();
        std::fs::remove_file(&vp).ok();
    }

    /// The corpus reader: any split into byte ranges reads each word exactly once, words
    /// never contain whitespace, and the vocabulary counts add up.
    #[test]
    fn corpus_reader(body in prop_oneof![text(300), prop::collection::vec(any::<u8>(), 0..300)
                         .prop_map(|b| String::from_utf8_lossy(&b).into_owned())],
                     raw in prop::collection::vec(any::<u8>(), 0..40), n in 1usize..6,
                     lowercase in any::<bool>(), strip_punct in any::<bool>()) {
        let mut bytes = body.into_bytes();
        bytes.extend(raw); // invalid UTF-8 too
        let p = file("corpus", &bytes);
        let opts = TextOptions { lowercase, strip_punct };
        let words_of = |s: u64, e: u64| {
            let mut r = ChunkReader::open(&p, s, e, opts).unwrap();
            let mut w = Vec::new();
            while r.next_line(|t| w.push(t.to_string())).unwrap() {}
            w
        };
        let all = words_of(0, bytes.len() as u64);
        let split: Vec<String> = ranges(bytes.len() as u64, n).into_iter().flat_map(|(s, e)| words_of(s, e)).collect();
        prop_assert_eq!(&split, &all);
        prop_assert!(all.iter().all(|w| !w.is_empty() && !w.contains(char::is_whitespace)));
        match Vocab::build(&p, opts, 1, None) {
            Ok((v, stats)) => {
                prop_assert_eq!(stats.tokens as usize, all.len());
                prop_assert_eq!(v.total() as usize, all.len());
            }
            Err(e) => {
                prop_assert!(all.is_empty());
                let m = format!("{e:#}");
                prop_assert!(m.contains("empty"), "{}", m);
            }
        }
        let out = file("prepared", b"");
        let st = prepare_file(&p, &out, opts).unwrap();
        let prepared = std::fs::read_to_string(&out).unwrap();
        prop_assert_eq!(prepared.split_whitespace().collect::<Vec<_>>(), all.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(st.words as usize, all.len());
        std::fs::remove_file(&p).ok();
        std::fs::remove_file(&out).ok();
    }

    /// Analogy and similarity files: generated lines (sections, questions, pairs, junk) and
    /// arbitrary bytes, over a small vocabulary.
    #[test]
    fn eval_files(lines in prop::collection::vec(prop_oneof![
                      text(30),
                      "(: [a-z]{0,5}|[a-e]{1,2}( [a-eA-E]{1,2}){1,4})",
                      "[a-eA-E]{1,2}[ \t][a-e]{1,2}[ \t](-?[0-9]{1,2}(\\.[0-9])?|nan|x)",
                  ], 0..12),
                  raw in prop::collection::vec(any::<u8>(), 0..12), restrict in 0usize..8) {
        let words: Vec<String> = ["a", "b", "c", "d", "e", "aa", "bb"].map(String::from).to_vec();
        let vectors = (0..words.len() * 3).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let ix = Index::new(&WordVectors::new(words, 3, vectors, None).unwrap()).unwrap();
        let mut bytes = lines.join("\n").into_bytes();
        bytes.extend(raw);
        let p = file("eval", &bytes);
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Err(e) = eval_analogy(&ix, &p, restrict) {
            let m = format!("{e:#}");
            prop_assert!(m.contains(&name) || m.contains("restrict_vocab"), "{}", m);
        }
        match eval_similarity(&ix, &p, restrict) {
            Ok(r) => prop_assert!(r.pairs >= 2 && r.oov_pairs <= r.pairs),
            Err(e) => {
                let m = format!("{e:#}");
                prop_assert!(m.contains(&name) || m.contains("restrict_vocab"), "{}", m);
            }
        }
        std::fs::remove_file(&p).ok();
    }
}
