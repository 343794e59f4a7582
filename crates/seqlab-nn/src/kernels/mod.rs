//! seqlab's fused CPU kernels: the unsafe, hand-written forward and backward passes behind
//! the layers, each one candle `CustomOp` (one graph node):
//!
//! - [`attention`]: scaled dot-product attention per (batch, head) with masks, dropout and the
//!   differentiable attention weights (behind [`crate::attention`]);
//! - [`linear`]: `x Wᵀ + b`, optionally with ReLU and dropout, in one pass (behind the
//!   Transformer's projections and feed-forward block — not attention-specific);
//! - [`layer_norm`]: LayerNorm over the last dimension (behind [`crate::LayerNorm`]);
//! - [`gelu`]: the exact (erf) GELU with its one-pass backward (behind [`crate::ops::gelu`]);
//! - [`cross_entropy`]: `F.cross_entropy` per row with label smoothing (behind
//!   [`crate::loss::cross_entropy`]);
//! - [`recurrence`]: the whole RNN/LSTM/GRU time loop of one layer and direction, with BPTT
//!   (behind [`crate::recurrent`]);
//! - [`selective_scan`]: Mamba's selective scan with a chunk-recomputing backward, and
//!   [`causal_conv1d`]: its causal depthwise convolution + SiLU (behind [`crate::mamba`]);
//! - [`state_update`]: one decoding step of a Mamba mixer (conv window and SSM state), the
//!   CPU counterpart of `mamba_ssm`'s `selective_state_update` (no backward: decoding only);
//! - [`rows`]: an in-place row gather of a decoding cache buffer (beam reorders);
//! - `gemm_order`: gemm's arithmetic written out for a decoding step's single-query
//!   attention, its values bit for bit;
//! - `transpose`: a vectorised row-major transpose (weights handed to gemm transposed);
//! - `simd`: hand-vectorised pieces behind CPU-feature tokens: elementwise arithmetic written
//!   once for 16 (AVX-512), 8 (AVX2 + FMA) and 1 lane (exp, sigmoid, tanh, the gate loops).
//!
//! The layer modules hold the public API, configs and validation; this module holds only the
//! numerics, plus the shared plumbing below (argument slices and a strided f32 matmul on the
//! `gemm` crate). Every kernel is checked against plain candle ops in its tests and, through
//! its layer, against PyTorch (`tests/torch_parity.rs`).

pub mod attention;
pub mod causal_conv1d;
pub mod cross_entropy;
pub mod gelu;
pub(crate) mod gemm_order;
pub mod layer_norm;
pub mod linear;
pub mod peak;
pub mod recurrence;
pub(crate) mod rowexp;
pub mod rows;
pub mod selective_scan;
pub(crate) mod simd;
pub mod state_update;
pub(crate) mod transpose;

use candle_core::{bail, CpuStorage, Layout, Result, Storage};

/// Whether the calling thread is running a task of rayon's pool, so that the caller of a
/// kernel already parallelises and the kernel should not start threads of its own. The
/// program's main thread is the exception: the binary makes it thread 0 of rayon's global
/// pool (`ThreadPoolBuilder::use_current_thread`, seqlab-cli's `join_thread_pool`), where
/// `rayon::current_thread_index()` is `Some(0)` at the top level of every command, not only
/// inside a parallel task. A parallel loop whose body calls a threaded kernel from the main
/// thread could oversubscribe the cores for that body; no seqlab loop does.
pub(crate) fn in_rayon_task() -> bool {
    rayon::current_thread_index().is_some() && std::thread::current().name() != Some("main")
}

