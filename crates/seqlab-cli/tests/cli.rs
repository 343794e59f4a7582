//! End-to-end tests of the `seqlab` binary on tiny data: every task trained and evaluated
//! through the registry, resume after SIGKILL, generate, translate, plot, every preset
//! config, and clear errors on bad input.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::*;

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

#[test]
fn lm_pipeline_train_eval_generate_plot() {
    let d = scratch("lm");
    let cfg = lm_config(&d, 10);
    let out = ok(seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap());
    assert!(out.contains("trained 10 steps") && out.contains("perplexity"), "{out}");
    let run = d.join("run");
    assert!(run.join("loss.png").exists() && run.join("checkpoints/best/model.safetensors").exists());
    assert_run_outputs(&run, "test");
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
    // One sampler meaning: --top-k 0 is "no top-k filter" (the same draws as no --top-k),
    // and --temperature 0 is greedy whatever the seed.
    let gen_with = |extra: &[&str]| {
        let mut c = seqlab();
        c.args(["generate", "--prompt", "KING", "--max-tokens", "40", "--checkpoint"])
            .arg(&run)
            .args(extra);
        ok(c.output().unwrap())
    };
    let unfiltered = gen_with(&["--temperature", "1.5", "--seed", "4"]);
    assert_eq!(
        unfiltered,
        gen_with(&["--temperature", "1.5", "--seed", "4", "--top-k", "0"])
    );
    assert_ne!(
        unfiltered,
        gen_with(&["--temperature", "1.5", "--seed", "4", "--top-k", "1"]),
        "top-k 1 is greedy, unlike no filter"
    );
    assert_eq!(
        gen_with(&["--temperature", "0", "--seed", "1"]),
        gen_with(&["--temperature", "0", "--seed", "2"])
    );
    assert_eq!(
        gen_with(&["--temperature", "0"]),
        gen_with(&["--temperature", "1.5", "--top-k", "1"])
    );
    let o = seqlab()
        .args(["generate", "--top-p", "1.5", "--checkpoint"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("top_p"));
    ok(seqlab()
        .args(["plot", "-o"])
        .arg(d.join("p.svg"))
        .arg(&run)
        .output()
        .unwrap());
    assert!(d.join("p.svg").exists());
    let _ = std::fs::remove_dir_all(d);
}

/// `model.kind = "mamba"` trains, evaluates and samples (through its step function) like the
/// other language models.
/// `SEQLAB_OPS=composed` trains through the composed ops (the GPU's path) with the losses of
/// the fused CPU kernels; bad device names and a CUDA device on a CPU-only build are clear
/// errors, never panics.
#[test]
fn composed_ops_train_alike_and_devices_are_checked() {
    let losses = |ops: &str| {
        let d = scratch(&format!("ops-{ops}"));
        let cfg = lm_config(&d, 4);
        ok(seqlab()
            .args(["train", "--device", "cpu", "--config"])
            .arg(&cfg)
            .env("SEQLAB_OPS", ops)
            .output()
            .unwrap());
        train_losses(&d.join("run"))
    };
    let (fused, composed) = (losses("fused"), losses("composed"));
    assert_eq!(fused.len(), 4);
    for ((s1, a), (s2, b)) in fused.iter().zip(&composed) {
        assert_eq!(s1, s2);
        assert!((a - b).abs() <= 1e-4 * a.abs(), "step {s1}: fused {a}, composed {b}");
    }
    let d = scratch("devices");
    let cfg = lm_config(&d, 2);
    let bad = failed(
        seqlab()
            .args(["train", "--device", "gpu0", "--config"])
            .arg(&cfg)
            .output()
            .unwrap(),
    );
    assert!(bad.contains("unknown device `gpu0`"), "{bad}");
    let ops = failed(
        seqlab()
            .args(["train", "--config"])
            .arg(&cfg)
            .env("SEQLAB_OPS", "fast")
            .output()
            .unwrap(),
    );
    assert!(ops.contains("SEQLAB_OPS") && ops.contains("fused or composed"), "{ops}");
    if !cfg!(feature = "cuda") {
        let e = failed(
            seqlab()
                .args(["train", "--device", "cuda", "--config"])
                .arg(&cfg)
                .output()
                .unwrap(),
        );
        assert!(e.contains("built without CUDA; rebuild with --features cuda"), "{e}");
        let e = failed(
            seqlab()
                .args(["generate", "--checkpoint", "nowhere", "--device", "cuda:1"])
                .output()
                .unwrap(),
        );
        assert!(
            e.contains("--device") && e.contains("rebuild with --features cuda"),
            "{e}"
        );
    }
}

#[test]
fn mamba_lm_trains_and_generates() {
    let d = scratch("mamba-lm");
    let cfg = lm_config(&d, 6);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        "kind = \"lstm\"\nembed_dim = 16\nhidden_size = 32\nnum_layers = 2\ndropout = 0.1\n",
        "kind = \"mamba\"\nd_model = 16\nnum_layers = 2\nd_state = 4\n",
    );
    assert!(text.contains("mamba"));
    std::fs::write(&cfg, text).unwrap();
    let out = ok(seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap());
    assert!(out.contains("trained 6 steps") && out.contains("perplexity"), "{out}");
    let run = d.join("run");
    let gen = || {
        ok(seqlab()
            .args([
                "generate",
                "--prompt",
                "KING",
                "--max-tokens",
                "20",
                "--seed",
                "5",
                "--checkpoint",
            ])
            .arg(&run)
            .output()
            .unwrap())
    };
    let g = gen();
    assert!(g.starts_with("KING") && g.chars().count() > 4, "{g}");
    assert_eq!(g, gen());
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
    write_reversal_corpus(&d);
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
    assert_run_outputs(&d.join("run"), "test");
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
    // The sampler means what it means in `generate`: --top-k 0 = no filter, temperature 0 =
    // greedy.
    let tr = |extra: &[&str]| {
        let mut c = seqlab();
        c.args(["translate", "--checkpoint"])
            .arg(&run)
            .arg("--input")
            .arg(d.join("valid.tsv"))
            .arg("--tsv")
            .args(extra);
        ok(c.output().unwrap())
    };
    let sampled = tr(&["--decoder", "sampling", "--temperature", "3", "--seed", "5"]);
    // `--warmup` (untimed passes before the timed one) changes no output: beam, greedy and
    // sampling, a warm-up of a few sentences (in smaller batches) and of more than there are.
    for dec in [
        &["--decoder", "beam"][..],
        &["--decoder", "greedy"],
        &["--decoder", "sampling", "--temperature", "3", "--seed", "5"],
    ] {
        for (n, batch) in [("3", "4"), ("100", "32")] {
            let plain = tr(&[dec, &["--batch-size", batch]].concat());
            let warmed = tr(&[dec, &["--warmup", n, "--batch-size", batch]].concat());
            assert_eq!(warmed, plain, "{dec:?} --warmup {n} --batch-size {batch}");
        }
    }
    assert_eq!(
        sampled,
        tr(&[
            "--decoder",
            "sampling",
            "--temperature",
            "3",
            "--seed",
            "5",
            "--top-k",
            "0"
        ])
    );
    assert_eq!(
        tr(&["--decoder", "sampling", "--temperature", "0", "--seed", "9"]),
        tr(&["--decoder", "greedy"])
    );
    // `seqlab eval` on a translation run goes through the registry.
    let ev = ok(seqlab()
        .args(["eval", "--json", "--checkpoint"])
        .arg(&run)
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&ev).unwrap();
    assert!(v["bleu"].as_f64().is_some() && v["chrf"].as_f64().is_some(), "{v}");
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

/// Every run draws `loss.png` and writes `test_report.json` (on `split`) from its best
/// checkpoint.
fn assert_run_outputs(run: &Path, split: &str) {
    assert!(
        std::fs::metadata(run.join("loss.png")).unwrap().len() > 1000,
        "{}",
        run.display()
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("test_report.json")).unwrap()).unwrap();
    assert_eq!(r["split"], split, "{r}");
    assert!(r["checkpoint"].as_str().unwrap().contains("checkpoints"), "{r}");
}

