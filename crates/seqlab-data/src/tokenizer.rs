//! Tokenizers: character, word and byte-level BPE, all backed by the HF `tokenizers` crate so
//! that every kind saves as a `tokenizer.json` that HF (Rust or Python) loads unchanged.
//!
//! - `char`: a `WordLevel` model over single characters (a `Split` pre-tokenizer isolating each
//!   char, whitespace and newlines included) with a `Fuse` decoder, so decode is lossless for
//!   in-vocabulary text.
//! - `word`: a `WordLevel` model over `WhitespaceSplit` + `Punctuation` pieces; decode joins
//!   tokens with single spaces (whitespace is not kept).
//! - `bpe`: GPT-2 style byte-level BPE (`ByteLevel` pre-tokenizer and decoder); every byte is in
//!   the initial alphabet so `<unk>` never occurs and decode is lossless.
//!
//! Special tokens always take ids 0..4: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{DataError, ErrorKind};

/// Padding token.
pub const PAD: &str = "<pad>";
/// Beginning-of-sequence token.
pub const BOS: &str = "<bos>";
/// End-of-sequence token.
pub const EOS: &str = "<eos>";
/// Unknown-token replacement.
pub const UNK: &str = "<unk>";
/// Id of [`PAD`] in every seqlab tokenizer.
pub const PAD_ID: u32 = 0;
/// Id of [`BOS`] in every seqlab tokenizer.
pub const BOS_ID: u32 = 1;
/// Id of [`EOS`] in every seqlab tokenizer.
pub const EOS_ID: u32 = 2;
/// Id of [`UNK`] in every seqlab tokenizer.
pub const UNK_ID: u32 = 3;
const SPECIALS: [&str; 4] = [PAD, BOS, EOS, UNK];

/// Which tokenizer to build (config and command-line spelling: `char`, `word`, `bpe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// One token per character (newline included).
    Char,
    /// Words split on Unicode whitespace (`char::is_whitespace`, as HF's `WhitespaceSplit`),
    /// punctuation isolated.
    Word,
    /// GPT-2 style byte-level BPE.
    Bpe,
}

impl std::str::FromStr for TokenizerKind {
    type Err = TokenizerError;
    /// Parses `char`, `word` or `bpe`; rejects anything else, listing the three.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "char" => Ok(TokenizerKind::Char),
            "word" => Ok(TokenizerKind::Word),
            "bpe" => Ok(TokenizerKind::Bpe),
            _ => Err(TokenizerError(format!(
                "unknown tokenizer kind {s:?} (expected char, word or bpe)"
            ))),
        }
    }
}

impl std::fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenizerKind::Char => "char",
            TokenizerKind::Word => "word",
            TokenizerKind::Bpe => "bpe",
        })
    }
}

/// Training settings. `vocab_size` counts the four special tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerConfig {
    /// Char, word or BPE.
    pub kind: TokenizerKind,
    /// Default: char 1000, word 30000, bpe 8000.
    pub vocab_size: usize,
    /// Tokens (chars, words) or merges (bpe) seen fewer times are left out.
    /// Default: char 1, word 2, bpe 2.
    pub min_frequency: u64,
}

impl TokenizerConfig {
    /// Defaults for `kind` (see the field docs).
    pub fn new(kind: TokenizerKind) -> Self {
        let (vocab_size, min_frequency) = match kind {
            TokenizerKind::Char => (1000, 1),
            TokenizerKind::Word => (30_000, 2),
            TokenizerKind::Bpe => (8000, 2),
        };
        Self {
            kind,
            vocab_size,
            min_frequency,
        }
    }
}

/// Error from the HF library or from a bad configuration.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer: {0}")]
pub struct TokenizerError(pub String);

fn tok_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError(e.to_string())
}

