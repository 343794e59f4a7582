//! seqlab patch 4 (SEQLAB-PATCH.md): candle's parallel element-wise maps run on rayon's pool,
//! not on a barrier pool of their own threads. Its own test binary, because it sets
//! CANDLE_NUM_THREADS before candle first reads it.
use candle_core::{Device, Tensor};

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn elementwise_maps_start_no_threads_of_their_own() -> candle_core::Result<()> {
    // SAFETY: the only test of this binary, before any other thread of it reads the
    // environment. Unpatched candle starts CANDLE_NUM_THREADS - 1 "candle-bp-*" threads on
    // its first large element-wise op, whatever rayon's pool is.
    unsafe { std::env::set_var("CANDLE_NUM_THREADS", "4") };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let n = 1 << 18; // over the 64k elements from which the maps split their work
    let (sum, neg) = pool.install(|| -> candle_core::Result<_> {
        let a = Tensor::arange(0f32, n as f32, &Device::Cpu)?;
        let b = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?;
        Ok((a.add(&b)?.to_vec1::<f32>()?, a.neg()?.to_vec1::<f32>()?))
    })?;
    // Every unit of work written exactly once, whichever thread ran it.
    for (i, (s, m)) in sum.iter().zip(&neg).enumerate() {
        assert_eq!((*s, *m), (i as f32 + 1.0, -(i as f32)), "element {i}");
    }
    if std::path::Path::new("/proc/self/task").exists() {
        let names = thread_names();
        assert!(!names.iter().any(|n| n.starts_with("candle-bp")), "threads: {names:?}");
    }
    Ok(())
}
