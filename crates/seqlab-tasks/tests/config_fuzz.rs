//! Fuzz test of the run-config loader (issue 13 §5): every preset in `configs/*.toml` is a
//! seed, mutated thousands of times (lines deleted or duplicated, values of the wrong type,
//! huge / negative / zero numbers, random bytes, truncation) and loaded in-process through
//! [`seqlab_train::Registry::check_file`], the path of `seqlab train --check`. No input may
//! panic; each gives `Ok` or a non-empty error, and an unknown key is named in the error.
//!
//! The registry here holds the tasks of this crate (lm, classify, forecast); presets of the
//! other tasks (mt, bert) are still loaded and must fail cleanly with "unknown task".

use proptest::prelude::*;
use seqlab_train::Registry;
use std::path::PathBuf;
use std::sync::OnceLock;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let mut r = Registry::new();
        seqlab_tasks::register(&mut r);
        r
    })
}

/// The presets, as (file name, text).
fn seeds() -> &'static Vec<(String, String)> {
    static S: OnceLock<Vec<(String, String)>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        assert!(v.len() >= 5, "presets not found in {}", dir.display());
        v
    })
}

/// The presets of the registered tasks (those that check without error).
fn known() -> &'static Vec<(String, String)> {
    static K: OnceLock<Vec<(String, String)>> = OnceLock::new();
    K.get_or_init(|| {
        seeds()
            .iter()
            .filter(|(_, t)| check(t.as_bytes()).is_ok())
            .cloned()
            .collect()
    })
}

/// A scratch file per test thread, rewritten by each case.
fn file(bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seqlab-config-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{:?}.toml", std::thread::current().id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Loads `bytes` as a config file: never panics; an error has a message.
fn check(bytes: &[u8]) -> Result<&'static str, String> {
    let p = file(bytes);
    let r = std::panic::catch_unwind(|| registry().check_file(&p, &[], None));
    match r {
        Err(_) => panic!("panic loading:\n{}", String::from_utf8_lossy(bytes)),
        Ok(Ok(name)) => Ok(name),
        Ok(Err(e)) => {
            let msg = format!("{e:#}");
            assert!(
                !msg.trim().is_empty(),
                "empty error for:\n{}",
                String::from_utf8_lossy(bytes)
            );
            Err(msg)
        }
    }
}

const VALUES: &[&str] = &[
    "\"text\"",
    "\"\"",
    "0",
    "-1",
    "-9223372036854775808",
    "9223372036854775807",
    "99999999999999999999999",
    "1e308",
    "-1e308",
    "0.0",
    "-0.5",
    "nan",
    "inf",
    "-inf",
    "true",
    "false",
    "[]",
    "[1, \"a\"]",
    "{ a = 1 }",
    "1979-05-27",
    "\"lstm\"",
    "\"mamba\"",
    "'''\nmulti\n'''",
];

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SetValue(usize, usize),
    InsertBytes(usize, Vec<u8>),
    Truncate(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), 0..VALUES.len()).prop_map(|(l, v)| Mutation::SetValue(l, v)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::InsertBytes(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    let mut tail: Option<usize> = None;
    for m in muts {
        let n = lines.len().max(1);
        match m {
            Mutation::DeleteLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Mutation::DuplicateLine(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::SetValue(i, v) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                if let Some(eq) = l.iter().position(|&b| b == b'=') {
                    l.truncate(eq + 1);
                    l.extend_from_slice(b" ");
                    l.extend_from_slice(VALUES[*v].as_bytes());
                }
            }
            Mutation::InsertBytes(i, b) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                let at = i % (l.len() + 1);
                l.splice(at..at, b.iter().copied());
            }
            Mutation::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            Mutation::Truncate(i) => tail = Some(*i),
            _ => {}
        }
    }
    let mut out = lines.join(&b'\n');
    if let Some(i) = tail {
        out.truncate(i % (out.len() + 1));
    }
    out
}

#[test]
fn presets_of_registered_tasks_check_and_others_fail_cleanly() {
    for (name, text) in seeds() {
        match check(text.as_bytes()) {
            Ok(_) => {}
            Err(e) => assert!(e.contains("unknown task"), "{name}: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutated presets: Ok or a non-empty error, never a panic.
    #[test]
    fn mutated_presets_never_panic(seed in any::<usize>(), muts in prop::collection::vec(mutation(), 1..5)) {
        let (_, text) = &seeds()[seed % seeds().len()];
        let _ = check(&apply(text, &muts));
    }

    /// Arbitrary bytes and TOML-ish fragments.
    #[test]
    fn random_files_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = check(&bytes);
    }

    /// An unknown key in any section of a preset of a registered task is named in the error.
    #[test]
    fn unknown_keys_are_named(seed in any::<usize>(), line in any::<usize>()) {
        let known = known();
        let (name, text) = &known[seed % known.len()];
        let mut lines: Vec<&str> = text.lines().collect();
        // After a table header (or at the top), so the key lands in that table.
        let headers: Vec<usize> = std::iter::once(0)
            .chain(lines.iter().enumerate().filter(|(_, l)| l.trim_start().starts_with('[')).map(|(i, _)| i + 1))
            .collect();
        let at = headers[line % headers.len()];
        lines.insert(at, "zz_bogus_key = 1");
        let bad = lines.join("\n");
        match check(bad.as_bytes()) {
            Ok(_) => prop_assert!(false, "{name}: unknown key accepted:\n{bad}"),
            Err(e) => prop_assert!(e.contains("zz_bogus_key"), "{name}: {e}\n{bad}"),
        }
    }
}