/// A trained tokenizer of one of the three kinds.
#[derive(Clone)]
pub struct Tokenizer {
    kind: TokenizerKind,
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn special_tokens() -> Vec<AddedToken> {
    SPECIALS.iter().map(|s| AddedToken::from(*s, true)).collect()
}

impl Tokenizer {
    /// Trains on `lines` (e.g. the training split). Each line is fed with a trailing `\n`, so
    /// the newline is a token for `char` and `bpe` (it matters for language modelling).
    pub fn train<I, S>(config: &TokenizerConfig, lines: I) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if config.vocab_size <= SPECIALS.len() {
            return Err(TokenizerError(format!(
                "vocab_size {} must exceed the {} special tokens",
                config.vocab_size,
                SPECIALS.len()
            )));
        }
        let lines = lines.map(|l| {
            let mut s = l.as_ref().to_owned();
            s.push('\n');
            s
        });
        let (model, pre, decoder, mut trainer): (
            ModelWrapper,
            PreTokenizerWrapper,
            Option<DecoderWrapper>,
            TrainerWrapper,
        ) = match config.kind {
            TokenizerKind::Char | TokenizerKind::Word => {
                let model = WordLevel::builder().unk_token(UNK.into()).build().map_err(tok_err)?;
                let trainer = WordLevelTrainer::builder()
                    .vocab_size(config.vocab_size)
                    .min_frequency(config.min_frequency)
                    .show_progress(false)
                    .special_tokens(special_tokens())
                    .build()
                    .map_err(tok_err)?;
                let (pre, decoder): (PreTokenizerWrapper, Option<DecoderWrapper>) =
                    if config.kind == TokenizerKind::Char {
                        // `[\s\S]` rather than `(?s).`: the dot-all flag is spelled differently
                        // in Oniguruma, which HF Python uses to read the same file.
                        let split = Split::new(
                            SplitPattern::Regex(r"[\s\S]".into()),
                            SplitDelimiterBehavior::Isolated,
                            false,
                        )
                        .map_err(tok_err)?;
                        (split.into(), Some(Fuse::new().into()))
                    } else {
                        let seq = Sequence::new(vec![
                            WhitespaceSplit.into(),
                            Punctuation::new(SplitDelimiterBehavior::Isolated).into(),
                        ]);
                        (seq.into(), None)
                    };
                (model.into(), pre, decoder, trainer.into())
            }
            TokenizerKind::Bpe => {
                let model = BPE::builder().unk_token(UNK.into()).build().map_err(tok_err)?;
                let trainer = BpeTrainer::builder()
                    .vocab_size(config.vocab_size)
                    .min_frequency(config.min_frequency)
                    .show_progress(false)
                    .special_tokens(special_tokens())
                    .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                    .build();
                let pre = ByteLevel::new(false, true, true);
                (
                    model.into(),
                    pre.into(),
                    Some(ByteLevelDecoder::default().into()),
                    trainer.into(),
                )
            }
        };
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(decoder);
        inner.train(&mut trainer, lines).map_err(tok_err)?;
        Self::from_hf(inner, Some(config.kind))
    }

    /// Wraps an HF tokenizer after checking the special ids; infers the kind when not given.
    fn from_hf(inner: tokenizers::Tokenizer, kind: Option<TokenizerKind>) -> Result<Self, TokenizerError> {
        for (id, s) in SPECIALS.iter().enumerate() {
            if inner.token_to_id(s) != Some(id as u32) {
                return Err(TokenizerError(format!(
                    "special token {s} must have id {id}, found {:?}",
                    inner.token_to_id(s)
                )));
            }
        }
        let kind = match kind {
            Some(k) => k,
            None => match (inner.get_model(), inner.get_decoder()) {
                (ModelWrapper::BPE(_), _) => TokenizerKind::Bpe,
                (ModelWrapper::WordLevel(_), Some(DecoderWrapper::Fuse(_))) => TokenizerKind::Char,
                (ModelWrapper::WordLevel(_), _) => TokenizerKind::Word,
                _ => {
                    return Err(TokenizerError(
                        "unsupported model type (expected BPE or WordLevel)".into(),
                    ))
                }
            },
        };
        Ok(Self { kind, inner })
    }

