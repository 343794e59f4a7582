//! The whole recurrence of one layer and direction as ONE candle op, forward and backward.
//!
//! A time loop of small candle ops costs far more in per-op overhead (allocation, graph
//! nodes, thread dispatch) than in arithmetic, so the step loop runs here on plain slices.
//! It runs on a team of threads (one per rayon thread, for problems big enough), each owning a
//! contiguous block of the cell's units: per step, one `gemm` of h with its rows of W_hh
//! (which each thread packs contiguous once per call, and a column-major copy of the block for
//! the forward, so that `gemm` does not repack the weights on every step), then its units'
//! fused gate nonlinearities and state update, then a barrier. The forward keeps the gate
//! activations; the backward (BPTT) runs the same way, each thread producing its part of
//! dh_prev (a team of one straight into dh), and the weight gradients are single large
//! `gemm`s over all steps at the end (`dW_hh`, `dW_hr`; `dW_ih` is the input projection's
//! backward). The thread bodies are compiled for AVX-512 or AVX2 and chosen at run time,
//! since the crate itself targets baseline x86-64; the gate loops, forward and backward, are
//! [`LaneBody`] rows run by [`simd::for_each_lane`] (16, 8 or 1 lanes, one source), since the
//! compiler left the forward's scalar even in the AVX-512 build. The backward's rows use no
//! FMA, so their results are bitwise those of the former scalar loops on every width.
//!
//! The input projection `x @ W_ih^T + b` is NOT part of the op: it is one fused linear op over
//! all time steps ([`super::linear`]), done by the caller, and its result `gx` enters here.

use super::simd::{self, LaneBody, Lanes, Scalar};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Which recurrent cell the op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedCell {
    RnnTanh,
    RnnRelu,
    /// Gates i, f, g, o (PyTorch's order).
    Lstm,
    /// Gates r, z, n (PyTorch's order).
    Gru,
}

impl FusedCell {
    /// Number of gate blocks of size `hidden` in `W_ih`/`W_hh`.
    pub fn gates(self) -> usize {
        match self {
            FusedCell::RnnTanh | FusedCell::RnnRelu => 1,
            FusedCell::Lstm => 4,
            FusedCell::Gru => 3,
        }
    }
}

/// Sizes and options of one fused recurrence.
#[derive(Clone, Debug)]
pub struct FusedSpec {
    /// Which cell.
    pub cell: FusedCell,
    /// T, the number of time steps.
    pub seq_len: usize,
    /// B.
    pub batch: usize,
    /// Cell size H (the size of `c` for LSTM).
    pub hidden: usize,
    /// Size P of the recurrent state `h`: `proj_size` for a projected LSTM, else `hidden`.
    pub out: usize,
    /// LSTM with `weight_hr` (h = (o * tanh c) @ W_hr^T).
    pub proj: bool,
    /// GRU with `b_hn` (which cannot be folded into `gx`, since it is multiplied by r).
    pub gru_bhn: bool,
    /// Runs from each sequence's last valid step down to 0.
    pub reverse: bool,
    /// Valid length of each sequence (all `seq_len` when `None`).
    pub lengths: Option<Vec<usize>>,
}

impl FusedSpec {
    fn gh(&self) -> usize {
        self.cell.gates() * self.hidden
    }
    fn state_len(&self) -> usize {
        self.batch * self.out
            + if self.cell == FusedCell::Lstm {
                self.batch * self.hidden
            } else {
                0
            }
    }
    fn w_len(&self) -> usize {
        self.gh() * self.out
            + if self.proj { self.out * self.hidden } else { 0 }
            + if self.gru_bhn { self.hidden } else { 0 }
    }
    fn len_of(&self, b: usize) -> usize {
        match &self.lengths {
            Some(l) => l[b],
            None => self.seq_len,
        }
    }
    /// Time index processed for sequence `b` at step `s`, or `None` once it has ended.
    #[inline]
    fn t_of(&self, s: usize, b: usize) -> Option<usize> {
        let len = self.len_of(b);
        if s >= len {
            None
        } else if self.reverse {
            Some(len - 1 - s)
        } else {
            Some(s)
        }
    }
}

/// A buffer of `n` f32 that the time loop fills row by row ((T, B, ·) rows, possibly followed
/// by parts written after the loop): unspecified contents when every sequence runs all T
/// steps (the loops then write every element of every row, each thread its units or
/// columns), zeros otherwise (rows past a sequence's end must read as 0: outputs, and the
/// operands of the final weight-gradient products).
fn rows_buffer(sp: &FusedSpec, n: usize) -> Vec<f32> {
    if sp.lengths.is_none() {
        // SAFETY: see above; the forward and backward write rows for every (t, b) with
        // t < len(b), which is all of them here.
        unsafe { super::uninit_f32(n) }
    } else {
        vec![0.0; n]
    }
}

/// What the forward keeps for the backward; all arrays are (T, B, ·) in TIME order, rows of
/// steps past a sequence's end stay zero ([`rows_buffer`]).
#[derive(Default)]
struct Saved {
    /// W_hh with its rows regrouped per thread of the team (see [`pack_block`]).
    wp: Vec<f32>,
    /// W_hr (P, H) of a projected LSTM in the backward's column panels ([`pack_proj`]).
    whrp: Vec<f32>,
    /// The split of the cell's units over the team that `wp` was packed for.
    units: Split,
    /// The split of h's P columns over the team (projected LSTM).
    pcols: Split,
    /// h before the step (T, B, P).
    hprev: Vec<f32>,
    /// Gate activations (T, B, G*H); for RNN the new h.
    gates: Vec<f32>,
    /// LSTM: c before the step and tanh(c) after it (T, B, H).
    cprev: Vec<f32>,
    tc: Vec<f32>,
    /// Projected LSTM: o * tanh(c) (T, B, H).
    m: Vec<f32>,
    /// GRU: W_hn h + b_hn (T, B, H).
    hnp: Vec<f32>,
}

/// The op. Arguments: `gx` (T, B, G*H) contiguous; `state0` flat `[h0 (B*P), c0 (B*H) LSTM]`;
/// `w` flat `[W_hh (G*H*P), W_hr (P*H) if proj, b_hn (H) if gru_bhn]`. Result: flat
/// `[out (T*B*P), hn (B*P), cn (B*H) LSTM]`.
pub struct FusedRecurrence {
    spec: FusedSpec,
    saved: Mutex<Option<Saved>>,
    /// Whether any argument is part of an autograd graph; if not, nothing is kept.
    keep: bool,
    /// Threads that run the time loop together (see [`team_size`]).
    threads: usize,
    /// Tests: run the one-lane gate loops even where vector units exist.
    portable: bool,
    /// The weight-gradient products on the calling thread only: one direction of a
    /// [`FusedPair`], whose other direction runs beside it on the other thread.
    serial_gemm: bool,
}

/// exp for f32 with ~1 ulp error, branch-free so that loops over it vectorise (libm's
/// `expf` does not, and the nonlinearities would otherwise rival the matmuls in cost): the
/// one-lane instance of [`simd::exp`].
#[inline(always)]
pub(crate) fn fexp(x: f32) -> f32 {
    simd::exp(Scalar, x)
}

/// The logistic function, one lane of [`simd::sigmoid`].
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    simd::sigmoid(Scalar, x)
}

/// tanh, one lane of [`simd::tanh`].
#[cfg(test)]
#[inline(always)]
fn ftanh(x: f32) -> f32 {
    simd::tanh(Scalar, x)
}

/// Contiguous parts of `len` items (cell units or columns of h), one per thread of a team;
/// every part but the last is a multiple of 16 long, so SIMD loops have no ragged middles.
#[derive(Clone, Copy, Debug, Default)]
struct Split {
    len: usize,
    chunk: usize,
    /// Number of non-empty parts.
    n: usize,
}

impl Split {
    /// At most `want` parts of at least 16 items (one part when `len` <= 16).
    fn new(len: usize, want: usize) -> Self {
        let want = want.clamp(1, len.div_ceil(16).max(1));
        let chunk = (len.div_ceil(want).div_ceil(16) * 16).max(1);
        Self {
            len,
            chunk,
            n: len.div_ceil(chunk).max(1),
        }
    }

    /// (start, length) of part `k`; empty for `k >= n`.
    fn range(&self, k: usize) -> (usize, usize) {
        let a = (k * self.chunk).min(self.len);
        let b = ((k + 1) * self.chunk).min(self.len);
        (a, b - a)
    }
}

/// How many threads run one op's time loop. The per-step work is a (B × P) @ (P × G·H)
/// product plus the gate arithmetic; a team of OS threads that each own a block of units and
/// meet at a barrier once per step keeps both the product and the gate arithmetic parallel,
/// where handing each step's small product to rayon left the gate arithmetic serial and paid
/// a dispatch per step. Small problems (and calls already inside a rayon worker, where the
/// caller parallelises) run on the calling thread alone.
fn team_size(sp: &FusedSpec) -> usize {
    if super::in_rayon_task() {
        return 1;
    }
    let per_step = sp.batch * sp.gh() * sp.out;
    if per_step < 1 << 17 || per_step.saturating_mul(sp.seq_len) < 1 << 22 {
        return 1;
    }
    rayon::current_num_threads().max(1)
}

/// A barrier for a team that meets once or twice per time step: it spins briefly (a step
/// takes tens to hundreds of µs, a futex wake-up costs about as much as a short step) and
/// then yields, so an oversubscribed machine does not burn a core on it.
struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
    /// Set when a member panicked: the others stop waiting and panic too, instead of hanging.
    poisoned: AtomicBool,
}

