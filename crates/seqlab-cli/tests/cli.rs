//! End-to-end tests of the `seqlab` binary on tiny data: train, resume after SIGKILL,
//! evaluate, generate, plot, and clear errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn seqlab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seqlab"));
    // One thread: the same seed must give the same numbers.
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seqlab-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "failed: {}\n{out}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A tiny char-LM config over the first 20 KB of the bundled sample.
fn lm_config(dir: &Path, steps: u64) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("data/sample/shakespeare.train.txt")).unwrap();
    let cut: String = text.chars().take(20_000).collect();
    std::fs::write(dir.join("train.txt"), &cut[..15_000]).unwrap();
    std::fs::write(dir.join("valid.txt"), &cut[15_000..]).unwrap();
    let cfg = format!(
        r#"task = "lm"
run_dir = "{d}/run"
[data]
train = "{d}/train.txt"
valid = "{d}/valid.txt"
test = "{d}/valid.txt"
batch_size = 4
bptt = 16
max_eval_batches = 2
[model]
kind = "lstm"
embed_dim = 16
hidden_size = 32
num_layers = 2
dropout = 0.1
[optim]
lr = 0.01
[train]
max_steps = {steps}
eval_every = 5
log_every = 1
progress = false
"#,
        d = dir.display()
    );
    let p = dir.join("lm.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn train_losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn lm_pipeline_train_eval_generate_plot() {
    let d = scratch("lm");
    let cfg = lm_config(&d, 10);
    let out = ok(seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap());
    assert!(out.contains("trained 10 steps") && out.contains("perplexity"), "{out}");
    let run = d.join("run");
    assert!(run.join("loss.png").exists() && run.join("checkpoints/best/model.safetensors").exists());
    // Without --resume an existing run is refused, never overwritten.
    let again = seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let ev = ok(seqlab()
        .args(["eval", "--json", "--checkpoint"])
        .arg(&run)
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&ev).unwrap();
    assert!(v["ppl"].as_f64().unwrap() > 1.0 && v["bpc"].as_f64().is_some());
    let gen = |seed: &str| {
        ok(seqlab()
            .args([
                "generate",
                "--prompt",
                "KING",
                "--max-tokens",
                "40",
                "--seed",
                seed,
                "--checkpoint",
            ])
            .arg(&run)
            .output()
            .unwrap())
    };
    let g = gen("3");
    assert!(g.starts_with("KING"));
    assert_eq!(g, gen("3"), "same seed, same sample");
    ok(seqlab()
        .args(["plot", "-o"])
        .arg(d.join("p.svg"))
        .arg(&run)
        .output()
        .unwrap());
    assert!(d.join("p.svg").exists());
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn killed_and_resumed_run_equals_uninterrupted_run() {
    let d = scratch("kill");
    let steps = 60;
    let cfg = lm_config(&d, steps);
    // Uninterrupted reference.
    ok(seqlab()
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--run-dir"])
        .arg(d.join("ref"))
        .output()
        .unwrap());
    let reference = train_losses(&d.join("ref"));
    assert_eq!(reference.len(), steps as usize);
    // Killed (SIGKILL) as soon as its first checkpoint exists, then resumed.
    let run = d.join("run");
    let mut child = seqlab()
        .args(["train", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !run.join("checkpoints/latest").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    ok(seqlab()
        .args(["train", "--resume", "--config"])
        .arg(&cfg)
        .output()
        .unwrap());
    let resumed = train_losses(&run);
    assert_eq!(resumed, reference, "resumed losses differ from the uninterrupted run");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn bad_input_gives_clear_errors() {
    let d = scratch("bad");
    let err = |args: &[&str]| {
        let o = seqlab().args(args).output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let missing = d.join("nope.toml");
    assert!(err(&["train", "--config", missing.to_str().unwrap()]).contains("nope.toml"));
    let cfg = lm_config(&d, 3);
    let e = err(&["train", "--config", cfg.to_str().unwrap(), "--set", "model.hiden=3"]);
    assert!(e.contains("hiden"), "{e}");
    std::fs::write(d.join("train.txt"), b"ok\n\xff\xfe bad\n").unwrap();
    let e = err(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(e.contains("train.txt") && e.contains("UTF-8"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

/// Translation end to end: `train` on a `task = "mt"` config, `translate` from a file (with
/// BLEU and an attention picture) and from stdin, and the positional-encoding picture.
#[test]
fn mt_train_translate_attention() {
    let d = scratch("mt");
    let words = ["red", "green", "blue", "cat", "dog", "sun"];
    let mut tsv = String::new();
    for i in 0..300usize {
        let w: Vec<&str> = (0..2 + i % 3).map(|k| words[(i * 7 + k * 5) % 6]).collect();
        let r: Vec<String> = w.iter().rev().map(|s| s.to_uppercase()).collect();
        tsv.push_str(&format!("{}\t{}\n", w.join(" "), r.join(" ")));
    }
    std::fs::write(d.join("train.tsv"), &tsv).unwrap();
    let valid: String = tsv.lines().take(12).map(|l| format!("{l}\n")).collect();
    std::fs::write(d.join("valid.tsv"), &valid).unwrap();
    let cfg = d.join("mt.toml");
    std::fs::write(
        &cfg,
        format!(
            "task = \"mt\"\nrun_dir = {:?}\n[data]\ntrain = {:?}\nvalid = {:?}\ntest = {:?}\nvocab_size = 60\nbatch_tokens = 256\n\
             [model]\nd_model = 32\nnhead = 2\nnum_encoder_layers = 1\nnum_decoder_layers = 1\ndim_feedforward = 64\ndropout = 0.0\n\
             [schedule]\nkind = \"constant\"\nlr = 0.003\n[train]\nmax_steps = 20\neval_every = 10\nlog_every = 5\n",
            d.join("run").display().to_string(),
            d.join("train.tsv").display().to_string(),
            d.join("valid.tsv").display().to_string(),
            d.join("valid.tsv").display().to_string(),
        ),
    )
    .unwrap();
    let out = ok(seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap());
    assert!(out.contains("BLEU = ") && out.contains("chrF2 = "), "{out}");
    assert!(d.join("run/test_translations.txt").exists());
    let run = d.join("run");
    let pic = d.join("attn.svg");
    let o = seqlab()
        .args(["translate", "--tsv", "--attention-heads", "--checkpoint"])
        .arg(&run)
        .arg("--input")
        .arg(d.join("valid.tsv"))
        .arg("--attention")
        .arg(&pic)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let text = ok(o);
    assert_eq!(text.lines().count(), 12, "{text}");
    assert!(stderr.contains("sentences/s") && stderr.contains("BLEU = "), "{stderr}");
    assert!(std::fs::metadata(&pic).unwrap().len() > 1000);
    let mut child = seqlab()
        .args(["translate", "--decoder", "greedy", "--checkpoint"])
        .arg(&run)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"red cat\n\nsun dog blue\n")
        .unwrap();
    let lines = ok(child.wait_with_output().unwrap());
    assert_eq!(lines.lines().count(), 3, "{lines}");
    assert_eq!(lines.lines().nth(1), Some(""), "an empty line stays empty");
    ok(seqlab()
        .args([
            "plot",
            "positional-encoding",
            "--d-model",
            "32",
            "--max-len",
            "20",
            "-o",
        ])
        .arg(d.join("pe.png"))
        .output()
        .unwrap());
    // A line without a tab names its file and line.
    std::fs::write(d.join("bad.tsv"), "a\tb\nno tab\n").unwrap();
    let o = seqlab()
        .args(["translate", "--tsv", "--checkpoint"])
        .arg(&run)
        .arg("--input")
        .arg(d.join("bad.tsv"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("bad.tsv:2"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}
