use super::*;
use crate::testing::{assert_all_params_get_grad, max_abs_diff, randn};
use crate::{AdamW, AdamWConfig, Optimizer, SeqRng};
use candle_core::{Device, Var};

fn cpu() -> Device {
    Device::Cpu
}

fn small_cfg() -> MambaConfig {
    MambaConfig {
        d_state: 4,
        d_conv: 3,
        ..MambaConfig::new(8)
    }
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    crate::testing::rel_err(a, b).unwrap()
}

/// Random scan inputs as Vars: u, delta, A (negative), B, C, D, z, delta_bias.
fn scan_vars(seed: u64, b: usize, l: usize, d: usize, n: usize) -> Vec<Var> {
    let v = |s: u64, shape: &[usize], scale: f64| {
        Var::from_tensor(&(randn(seed * 100 + s, shape) * scale).unwrap()).unwrap()
    };
    let a = Var::from_tensor(&randn(seed * 100 + 2, &[d, n]).exp().unwrap().neg().unwrap()).unwrap();
    vec![
        v(0, &[b, l, d], 1.0),
        v(1, &[b, l, d], 1.0),
        a,
        v(3, &[b, l, n], 1.0),
        v(4, &[b, l, n], 1.0),
        v(5, &[d], 1.0),
        v(6, &[b, l, d], 1.0),
        v(7, &[d], 0.5),
    ]
}

fn run_scan(vars: &[Var], spans: Option<&[(usize, usize)]>, fused: bool) -> ScanOutput {
    let t: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let x = ScanInputs {
        u: t[0],
        delta: t[1],
        a: t[2],
        b: t[3],
        c: t[4],
        d: t[5],
        z: t[6],
        delta_bias: t[7],
    };
    if fused {
        selective_scan(x, spans).unwrap()
    } else {
        selective_scan_composed(x, spans).unwrap()
    }
}

#[test]
fn fused_scan_matches_composed_outputs_and_all_gradients() {
    // L > the backward's chunk (64) and d_inner not a multiple of the task block (16), so
    // chunk boundaries and ragged blocks are exercised; one sequence padded on each side.
    let (b, l, d, n) = (3, 150, 20, 5);
    let vars = scan_vars(1, b, l, d, n);
    for spans in [None, Some(vec![(0, 150), (0, 97), (40, 150)])] {
        let sp = spans.as_deref();
        let f = run_scan(&vars, sp, true);
        let c = run_scan(&vars, sp, false);
        assert!(rel(&f.y, &c.y) < 1e-5, "y {}", rel(&f.y, &c.y));
        assert!(rel(&f.last_state, &c.last_state) < 1e-5);
        // The loss reads both outputs, so the last state's gradient path is checked too.
        let loss = |o: &ScanOutput| {
            let py = randn(77, o.y.dims());
            let ph = randn(78, o.last_state.dims());
            ((&o.y * py).unwrap().sum_all().unwrap() + (&o.last_state * ph).unwrap().sum_all().unwrap()).unwrap()
        };
        let gf = loss(&f).backward().unwrap();
        let gc = loss(&c).backward().unwrap();
        let names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"];
        for (name, v) in names.iter().zip(&vars) {
            let (a, e) = (gf.get(v).unwrap(), gc.get(v).unwrap());
            let err = rel(a, e);
            assert!(err < 1e-4, "grad {name} ({spans:?}): rel err {err:.2e}");
        }
    }
}

#[test]
fn fused_conv_matches_composed_outputs_and_all_gradients() {
    // L shorter and longer than the kernel; D not a multiple of the SIMD width.
    for (b, l, d, k) in [(2, 2, 5, 4), (3, 37, 21, 4), (1, 9, 8, 1)] {
        let v = |s: u64, shape: &[usize]| Var::from_tensor(&randn(s, shape)).unwrap();
        let (x, w, bias) = (v(1, &[b, l, d]), v(2, &[d, 1, k]), v(3, &[d]));
        let fused = crate::kernels::causal_conv1d::causal_conv1d_silu(
            x.as_tensor(),
            &w.as_tensor().squeeze(1).unwrap(),
            bias.as_tensor(),
        )
        .unwrap();
        let composed = conv_silu_composed(x.as_tensor(), w.as_tensor(), Some(bias.as_tensor())).unwrap();
        assert!(rel(&fused, &composed) < 1e-6, "out {}", rel(&fused, &composed));
        let p = randn(4, &[b, l, d]);
        let gf = (&fused * &p).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&composed * &p).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in [("x", &x), ("weight", &w), ("bias", &bias)] {
            let err = rel(gf.get(var).unwrap(), gc.get(var).unwrap());
            assert!(err < 1e-5, "grad {name} ({b}, {l}, {d}, {k}): rel err {err:.2e}");
        }
    }
}

