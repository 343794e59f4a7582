//! Learning-rate schedules as pure functions of the step.
//!
//! Steps count optimizer updates from 1 (the paper's convention: the first update uses
//! step 1), so a schedule never divides by zero.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule; `lr(step)` is a pure function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// `lr` at every step.
    Constant { lr: f64 },
    /// Linear warm-up from 0 to `lr` over `warmup` steps, then cosine decay to `min_lr` at
    /// `total` steps (and `min_lr` after).
    WarmupCosine {
        lr: f64,
        warmup: u64,
        total: u64,
        #[serde(default)]
        min_lr: f64,
    },
    /// "Attention Is All You Need" §5.3:
    /// `lrate = factor · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)`.
    Noam {
        d_model: usize,
        warmup: u64,
        #[serde(default = "one")]
        factor: f64,
    },
}

fn one() -> f64 {
    1.0
}

impl Schedule {
    /// The learning rate for optimizer step `step` (1-based; 0 is treated as 1).
    pub fn lr(&self, step: u64) -> f64 {
        let s = step.max(1) as f64;
        match *self {
            Schedule::Constant { lr } => lr,
            Schedule::WarmupCosine {
                lr,
                warmup,
                total,
                min_lr,
            } => {
                if warmup > 0 && s <= warmup as f64 {
                    lr * s / warmup as f64
                } else if s >= total as f64 {
                    min_lr
                } else {
                    let span = (total - warmup).max(1) as f64;
                    let progress = (s - warmup as f64) / span;
                    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
            Schedule::Noam {
                d_model,
                warmup,
                factor,
            } => factor * (d_model as f64).powf(-0.5) * s.powf(-0.5).min(s * (warmup.max(1) as f64).powf(-1.5)),
        }
    }

    /// Checks the parameters, naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        match *self {
            Schedule::Constant { lr } if !(lr > 0.0) => anyhow::bail!("schedule: lr must be > 0, got {lr}"),
            Schedule::WarmupCosine {
                lr,
                warmup,
                total,
                min_lr,
            } => {
                anyhow::ensure!(lr > 0.0, "schedule: lr must be > 0, got {lr}");
                anyhow::ensure!(
                    total > warmup,
                    "schedule: total ({total}) must exceed warmup ({warmup})"
                );
                anyhow::ensure!(
                    (0.0..=lr).contains(&min_lr),
                    "schedule: min_lr must be in [0, lr], got {min_lr}"
                );
                Ok(())
            }
            Schedule::Noam {
                d_model,
                warmup,
                factor,
            } => {
                anyhow::ensure!(
                    d_model > 0 && warmup > 0,
                    "schedule: noam needs d_model > 0 and warmup > 0"
                );
                anyhow::ensure!(factor > 0.0, "schedule: factor must be > 0, got {factor}");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant() {
        let s = Schedule::Constant { lr: 3e-4 };
        assert_eq!(s.lr(1), 3e-4);
        assert_eq!(s.lr(10_000), 3e-4);
    }

    #[test]
    fn noam_matches_the_paper_formula() {
        let s = Schedule::Noam {
            d_model: 512,
            warmup: 4000,
            factor: 1.0,
        };
        for step in [1u64, 10, 100, 3999, 4000, 4001, 10_000, 100_000] {
            let st = step as f64;
            let want = 512f64.powf(-0.5) * st.powf(-0.5).min(st * 4000f64.powf(-1.5));
            assert!((s.lr(step) - want).abs() < 1e-15, "step {step}");
        }
        // Peak at the end of warm-up: d^-0.5 · warmup^-0.5.
        let peak = 512f64.powf(-0.5) * 4000f64.powf(-0.5);
        assert!((s.lr(4000) - peak).abs() < 1e-15);
        assert!(s.lr(3999) < peak && s.lr(4001) < peak);
    }

    #[test]
    fn warmup_cosine_shape() {
        let s = Schedule::WarmupCosine {
            lr: 1.0,
            warmup: 10,
            total: 110,
            min_lr: 0.1,
        };
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        // Half-way through the decay the cosine term is zero: (lr + min_lr) / 2.
        assert!((s.lr(60) - 0.55).abs() < 1e-12);
        assert!((s.lr(110) - 0.1).abs() < 1e-12);
        assert!((s.lr(500) - 0.1).abs() < 1e-12);
        assert!(s.validate().is_ok());
        assert!(Schedule::WarmupCosine {
            lr: 1.0,
            warmup: 10,
            total: 10,
            min_lr: 0.0
        }
        .validate()
        .is_err());
    }

    #[test]
    fn toml_round_trip() {
        let s: Schedule = toml::from_str("kind = \"noam\"\nd_model = 256\nwarmup = 400\n").unwrap();
        assert_eq!(
            s,
            Schedule::Noam {
                d_model: 256,
                warmup: 400,
                factor: 1.0
            }
        );
        assert!(toml::from_str::<Schedule>("kind = \"noam\"\nd_model = 256\nwarmup = 400\nfoo = 1\n").is_err());
    }
}
