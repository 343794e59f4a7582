//! Faults of issue 13, end to end through the `seqlab` binary: one folder per run, Ctrl-C,
//! kills at random moments, exact metrics after resume, odd values in plots, over-long
//! translation inputs, errors without backtraces. docs/RELIABILITY.md lists which test proves
//! which guarantee.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Runs `cmd` to its end, failing the test if it takes longer than `secs` (a hang).
fn run_within(mut cmd: Command, secs: u64) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the pid of a child this test started.
            unsafe { libc_kill(id as i32, 9) };
            panic!("did not finish within {secs} s");
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc_kill(child.id() as i32, sig) }, 0);
}

fn wait_for(p: &Path, secs: u64) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{} did not appear",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A tiny char-LM config over the first 20 KB of the bundled sample.
fn lm_config(dir: &Path, steps: u64, eval_every: u64) -> PathBuf {
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
eval_every = {eval_every}
log_every = 1
progress = false
"#,
        d = dir.display()
    );
    let p = dir.join("lm.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// Two processes on one run folder: the second is refused at once, naming the folder and
/// the first one's pid; the first one's files are untouched.
#[test]
fn a_run_folder_has_one_writer() {
    let d = scratch("lock");
    let cfg = lm_config(&d, 1_000_000, 1_000_000);
    let run = d.join("run");
    let mut first = seqlab()
        .args(["train", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&run.join("config.toml"), 60);
    let config_before = std::fs::read(run.join("config.toml")).unwrap();
    let e = failed(run_within(
        {
            let mut c = seqlab();
            c.args(["train", "--config"]).arg(&cfg).args(["--set", "train.seed=7"]);
            c
        },
        60,
    ));
    assert!(
        e.contains(&run.display().to_string()) && e.contains(&format!("process {}", first.id())),
        "{e}"
    );
    assert_eq!(std::fs::read(run.join("config.toml")).unwrap(), config_before);
    first.kill().unwrap();
    first.wait().unwrap();
    // The kernel dropped the lock with the process: the folder is usable again (here as a
    // fresh run, since the killed one never reached a checkpoint).
    ok(run_within(
        {
            let mut c = seqlab();
            c.args(["train", "--config"]).arg(&cfg).args(["--max-steps", "2"]);
            c
        },
        120,
    ));
    let _ = std::fs::remove_dir_all(d);
}

/// `--resume` where there is nothing to resume is an error that creates nothing; a fresh run
/// over the log of a run that never reached a checkpoint moves that log aside and says so.
#[test]
fn resume_needs_a_checkpoint_and_stale_logs_are_set_aside() {
    let d = scratch("resume-none");
    let cfg = lm_config(&d, 4, 2);
    let run = d.join("run");
    let e = failed(
        seqlab()
            .args(["train", "--resume", "--config"])
            .arg(&cfg)
            .output()
            .unwrap(),
    );
    assert!(e.contains("does not exist") && e.contains("--resume"), "{e}");
    assert!(!run.exists(), "a failed --resume created the run folder");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\":1,\"split\":\"train\",\"loss\":9.0}\n",
    )
    .unwrap();
    let e = failed(
        seqlab()
            .args(["train", "--resume", "--config"])
            .arg(&cfg)
            .output()
            .unwrap(),
    );
    assert!(e.contains("no checkpoint"), "{e}");
    let o = seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o);
    assert!(stderr.contains("metrics.jsonl.stale-1"), "{stderr}");
    let stale = std::fs::read_to_string(run.join("metrics.jsonl.stale-1")).unwrap();
    assert!(stale.contains("9.0"));
    let fresh = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        !fresh.contains("\"loss\":9.0") && fresh.lines().next().unwrap().contains("\"step\":1"),
        "{fresh}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// The issue's example: a logged 5e-324 made `seqlab plot` run forever. With it and other
/// edge values (0, negatives, NaN logged as null, a torn last line) it draws a picture.
#[test]
fn plot_draws_edge_values_in_bounded_time() {
    let d = scratch("plot");
    let m = d.join("metrics.jsonl");
    std::fs::write(
        &m,
        "{\"step\":1,\"split\":\"train\",\"loss\":3.6}\n{\"step\":2,\"split\":\"train\",\"loss\":5e-324}\n\
         {\"step\":3,\"split\":\"valid\",\"loss\":0}\n{\"step\":4,\"split\":\"valid\",\"loss\":-2.5}\n\
         {\"step\":5,\"split\":\"train\",\"loss\":null}\n",
    )
    .unwrap();
    for out in ["p.png", "p.svg"] {
        let mut c = seqlab();
        c.arg("plot").arg(&m).arg("-o").arg(d.join(out));
        let o = run_within(c, 120);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        ok(o);
        assert!(stderr.contains("left out 1"), "{stderr}");
        assert!(std::fs::metadata(d.join(out)).unwrap().len() > 1000);
    }
    let _ = std::fs::remove_dir_all(d);
}

/// With RUST_BACKTRACE=1 a user error is one message, no backtrace (a damaged checkpoint,
/// whose error comes from candle, which captures one).
#[test]
fn user_errors_carry_no_backtrace() {
    let d = scratch("bt");
    let cfg = lm_config(&d, 2, 2);
    ok(seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap());
    let best = d.join("run/checkpoints/best");
    let wrong: std::collections::HashMap<String, candle_core::Tensor> = [(
        "x".to_string(),
        candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    )]
    .into();
    candle_core::safetensors::save(&wrong, best.join("model.safetensors")).unwrap();
    let e = failed(
        seqlab()
            .env("RUST_BACKTRACE", "1")
            .args(["eval", "--checkpoint"])
            .arg(&best)
            .output()
            .unwrap(),
    );
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(
        !e.contains("backtrace") && !e.contains("  0: ") && e.lines().count() <= 3,
        "{e}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// The lines of a metrics file without the fields that measure time (throughput, CPU
/// minutes), as raw text: the rest must match byte for byte.
fn metrics_without_timing(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            // The records are flat objects of numbers and plain strings: commas only separate.
            l.trim_matches(|c| c == '{' || c == '}')
                .split(',')
                .filter(|kv| !kv.starts_with("\"tokens_per_s\"") && !kv.starts_with("\"cpu_minutes\""))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// A small pseudo-random sequence (no dependency), seeded from the clock and printed, so a
/// failing run can be repeated with SEQLAB_KILL_SEED.
fn kill_delays(n: usize, max_ms: u64) -> Vec<u64> {
    let seed: u64 = std::env::var("SEQLAB_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill delays from SEQLAB_KILL_SEED={seed}");
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % max_ms
        })
        .collect()
}

/// Trains `cfg` into `run`, SIGKILLing it at random moments and continuing each time (with
/// `--resume` once a checkpoint exists, else afresh), then to the end; the metrics (minus
/// timing) and the final weights must equal those of `reference`, an uninterrupted run.
fn kill_at_random_moments_and_compare(alias: &[&str], cfg: &Path, run: &Path, reference: &Path, kills: usize) {
    let train = |resume: bool, dir: &Path| {
        let mut c = seqlab();
        c.args(alias).arg(cfg).arg("--run-dir").arg(dir);
        if resume {
            c.arg("--resume");
        }
        c
    };
    ok(run_within(train(false, reference), 300));
    for delay in kill_delays(kills, 4000) {
        let resume = run.join("checkpoints/latest").exists();
        let mut child = train(resume, run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300 + delay));
        let _ = child.kill();
        child.wait().unwrap();
    }
    let resume = run.join("checkpoints/latest").exists();
    let o = run_within(train(resume, run), 300);
    if !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already holds checkpoints") {
        unreachable!("a finished run is resumed, not restarted");
    }
    ok(o);
    assert_eq!(
        metrics_without_timing(run),
        metrics_without_timing(reference),
        "metrics differ"
    );
    let last = |r: &Path| std::fs::read_to_string(r.join("checkpoints/latest")).unwrap();
    assert_eq!(last(run), last(reference));
    let weights =
        |r: &Path| std::fs::read(r.join("checkpoints").join(last(r).trim()).join("model.safetensors")).unwrap();
    assert!(weights(run) == weights(reference), "final weights differ");
}