#[test]
fn softplus_matches_pytorch_threshold() {
    let x = Tensor::new(&[-30f32, -1., 0., 1., 19.9, 20.5, 80.], &cpu()).unwrap();
    let y = scan::softplus(&x).unwrap().to_vec1::<f32>().unwrap();
    let want: Vec<f32> = [-30f64, -1., 0., 1., 19.9, 20.5, 80.]
        .iter()
        .map(|&v| if v > 20.0 { v as f32 } else { v.exp().ln_1p() as f32 })
        .collect();
    for (a, b) in y.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-6), "{a} vs {b}");
    }
}

#[test]
fn config_defaults_and_rejections_name_the_key() {
    let c = MambaConfig::new(40);
    assert_eq!(
        (c.d_state, c.d_conv, c.expand, c.d_inner(), c.dt_rank()),
        (16, 4, 2, 80, 3)
    );
    assert!(!c.bias && c.conv_bias);
    let bad = [
        (
            MambaConfig {
                d_state: 0,
                ..c.clone()
            },
            "d_state",
        ),
        (MambaConfig { d_conv: 0, ..c.clone() }, "d_conv"),
        (MambaConfig { expand: 0, ..c.clone() }, "expand"),
        (
            MambaConfig {
                dt_rank: DtRank::Fixed(0),
                ..c.clone()
            },
            "dt_rank",
        ),
        (
            MambaConfig {
                dt_min: -1.0,
                ..c.clone()
            },
            "dt_min",
        ),
        (
            MambaConfig {
                dt_min: 0.5,
                dt_max: 0.1,
                ..c.clone()
            },
            "dt_max",
        ),
        (
            MambaConfig {
                dt_init_floor: f64::NAN,
                ..c.clone()
            },
            "dt_init_floor",
        ),
    ];
    for (cfg, key) in bad {
        let e = Mamba::new(&cfg, &VarStore::new(0, &cpu())).unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
    }
}

#[test]
fn initialisation_follows_the_reference() {
    let vs = VarStore::new(3, &cpu());
    let cfg = MambaConfig::new(32); // d_inner 64, dt_rank 2, d_state 16
    let m = Mamba::new(&cfg, &vs).unwrap();
    let names: Vec<String> = vs.trainable().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "in_proj.weight",
            "conv1d.weight",
            "conv1d.bias",
            "x_proj.weight",
            "dt_proj.weight",
            "dt_proj.bias",
            "A_log",
            "D",
            "out_proj.weight"
        ]
    );
    assert_eq!(vs.no_weight_decay(), ["A_log", "D"]);
    let a = m.a_log.to_vec2::<f32>().unwrap();
    assert!(a.iter().all(|row| row
        .iter()
        .enumerate()
        .all(|(i, v)| (v - ((i + 1) as f32).ln()).abs() < 1e-7)));
    assert!(m.d.to_vec1::<f32>().unwrap().iter().all(|&v| v == 1.0));
    let bound = 1.0 / 2f32.sqrt();
    let w = m.dt_proj.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > 0.5 * bound));
    // softplus(bias) is the initial Δ, log-uniform in [dt_min, dt_max].
    let dt = scan::softplus(m.dt_proj.bias.as_ref().unwrap())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(dt.iter().all(|&v| (0.001 * 0.999..=0.1 * 1.001).contains(&v)), "{dt:?}");
    let logs: Vec<f32> = dt.iter().map(|v| v.ln()).collect();
    let mean = logs.iter().sum::<f32>() / logs.len() as f32;
    assert!(
        (mean - (0.001f32 * 0.1).sqrt().ln()).abs() < 0.6,
        "log-uniform mean {mean}"
    );
    // Same seed, same weights.
    let vs2 = VarStore::new(3, &cpu());
    let m2 = Mamba::new(&cfg, &vs2).unwrap();
    assert_eq!(max_abs_diff(&m.in_proj.weight, &m2.in_proj.weight), 0.0);
}