/// Trains a config through `seqlab train` (or the given alias), then evaluates the run through
/// `seqlab eval --json`; returns (train stdout, eval JSON).
fn train_and_eval(train: &[&str], cfg: &Path, run: &Path) -> (String, serde_json::Value) {
    let out = ok(seqlab().args(train).arg(cfg).output().unwrap());
    let ev = ok(seqlab()
        .args(["eval", "--json", "--checkpoint"])
        .arg(run)
        .output()
        .unwrap());
    (out, serde_json::from_str(&ev).unwrap())
}

/// `classify` and `forecast` train and evaluate through the registry like `lm` and `mt`.
#[test]
fn classify_and_forecast_through_the_registry() {
    let d = scratch("cls-fc");
    // Classification: the label says whether the text mentions an animal.
    let words = ["red", "blue", "cat", "dog", "sun", "tree", "bird", "road"];
    let mut tsv = String::new();
    for i in 0..200usize {
        let w: Vec<&str> = (0..3).map(|k| words[(i * 5 + k * 3 + i / 7) % 8]).collect();
        let animal = w.iter().any(|x| ["cat", "dog", "bird"].contains(x));
        tsv.push_str(&format!(
            "{}\t{}\n",
            w.join(" "),
            if animal { "animal" } else { "thing" }
        ));
    }
    std::fs::write(d.join("cls.tsv"), &tsv).unwrap();
    let cls = d.join("cls.toml");
    std::fs::write(
        &cls,
        format!(
            "task = \"classify\"\nrun_dir = {:?}\n[data]\ntrain = {:?}\nvalid = {:?}\ntokenizer = \"word\"\nbatch_tokens = 256\n\
             [model]\nkind = \"gru\"\nembed_dim = 8\nhidden_size = 16\nnum_layers = 1\n[loss]\nlabel_smoothing = 0.05\n\
             [optim]\nname = \"adam\"\nlr = 0.01\n[train]\nmax_steps = 30\neval_every = 10\nlog_every = 5\n",
            d.join("cls-run").display().to_string(),
            d.join("cls.tsv").display().to_string(),
            d.join("cls.tsv").display().to_string(),
        ),
    )
    .unwrap();
    let (out, v) = train_and_eval(&["train", "--config"], &cls, &d.join("cls-run"));
    assert!(out.contains("accuracy") && out.contains("on the valid data"), "{out}");
    assert_run_outputs(&d.join("cls-run"), "valid");
    // No data.test: eval defaults to the validation file, the one the report used.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("cls-run/test_report.json")).unwrap()).unwrap();
    assert_eq!(v["accuracy"], report["accuracy"]);
    assert_eq!(v["examples"], 200);

    // Forecasting: a noisy sine, SGD.
    let mut csv = String::from("t,y\n");
    for i in 0..400 {
        csv.push_str(&format!("{i},{:.4}\n", (i as f64 * 0.3).sin() * 10.0 + 20.0));
    }
    std::fs::write(d.join("ts.csv"), csv).unwrap();
    let fc = d.join("fc.toml");
    std::fs::write(
        &fc,
        format!(
            "task = \"forecast\"\nrun_dir = {:?}\n[data]\ntrain = {:?}\ncolumn = \"y\"\ninput_len = 12\nbatch_size = 16\n\
             [model]\nkind = \"lstm\"\nhidden_size = 8\nnum_layers = 1\n[optim]\nname = \"sgd\"\nlr = 0.05\n\
             [train]\nmax_steps = 20\neval_every = 10\nlog_every = 5\n",
            d.join("fc-run").display().to_string(),
            d.join("ts.csv").display().to_string(),
        ),
    )
    .unwrap();
    let (out, v) = train_and_eval(&["train", "--config"], &fc, &d.join("fc-run"));
    assert!(out.contains("seasonal naive"), "{out}");
    assert_run_outputs(&d.join("fc-run"), "test");
    assert!(v["rmse"].as_f64().unwrap() > 0.0 && v["part"] == "test", "{v}");
    let _ = std::fs::remove_dir_all(d);
}