#[test]
fn lm_killed_at_random_moments_resumes_exactly() {
    let d = scratch("kill-lm");
    let cfg = lm_config(&d, 40, 5);
    kill_at_random_moments_and_compare(&["train", "--config"], &cfg, &d.join("run"), &d.join("ref"), 3);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn mt_killed_at_random_moments_resumes_exactly() {
    let d = scratch("kill-mt");
    let tsv = reversal_pairs(200);
    std::fs::write(d.join("train.tsv"), &tsv).unwrap();
    std::fs::write(
        d.join("valid.tsv"),
        tsv.lines().take(8).map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let cfg = d.join("mt.toml");
    std::fs::write(
        &cfg,
        format!(
            "task = \"mt\"\n[data]\ntrain = {:?}\nvalid = {:?}\nvocab_size = 60\nbatch_tokens = 128\n\
             [model]\nd_model = 16\nnhead = 2\nnum_encoder_layers = 1\nnum_decoder_layers = 1\ndim_feedforward = 32\ndropout = 0.1\n\
             [schedule]\nkind = \"constant\"\nlr = 0.003\n[train]\nmax_steps = 30\neval_every = 5\nlog_every = 1\nprogress = false\n",
            d.join("train.tsv").display().to_string(),
            d.join("valid.tsv").display().to_string(),
        ),
    )
    .unwrap();
    kill_at_random_moments_and_compare(&["train", "--config"], &cfg, &d.join("run"), &d.join("ref"), 3);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn bert_killed_at_random_moments_resumes_exactly() {
    let d = scratch("kill-bert");
    let (corpus, _) = bert_corpus();
    std::fs::write(d.join("corpus.txt"), corpus).unwrap();
    let cfg = d.join("pt.toml");
    std::fs::write(
        &cfg,
        format!(
            "task = \"bert-pretrain\"\n[model]\nvocab_size = 0\nhidden_size = 16\nnum_hidden_layers = 1\nnum_attention_heads = 2\n\
             intermediate_size = 32\nmax_position_embeddings = 48\n[data]\ncorpus = {:?}\nvocab_size = 80\nvalid_paragraphs = 10\n\
             max_len = 48\nbatch_size = 8\n[optim]\nlr = 3e-3\n[train]\nmax_steps = 24\neval_every = 4\nlog_every = 1\nprogress = false\n",
            d.join("corpus.txt").display().to_string(),
        ),
    )
    .unwrap();
    kill_at_random_moments_and_compare(&["train", "--config"], &cfg, &d.join("run"), &d.join("ref"), 3);
    let _ = std::fs::remove_dir_all(d);
}

/// Ctrl-C (SIGINT) finishes the step, writes a checkpoint and says how to go on; the resumed
/// run equals an uninterrupted one. SIGTERM does the same.
#[test]
fn ctrl_c_and_sigterm_checkpoint_and_resume_exactly() {
    let d = scratch("sigint");
    let cfg = lm_config(&d, 60, 1000);
    ok(run_within(
        {
            let mut c = seqlab();
            c.args(["train", "--config"])
                .arg(&cfg)
                .arg("--run-dir")
                .arg(d.join("ref"));
            c
        },
        300,
    ));
    let run = d.join("run");
    for (sig, name) in [(2, "SIGINT"), (15, "SIGTERM")] {
        let mut c = seqlab();
        c.args(["train", "--config"]).arg(&cfg).arg("--run-dir").arg(&run);
        if run.join("checkpoints/latest").exists() {
            c.arg("--resume");
        }
        let lines = || std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
        let before = lines();
        let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // Wait for this process's training to be under way (two new log lines; the handlers
        // are installed before the first step), then interrupt.
        let t0 = Instant::now();
        while lines() < before + 2 {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{name}: training did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(130), "{name}: {e}");
        assert!(
            e.contains("interrupted at step") && e.contains("--resume"),
            "{name}: {e}"
        );
        assert!(run.join("checkpoints/latest").exists(), "{name}: no checkpoint");
    }
    ok(seqlab()
        .args(["train", "--resume", "--config"])
        .arg(&cfg)
        .arg("--run-dir")
        .arg(&run)
        .output()
        .unwrap());
    assert_eq!(metrics_without_timing(&run), metrics_without_timing(&d.join("ref")));
    let _ = std::fs::remove_dir_all(d);
}

/// `--resume` with a changed config: changes that would break the run are refused with the
/// keys listed, and nothing is written; the allowed ones are applied and reported. A resume
/// from a checkpoint of another shape leaves config.toml as it was.
#[test]
fn resume_refuses_breaking_changes_and_applies_allowed_ones() {
    let d = scratch("resume-change");
    let cfg = lm_config(&d, 4, 2);
    let run = d.join("run");
    ok(seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap());
    let config_before = std::fs::read(run.join("config.toml")).unwrap();
    let metrics_before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let e = failed(
        seqlab()
            .args(["train", "--resume", "--config"])
            .arg(&cfg)
            .args(["--set", "model.hidden_size=48", "--set", "optim.lr=0.5", "--seed", "3"])
            .output()
            .unwrap(),
    );
    assert!(
        e.contains("model.hidden_size") && e.contains("optim.lr") && e.contains("train.seed"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(run.join("config.toml")).unwrap(),
        config_before,
        "config.toml changed"
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics_before);
    let o = seqlab()
        .args(["train", "--resume", "--config"])
        .arg(&cfg)
        .args(["--max-steps", "6"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    let out = ok(o);
    assert!(
        e.contains("applied train.max_steps: 4 → 6") && out.contains("trained 6 steps"),
        "{e}\n{out}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// Input files are checked before training starts, errors name the config key (and the OS
/// error once); bad time limits are refused with their key; `--set optim.lr` where the
/// `[schedule]` sets the rate is an error naming both keys.
#[test]
fn inputs_and_limits_are_checked_before_training() {
    let d = scratch("inputs");
    let cfg = lm_config(&d, 4, 2);
    let run = d.join("run");
    let train = |sets: &[&str]| {
        failed(
            seqlab()
                .args(["train", "--config"])
                .arg(&cfg)
                .args(sets)
                .output()
                .unwrap(),
        )
    };
    let e = train(&["--set", "data.valid=''"]);
    assert!(e.contains("data.valid") && e.contains("empty"), "{e}");
    let e = train(&["--set", "data.valid='/no/such/valid.txt'"]);
    assert!(e.contains("data.valid") && e.contains("/no/such/valid.txt"), "{e}");
    assert_eq!(e.matches("No such file").count(), 1, "the OS error once: {e}");
    let e = train(&["--max-minutes=-1"]);
    assert!(e.contains("train.max_minutes") && !e.contains("loss.png"), "{e}");
    assert!(!run.exists(), "a refused run wrote its folder");
    let e = train(&[
        "--set",
        "schedule.kind=\"constant\"",
        "--set",
        "schedule.lr=0.01",
        "--set",
        "optim.lr=1e-7",
    ]);
    assert!(e.contains("optim.lr") && e.contains("schedule.lr"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

/// `seqlab eval` of a model whose weights hold NaN fails, naming the parameter.
#[test]
fn eval_refuses_nan_weights() {
    let d = scratch("nan");
    let cfg = lm_config(&d, 2, 2);
    ok(seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap());
    let f = d.join("run/checkpoints/best/model.safetensors");
    let mut m = candle_core::safetensors::load(&f, &candle_core::Device::Cpu).unwrap();
    let name = m.keys().min().unwrap().clone();
    let t = &m[&name];
    let nan = (t.ones_like().unwrap() * f64::NAN).unwrap();
    m.insert(name.clone(), nan);
    candle_core::safetensors::save(&m, &f).unwrap();
    let e = failed(
        seqlab()
            .args(["eval", "--checkpoint"])
            .arg(d.join("run"))
            .output()
            .unwrap(),
    );
    assert!(e.contains(&name) && e.contains("NaN"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}
