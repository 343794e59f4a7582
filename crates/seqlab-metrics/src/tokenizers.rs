//! BLEU's tokenizers, reproducing sacrebleu 2.x's `13a` (default), `none`, `char` and `intl`.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::text::py_split;
use crate::MetricError;

/// Which tokenizer BLEU applies before counting word n-grams. Default: `13a` (sacrebleu's default,
/// equivalent to mteval-v13a.pl as used by WMT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tokenizer {
    /// Split on whitespace only.
    None,
    /// mteval-v13a: unescape a few HTML entities, separate ASCII punctuation and symbols; commas
    /// and periods stay attached between digits. Unicode punctuation is left attached.
    #[default]
    V13a,
    /// mteval-v14 "international": separate Unicode punctuation (unless between digits) and symbols.
    Intl,
    /// Every non-whitespace character is a token.
    Char,
}

impl Tokenizer {
    /// sacrebleu's name for this tokenizer (as in its signature `tok:13a`).
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::None => "none",
            Tokenizer::V13a => "13a",
            Tokenizer::Intl => "intl",
            Tokenizer::Char => "char",
        }
    }

    /// Tokenizes one segment; tokens are separated by single spaces, as sacrebleu returns them.
    pub fn tokenize(self, line: &str) -> String {
        match self {
            Tokenizer::None => line.to_string(),
            Tokenizer::V13a => tokenize_13a(line),
            Tokenizer::Intl => tokenize_intl(line),
            Tokenizer::Char => {
                let mut out = String::with_capacity(line.len() * 2);
                for c in line.chars() {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push(c);
                }
                out
            }
        }
    }
}

impl fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tokenizer {
    type Err = MetricError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Tokenizer::None),
            "13a" => Ok(Tokenizer::V13a),
            "intl" => Ok(Tokenizer::Intl),
            "char" => Ok(Tokenizer::Char),
            other => Err(MetricError::Config(format!(
                "unknown tokenizer {other:?} (expected one of: 13a, none, intl, char)"
            ))),
        }
    }
}

/// The first regex of sacrebleu's `TokenizerRegexp`: `[\{-\~\[-\` -\&\(-\+\:-\@\/]`.
fn is_13a_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Applies a two-character pattern `(a)(b)` with Python `re.sub` semantics (leftmost,
/// non-overlapping: after a match the scan resumes after its second character).
fn sub_pairs(
    chars: &[char],
    matches: impl Fn(char, char) -> bool,
    emit: impl Fn(&mut Vec<char>, char, char),
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && matches(chars[i], chars[i + 1]) {
            emit(&mut out, chars[i], chars[i + 1]);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn is_period_comma(c: char) -> bool {
    c == '.' || c == ','
}

fn tokenize_13a(line: &str) -> String {
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        // Sequential, as in sacrebleu: "&amp;lt;" becomes "&lt;" and then "<".
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut chars: Vec<char> = Vec::with_capacity(line.len() + 16);
    chars.push(' ');
    for c in line.chars() {
        if is_13a_symbol(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    chars.push(' ');
    // The leading/trailing spaces added above were themselves "symbols" in sacrebleu (the space
    // is in the class), which only adds more spaces: irrelevant after the final split.
    let chars = sub_pairs(
        &chars,
        |a, b| !a.is_ascii_digit() && is_period_comma(b),
        |o, a, b| o.extend([a, ' ', b, ' ']),
    );
    let chars = sub_pairs(
        &chars,
        |a, b| is_period_comma(a) && !b.is_ascii_digit(),
        |o, a, b| o.extend([' ', a, ' ', b]),
    );
    let chars = sub_pairs(
        &chars,
        |a, b| a.is_ascii_digit() && b == '-',
        |o, a, b| o.extend([a, ' ', b, ' ']),
    );
    let s: String = chars.into_iter().collect();
    py_split(&s).collect::<Vec<_>>().join(" ")
}

fn tokenize_intl(line: &str) -> String {
    static RES: OnceLock<[regex::Regex; 3]> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [
            regex::Regex::new(r"(\P{N})(\p{P})").expect("valid regex"),
            regex::Regex::new(r"(\p{P})(\P{N})").expect("valid regex"),
            regex::Regex::new(r"(\p{S})").expect("valid regex"),
        ]
    });
    let s = res[0].replace_all(line, "${1} ${2} ");
    let s = res[1].replace_all(&s, " ${1} ${2}");
    let s = res[2].replace_all(&s, " ${1} ");
    py_split(&s).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings from sacrebleu 2.6.0:
    // sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()(line)
    #[test]
    fn thirteen_a_matches_sacrebleu() {
        let t = Tokenizer::V13a;
        assert_eq!(
            t.tokenize("Hello, world. It's 3.14 and 1,000 - ok?"),
            "Hello , world . It's 3.14 and 1,000 - ok ?"
        );
        assert_eq!(
            t.tokenize("a.,b 5-3 x-y (z) [w] {v} &amp;lt; &quot;q&quot;"),
            "a . , b 5 - 3 x-y ( z ) [ w ] { v } < \" q \""
        );
        assert_eq!(t.tokenize("«Hola», dijo él… ¿Qué?"), "«Hola» , dijo él… ¿Qué ?");
        assert_eq!(t.tokenize("end 2020."), "end 2020 .");
        assert_eq!(t.tokenize("<skipped>"), "");
        assert_eq!(t.tokenize(""), "");
    }

    // sacrebleu.tokenizers.tokenizer_intl.TokenizerV14International()(line)
    #[test]
    fn intl_matches_sacrebleu() {
        let t = Tokenizer::Intl;
        assert_eq!(
            t.tokenize("«Hola», dijo él… ¿Qué? 3.14 $5"),
            "« Hola » , dijo él … ¿ Qué ? 3.14 $ 5"
        );
        assert_eq!(t.tokenize("end 2020."), "end 2020.");
    }

    #[test]
    fn char_and_none() {
        assert_eq!(Tokenizer::Char.tokenize("ab c"), "a b   c");
        assert_eq!(Tokenizer::None.tokenize(" a  b "), " a  b ");
        assert!("xyz".parse::<Tokenizer>().unwrap_err().to_string().contains("xyz"));
    }
}
