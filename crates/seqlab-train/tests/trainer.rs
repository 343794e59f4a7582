//! The loop against its contract: gradient accumulation, NaN handling, exact resume.

use anyhow::Result;
use candle_core::{Device, Tensor};
use seqlab_nn::optim::{AdamW, AdamWConfig};
use seqlab_nn::{Linear, LinearConfig, SeqRng, VarStore};
use seqlab_train::trainer::{LoopConfig, TrainTask, Trainer};
use seqlab_train::Schedule;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Linear regression on fixed random data; micro-batch `index` covers rows
/// `index*micro..(index+1)*micro`.
struct Toy {
    lin: Linear,
    x: Tensor,
    y: Tensor,
    micro: usize,
    nan_at: Option<usize>,
    calls: usize,
}

impl Toy {
    fn new(vs: &VarStore, micro: usize) -> Self {
        let lin = Linear::new(&LinearConfig::new(3, 2), vs).unwrap();
        let mut r = SeqRng::new(5);
        let x = r.normal((16, 3), 0.0, 1.0, &Device::Cpu).unwrap();
        let y = r.normal((16, 2), 0.0, 1.0, &Device::Cpu).unwrap();
        Self {
            lin,
            x,
            y,
            micro,
            nan_at: None,
            calls: 0,
        }
    }
}

impl TrainTask for Toy {
    fn batches_per_epoch(&self) -> usize {
        16 / self.micro
    }
    fn train_loss(&mut self, _epoch: u64, index: usize) -> Result<(Tensor, usize)> {
        self.calls += 1;
        if self.nan_at == Some(self.calls) {
            return Ok((Tensor::new(f32::NAN, &Device::Cpu)?, 1));
        }
        let x = self.x.narrow(0, index * self.micro, self.micro)?;
        let y = self.y.narrow(0, index * self.micro, self.micro)?;
        let d = (self.lin.forward(&x)? - y)?;
        Ok((d.sqr()?.mean_all()?, self.micro))
    }
    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        let d = (self.lin.forward(&self.x)? - &self.y)?;
        Ok(BTreeMap::from([(
            "loss".to_string(),
            d.sqr()?.mean_all()?.to_scalar::<f32>()? as f64,
        )]))
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seqlab-trainer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn trainer(vs: &VarStore, cfg: LoopConfig, dir: &PathBuf) -> Trainer {
    let opt = AdamW::new(vs.trainable(), AdamWConfig::new(0.05)).unwrap();
    Trainer::new(
        cfg,
        vs.clone(),
        Box::new(opt),
        Schedule::Constant { lr: 0.05 },
        dir,
        serde_json::json!({}),
    )
    .unwrap()
}

fn quiet(max_steps: u64) -> LoopConfig {
    LoopConfig {
        max_steps,
        eval_every: 2,
        log_every: 1,
        clip_norm: None,
        progress: false,
        ..Default::default()
    }
}

fn weights(vs: &VarStore) -> Vec<f32> {
    vs.trainable()
        .iter()
        .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn accumulating_k_micro_batches_equals_one_k_times_larger_batch() {
    let (da, db) = (tmp("acc-a"), tmp("acc-b"));
    let va = VarStore::new(1, &Device::Cpu);
    let mut a = Toy::new(&va, 2);
    let mut ta = trainer(
        &va,
        LoopConfig {
            accum_steps: 4,
            ..quiet(2)
        },
        &da,
    );
    ta.run(&mut a).unwrap();
    let vb = VarStore::new(1, &Device::Cpu);
    let mut b = Toy::new(&vb, 8);
    let mut tb = trainer(&vb, quiet(2), &db);
    tb.run(&mut b).unwrap();
    for (x, y) in weights(&va).iter().zip(weights(&vb)) {
        assert!((x - y).abs() < 1e-6, "{x} vs {y}");
    }
    let _ = (std::fs::remove_dir_all(da), std::fs::remove_dir_all(db));
}

#[test]
fn nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let d = tmp("nan");
    let vs = VarStore::new(1, &Device::Cpu);
    let mut t = Toy::new(&vs, 4);
    t.nan_at = Some(5);
    let mut tr = trainer(&vs, quiet(10), &d);
    let e = tr.run(&mut t).unwrap_err().to_string();
    assert!(
        e.contains("loss became NaN at step 5") && e.contains("step-00000004"),
        "{e}"
    );
    let latest = seqlab_train::checkpoint::latest(&d.join("checkpoints"))
        .unwrap()
        .unwrap();
    assert!(latest.ends_with("step-00000004"));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn resumed_run_matches_uninterrupted_run_step_for_step() {
    let (da, db) = (tmp("res-a"), tmp("res-b"));
    let va = VarStore::new(3, &Device::Cpu);
    let mut a = Toy::new(&va, 4);
    let full = trainer(&va, quiet(8), &da).run(&mut a).unwrap().train_losses;
    // Interrupted after step 4 (its checkpoint), then a fresh process-like start resumes.
    let vb = VarStore::new(3, &Device::Cpu);
    let mut b = Toy::new(&vb, 4);
    trainer(&vb, quiet(4), &db).run(&mut b).unwrap();
    let vc = VarStore::new(99, &Device::Cpu);
    let mut c = Toy::new(&vc, 4);
    let mut tc = trainer(&vc, quiet(8), &db);
    assert_eq!(tc.resume().unwrap(), Some(4));
    let rest = tc.run(&mut c).unwrap().train_losses;
    assert_eq!(&full[4..], &rest[..], "losses after resuming differ");
    assert_eq!(weights(&va), weights(&vc));
    let _ = (std::fs::remove_dir_all(da), std::fs::remove_dir_all(db));
}

/// A CPU-time budget stops the run with an evaluated checkpoint of its last step (the steps
/// since the last scheduled evaluation are not wasted), and the CPU time is recorded.
#[test]
fn cpu_budget_stops_with_a_final_evaluation() {
    let dir = tmp("cpu");
    let vs = VarStore::new(1, &Device::Cpu);
    let mut task = Toy::new(&vs, 4);
    let cfg = LoopConfig {
        max_steps: u64::MAX,
        eval_every: 1_000_000,
        max_cpu_minutes: Some(0.2 / 60.0),
        ..quiet(1)
    };
    let mut t = trainer(&vs, cfg, &dir);
    let s = t.run(&mut task).unwrap();
    assert_eq!(s.reason, seqlab_train::StopReason::TimeLimit);
    assert!(s.steps > 0 && s.last_eval.contains_key("loss"), "{s:?}");
    assert!(t.state.cpu_seconds >= 0.2, "{}", t.state.cpu_seconds);
    let best = seqlab_train::checkpoint::resolve(&dir).unwrap();
    assert!(best.ends_with("best"));
    let _ = std::fs::remove_dir_all(&dir);
}
