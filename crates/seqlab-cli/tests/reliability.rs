//! Faults of issue 13, end to end through the `seqlab` binary: one folder per run, Ctrl-C,
//! kills at random moments, exact metrics after resume, odd values in plots, over-long
//! translation inputs, errors without backtraces. docs/RELIABILITY.md lists which test proves
//! which guarantee.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn seqlab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seqlab"));
    // One thread: the same seed must give the same numbers.
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seqlab-rely-{name}-{}", std::process::id()));
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

fn failed(o: Output) -> String {
    assert!(!o.status.success(), "expected a failure: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

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
        assert!(t0.elapsed() < Duration::from_secs(secs), "{} did not appear", p.display());
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
    let mut first = seqlab().args(["train", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
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
    assert!(e.contains(&run.display().to_string()) && e.contains(&format!("process {}", first.id())), "{e}");
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
    let e = failed(seqlab().args(["train", "--resume", "--config"]).arg(&cfg).output().unwrap());
    assert!(e.contains("does not exist") && e.contains("--resume"), "{e}");
    assert!(!run.exists(), "a failed --resume created the run folder");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "{\"step\":1,\"split\":\"train\",\"loss\":9.0}\n").unwrap();
    let e = failed(seqlab().args(["train", "--resume", "--config"]).arg(&cfg).output().unwrap());
    assert!(e.contains("no checkpoint"), "{e}");
    let o = seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o);
    assert!(stderr.contains("metrics.jsonl.stale-1"), "{stderr}");
    let stale = std::fs::read_to_string(run.join("metrics.jsonl.stale-1")).unwrap();
    assert!(stale.contains("9.0"));
    let fresh = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(!fresh.contains("\"loss\":9.0") && fresh.lines().next().unwrap().contains("\"step\":1"), "{fresh}");
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
    let wrong: std::collections::HashMap<String, candle_core::Tensor> =
        [("x".to_string(), candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap())]
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
    assert!(!e.contains("backtrace") && !e.contains("  0: ") && e.lines().count() <= 3, "{e}");
    let _ = std::fs::remove_dir_all(d);
}