impl SpinBarrier {
    fn new(n: usize) -> Self {
        Self {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    fn wait(&self) {
        if self.n <= 1 {
            return;
        }
        let g = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.store(g.wrapping_add(1), Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == g {
            if self.poisoned.load(Ordering::Relaxed) {
                panic!("fused recurrence: another thread of the team panicked");
            }
            if spins < 4096 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Poisons the barrier when its thread unwinds.
struct PoisonOnPanic<'a>(&'a SpinBarrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs `f(0..n)` on `n` threads at once (the caller is thread 0). They must all run at the
/// same time since they meet at `bar`, so these are scoped OS threads, not rayon tasks
/// (which a busy pool may run one after another).
fn team(n: usize, bar: &SpinBarrier, f: impl Fn(usize) + Sync) {
    let run = |k: usize| {
        let _guard = PoisonOnPanic(bar);
        f(k)
    };
    if n <= 1 {
        return run(0);
    }
    std::thread::scope(|s| {
        for k in 1..n {
            let run = &run;
            s.spawn(move || run(k));
        }
        run(0);
    });
}

/// A buffer that the team's threads share; each reads and writes only what the step
/// protocol gives it (own units or columns; whole buffers only between barriers that keep
/// writers out).
#[derive(Clone, Copy)]
struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: see the type's doc: accesses are disjoint or separated by the team's barriers, and
// every buffer outlives the team (the threads are scoped).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn new(v: &mut [f32]) -> Self {
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
        }
    }

    /// # Safety
    /// No other thread accesses `[a, a + n)` while the slice lives.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    unsafe fn mut_at<'a>(self, a: usize, n: usize) -> &'a mut [f32] {
        assert!(a + n <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(a), n)
    }

    /// # Safety
    /// No other thread writes `[a, a + n)` while the slice lives.
    #[inline(always)]
    unsafe fn at<'a>(self, a: usize, n: usize) -> &'a [f32] {
        assert!(a + n <= self.len);
        std::slice::from_raw_parts(self.ptr.add(a), n)
    }

    /// A pointer to element `a`, checked to have `n` elements after it (for the gate loops,
    /// whose [`LaneBody`] rows hold pointers); the accesses through it follow the type's rule.
    #[inline(always)]
    fn ptr_at(self, a: usize, n: usize) -> *mut f32 {
        assert!(a + n <= self.len);
        // SAFETY: in bounds, by the assert.
        unsafe { self.ptr.add(a) }
    }
}

/// Rows (forward) or columns (backward) of W_hh per panel of the per-step products
/// ([`pack_block`]): with AVX-512, one of gemm's 64-row microkernel blocks, so that a panel is
/// read as one contiguous stream. With 128 the backward's products ran 8 % slower, the
/// forward's 2 % (see `pack_block`; measured on Zen 5 only: gemm's AVX2 kernel is 16 rows
/// high, so there a panel of 64 is four blocks).
const PANEL: usize = 64;

/// Thread `k`'s block W_k of W_hh (its rows: every gate of its units, gate-major; G·nj × P),
/// in the two layouts its per-step products read, each in contiguous panels, one `gemm` per
/// panel: `wpt` panels of [`PANEL`] rows, each column-major (the forward's W_k @ hᵀ, see
/// [`fwd_body`]), `wp` panels of [`PANEL`] columns, each row-major (the backward's dG_k @
/// W_k, [`times_wk`]). Read in place as one block, the weights strided by G·H (forward) or
/// P floats (backward) from one k to the next, each k in another page at H 512, and gemm
/// re-reads them for every 6 columns of the small operand. Products of these shapes on
/// the earlier (loaded) development machine, interleaved in one process, median of 2000 calls
/// each: 2048 × 32 × 512 with row panels of 128 1.18-1.24× the one block's rate (1024 rows:
/// 1.10×), 32 × 2048 × 512 with column panels 1.03-1.10×. On the AMD EPYC (Zen 5) machine,
/// 1 thread, B 32, medians of 18 timings (6 runs of `examples/step_products.rs`, 2026-12-01):
/// forward 252.8 GFLOP/s with panels of 64 against 248.9 with 128 (H 256: 249.4 against
/// 244.1), backward 253.8 against 233.8 (H 256: 256.1 against 236.9); single timings move by
/// ±4 % with the machine's clock (gemm's 2048³ product 239-261, the core's FMA limit 265-274
/// in the same runs). 64 and 128 give the same bits (checkpoints of 20-step
/// char-LSTM, 6-step bidirectional authors-LSTM and 3-step mt-bible-rnn runs, 1 and 2
/// threads). The forward's panels give the same bits as one block;
/// the backward's give gemm's summation in another order at some widths (checked against
/// the one-block code: same bits at P 128 and 200, the last bits of the gradients differ at
/// P 320; the composed path agrees, tests `*_matches_composed`). Each thread packs its own
/// block at the start of the forward (it was a serial copy and transposition of the whole
/// weight before the team started), with [`col_panels`] and [`row_panels`].
fn pack_block(
    whh: &[f32],
    gates: usize,
    h: usize,
    p: usize,
    (j0, nj): (usize, usize),
    wp: &mut [f32],
    wpt: &mut [f32],
) {
    let rows = gates * nj;
    assert!(wp.len() == rows * p && wpt.len() == rows * p && whh.len() == gates * h * p && j0 + nj <= h);
    // Row r of W_k.
    let w = |r: usize| &whh[((r / nj) * h + j0 + r % nj) * p..][..p];
    col_panels(wp, rows, p, w);
    // A team of one owns every unit: its rows are W_hh's, one block (the tiled gather was
    // 0.7 % of a 1-thread bidirectional LSTM step, perf, session 12).
    row_panels(wpt, rows, p, w, (nj == h).then_some(whh));
}

/// The rows of a matrix (`nrows` × `ncols`, row r at `row(r)`) in row-major panels of
/// [`PANEL`] columns, one after the other in `dst` (panel c0 at `nrows · c0`, row r of it at
/// `r · pc`).
fn col_panels<'a>(dst: &mut [f32], nrows: usize, ncols: usize, row: impl Fn(usize) -> &'a [f32]) {
    assert_eq!(dst.len(), nrows * ncols);
    for c0 in (0..ncols).step_by(PANEL) {
        let pc = PANEL.min(ncols - c0);
        let panel = &mut dst[nrows * c0..nrows * (c0 + pc)];
        for r in 0..nrows {
            panel[r * pc..(r + 1) * pc].copy_from_slice(&row(r)[c0..c0 + pc]);
        }
    }
}

/// The same matrix in column-major panels of [`PANEL`] rows (panel q0 at `q0 · ncols`, element
/// (r, c) of it at `c · pr + r`). `block`: the rows as one contiguous row-major matrix, which
/// the vectorised transpose reads; without it, the rows are gathered in 16 × 16 tiles
/// (element by element the transposition wrote a cache line per element). Copies either way.
fn row_panels<'a>(
    dst: &mut [f32],
    nrows: usize,
    ncols: usize,
    row: impl Fn(usize) -> &'a [f32],
    block: Option<&[f32]>,
) {
    assert!(dst.len() == nrows * ncols && block.is_none_or(|b| b.len() >= nrows * ncols));
    const TILE: usize = 16;
    for q0 in (0..nrows).step_by(PANEL) {
        let pr = PANEL.min(nrows - q0);
        let panel = &mut dst[q0 * ncols..(q0 + pr) * ncols];
        if let Some(b) = block {
            super::transpose::transpose(&b[q0 * ncols..(q0 + pr) * ncols], pr, ncols, panel);
            continue;
        }
        for r0 in (0..pr).step_by(TILE) {
            for c0 in (0..ncols).step_by(TILE) {
                for r in r0..(r0 + TILE).min(pr) {
                    let row = row(q0 + r);
                    for c in c0..(c0 + TILE).min(ncols) {
                        panel[c * pr + r] = row[c];
                    }
                }
            }
        }
    }
}

/// `dst` (B × P, row-major) = [`dst` +] `a` (B × kdim, row stride `a_rs`) @ W_k (kdim × P,
/// [`pack_block`]'s column panels `wk`), one `gemm` per panel on the calling thread.
#[allow(clippy::too_many_arguments)]
fn times_wk(bsz: usize, p: usize, kdim: usize, dst: &mut [f32], acc: bool, a: &[f32], a_rs: usize, wk: &[f32]) {
    for c0 in (0..p).step_by(PANEL) {
        let pc = PANEL.min(p - c0);
        let panel = &wk[kdim * c0..kdim * (c0 + pc)];
        super::sgemm_serial(bsz, pc, kdim, &mut dst[c0..], p, 1, acc, a, a_rs, 1, panel, pc, 1);
    }
}

/// A projected LSTM's W_hr (P × H, row-major) in the per-step products' panels, as
/// [`pack_block`] does for W_hh: `rows` (np × H) holds the rows p0.. of this thread's h
/// columns in column-major panels of [`PANEL`] rows (the forward's W_hr,k @ mᵀ); `cols`
/// (P × nj) the columns j0.. of its units in row-major panels of [`PANEL`] columns (the
/// backward's dh @ W_hr,k). Copies, so the values are W_hr's.
fn pack_proj(
    whr: &[f32],
    h: usize,
    p: usize,
    (p0, np): (usize, usize),
    (j0, nj): (usize, usize),
    rows: &mut [f32],
    cols: &mut [f32],
) {
    assert!(whr.len() == p * h && p0 + np <= p && j0 + nj <= h);
    let mine = &whr[p0 * h..(p0 + np) * h];
    row_panels(rows, np, h, |r| &mine[r * h..][..h], Some(mine));
    col_panels(cols, p, nj, |r| &whr[r * h + j0..][..nj]);
}

/// Copies `src` into `n` consecutive elements of a shared buffer at `a`.
///
/// # Safety
/// As [`Shared::mut_at`].
#[inline(always)]
unsafe fn put(dst: Shared, a: usize, src: &[f32]) {
    dst.mut_at(a, src.len()).copy_from_slice(src);
}

