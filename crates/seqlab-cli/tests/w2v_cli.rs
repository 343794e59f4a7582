//! End-to-end tests of `seqlab w2v …`, `seqlab bleu` and `seqlab chrf`: the whole word2vec
//! pipeline, the issue-13 faults (panics, misread files, lost input or output, late errors)
//! and per-command help.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn seqlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seqlab")).args(args).output().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seqlab-w2v-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// stdout of a successful run.
fn ok(args: &[&str]) -> String {
    let o = seqlab(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of a run that must fail with a user error (exit 1, or 2 for clap), never a panic.
fn fails(args: &[&str]) -> String {
    let o = seqlab(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        matches!(o.status.code(), Some(1) | Some(2)),
        "{args:?}: expected a clear error, got {}\n{err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Groups i of words `a{i}` / `b{i}` with group words `t{i}_k` and kind words `ua_k` / `ub_k`:
/// a_i − b_i is the same offset for every group (as the library's trainer test).
fn planted_corpus(lines: usize) -> String {
    let mut x = 7u64;
    let mut r = |n: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    let mut out = String::new();
    for _ in 0..lines {
        let i = r(6);
        let kind = if r(2) == 0 { "a" } else { "b" };
        let words = [
            format!("{kind}{i}"),
            format!("t{i}_{}", r(4)),
            format!("u{kind}_{}", r(4)),
            format!("t{i}_{}", r(4)),
            format!("u{kind}_{}", r(4)),
        ];
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

#[test]
fn w2v_pipeline_prepare_train_query_evaluate() {
    let d = scratch("pipeline");
    let raw = d.join("raw.txt");
    std::fs::write(&raw, planted_corpus(3000).replace("a0", "A0,")).unwrap();
    let prepared = d.join("prepared.txt");
    ok(&[
        "w2v",
        "prepare",
        "--input",
        s(&raw),
        "--output",
        s(&prepared),
        "--lowercase",
        "--strip-punct",
    ]);
    assert!(std::fs::read_to_string(&prepared).unwrap().contains("a0 "));
    let vec = d.join("v.bin");
    #[rustfmt::skip]
    ok(&["w2v", "train", "--input", s(&prepared), "--output", s(&vec), "--format", "binary", "--dim", "16",
         "--min-count", "1", "--sample", "0", "--epochs", "10", "--threads", "1", "--quiet"]);
    let sim = ok(&["w2v", "similar", s(&vec), "a0", "-n", "3"]);
    assert_eq!(sim.lines().count(), 3, "{sim}");
    let ana = ok(&["w2v", "analogy", s(&vec), "a1", "b1", "a2", "-n", "1"]);
    assert!(ana.lines().nth(2).unwrap().starts_with("b2 "), "{ana}");
    let q = d.join("q.txt");
    std::fs::write(&q, ": planted\na1 b1 a2 b2\na3 b3 a4 b4\na0 b0 nope b5\n").unwrap();
    let r: serde_json::Value = serde_json::from_str(&ok(&["w2v", "eval-analogy", s(&vec), s(&q), "--json"])).unwrap();
    assert_eq!(
        (r["overall"]["correct"].as_u64(), r["oov_questions"].as_u64()),
        (Some(2), Some(1))
    );
    let p = d.join("pairs.txt");
    std::fs::write(&p, "a1 b1 9\na1 a2 7\nb1 b3 1\na4 b4 0.5\n").unwrap();
    let out = ok(&["w2v", "eval-similarity", s(&vec), s(&p)]);
    assert!(out.starts_with("spearman "), "{out}");
    // The same vectors as text and safetensors answer the same.
    for (f, name) in [("text", "v.txt"), ("safetensors", "v.safetensors")] {
        let o = d.join(name);
        #[rustfmt::skip]
        ok(&["w2v", "train", "--input", s(&prepared), "--output", s(&o), "--format", f, "--dim", "16",
             "--min-count", "1", "--sample", "0", "--epochs", "10", "--threads", "1", "--quiet"]);
        assert_eq!(ok(&["w2v", "similar", s(&o), "a0", "-n", "3"]), sim, "{f}");
    }
    let _ = std::fs::remove_dir_all(d);
}

/// Issue 13: `similar … -n 0` panicked; every count argument is checked.
#[test]
fn zero_counts_are_refused_not_panics() {
    let d = scratch("zero");
    let v = d.join("v.txt");
    std::fs::write(&v, "3 2\nthe 1 0\ncat 0 1\ndog 1 1\n").unwrap();
    for args in [
        vec!["w2v", "similar", s(&v), "the", "-n", "0"],
        vec!["w2v", "analogy", s(&v), "the", "cat", "dog", "-n", "0"],
        vec!["w2v", "eval-analogy", s(&v), s(&v), "--restrict-vocab", "0"],
        vec!["w2v", "eval-similarity", s(&v), s(&v), "--restrict-vocab", "0"],
        vec!["w2v", "train", "--input", s(&v), "--output", "x", "--max-vocab", "0"],
        vec!["w2v", "train", "--input", s(&v), "--output", "x", "--dim", "0"],
        vec!["w2v", "train", "--input", s(&v), "--output", "x", "--threads", "0"],
    ] {
        let e = fails(&args);
        assert!(e.contains("at least 1"), "{args:?}: {e}");
    }
    // More neighbours than words: all of them.
    assert_eq!(ok(&["w2v", "similar", s(&v), "the", "-n", "50"]).lines().count(), 2);
    let _ = std::fs::remove_dir_all(d);
}

/// Issue 13: a text file whose first row is zeros was read as binary; Latin-1 words merged.
#[test]
fn vector_files_are_read_as_what_they_are() {
    let d = scratch("formats");
    let v = d.join("pad.txt");
    std::fs::write(&v, "3 4\n<pad> 0 0 0 0\nking 1 0 0.1 0\nqueen 1 1 0.1 0\n").unwrap();
    assert!(ok(&["w2v", "similar", s(&v), "king", "-n", "1"]).starts_with("queen\t"));
    assert!(ok(&["w2v", "similar", s(&v), "king", "-n", "1", "--format", "text"]).starts_with("queen\t"));
    let e = fails(&["w2v", "similar", s(&v), "king", "--format", "binary"]);
    assert!(e.contains("pad.txt"), "{e}");
    let e = fails(&["w2v", "similar", s(&v), "king", "--format", "csv"]);
    assert!(e.contains("text, binary or safetensors"), "{e}");
    let b = d.join("latin1.bin");
    let mut bytes = b"2 1\n".to_vec();
    for w in [&b"caf\xe9"[..], b"caf\xe8"] {
        bytes.extend(w);
        bytes.push(b' ');
        bytes.extend(1f32.to_le_bytes());
        bytes.push(b'\n');
    }
    std::fs::write(&b, bytes).unwrap();
    let e = fails(&["w2v", "similar", s(&b), "caf"]);
    assert!(
        e.contains("latin1.bin") && e.contains("record 1") && e.contains("UTF-8"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// Issue 13: `--input c.txt --output c.txt` destroyed the corpus; a missing output folder was
/// found only after training; the same for `prepare`.
#[test]
fn outputs_are_checked_before_work_and_never_the_input() {
    let d = scratch("outputs");
    let c = d.join("c.txt");
    let corpus = planted_corpus(200);
    std::fs::write(&c, &corpus).unwrap();
    let same = d.join(".").join("c.txt");
    for cmd in ["train", "prepare"] {
        for out in [&c, &same] {
            let mut args = vec!["w2v", cmd, "--input", s(&c), "--output", s(out)];
            if cmd == "train" {
                args.extend(["--min-count", "1", "--quiet"]);
            }
            let e = fails(&args);
            assert!(e.contains("is the input file"), "{cmd}: {e}");
            assert_eq!(std::fs::read_to_string(&c).unwrap(), corpus, "{cmd} changed its input");
        }
        let missing = d.join("no-such-folder/out.txt");
        let e = fails(&["w2v", cmd, "--input", s(&c), "--output", s(&missing)]);
        assert!(e.contains("does not exist") && !e.contains("vocabulary"), "{cmd}: {e}");
        // safetensors writes NAME.vocab.txt too: the input under that name is refused.
        if cmd == "train" {
            let st = d.join("c.safetensors");
            let vocab = d.join("c.vocab.txt");
            std::fs::write(&vocab, &corpus).unwrap();
            #[rustfmt::skip]
            let e = fails(&["w2v", "train", "--input", s(&vocab), "--output", s(&st), "--format", "safetensors",
                            "--min-count", "1"]);
            assert!(e.contains("is the input file"), "{e}");
        }
    }
    let _ = std::fs::remove_dir_all(d);
}

/// A failed or killed `w2v train` leaves the previous vectors intact: the file is written under
/// a temporary name and renamed.
#[test]
fn killed_or_failed_training_keeps_the_previous_vectors() {
    let d = scratch("kill");
    let c = d.join("c.txt");
    std::fs::write(&c, planted_corpus(20_000)).unwrap();
    let out = d.join("v.txt");
    let old = "2 2\nold 1 2\nvectors 3 4\n";
    std::fs::write(&out, old).unwrap();
    // A run that fails (no word reaches min_count) leaves it.
    let e = fails(&[
        "w2v",
        "train",
        "--input",
        s(&c),
        "--output",
        s(&out),
        "--min-count",
        "1000000",
    ]);
    assert!(e.contains("min_count"), "{e}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), old);
    // Killed at different moments: before, during or after the save, the file is always
    // either the old vectors or complete new ones.
    #[rustfmt::skip]
    let args = ["w2v", "train", "--input", s(&c), "--output", s(&out), "--min-count", "1", "--dim", "200",
                "--epochs", "2", "--threads", "1", "--quiet"];
    let mut saw_new = false;
    for ms in [50u64, 150, 300, 600, 1000, 1500, 2500, 4000] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_seqlab"))
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        child.wait().unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        if text != old {
            let o = seqlab(&["w2v", "similar", s(&out), "a0", "-n", "2"]);
            assert!(o.status.success(), "killed after {ms} ms: a partial file");
            saw_new = true;
        }
    }
    // One complete run replaces them.
    ok(&args);
    assert!(ok(&["w2v", "similar", s(&out), "a0", "-n", "1"]).lines().count() == 1);
    eprintln!("a kill landed after the save: {saw_new}");
    let _ = std::fs::remove_dir_all(d);
}

/// Issue 11: every flag says what it does and its default; `bleu` and `chrf` list only their
/// own flags.
#[test]
fn help_lists_each_commands_own_flags_with_defaults() {
    let bleu = ok(&["bleu", "--help"]);
    let chrf = ok(&["chrf", "--help"]);
    for f in [
        "--tokenize",
        "--smooth-method",
        "--smooth-value",
        "--max-ngram-order",
        "--effective-order",
    ] {
        assert!(bleu.contains(f) && !chrf.contains(f), "{f}");
    }
    for f in [
        "--chrf-char-order",
        "--chrf-word-order",
        "--chrf-beta",
        "--chrf-whitespace",
    ] {
        assert!(chrf.contains(f) && !bleu.contains(f), "{f}");
    }
    for (h, shared) in [
        (&bleu, "--lowercase"),
        (&chrf, "--lowercase"),
        (&bleu, "--json"),
        (&chrf, "--width"),
    ] {
        assert!(h.contains(shared), "{shared}");
    }
    let collapse = |h: &str| h.split_whitespace().collect::<Vec<_>>().join(" ");
    let train = collapse(&ok(&["w2v", "train", "--help"]));
    for d in [
        "[default: 100]",
        "[default: skipgram]",
        "[default: all cores]",
        "[default: 0.025 skipgram, 0.05 cbow]",
        "[default: no limit]",
        "[default: 0.001]",
        "[default: text]",
    ] {
        assert!(train.contains(d), "w2v train --help lacks {d}:\n{train}");
    }
    // Every option of every w2v command (but the required files, --help and --version) says
    // its default.
    for cmd in [
        "train",
        "prepare",
        "similar",
        "analogy",
        "eval-analogy",
        "eval-similarity",
    ] {
        let h = ok(&["w2v", cmd, "--help"]);
        let options = h.split("Options:").nth(1).unwrap();
        let mut blocks: Vec<String> = Vec::new();
        for line in options.lines() {
            let indent = line.len() - line.trim_start().len();
            if line.trim_start().starts_with('-') && indent <= 6 {
                blocks.push(String::new());
            }
            if let Some(b) = blocks.last_mut() {
                b.push(' ');
                b.push_str(line.trim());
            }
        }
        assert!(blocks.len() >= 3, "w2v {cmd}: no options found in\n{h}");
        for block in blocks {
            let required = ["--input", "--output", "--help", "--version"]
                .iter()
                .any(|o| block.contains(&format!("{o} ")));
            assert!(
                required || block.contains("[default:"),
                "w2v {cmd}: an option without its default: {block}"
            );
        }
    }
}

#[test]
fn bleu_and_chrf_score_files() {
    let d = scratch("score");
    let (h, r) = (d.join("hyp.txt"), d.join("ref.txt"));
    std::fs::write(&h, "the cat sat on the mat\n").unwrap();
    std::fs::write(&r, "the cat sat on the mat\n").unwrap();
    assert!(ok(&["bleu", s(&h), s(&r)]).starts_with("BLEU = 100.00"));
    assert!(ok(&["chrf", s(&h), s(&r)]).starts_with("chrF2 = 100.00"));
    std::fs::write(&r, "a\nb\n").unwrap();
    let e = fails(&["chrf", s(&h), s(&r)]);
    assert!(e.contains("hyp.txt") && e.contains("ref.txt"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}
