//! The project's own seeded random numbers.
//!
//! candle's CPU RNG cannot be seeded, so every random draw that affects results (initial
//! weights, dropout masks, data shuffles) comes from here: same seed, same numbers.

use candle_core::{Device, Result, Shape, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// A seeded ChaCha8 stream whose position can be saved in a checkpoint and restored.
#[derive(Clone, Debug)]
pub struct SeqRng {
    rng: ChaCha8Rng,
}

/// A generator shared by the layers of one model (dropout draws from it in forward order).
pub type SharedRng = Arc<Mutex<SeqRng>>;

/// Everything needed to continue a stream exactly where it stopped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RngState {
    /// The ChaCha seed.
    pub seed: [u8; 32],
    /// Words consumed so far (the position in the stream).
    pub stream: u64,
    /// Word position as a decimal string: it is a u128, which TOML and JSON numbers cannot hold.
    pub word_pos: String,
}

impl SeqRng {
    /// Deterministic generator (ChaCha8) seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A generator seeded with `seed`, behind `Arc<Mutex<_>>` for sharing between layers.
    pub fn shared(seed: u64) -> SharedRng {
        Arc::new(Mutex::new(Self::new(seed)))
    }

    /// Seed, stream and position, enough to resume the exact sequence (checkpoints).
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos().to_string(),
        }
    }

    /// Restores a generator saved by [`SeqRng::state`]. Rejects an unparsable word position.
    pub fn from_state(s: &RngState) -> Result<Self> {
        let mut rng = ChaCha8Rng::from_seed(s.seed);
        rng.set_stream(s.stream);
        let pos: u128 = s
            .word_pos
            .parse()
            .map_err(|e| candle_core::Error::Msg(format!("bad RNG word position {:?}: {e}", s.word_pos)))?;
        rng.set_word_pos(pos);
        Ok(Self { rng })
    }

    /// Next raw 64-bit draw.
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn unit_f32(&mut self) -> f32 {
        self.rng.random::<f32>()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }

    /// `n` draws uniform in [`lo`, `hi`), as f32.
    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (lo + (hi - lo) * self.rng.random::<f64>()) as f32)
            .collect()
    }

    /// Normal draws by Box-Muller (no extra dependency, and stable across rand versions).
    pub fn normal_vec(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1: f64 = 1.0 - self.rng.random::<f64>(); // (0, 1]
            let u2: f64 = self.rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            out.push((mean + std * r * t.cos()) as f32);
            out.push((mean + std * r * t.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// Tensor of `shape` uniform in [`lo`, `hi`) (PyTorch `nn.init.uniform_`).
    pub fn uniform<S: Into<Shape>>(&mut self, shape: S, lo: f64, hi: f64, dev: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_vec(self.uniform_vec(shape.elem_count(), lo, hi), shape, dev)
    }

    /// Tensor of `shape` drawn from N(`mean`, `std`²) (PyTorch `nn.init.normal_`).
    pub fn normal<S: Into<Shape>>(&mut self, shape: S, mean: f64, std: f64, dev: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_vec(self.normal_vec(shape.elem_count(), mean, std), shape, dev)
    }

    /// Inverted-dropout mask: each element is 0 with probability `p`, else `1/(1-p)`.
    ///
    /// One 32-bit draw per element, compared with `p·2³²` (so `p` is taken to the nearest
    /// multiple of 2⁻³²): half the stream of a 64-bit float draw. The ChaCha refill was 3 % of
    /// a `configs/mt-bible-small.toml` training step (perf, 1 thread) with f64 draws.
    ///
    /// Masks of more than [`MASK_CHUNK`] elements are drawn in parallel pieces: ChaCha can
    /// start at any word of its stream, so piece k starts where the sequential draw would be
    /// after k pieces, and the generator ends at the same position; the mask and the stream
    /// after it are those of one sequential draw, whatever the thread count. (One thread drew
    /// every mask before: 7.6 % of the instructions of a 1-thread step of
    /// `configs/authors-transformer.toml`, callgrind.)
    pub fn dropout_mask<S: Into<Shape>>(&mut self, shape: S, p: f64, dev: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_vec(self.dropout_multipliers(shape.elem_count(), p), shape, dev)
    }

    /// The `n` multipliers of [`SeqRng::dropout_mask`] (the same draws), as a vector.
    pub fn dropout_multipliers(&mut self, n: usize, p: f64) -> Vec<f32> {
        use rayon::prelude::*;
        let scale = (1.0 / (1.0 - p)) as f32;
        let threshold = (p.clamp(0.0, 1.0) * 4_294_967_296.0).round() as u64;
        let scale_bits = scale.to_bits();
        // The draws in bulk (ChaCha's block refill), then a branch-free pass that turns each
        // into its multiplier's bits in place; drawing and deciding per element in one
        // iterator loop took as long again as the refill.
        let draw = |rng: &mut ChaCha8Rng, piece: &mut [u32]| {
            rng.fill(piece);
            crate::kernels::simd::run_widest(
                false,
                Threshold {
                    words: piece,
                    threshold,
                    scale_bits,
                },
            );
        };
        // The words are drawn straight into the multipliers' storage: no zeroing before the
        // draw and no conversion pass after it.
        // SAFETY: every element is written below (the draws fill all n words).
        let mut v = unsafe { crate::kernels::uninit_f32(n) };
        // SAFETY: u32 and f32 have the same size and alignment and every bit pattern is valid
        // for both; the view covers v's n elements and ends before v is used again.
        let bits = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u32, n) };
        if n > MASK_CHUNK {
            let start = self.rng.get_word_pos();
            let base = &self.rng;
            bits.par_chunks_mut(MASK_CHUNK).enumerate().for_each(|(k, piece)| {
                let mut rng = base.clone();
                rng.set_word_pos(start + (k * MASK_CHUNK) as u128);
                draw(&mut rng, piece);
            });
            self.rng.set_word_pos(start + n as u128);
        } else {
            draw(&mut self.rng, bits);
        }
        v
    }
}