/// What the forward's threads share.
struct Fwd<'a> {
    sp: &'a FusedSpec,
    units: Split,
    pcols: Split,
    gx: &'a [f32],
    /// W_hh (G·H × P), which each thread packs into its blocks of `wp` and `wpt` ([`pack_block`]).
    whh: &'a [f32],
    wp: Shared,
    wpt: Shared,
    /// W_hr (P × H) of a projected LSTM, which each thread packs into its rows of `whrt` and
    /// its units' columns of `whrp` ([`pack_proj`]).
    whr: &'a [f32],
    whrt: Shared,
    whrp: Shared,
    /// b_hn, or zeros.
    bhn: &'a [f32],
    keep: bool,
    bar: &'a SpinBarrier,
    /// h before/after the step, alternating (B × P each): step s reads `h[s % 2]`.
    h: [Shared; 2],
    /// LSTM cell state (B × H); each thread owns its units' columns.
    c: Shared,
    /// Projected LSTM: o * tanh(c) of the step (B × H).
    m: Shared,
    res: Shared,
    hprev: Shared,
    gates: Shared,
    cprev: Shared,
    tc: Shared,
    msave: Shared,
    hnp: Shared,
}

/// The forward of thread `k`: per step, its units' gate pre-activations in one `gemm`, then
/// their nonlinearities and state update; a projected LSTM then computes its columns of
/// h = m @ W_hr^T after a first barrier.
#[inline(always)]
fn fwd_body<L: Lanes>(cx: &Fwd, k: usize, l: L) {
    let sp = cx.sp;
    let (t_len, bsz, h, p, gh) = (sp.seq_len, sp.batch, sp.hidden, sp.out, sp.gh());
    let ng = sp.cell.gates();
    let (j0, nj) = cx.units.range(k);
    let gj = ng * nj;
    // SAFETY: each thread's block of `wp` and `wpt` is its own (read by the backward after the
    // team has joined).
    let wkt = unsafe {
        let (wk, wkt) = (cx.wp.mut_at(ng * j0 * p, gj * p), cx.wpt.mut_at(ng * j0 * p, gj * p));
        pack_block(cx.whh, ng, h, p, (j0, nj), wk, wkt);
        &*wkt
    };
    let (p0, np) = cx.pcols.range(k);
    // SAFETY: as `wp`: rows p0.. of `whrt` and the columns j0.. of `whrp` are this thread's.
    let whrt = if sp.proj {
        unsafe {
            let (rows, cols) = (cx.whrt.mut_at(p0 * h, np * h), cx.whrp.mut_at(j0 * p, nj * p));
            pack_proj(cx.whr, h, p, (p0, np), (j0, nj), rows, cols);
            &*rows
        }
    } else {
        &[][..]
    };
    let mut hh = vec![0f32; bsz * gj];
    let mut hp_loc = vec![0f32; if sp.proj { bsz * np } else { 0 }];
    // Where tanh(c) / W_hn h + b_hn go when the forward keeps nothing.
    let mut scratch = vec![0f32; nj];
    for s in 0..t_len {
        let (hc, hn) = (cx.h[s % 2], cx.h[(s + 1) % 2]);
        // SAFETY (all blocks below): during step s only `h[(s+1) % 2]` is written, each thread
        // its own columns; c, the saved rows and `res` are written per own unit/column.
        let hcur = unsafe { hc.at(0, bsz * p) };
        // hh (B × gj) = h @ W_kᵀ. gemm computes a row-major product as its transpose
        // hhᵀ = W_k @ hᵀ, whose left operand it packs unless column-major: with W_k stored
        // row-major it gathered the whole weight block element by element on every step
        // (callgrind, 2-layer LSTM H 512, 8 steps: 402M of the forward's 721M instructions).
        // From `wpt` (W_k column-major) it reads the weights in place, one panel of rows per
        // call ([`pack_block`] says why panels).
        for q0 in (0..gj).step_by(PANEL) {
            let pr = PANEL.min(gj - q0);
            let panel = &wkt[q0 * p..(q0 + pr) * p];
            super::sgemm_serial(pr, bsz, p, &mut hh[q0..], 1, gj, false, panel, 1, pr, hcur, 1, p);
        }
        for b in 0..bsz {
            let Some(t) = sp.t_of(s, b) else {
                // Ended: h carries over (a projected LSTM's columns are copied below).
                if !sp.proj {
                    unsafe { put(hn, b * p + j0, &hcur[b * p + j0..b * p + j0 + nj]) };
                }
                continue;
            };
            let row = t * bsz + b;
            let a = &mut hh[b * gj..(b + 1) * gj];
            let x = &cx.gx[row * gh..(row + 1) * gh];
            // h before the step of this thread's units (a projected LSTM's h has other columns).
            let hp = if sp.proj {
                &[][..]
            } else {
                &hcur[b * p + j0..b * p + j0 + nj]
            };
            match sp.cell {
                FusedCell::RnnTanh | FusedCell::RnnRelu => {
                    let out = unsafe { hn.mut_at(b * p + j0, nj) };
                    rnn_fwd(l, sp.cell == FusedCell::RnnTanh, a, &x[j0..j0 + nj], out);
                    if cx.keep {
                        unsafe { put(cx.hprev, row * p + j0, hp) };
                    }
                    unsafe { put(cx.res, row * p + j0, out) };
                }
                FusedCell::Lstm => {
                    let c = unsafe { cx.c.mut_at(b * h + j0, nj) };
                    if cx.keep {
                        unsafe { put(cx.cprev, row * h + j0, c) };
                    }
                    let tc = if cx.keep {
                        unsafe { cx.tc.mut_at(row * h + j0, nj) }
                    } else {
                        &mut scratch[..]
                    };
                    let out = if sp.proj {
                        unsafe { cx.m.mut_at(b * h + j0, nj) }
                    } else {
                        unsafe { hn.mut_at(b * p + j0, nj) }
                    };
                    lstm_fwd(l, a, x, j0, h, c, tc, out);
                    if sp.proj {
                        if cx.keep {
                            unsafe { put(cx.msave, row * h + j0, out) };
                        }
                    } else {
                        if cx.keep {
                            unsafe { put(cx.hprev, row * p + j0, hp) };
                        }
                        unsafe { put(cx.res, row * p + j0, out) };
                    }
                }
                FusedCell::Gru => {
                    let hnp = if cx.keep {
                        unsafe { cx.hnp.mut_at(row * h + j0, nj) }
                    } else {
                        &mut scratch[..]
                    };
                    let out = unsafe { hn.mut_at(b * p + j0, nj) };
                    gru_fwd(l, a, x, j0, h, &cx.bhn[j0..j0 + nj], hp, hnp, out);
                    if cx.keep {
                        unsafe { put(cx.hprev, row * p + j0, hp) };
                    }
                    unsafe { put(cx.res, row * p + j0, out) };
                }
            }
            if cx.keep {
                for g in 0..ng {
                    unsafe { put(cx.gates, row * gh + g * h + j0, &a[g * nj..(g + 1) * nj]) };
                }
            }
        }
        if sp.proj {
            // Every thread's units of m are needed for h = m @ W_hr^T.
            cx.bar.wait();
            if np > 0 {
                let m_all = unsafe { cx.m.at(0, bsz * h) };
                // hp_locᵀ = W_hr,k @ mᵀ, one column-major panel of W_hr's rows at a time, as
                // the gate product above (read in place, W_hr row-major was packed by gemm on
                // every step: 13 % of a 1-thread `bench lstm-proj` step, perf).
                for q0 in (0..np).step_by(PANEL) {
                    let pr = PANEL.min(np - q0);
                    let panel = &whrt[q0 * h..(q0 + pr) * h];
                    super::sgemm_serial(pr, bsz, h, &mut hp_loc[q0..], 1, np, false, panel, 1, pr, m_all, 1, h);
                }
                for b in 0..bsz {
                    let src = match sp.t_of(s, b) {
                        None => &hcur[b * p + p0..b * p + p0 + np],
                        Some(t) => {
                            let row = t * bsz + b;
                            let v = &hp_loc[b * np..(b + 1) * np];
                            if cx.keep {
                                unsafe { put(cx.hprev, row * p + p0, &hcur[b * p + p0..b * p + p0 + np]) };
                            }
                            unsafe { put(cx.res, row * p + p0, v) };
                            v
                        }
                    };
                    unsafe { put(hn, b * p + p0, src) };
                }
            }
        }
        // The next step's product reads all of the new h.
        cx.bar.wait();
    }
}

/// Where one thread's RNN gate loop reads and writes (see [`rnn_fwd`]).
#[derive(Clone, Copy)]
struct RnnRow {
    tanh: bool,
    a: *mut f32,
    x: *const f32,
    out: *mut f32,
}

impl LaneBody for RnnRow {
    #[inline(always)]
    unsafe fn at<L: Lanes>(self, l: L, q: usize) {
        let v = l.add(l.load(self.a.add(q)), l.load(self.x.add(q)));
        let v = if self.tanh { simd::tanh(l, v) } else { l.relu(v) };
        l.store(self.a.add(q), v);
        l.store(self.out.add(q), v);
    }
}

/// RNN: `a` holds W_hh h of the thread's units; becomes act(a + x), also written to `out`.
#[inline(always)]
fn rnn_fwd<L: Lanes>(l: L, tanh: bool, a: &mut [f32], x: &[f32], out: &mut [f32]) {
    let n = a.len();
    assert!(x.len() >= n && out.len() >= n);
    let row = RnnRow {
        tanh,
        a: a.as_mut_ptr(),
        x: x.as_ptr(),
        out: out.as_mut_ptr(),
    };
    // SAFETY: the assert keeps 0..n inside all three slices, distinct borrows.
    unsafe { simd::for_each_lane(l, n, row) }
}

/// Where one thread's LSTM gate loop reads and writes (see [`lstm_fwd`]).
#[derive(Clone, Copy)]
struct LstmRow {
    /// Gate blocks i, f, g, o of the thread's units, each `nj` long.
    a: [*mut f32; 4],
    /// The gx row's blocks at the thread's units.
    x: [*const f32; 4],
    c: *mut f32,
    tc: *mut f32,
    out: *mut f32,
}