/// Runs `f` compiled for AVX2 + FMA when the CPU has them (else as compiled for the target, on
/// x86-64 plain SSE2): `f`'s loops, inlined here, are vectorised 8 lanes wide with fused
/// multiply-adds. Results differ from the plain build only in rounding.
#[inline(always)]
pub(crate) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `n` f32 of unspecified value, for a buffer whose user writes every element before reading
/// any (a `vec![0.0; n]` would be a memset of the whole buffer for nothing: with the allocator
/// reusing freed memory, every call pays it). Unit tests get NaNs, so that a read before the
/// write shows up.
///
/// # Safety
/// Every element must be written before it is read.
pub(crate) unsafe fn uninit_f32(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    if cfg!(test) {
        v.resize(n, f32::NAN);
    } else {
        // SAFETY: the capacity is `n`; f32 has no drop glue and the caller writes every
        // element before reading it.
        v.set_len(n);
    }
    v
}

/// A fresh `n`-element output filled by `f(first element, piece)` over its pieces of
/// `chunk` elements: in parallel when there is more than one piece, else on the calling
/// thread (the element-wise ops' outer loop: GELU, dropout).
///
/// # Safety
/// `f` must write every element of the piece it is given.
pub(crate) unsafe fn fill_chunks(n: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    // SAFETY: the caller's `f` writes every element of every piece, and the pieces cover it.
    let mut out = uninit_f32(n);
    let work = |(k, piece): (usize, &mut [f32])| f(k * chunk, piece);
    if n > chunk {
        out.par_chunks_mut(chunk).enumerate().for_each(work);
    } else {
        out.chunks_mut(chunk).enumerate().for_each(work);
    }
    out
}

/// A pointer into an output buffer shared by parallel tasks that each write their own,
/// disjoint part of it (the caller's SAFETY argument says which).
#[derive(Clone, Copy)]
pub(crate) struct MutPtr(pub(crate) *mut f32);
// SAFETY: the tasks sharing it write disjoint elements (see each use).
unsafe impl Send for MutPtr {}
unsafe impl Sync for MutPtr {}
impl MutPtr {
    // A method (not field access) so that closures capture the whole Send wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// All f32 elements of a CPU storage (a strided view is read through its layout by the op).
pub(crate) fn storage_f32<'a>(op: &str, what: &str, s: &'a CpuStorage) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        _ => bail!("{op}: {what} must be f32"),
    }
}

/// All f32 elements of a storage that must be on the CPU (for the backward passes, which get
/// tensors rather than CPU storages).
pub(crate) fn device_f32<'a>(op: &str, what: &str, s: &'a Storage) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => storage_f32(op, what, c),
        _ => bail!("{op} runs on the CPU only ({what} is on another device)"),
    }
}

/// The elements of a contiguous f32 CPU tensor argument.
pub(crate) fn contiguous_f32<'a>(op: &str, what: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    contiguous(op, what, storage_f32(op, what, s)?, l)
}

/// The part of `data` a contiguous layout covers.
pub(crate) fn contiguous<'a>(op: &str, what: &str, data: &'a [f32], l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

/// dst (m×n, row-major with row stride `dst_rs`) = [dst +] a (m×k) @ b (k×n), with explicit
/// strides.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    sgemm_strided(m, n, k, dst, dst_rs, 1, accumulate, a, a_rs, a_cs, b, b_rs, b_cs)
}

/// [`sgemm_strided`] on the calling thread only: for the small per-step products of a team of
/// threads that already splits the work itself (nesting `gemm`'s rayon split inside would
/// oversubscribe).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn sgemm_serial(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    sgemm_with(
        gemm::Parallelism::None,
        m,
        n,
        k,
        dst,
        dst_rs,
        dst_cs,
        accumulate,
        a,
        a_rs,
        a_cs,
        b,
        b_rs,
        b_cs,
    )
}

