//! Fuzz-style test of checkpoint loading (issue 13): `VarStore::load_safetensors` and
//! `OptimizerState::load_safetensors` on thousands of corrupted, cut-off and rewritten files.
//! None may panic, abort or hang; each load gives `Ok` or an error naming the file, and a
//! failed strict load leaves the parameters as they were.

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use seqlab_nn::varstore::Init;
use seqlab_nn::{OptimizerState, VarStore};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

fn store() -> VarStore {
    let vs = VarStore::new(1, &Device::Cpu);
    vs.param("encoder.weight", (3, 4), Init::uniform_fan(4)).unwrap();
    vs.param("encoder.bias", 3, Init::Const(0.5)).unwrap();
    vs.param("head", 2, Init::Ones).unwrap();
    vs
}

/// A valid model file and a valid optimizer-state file.
fn originals() -> &'static (Vec<u8>, Vec<u8>) {
    static BYTES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("seqlab-st-fuzz-orig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        store().save_safetensors(dir.join("m.safetensors")).unwrap();
        let st = OptimizerState {
            kind: "adamw".into(),
            step: 7,
            lr: 1e-3,
            tensors: HashMap::from([(
                "exp_avg.head".to_string(),
                Tensor::new(&[0.25f32, -1.0], &Device::Cpu).unwrap(),
            )]),
        };
        st.save_safetensors(dir.join("o.safetensors")).unwrap();
        let out = (
            std::fs::read(dir.join("m.safetensors")).unwrap(),
            std::fs::read(dir.join("o.safetensors")).unwrap(),
        );
        let _ = std::fs::remove_dir_all(&dir);
        out
    })
}

fn file(bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seqlab-st-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{:?}.safetensors", std::thread::current().id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// How a valid file is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Cut at this fraction of its length.
    Truncate(f64),
    /// Overwrite bytes at these fractions of the header (the 8-byte length + JSON).
    HeaderBytes(Vec<(f64, u8)>),
    /// Replace the 8-byte header length.
    HeaderLen(u64),
    /// Replace a piece of the JSON header text by another.
    HeaderText(&'static str, &'static str),
    /// Overwrite bytes anywhere.
    AnyBytes(Vec<(f64, u8)>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let pos_byte = prop::collection::vec((0.0..1.0f64, any::<u8>()), 1..6);
    prop_oneof![
        (0.0..1.0f64).prop_map(Damage::Truncate),
        pos_byte.clone().prop_map(Damage::HeaderBytes),
        prop_oneof![Just(0u64), Just(u64::MAX), Just(1u64 << 40), 0u64..400, any::<u64>()].prop_map(Damage::HeaderLen),
        prop::sample::select(vec![
            ("F32", "F64"),
            ("F32", "I64"),
            ("F32", "U8"),
            ("F32", "BOOL"),
            ("F32", "XYZ"),
            ("[3,4]", "[4,3]"),
            ("[3,4]", "[3000000000,4000000000]"),
            ("[3,4]", "[]"),
            ("[3]", "[0]"),
            ("[2]", "[18446744073709551615]"),
            ("\"data_offsets\":[0,", "\"data_offsets\":[9999999,"),
            ("\"data_offsets\":[", "\"data_offsets\":[-1,"),
            ("\"step\":\"7\"", "\"step\":\"-7\""),
            ("\"lr\":\"0.001\"", "\"lr\":\"fast\""),
            ("\"optimizer\"", "\"optimiser\""),
            ("encoder.bias", "encoder.biaz"),
            ("head", "\u{0}head"),
        ])
        .prop_map(|(a, b)| Damage::HeaderText(a, b)),
        pos_byte.prop_map(Damage::AnyBytes),
    ]
}

fn apply(orig: &[u8], d: &Damage) -> Vec<u8> {
    let mut b = orig.to_vec();
    let header_end = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    match d {
        Damage::Truncate(f) => b.truncate((*f * b.len() as f64) as usize),
        Damage::HeaderBytes(v) => v.iter().for_each(|&(f, x)| b[(f * header_end as f64) as usize] = x),
        Damage::HeaderLen(n) => b[..8].copy_from_slice(&n.to_le_bytes()),
        Damage::HeaderText(from, to) => {
            let json = String::from_utf8_lossy(&b[8..header_end]).replace(from, to);
            let mut out = (json.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(json.as_bytes());
            out.extend_from_slice(&b[header_end..]);
            b = out;
        }
        Damage::AnyBytes(v) => {
            let n = b.len();
            v.iter().for_each(|&(f, x)| b[((f * n as f64) as usize).min(n - 1)] = x)
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_checkpoints_load_or_fail_cleanly(d in damage(), strict in any::<bool>()) {
        let (model, optim) = originals();
        let p = file(&apply(model, &d));
        let vs = store();
        let before: Vec<Vec<f32>> = vs
            .trainable()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        if let Err(e) = vs.load_safetensors(&p, strict) {
            prop_assert!(e.to_string().contains(".safetensors"), "error does not name the file: {e}");
            if strict {
                let after: Vec<Vec<f32>> = vs
                    .trainable()
                    .iter()
                    .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    .collect();
                prop_assert!(
                    after.iter().flatten().zip(before.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "a failed strict load changed parameters"
                );
            }
        }
        let p = file(&apply(optim, &d));
        if let Err(e) = OptimizerState::load_safetensors(&p) {
            prop_assert!(e.to_string().contains(".safetensors"), "error does not name the file: {e}");
        }
    }
}
