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
