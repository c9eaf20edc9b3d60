//! The machine's own limits, measured: streaming read bandwidth, f32 FMA
//! throughput, the dot-product units' rates ([`unit_rate`]) and, per KV
//! element type, how fast a core widens values to f32. Every performance figure of this crate is a ratio against
//! these, measured in the same run (see `examples/roofline.rs`).

use std::time::Instant;

use crate::arch::probes;
use crate::tier::Tier;

/// Streaming read bandwidth in bytes/s: `threads` threads each sum-reduce
/// their share of a `bytes`-sized buffer (make it far larger than the last
/// level cache). Best of `reps` timed passes after one untimed pass.
pub fn read_bandwidth(bytes: usize, threads: usize, reps: usize) -> f64 {
    read_streams(bytes, 1, 4096, threads, reps)
}

/// Read bandwidth in bytes/s of `threads` threads that each read `streams`
/// buffers of their own side by side, `piece` bytes of one, then the same
/// span of the next (K and V as a decode kernel reads them: a block of K
/// rows, then the block of V rows). `bytes` is the total over all threads
/// and streams: far larger than the last-level cache for DRAM, or small
/// enough to stay in a core's cache for the cache-resident rate (a timed
/// pass reads the buffers as many times as it takes to read 256 MiB).
/// Best of `reps` timed passes after one untimed pass.
pub fn read_streams(
    bytes: usize,
    streams: usize,
    piece: usize,
    threads: usize,
    reps: usize,
) -> f64 {
    let probe = StreamProbe::new(bytes, streams, piece, threads);
    probe.pass();
    (0..reps.max(1)).map(|_| probe.pass()).fold(0.0, f64::max)
}

/// The read probe of [`read_streams`] with its buffers allocated once, so
/// that its passes can be taken between other work: a benchmark that runs
/// a pass between its timed runs compares each run with the bandwidth of
/// the same minutes (the DRAM rate of a shared machine drifts by tens of
/// percent over minutes).
pub struct StreamProbe {
    bufs: Vec<Vec<Vec<f32>>>,
    /// f32 values per buffer, and per piece.
    n: usize,
    piece: usize,
    /// Times a pass reads the buffers.
    repeat: usize,
    tier: Tier,
}

impl StreamProbe {
    /// Buffers of `bytes` in all, for `threads` threads reading `streams`
    /// each in `piece`-byte spans (see [`read_streams`]).
    pub fn new(bytes: usize, streams: usize, piece: usize, threads: usize) -> StreamProbe {
        let (threads, streams) = (threads.max(1), streams.max(1));
        let piece = (piece / 4).max(64) / 64 * 64;
        let n = (bytes / 4 / threads / streams / piece).max(1) * piece;
        let repeat = (256usize << 20).div_ceil(n * 4 * threads * streams);
        let bufs = (0..threads)
            .map(|t| {
                (0..streams)
                    .map(|s| vec![1.0 + (t + s) as f32; n])
                    .collect()
            })
            .collect();
        StreamProbe {
            bufs,
            n,
            piece,
            repeat,
            tier: Tier::best(),
        }
    }

    /// Threads the probe reads with.
    pub fn threads(&self) -> usize {
        self.bufs.len()
    }

    /// One timed pass: bytes read per second.
    pub fn pass(&self) -> f64 {
        let (n, piece, repeat, tier) = (self.n, self.piece, self.repeat, self.tier);
        let start = Instant::now();
        let sums: Vec<f32> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .bufs
                .iter()
                .map(|b| {
                    s.spawn(move || {
                        let mut acc = 0.0f32;
                        for _ in 0..repeat {
                            for off in (0..n).step_by(piece) {
                                for x in b {
                                    acc += probes::sum(tier, &x[off..off + piece]);
                                }
                            }
                        }
                        acc
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0.0))
                .collect()
        });
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sums);
        let streams = self.bufs.first().map_or(1, Vec::len);
        (n * 4 * self.bufs.len() * streams * repeat) as f64 / secs
    }
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

pub use crate::tier::Unit;

/// Multiply-add rate of `unit` with `threads` threads, each running
/// independent chains from registers: FLOP/s (int8: integer operations
/// per second), a multiply and an add counted as two. `None` where this
/// CPU lacks the unit. Best of 3. A kernel on a dot-product unit would be
/// bound by this rate, as today's kernels are by [`fma_rate`].
pub fn unit_rate(unit: Unit, threads: usize) -> Option<f64> {
    if !unit.is_available() {
        return None;
    }
    if unit == Unit::F32Fma {
        return Some(fma_rate(threads));
    }
    let threads = threads.max(1);
    let iters = 10_000_000usize;
    let one = move || -> f64 {
        let ops = match unit {
            #[cfg(target_arch = "x86_64")]
            Unit::Bf16Dot => crate::arch::x86_64::dots::bf16_dot_ops(iters),
            #[cfg(target_arch = "x86_64")]
            Unit::Int8Dot => crate::arch::x86_64::dots::int8_dot_ops(iters),
            // Eight `bfdot` per iteration.
            #[cfg(target_arch = "aarch64")]
            Unit::Bf16Dot => crate::arch::aarch64::dot::bf16_dot_ops(iters / 8),
            #[cfg(target_arch = "aarch64")]
            Unit::Int8Dot => crate::arch::aarch64::dot::int8_dot_ops(iters / 8),
            #[cfg(target_arch = "x86_64")]
            Unit::AmxBf16 => crate::arch::x86_64::amx::tile_ops(false, iters / 16),
            #[cfg(target_arch = "x86_64")]
            Unit::AmxInt8 => crate::arch::x86_64::amx::tile_ops(true, iters / 16),
            _ => {
                let _ = iters;
                None
            }
        };
        ops.unwrap_or(0.0)
    };
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let ops: f64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(one)).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        best = best.max(ops / start.elapsed().as_secs_f64());
    }
    Some(best)
}

/// Values per second that `threads` threads widen to f32 from an
/// L1-resident buffer of `dtype`, with the kernels' own converting loads
/// on the best tier and one FMA per vector: the compute roof of a step
/// that reads `n` values is `n / widen_rate`. On cores that widen slowly
/// (a 512-bit conversion that issues at half rate) this roof, not DRAM,
/// can bound a step, and a narrower type then saves bytes but not time.
/// Best of 3.
pub fn widen_rate(dtype: crate::Dtype, threads: usize) -> f64 {
    use crate::arch::{E4M3Row, E4M3, E5M2};
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
        Dtype::Fp8E4M3 => probes::widen(tier, &[E4M3(0); D], D, passes),
        Dtype::Fp8E5M2 => probes::widen(tier, &[E5M2(0); D], D, passes),
        Dtype::Fp8E4M3Row => probes::widen(tier, &[E4M3Row(0); D], D, passes),
        block => block
            .visit_block(Blocks { tier, passes })
            .expect("every other type is a block format"),
    };
    /// The widen probe over a row of zero blocks of a block format.
    struct Blocks {
        tier: Tier,
        passes: usize,
    }
    impl crate::formats::BlockVisitor for Blocks {
        type Out = ();
        fn visit<B: crate::quant::BlockFormat>(self) {
            let row = vec![B::default(); D.div_ceil(B::LEN)];
            probes::widen(self.tier, &row, D, self.passes)
        }
    }
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