    /// Which kind of tokenizer this is (char, word or BPE).
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of `<pad>` (always [`PAD_ID`]).
    pub fn pad_id(&self) -> u32 {
        PAD_ID
    }
    /// Id of `<bos>` (always [`BOS_ID`]).
    pub fn bos_id(&self) -> u32 {
        BOS_ID
    }
    /// Id of `<eos>` (always [`EOS_ID`]).
    pub fn eos_id(&self) -> u32 {
        EOS_ID
    }
    /// Id of `<unk>` (always [`UNK_ID`]).
    pub fn unk_id(&self) -> u32 {
        UNK_ID
    }

    /// Ids of `text`, without `<bos>`/`<eos>`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode_fast(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids of many texts at once (in parallel), without `<bos>`/`<eos>`.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TokenizerError> {
        let encs = self.inner.encode_batch_fast(texts.to_vec(), false).map_err(tok_err)?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of `ids`; with `skip_special`, pad/bos/eos/unk are dropped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// Token string of `id`, or `None` if out of range.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Id of the exact token string `token`, or `None` if not in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The HF JSON text (what [`Tokenizer::save`] writes).
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner.to_string(true).map_err(tok_err)
    }

    /// Reads a tokenizer from HF JSON text.
    pub fn from_json(json: &str) -> Result<Self, TokenizerError> {
        Self::from_hf(parse_hf_json(json)?, None)
    }

    /// Writes `tokenizer.json` in HF format (loadable by `tokenizers.Tokenizer.from_file`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        let path = path.as_ref();
        let json = self
            .to_json()
            .map_err(|e| DataError::file(path, ErrorKind::Tokenizer(e.0)))?;
        std::fs::write(path, json).map_err(|e| DataError::file(path, ErrorKind::Io(e)))
    }

    /// Loads a file written by [`Tokenizer::save`]; the kind is inferred from its contents.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|e| DataError::file(path, ErrorKind::Io(e)))?;
        Self::from_json(&json).map_err(|e| DataError::file(path, ErrorKind::Tokenizer(e.0)))
    }

    /// The underlying HF tokenizer, for anything not wrapped here.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Parses any HF `tokenizer.json` text (WordPiece, BPE, ... of any vocabulary), without