/// LSTM: `a` = [i f g o] pre-activations (W_hh h) of the thread's `nj` units, `x` the whole
/// gx row (gate blocks of `h`); `a` becomes the gate activations, `c` is updated, `tc` =
/// tanh(c), `out` = o * tanh(c). Vectorised by hand: the compiler left this loop scalar even
/// in the AVX-512 build (perf annotate: vmulss/vdivss chains; 19 % of a char-LSTM training
/// step at 1 thread, second only to the gemm microkernel).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn lstm_fwd<L: Lanes>(
    l: L,
    a: &mut [f32],
    x: &[f32],
    j0: usize,
    h: usize,
    c: &mut [f32],
    tc: &mut [f32],
    out: &mut [f32],
) {
    let nj = c.len();
    assert!(a.len() >= 4 * nj && j0 + nj <= h && x.len() >= 4 * h && tc.len() >= nj && out.len() >= nj);
    let (ap, xp) = (a.as_mut_ptr(), x.as_ptr());
    // SAFETY: the assert keeps every block (a's at g·nj, x's at g·h + j0, nj long) inside its
    // slice.
    let row = unsafe {
        LstmRow {
            a: [0, 1, 2, 3].map(|g| ap.add(g * nj)),
            x: [0, 1, 2, 3].map(|g| xp.add(g * h + j0)),
            c: c.as_mut_ptr(),
            tc: tc.as_mut_ptr(),
            out: out.as_mut_ptr(),
        }
    };
    // SAFETY: elements 0..nj stay inside every block; the blocks of `a`, `c`, `tc` and `out`
    // are distinct borrows, `x` is only read.
    unsafe { simd::for_each_lane(l, nj, row) }
}

impl LaneBody for LstmRow {
    #[inline(always)]
    unsafe fn at<L: Lanes>(self, l: L, q: usize) {
        let r = self;
        let pre = |g: usize| l.add(l.load(r.a[g].add(q)), l.load(r.x[g].add(q)));
        let i = simd::sigmoid(l, pre(0));
        let f = simd::sigmoid(l, pre(1));
        let g = simd::tanh(l, pre(2));
        let o = simd::sigmoid(l, pre(3));
        for (k, v) in [i, f, g, o].into_iter().enumerate() {
            l.store(r.a[k].add(q), v);
        }
        let cn = l.mul_add(f, l.load(r.c.add(q)), l.mul(i, g));
        l.store(r.c.add(q), cn);
        let t = simd::tanh(l, cn);
        l.store(r.tc.add(q), t);
        l.store(r.out.add(q), l.mul(o, t));
    }
}

/// Where one thread's GRU gate loop reads and writes (see [`gru_fwd`]).
#[derive(Clone, Copy)]
struct GruRow {
    /// Gate blocks r, z, n of the thread's units, each `nj` long.
    a: [*mut f32; 3],
    /// The gx row's blocks at the thread's units.
    x: [*const f32; 3],
    bhn: *const f32,
    hp: *const f32,
    hnp: *mut f32,
    out: *mut f32,
}

/// GRU: `a` = [r z n] blocks of W_hh h; becomes the gate activations; `hnp` = W_hn h + b_hn;
/// `out` = the new h of the thread's units. Vectorised by hand like [`lstm_fwd`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gru_fwd<L: Lanes>(
    l: L,
    a: &mut [f32],
    x: &[f32],
    j0: usize,
    h: usize,
    bhn: &[f32],
    hp: &[f32],
    hnp: &mut [f32],
    out: &mut [f32],
) {
    let nj = out.len();
    assert!(
        a.len() >= 3 * nj && j0 + nj <= h && x.len() >= 3 * h && bhn.len() >= nj && hp.len() >= nj && hnp.len() >= nj
    );
    let (ap, xp) = (a.as_mut_ptr(), x.as_ptr());
    // SAFETY: as in `lstm_fwd`.
    let row = unsafe {
        GruRow {
            a: [0, 1, 2].map(|g| ap.add(g * nj)),
            x: [0, 1, 2].map(|g| xp.add(g * h + j0)),
            bhn: bhn.as_ptr(),
            hp: hp.as_ptr(),
            hnp: hnp.as_mut_ptr(),
            out: out.as_mut_ptr(),
        }
    };
    // SAFETY: as in `lstm_fwd`; `bhn` and `hp` are only read.
    unsafe { simd::for_each_lane(l, nj, row) }
}

impl LaneBody for GruRow {
    #[inline(always)]
    unsafe fn at<L: Lanes>(self, l: L, q: usize) {
        let w = self;
        let r = simd::sigmoid(l, l.add(l.load(w.a[0].add(q)), l.load(w.x[0].add(q))));
        let z = simd::sigmoid(l, l.add(l.load(w.a[1].add(q)), l.load(w.x[1].add(q))));
        let hq = l.add(l.load(w.a[2].add(q)), l.load(w.bhn.add(q)));
        let n = simd::tanh(l, l.mul_add(r, hq, l.load(w.x[2].add(q))));
        l.store(w.a[0].add(q), r);
        l.store(w.a[1].add(q), z);
        l.store(w.a[2].add(q), n);
        l.store(w.hnp.add(q), hq);
        l.store(w.out.add(q), l.mul_add(z, l.sub(l.load(w.hp.add(q)), n), n));
    }
}

/// What the backward's threads share.
struct Bwd<'a> {
    sp: &'a FusedSpec,
    sv: &'a Saved,
    dout: &'a [f32],
    bar: &'a SpinBarrier,
    /// Gradient of the h carried into the step being processed (B × P).
    dh: Shared,
    /// LSTM: gradient of c (B × H).
    dc: Shared,
    dgx: Shared,
    dhh: Shared,
    dhs: Shared,
    /// Per thread and step parity, its part of dh_prev = dG @ W_hh (2 × team × B × P).
    partial: Shared,
}

/// The BPTT of thread `k`: per step, its units' gate gradients (elementwise, written straight
/// into the gradient rows), then dh_prev = dG @ W_hh. A team of one multiplies into dh itself,
/// reading dG from the gradient rows when every sequence runs all steps (they are then the
/// step's contiguous (B × G·H) block). A larger team: each thread its partial dh_prev = dG_k @
/// W_hh[rows of its units] in one `gemm` over a copy of its dG columns, a barrier, then the
/// sum of all partials over its own columns of dh. Partials alternate between two buffers by
/// step parity, so one barrier per step suffices (two for a projected LSTM, whose dm = dh @
/// W_hr needs every column of dh).
#[inline(always)]
fn bwd_body<L: Lanes>(cx: &Bwd, k: usize, l: L) {
    let sp = cx.sp;
    let sv = cx.sv;
    let (t_len, bsz, h, p, gh) = (sp.seq_len, sp.batch, sp.hidden, sp.out, sp.gh());
    let ng = sp.cell.gates();
    let team = sv.units.n;
    let (j0, nj) = sv.units.range(k);
    let gj = ng * nj;
    let wk = &sv.wp[ng * j0 * p..ng * (j0 + nj) * p];
    // The columns of dh this thread owns.
    let (p0, np) = if sp.proj { sv.pcols.range(k) } else { (j0, nj) };
    let gru = sp.cell == FusedCell::Gru;
    // dG of the step: the product's operand. Read in place from the gradient rows where
    // they are one block (team of one, no lengths); otherwise a (B × gj) copy.
    let direct = team == 1 && sp.lengths.is_none();
    let mut dgk = vec![0f32; if direct { 0 } else { bsz * gj }];
    let mut dmk = vec![0f32; if sp.proj { bsz * nj } else { 0 }];
    // The gradient of the W_hh h product: the gx gradient (RNN, LSTM) or its own rows (GRU).
    let dprod = if gru { cx.dhh } else { cx.dgx };
    for s in (0..t_len).rev() {
        // SAFETY (all blocks below): dh's columns, dc's units and the gradient rows' gate
        // blocks are each written by their owner only; dh is read whole only between the
        // projected LSTM's two barriers, when nobody writes it, or by a team of one.
        for b in 0..bsz {
            let Some(t) = sp.t_of(s, b) else { continue };
            let row = t * bsz + b;
            let d = unsafe { cx.dh.mut_at(b * p + p0, np) };
            for (d, o) in d.iter_mut().zip(&cx.dout[row * p + p0..row * p + p0 + np]) {
                *d += o;
            }
            if sp.proj {
                unsafe { put(cx.dhs, row * p + p0, d) };
            }
        }
        if sp.proj {
            cx.bar.wait();
            let dh_all = unsafe { cx.dh.at(0, bsz * p) };
            // dm = dh @ W_hr for this thread's units (B × P @ P × nj), per column panel.
            for c0 in (0..nj).step_by(PANEL) {
                let pc = PANEL.min(nj - c0);
                let panel = &sv.whrp[(j0 + c0) * p..(j0 + c0 + pc) * p];
                super::sgemm_serial(bsz, pc, p, &mut dmk[c0..], nj, 1, false, dh_all, p, 1, panel, pc, 1);
            }
        }
        for b in 0..bsz {
            let Some(t) = sp.t_of(s, b) else {
                // Ended (never with `direct`): no gradient flows through this step.
                dgk[b * gj..(b + 1) * gj].fill(0.0);
                continue;
            };
            let row = t * bsz + b;
            let g = &sv.gates[row * gh..(row + 1) * gh];
            // Where the row's gate gradients go: the gradient rows' gate blocks at the
            // thread's units, and the product's operand (dgk, unless read in place). Arrays
            // of 4 whatever the cell; a cell with fewer gates repeats its last block.
            let to = |buf: Shared| [0, 1, 2, 3].map(|gi| buf.ptr_at(row * gh + gi.min(ng - 1) * h + j0, nj));
            let copy = (!direct).then(|| {
                let row_k = &mut dgk[b * gj..(b + 1) * gj];
                [0, 1, 2, 3].map(|gi| row_k[gi.min(ng - 1) * nj..].as_mut_ptr())
            });
            // This thread's units of dh (no projection: its own columns).
            let dh_units = || cx.dh.ptr_at(b * p + j0, nj);
            // SAFETY (the loops below): every pointer addresses nj elements (checked above)
            // of a buffer that only this thread writes there: the gradient rows' and dgk's
            // blocks at its units, dh's and dc's units; the saved rows are only read.
            match sp.cell {
                FusedCell::RnnTanh | FusedCell::RnnRelu => {
                    let r = RnnBwdRow {
                        tanh: sp.cell == FusedCell::RnnTanh,
                        g: g[j0..j0 + nj].as_ptr(),
                        dh: dh_units(),
                        dx: to(cx.dgx)[0],
                        copy: copy.map(|c| c[0]),
                    };
                    unsafe { simd::for_each_lane(l, nj, r) };
                }
                FusedCell::Lstm => {
                    let r = LstmBwdRow {
                        g: [0, 1, 2, 3].map(|gi| g[gi * h + j0..gi * h + j0 + nj].as_ptr()),
                        tc: sv.tc[row * h + j0..row * h + j0 + nj].as_ptr(),
                        cp: sv.cprev[row * h + j0..row * h + j0 + nj].as_ptr(),
                        dm: if sp.proj {
                            dmk[b * nj..(b + 1) * nj].as_ptr()
                        } else {
                            dh_units()
                        },
                        dc: cx.dc.ptr_at(b * h + j0, nj),
                        dx: to(cx.dgx),
                        copy,
                    };
                    unsafe { simd::for_each_lane(l, nj, r) };
                }
                FusedCell::Gru => {
                    let r = GruBwdRow {
                        g: [0, 1, 2].map(|gi| g[gi * h + j0..gi * h + j0 + nj].as_ptr()),
                        hp: sv.hprev[row * p + j0..row * p + j0 + nj].as_ptr(),
                        hnp: sv.hnp[row * h + j0..row * h + j0 + nj].as_ptr(),
                        dh: dh_units(),
                        dx: to(cx.dgx),
                        dprod: to(cx.dhh),
                        copy,
                    };
                    unsafe { simd::for_each_lane(l, nj, r) };
                }
            }
        }
        if team == 1 {
            // dh_prev = dG @ W_hh straight into dh: over it for RNN/LSTM (whose dh was
            // consumed above; rows of ended sequences keep theirs, so with lengths the live
            // rows are zeroed and the product, zero for ended rows, added), added to GRU's
            // direct path dh * z.
            let acc = gru || sp.lengths.is_some();
            if acc && !gru {
                for b in 0..bsz {
                    if sp.t_of(s, b).is_some() {
                        unsafe { cx.dh.mut_at(b * p, p) }.fill(0.0);
                    }
                }
            }
            let dh_all = unsafe { cx.dh.mut_at(0, bsz * p) };
            if direct {
                let t = if sp.reverse { t_len - 1 - s } else { s };
                let rows = unsafe { dprod.at(t * bsz * gh, bsz * gh) };
                times_wk(bsz, p, gh, dh_all, acc, rows, gh, wk);
            } else {
                times_wk(bsz, p, gj, dh_all, acc, &dgk, gj, wk);
            }
            continue;
        }
        let slot = (s % 2) * team;
        let part = unsafe { cx.partial.mut_at((slot + k) * bsz * p, bsz * p) };
        // (Tried: dG_k transposed first, so that gemm's packing of it copies contiguous
        // runs: callgrind counted 5 % more instructions in the backward's loop, so no.)
        times_wk(bsz, p, gj, part, false, &dgk, gj, wk);
        cx.bar.wait();
        for b in 0..bsz {
            if sp.t_of(s, b).is_none() {
                // Ended rows carry dh unchanged.
                continue;
            }
            let d = unsafe { cx.dh.mut_at(b * p + p0, np) };
            if !gru {
                d.fill(0.0);
            }
            for m in 0..team {
                let src = unsafe { cx.partial.at((slot + m) * bsz * p + b * p + p0, np) };
                for (d, v) in d.iter_mut().zip(src) {
                    *d += v;
                }
            }
        }
    }
}

