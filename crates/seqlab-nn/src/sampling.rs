//! Drawing the next token from a row of logits: temperature, top-k and top-p (nucleus)
//! filtering with ONE meaning for every model that samples (language-model `generate`,
//! translation's sampling decoder).
//!
//! The steps, in order (as in Hugging Face's `generate` and Holtzman et al. 2020):
//! 1. `temperature == 0` means greedy: the first arg-max (as `torch.argmax`); top-k and
//!    top-p are then irrelevant. Otherwise logits are divided by `temperature`.
//! 2. `top_k = Some(k)` with `k > 0` keeps the k most likely tokens; `None` or `Some(0)`
//!    keeps all of them (no top-k filter).
//! 3. softmax over what is kept.
//! 4. `top_p < 1` keeps the smallest prefix of the tokens, most likely first, whose mass
//!    reaches `top_p` (at least one token); `top_p == 1` keeps all (no nucleus filter).
//! 5. one draw from the renormalised distribution with seqlab's [`SeqRng`], so a seed fixes
//!    the sample.
//!
//! Rejected (by [`SamplingConfig::validate`] and [`Sampler::new`]): a negative or non-finite
//! temperature, and `top_p` outside `(0, 1]`. Logits and log-probabilities give the same
//! draws (softmax is shift-invariant).

use crate::SeqRng;
use candle_core::{bail, Result};

/// Sampling settings; see the module docs for the exact meaning of each.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 = greedy. Default 1.0.
    pub temperature: f64,
    /// Keep the k most likely tokens; `None` or `Some(0)` = no top-k filter. Default `None`.
    pub top_k: Option<usize>,
    /// Nucleus mass in `(0, 1]`; 1.0 = no nucleus filter. Default 1.0.
    pub top_p: f64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
        }
    }
}

impl SamplingConfig {
    /// Checks the settings, naming the bad one: temperature must be finite and >= 0,
    /// top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!(
                "sampling: temperature must be finite and >= 0 (0 = greedy), got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!(
                "sampling: top_p must be in (0, 1] (1 = no nucleus filter), got {}",
                self.top_p
            );
        }
        Ok(())
    }

    /// True when every draw is the arg-max (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// The first index of the largest value, as `torch.argmax` (0 for an empty row).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// A seeded sampler: the same seed and the same logits give the same tokens.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: SeqRng,
}

impl Sampler {
    /// A sampler drawing from `SeqRng::new(seed)`; rejects what [`SamplingConfig::validate`]
    /// rejects.
    pub fn new(cfg: SamplingConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            rng: SeqRng::new(seed),
        })
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.cfg
    }

    /// Draws one token id from a row of logits (or log-probabilities) of length V > 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert!(!logits.is_empty(), "Sampler::sample: empty logits row");
        if self.cfg.is_greedy() {
            return argmax(logits);
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Stable sort: ties keep index order, so the draw does not depend on sort details.
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if let Some(k) = self.cfg.top_k.filter(|&k| k > 0) {
            order.truncate(k);
        }
        let t = self.cfg.temperature;
        let top = logits[order[0]] as f64;
        let mut p: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - top) / t).exp()).collect();
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= z);
        if self.cfg.top_p < 1.0 {
            let mut mass = 0.0;
            let mut keep = p.len();
            for (i, v) in p.iter().enumerate() {
                mass += v;
                if mass >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            p.truncate(keep);
            order.truncate(keep);
        }
        let z: f64 = p.iter().sum();
        let mut u = self.rng.unit_f32() as f64 * z;
        for (i, v) in p.iter().enumerate() {
            u -= v;
            if u < 0.0 {
                return order[i] as u32;
            }
        }
        order[p.len() - 1] as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f64, top_k: Option<usize>, top_p: f64) -> SamplingConfig {
        SamplingConfig {
            temperature,
            top_k,
            top_p,
        }
    }

    fn draws(c: SamplingConfig, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(c, 0).unwrap();
        (0..n).map(|_| s.sample(logits)).collect()
    }

    #[test]
    fn greedy_top_k_top_p_have_one_meaning() {
        let logits = [0.0f32, 5.0, 1.0, 4.9];
        // Temperature 0 is greedy whatever the filters say.
        assert!(draws(cfg(0.0, Some(3), 0.5), &logits, 20).iter().all(|&t| t == 1));
        // top_k 2: only the two best tokens, and both occur.
        let d = draws(cfg(1.0, Some(2), 1.0), &logits, 300);
        assert!(d.iter().all(|&t| t == 1 || t == 3));
        assert!(d.contains(&1) && d.contains(&3));
        // top_k 0 and None are both "no filter": identical draws, and token 2 can occur.
        let all = draws(cfg(3.0, None, 1.0), &logits, 300);
        assert_eq!(all, draws(cfg(3.0, Some(0), 1.0), &logits, 300));
        assert!(
            all.contains(&2) && all.contains(&0),
            "no top-k filter keeps every token"
        );
        // A nucleus below the best token's mass keeps only it.
        assert!(draws(cfg(1.0, None, 0.3), &logits, 50).iter().all(|&t| t == 1));
        // The same seed gives the same draws.
        assert_eq!(
            draws(cfg(1.0, None, 0.9), &logits, 50),
            draws(cfg(1.0, None, 0.9), &logits, 50)
        );
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // p = softmax([0, ln 3]) = [0.25, 0.75].
        let logits = [0.0f32, 3f32.ln()];
        let d = draws(SamplingConfig::default(), &logits, 4000);
        let ones = d.iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn invalid_settings_are_rejected_by_name() {
        for (c, key) in [
            (cfg(-1.0, None, 1.0), "temperature"),
            (cfg(f64::NAN, None, 1.0), "temperature"),
            (cfg(1.0, None, 0.0), "top_p"),
            (cfg(1.0, None, 1.5), "top_p"),
        ] {
            let e = Sampler::new(c, 0).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1, "first maximum, as torch.argmax");
    }
}