/// Turns each drawn word into its dropout multiplier's bits: 0 below `threshold`, else
/// `scale_bits`. Compiled for the widest vector unit: in the SSE2 baseline the 64-bit
/// comparison stayed scalar, ~4 % of a 1-thread bert-mini step (perf, session 12).
struct Threshold<'a> {
    words: &'a mut [u32],
    threshold: u64,
    scale_bits: u32,
}

impl crate::kernels::simd::WithLanes for Threshold<'_> {
    type Out = ();
    #[inline(always)]
    fn run<L: crate::kernels::simd::Lanes>(self, _: L) {
        let (threshold, scale_bits) = (self.threshold, self.scale_bits);
        for r in self.words.iter_mut() {
            *r = if (*r as u64) < threshold { 0 } else { scale_bits };
        }
    }
}

/// Mask elements per parallel task of [`SeqRng::dropout_mask`] (ChaCha8 costs a few
/// instructions per word, so a task is ~0.1 M instructions).
const MASK_CHUNK: usize = 1 << 14;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_state_round_trip() {
        let mut a = SeqRng::new(7);
        let mut b = SeqRng::new(7);
        assert_eq!(a.normal_vec(5, 0.0, 1.0), b.normal_vec(5, 0.0, 1.0));
        let st = a.state();
        let x = a.uniform_vec(4, -1.0, 1.0);
        let mut c = SeqRng::from_state(&st).unwrap();
        assert_eq!(x, c.uniform_vec(4, -1.0, 1.0));
        assert_ne!(
            SeqRng::new(8).uniform_vec(4, 0.0, 1.0),
            SeqRng::new(7).uniform_vec(4, 0.0, 1.0)
        );
    }

    #[test]
    fn dropout_mask_rate_and_scale() {
        let mut r = SeqRng::new(1);
        let m = r
            .dropout_mask(10_000, 0.25, &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let zeros = m.iter().filter(|&&v| v == 0.0).count() as f64 / 1e4;
        assert!((zeros - 0.25).abs() < 0.02, "{zeros}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
    }

    /// A mask drawn in parallel pieces equals the sequential draw of the same stream (the
    /// values and the generator's position after it), also from a position inside a ChaCha
    /// block and with a last partial piece.
    #[test]
    fn parallel_mask_equals_the_sequential_draw() {
        let n = 3 * MASK_CHUNK + 77;
        let mut a = SeqRng::new(3);
        let _ = a.next_u64();
        let _ = a.unit_f32();
        let mut b = a.clone();
        let m = a.dropout_mask(n, 0.1, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        let mut bits = vec![0u32; n];
        b.rng.fill(&mut bits[..]);
        let scale = (1.0f64 / 0.9) as f32;
        let want: Vec<f32> = bits
            .iter()
            .map(|&r| {
                if (r as u64) < (0.1f64 * 4_294_967_296.0).round() as u64 {
                    0.0
                } else {
                    scale
                }
            })
            .collect();
        assert!(m.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert_eq!(a.state(), b.state());
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
