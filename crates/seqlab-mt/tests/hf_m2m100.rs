//! Hugging Face M2M100 export and import against fixtures that `scripts/check_hf_export.py
//! --make-fixtures` wrote with HF Transformers: a tiny Transformer trained by seqlab and
//! exported (`fixtures/hf_m2m100/model`, which HF loaded with no missing, unexpected or
//! mismatched key), HF's logits on teacher-forced test pairs (`expected.safetensors`, HF's
//! ids), HF's greedy translations (`hf_greedy.txt`) and the names and shapes of the state
//! dict HF builds from the exported config (`hf_state_dict.json`).

use candle_core::{DType, Device, Tensor};
use seqlab_mt::decode::DecodeStrategy;
use seqlab_mt::hf;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_m2m100")
}

/// HF ids → seqlab ids (the export swaps `<pad>` = 0 and `<bos>` = 1).
fn to_seqlab(t: &Tensor) -> Tensor {
    let v: Vec<Vec<i64>> = t.to_vec2().unwrap();
    let swapped: Vec<u32> = v
        .iter()
        .flatten()
        .map(|&x| match x {
            0 => 1,
            1 => 0,
            x => x as u32,
        })
        .collect();
    Tensor::from_vec(swapped, (v.len(), v[0].len()), &Device::Cpu).unwrap()
}

#[test]
fn logits_and_greedy_output_equal_transformers() {
    let dev = Device::Cpu;
    let task = hf::load(&fixture().join("model"), &dev).unwrap();
    let exp = candle_core::safetensors::load(fixture().join("expected.safetensors"), &dev).unwrap();
    let (src, tgt) = (to_seqlab(&exp["src"]), to_seqlab(&exp["tgt_in"]));
    let logits = task.net.forward(&src, &tgt, false).unwrap();
    // seqlab's vocabulary order: columns 0 and 1 trade places.
    let v = logits.dim(2).unwrap() as u32;
    let perm: Vec<u32> = [1, 0].into_iter().chain(2..v).collect();
    let logits = logits
        .index_select(&Tensor::new(perm.as_slice(), &dev).unwrap(), 2)
        .unwrap();
    // Compare where the decoder input is not padding (HF's rows there are junk either way).
    let keep = exp["tgt_in"]
        .ne(1i64)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    let diff = (logits - &exp["logits"])
        .unwrap()
        .abs()
        .unwrap()
        .broadcast_mul(&keep)
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = exp["logits"]
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(scale > 1.0, "logits of a trained model, not all near zero");
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "logits differ from HF by {diff:e} (scale {scale})"
    );

    let want: Vec<String> = std::fs::read_to_string(fixture().join("hf_greedy.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/sample/bible.en-es.test.tsv"))
            .unwrap();
    let srcs: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(want.len())
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    let got = task.translate(&srcs, &DecodeStrategy::Greedy, 8, true).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "sentence {i}: seqlab greedy vs HF greedy");
    }
}

/// The tensors seqlab exports are exactly HF's `state_dict()` of
/// `M2M100ForConditionalGeneration(config)`, less the copies HF ties to `model.shared.weight`,
/// with HF's shapes.
#[test]
fn exported_names_and_shapes_are_transformers_state_dict() {
    let dev = Device::Cpu;
    let task = hf::load(&fixture().join("model"), &dev).unwrap();
    let ours = hf::hf_tensors(&task).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("hf_state_dict.json")).unwrap()).unwrap();
    let tied: Vec<&str> = want["tied_to_shared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(tied.contains(&"lm_head.weight"), "{tied:?}");
    let mut expected = Vec::new();
    for (name, shape) in want["tensors"].as_object().unwrap() {
        if tied.contains(&name.as_str()) {
            assert!(
                !ours.contains_key(name),
                "{name} is tied in HF; seqlab must not write a copy"
            );
            continue;
        }
        let shape: Vec<usize> = shape
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let t = ours
            .get(name)
            .unwrap_or_else(|| panic!("HF expects {name}; the export lacks it"));
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        expected.push(name.clone());
    }
    let mut extra: Vec<&String> = ours.keys().filter(|k| !expected.contains(k)).collect();
    extra.sort();
    assert!(extra.is_empty(), "exported tensors HF does not have: {extra:?}");
    // And the file HF loaded is what seqlab writes (bit for bit: see round_trip_is_lossless).
    let file = candle_core::safetensors::load(fixture().join("model/model.safetensors"), &dev).unwrap();
    for (n, t) in &ours {
        assert_eq!(seqlab_nn::testing::max_abs_diff(t, &file[n]), 0.0, "{n}");
    }
}

/// seqlab → HF → seqlab → HF: the second export is bit-identical to the first (tensors,
/// names, config, tokenizer), so nothing is lost either way.
#[test]
fn round_trip_is_lossless() {
    let dev = Device::Cpu;
    let src = fixture().join("model");
    let task = hf::load(&src, &dev).unwrap();
    let out = seqlab_nn::testing::scratch_dir("hf-mt-roundtrip");
    let e = hf::export(&task, &out).unwrap();
    let a = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
    let b = candle_core::safetensors::load(out.join("model.safetensors"), &dev).unwrap();
    assert_eq!(e.tensors, a.len());
    let mut names: Vec<&String> = a.keys().collect();
    names.sort();
    let mut names_b: Vec<&String> = b.keys().collect();
    names_b.sort();
    assert_eq!(names, names_b);
    assert!(names
        .iter()
        .any(|n| n.as_str() == "model.decoder.layers.1.encoder_attn.v_proj.bias"));
    for n in names {
        assert_eq!(a[n].dims(), b[n].dims(), "{n}");
        assert_eq!(seqlab_nn::testing::max_abs_diff(&a[n], &b[n]), 0.0, "{n}");
    }
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let x: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join(f)).unwrap()).unwrap();
        let y: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap();
        assert_eq!(x, y, "{f}");
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn only_exportable_models_are_exported() {
    use seqlab_mt::task::{MtModel, PositionTable};
    let ok = MtModel {
        norm_first: true,
        positions: PositionTable::Fairseq,
        ..MtModel::default()
    };
    hf::check_exportable(&ok).unwrap();
    for (bad, key) in [
        (
            MtModel {
                norm_first: false,
                ..ok.clone()
            },
            "norm_first",
        ),
        (
            MtModel {
                positions: PositionTable::Paper,
                ..ok.clone()
            },
            "positions",
        ),
        (
            MtModel {
                share_embeddings: false,
                ..ok.clone()
            },
            "share_embeddings",
        ),
        (
            MtModel {
                d_model: 7,
                nhead: 1,
                ..ok.clone()
            },
            "d_model",
        ),
    ] {
        let e = hf::check_exportable(&bad).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
}