/// seqlab's special-token checks. Errors, never panics, on malformed text.
pub fn parse_hf_json(json: &str) -> Result<tokenizers::Tokenizer, TokenizerError> {
    // The HF parser panics (an unwrap in its decoder deserializer) on some malformed
    // files, such as a cut-off one: check the JSON syntax first, and turn any remaining
    // panic into an error.
    serde_json::from_str::<serde_json::Value>(json).map_err(|e| TokenizerError(format!("invalid JSON: {e}")))?;
    let parsed = std::panic::catch_unwind(|| json.parse::<tokenizers::Tokenizer>())
        .map_err(|_| TokenizerError("malformed tokenizer file (the HF parser gave up)".into()))?;
    parsed.map_err(tok_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n";

    fn train(kind: TokenizerKind, vocab: usize) -> Tokenizer {
        let cfg = TokenizerConfig {
            kind,
            vocab_size: vocab,
            min_frequency: 1,
        };
        Tokenizer::train(&cfg, TEXT.lines()).unwrap()
    }

    /// Issue 13: token separators are Unicode whitespace everywhere: `東京\u{3000}大阪 東京`
    /// is three words, `東京` twice.
    #[test]
    fn word_tokenizer_splits_on_unicode_whitespace() {
        let lines = ["東京\u{3000}大阪 東京", "a\u{a0}b\u{2009}c"];
        let cfg = TokenizerConfig {
            min_frequency: 1,
            ..TokenizerConfig::new(TokenizerKind::Word)
        };
        let t = Tokenizer::train(&cfg, lines.iter()).unwrap();
        // 4 specials + 東京, 大阪, a, b, c.
        assert_eq!(t.vocab_size(), 9);
        let ids = t.encode(lines[0]).unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0], ids[2]);
        assert_ne!(ids[0], ids[1]);
        assert!(!ids.contains(&UNK_ID));
        assert_eq!(t.encode(lines[1]).unwrap().len(), 3);
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for k in [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe] {
            assert_eq!(k.to_string().parse::<TokenizerKind>().unwrap(), k);
        }
        let e = "words".parse::<TokenizerKind>().unwrap_err().to_string();
        assert!(e.contains("words") && e.contains("char, word or bpe"), "{e}");
    }

    #[test]
    fn char_roundtrip_and_specials() {
        let t = train(TokenizerKind::Char, 1000);
        for (i, s) in SPECIALS.iter().enumerate() {
            assert_eq!(t.token_to_id(s), Some(i as u32));
        }
        let ids = t.encode("hear me\nspeak").unwrap();
        assert_eq!(ids.len(), 13);
        assert!(ids.iter().all(|&i| i > UNK_ID));
        assert_eq!(t.decode(&ids, true).unwrap(), "hear me\nspeak");
        // 'Z' was never seen.
        assert_eq!(t.encode("Z").unwrap(), vec![UNK_ID]);
    }

    #[test]
    fn char_vocab_is_frequency_ordered_and_capped() {
        let t = train(TokenizerKind::Char, 6);
        assert_eq!(t.vocab_size(), 6);
        // the two most frequent chars of TEXT are ' ' and 'e'
        assert_eq!(t.id_to_token(4).as_deref(), Some(" "));
        assert_eq!(t.id_to_token(5).as_deref(), Some("e"));
    }

    #[test]
    fn word_splits_punctuation() {
        let t = train(TokenizerKind::Word, 1000);
        let ids = t.encode("Speak, speak.").unwrap();
        let toks: Vec<_> = ids.iter().map(|&i| t.id_to_token(i).unwrap()).collect();
        assert_eq!(toks, ["Speak", ",", "speak", "."]);
        assert_eq!(t.decode(&ids, false).unwrap(), "Speak , speak .");
        assert_eq!(t.encode("unseen").unwrap(), vec![UNK_ID]);
    }

    #[test]
    fn bpe_roundtrip_lossless() {
        let t = train(TokenizerKind::Bpe, 300);
        assert!(t.vocab_size() <= 300 && t.vocab_size() > 4 + 256);
        let s = "Zebras speak ünïcode!\n";
        let ids = t.encode(s).unwrap();
        assert!(!ids.contains(&UNK_ID));
        assert_eq!(t.decode(&ids, true).unwrap(), s);
    }

    #[test]
    fn save_load_all_kinds() {
        let dir = std::env::temp_dir().join(format!("seqlab-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for kind in [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe] {
            let t = train(kind, 300);
            let p = dir.join(format!("{kind}.json"));
            t.save(&p).unwrap();
            let u = Tokenizer::load(&p).unwrap();
            assert_eq!(u.kind(), kind);
            assert_eq!(u.vocab_size(), t.vocab_size());
            assert_eq!(u.encode(TEXT).unwrap(), t.encode(TEXT).unwrap());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn training_is_deterministic() {
        for kind in [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe] {
            assert_eq!(train(kind, 280).to_json().unwrap(), train(kind, 280).to_json().unwrap());
        }
    }

    #[test]
    fn bad_config_and_file_are_errors() {
        let cfg = TokenizerConfig {
            kind: TokenizerKind::Char,
            vocab_size: 4,
            min_frequency: 1,
        };
        assert!(Tokenizer::train(&cfg, TEXT.lines()).is_err());
        let e = Tokenizer::load("/nonexistent/tokenizer.json").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("/nonexistent/tokenizer.json: cannot read file"));
        assert!(Tokenizer::from_json("{}").is_err());
    }
}