/// [`sgemm`] with any destination strides. The `gemm` crate is column-major at heart: it
/// computes a row-major `dst` (`dst_cs < dst_rs`) as its transpose `bᵀ aᵀ`, and it reads its
/// left operand in place only when that is column-major — `a_rs == 1` for a column-major
/// `dst`, `b_cs == 1` for a row-major one — and otherwise packs it element by element, on
/// every call (the recurrence's per-step product of h with a row-major weight block spent
/// more instructions packing the weights than multiplying). Callers pick the strides so that
/// the big operand is that one.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn sgemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    let threads = rayon::current_num_threads();
    // Thread dispatch costs more than it saves on tiny products.
    let par = if threads > 1 && m * n * k >= 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    sgemm_with(
        par, m, n, k, dst, dst_rs, dst_cs, accumulate, a, a_rs, a_cs, b, b_rs, b_cs,
    )
}

/// A weight's gradient `dst` (out × in) = gᵀ x, for the output gradient g (rows × out) and
/// the input x (rows × in), all row-major and contiguous; on the calling thread only with
/// `serial` (as [`sgemm_serial`]), else as [`sgemm`].
///
/// gemm computes the row-major product as its transpose xᵀ g, whose right operand g it packs
/// six columns at a time, gathering six floats from each of its rows (gemm-common 0.19
/// `pack_rhs`): for an LSTM's (T·B, 4H) gate gradient that gather was 4 % of a `bench lstm`
/// training step at one thread (perf, cpu-clock, session 12). Where `out` > `in` the product
/// is computed the other way round, gᵀ x into a scratch (in × out) transposed back, so that
/// the packed right operand is the narrower x, and g is packed as the left operand by
/// contiguous copies. Same bits either way (test `weight_grad_orientations_agree_exactly`):
/// each element is one fused multiply-add chain over the rows per depth block, and gemm's
/// depth blocks depend on the depth (rows) only.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_grad(dst: &mut [f32], g: &[f32], x: &[f32], rows: usize, out: usize, inp: usize, serial: bool) {
    weight_grad_oriented(dst, g, x, rows, out, inp, serial, out > inp)
}

/// [`weight_grad`] computed as `(xᵀ g)ᵀ` with `via_transpose` (where the gemm kernels are
/// the same for both orientations: more than 2 rows, out and in at least 2), else directly.
#[allow(clippy::too_many_arguments)]
fn weight_grad_oriented(
    dst: &mut [f32],
    g: &[f32],
    x: &[f32],
    rows: usize,
    out: usize,
    inp: usize,
    serial: bool,
    via_transpose: bool,
) {
    assert!(dst.len() == out * inp && g.len() == rows * out && x.len() == rows * inp);
    let product = |m, n, dst: &mut [f32], a: &[f32], a_cs, b: &[f32], b_rs| {
        if serial {
            sgemm_serial(m, n, rows, dst, n, 1, false, a, 1, a_cs, b, b_rs, 1)
        } else {
            sgemm(m, n, rows, dst, n, false, a, 1, a_cs, b, b_rs, 1)
        }
    };
    // gemm's outer-product (depth ≤ 2) and matrix-vector kernels (one row or column) depend
    // on the orientation.
    if via_transpose && rows > 2 && out >= 2 && inp >= 2 {
        // SAFETY: the product writes all in·out elements (read_dst false).
        let mut t = unsafe { uninit_f32(inp * out) };
        product(inp, out, &mut t, x, inp, g, out);
        transpose::transpose(&t, inp, out, dst);
    } else {
        product(out, inp, dst, g, out, x, inp);
    }
}