/// Stores a gate gradient into its gradient row and, if any, the product's copy.
///
/// # Safety
/// As [`Lanes::store`] for both places.
#[inline(always)]
unsafe fn store2<L: Lanes>(l: L, to: *mut f32, copy: Option<*mut f32>, q: usize, v: L::V) {
    l.store(to.add(q), v);
    if let Some(c) = copy {
        l.store(c.add(q), v);
    }
}

/// One row of a thread's RNN backward: dG = dh * act'(pre-activation), from the saved
/// outputs `g` (tanh: 1 − g², ReLU: g > 0).
#[derive(Clone, Copy)]
struct RnnBwdRow {
    tanh: bool,
    g: *const f32,
    dh: *const f32,
    dx: *mut f32,
    copy: Option<*mut f32>,
}

impl LaneBody for RnnBwdRow {
    #[inline(always)]
    unsafe fn at<L: Lanes>(self, l: L, q: usize) {
        let (g, d) = (l.load(self.g.add(q)), l.load(self.dh.add(q)));
        let one = l.splat(1.0);
        let v = if self.tanh {
            l.mul(d, l.sub(one, l.mul(g, g)))
        } else {
            l.where_positive(g, d)
        };
        store2(l, self.dx, self.copy, q, v);
    }
}

/// One row of a thread's LSTM backward: the gate gradients [di df dg do] from the saved
/// activations, tanh(c) and c before the step, dm (the gradient of o * tanh c); `dc`
/// becomes the gradient of the previous c. Plain multiplies and adds in the order of the
/// former scalar loop (no FMA), so every width gives the same bits as before.
#[derive(Clone, Copy)]
struct LstmBwdRow {
    g: [*const f32; 4],
    tc: *const f32,
    cp: *const f32,
    dm: *const f32,
    dc: *mut f32,
    dx: [*mut f32; 4],
    copy: Option<[*mut f32; 4]>,
}

impl LaneBody for LstmBwdRow {
    #[inline(always)]
    unsafe fn at<L: Lanes>(self, l: L, q: usize) {
        let r = self;
        let ld = |p: *const f32| l.load(p.add(q));
        let (i, f, gq, o) = (ld(r.g[0]), ld(r.g[1]), ld(r.g[2]), ld(r.g[3]));
        let (tc, cp, dm) = (ld(r.tc), ld(r.cp), ld(r.dm));
        let one = l.splat(1.0);
        let d_o = l.mul(dm, tc);
        let dct = l.add(ld(r.dc), l.mul(l.mul(dm, o), l.sub(one, l.mul(tc, tc))));
        let di = l.mul(l.mul(l.mul(dct, gq), i), l.sub(one, i));
        let df = l.mul(l.mul(l.mul(dct, cp), f), l.sub(one, f));
        let dg = l.mul(l.mul(dct, i), l.sub(one, l.mul(gq, gq)));
        let dout = l.mul(l.mul(d_o, o), l.sub(one, o));
        for (gi, v) in [di, df, dg, dout].into_iter().enumerate() {
            store2(l, r.dx[gi], r.copy.map(|c| c[gi]), q, v);
        }
        l.store(r.dc.add(q), l.mul(dct, f));
    }
}

/// One row of a thread's GRU backward: the gx row's blocks get dr, dz, dn; the W_hh h
/// product's (`dprod`, and the copy) [dr dz dn*r]; `dh` becomes its direct path dh * z (the
/// product adds the rest). No FMA, as [`LstmBwdRow`].
#[derive(Clone, Copy)]
struct GruBwdRow {
    g: [*const f32; 3],
    hp: *const f32,
    hnp: *const f32,
    dh: *mut f32,
    dx: [*mut f32; 4],
    dprod: [*mut f32; 4],
    copy: Option<[*mut f32; 4]>,
}

impl LaneBody for GruBwdRow {
    #[inline(always)]
    unsafe fn at<L: Lanes>(self, l: L, q: usize) {
        let w = self;
        let ld = |p: *const f32| l.load(p.add(q));
        let (r, z, n) = (ld(w.g[0]), ld(w.g[1]), ld(w.g[2]));
        let d = ld(w.dh);
        let one = l.splat(1.0);
        let dan = l.mul(l.mul(d, l.sub(one, z)), l.sub(one, l.mul(n, n)));
        let dar = l.mul(l.mul(l.mul(dan, ld(w.hnp)), r), l.sub(one, r));
        let daz = l.mul(l.mul(l.mul(d, l.sub(ld(w.hp), n)), z), l.sub(one, z));
        for (gi, (x, pr)) in [(dar, dar), (daz, daz), (dan, l.mul(dan, r))].into_iter().enumerate() {
            l.store(w.dx[gi].add(q), x);
            store2(l, w.dprod[gi], w.copy.map(|c| c[gi]), q, pr);
        }
        l.store(w.dh.add(q), l.mul(d, z));
    }
}

/// A team member's body as a [`simd::WithLanes`] body: [`simd::run_widest`] compiles it for
/// the widest vector unit present, with the matching [`Lanes`] for its hand-vectorised gate
/// loops (the crate is built for baseline x86-64, SSE2, where the compiler's own
/// vectorisation would use 4-wide vectors only). `portable` (tests) forces the one-lane path.
macro_rules! member_run {
    ($run:ident, $member:ident, $body:ident, $ctx:ident) => {
        struct $member<'c, 'a>(&'c $ctx<'a>, usize);

        impl simd::WithLanes for $member<'_, '_> {
            type Out = ();
            #[inline(always)]
            fn run<L: Lanes>(self, l: L) {
                $body(self.0, self.1, l)
            }
        }

        fn $run(cx: &$ctx, k: usize, portable: bool) {
            simd::run_widest(portable, $member(cx, k))
        }
    };
}

member_run!(fwd_run, FwdMember, fwd_body, Fwd);
member_run!(bwd_run, BwdMember, bwd_body, Bwd);

