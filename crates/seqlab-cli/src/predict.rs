//! `seqlab predict`: reads the input, turns each line into a request of the model's kind,
//! runs it through the predictors `seqlab serve` uses (`seqlab_predict::models`), and
//! prints the answers as text or JSON lines.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use seqlab_predict::api::*;
use seqlab_predict::models::{self, Loaded};
use seqlab_predict::BatchPredictor;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How `seqlab predict` prints its answers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// One JSON object per answer (with the input `line` it answers).
    Jsonl,
}

/// `seqlab predict --checkpoint RUN [--input F] [--format text|jsonl]`
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A run folder (→ its best checkpoint) or checkpoint folder of a task with predictions
    /// (lm, classify, bert-finetune, forecast, mt), a Hugging Face model folder (BERT with a
    /// sequence-classification or MLM head, or an M2M100 translation model), or word vectors:
    /// a vector file or a folder holding vectors.txt, vectors.bin or vectors.safetensors.
    #[arg(long, required_unless_present = "vectors", conflicts_with = "vectors")]
    pub checkpoint: Option<PathBuf>,
    /// Word vectors (word2vec text or binary, or safetensors) for nearest-word queries.
    #[arg(long)]
    pub vectors: Option<PathBuf>,
    #[command(flatten)]
    pub device: crate::train::DeviceArg,
    /// Input file, UTF-8 (default: standard input). One input per line, blank lines skipped:
    /// a text (classifiers, translation; with `[MASK]`s for fill-mask models), a series of numbers separated by commas and/or
    /// spaces, oldest first (forecasters), words with `-` before the subtracted ones, like
    /// `king woman -man` (word vectors). Language models score the whole input as one text
    /// (see --per-line).
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// Output: text, or jsonl (one JSON object per answer).
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Classifiers: show the k most probable labels (default: all). Fill-mask models: the
    /// k most probable pieces per `[MASK]` (default 5).
    #[arg(long, value_parser = crate::w2v::positive)]
    pub top_k: Option<usize>,
    /// Forecasters: values to forecast (default: the model's data.horizon; past it the model
    /// runs again on its own forecasts).
    #[arg(long, value_parser = crate::w2v::positive)]
    pub horizon: Option<usize>,
    /// Word vectors: a word whose vector is added (repeatable); with --positive/--negative
    /// no input is read.
    #[arg(long)]
    pub positive: Vec<String>,
    /// Word vectors: a word whose vector is subtracted (repeatable).
    #[arg(long)]
    pub negative: Vec<String>,
    /// Word vectors: nearest words per query.
    #[arg(long, short = 'n', default_value_t = 10, value_parser = crate::w2v::positive)]
    pub topn: usize,
    /// Language models: score each non-blank line as its own text (default: the whole input
    /// as one text, as `seqlab eval --data FILE` scores a file).
    #[arg(long)]
    pub per_line: bool,
    /// Inputs per model call (classifiers, forecasters, translation).
    #[arg(long, default_value_t = 32, value_parser = crate::w2v::positive)]
    pub batch_size: usize,
}

/// Reads `path` (or standard input) as UTF-8: (its name for messages, its text). Invalid
/// UTF-8 is an error naming the line.
pub fn read_input(path: Option<&Path>) -> Result<(String, String)> {
    let (name, bytes) = match path {
        Some(p) => (
            p.display().to_string(),
            std::fs::read(p).with_context(|| format!("{}: cannot read file", p.display()))?,
        ),
        None => {
            let mut b = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut b)
                .context("<stdin>: cannot read")?;
            ("<stdin>".to_string(), b)
        }
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        anyhow!("{name}:{line}: invalid UTF-8")
    })?;
    Ok((name, text))
}

/// The non-blank lines of `text`, trimmed, with their 1-based numbers; none is an error.
fn input_lines<'a>(name: &str, text: &'a str) -> Result<Vec<(usize, &'a str)>> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    if lines.is_empty() {
        bail!("{name}: empty input: nothing to predict");
    }
    Ok(lines)
}