/// BERT pretraining and fine-tuning through the aliases (`pretrain F`, `finetune --config F`)
/// and through `seqlab train`, evaluated through the registry.
#[test]
fn bert_pretrain_and_finetune_through_the_registry() {
    let d = scratch("bert");
    let (corpus, tsv) = bert_corpus();
    std::fs::write(d.join("corpus.txt"), corpus).unwrap();
    std::fs::write(d.join("cls.tsv"), tsv).unwrap();
    // Old style: no `task` key, the alias supplies it.
    let pt = d.join("pt.toml");
    std::fs::write(
        &pt,
        format!(
            "run_dir = {:?}\n[model]\nvocab_size = 0\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n\
             intermediate_size = 64\nmax_position_embeddings = 48\n[data]\ncorpus = {:?}\nvocab_size = 80\nvalid_paragraphs = 10\n\
             max_len = 48\nbatch_size = 8\n[optim]\nlr = 3e-3\n[train]\nmax_steps = 6\neval_every = 3\nlog_every = 3\n",
            d.join("pt-run").display().to_string(),
            d.join("corpus.txt").display().to_string(),
        ),
    )
    .unwrap();
    let (out, v) = train_and_eval(&["pretrain"], &pt, &d.join("pt-run"));
    assert!(out.contains("masked LM") && out.contains("on the valid data"), "{out}");
    assert_run_outputs(&d.join("pt-run"), "valid");
    assert!((0.0..=1.0).contains(&v["mlm_accuracy"].as_f64().unwrap()), "{v}");
    // `seqlab train` refuses it without a `task` key... unless it recognises the old BERT
    // config, which it does (with a note).
    let o = seqlab()
        .args(["train", "--check", "--config"])
        .arg(&pt)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bert-pretrain"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ft = d.join("ft.toml");
    std::fs::write(
        &ft,
        format!(
            "task = \"bert-finetune\"\npretrained = {:?}\nrun_dir = {:?}\n[data]\ntrain = {:?}\nvalid = {:?}\ntest = {:?}\n\
             max_len = 32\nbatch_size = 8\n[optim]\nname = \"sgd\"\nlr = 0.01\n[train]\nmax_steps = 4\neval_every = 2\nlog_every = 2\n",
            d.join("pt-run").display().to_string(),
            d.join("ft-run").display().to_string(),
            d.join("cls.tsv").display().to_string(),
            d.join("cls.tsv").display().to_string(),
            d.join("cls.tsv").display().to_string(),
        ),
    )
    .unwrap();
    let (out, v) = train_and_eval(&["finetune", "--config"], &ft, &d.join("ft-run"));
    assert!(
        out.contains("confusion matrix") && out.contains("on the test data"),
        "{out}"
    );
    assert_run_outputs(&d.join("ft-run"), "test");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ft-run/test_report.json")).unwrap()).unwrap();
    assert_eq!(v["accuracy"], report["accuracy"], "eval reloads the best checkpoint");
    // The alias refuses a config of another task.
    let o = seqlab().args(["pretrain", "--config"]).arg(&ft).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("bert-finetune"));
    let _ = std::fs::remove_dir_all(d);
}