impl FusedRecurrence {
    /// The op for one layer and direction; rejects a spec whose sizes do not fit together.
    pub fn new(spec: FusedSpec) -> Result<Self> {
        if let Some(l) = &spec.lengths {
            if l.len() != spec.batch {
                bail!("fused recurrence: {} lengths for a batch of {}", l.len(), spec.batch);
            }
            if l.iter().any(|&n| n == 0 || n > spec.seq_len) {
                bail!("fused recurrence: lengths must be in 1..={}, got {l:?}", spec.seq_len);
            }
        }
        if spec.proj && spec.cell != FusedCell::Lstm {
            bail!("fused recurrence: projection is LSTM-only");
        }
        if !spec.proj && spec.out != spec.hidden {
            bail!(
                "fused recurrence: out size {} != hidden {} without projection",
                spec.out,
                spec.hidden
            );
        }
        if spec.hidden == 0 || spec.out == 0 {
            bail!("fused recurrence: hidden and out sizes must be > 0");
        }
        let threads = team_size(&spec);
        Ok(Self {
            spec,
            saved: Mutex::new(None),
            keep: true,
            threads,
            portable: false,
            serial_gemm: false,
        })
    }

    /// Runs the op: returns `(out (T, B, P), hn (B, P), cn (B, H) for LSTM)`.
    pub fn run(spec: FusedSpec, gx: &Tensor, state0: &Tensor, w: &Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let mut op = Self::new(spec.clone())?;
        op.keep = gx.track_op() || state0.track_op() || w.track_op();
        let res = gx
            .contiguous()?
            .apply_op3(&state0.contiguous()?, &w.contiguous()?, op)?;
        split_result(&spec, &res)
    }

    fn forward(&self, gx: &[f32], state0: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        let sp = &self.spec;
        let (t_len, bsz, h, p, gh) = (sp.seq_len, sp.batch, sp.hidden, sp.out, sp.gh());
        if gx.len() != t_len * bsz * gh || state0.len() != sp.state_len() || w.len() != sp.w_len() {
            bail!(
                "fused recurrence: argument sizes gx {} state {} w {}, expected {} {} {}",
                gx.len(),
                state0.len(),
                w.len(),
                t_len * bsz * gh,
                sp.state_len(),
                sp.w_len()
            );
        }
        let lstm = sp.cell == FusedCell::Lstm;
        let units = Split::new(h, self.threads);
        let pcols = Split::new(p, units.n);
        let whr = if sp.proj { &w[gh * p..gh * p + p * h] } else { &[][..] };
        let bhn = if sp.gru_bhn {
            w[w.len() - h..].to_vec()
        } else {
            vec![0f32; h]
        };
        let mut sv = Saved {
            // SAFETY: the team's threads write every block (`pack_block`).
            wp: unsafe { super::uninit_f32(gh * p) },
            // SAFETY: the team's threads write every block (`pack_proj`).
            whrp: unsafe { super::uninit_f32(whr.len()) },
            units,
            pcols,
            ..Default::default()
        };
        if self.keep {
            sv.hprev = rows_buffer(sp, t_len * bsz * p);
            sv.gates = rows_buffer(sp, t_len * bsz * gh);
            if lstm {
                sv.cprev = rows_buffer(sp, t_len * bsz * h);
                sv.tc = rows_buffer(sp, t_len * bsz * h);
                if sp.proj {
                    sv.m = rows_buffer(sp, t_len * bsz * h);
                }
            }
            if sp.cell == FusedCell::Gru {
                sv.hnp = rows_buffer(sp, t_len * bsz * h);
            }
        }
        // The outputs' rows, then hn (and cn), copied in after the loop.
        let mut res = rows_buffer(sp, t_len * bsz * p + sp.state_len());
        let mut h_a = state0[..bsz * p].to_vec();
        let mut h_b = vec![0f32; bsz * p];
        let mut c = if lstm { state0[bsz * p..].to_vec() } else { vec![] };
        let mut m = vec![0f32; if sp.proj { bsz * h } else { 0 }];
        // SAFETY: as `wp`.
        let mut wpt = unsafe { super::uninit_f32(gh * p) };
        // SAFETY: as `whrp`.
        let mut whrt = unsafe { super::uninit_f32(whr.len()) };
        let bar = SpinBarrier::new(units.n);
        {
            let cx = Fwd {
                sp,
                units,
                pcols,
                gx,
                whh: &w[..gh * p],
                wp: Shared::new(&mut sv.wp),
                wpt: Shared::new(&mut wpt),
                whr,
                whrt: Shared::new(&mut whrt),
                whrp: Shared::new(&mut sv.whrp),
                bhn: &bhn,
                keep: self.keep,
                bar: &bar,
                h: [Shared::new(&mut h_a), Shared::new(&mut h_b)],
                c: Shared::new(&mut c),
                m: Shared::new(&mut m),
                res: Shared::new(&mut res),
                hprev: Shared::new(&mut sv.hprev),
                gates: Shared::new(&mut sv.gates),
                cprev: Shared::new(&mut sv.cprev),
                tc: Shared::new(&mut sv.tc),
                msave: Shared::new(&mut sv.m),
                hnp: Shared::new(&mut sv.hnp),
            };
            team(units.n, &bar, |k| fwd_run(&cx, k, self.portable));
        }
        let hfinal = if t_len % 2 == 0 { &h_a } else { &h_b };
        let base = t_len * bsz * p;
        res[base..base + bsz * p].copy_from_slice(hfinal);
        if lstm {
            res[base + bsz * p..].copy_from_slice(&c);
        }
        if self.keep {
            *self.saved.lock().unwrap() = Some(sv);
        }
        Ok(res)
    }

    /// BPTT. `gres` is the flat gradient of the result. Returns (dgx, dstate0, dw).
    fn backward(&self, gres: &[f32]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let sp = &self.spec;
        let (t_len, bsz, h, p, gh) = (sp.seq_len, sp.batch, sp.hidden, sp.out, sp.gh());
        let guard = self.saved.lock().unwrap();
        let Some(sv) = guard.as_ref() else {
            bail!("fused recurrence: backward before forward")
        };
        let lstm = sp.cell == FusedCell::Lstm;
        let gru = sp.cell == FusedCell::Gru;
        let mut dh = gres[t_len * bsz * p..t_len * bsz * p + bsz * p].to_vec();
        let mut dc = if lstm {
            gres[t_len * bsz * p + bsz * p..].to_vec()
        } else {
            vec![]
        };
        // dgx in time order; for RNN/LSTM it is also the gradient of h @ W_hh^T.
        let mut dgx = rows_buffer(sp, t_len * bsz * gh);
        // GRU: the gradient of h @ W_hh^T (+ b_hn) differs from dgx in the n block.
        let mut dhh = if gru { rows_buffer(sp, t_len * bsz * gh) } else { vec![] };
        let mut dhs = if sp.proj {
            rows_buffer(sp, t_len * bsz * p)
        } else {
            vec![]
        };
        let team_n = sv.units.n;
        // SAFETY: each partial is written whole by its thread's product before the barrier
        // after which it is read; a team of one multiplies into dh and has none.
        let mut partial = unsafe { super::uninit_f32(if team_n > 1 { 2 * team_n * bsz * p } else { 0 }) };
        let bar = SpinBarrier::new(team_n);
        {
            let cx = Bwd {
                sp,
                sv,
                dout: &gres[..t_len * bsz * p],
                bar: &bar,
                dh: Shared::new(&mut dh),
                dc: Shared::new(&mut dc),
                dgx: Shared::new(&mut dgx),
                dhh: Shared::new(&mut dhh),
                dhs: Shared::new(&mut dhs),
                partial: Shared::new(&mut partial),
            };
            team(team_n, &bar, |k| bwd_run(&cx, k, self.portable));
        }
        let mut dstate = dh;
        if lstm {
            dstate.extend_from_slice(&dc);
        }
        // SAFETY: the products below overwrite dW_hh and dW_hr (not accumulating); b_hn's
        // part, which is summed into, is zeroed here.
        let mut dw = unsafe { super::uninit_f32(sp.w_len()) };
        let whh_hr = gh * p + if sp.proj { p * h } else { 0 };
        dw[whh_hr..].fill(0.0);
        let rows = t_len * bsz;
        let dgate_all: &[f32] = if gru { &dhh } else { &dgx };
        // The pool's threads, unless a pair's other direction runs beside this one.
        let serial = self.serial_gemm;
        // dW_hh = dG^T @ H_prev over all steps at once (GH × TB @ TB × P).
        super::weight_grad(
            &mut dw[..gh * p],
            &dgate_all[..rows * gh],
            &sv.hprev[..rows * p],
            rows,
            gh,
            p,
            serial,
        );
        if sp.proj {
            // dW_hr = dH^T @ M (P × TB @ TB × H).
            super::weight_grad(
                &mut dw[gh * p..gh * p + p * h],
                &dhs[..rows * p],
                &sv.m[..rows * h],
                rows,
                p,
                h,
                serial,
            );
        }
        if sp.gru_bhn {
            let off = dw.len() - h;
            for r in 0..rows {
                for j in 0..h {
                    dw[off + j] += dhh[r * gh + 2 * h + j];
                }
            }
        }
        Ok((dgx, dstate, dw))
    }
}

/// The `CustomOp3` of a fused op over three flat f32 arguments: its `forward(a1, a2, a3)`
/// returns the flat result, its `backward(result gradient)` the three arguments' gradients;
/// `$op` names it in errors.
macro_rules! flat_op3 {
    ($ty:ty, $name:literal, $op:literal, [$w1:literal, $w2:literal, $w3:literal]) => {
        impl CustomOp3 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
                s3: &CpuStorage,
                l3: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let a1 = super::contiguous_f32($op, $w1, s1, l1)?;
                let a2 = super::contiguous_f32($op, $w2, s2, l2)?;
                let a3 = super::contiguous_f32($op, $w3, s3, l3)?;
                let res = self.forward(a1, a2, a3)?;
                let n = res.len();
                Ok((CpuStorage::F32(res), Shape::from(n)))
            }

            fn bwd(
                &self,
                arg1: &Tensor,
                arg2: &Tensor,
                arg3: &Tensor,
                _res: &Tensor,
                grad_res: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
                let g = grad_res
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?;
                let (d1, d2, d3) = self.backward(&g)?;
                let dev = arg1.device();
                Ok((
                    Some(Tensor::from_vec(d1, arg1.shape(), dev)?),
                    Some(Tensor::from_vec(d2, arg2.shape(), dev)?),
                    Some(Tensor::from_vec(d3, arg3.shape(), dev)?),
                ))
            }
        }
    };
}