#[test]
fn every_parameter_gets_a_gradient() {
    for (bias, conv_bias) in [(false, true), (true, false)] {
        let vs = VarStore::new(0, &cpu());
        let cfg = MambaConfig {
            bias,
            conv_bias,
            ..small_cfg()
        };
        let m = Mamba::new(&cfg, &vs).unwrap();
        assert_all_params_get_grad(&vs, &m.forward(&randn(1, &[2, 6, 8]), None).unwrap());
    }
    for (norm, tie) in [(NormKind::RmsNorm, true), (NormKind::LayerNorm, false)] {
        let vs = VarStore::new(0, &cpu());
        let mut backbone = MambaModelConfig::new(11, 2, 8);
        backbone.block.mixer = small_cfg();
        backbone.block.norm = norm;
        let lm = MambaLmHead::new(
            &MambaLmHeadConfig {
                backbone,
                tie_embeddings: tie,
            },
            &vs,
        )
        .unwrap();
        let names: Vec<String> = vs.trainable().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"backbone.layers.1.mixer.A_log".to_string()));
        assert!(names.contains(&"backbone.norm_f.weight".to_string()));
        assert_eq!(names.contains(&"lm_head.weight".to_string()), !tie);
        let ids = Tensor::new(&[[1u32, 4, 2, 9], [0, 3, 3, 10]], &cpu()).unwrap();
        assert_all_params_get_grad(&vs, &lm.forward(&ids, None).unwrap());
    }
}