/// Every preset in configs/ parses and validates through the registry (`train --check`
/// reads no data), and each names its task.
#[test]
fn every_preset_config_loads_through_the_registry() {
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("configs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let out = ok(seqlab()
            .args(["train", "--check", "--config"])
            .arg(&p)
            .output()
            .unwrap());
        assert!(out.contains("a valid `"), "{}: {out}", p.display());
        n += 1;
    }
    assert!(n >= 15, "only {n} presets found");
    // An unknown task is named, with the known ones.
    let d = scratch("unknown-task");
    std::fs::write(d.join("x.toml"), "task = \"lmm\"\n").unwrap();
    let o = seqlab()
        .args(["train", "--config"])
        .arg(d.join("x.toml"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("lmm") && e.contains("bert-finetune"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// `seqlab bench model` times training steps of a run config through the run engine's step:
/// tokens as the task counts them, the tokenizer and resolved config exported for the
/// PyTorch peer, and nothing written to the run folder.
#[test]
fn bench_model_times_engine_steps_and_writes_no_run() {
    let dir = scratch("bench-model");
    let cfg = lm_config(&dir, 1);
    let export = dir.join("export");
    let out = ok(seqlab()
        .args(["bench", "model", "--json", "--steps", "2", "--warmup", "1", "--config"])
        .arg(&cfg)
        .arg("--export")
        .arg(&export)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["task"], "lm");
    assert_eq!(v["steps"], 2);
    // batch_size 4 x bptt 16 tokens per step.
    assert_eq!(v["units"], 2 * 4 * 16);
    assert!(v["seconds"].as_f64().unwrap() > 0.0 && v["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert!(export.join("tokenizer.json").exists() && export.join("config.json").exists());
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("config.json")).unwrap()).unwrap();
    assert_eq!(exported["data"]["bptt"], 16);
    assert!(!dir.join("run").exists(), "bench wrote a run folder");

    let err = failed(seqlab().args(["bench", "model"]).output().unwrap());
    assert!(err.contains("needs --config"), "{err}");
    let err = failed(seqlab().args(["bench", "lstmm"]).output().unwrap());
    assert!(err.contains("unknown benchmark `lstmm`"), "{err}");
    let err = failed(
        seqlab()
            .args(["bench", "translate", "--config"])
            .arg(&cfg)
            .output()
            .unwrap(),
    );
    assert!(err.contains("needs task \"mt\""), "{err}");

    // `bench generate`: batch x tokens per timed step, for the LSTM and (overridden) Mamba.
    for sets in [
        &[][..],
        &["model.kind=mamba", "model.d_model=16", "model.d_state=4"][..],
    ] {
        let mut cmd = seqlab();
        cmd.args(["bench", "generate", "--json", "--steps", "2", "--warmup", "0"])
            .args(["--batch-size", "3", "--tokens", "5", "--config"])
            .arg(&cfg)
            .env("RAYON_NUM_THREADS", "1");
        for s in sets {
            cmd.args(["--set", s]);
        }
        let v: serde_json::Value = serde_json::from_str(ok(cmd.output().unwrap()).trim()).unwrap();
        assert_eq!(
            (v["row"].as_str(), v["units"].as_u64()),
            (Some("generate"), Some(2 * 3 * 5)),
            "{v}"
        );
        let kind = if sets.is_empty() { "lstm" } else { "mamba" };
        assert_eq!(v["model"], kind, "{v}");
    }
    let err = failed(seqlab().args(["bench", "generate"]).output().unwrap());
    assert!(err.contains("needs --config"), "{err}");
}

/// `--device` on every command that runs a model: `--device cpu` works on each (a tiny LM and
/// a tiny translation model; the BERT training commands through `--check`), and on a build
/// without the `cuda` feature `--device cuda` fails with an error naming the flag, before
/// anything is read or written. `export` and `w2v` run on the CPU only and take no flag.
#[test]
fn every_model_command_takes_device() {
    let d = scratch("device-flag");
    let cfg = lm_config(&d, 2);
    let run = d.join("run");
    ok(seqlab()
        .args(["train", "--device", "cpu", "--config"])
        .arg(&cfg)
        .output()
        .unwrap());
    let cpu = ["--device", "cpu"];
    let out = ok(seqlab()
        .args(["eval", "--json", "--checkpoint"])
        .arg(&run)
        .args(cpu)
        .output()
        .unwrap());
    assert!(out.contains("loss"), "{out}");
    let out = ok(seqlab()
        .args(["generate", "--max-tokens", "5", "--checkpoint"])
        .arg(&run)
        .args(cpu)
        .output()
        .unwrap());
    assert!(!out.is_empty());
    let mut c = seqlab();
    c.args(["predict", "--checkpoint"]).arg(&run).args(cpu);
    assert!(!ok(with_stdin(c, "To be or not\n")).is_empty());
    let out = ok(seqlab()
        .args(["bench", "model", "--json", "--steps", "1", "--warmup", "0", "--config"])
        .arg(&cfg)
        .args(cpu)
        .output()
        .unwrap());
    assert!(out.contains("\"row\":\"model\""), "{out}");
    let out = ok(seqlab()
        .args(["bench", "sgemm", "--size", "16", "--steps", "1", "--device", "cpu"])
        .output()
        .unwrap());
    assert!(out.contains("sgemm"), "{out}");
    // The FMA limit: a JSON row with the GFLOP/s of every thread, where the CPU has the units.
    let fma = seqlab()
        .args(["bench", "fma", "--json", "--steps", "1", "--warmup", "0"])
        .output()
        .unwrap();
    if fma.status.success() {
        let out = String::from_utf8_lossy(&fma.stdout);
        assert!(out.contains("\"row\":\"fma\"") && out.contains("\"gflops\""), "{out}");
    } else {
        let err = String::from_utf8_lossy(&fma.stderr);
        assert!(err.contains("this CPU has neither"), "{err}");
    }
    for (cmd, preset) in [
        ("pretrain", "configs/bert-pretrain-sample.toml"),
        ("finetune", "configs/bert-finetune-sample.toml"),
    ] {
        let out = ok(seqlab()
            .current_dir(repo())
            .args([cmd, "--check", "--device", "cpu", "--config", preset])
            .output()
            .unwrap());
        assert!(out.contains("a valid"), "{cmd}: {out}");
    }
    let (mut server, _err, port) = start_serve(&[
        format!("--checkpoint=words={}", run.display()),
        "--device=cpu".to_string(),
    ]);
    let (status, _) = post(port, "/v1/generate", r#"{"prompt": "To", "max_tokens": 3}"#);
    let _ = server.kill();
    let _ = server.wait();
    assert!(status.contains("200"), "{status}");

    let mt = d.join("mt");
    std::fs::create_dir_all(&mt).unwrap();
    write_reversal_corpus(&mt);
    let mt_cfg = mt.join("mt.toml");
    std::fs::write(
        &mt_cfg,
        format!(
            "task = \"mt\"\nrun_dir = {:?}\n[data]\ntrain = {:?}\nvalid = {:?}\nvocab_size = 60\nbatch_tokens = 256\n\
             [model]\nd_model = 16\nnhead = 2\nnum_encoder_layers = 1\nnum_decoder_layers = 1\ndim_feedforward = 32\n\
             [train]\nmax_steps = 2\neval_every = 2\nlog_every = 1\n",
            mt.join("run").display().to_string(),
            mt.join("train.tsv").display().to_string(),
            mt.join("valid.tsv").display().to_string(),
        ),
    )
    .unwrap();
    ok(seqlab()
        .args(["train", "--device", "cpu", "--config"])
        .arg(&mt_cfg)
        .output()
        .unwrap());
    let mut c = seqlab();
    c.args(["translate", "--decoder", "greedy", "--checkpoint"])
        .arg(mt.join("run"))
        .args(cpu);
    assert_eq!(ok(with_stdin(c, "red cat\nblue dog sun\n")).lines().count(), 2);

    if cfg!(feature = "cuda") {
        return;
    }
    let fresh = d.join("fresh");
    let run_dir = format!("--run-dir={}", fresh.display());
    let cfg_s = cfg.display().to_string();
    let run_s = run.display().to_string();
    let stdin_cmds: Vec<Vec<&str>> = vec![
        vec!["train", "--config", &cfg_s, &run_dir],
        vec!["pretrain", "--config", "configs/bert-pretrain-sample.toml", &run_dir],
        vec!["finetune", "--config", "configs/bert-finetune-sample.toml", &run_dir],
        vec!["eval", "--checkpoint", &run_s],
        vec!["generate", "--checkpoint", &run_s],
        vec!["predict", "--checkpoint", &run_s],
        vec!["translate", "--checkpoint", &run_s],
        vec!["serve", "--checkpoint", "words=nowhere"],
        vec!["bench", "lstm"],
        vec!["bench", "model", "--config", &cfg_s],
    ];
    let before = std::fs::read_dir(&d).unwrap().count();
    for args in stdin_cmds {
        let mut c = seqlab();
        c.current_dir(repo()).args(&args).args(["--device", "cuda"]);
        let e = failed(with_stdin(c, "To be\n"));
        assert!(
            e.contains("--device") && e.contains("rebuild with --features cuda") && !e.contains("panicked"),
            "{args:?}: {e}"
        );
    }
    assert!(!fresh.exists(), "a refused --device cuda wrote a run folder");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), before);
    let help = ok(seqlab().args(["export", "--help"]).output().unwrap());
    assert!(help.contains("on the CPU"), "{help}");
    let _ = std::fs::remove_dir_all(d);
}

/// A run resumes on another device: a checkpoint whose config names `cuda:1` (as a GPU run's
/// does) continues on the CPU with `--device cpu`, the change reported on stderr and the
/// weights, optimizer state and RNG loaded; an explicit `--device cpu` where the config said
/// cpu changes nothing; `--device cuda` on a CPU-only build (and `--set train.device`) fails
/// naming the flag/key, with the run folder untouched.
#[test]
fn resume_moves_a_run_to_another_device() {
    let d = scratch("device-resume");
    let cfg = lm_config(&d, 2);
    let run = d.join("run");
    ok(seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap());
    let o = seqlab()
        .args(["train", "--resume", "--device", "cpu", "--max-steps", "3", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    let out = ok(o);
    assert!(
        out.contains("trained 3 steps") && !e.contains("train.device"),
        "{e}\n{out}"
    );
    // What a run trained on GPU 1 stores.
    for ck in std::fs::read_dir(run.join("checkpoints")).unwrap() {
        let f = ck.unwrap().path().join("trainer.json");
        if f.exists() {
            let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            v["config"]["train"]["device"] = "cuda:1".into();
            std::fs::write(&f, v.to_string()).unwrap();
        }
    }
    if !cfg!(feature = "cuda") {
        let config_before = std::fs::read(run.join("config.toml")).unwrap();
        let metrics_before = std::fs::read(run.join("metrics.jsonl")).unwrap();
        for flag in [["--device", "cuda"], ["--set", "train.device=\"cuda\""]] {
            let e = failed(
                seqlab()
                    .args(["train", "--resume", "--max-steps", "4", "--config"])
                    .arg(&cfg)
                    .args(flag)
                    .output()
                    .unwrap(),
            );
            // `--set` reaches the run path: its resume check accepted the device change.
            assert!(
                e.contains("--device") && e.contains("rebuild with --features cuda") && !e.contains("cannot change"),
                "{flag:?}: {e}"
            );
            assert_eq!(std::fs::read(run.join("config.toml")).unwrap(), config_before);
            assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics_before);
        }
    }
    let o = seqlab()
        .args(["train", "--resume", "--device", "cpu", "--max-steps", "4", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    let out = ok(o);
    assert!(
        e.contains("applied train.device: \"cuda:1\" → \"cpu\"") && e.contains("continue on the new device"),
        "{e}"
    );
    assert!(out.contains("trained 4 steps"), "{out}");
    let steps: Vec<u64> = train_losses(&run).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    let _ = std::fs::remove_dir_all(d);
}