/// A series: numbers separated by commas and/or whitespace. Errors name the line and the
/// column (the value's 1-based position).
fn parse_series(name: &str, line: usize, l: &str) -> Result<Vec<f64>> {
    l.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(k, s)| match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            Ok(_) => bail!("{name}:{line}: column {}: {s:?} is not a finite number", k + 1),
            Err(_) => bail!("{name}:{line}: column {}: {s:?} is not a number", k + 1),
        })
        .collect()
}

/// A nearest-words query: words to add, and words with a leading `-` to subtract.
fn parse_query(l: &str) -> (Vec<String>, Vec<String>) {
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for w in l.split_whitespace() {
        match w.strip_prefix('-') {
            Some(rest) if !rest.is_empty() => neg.push(rest.to_string()),
            _ => pos.push(w.to_string()),
        }
    }
    (pos, neg)
}

/// Runs `p` over `(line, request)` pairs, `batch` at a time; the first failing request's
/// error names its line.
fn run_batched<P: BatchPredictor>(
    p: &P,
    items: Vec<(usize, P::In)>,
    batch: usize,
    name: &str,
) -> Result<Vec<(usize, P::Out)>> {
    let mut out = Vec::with_capacity(items.len());
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        let (lines, reqs): (Vec<usize>, Vec<P::In>) = it.by_ref().take(batch).unzip();
        for (line, r) in lines.into_iter().zip(p.predict_batch(reqs)) {
            out.push((line, r.map_err(|e| anyhow!("{name}:{line}: {e:#}"))?));
        }
    }
    Ok(out)
}

/// One JSON line: `extra` fields first, then the answer's.
fn json_line(extra: Value, answer: &impl Serialize) -> Result<String> {
    let mut v = extra;
    if let (Value::Object(m), Value::Object(a)) = (&mut v, serde_json::to_value(answer)?) {
        m.extend(a);
    }
    Ok(serde_json::to_string(&v)?)
}

/// Flags that only some kinds of model take: an error when given to another kind.
fn check_flags(a: &PredictArgs, kind: &str) -> Result<()> {
    let given: [(&str, bool, &[&str]); 5] = [
        ("--top-k", a.top_k.is_some(), &["classify", "fill-mask"]),
        ("--horizon", a.horizon.is_some(), &["forecast"]),
        ("--positive", !a.positive.is_empty(), &["vectors"]),
        ("--negative", !a.negative.is_empty(), &["vectors"]),
        ("--per-line", a.per_line, &["lm"]),
    ];
    for (flag, set, applies) in given {
        if set && !applies.contains(&kind) {
            bail!(
                "{flag} applies to {} models; this is a {kind} model",
                applies.join(" and ")
            );
        }
    }
    Ok(())
}

/// The input of one `seqlab predict` call and how to print the answers.
struct Job<'a> {
    args: &'a PredictArgs,
    /// The input's name in messages (a file, `<stdin>`).
    name: &'a str,
    text: &'a str,
    jsonl: bool,
}

/// `seqlab predict`.
pub fn predict(a: PredictArgs) -> Result<()> {
    let path = a
        .checkpoint
        .as_deref()
        .or(a.vectors.as_deref())
        .expect("clap requires one");
    let loaded = match &a.vectors {
        Some(v) => Loaded::Similar(models::Similar::load(v).with_context(|| format!("--vectors {}", v.display()))?),
        None => models::load_on(path, &a.device.open()?)?,
    };
    let kind = match &loaded {
        Loaded::Translate(_) => "translation",
        Loaded::Lm(_) => "lm",
        Loaded::Classify(_) => "classify",
        Loaded::FillMask(_) => "fill-mask",
        Loaded::Forecast(_) => "forecast",
        Loaded::Similar(_) => "vectors",
    };
    check_flags(&a, kind)?;
    let flag_query = !a.positive.is_empty() || !a.negative.is_empty();
    let (name, text) = if flag_query {
        ("--positive/--negative".to_string(), String::new())
    } else {
        read_input(a.input.as_deref())?
    };
    let job = Job {
        args: &a,
        name: &name,
        text: &text,
        jsonl: a.format == OutputFormat::Jsonl,
    };
    let out = match loaded {
        Loaded::Translate(m) => translate(&m, &job)?,
        Loaded::Lm(m) => score(&m, &job)?,
        Loaded::Classify(m) => classify(&m, &job)?,
        Loaded::FillMask(m) => fill_mask(&m, &job)?,
        Loaded::Forecast(m) => forecast(&m, &job)?,
        Loaded::Similar(m) => similar(&m, &job, flag_query)?,
    };
    let mut body = out.join("\n");
    body.push('\n');
    std::io::stdout().lock().write_all(body.as_bytes())?;
    Ok(())
}

