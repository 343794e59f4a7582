//! Helpers shared by the end-to-end tests of the `seqlab` binary.
#![allow(dead_code)] // each test file uses its own subset

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn seqlab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seqlab"));
    // One thread: the same seed must give the same numbers.
    c.env("RAYON_NUM_THREADS", "1");
    c
}

pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seqlab-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "failed: {}\n{out}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

pub fn failed(o: Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `n` lines `words<TAB>WORDS REVERSED`: a tiny translation task (reverse and upper-case 2-4
/// words from a 6-word vocabulary) that a small model learns in seconds.
pub fn reversal_pairs(n: usize) -> String {
    let words = ["red", "green", "blue", "cat", "dog", "sun"];
    let mut tsv = String::new();
    for i in 0..n {
        let w: Vec<&str> = (0..2 + i % 3).map(|k| words[(i * 7 + k * 5) % 6]).collect();
        let r: Vec<String> = w.iter().rev().map(|s| s.to_uppercase()).collect();
        tsv.push_str(&format!("{}\t{}\n", w.join(" "), r.join(" ")));
    }
    tsv
}

/// Runs `cmd` with `input` on its standard input.
pub fn with_stdin(mut cmd: Command, input: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before reading its input (the tests of bad arguments) may exit
    // while the input is written: that broken pipe is the command's answer, not the test's
    // failure (seen once in a full run under load, 2026-12-01).
    if let Err(e) = child.stdin.take().unwrap().write_all(input.as_bytes()) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing the standard input: {e}"
        );
    }
    child.wait_with_output().unwrap()
}

/// Starts `seqlab serve --port 0 ARGS`; returns the child (stderr piped, being read) and the
/// port it printed.
pub fn start_serve(args: &[String]) -> (std::process::Child, std::io::BufReader<std::process::ChildStderr>, u16) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = seqlab()
        .args(["serve", "--port", "0"])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let t0 = std::time::Instant::now();
    let port = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "seqlab serve exited before listening"
        );
        if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
            break rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(60));
    };
    (child, err, port)
}

/// One POST on its own connection → (status line, body).
pub fn post(port: u16, path: &str, body: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// Tiny BERT data: (a corpus of 60 paragraphs, each 4 five-word sentences over a 12-word
/// vocabulary; a `text<TAB>label` file of each paragraph's first sentence, labelled `a` when
/// it mentions "cat", else `b`).
pub fn bert_corpus() -> (String, String) {
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "park", "bird", "sang",
    ];
    let (mut corpus, mut tsv) = (String::new(), String::new());
    for p in 0..60usize {
        let sents: Vec<String> = (0..4)
            .map(|s| {
                let w: Vec<&str> = (0..5).map(|k| words[(p * 7 + s * 5 + k * 3) % 12]).collect();
                format!("{} .", w.join(" "))
            })
            .collect();
        corpus.push_str(&sents.join(" "));
        corpus.push('\n');
        let label = if sents[0].contains("cat") { "a" } else { "b" };
        tsv.push_str(&format!("{}\t{label}\n", sents[0]));
    }
    (corpus, tsv)
}

/// Writes the tiny translation corpus into `dir`: `train.tsv` (300 [`reversal_pairs`]) and
/// `valid.tsv` (its first 12 lines).
pub fn write_reversal_corpus(dir: &std::path::Path) {
    let tsv = reversal_pairs(300);
    std::fs::write(dir.join("train.tsv"), &tsv).unwrap();
    let valid: String = tsv.lines().take(12).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("valid.tsv"), &valid).unwrap();
}

/// (step, training loss) of every `train` line of a run's `metrics.jsonl`.
pub fn train_losses(run: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}
