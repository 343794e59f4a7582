//! BLEU and chrF against sacrebleu 2.6.0 on committed fixtures. Expected values were made once by
//! `scripts/make_metric_fixtures.py` (sacrebleu's `BLEU(**cfg).corpus_score(hyps, refs)`,
//! `CHRF(**cfg).corpus_score(...)`, and `sentence_score` with `BLEU(effective_order=True)` and
//! `CHRF()`), reading the files as sacrebleu's CLI does.

use std::path::{Path, PathBuf};

use seqlab_metrics::bleu::{corpus_bleu, sentence_bleu, BleuConfig};
use seqlab_metrics::chrf::{corpus_chrf, sentence_chrf, ChrfConfig};
use seqlab_metrics::text::read_lines;
use serde_json::Value;

const TOL: f64 = 1e-9;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Turns a sacrebleu keyword-argument dict from the fixture into our config.
fn bleu_config(kw: &Value) -> BleuConfig {
    let mut cfg = BleuConfig::default();
    for (k, v) in kw.as_object().unwrap() {
        match k.as_str() {
            "lowercase" => cfg.lowercase = v.as_bool().unwrap(),
            "tokenize" => cfg.tokenizer = v.as_str().unwrap().parse().unwrap(),
            "smooth_method" => cfg.smooth_method = v.as_str().unwrap().parse().unwrap(),
            "smooth_value" => cfg.smooth_value = Some(v.as_f64().unwrap()),
            "effective_order" => cfg.effective_order = v.as_bool().unwrap(),
            other => panic!("fixture uses unknown BLEU option {other}"),
        }
    }
    cfg
}

fn chrf_config(kw: &Value) -> ChrfConfig {
    let mut cfg = ChrfConfig::default();
    for (k, v) in kw.as_object().unwrap() {
        match k.as_str() {
            "word_order" => cfg.word_order = v.as_u64().unwrap() as usize,
            "lowercase" => cfg.lowercase = v.as_bool().unwrap(),
            "whitespace" => cfg.whitespace = v.as_bool().unwrap(),
            "eps_smoothing" => cfg.eps_smoothing = v.as_bool().unwrap(),
            other => panic!("fixture uses unknown chrF option {other}"),
        }
    }
    cfg
}

fn load(case: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    let dir = fixtures();
    let hyps = read_lines(&dir.join(case["hyp"].as_str().unwrap())).unwrap();
    let refs = case["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| read_lines(&dir.join(r.as_str().unwrap())).unwrap())
        .collect();
    (hyps, refs)
}

fn close(got: f64, want: &Value, what: &str) {
    let want = want.as_f64().unwrap();
    assert!((got - want).abs() <= TOL, "{what}: got {got}, sacrebleu {want}");
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    let exp = expected();
    let configs = &exp["meta"]["configs"]["bleu"];
    let mut checked = 0;
    for case in exp["cases"].as_array().unwrap() {
        let (hyps, refs) = load(case);
        for (name, want) in case["bleu"].as_object().unwrap() {
            let what = format!("{} / {name}", case["name"]);
            let cfg = bleu_config(&configs[name]);
            let b = corpus_bleu(&hyps, &refs, &cfg).unwrap();
            close(b.score, &want["score"], &format!("{what} score"));
            close(b.bp, &want["bp"], &format!("{what} bp"));
            close(b.ratio, &want["ratio"], &format!("{what} ratio"));
            for (i, p) in b.precisions.iter().enumerate() {
                close(*p, &want["precisions"][i], &format!("{what} precision {}", i + 1));
            }
            assert_eq!(b.sys_len, want["sys_len"].as_u64().unwrap(), "{what} sys_len");
            assert_eq!(b.ref_len, want["ref_len"].as_u64().unwrap(), "{what} ref_len");
            if name != "smooth_add_k" {
                // sacrebleu's add-k adds k into the counts and totals it returns; ours stay raw.
                assert_eq!(b.counts, u64s(&want["counts"]), "{what} counts");
                assert_eq!(b.totals, u64s(&want["totals"]), "{what} totals");
            }
            assert_eq!(b.to_string(), want["line"].as_str().unwrap(), "{what} printed line");
            checked += 1;
        }
    }
    assert!(checked >= 80, "only {checked} BLEU fixtures checked");
}

#[test]
fn corpus_chrf_matches_sacrebleu() {
    let exp = expected();
    let configs = &exp["meta"]["configs"]["chrf"];
    let mut checked = 0;
    for case in exp["cases"].as_array().unwrap() {
        let (hyps, refs) = load(case);
        for (name, want) in case["chrf"].as_object().unwrap() {
            let what = format!("{} / {name}", case["name"]);
            let c = corpus_chrf(&hyps, &refs, &chrf_config(&configs[name])).unwrap();
            close(c.score, &want["score"], &what);
            assert_eq!(c.to_string(), want["line"].as_str().unwrap(), "{what} printed line");
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} chrF fixtures checked");
}

#[test]
fn sentence_scores_match_sacrebleu() {
    let exp = expected();
    let bleu_cfg = BleuConfig {
        effective_order: true,
        ..Default::default()
    };
    for case in exp["cases"].as_array().unwrap() {
        let (hyps, refs) = load(case);
        for (i, hyp) in hyps.iter().enumerate() {
            let seg_refs: Vec<&str> = refs.iter().map(|r| r[i].as_str()).collect();
            let what = format!("{} segment {i}", case["name"]);
            let b = sentence_bleu(hyp, &seg_refs, &bleu_cfg).unwrap();
            close(b.score, &case["sentence_bleu"][i], &format!("{what} BLEU"));
            let c = sentence_chrf(hyp, &seg_refs, &ChrfConfig::default()).unwrap();
            close(c.score, &case["sentence_chrf"][i], &format!("{what} chrF"));
        }
    }
}