/// Translation: with text output, one line per input line as `seqlab translate` prints it
/// (blank lines stay blank).
fn translate(m: &models::Translator, job: &Job) -> Result<Vec<String>> {
    let lines = input_lines(job.name, job.text)?;
    let reqs = lines
        .iter()
        .map(|&(i, l)| {
            let r = TranslateRequest {
                model: None,
                text: l.to_string(),
                attention: false,
            };
            (i, r)
        })
        .collect();
    let answers = run_batched(m, reqs, job.args.batch_size, job.name)?;
    if job.jsonl {
        let rows = lines.iter().zip(&answers);
        return rows
            .map(|((line, l), (_, t))| json_line(json!({"line": line, "text": l}), t))
            .collect();
    }
    let mut by_line = vec![String::new(); job.text.lines().count()];
    for (line, t) in answers {
        by_line[line - 1] = t.translation;
    }
    Ok(by_line)
}

/// Language model: the whole input as one text, or each line (`--per-line`).
fn score(m: &models::LanguageModel, job: &Job) -> Result<Vec<String>> {
    let texts: Vec<(String, &str)> = match job.args.per_line {
        true => input_lines(job.name, job.text)?
            .into_iter()
            .map(|(i, l)| (format!("{}:{i}", job.name), l))
            .collect(),
        false => vec![(job.name.to_string(), job.text)],
    };
    let mut out = Vec::new();
    for (at, t) in texts {
        let s = m.score(t).map_err(|e| anyhow!("{at}: {e:#}"))?;
        out.push(match job.jsonl {
            true => json_line(json!({"input": at}), &s)?,
            false => score_text(&at, &s),
        });
    }
    Ok(out)
}

/// Classifiers: `label<TAB>label p  label p ...` per line.
fn classify(m: &models::Classifier, job: &Job) -> Result<Vec<String>> {
    let lines = input_lines(job.name, job.text)?;
    let reqs = lines
        .iter()
        .map(|&(i, l)| {
            let r = ClassifyRequest {
                model: None,
                text: l.to_string(),
                top_k: job.args.top_k,
            };
            (i, r)
        })
        .collect();
    let answers = run_batched(m, reqs, job.args.batch_size, job.name)?;
    let mut out = Vec::new();
    for ((line, l), (_, c)) in lines.iter().zip(answers) {
        out.push(match job.jsonl {
            true => json_line(json!({"line": line, "text": l}), &c)?,
            false => {
                let p: Vec<String> = c
                    .probabilities
                    .iter()
                    .map(|p| format!("{} {:.4}", p.label, p.probability))
                    .collect();
                format!("{}\t{}", c.label, p.join("  "))
            }
        });
    }
    Ok(out)
}

/// Fill-mask models: per line, the candidates of each `[MASK]` (`piece p  piece p ...`),
/// masks separated by a tab.
fn fill_mask(m: &models::MaskFiller, job: &Job) -> Result<Vec<String>> {
    let lines = input_lines(job.name, job.text)?;
    let top_k = job.args.top_k.unwrap_or(5);
    let reqs = lines
        .iter()
        .map(|&(i, l)| {
            let r = FillMaskRequest {
                model: None,
                text: l.to_string(),
                top_k,
            };
            (i, r)
        })
        .collect();
    let answers = run_batched(m, reqs, job.args.batch_size, job.name)?;
    let mut out = Vec::new();
    for ((line, l), (_, f)) in lines.iter().zip(answers) {
        out.push(match job.jsonl {
            true => json_line(json!({"line": line, "text": l}), &f)?,
            false => f
                .masks
                .iter()
                .map(|c| {
                    c.iter()
                        .map(|t| format!("{} {:.4}", t.token, t.probability))
                        .collect::<Vec<_>>()
                        .join("  ")
                })
                .collect::<Vec<_>>()
                .join("\t"),
        });
    }
    Ok(out)
}

