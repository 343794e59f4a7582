//! Hugging Face BERT import against HF Transformers' own outputs (fixtures made by
//! `scripts/make_hf_bert_fixtures.py`; see its docstring for what each case covers).

use candle_core::{DType, Device, Tensor};
use seqlab_bert::data::BertTokenizer;
use seqlab_bert::hf::{self, HfBert};
use seqlab_bert::model::{BertForPreTraining, BertInput, BertModel};
use seqlab_nn::VarStore;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_bert")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The worst |seqlab - HF| over the tensor, relative to max(1, |HF|).
fn worst(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

const TOL: f32 = 1e-5;

struct Case {
    name: &'static str,
    layers: usize,
    heads: bool,
    pooler: bool,
}

const CASES: [Case; 4] = [
    Case {
        name: "l1_pretraining",
        layers: 1,
        heads: true,
        pooler: true,
    },
    Case {
        name: "l2_pretraining_gamma_beta",
        layers: 2,
        heads: true,
        pooler: true,
    },
    Case {
        name: "l3_bare",
        layers: 3,
        heads: false,
        pooler: true,
    },
    Case {
        name: "l2_bare_gamma_beta_no_pooler",
        layers: 2,
        heads: false,
        pooler: false,
    },
];

#[test]
fn outputs_equal_transformers() {
    let dev = Device::Cpu;
    for case in &CASES {
        let dir = fixtures().join(case.name);
        let h = HfBert::load(&dir, &dev).unwrap();
        assert_eq!(h.cfg.num_hidden_layers, case.layers, "{}", case.name);
        assert_eq!(
            (h.weights.parts.pooler, h.weights.parts.mlm, h.weights.parts.nsp),
            (case.pooler, case.heads, case.heads),
            "{}",
            case.name
        );
        let exp = candle_core::safetensors::load(dir.join("expected.safetensors"), &dev).unwrap();
        let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
        let segments = exp["token_type_ids"].to_dtype(DType::U32).unwrap();
        // HF's attention_mask is 1 = attend; seqlab's padding mask is 1 = padding.
        let padding = exp["attention_mask"].eq(0i64).unwrap().to_dtype(DType::U8).unwrap();
        assert!(
            padding.sum_all().unwrap().to_scalar::<u8>().unwrap() > 0,
            "the fixture must have padding"
        );
        let x = BertInput {
            ids: &ids,
            segments: &segments,
            padding: &padding,
        };
        let vs = VarStore::new(0, &dev);
        let (b, l) = ids.dims2().unwrap();
        let mut report = Vec::new();
        if case.heads {
            let m = BertForPreTraining::new(&h.cfg, &vs).unwrap();
            vs.load_state_dict(&h.weights.tensors, true).unwrap();
            let hidden = m.bert.forward(&x, false).unwrap();
            let all = Tensor::arange(0u32, (b * l) as u32, &dev).unwrap();
            let (mlm, nsp) = m.forward(&x, &all, false).unwrap();
            let mlm = mlm.reshape((b, l, h.cfg.vocab_size)).unwrap();
            report.push(("last_hidden_state", worst(&hidden, &exp["last_hidden_state"])));
            report.push((
                "pooler_output",
                worst(&m.bert.pool(&hidden).unwrap(), &exp["pooler_output"]),
            ));
            report.push(("prediction_logits", worst(&mlm, &exp["prediction_logits"])));
            report.push(("seq_relationship_logits", worst(&nsp, &exp["seq_relationship_logits"])));
        } else {
            let m = BertModel::new(&h.cfg, &vs.pp("bert")).unwrap();
            let mut t = h.weights.tensors.clone();
            if !case.pooler {
                for (n, v) in vs.state_dict() {
                    if n.starts_with("bert.pooler.") {
                        t.insert(n, v.copy().unwrap());
                    }
                }
            }
            vs.load_state_dict(&t, true).unwrap();
            let hidden = m.forward(&x, false).unwrap();
            report.push(("last_hidden_state", worst(&hidden, &exp["last_hidden_state"])));
            if case.pooler {
                report.push(("pooler_output", worst(&m.pool(&hidden).unwrap(), &exp["pooler_output"])));
            }
        }
        for (what, d) in report {
            assert!(d <= TOL, "{}: {what} differs from HF by {d:e}", case.name);
        }
    }
}

/// The hub's two LayerNorm spellings and the two prefixes give the same seqlab tensors.
#[test]
fn both_naming_schemes_map_to_the_same_names() {
    let dev = Device::Cpu;
    let dir = fixtures().join("l2_pretraining_gamma_beta");
    let raw = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).unwrap();
    assert!(
        raw.keys().any(|k| k.ends_with("LayerNorm.gamma")),
        "fixture uses gamma/beta"
    );
    let cfg = hf::read_config(&dir).unwrap();
    let old = hf::load_weights(&dir, &cfg, &dev).unwrap();
    // The same tensors renamed to the new spelling and without the `bert.` prefix.
    let renamed: HashMap<String, Tensor> = raw
        .iter()
        .map(|(k, v)| {
            let k = k
                .strip_prefix("bert.")
                .unwrap_or(k)
                .replace(".gamma", ".weight")
                .replace(".beta", ".bias");
            (k, v.clone())
        })
        .collect();
    let tmp = seqlab_nn::testing::scratch_dir("hf-names");
    std::fs::copy(dir.join("config.json"), tmp.join("config.json")).unwrap();
    candle_core::safetensors::save(&renamed, tmp.join("model.safetensors")).unwrap();
    let new = hf::load_weights(&tmp, &cfg, &dev).unwrap();
    let mut a: Vec<_> = old.tensors.keys().collect();
    let mut b: Vec<_> = new.tensors.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for k in a {
        assert_eq!(
            seqlab_nn::testing::max_abs_diff(&old.tensors[k], &new.tensors[k]),
            0.0,
            "{k}"
        );
    }
    std::fs::remove_dir_all(&tmp).ok();
}