#[test]
fn padded_batch_equals_each_sequence_alone() {
    let vs = VarStore::new(5, &cpu());
    let m = Mamba::new(&small_cfg(), &vs).unwrap();
    let l = 9;
    let x = randn(11, &[3, l, 8]);
    let lengths = [9, 4, 6];
    for left in [false, true] {
        let pad = if left {
            Padding::left(&lengths, l).unwrap()
        } else {
            Padding::right(&lengths, l).unwrap()
        };
        let y = m.forward(&x, Some(&pad)).unwrap();
        for (b, &(s, e)) in pad.spans().iter().enumerate() {
            let alone = m
                .forward(&x.narrow(0, b, 1).unwrap().narrow(1, s, e - s).unwrap(), None)
                .unwrap();
            let got = y.narrow(0, b, 1).unwrap().narrow(1, s, e - s).unwrap();
            assert!(max_abs_diff(&got, &alone) < 1e-5, "left={left} b={b}");
            let rest = (y.narrow(0, b, 1).unwrap().abs().unwrap().sum_all().unwrap()
                - got.abs().unwrap().sum_all().unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
            assert!(rest.abs() < 1e-4, "padded outputs must be zero, got {rest}");
        }
        // The padding's content must not matter either.
        let noisy = (&x
            + randn(12, &[3, l, 8])
                .broadcast_mul(&(1.0 - pad.keep_mask(&cpu()).unwrap()).unwrap())
                .unwrap())
        .unwrap();
        assert!(max_abs_diff(&m.forward(&noisy, Some(&pad)).unwrap(), &y) < 1e-6);
    }
    let mask = Tensor::new(&[[0u8, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 1]], &cpu()).unwrap();
    let e = Padding::from_key_padding_mask(&mask).unwrap_err().to_string();
    assert!(e.contains("sequence 2") && e.contains("between real tokens"), "{e}");
    let ok = Padding::from_key_padding_mask(&mask.narrow(0, 0, 2).unwrap()).unwrap();
    assert_eq!(ok.spans(), &[(0, 2), (1, 4)]);
    assert!(Padding::right(&[0], 3).is_err() && Padding::left(&[4], 3).is_err());
    assert!(m.forward(&x, Some(&Padding::right(&[1, 2], l).unwrap())).is_err());
}

#[test]
fn stepping_equals_the_full_forward() {
    let vs = VarStore::new(7, &cpu());
    let cfg = MambaConfig {
        bias: true,
        ..small_cfg()
    };
    let m = Mamba::new(&cfg, &vs).unwrap();
    let (b, l) = (2, 7);
    let x = randn(21, &[b, l, 8]);
    let full = m.forward(&x, None).unwrap();
    let mut st = m.new_state(b, &cpu()).unwrap();
    for t in 0..l {
        let y = m
            .step(&x.narrow(1, t, 1).unwrap().squeeze(1).unwrap(), &mut st)
            .unwrap();
        let want = full.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
        assert!(max_abs_diff(&y, &want) < 1e-5, "t={t}: {}", max_abs_diff(&y, &want));
    }
    // Prefill the first 5 positions (right-padded batch: sequence 1 has only 2), then step.
    let pad = Padding::right(&[5, 2], 5).unwrap();
    let (_, mut st) = m.forward_with_state(&x.narrow(1, 0, 5).unwrap(), Some(&pad)).unwrap();
    let x1 = Tensor::stack(
        &[x.get(0).unwrap().get(5).unwrap(), x.get(1).unwrap().get(2).unwrap()],
        0,
    )
    .unwrap();
    let y = m.step(&x1, &mut st).unwrap();
    let want1 = m
        .forward(&x.narrow(0, 1, 1).unwrap().narrow(1, 0, 3).unwrap(), None)
        .unwrap();
    assert!(max_abs_diff(&y.get(0).unwrap(), &full.get(0).unwrap().get(5).unwrap()) < 1e-5);
    assert!(max_abs_diff(&y.get(1).unwrap(), &want1.get(0).unwrap().get(2).unwrap()) < 1e-5);
    let mut wrong = m.new_state(3, &cpu()).unwrap();
    assert!(m.step(&x1, &mut wrong).is_err());
}

/// The fused decoding step (`kernels::state_update`) against the composed one, step by step,
/// outputs and both states: d_state 4 (padded to the kernel's 8 lanes) and 16, with and without
/// biases, from a zero state and from a prefilled one.
#[test]
fn fused_step_equals_the_composed_step() {
    for (seed, cfg) in [
        (
            3,
            MambaConfig {
                bias: true,
                ..small_cfg()
            },
        ),
        (
            4,
            MambaConfig {
                d_state: 16,
                conv_bias: false,
                ..MambaConfig::new(16)
            },
        ),
    ] {
        let vs = VarStore::new(seed, &cpu());
        let m = Mamba::new(&cfg, &vs).unwrap();
        let (b, l) = (3, 6);
        let x = randn(seed + 40, &[b, l, cfg.d_model]);
        let (_, prefilled) = m.forward_with_state(&x.narrow(1, 0, 2).unwrap(), None).unwrap();
        for start in [m.new_state(b, &cpu()).unwrap(), prefilled] {
            let (mut fused, mut composed) = (start.clone(), start);
            for t in 0..l {
                let xt = x.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
                let yf = crate::ops::with_path(crate::ops::Path::Fused, || m.step(&xt, &mut fused)).unwrap();
                let yc = crate::ops::with_path(crate::ops::Path::Composed, || m.step(&xt, &mut composed)).unwrap();
                assert!(
                    max_abs_diff(&yf, &yc) < 1e-5,
                    "seed {seed} t={t}: y {}",
                    max_abs_diff(&yf, &yc)
                );
                assert!(max_abs_diff(&fused.ssm, &composed.ssm) < 1e-5, "seed {seed} t={t}: ssm");
                assert!(
                    max_abs_diff(&fused.conv, &composed.conv) < 1e-6,
                    "seed {seed} t={t}: conv"
                );
                assert_eq!(fused.ssm.dims(), composed.ssm.dims());
            }
        }
    }
}

/// The fused step has no backward (as the reference's `selective_state_update`): a gradient
/// through it is an error, never a silently partial gradient; the composed step has one.
#[test]
fn backward_through_a_fused_step_is_an_error() {
    let vs = VarStore::new(5, &cpu());
    let m = Mamba::new(&small_cfg(), &vs).unwrap();
    let x = randn(50, &[2, 8]);
    let mut st = m.new_state(2, &cpu()).unwrap();
    let y = crate::ops::with_path(crate::ops::Path::Fused, || m.step(&x, &mut st)).unwrap();
    let err = y.sum_all().unwrap().backward().unwrap_err().to_string();
    assert!(err.contains("mamba-"), "{err}");
    let mut st = m.new_state(2, &cpu()).unwrap();
    let y = crate::ops::with_path(crate::ops::Path::Composed, || m.step(&x, &mut st)).unwrap();
    assert!(y.sum_all().unwrap().backward().is_ok());
}

#[test]
fn lm_cache_steps_equal_the_full_forward() {
    let vs = VarStore::new(9, &cpu());
    let mut backbone = MambaModelConfig::new(13, 2, 8);
    backbone.block.mixer = small_cfg();
    let lm = MambaLmHead::new(&MambaLmHeadConfig::new(backbone), &vs).unwrap();
    let ids = Tensor::new(&[[1u32, 4, 2, 9, 12, 0], [0, 3, 3, 10, 7, 7]], &cpu()).unwrap();
    let full = lm.forward(&ids, None).unwrap();
    let (pre, mut cache) = lm.forward_with_cache(&ids.narrow(1, 0, 3).unwrap(), None).unwrap();
    assert!(max_abs_diff(&pre, &full.narrow(1, 0, 3).unwrap()) < 1e-5);
    for t in 3..6 {
        let y = lm
            .step(&ids.narrow(1, t, 1).unwrap().squeeze(1).unwrap(), &mut cache)
            .unwrap();
        assert!(max_abs_diff(&y, &full.narrow(1, t, 1).unwrap().squeeze(1).unwrap()) < 1e-5);
    }
}

/// A tiny Mamba LM learns to copy: `[a1..a5, SEP, a1..a5]`, scored on the copied half. The lag
/// (6) exceeds the convolution's width, so the selective state has to carry the tokens.
#[test]
fn tiny_lm_learns_a_copy_task() {
    let (k, sep, vocab) = (5usize, 8u32, 9usize);
    let vs = VarStore::new(0, &cpu());
    let mut backbone = MambaModelConfig::new(vocab, 2, 32);
    backbone.block.mixer.d_state = 8;
    let lm = MambaLmHead::new(&MambaLmHeadConfig::new(backbone), &vs).unwrap();
    let mut opt = AdamW::for_store(&vs, AdamWConfig::new(3e-3)).unwrap();
    let mut rng = SeqRng::new(1);
    let batch = |rng: &mut SeqRng, n: usize| {
        let mut rows = Vec::new();
        for _ in 0..n {
            let a: Vec<u32> = (0..k).map(|_| rng.below(8) as u32).collect();
            let mut r = a.clone();
            r.push(sep);
            r.extend(&a);
            rows.push(r);
        }
        let flat: Vec<u32> = rows.concat();
        Tensor::from_vec(flat, (n, 2 * k + 1), &cpu()).unwrap()
    };
    // Targets: positions k..2k predict the copied tokens (k+1..2k+1).
    let copy_loss = |ids: &Tensor| -> (Tensor, f32) {
        let logits = lm.forward(&ids.narrow(1, 0, 2 * k).unwrap(), None).unwrap();
        let logits = logits.narrow(1, k, k).unwrap();
        let target = ids.narrow(1, k + 1, k).unwrap();
        let n = target.elem_count();
        let lf = logits.reshape((n, vocab)).unwrap();
        let tf = target.flatten_all().unwrap();
        let loss = crate::cross_entropy(&lf, &tf, None, 0.0, crate::Reduction::Mean).unwrap();
        let pred = lf.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let acc = pred
            .iter()
            .zip(tf.to_vec1::<u32>().unwrap())
            .filter(|(a, b)| **a == *b)
            .count() as f32
            / n as f32;
        (loss, acc)
    };
    for _ in 0..400 {
        let ids = batch(&mut rng, 32);
        let (loss, _) = copy_loss(&ids);
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let test = batch(&mut SeqRng::new(99), 256);
    let acc = copy_loss(&test).1;
    assert!(acc > 0.9, "copy accuracy {acc}");
}