flat_op3!(
    FusedRecurrence,
    "seqlab-fused-recurrence",
    "fused recurrence",
    ["gx", "state0", "weights"]
);

/// Both directions of a bidirectional layer as ONE op whose directions run at the same time,
/// each on half of the threads (at 2 threads: one each, with no barrier and no split of the
/// per-step products at all), forward and backward, where two [`FusedRecurrence`] ops would
/// run one after the other, each direction's steps split over the team. Arguments: `gx` of
/// the forward and of the reverse direction, then one flat `[state0, w]` of the forward
/// direction followed by the reverse's (as [`FusedRecurrence`] takes them); result: the two
/// directions' flat results, forward first. Each direction computes exactly what its own op
/// would with that op's team.
pub struct FusedPair {
    ops: [FusedRecurrence; 2],
}

impl FusedPair {
    /// The pair for a layer's two specs (forward, reverse), if running them side by side pays:
    /// at least 2 threads outside a rayon worker and a problem the size a team would take
    /// (see [`team_size`]); else `None` (run the two ops).
    pub(crate) fn new(specs: [FusedSpec; 2]) -> Result<Option<Self>> {
        let threads = rayon::current_num_threads();
        let big = specs
            .iter()
            .all(|sp| sp.batch * sp.gh() * sp.out * sp.seq_len >= 1 << 22);
        if threads < 2 || super::in_rayon_task() || !big {
            return Ok(None);
        }
        Self::with_threads(specs, threads).map(Some)
    }

    /// The pair with `threads` in all, half per direction.
    fn with_threads(specs: [FusedSpec; 2], threads: usize) -> Result<Self> {
        let [f, r] = specs;
        let mut ops = [FusedRecurrence::new(f)?, FusedRecurrence::new(r)?];
        for op in &mut ops {
            op.threads = (threads / 2).max(1);
            op.serial_gemm = op.threads == 1;
        }
        Ok(Self { ops })
    }

    /// Both directions of a layer: `(out, hn, cn)` of each, forward first, as
    /// [`FusedRecurrence::run`] returns them; side by side where that pays ([`FusedPair::new`]).
    pub fn run(
        specs: [FusedSpec; 2],
        gx: [&Tensor; 2],
        state0: [&Tensor; 2],
        w: [&Tensor; 2],
    ) -> Result<[(Tensor, Tensor, Option<Tensor>); 2]> {
        let Some(mut pair) = Self::new(specs.clone())? else {
            let [sf, sr] = specs;
            return Ok([
                FusedRecurrence::run(sf, gx[0], state0[0], w[0])?,
                FusedRecurrence::run(sr, gx[1], state0[1], w[1])?,
            ]);
        };
        let keep = gx.iter().chain(&state0).chain(&w).any(|t| t.track_op());
        for op in &mut pair.ops {
            op.keep = keep;
        }
        let lens = pair.res_lens();
        let rest = Tensor::cat(
            &[state0[0], w[0], state0[1], w[1]]
                .map(|t| t.flatten_all())
                .into_iter()
                .collect::<Result<Vec<_>>>()?,
            0,
        )?;
        let res = gx[0].contiguous()?.apply_op3(&gx[1].contiguous()?, &rest, pair)?;
        let [sf, sr] = specs;
        Ok([
            split_result(&sf, &res.narrow(0, 0, lens[0])?)?,
            split_result(&sr, &res.narrow(0, lens[0], lens[1])?)?,
        ])
    }

    /// The length of each direction's flat result.
    fn res_lens(&self) -> [usize; 2] {
        self.ops.each_ref().map(|op| {
            let sp = &op.spec;
            sp.seq_len * sp.batch * sp.out + sp.state_len()
        })
    }

    /// Each direction's `(state0, w)` in the flat third argument.
    fn split_rest<'a>(&self, rest: &'a [f32]) -> Result<[(&'a [f32], &'a [f32]); 2]> {
        let [a, b] = self.ops.each_ref().map(|op| (op.spec.state_len(), op.spec.w_len()));
        if rest.len() != a.0 + a.1 + b.0 + b.1 {
            bail!(
                "fused recurrence pair: state and weights of {} values, expected {}",
                rest.len(),
                a.0 + a.1 + b.0 + b.1
            );
        }
        let (st_f, rest) = rest.split_at(a.0);
        let (w_f, rest) = rest.split_at(a.1);
        let (st_r, w_r) = rest.split_at(b.0);
        Ok([(st_f, w_f), (st_r, w_r)])
    }

    /// Runs `f` for both directions at the same time: the reverse as a task of rayon's pool,
    /// which its idle thread takes at once. The directions never wait for each other, so a busy
    /// pool only runs them one after the other. (A scoped OS thread spawned per call, four per
    /// training step, beside the pool's idle worker: the 2-thread lstm-bidir row measured 6,183
    /// tok/s that way and 7,751 this way, quiet runner, session 12; the cause was not isolated.)
    fn both<T: Send>(&self, f: impl Fn(&FusedRecurrence, usize) -> T + Sync) -> [T; 2] {
        let (fwd, rev) = rayon::join(|| f(&self.ops[0], 0), || f(&self.ops[1], 1));
        [fwd, rev]
    }

    fn forward(&self, gx_f: &[f32], gx_r: &[f32], rest: &[f32]) -> Result<Vec<f32>> {
        let parts = self.split_rest(rest)?;
        let gx = [gx_f, gx_r];
        let [f, r] = self.both(|op, d| op.forward(gx[d], parts[d].0, parts[d].1));
        let (f, r) = (f?, r?);
        let mut res = Vec::with_capacity(f.len() + r.len());
        res.extend_from_slice(&f);
        res.extend_from_slice(&r);
        Ok(res)
    }

    /// Returns (dgx of each direction, the gradient of the flat third argument).
    fn backward(&self, gres: &[f32]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let lens = self.res_lens();
        if gres.len() != lens[0] + lens[1] {
            bail!(
                "fused recurrence pair: result gradient of {} values, expected {}",
                gres.len(),
                lens[0] + lens[1]
            );
        }
        let (g_f, g_r) = gres.split_at(lens[0]);
        let [f, r] = self.both(|op, d| op.backward(if d == 0 { g_f } else { g_r }));
        let ((dgx_f, dst_f, dw_f), (dgx_r, dst_r, dw_r)) = (f?, r?);
        let rest = [dst_f, dw_f, dst_r, dw_r].concat();
        Ok((dgx_f, dgx_r, rest))
    }
}

flat_op3!(
    FusedPair,
    "seqlab-fused-recurrence-pair",
    "fused recurrence pair",
    ["gx", "gx (reverse)", "states and weights"]
);