fn read_ids(path: &Path) -> Vec<Vec<u32>> {
    let bytes = std::fs::read(path).unwrap();
    let words: Vec<u32> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
        .collect();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < words.len() {
        let n = words[i] as usize;
        out.push(words[i + 1..i + 1 + n].to_vec());
        i += 1 + n;
    }
    out
}

/// The texts of the tokenizer fixture, read as the generator read them.
fn texts() -> Vec<String> {
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer/texts.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for s in spec["sources"].as_array().unwrap() {
        let (file, col, n) = (s[0].as_str().unwrap(), s[1].as_u64(), s[2].as_u64().unwrap() as usize);
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        for line in text.split('\n').filter(|l| !l.trim().is_empty()).take(n) {
            out.push(match col {
                Some(c) => line.split('\t').nth(c as usize).unwrap().to_string(),
                None => line.to_string(),
            });
        }
    }
    out.extend(
        spec["extra"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string()),
    );
    out
}

fn check_ids(tok: &BertTokenizer, what: &str) {
    let texts = texts();
    let want = read_ids(&fixtures().join("tokenizer/ids.bin"));
    assert_eq!(texts.len(), want.len());
    assert!(texts.len() >= 2000, "a few thousand texts");
    let mut bad = Vec::new();
    for (t, w) in texts.iter().zip(&want) {
        let mut got = vec![tok.cls];
        got.extend(tok.encode(t).unwrap());
        got.push(tok.sep);
        if &got != w {
            bad.push(format!("{t:?}: {got:?} vs HF {w:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} texts differ, e.g. {}",
        bad.len(),
        texts.len(),
        bad[0]
    );
}

#[test]
fn wordpiece_ids_equal_transformers() {
    let dir = fixtures().join("tokenizer");
    // From HF's tokenizer.json.
    let tok = hf::load_tokenizer(&dir).unwrap();
    assert_eq!((tok.pad, tok.cls, tok.sep, tok.mask), (0, 2, 3, 4));
    check_ids(&tok, "tokenizer.json");
    // From vocab.txt + tokenizer_config.json alone (the older hub layout).
    let tmp = seqlab_nn::testing::scratch_dir("hf-vocab");
    for f in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), tmp.join(f)).unwrap();
    }
    let from_vocab = hf::load_tokenizer(&tmp).unwrap();
    check_ids(&from_vocab, "vocab.txt");
    // What seqlab saves loads back as the same tokenizer.
    from_vocab.save(&tmp.join("tokenizer.json")).unwrap();
    let back = BertTokenizer::load(&tmp.join("tokenizer.json")).unwrap();
    check_ids(&back, "saved tokenizer.json");
    // Cased: `do_lower_case = false` keeps capitals apart (unknown to this uncased vocab).
    std::fs::remove_file(tmp.join("tokenizer.json")).unwrap();
    std::fs::write(tmp.join("tokenizer_config.json"), r#"{"do_lower_case": false}"#).unwrap();
    let cased = hf::load_tokenizer(&tmp).unwrap();
    assert_ne!(cased.encode("THE").unwrap(), from_vocab.encode("THE").unwrap());
    std::fs::remove_dir_all(&tmp).ok();
}

fn err(r: anyhow::Result<impl Sized>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn unsupported_checkpoints_are_clear_errors() {
    let dev = Device::Cpu;
    let src = fixtures().join("l1_pretraining");
    let tmp = seqlab_nn::testing::scratch_dir("hf-bad");
    for f in ["config.json", "vocab.txt"] {
        std::fs::copy(src.join(f), tmp.join(f)).unwrap();
    }
    // Pickle only: says how to convert.
    std::fs::write(tmp.join("pytorch_model.bin"), b"not read").unwrap();
    let e = err(HfBert::load(&tmp, &dev));
    assert!(
        e.contains("pytorch_model.bin") && e.contains("safe_serialization=True") && e.contains("safetensors"),
        "{e}"
    );
    // A tensor the model does not have, and a missing one, are named.
    let mut t = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
    // (`qa_outputs` is BertForQuestionAnswering's head; a classifier head without its bias
    // is incomplete.)
    t.insert(
        "qa_outputs.weight".into(),
        Tensor::zeros((2, 16), DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&t, tmp.join("model.safetensors")).unwrap();
    assert!(err(HfBert::load(&tmp, &dev)).contains("qa_outputs.weight"));
    t.remove("qa_outputs.weight");
    t.insert(
        "classifier.weight".into(),
        Tensor::zeros((2, 16), DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&t, tmp.join("model.safetensors")).unwrap();
    let e = err(HfBert::load(&tmp, &dev));
    assert!(e.contains("classifier.bias None"), "{e}");
    t.remove("classifier.weight");
    t.remove("bert.encoder.layer.0.output.dense.bias");
    candle_core::safetensors::save(&t, tmp.join("model.safetensors")).unwrap();
    let e = err(HfBert::load(&tmp, &dev));
    assert!(e.contains("missing encoder.layer.0.output.dense.bias"), "{e}");
    // An activation seqlab does not compute exactly is refused, naming the key.
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let gelu_new = cfg.replace("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu_new\"");
    assert_ne!(cfg, gelu_new);
    std::fs::write(tmp.join("config.json"), gelu_new).unwrap();
    let e = err(hf::read_config(&tmp));
    assert!(e.contains("hidden_act") && e.contains("config.json"), "{e}");
    std::fs::remove_dir_all(&tmp).ok();
}

/// `bert-finetune` with `init_from` an HF folder: the encoder starts as HF's weights, the
/// run trains, and its checkpoint (WordPiece tokenizer included) loads for evaluation.
#[test]
fn finetune_starts_from_a_hugging_face_folder() {
    use seqlab_bert::task::{FinetuneData, FinetuneTask, FinetuneTaskConfig};
    use seqlab_train::{BuildFrom, LoopConfig, Purpose, RunConfig, RunSettings, Split, Task};
    let dir = seqlab_nn::testing::scratch_dir("hf-ft");
    let hf_dir = fixtures().join("l1_pretraining");
    let tsv: String = (0..24)
        .map(|i| {
            let (t, l) = if i % 2 == 0 {
                ("in the beginning god created the heaven", "a")
            } else {
                ("and the earth was without form and void", "b")
            };
            format!("{t}\t{l}\n")
        })
        .collect();
    let data = dir.join("d.tsv");
    std::fs::write(&data, tsv).unwrap();
    let cfg = RunConfig {
        run: RunSettings {
            task: FinetuneTask::NAME.into(),
            run_dir: Some(dir.join("run")),
            optim: FinetuneTask::default_optim(),
            schedule: None,
            train: LoopConfig {
                max_steps: 2,
                eval_every: 2,
                log_every: 1,
                progress: false,
                ..LoopConfig::default()
            },
        },
        task: FinetuneTaskConfig {
            pretrained: PathBuf::new(),
            init_from: Some(hf_dir.clone()),
            from_scratch: false,
            data: FinetuneData {
                train: data.clone(),
                valid: Some(data.clone()),
                test: Some(data),
                max_len: 16,
                batch_size: 8,
                max_eval_batches: None,
            },
        },
    };
    let vs = VarStore::new(5, &Device::Cpu);
    let fresh = BuildFrom {
        checkpoint: None,
        purpose: Purpose::Train,
    };
    FinetuneTask::build(&cfg, &vs, fresh).unwrap();
    let h = HfBert::load(&hf_dir, &Device::Cpu).unwrap();
    let mut n = 0;
    for (name, var) in vs.trainable() {
        if let Some(t) = h.weights.tensors.get(&name) {
            assert_eq!(seqlab_nn::testing::max_abs_diff(var.as_tensor(), t), 0.0, "{name}");
            n += 1;
        }
    }
    assert_eq!(n, h.weights.tensors.keys().filter(|k| k.starts_with("bert.")).count());
    let out = seqlab_train::run::train::<FinetuneTask>(&cfg, false).unwrap();
    let rep = out.test_report.expect("data.test was given");
    let loaded = seqlab_train::load::<FinetuneTask>(&cfg.run_dir()).unwrap();
    assert_eq!(
        loaded.task.report(Split::Test, None).unwrap().json["accuracy"],
        rep.report.json["accuracy"]
    );
    // `pretrained` and `init_from` together are refused.
    let mut both = cfg.clone();
    both.task.pretrained = dir.join("run");
    let e = err(FinetuneTask::build(&both, &VarStore::new(0, &Device::Cpu), fresh));
    assert!(e.contains("init_from") && e.contains("pretrained"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

fn expected_json(case: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(case).join("expected.json")).unwrap()).unwrap()
}

/// A `BertForSequenceClassification` folder: labels from `id2label` in id order, and HF's
/// probabilities, texts batched together (padding must not change them).
#[test]
fn sequence_classifier_probabilities_equal_transformers() {
    let dir = fixtures().join("predict_cls");
    let hf::HfPredictor::Classifier(m) = hf::load_predictor(&dir, &Device::Cpu).unwrap() else {
        panic!("a classifier head must give a classifier");
    };
    let want = expected_json("predict_cls");
    let labels: Vec<&str> = want["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(m.labels, labels);
    let cases = want["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let got = m.probabilities(&texts).unwrap();
    let mut spread = 0.0f32;
    for (c, p) in cases.iter().zip(&got) {
        let w: Vec<f32> = c["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(p.len(), w.len());
        for (a, b) in p.iter().zip(&w) {
            assert!((a - b).abs() <= TOL, "{}: {p:?} vs HF {w:?}", c["text"]);
        }
        spread = spread.max(w.iter().cloned().fold(0.0, f32::max) - w.iter().cloned().fold(1.0, f32::min));
    }
    assert!(spread > 0.05, "the fixture's probabilities must differ between labels");
}

/// A `BertForMaskedLM` folder (no pooler, no NSP head): the top 5 pieces at every `[MASK]`
/// and their probabilities equal HF's, for texts with one and with two masks, batched.
#[test]
fn fill_mask_equals_transformers() {
    let dir = fixtures().join("predict_mlm");
    let hf::HfPredictor::FillMask(m) = hf::load_predictor(&dir, &Device::Cpu).unwrap() else {
        panic!("an MLM head must give fill-mask");
    };
    let want = expected_json("predict_mlm");
    let cases = want["cases"].as_array().unwrap();
    let seqs: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| m.encode(c["text"].as_str().unwrap()).unwrap())
        .collect();
    let got = m.fill(&seqs, 5).unwrap();
    let mut masks = 0;
    for (c, per_text) in cases.iter().zip(&got) {
        let w = c["masks"].as_array().unwrap();
        assert_eq!(per_text.len(), w.len(), "{}", c["text"]);
        for (cands, wm) in per_text.iter().zip(w) {
            masks += 1;
            for ((tok, p), wc) in cands.iter().zip(wm.as_array().unwrap()) {
                assert_eq!(tok, wc["token"].as_str().unwrap(), "{}", c["text"]);
                let wp = wc["probability"].as_f64().unwrap() as f32;
                assert!((p - wp).abs() <= TOL, "{}: {tok} {p} vs HF {wp}", c["text"]);
            }
        }
    }
    assert_eq!(masks, 4);
    assert!(format!("{:#}", m.encode("no mask here").unwrap_err()).contains("no [MASK]"));
    let long = vec!["god"; 60].join(" ") + " [MASK]";
    assert!(format!("{:#}", m.encode(&long).unwrap_err()).contains("max_position_embeddings"));
}

/// Folders without a head to predict with, and classifier configs seqlab does not answer,
/// are errors that say what to do or which key is wrong.
#[test]
fn prediction_needs_a_supported_head() {
    let e = err(hf::load_predictor(&fixtures().join("l3_bare"), &Device::Cpu));
    assert!(
        e.contains("no head") && e.contains("seqlab finetune --init-from"),
        "{e}"
    );
    let src = fixtures().join("predict_cls");
    let tmp = seqlab_nn::testing::scratch_dir("hf-cls-bad");
    for f in ["model.safetensors", "vocab.txt"] {
        std::fs::copy(src.join(f), tmp.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    for (from, to, key) in [
        (
            "\"hidden_act\"",
            "\"problem_type\": \"multi_label_classification\",\n  \"hidden_act\"",
            "problem_type",
        ),
        ("\"2\": \"gospel\"", "\"7\": \"gospel\"", "id2label"),
    ] {
        let bad = cfg.replace(from, to);
        assert_ne!(bad, cfg);
        std::fs::write(tmp.join("config.json"), bad).unwrap();
        let e = err(hf::load_predictor(&tmp, &Device::Cpu));
        assert!(e.contains(key) && e.contains("config.json"), "{e}");
    }
    std::fs::remove_dir_all(&tmp).ok();
}
