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
