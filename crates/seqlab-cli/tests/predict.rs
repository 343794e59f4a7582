//! `seqlab predict` for every kind of model, `seqlab eval` on every kind of checkpoint, and
//! `seqlab serve` answering a fine-tuned BERT at /v1/classify and positive/negative word
//! queries at /v1/similar. Each test trains its own tiny run through the binary.

use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::*;

/// Writes `task = ...` + `run_dir` + `tables` to `dir/NAME.toml`, trains it with `seqlab
/// train`, and returns the run folder.
fn train(dir: &Path, name: &str, task: &str, tables: &str) -> PathBuf {
    let run = dir.join(format!("{name}-run"));
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!("task = {task:?}\nrun_dir = {:?}\n{tables}", run.display().to_string()),
    )
    .unwrap();
    ok(seqlab().args(["train", "--config"]).arg(&cfg).output().unwrap());
    run
}

/// `seqlab eval --json` on a run: it must work for every kind of checkpoint.
fn eval_json(run: &Path, extra: &[&str]) -> Value {
    let out = ok(seqlab()
        .args(["eval", "--json", "--checkpoint"])
        .arg(run)
        .args(extra)
        .output()
        .unwrap());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `seqlab predict --checkpoint RUN ARGS` with `input` on stdin → stdout.
fn predict(run: &Path, args: &[&str], input: &str) -> String {
    let mut c = seqlab();
    c.args(["predict", "--checkpoint"]).arg(run).args(args);
    ok(with_stdin(c, input))
}

/// The same, expected to fail → stderr.
fn predict_fails(run: &Path, args: &[&str], input: &str) -> String {
    let mut c = seqlab();
    c.args(["predict", "--checkpoint"]).arg(run).args(args);
    let o = with_stdin(c, input);
    let e = failed(o);
    assert!(!e.contains("panicked"), "{e}");
    e
}

fn jsonl(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Probabilities of one classify answer: they sum to 1, come in decreasing order, and the
/// label is the first.
fn check_probabilities(v: &Value, labels: usize) {
    let p = v["probabilities"].as_array().unwrap();
    assert_eq!(p.len(), labels, "{v}");
    let ps: Vec<f64> = p.iter().map(|x| x["probability"].as_f64().unwrap()).collect();
    assert!((ps.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{v}");
    assert!(ps.windows(2).all(|w| w[0] >= w[1]), "{v}");
    assert_eq!(v["label"], p[0]["label"], "{v}");
}

#[test]
fn lm_predict_scores_a_text_as_eval_does() {
    let d = scratch("predict-lm");
    let words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"];
    let text: String = (0..200)
        .map(|i| format!("{} {} {}\n", words[i % 8], words[(i * 3) % 8], words[(i * 5 + 1) % 8]))
        .collect();
    std::fs::write(d.join("train.txt"), &text).unwrap();
    let run = train(
        &d,
        "lm",
        "lm",
        &format!(
            "[data]\ntrain = {:?}\nvalid = {:?}\nbatch_size = 4\nbptt = 16\n[model]\nkind = \"lstm\"\nembed_dim = 8\nhidden_size = 16\nnum_layers = 1\n[train]\nmax_steps = 20\neval_every = 10\nlog_every = 5\n",
            d.join("train.txt").display().to_string(),
            d.join("train.txt").display().to_string()
        ),
    );
    // A text with a character the model never saw (Z): one OOV target.
    let sample = "the dog sat on a mat\na cat ran Z\n";
    std::fs::write(d.join("sample.txt"), sample).unwrap();
    let ev = eval_json(&run, &["--data", d.join("sample.txt").to_str().unwrap()]);
    let p = jsonl(&predict(&run, &["--format", "jsonl"], sample));
    assert_eq!(p.len(), 1, "the whole input is one text");
    let p = &p[0];
    assert_eq!(p["input"], "<stdin>");
    for (pk, ek) in [
        ("loss", "loss"),
        ("perplexity", "ppl"),
        ("bits_per_char", "bpc"),
        ("oov_rate", "oov_rate"),
    ] {
        let (a, b) = (p[pk].as_f64().unwrap(), ev[ek].as_f64().unwrap());
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            "{pk}: predict {a} vs eval {b}"
        );
    }
    assert_eq!(p["tokens"], ev["tokens"]);
    assert_eq!(p["oov_tokens"], 1, "{p}");
    assert_eq!(p["bits_per_token"], p["bits_per_char"]);
    // From a file, as text; --per-line gives one line per non-blank input line.
    let t = predict(&run, &["--input", d.join("sample.txt").to_str().unwrap()], "");
    assert!(
        t.contains("bits/char") && t.contains("perplexity") && t.contains("1 out of vocabulary"),
        "{t}"
    );
    let per = jsonl(&predict(
        &run,
        &["--per-line", "--format", "jsonl"],
        "the cat\n\na dog sat\n",
    ));
    assert_eq!(per.len(), 2);
    assert_eq!(per[1]["input"], "<stdin>:3");
    // Clear errors: empty input, an option of another kind of model.
    assert!(predict_fails(&run, &[], " \n").contains("empty"));
    let e = predict_fails(&run, &["--top-k", "2"], "the cat");
    assert!(e.contains("--top-k applies to classify"), "{e}");
    // eval on an lm checkpoint (its configured split).
    assert!(eval_json(&run, &[])["ppl"].as_f64().unwrap() > 1.0);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn classify_predict_gives_labels_with_probabilities_and_top_k() {
    let d = scratch("predict-cls");
    let words = ["red", "blue", "cat", "dog", "sun", "tree", "bird", "road"];
    let mut tsv = String::new();
    for i in 0..200usize {
        let w: Vec<&str> = (0..3).map(|k| words[(i * 5 + k * 3 + i / 7) % 8]).collect();
        let animal = w.iter().any(|x| ["cat", "dog", "bird"].contains(x));
        let label = if animal { "animal" } else { "thing" };
        tsv.push_str(&format!("{}\t{label}\n", w.join(" ")));
    }
    std::fs::write(d.join("cls.tsv"), &tsv).unwrap();
    let f = d.join("cls.tsv").display().to_string();
    let run = train(
        &d,
        "cls",
        "classify",
        &format!(
            "[data]\ntrain = {f:?}\nvalid = {f:?}\ntokenizer = \"word\"\nbatch_tokens = 256\n[model]\nkind = \"gru\"\nembed_dim = 8\nhidden_size = 16\nnum_layers = 1\n[optim]\nname = \"adam\"\nlr = 0.01\n[train]\nmax_steps = 30\neval_every = 10\nlog_every = 5\n"
        ),
    );
    let input = "red cat sun\n\nblue tree road\nunseen words here\n";
    let all = jsonl(&predict(&run, &["--format", "jsonl"], input));
    assert_eq!(all.len(), 3, "blank lines are skipped");
    assert_eq!(all[1]["line"], 3);
    assert_eq!(all[1]["text"], "blue tree road");
    for v in &all {
        check_probabilities(v, 2);
    }
    let top = jsonl(&predict(&run, &["--format", "jsonl", "--top-k", "1"], input));
    for (t, a) in top.iter().zip(&all) {
        assert_eq!(t["probabilities"].as_array().unwrap().len(), 1);
        assert_eq!(t["probabilities"][0], a["probabilities"][0]);
    }
    let text = predict(&run, &[], input);
    let first: Vec<&str> = text.lines().map(|l| l.split('\t').next().unwrap()).collect();
    let want: Vec<&str> = all.iter().map(|v| v["label"].as_str().unwrap()).collect();
    assert_eq!(first, want, "{text}");
    assert!(predict_fails(&run, &["--top-k", "0"], "red").contains("at least 1"));
    assert_eq!(eval_json(&run, &[])["examples"], 200);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn forecast_predict_gives_horizon_values_and_baselines() {
    let d = scratch("predict-fc");
    let mut csv = String::from("t,y\n");
    for i in 0..300 {
        csv.push_str(&format!("{i},{:.4}\n", (i as f64 * 0.5).sin() * 10.0 + 20.0));
    }
    std::fs::write(d.join("ts.csv"), csv).unwrap();
    let run = train(
        &d,
        "fc",
        "forecast",
        &format!(
            "[data]\ntrain = {:?}\ncolumn = \"y\"\ninput_len = 8\nhorizon = 3\nseason = 4\nbatch_size = 16\n[model]\nkind = \"gru\"\nhidden_size = 8\nnum_layers = 1\n[train]\nmax_steps = 20\neval_every = 10\nlog_every = 5\n",
            d.join("ts.csv").display().to_string()
        ),
    );
    // Two series: 0..16 (comma separated) and a space-separated one.
    let a: Vec<String> = (0..16).map(|i| i.to_string()).collect();
    let input = format!("{}\n{}\n", a.join(","), a.join(" "));
    let out = jsonl(&predict(&run, &["--format", "jsonl"], &input));
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], {
        let mut b = out[1].clone();
        b["line"] = 1.into();
        b
    });
    let f = &out[0];
    assert_eq!(f["forecast"].as_array().unwrap().len(), 3, "the model's horizon: {f}");
    assert_eq!(f["last_value"], serde_json::json!([15.0, 15.0, 15.0]));
    // Season 4 after 0..15: the values one season back.
    assert_eq!(f["seasonal_naive"], serde_json::json!([12.0, 13.0, 14.0]));
    let long = jsonl(&predict(&run, &["--format", "jsonl", "--horizon", "7"], &input));
    let fl = &long[0];
    assert_eq!(fl["forecast"].as_array().unwrap().len(), 7);
    assert_eq!(
        fl["forecast"].as_array().unwrap()[..3],
        f["forecast"].as_array().unwrap()[..],
        "the first pass is the same forecast"
    );
    assert_eq!(
        fl["seasonal_naive"],
        serde_json::json!([12.0, 13.0, 14.0, 15.0, 12.0, 13.0, 14.0])
    );
    let text = predict(&run, &["--horizon", "2"], &input);
    assert!(
        text.contains("forecast") && text.contains("seasonal naive  12.0000 13.0000"),
        "{text}"
    );
    let e = predict_fails(&run, &[], "1,2,3,4,5,6,7,8\n1, 2, x, 4\n");
    assert!(e.contains("<stdin>:2: column 3: \"x\" is not a number"), "{e}");
    let e = predict_fails(&run, &[], "1 2 3\n");
    assert!(e.contains("<stdin>:1") && e.contains("at least 8"), "{e}");
    assert!(eval_json(&run, &[])["rmse"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn mt_predict_equals_translate_and_eval_works() {
    let d = scratch("predict-mt");
    write_reversal_corpus(&d);
    let run = train(
        &d,
        "mt",
        "mt",
        &format!(
            "[data]\ntrain = {:?}\nvalid = {:?}\nvocab_size = 60\nbatch_tokens = 256\n[model]\nd_model = 32\nnhead = 2\nnum_encoder_layers = 1\nnum_decoder_layers = 1\ndim_feedforward = 64\ndropout = 0.0\n[schedule]\nkind = \"constant\"\nlr = 0.003\n[train]\nmax_steps = 20\neval_every = 10\nlog_every = 5\n",
            d.join("train.tsv").display().to_string(),
            d.join("valid.tsv").display().to_string()
        ),
    );
    let input = "red cat\n\nsun dog blue\ngreen green\n";
    let mut c = seqlab();
    c.args(["translate", "--checkpoint"]).arg(&run);
    let translated = ok(with_stdin(c, input));
    assert_eq!(predict(&run, &[], input), translated);
    let j = jsonl(&predict(&run, &["--format", "jsonl"], input));
    assert_eq!(j.len(), 3);
    let non_blank: Vec<&str> = translated.lines().filter(|l| !l.is_empty()).collect();
    for (v, t) in j.iter().zip(&non_blank) {
        assert_eq!(v["translation"], *t);
    }
    assert_eq!(j[1]["line"], 3);
    let ev = eval_json(&run, &[]);
    assert!(ev["bleu"].is_number() && ev["sentences"] == 12, "{ev}");
    let _ = std::fs::remove_dir_all(d);
}

/// BERT: pretrain, fine-tune, predict labels; eval on both checkpoints; the fine-tuned one
/// served at /v1/classify answers as `predict` does.
#[test]
fn bert_finetuned_predicts_and_serves_labels() {
    let d = scratch("predict-bert");
    let (corpus, tsv) = bert_corpus();
    std::fs::write(d.join("corpus.txt"), corpus).unwrap();
    std::fs::write(d.join("cls.tsv"), tsv).unwrap();
    let pt = train(
        &d,
        "pt",
        "bert-pretrain",
        &format!(
            "[model]\nvocab_size = 0\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\nintermediate_size = 64\nmax_position_embeddings = 48\n[data]\ncorpus = {:?}\nvocab_size = 80\nvalid_paragraphs = 10\nmax_len = 48\nbatch_size = 8\n[optim]\nlr = 3e-3\n[train]\nmax_steps = 4\neval_every = 2\nlog_every = 2\n",
            d.join("corpus.txt").display().to_string()
        ),
    );
    let f = d.join("cls.tsv").display().to_string();
    let ft = train(
        &d,
        "ft",
        "bert-finetune",
        &format!(
            "pretrained = {:?}\n[data]\ntrain = {f:?}\nvalid = {f:?}\nmax_len = 32\nbatch_size = 8\n[optim]\nname = \"sgd\"\nlr = 0.01\n[train]\nmax_steps = 4\neval_every = 2\nlog_every = 2\n",
            pt.display().to_string()
        ),
    );
    assert!(eval_json(&pt, &[])["mlm_accuracy"].is_number());
    assert_eq!(eval_json(&ft, &[])["examples"], 60);
    let input = "the cat sat on a mat .\na dog ran to the park .\n";
    let p = jsonl(&predict(&ft, &["--format", "jsonl"], input));
    assert_eq!(p.len(), 2);
    for v in &p {
        check_probabilities(v, 2);
    }
    let e = predict_fails(&pt, &[], input);
    assert!(e.contains("bert-pretrain") && e.contains("no predictions"), "{e}");

    let (mut child, _err, port) = start_serve(&["--checkpoint".into(), format!("topic={}", ft.display())]);
    let (status, body) = post(port, "/v1/classify", r#"{"text": "the cat sat on a mat ."}"#);
    let _ = child.kill();
    let _ = child.wait();
    assert!(status.contains("200"), "{status} {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["label"], p[0]["label"]);
    let (a, b) = (
        v["probabilities"][0]["probability"].as_f64().unwrap(),
        p[0]["probabilities"][0]["probability"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-6, "served {a} vs predicted {b}");
    let _ = std::fs::remove_dir_all(d);
}

/// Hand-made vectors where king + woman - man is queen, in word2vec text format (8 columns
/// with 4 decimals: the loader tells text from binary by the first bytes).
fn toy_vectors(path: &Path) -> Vec<(String, Vec<f64>)> {
    let rows: Vec<(&str, [f64; 3])> = vec![
        ("king", [1.0, 0.0, 0.1]),
        ("queen", [1.0, 1.0, 0.1]),
        ("man", [0.0, 0.0, 0.1]),
        ("woman", [0.0, 1.0, 0.1]),
        ("apple", [0.0, 0.0, 5.0]),
        ("prince", [0.9, 0.1, 0.3]),
    ];
    let mut t = format!("{} 8\n", rows.len());
    for (w, v) in &rows {
        let cols: Vec<String> = (0..8)
            .map(|k| format!("{:.4}", if k < 3 { v[k] } else { 0.0 }))
            .collect();
        t.push_str(&format!("{w} {}\n", cols.join(" ")));
    }
    std::fs::write(path, t).unwrap();
    rows.into_iter().map(|(w, v)| (w.to_string(), v.to_vec())).collect()
}

/// gensim's `most_similar` by hand: unit vectors, their signed mean, unit again, cosine; the
/// query words left out.
fn most_similar(vecs: &[(String, Vec<f64>)], pos: &[&str], neg: &[&str]) -> Vec<(String, f64)> {
    let unit = |v: &[f64]| {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| x / n).collect::<Vec<_>>()
    };
    let get = |w: &str| unit(&vecs.iter().find(|(x, _)| x == w).unwrap().1);
    let mut q = vec![0.0; 3];
    for w in pos {
        q.iter_mut().zip(get(w)).for_each(|(a, b)| *a += b);
    }
    for w in neg {
        q.iter_mut().zip(get(w)).for_each(|(a, b)| *a -= b);
    }
    let q = unit(&q);
    let mut r: Vec<(String, f64)> = vecs
        .iter()
        .filter(|(w, _)| !pos.contains(&w.as_str()) && !neg.contains(&w.as_str()))
        .map(|(w, v)| (w.clone(), unit(v).iter().zip(&q).map(|(a, b)| a * b).sum()))
        .collect();
    r.sort_by(|a, b| b.1.total_cmp(&a.1));
    r
}

#[test]
fn word_vectors_answer_positive_and_negative_queries_in_predict_and_serve() {
    let d = scratch("predict-w2v");
    let file = d.join("v.txt");
    let vecs = toy_vectors(&file);
    let want = most_similar(&vecs, &["king", "woman"], &["man"]);
    assert_eq!(want[0].0, "queen");
    let v = file.to_str().unwrap();
    let ok_out = |args: &[&str], input: &str| {
        let mut c = seqlab();
        c.args(["predict"]).args(args);
        ok(with_stdin(c, input))
    };
    let out = jsonl(&ok_out(
        &["--vectors", v, "--format", "jsonl", "-n", "3"],
        "king woman -man\nqueen\n",
    ));
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["positive"], serde_json::json!(["king", "woman"]));
    assert_eq!(out[0]["negative"], serde_json::json!(["man"]));
    for (got, (w, s)) in out[0]["similar"].as_array().unwrap().iter().zip(&want) {
        assert_eq!(got["word"], *w.as_str());
        assert!((got["similarity"].as_f64().unwrap() - s).abs() < 1e-5, "{got} vs {s}");
    }
    assert_eq!(out[1]["similar"][0]["word"], most_similar(&vecs, &["queen"], &[])[0].0);
    // Flags instead of input lines; a folder holding vectors.txt works as --checkpoint.
    let flags = ok_out(
        &[
            "--vectors",
            v,
            "-n",
            "3",
            "--positive",
            "king",
            "--positive",
            "woman",
            "--negative",
            "man",
        ],
        "",
    );
    std::fs::create_dir_all(d.join("w2v-run")).unwrap();
    std::fs::copy(&file, d.join("w2v-run/vectors.txt")).unwrap();
    let from_dir = ok_out(
        &["--checkpoint", d.join("w2v-run").to_str().unwrap(), "-n", "3"],
        "king woman -man\n",
    );
    assert_eq!(flags, from_dir);
    assert!(flags.starts_with("queen\t"), "{flags}");
    assert_eq!(flags.lines().count(), 3);
    let mut c = seqlab();
    c.args(["predict", "--vectors", v]);
    let e = failed(with_stdin(c, "king\nking nope -zilch\n"));
    assert!(
        e.contains("<stdin>:2") && e.contains("nope") && e.contains("zilch"),
        "{e}"
    );

    let (mut child, _err, port) = start_serve(&["--vectors".into(), format!("vec={v}")]);
    let (s1, pn) = post(
        port,
        "/v1/similar",
        r#"{"positive": ["king", "woman"], "negative": ["man"], "n": 3}"#,
    );
    let (s2, one) = post(port, "/v1/similar", r#"{"word": "queen", "n": 1}"#);
    let (s3, bad) = post(port, "/v1/similar", r#"{"word": "king", "positive": ["queen"]}"#);
    let (s4, unknown) = post(port, "/v1/similar", r#"{"positive": ["nope"]}"#);
    let _ = child.kill();
    let _ = child.wait();
    assert!(s1.contains("200"), "{s1} {pn}");
    let pn: Value = serde_json::from_str(&pn).unwrap();
    assert_eq!(pn["similar"], out[0]["similar"], "served = predicted");
    assert!(
        s2.contains("200") && one.contains(&format!("\"{}\"", out[1]["similar"][0]["word"].as_str().unwrap())),
        "{one}"
    );
    assert!(s3.contains("400") && bad.contains("not both"), "{s3} {bad}");
    assert!(s4.contains("400") && unknown.contains("nope"), "{s4} {unknown}");
    let _ = std::fs::remove_dir_all(d);
}

fn hf_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../seqlab-bert/tests/fixtures/hf_bert")
        .join(name)
}

/// Hugging Face folders: a `BertForSequenceClassification` gives `id2label`'s labels with
/// HF's probabilities, a `BertForMaskedLM` fills `[MASK]`s with HF's candidates (the numbers
/// come from `scripts/make_hf_bert_fixtures.py`), the M2M100 export translates as
/// `seqlab translate`; a bare encoder and misplaced flags are clear errors.
#[test]
fn hugging_face_folders_predict() {
    let cls = hf_fixture("predict_cls");
    let want: Value = serde_json::from_str(&std::fs::read_to_string(cls.join("expected.json")).unwrap()).unwrap();
    let case = &want["cases"][0];
    let out = jsonl(&predict(
        &cls,
        &["--format", "jsonl"],
        &format!("\n{}\n", case["text"].as_str().unwrap()),
    ));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["line"], 2);
    check_probabilities(&out[0], 3);
    for p in out[0]["probabilities"].as_array().unwrap() {
        let k = want["labels"]
            .as_array()
            .unwrap()
            .iter()
            .position(|l| l == &p["label"])
            .unwrap();
        let hf = case["probabilities"][k].as_f64().unwrap();
        assert!((p["probability"].as_f64().unwrap() - hf).abs() < 1e-5, "{p} vs HF {hf}");
    }
    let text = predict(&cls, &["--top-k", "1"], "light\n");
    assert_eq!(text.trim().split('\t').count(), 2, "{text}");

    let mlm = hf_fixture("predict_mlm");
    let want: Value = serde_json::from_str(&std::fs::read_to_string(mlm.join("expected.json")).unwrap()).unwrap();
    let case = &want["cases"][1]; // two masks
    let out = jsonl(&predict(
        &mlm,
        &["--format", "jsonl", "--top-k", "3"],
        case["text"].as_str().unwrap(),
    ));
    let masks = out[0]["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 2);
    for (m, w) in masks.iter().zip(case["masks"].as_array().unwrap()) {
        let m = m.as_array().unwrap();
        assert_eq!(m.len(), 3);
        for (c, wc) in m.iter().zip(w.as_array().unwrap()) {
            assert_eq!(c["token"], wc["token"]);
        }
    }
    let text = predict(&mlm, &[], case["text"].as_str().unwrap());
    assert_eq!(text.trim_end().split('\t').count(), 2, "{text}");
    let e = predict_fails(&mlm, &[], "a line\nno mask here\n");
    assert!(e.contains("<stdin>:1") && e.contains("[MASK]"), "{e}");
    let e = predict_fails(&mlm, &["--horizon", "3"], "[MASK]\n");
    assert!(e.contains("--horizon") && e.contains("fill-mask"), "{e}");
    let e = predict_fails(&hf_fixture("l3_bare"), &[], "text\n");
    assert!(
        e.contains("no head") && e.contains("seqlab finetune --init-from"),
        "{e}"
    );

    let mt = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seqlab-mt/tests/fixtures/hf_m2m100/model");
    let src = "In the beginning God created the heaven and the earth.\n";
    let translated = predict(&mt, &[], src);
    let mut c = seqlab();
    c.args(["translate", "--checkpoint"]).arg(&mt);
    assert_eq!(translated, ok(with_stdin(c, src)));
}
