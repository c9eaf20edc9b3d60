//! The machine's limits, probed before the jobs: read bandwidth (plain, live during measurement, page-shaped), FMA and dot-unit rates.

use super::*;

/// Timed passes of the bandwidth probe (its best is kept).
pub(crate) const PROBE_PASSES: usize = 10;

/// Buffer of each read probe whose passes are taken between the runs
/// (at least eight times the last-level cache: read from DRAM).
pub(crate) const LIVE_PROBE_BYTES: usize = 256 << 20;

/// Buffer of the DRAM-sized read probes.
pub(crate) const PROBE_BYTES: usize = 1 << 30;

/// Buffer of the cache-resident read probes, per thread: 256 KiB, inside
/// any core's L2.
pub(crate) const HOT_PROBE_BYTES: usize = 256 << 10;

pub(crate) struct Probes {
    /// (threads, bytes/s, flops/s): the bandwidth is the best DRAM-sized
    /// read probe of that thread count (the roof of every memory term).
    pub(crate) at: Vec<(usize, f64, f64)>,
    /// The read probes behind it.
    pub(crate) reads: Vec<ReadProbe>,
    /// (threads, dtype, values widened per second)
    pub(crate) widen: Vec<(usize, Dtype, f64)>,
    /// (threads, dot-product unit, FLOP/s or integer op/s): what a kernel
    /// on that unit could reach (the kernels run on f32 FMA today).
    pub(crate) units: Vec<(usize, Unit, f64)>,
    /// Per thread count, the DRAM read probes (one stream, two streams)
    /// whose passes `measure` takes between its runs: each row's memory
    /// roof is the best of the passes taken in the same minutes as its
    /// runs.
    pub(crate) live: Vec<(StreamProbe, StreamProbe)>,
    /// One thread reading a cache of pages of 16 positions in the kernel's
    /// order ([`paged_read_probe`]), bytes/s.
    pub(crate) paged: f64,
}

/// Read bandwidth (bytes/s) of `threads` threads reading one stream, and
/// two streams side by side in 4 KiB pieces (K and V as the kernels read
/// them: a block of 16 rows of 128 f16 values of K, then of V), from a
/// DRAM-sized buffer and from a cache-resident one.
pub(crate) struct ReadProbe {
    pub(crate) threads: usize,
    pub(crate) dram_one: f64,
    pub(crate) dram_two: f64,
    pub(crate) hot_one: f64,
    pub(crate) hot_two: f64,
}

impl Probes {
    pub(crate) fn widen(&self, threads: usize, dtype: Dtype) -> f64 {
        self.widen
            .iter()
            .find(|w| w.0 == threads && w.1 == dtype)
            .map_or(f64::INFINITY, |w| w.2)
    }
    pub(crate) fn live(&self, threads: usize) -> Option<&(StreamProbe, StreamProbe)> {
        self.live.iter().find(|p| p.0.threads() == threads)
    }
    pub(crate) fn get(&self, threads: usize) -> (f64, f64) {
        self.at
            .iter()
            .find(|p| p.0 == threads)
            .map(|p| (p.1, p.2))
            .unwrap_or((f64::NAN, f64::NAN))
    }
}