/// Forecasters: one series per line; the forecast and both baselines.
fn forecast(m: &models::Forecaster, job: &Job) -> Result<Vec<String>> {
    let mut reqs = Vec::new();
    for (i, l) in input_lines(job.name, job.text)? {
        let r = ForecastRequest {
            model: None,
            series: parse_series(job.name, i, l)?,
            horizon: job.args.horizon,
        };
        reqs.push((i, r));
    }
    let season = m.info()["season"].as_u64().unwrap_or(1);
    let row = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    for (line, f) in run_batched(m, reqs, job.args.batch_size, job.name)? {
        out.push(match job.jsonl {
            true => json_line(json!({"line": line}), &f)?,
            false => format!(
                "{}:{line}\n  forecast        {}\n  last value      {}\n  seasonal naive  {}  (season {season})",
                job.name,
                row(&f.forecast),
                row(&f.last_value),
                row(&f.seasonal_naive)
            ),
        });
    }
    Ok(out)
}

/// Word vectors: `word<TAB>similarity` lines per query, a blank line between queries.
fn similar(m: &models::Similar, job: &Job, flag_query: bool) -> Result<Vec<String>> {
    let a = job.args;
    let queries: Vec<(usize, (Vec<String>, Vec<String>))> = match flag_query {
        true => vec![(1, (a.positive.clone(), a.negative.clone()))],
        false => input_lines(job.name, job.text)?
            .into_iter()
            .map(|(i, l)| (i, parse_query(l)))
            .collect(),
    };
    let reqs = queries
        .iter()
        .map(|(i, (pos, neg))| {
            let r = SimilarRequest {
                model: None,
                word: None,
                positive: pos.clone(),
                negative: neg.clone(),
                n: a.topn,
            };
            (*i, r)
        })
        .collect();
    let answers = run_batched(m, reqs, a.batch_size, job.name)?;
    let mut out = Vec::new();
    for ((line, (pos, neg)), (_, s)) in queries.iter().zip(answers) {
        out.push(match job.jsonl {
            true => json_line(json!({"line": line, "positive": pos, "negative": neg}), &s)?,
            false => {
                let rows: Vec<String> = s
                    .similar
                    .iter()
                    .map(|n| format!("{}\t{:.4}", n.word, n.similarity))
                    .collect();
                rows.join("\n")
            }
        });
    }
    Ok(match job.jsonl {
        true => out,
        false => vec![out.join("\n\n")],
    })
}

/// An LM score as one line, in `seqlab eval`'s words.
fn score_text(at: &str, s: &ScoreResponse) -> String {
    let bits = match s.bits_per_char {
        Some(b) => format!("{b:.3} bits/char"),
        None => format!("{:.3} bits/token", s.bits_per_token),
    };
    format!(
        "{at}: {} tokens  loss {:.4} nats/token  perplexity {:.2}  {bits}  {} out of vocabulary ({:.1} %)",
        s.tokens,
        s.loss,
        s.perplexity,
        s.oov_tokens,
        100.0 * s.oov_rate
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_queries_parse_and_bad_numbers_name_line_and_column() {
        assert_eq!(
            parse_series("f", 1, "1, 2.5 3,,-4e1").unwrap(),
            vec![1.0, 2.5, 3.0, -40.0]
        );
        let e = parse_series("f", 7, "1 2 x3 4").unwrap_err().to_string();
        assert_eq!(e, "f:7: column 3: \"x3\" is not a number");
        let e = parse_series("f", 2, "1,NaN").unwrap_err().to_string();
        assert!(e.contains("f:2: column 2") && e.contains("finite"), "{e}");
        assert_eq!(
            parse_query("king woman -man - x"),
            (
                vec!["king".into(), "woman".into(), "-".into(), "x".into()],
                vec!["man".into()]
            )
        );
        assert!(input_lines("f", " \n\t\n")
            .unwrap_err()
            .to_string()
            .contains("empty input"));
        assert_eq!(input_lines("f", "\na\n\n b \n").unwrap(), vec![(2, "a"), (4, "b")]);
    }
}
