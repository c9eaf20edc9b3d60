//! The machine's own limits, measured: streaming read bandwidth and f32 FMA
//! throughput. Every performance figure of this crate is a ratio against
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