/// The last-level cache of CPU 0 in bytes (Linux sysfs), 32 MiB if unknown.
pub(crate) fn llc_bytes() -> usize {
    (0..8)
        .filter_map(|i| {
            let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
            let level: usize = std::fs::read_to_string(format!("{dir}/level"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let size = std::fs::read_to_string(format!("{dir}/size")).ok()?;
            let size = size.trim();
            let (num, mult) = match size.strip_suffix('K') {
                Some(n) => (n, 1 << 10),
                None => match size.strip_suffix('M') {
                    Some(n) => (n, 1 << 20),
                    None => (size, 1),
                },
            };
            Some((level, num.parse::<usize>().ok()? * mult))
        })
        .max()
        .map_or(32 << 20, |(_, bytes)| bytes)
}

/// What the memory system gives a plain read loop walking a paged cache in
/// the kernel's order: K and V pools of `pages` pages of `heads` pieces of
/// `piece` bytes, pages visited in a shuffled order, each page's pieces read
/// head by head, K then V (one thread; best of `reps`). Paged rows of the
/// report compare against this as well as against the streaming probe.
pub(crate) fn paged_read_probe(pages: usize, heads: usize, piece: usize, reps: usize) -> f64 {
    let words = piece / 8;
    let n = pages * heads * words;
    let k: Vec<u64> = (0..n as u64).collect();
    let v: Vec<u64> = (0..n as u64).map(|x| x ^ 0x5555).collect();
    let mut order: Vec<usize> = (0..pages).collect();
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..pages).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let sum = |x: &[u64]| x.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    let mut best = 0f64;
    for _ in 0..=reps {
        let t = Instant::now();
        let mut acc = 0u64;
        for &p in &order {
            for h in 0..heads {
                let o = (p * heads + h) * words;
                acc = acc.wrapping_add(sum(&k[o..o + words]));
                acc = acc.wrapping_add(sum(&v[o..o + words]));
            }
        }
        std::hint::black_box(acc);
        best = best.max((2 * n * 8) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// Measures the machine: read bandwidth (DRAM-sized and cache-resident,
/// one stream and two), the f32 FMA rate, the dot-product and tile units,
/// widen rates per type, the live probes `measure` interleaves with its
/// runs, and the paged-order read probe.
pub(crate) fn probe_machine(args: &Args) -> Probes {
    let (probe_bytes, hot_bytes) = (PROBE_BYTES, HOT_PROBE_BYTES);
    eprintln!(
        "probing read bandwidth ({} MiB and {} KiB per thread buffers; one stream, K and V side by side) and FMA rate…",
        probe_bytes >> 20,
        hot_bytes >> 10
    );
    let reads: Vec<ReadProbe> = args
        .threads
        .iter()
        .map(|&t| ReadProbe {
            threads: t,
            dram_one: probe::read_streams(probe_bytes, 1, 4096, t, PROBE_PASSES),
            dram_two: probe::read_streams(probe_bytes, 2, 4096, t, PROBE_PASSES),
            hot_one: probe::read_streams(hot_bytes * t, 1, 4096, t, PROBE_PASSES),
            hot_two: probe::read_streams(hot_bytes * t, 2, 4096, t, PROBE_PASSES),
        })
        .collect();
    let live_bytes = LIVE_PROBE_BYTES.max(8 * llc_bytes());
    Probes {
        at: reads
            .iter()
            .map(|r| {
                (
                    r.threads,
                    r.dram_one.max(r.dram_two),
                    probe::fma_rate(r.threads),
                )
            })
            .collect(),
        reads,
        units: args
            .threads
            .iter()
            .flat_map(|&t| {
                [Unit::Bf16Dot, Unit::Int8Dot, Unit::AmxBf16, Unit::AmxInt8]
                    .into_iter()
                    .filter_map(move |u| probe::unit_rate(u, t).map(|r| (t, u, r)))
            })
            .collect(),
        widen: args
            .threads
            .iter()
            .flat_map(|&t| Dtype::ALL.map(|d| (t, d, probe::widen_rate(d, t))))
            .collect(),
        live: args
            .threads
            .iter()
            .map(|&t| {
                (
                    StreamProbe::new(live_bytes, 1, 4096, t),
                    StreamProbe::new(live_bytes, 2, 4096, t),
                )
            })
            .collect(),
        // Llama-3-8B f16 with pages of 16 positions: 8 heads of 4 KiB per
        // page, 128 MiB per pool.
        paged: paged_read_probe(4096, 8, 16 * 128 * 2, 3),
    }
}

/// Prints what [`probe_machine`] measured (text or JSON lines).
pub(crate) fn print_probes(probes: &Probes, tier: Tier, json: bool) {
    let (bw1, _) = probes.get(1);
    if !json {
        println!(
            "# machine: {} threads available; best tier {}; reporting tier {}",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            Tier::best(),
            tier
        );
        for (t, bw, fma) in &probes.at {
            println!(
                "# probe, {t} thread(s): read bandwidth {:.2} GB/s (the best DRAM read probe: the roof), f32 FMA {:.1} GFLOP/s",
                bw / 1e9,
                fma / 1e9
            );
        }
        for r in &probes.reads {
            println!(
                "# probe, {} thread(s): read, one stream {:.2} GB/s, K and V side by side {:.2} GB/s (DRAM, 1 GiB); cache-resident ({} KiB per thread) {:.2} / {:.2} GB/s",
                r.threads,
                r.dram_one / 1e9,
                r.dram_two / 1e9,
                HOT_PROBE_BYTES >> 10,
                r.hot_one / 1e9,
                r.hot_two / 1e9
            );
        }
        for (t, d, w) in &probes.widen {
            println!(
                "# probe, {t} thread(s): widen {d} to f32 at {:.2} G values/s ({:.1} GB/s of {d})",
                w / 1e9,
                w * d.row_bytes(128) as f64 / 128.0 / 1e9
            );
        }
        for (t, u, r) in &probes.units {
            let fma = probes
                .at
                .iter()
                .find(|a| a.0 == *t)
                .map_or(f64::NAN, |a| a.2);
            println!(
                "# probe, {t} thread(s): {} unit at {:.1} G{}/s ({:.2}x the f32 FMA rate; {})",
                u.name(),
                r / 1e9,
                if matches!(u, Unit::Int8Dot | Unit::AmxInt8) {
                    "OP"
                } else {
                    "FLOP"
                },
                r / fma,
                match u {
                    Unit::AmxBf16 => "bf16 K and V kernels run on it",
                    Unit::Bf16Dot => "bf16 K kernels run on it (bf16-dot)",
                    Unit::Int8Dot => "int8 K kernels run on it (int8-dot)",
                    _ => "no kernel uses it yet",
                }
            );
        }
        println!(
            "# probe, 1 thread, read in paged order (pages of 8 × 4 KiB, shuffled): {:.2} GB/s ({:.2} of streaming)",
            probes.paged / 1e9,
            probes.paged / bw1
        );
    } else {
        for ((t, bw, fma), r) in probes.at.iter().zip(&probes.reads) {
            println!("{{\"section\":\"probe\",\"threads\":{t},\"probe_gbps\":{:.3},\"probe_gflops\":{:.3},\"dram_one_stream_gbps\":{:.3},\"dram_two_streams_gbps\":{:.3},\"hot_one_stream_gbps\":{:.3},\"hot_two_streams_gbps\":{:.3}}}", bw / 1e9, fma / 1e9, r.dram_one / 1e9, r.dram_two / 1e9, r.hot_one / 1e9, r.hot_two / 1e9);
        }
        for (t, d, w) in &probes.widen {
            println!(
                "{{\"section\":\"probe_widen\",\"threads\":{t},\"dtype\":\"{d}\",\"values_per_s\":{w:.4e}}}"
            );
        }
        for (t, u, r) in &probes.units {
            println!(
                "{{\"section\":\"probe_unit\",\"threads\":{t},\"unit\":\"{}\",\"ops_per_s\":{r:.4e}}}",
                u.name()
            );
        }
        println!(
            "{{\"section\":\"probe_paged\",\"threads\":1,\"probe_gbps\":{:.3}}}",
            probes.paged / 1e9
        );
    }
}