/// `(out (T, B, P), hn (B, P), cn (B, H) for LSTM)` of one direction's flat result.
fn split_result(spec: &FusedSpec, res: &Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let (t, b, p, h) = (spec.seq_len, spec.batch, spec.out, spec.hidden);
    let out = res.narrow(0, 0, t * b * p)?.reshape((t, b, p))?;
    let hn = res.narrow(0, t * b * p, b * p)?.reshape((b, p))?;
    let cn = if spec.cell == FusedCell::Lstm {
        Some(res.narrow(0, t * b * p + b * p, b * h)?.reshape((b, h))?)
    } else {
        None
    };
    Ok((out, hn, cn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_math_is_accurate() {
        let mut worst_e = 0f64;
        let mut worst_t = 0f64;
        let mut x = -30.0f32;
        while x < 30.0 {
            let e = fexp(x) as f64;
            let ee = (x as f64).exp();
            worst_e = worst_e.max(((e - ee) / ee).abs());
            let t = ftanh(x) as f64;
            let tt = (x as f64).tanh();
            // Relative for every x (the former (1 − e)/(1 + e) needed a floor of 1e-3 here).
            worst_t = worst_t.max((t - tt).abs() / tt.abs());
            x += 0.0137;
        }
        assert!(worst_e < 5e-7, "exp rel err {worst_e}");
        assert!(worst_t < 4e-7, "tanh err {worst_t}");
        assert!(sigmoid(-200.0) < 1e-30 && sigmoid(200.0) == 1.0);
        assert!(ftanh(-100.0) == -1.0 && ftanh(0.0) == 0.0);
        assert!((ftanh(1e-6) - 1e-6).abs() < 1e-13 && (ftanh(-3e-5) + 3e-5).abs() < 3e-12);
    }

    /// Deterministic values in [-scale, scale).
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// Every cell the op runs: (cell, proj, gru_bhn).
    const CELLS: [(FusedCell, bool, bool); 6] = [
        (FusedCell::RnnTanh, false, false),
        (FusedCell::RnnRelu, false, false),
        (FusedCell::Lstm, false, false),
        (FusedCell::Lstm, true, false),
        (FusedCell::Gru, false, true),
        (FusedCell::Gru, false, false),
    ];

    /// One op's spec and random arguments (B 3, H 40, a projected LSTM's P 24); `gx` in
    /// [−gx_scale, gx_scale).
    struct Case {
        spec: FusedSpec,
        gx: Vec<f32>,
        st: Vec<f32>,
        w: Vec<f32>,
        gres: Vec<f32>,
    }

    impl Case {
        fn new(
            cell: (FusedCell, bool, bool),
            t: usize,
            reverse: bool,
            lengths: Option<Vec<usize>>,
            seed: u64,
            gx_scale: f32,
        ) -> Self {
            let (cell, proj, gru_bhn) = cell;
            let (b, h) = (3, 40);
            let p = if proj { 24 } else { h };
            let spec = FusedSpec {
                cell,
                seq_len: t,
                batch: b,
                hidden: h,
                out: p,
                proj,
                gru_bhn,
                reverse,
                lengths,
            };
            Self {
                gx: values(t * b * spec.gh(), seed + 1, gx_scale),
                st: values(spec.state_len(), seed + 2, 0.5),
                w: values(spec.w_len(), seed + 3, 0.3),
                gres: values(t * b * p + spec.state_len(), seed + 4, 1.0),
                spec,
            }
        }

        /// [result, dgx, dstate, dw] from a team of `threads`, on the one-lane path if
        /// `portable`.
        fn run(&self, threads: usize, portable: bool) -> [Vec<f32>; 4] {
            let mut op = FusedRecurrence::new(self.spec.clone()).unwrap();
            op.threads = threads;
            op.portable = portable;
            let res = op.forward(&self.gx, &self.st, &self.w).unwrap();
            let (dgx, dst, dw) = op.backward(&self.gres).unwrap();
            [res, dgx, dst, dw]
        }
    }

    /// A team of threads (units split 32+8 and 16+16+8, a projected LSTM's columns 16+8 with
    /// an idle third thread) computes what one thread computes, forward and backward, for
    /// every cell, both directions and ragged lengths; only dh's summation order differs.
    #[test]
    fn team_matches_one_thread() {
        // Without lengths the op's buffers start unwritten (NaN in unit tests): every element
        // read must have been written.
        let runs = [
            (false, Some(vec![5, 2, 4])),
            (true, Some(vec![5, 2, 4])),
            (false, None),
            (true, None),
        ];
        for (ci, cell) in CELLS.into_iter().enumerate() {
            for (reverse, lengths) in runs.clone() {
                let c = Case::new(cell, 5, reverse, lengths, ci as u64 * 10, 1.0);
                let one = c.run(1, false);
                for n in [2, 3] {
                    assert_eq!(Split::new(c.spec.hidden, n).n, n);
                    let many = c.run(n, false);
                    for (what, (a, b)) in ["res", "dgx", "dstate", "dw"].iter().zip(one.iter().zip(&many)) {
                        assert_eq!(a.len(), b.len());
                        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                        assert!(d < 1e-5, "{cell:?} reverse {reverse} team {n}: {what} differs by {d}");
                        assert!(a.iter().chain(b).all(|v| v.is_finite()), "{what} has NaN/inf");
                        assert!(a.iter().any(|v| *v != 0.0), "{what} is all zeros");
                    }
                }
            }
        }
    }

    /// The hand-vectorised gate loops (16 or 8 lanes, a 40-unit cell: whole vectors plus a
    /// one-lane tail with AVX-512) compute what the one-lane loops compute, forward and
    /// backward, for every cell, with pre-activations reaching the saturating ranges.
    #[test]
    fn vector_gate_loops_match_portable() {
        for (ci, (cell, lengths)) in CELLS
            .into_iter()
            .flat_map(|c| [(c, None), (c, Some(vec![6, 3, 5]))])
            .enumerate()
        {
            let c = Case::new(cell, 6, false, lengths, 100 + ci as u64 * 10, 12.0);
            let (scalar, vector) = (c.run(1, true), c.run(1, false));
            for (what, (a, b)) in ["res", "dgx", "dstate", "dw"].iter().zip(scalar.iter().zip(&vector)) {
                let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
                let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(d <= 1e-6 * scale, "{cell:?}: {what} differs by {d} (scale {scale})");
                assert!(b.iter().all(|v| v.is_finite()), "{cell:?}: {what} has NaN/inf");
            }
        }
    }

    /// The backward's gate rows (plain multiplies and adds, no FMA) give the same bits on
    /// every vector width as on one lane, hence as the former scalar loops: inputs of 40
    /// units (whole vectors plus a one-lane tail with AVX-512), ReLU's gate at outputs ≤ 0.
    #[test]
    fn backward_rows_are_bitwise_equal_across_widths() {
        const N: usize = 40;
        /// All outputs of the four cells' rows on the lanes of `l`, concatenated.
        #[inline(always)]
        fn rows<L: Lanes>(l: L) -> Vec<f32> {
            let mut v = values(16 * N, 7, 1.0);
            // Saved activations in (0, 1) (tanh outputs in (−1, 1)), some ReLU outputs 0.
            for x in &mut v[..4 * N] {
                *x = 0.5 + 0.49 * *x;
            }
            for x in v[12 * N..13 * N].iter_mut().step_by(3) {
                *x = 0.0;
            }
            let mut out = vec![0f32; 40 * N];
            let (inp, o) = (v.as_mut_ptr(), out.as_mut_ptr());
            let blk = |base: *mut f32, k: usize| unsafe { base.add(k * N) };
            let four = |base: *mut f32, k: usize| [0, 1, 2, 3].map(|g| blk(base, k + g));
            // SAFETY: every block is N elements of `v` or `out`; blocks written are distinct.
            unsafe {
                let lstm = LstmBwdRow {
                    g: four(inp, 0).map(|p| p as *const f32),
                    tc: blk(inp, 4),
                    cp: blk(inp, 5),
                    dm: blk(inp, 6),
                    dc: blk(inp, 7),
                    dx: four(o, 0),
                    copy: Some(four(o, 4)),
                };
                simd::for_each_lane(l, N, lstm);
                let gru = GruBwdRow {
                    g: [0, 1, 2].map(|g| blk(inp, g) as *const f32),
                    hp: blk(inp, 8),
                    hnp: blk(inp, 9),
                    dh: blk(inp, 10),
                    dx: four(o, 8),
                    dprod: four(o, 12),
                    copy: Some(four(o, 16)),
                };
                simd::for_each_lane(l, N, gru);
                for (k, tanh) in [(20, true), (22, false)] {
                    let rnn = RnnBwdRow {
                        tanh,
                        g: blk(inp, if tanh { 11 } else { 12 }),
                        dh: blk(inp, 13),
                        dx: blk(o, k),
                        copy: Some(blk(o, k + 1)),
                    };
                    simd::for_each_lane(l, N, rnn);
                }
            }
            // The rows' in-out operands (dc, GRU's dh) belong to the result too.
            out.extend_from_slice(&v[7 * N..8 * N]);
            out.extend_from_slice(&v[10 * N..11 * N]);
            out
        }
        let scalar = rows(Scalar);
        assert!(scalar.iter().all(|v| v.is_finite()));
        assert!(scalar[22 * N..23 * N].iter().step_by(3).all(|v| *v == 0.0), "ReLU gate");
        #[cfg(target_arch = "x86_64")]
        {
            use simd::{Avx2Fma, Avx512};
            struct Rows;
            impl simd::WithLanes for Rows {
                type Out = Vec<f32>;
                #[inline(always)]
                fn run<L: Lanes>(self, l: L) -> Vec<f32> {
                    rows(l)
                }
            }
            let bits = crate::testing::bits;
            if let Some(l) = Avx512::detect() {
                // SAFETY: the token proves the features.
                assert_eq!(bits(&unsafe { simd::run16(Rows, l) }), bits(&scalar), "AVX-512 rows");
            }
            if let Some(l) = Avx2Fma::detect() {
                // SAFETY: as above.
                assert_eq!(bits(&unsafe { simd::run8(Rows, l) }), bits(&scalar), "AVX2 rows");
            }
        }
    }

    /// A bidirectional layer's pair, its directions side by side on one thread each,
    /// computes bit for bit what the two directions' ops compute one after the other on one
    /// thread each: results, gate-input gradients, state and weight gradients, for every cell
    /// with and without lengths.
    #[test]
    fn pair_matches_two_ops() {
        for (ci, cell) in CELLS.into_iter().enumerate() {
            for lengths in [None, Some(vec![5, 2, 4])] {
                let cases = [false, true]
                    .map(|rev| Case::new(cell, 5, rev, lengths.clone(), 300 + ci as u64 * 10 + rev as u64, 1.0));
                let pair = FusedPair::with_threads([0, 1].map(|d| cases[d].spec.clone()), 2).unwrap();
                assert!(pair.ops.iter().all(|op| op.threads == 1 && op.serial_gemm));
                let rest = [&cases[0].st, &cases[0].w, &cases[1].st, &cases[1].w]
                    .map(|v| v.as_slice())
                    .concat();
                let res = pair.forward(&cases[0].gx, &cases[1].gx, &rest).unwrap();
                let gres = [&cases[0].gres, &cases[1].gres].map(|v| v.as_slice()).concat();
                let (dgx_f, dgx_r, drest) = pair.backward(&gres).unwrap();
                let [one_f, one_r] = [0, 1].map(|d| cases[d].run(1, false));
                let bits = crate::testing::bits;
                let want_res = [one_f[0].as_slice(), &one_r[0]].concat();
                let want_rest = [one_f[2].as_slice(), &one_f[3], &one_r[2], &one_r[3]].concat();
                for (what, got, want) in [
                    ("res", &res, &want_res),
                    ("dgx forward", &dgx_f, &one_f[1]),
                    ("dgx reverse", &dgx_r, &one_r[1]),
                    ("dstate, dw", &drest, &want_rest),
                ] {
                    assert_eq!(bits(got), bits(want), "{cell:?} lengths {lengths:?}: {what}");
                }
            }
        }
    }

    #[test]
    fn splits_cover_everything_once() {
        for len in [1, 15, 16, 17, 40, 512, 1000] {
            for want in 1..5 {
                let s = Split::new(len, want);
                assert!(s.n >= 1 && s.n <= want.max(1));
                let mut next = 0;
                for k in 0..s.n {
                    let (a, n) = s.range(k);
                    assert_eq!(a, next);
                    assert!(n > 0);
                    next = a + n;
                }
                assert_eq!(next, len);
                assert_eq!(s.range(s.n).1, 0);
            }
        }
    }
}
