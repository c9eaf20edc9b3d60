//! The machine's own limits, measured: streaming read bandwidth, f32 FMA
//! throughput and, per KV element type, how fast a core widens values to
//! f32. Every performance figure of this crate is a ratio against
//! these, measured in the same run (see `examples/roofline.rs`).

use std::time::Instant;

use crate::arch::probes;
use crate::dispatch::Tier;

/// Streaming read bandwidth in bytes/s: `threads` threads each sum-reduce
/// their share of a `bytes`-sized buffer (make it far larger than the last
/// level cache). Best of `reps` timed passes after one untimed pass.
pub fn read_bandwidth(bytes: usize, threads: usize, reps: usize) -> f64 {
    let threads = threads.max(1);
    let n = (bytes / 4 / threads / 64).max(1) * 64;
    let mut bufs: Vec<Vec<f32>> = (0..threads).map(|t| vec![1.0 + t as f32; n]).collect();
    let tier = Tier::best();
    let mut best = 0.0f64;
    for rep in 0..=reps.max(1) {
        let start = Instant::now();
        let sums: Vec<f32> = std::thread::scope(|s| {
            let handles: Vec<_> = bufs
                .iter_mut()
                .map(|b| s.spawn(move || probes::sum(tier, b)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0.0))
                .collect()
        });
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sums);
        if rep > 0 {
            best = best.max((n * 4 * threads) as f64 / secs);
        }
    }
    best
}

/// f32 FLOP/s of the widest FMA this machine has (2 FLOPs per lane per FMA),
/// with `threads` threads, each running independent FMA chains from
/// registers. Best of 3.
pub fn fma_rate(threads: usize) -> f64 {
    let threads = threads.max(1);
    let tier = Tier::best();
    let iters = 20_000_000usize;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let flops: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || probes::fma(tier, iters)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0.0))
                .collect()
        });
        let secs = start.elapsed().as_secs_f64();
        best = best.max(flops.iter().sum::<f64>() / secs);
    }
    best
}

/// Values per second that `threads` threads widen to f32 from an
/// L1-resident buffer of `dtype`, with the kernels' own converting loads
/// on the best tier and one FMA per vector: the compute roof of a step
/// that reads `n` values is `n / widen_rate`. On cores that widen slowly
/// (a 512-bit conversion that issues at half rate) this roof, not DRAM,
/// can bound a step, and a narrower type then saves bytes but not time.
/// Best of 3.
pub fn widen_rate(dtype: crate::Dtype, threads: usize) -> f64 {
    use crate::arch::{E4M3, E5M2};
    use crate::Dtype;
    const D: usize = 4096;
    let threads = threads.max(1);
    let tier = Tier::best();
    let passes = 20_000usize;
    let one = move || match dtype {
        Dtype::F32 => probes::widen(tier, &[0f32; D], D, passes),
        Dtype::F16 => probes::widen(tier, &[half::f16::ZERO; D], D, passes),
        Dtype::Bf16 => probes::widen(tier, &[half::bf16::ZERO; D], D, passes),
        Dtype::Int8 => probes::widen(tier, &[0i8; D], D, passes),
        Dtype::Q8_0 => probes::widen(
            tier,
            &[crate::quant::BlockQ8_0::default(); D / crate::quant::QK8_0],
            D,
            passes,
        ),
        Dtype::Fp8E4M3 => probes::widen(tier, &[E4M3(0); D], D, passes),
        Dtype::Fp8E5M2 => probes::widen(tier, &[E5M2(0); D], D, passes),
    };
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(one);
            }
        });
        let secs = start.elapsed().as_secs_f64();
        best = best.max((D * passes * threads) as f64 / secs);
    }
    best
}