/// The checked call into `gemm` behind [`sgemm_strided`] and [`sgemm_serial`].
#[allow(clippy::too_many_arguments)]
#[inline]
fn sgemm_with(
    par: gemm::Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst[r * dst_rs + c * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    // The last element each operand reaches, computed without overflow (`sgemm_serial` is
    // public: a stride near usize::MAX must fail here, not wrap and pass), and strides that
    // fit gemm's isize.
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        let fits = rs <= isize::MAX as usize && cs <= isize::MAX as usize;
        (rows - 1)
            .checked_mul(rs)
            .zip((cols - 1).checked_mul(cs))
            .and_then(|(r, c)| r.checked_add(c))
            .filter(|_| fits)
    };
    assert!(
        last(m, dst_rs, n, dst_cs).is_some_and(|e| e < dst.len()),
        "sgemm: dst out of bounds"
    );
    assert!(
        last(m, a_rs, k, a_cs).is_some_and(|e| e < a.len()),
        "sgemm: a out of bounds"
    );
    assert!(
        last(k, b_rs, n, b_cs).is_some_and(|e| e < b.len()),
        "sgemm: b out of bounds"
    );
    // SAFETY: the asserts above keep every accessed element inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::in_rayon_task;

    /// The public `sgemm_serial` rejects strides whose reach overflows usize instead of
    /// letting the product wrap into a small offset and gemm write out of bounds.
    #[test]
    #[should_panic(expected = "dst out of bounds")]
    fn overflowing_strides_are_rejected() {
        let (mut dst, a, b) = (vec![0f32; 4], vec![1f32; 4], vec![1f32; 4]);
        // (3 - 1) · (2⁶³ + 1) wraps to 2: inside dst's 4 elements if computed unchecked.
        super::sgemm_serial(3, 1, 1, &mut dst, (1 << 63) + 1, 1, false, &a, 1, 1, &b, 1, 1);
    }

    /// Both orientations of [`super::weight_grad`] give the same bits (rows over gemm's 512
    /// depth block, sizes off its 64 × 6 tiles, 1 and 2 threads, serial or not).
    #[test]
    fn weight_grad_orientations_agree_exactly() {
        use super::weight_grad_oriented;
        let val = |seed: u64, n: usize| crate::testing::randn(seed, &[n]).to_vec1::<f32>().unwrap();
        let bits = crate::testing::bits;
        for (i, &(rows, out, inp)) in [
            (3, 2, 2),
            (7, 200, 33),
            (64, 2048, 256),
            (1100, 300, 70),
            (2048, 520, 130),
            (5, 64, 2),
            (33, 7, 500),
        ]
        .iter()
        .enumerate()
        {
            let (g, x) = (val(2 * i as u64 + 1, rows * out), val(2 * i as u64 + 2, rows * inp));
            for threads in [1, 2] {
                for serial in [false, true] {
                    let (a, b) = crate::testing::in_pool(threads, || {
                        let mut a = vec![f32::NAN; out * inp];
                        let mut b = vec![f32::NAN; out * inp];
                        weight_grad_oriented(&mut a, &g, &x, rows, out, inp, serial, false);
                        weight_grad_oriented(&mut b, &g, &x, rows, out, inp, serial, true);
                        (a, b)
                    });
                    assert_eq!(
                        bits(&a),
                        bits(&b),
                        "rows {rows}, out {out}, in {inp}, {threads} threads"
                    );
                    let want: f32 = (0..rows)
                        .map(|r| g[r * out + out - 1] as f64 * x[r * inp] as f64)
                        .sum::<f64>() as f32;
                    assert!((a[(out - 1) * inp] - want).abs() < 1e-3 * (1.0 + want.abs()));
                }
            }
        }
    }

    /// The binary's main thread joins rayon's pool as thread 0 (seqlab-cli `join_thread_pool`);
    /// at its top level a kernel may still start its own threads (the recurrence's team),
    /// inside a task of another worker it may not. Without the name check the team would be
    /// switched off for every command at two threads.
    #[test]
    fn main_thread_in_the_pool_is_not_a_task() {
        let seen = std::thread::Builder::new()
            .name("main".into())
            .spawn(|| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .use_current_thread()
                    .build()
                    .unwrap();
                let top = (rayon::current_thread_index(), in_rayon_task());
                let (tx, rx) = std::sync::mpsc::channel();
                pool.spawn(move || tx.send(in_rayon_task()).unwrap());
                // This thread blocks, so the other worker steals and runs the task.
                let other = rx.recv().unwrap();
                (top, other)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(seen.0, (Some(0), false));
        assert!(seen.1);
        assert!(!in_rayon_task(), "a test thread outside any pool");
    }
}
