//! The bandwidth (roofline) report: the main job of this repository.
//!
//! Measures this machine's streaming read bandwidth, f32 FMA rate and, per
//! KV element type, the rate at which a core widens values to f32 with the
//! crate's own probes, then runs decode steps of real model shapes and
//! prints how close each comes to the machine's limit:
//!
//! ```text
//! roofline fraction = max(kv_bytes / probe_bandwidth,
//!                         flops / probe_fma_rate,
//!                         kv_values / probe_widen_rate) / seconds
//! ```
//!
//! with the probes taken at the same thread count. `probe_bandwidth` is the
//! best of the DRAM read probes: one stream, and two streams read side by
//! side in 4 KiB pieces (K and V as the kernels read them); both are also
//! printed for a cache-resident buffer. The report opens with these probes,
//! and then takes a pass of both DRAM probes after every burst of runs:
//! each row's `probe_bandwidth` (the `probe` column, `probe_gbps` in JSON)
//! is the best of the passes taken in the same minutes as its own runs, as
//! the DRAM rate of a shared machine drifts by tens of percent between
//! minutes (`run_probe_gbps` is the opening one). `roof` names the term that binds
//! (`mem`, `fma` or `widen`), and `bytes_fraction` is the memory term alone
//! over `seconds`.
//!
//! Steps are measured cold, as a model's decode step reads: each run takes
//! the next of several layers' caches (up to 32, spanning at least 1 GiB and
//! four times the last-level cache), so no row is cached from the previous
//! run. Rows marked `hot` (`residency` in JSON) run one layer's cache over
//! and over; a fraction above 1 there means the cache fit in the last-level
//! cache. Rows marked `llc` rotate over 32 layers' caches that fit in the
//! last-level cache together. The layouts section measures each shape's layouts together (runs
//! interleaved) and its summary divides every step time by the
//! `[B, G, L, D]` one (`layout_ratio` in JSON), and every 2-thread time by
//! the 1-thread one (`thread_ratio`). `seconds` is the best of at
//! least fifteen timed runs, in at least five rounds, each round followed
//! by a pass of both DRAM read probes (which keep their best pass too, so
//! the ratio compares like with like on a shared machine); the median is printed
//! beside it.
//!
//! ```text
//! cargo run --release --example roofline                 # full report
//! cargo run --release --example roofline -- --quick      # subset, about 3 minutes
//! cargo run --release --example roofline -- --json       # one JSON object per row
//! cargo run --release --example roofline -- --tier avx2  # force a tier
//! cargo run --release --example roofline -- --section layouts,tiers  # only these sections
//! ```
//!
//! `GQA_KERNELS_PREFETCH=N` sets the kernels' software prefetch distance
//! (rows; 0 = off) of every plan, for comparing distances.

use std::rc::Rc;
use std::time::Instant;

use gqa_kernels::probe::{StreamProbe, Unit};
use gqa_kernels::quant::Fp8;
use gqa_kernels::{
    append, probe, Batch, Bias, Dtype, KvBuffer, KvCache, KvCacheMut, KvData, KvPages, KvTensor,
    KvTensorMut, NewKv, Options, PagedKv, Plan, RingKv, Shape, Tier,
};
use half::{bf16, f16};

struct Args {
    json: bool,
    quick: bool,
    tier: Option<Tier>,
    threads: Vec<usize>,
    /// Sections to run (all when empty): table, serving, tiers, layouts,
    /// variants, kv_types, g_sweep, append.
    sections: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let max_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut a = Args {
        json: false,
        quick: false,
        tier: None,
        threads: vec![1],
        sections: Vec::new(),
    };
    // 1, 2 and all cores (deduplicated).
    for t in [2, max_threads] {
        if t <= max_threads && !a.threads.contains(&t) {
            a.threads.push(t);
        }
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--quick" => a.quick = true,
            "--tier" => {
                let name = it.next().ok_or("--tier needs a name")?;
                let t: Tier = name.parse().map_err(|e| format!("{e}"))?;
                a.tier = Some(t.require().map_err(|e| format!("{e}"))?);
            }
            "--threads" => {
                let v = it.next().ok_or("--threads needs a comma-separated list")?;
                a.threads = v
                    .split(',')
                    .map(|x| {
                        x.parse::<usize>()
                            .map_err(|e| format!("--threads {x}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--section" => {
                let v = it.next().ok_or("--section needs a comma-separated list")?;
                a.sections = v.split(',').map(|s| s.trim().to_string()).collect();
            }
            "-h" | "--help" => {
                println!(
                    "usage: roofline [--quick] [--json] [--tier NAME] [--threads 1,2] [--section a,b]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(a)
}

/// `n` elements uniform in [-1, 1) (rows of `d`) stored as `dtype`: a
/// random block of 512 rows repeated (the values do not change the speed;
/// generating 1 GB of them would), quantized by the crate's encoders (fp8
/// with one scale of 4 over the format's largest value).
fn store(dtype: Dtype, n: usize, d: usize, seed: u64) -> KvBuffer {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let block: Vec<f32> = (0..512 * d)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let block = match fp8_format(dtype) {
        Some(f) => KvBuffer::fp8_from_f32(f, &block, vec![4.0 / f.max()], |_| 0),
        None => KvBuffer::from_f32(dtype, &block, d),
    };
    block
        .and_then(|b| b.repeat_to(n))
        .expect("whole rows of finite values")
}

/// `n` zeros of `dtype` (rows of `d`; allocated zeroed, so the pages are
/// mapped when written; fp8 with the scale of [`store`]).
fn zeroed(dtype: Dtype, n: usize, d: usize) -> KvBuffer {
    let z = KvBuffer::zeros(dtype, n, d).expect("whole rows");
    match fp8_format(dtype) {
        Some(f) => z.with_scales(vec![4.0 / f.max()]).expect("a valid scale"),
        None => z,
    }
}

fn fp8_format(dtype: Dtype) -> Option<Fp8> {
    match dtype {
        Dtype::Fp8E4M3 => Some(Fp8::E4M3),
        Dtype::Fp8E5M2 => Some(Fp8::E5M2),
        _ => None,
    }
}

#[derive(Clone, Copy)]
struct Model {
    name: &'static str,
    h: usize,
    g: usize,
    d: usize,
}

const LLAMA3_8B: Model = Model {
    name: "Llama-3-8B",
    h: 32,
    g: 8,
    d: 128,
};
const QWEN25_7B: Model = Model {
    name: "Qwen2.5-7B",
    h: 28,
    g: 4,
    d: 128,
};
const PHI3_MINI: Model = Model {
    name: "Phi-3-mini",
    h: 32,
    g: 32,
    d: 96,
};
const FALCON_7B: Model = Model {
    name: "Falcon-7B",
    h: 71,
    g: 1,
    d: 64,
};
const GEMMA2_9B: Model = Model {
    name: "Gemma-2-9B",
    h: 16,
    g: 8,
    d: 256,
};

/// The (K, V) types of the KV-types section: f16 (the baseline), every
/// type, and an int8 or fp8 K with an f16 V.
const KV_TYPES: [(Dtype, Dtype); 9] = [
    (Dtype::F16, Dtype::F16),
    (Dtype::F32, Dtype::F32),
    (Dtype::Bf16, Dtype::Bf16),
    (Dtype::Int8, Dtype::Int8),
    (Dtype::Q8_0, Dtype::Q8_0),
    (Dtype::Fp8E4M3, Dtype::Fp8E4M3),
    (Dtype::Fp8E5M2, Dtype::Fp8E5M2),
    (Dtype::Int8, Dtype::F16),
    (Dtype::Fp8E4M3, Dtype::F16),
];

/// Timed passes of the bandwidth probe (its best is kept).
const PROBE_PASSES: usize = 10;

/// Buffer of each read probe whose passes are taken between the runs
/// (at least eight times the last-level cache: read from DRAM).
const LIVE_PROBE_BYTES: usize = 256 << 20;

/// Buffer of the DRAM-sized read probes.
const PROBE_BYTES: usize = 1 << 30;

/// Buffer of the cache-resident read probes, per thread: 256 KiB, inside
/// any core's L2.
const HOT_PROBE_BYTES: usize = 256 << 10;

/// Interleaved rounds of the G sweep.
const SWEEP_ROUNDS: usize = 3;

struct Probes {
    /// (threads, bytes/s, flops/s): the bandwidth is the best DRAM-sized
    /// read probe of that thread count (the roof of every memory term).
    at: Vec<(usize, f64, f64)>,
    /// The read probes behind it.
    reads: Vec<ReadProbe>,
    /// (threads, dtype, values widened per second)
    widen: Vec<(usize, Dtype, f64)>,
    /// (threads, dot-product unit, FLOP/s or integer op/s): what a kernel
    /// on that unit could reach (the kernels run on f32 FMA today).
    units: Vec<(usize, Unit, f64)>,
    /// Per thread count, the DRAM read probes (one stream, two streams)
    /// whose passes `measure` takes between its runs: each row's memory
    /// roof is the best of the passes taken in the same minutes as its
    /// runs.
    live: Vec<(StreamProbe, StreamProbe)>,
    /// One thread reading a cache of pages of 16 positions in the kernel's
    /// order ([`paged_read_probe`]), bytes/s.
    paged: f64,
}

/// Read bandwidth (bytes/s) of `threads` threads reading one stream, and
/// two streams side by side in 4 KiB pieces (K and V as the kernels read
/// them: a block of 16 rows of 128 f16 values of K, then of V), from a
/// DRAM-sized buffer and from a cache-resident one.
struct ReadProbe {
    threads: usize,
    dram_one: f64,
    dram_two: f64,
    hot_one: f64,
    hot_two: f64,
}

impl Probes {
    fn widen(&self, threads: usize, dtype: Dtype) -> f64 {
        self.widen
            .iter()
            .find(|w| w.0 == threads && w.1 == dtype)
            .map_or(f64::INFINITY, |w| w.2)
    }
    fn live(&self, threads: usize) -> Option<&(StreamProbe, StreamProbe)> {
        self.live.iter().find(|p| p.0.threads() == threads)
    }
    fn get(&self, threads: usize) -> (f64, f64) {
        self.at
            .iter()
            .find(|p| p.0 == threads)
            .map(|p| (p.1, p.2))
            .unwrap_or((f64::NAN, f64::NAN))
    }
}

struct Row {
    section: &'static str,
    model: String,
    b: usize,
    h: usize,
    g: usize,
    dk: usize,
    dv: usize,
    l: usize,
    q_len: usize,
    layout: String,
    variant: String,
    /// K and V element types.
    dtype: Dtype,
    v_dtype: Dtype,
    tier: Tier,
    kernel: &'static str,
    threads: usize,
    seconds: f64,
    median: f64,
    kv_bytes: usize,
    /// The read roof: the best probe pass of the same minutes.
    probe_bps: f64,
    /// The opening probe of the run.
    run_probe_bps: f64,
    fraction: f64,
    /// The memory term alone over `seconds`.
    bytes_fraction: f64,
    /// The binding roof: `mem`, `fma` or `widen`.
    roof: &'static str,
    /// `cold` (a rotation of layer caches far larger than the last-level
    /// cache) or `hot` (one layer's cache, run after run).
    residency: &'static str,
    /// Layer caches the runs rotated over.
    layers: usize,
}

/// One measurement to make.
#[derive(Clone, Copy)]
struct Job {
    section: &'static str,
    m: Model,
    b: usize,
    l: usize,
    /// K element type.
    dtype: Dtype,
    /// V element type.
    v_dtype: Dtype,
    tier: Tier,
    threads: usize,
    layout: Layout,
    q_len: usize,
    variant: Variant,
    /// Run on one layer's cache over and over (cache-resident when it
    /// fits) instead of rotating over a model's layers.
    hot: bool,
}

/// Which attention variant a job runs.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// Plain causal attention.
    None,
    /// A sliding window of this many positions.
    Window(usize),
    /// An attention-sink logit per head.
    Sinks,
    /// A logit softcap of 50 (Gemma-2's attention cap).
    Softcap,
    /// ALiBi with the standard slopes for `max_bias = 8`.
    Alibi,
    /// An additive bias per (token, position), broadcast over heads.
    Bias,
    /// Gemma-2's local layers: softcap 50 and a window of 4096.
    SoftcapWindow,
}

impl Variant {
    /// The JSON `variant` value.
    fn key(self) -> String {
        match self {
            Variant::None => "none".into(),
            Variant::Window(w) => format!("window{w}"),
            Variant::Sinks => "sinks".into(),
            Variant::Softcap => "softcap".into(),
            Variant::Alibi => "alibi".into(),
            Variant::Bias => "bias".into(),
            Variant::SoftcapWindow => "softcap+window4096".into(),
        }
    }
}

/// How a job stores its cache.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// `[B, G, L, D]`, each head's rows contiguous (the default).
    Bgld,
    /// The same cache with the head-major stream prefetch off
    /// (`Plan::with_stream_prefetch(0)`): the hardware prefetcher alone.
    BgldHwPrefetch,
    /// `[B, L, G, D]`, the heads of a position side by side.
    Blgd,
    /// `[B, L, G, D]` with 64 bytes of padding after each position: the
    /// same reads at addresses that do not repeat every 4 KiB.
    BlgdPad,
    /// Pages of this many positions, `[G, page, D]` inside a page, handed
    /// out in shuffled order (a fragmented pool).
    Paged(usize),
    /// A ring of exactly `L` slots whose window starts mid-ring, so it is
    /// read in two pieces.
    Ring,
}

impl Layout {
    /// The JSON `layout` value.
    fn key(self) -> String {
        match self {
            Layout::Bgld => "bgld".into(),
            Layout::BgldHwPrefetch => "bgld-hwpf".into(),
            Layout::Blgd => "blgd".into(),
            Layout::BlgdPad => "blgd+64B".into(),
            Layout::Paged(p) => format!("paged{p}"),
            Layout::Ring => "ring".into(),
        }
    }
}

/// Bytes a cold job's rotation of layer caches spans at least (also at
/// least four times the last-level cache): a model's decode step reads every
/// layer's cache once, so no layer's rows are still cached when its next
/// step comes unless the whole model's cache fits.
const ROTATION_BYTES: usize = 1 << 30;

/// Layers of a model the cold measurements rotate over, at most.
const MODEL_LAYERS: usize = 32;

/// The last-level cache of CPU 0 in bytes (Linux sysfs), 32 MiB if unknown.
fn llc_bytes() -> usize {
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

/// K and V stores of `layers` layers that the jobs of one measurement with
/// the same types and sizes share: each layout reads the same memory, so a
/// ratio between layouts does not depend on where the allocator placed
/// each one's buffers (on the Intel development VM two 1 GiB sets of the
/// same `[B, G, L, D]` caches, allocated one after the other, read 6-10 %
/// apart in 4 runs of 5).
struct StoreSet {
    key: (Dtype, Dtype, usize, usize, usize),
    k: Rc<Vec<KvBuffer>>,
    v: Rc<Vec<KvBuffer>>,
}

/// One job's caches: `layers` K and V stores of one layer each, the block
/// table of a paged layout and the ring's first positions.
struct Rig {
    k: Rc<Vec<KvBuffer>>,
    v: Rc<Vec<KvBuffer>>,
    /// Which of the measurement's store sets `k` and `v` are (jobs whose
    /// caches take the same memory read the same stores).
    set: usize,
    table: Vec<u32>,
    first_pos: Vec<usize>,
}

impl Rig {
    /// The job's rig over `layers` layer caches, reusing a store set of
    /// `sets` that has the same types and sizes, else adding one.
    fn new(job: &Job, layers: usize, sets: &mut Vec<StoreSet>) -> Rig {
        let Job {
            m, b, l, layout, ..
        } = *job;
        let elems = match layout {
            Layout::Paged(p) => b * l.div_ceil(p) * m.g * p * m.d,
            Layout::BlgdPad => b * l * (m.g * m.d + pad_elems(job.dtype, m.d)),
            _ => b * m.g * l * m.d,
        };
        let pages = match layout {
            Layout::Paged(p) => b * l.div_ceil(p),
            _ => 0,
        };
        // A shuffled block table: consecutive blocks of a sequence are not
        // neighbours in the pool.
        let mut table: Vec<u32> = (0..pages as u32).collect();
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        for i in (1..table.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            table.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let key = (job.dtype, job.v_dtype, elems, m.d, layers);
        let set = match sets.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                sets.push(StoreSet {
                    key,
                    k: Rc::new(
                        (0..layers)
                            .map(|i| store(job.dtype, elems, m.d, 1 + 2 * i as u64))
                            .collect(),
                    ),
                    v: Rc::new(
                        (0..layers)
                            .map(|i| store(job.v_dtype, elems, m.d, 2 + 2 * i as u64))
                            .collect(),
                    ),
                });
                sets.len() - 1
            }
        };
        Rig {
            k: sets[set].k.clone(),
            v: sets[set].v.clone(),
            set,
            table,
            first_pos: vec![l / 2; b],
        }
    }

    /// Layer `i`'s cache as `job` lays it out.
    fn cache(&self, job: &Job, i: usize) -> KvCache<'_> {
        let Job { m, l, layout, .. } = *job;
        let (k, v) = (self.k[i].data(), self.v[i].data());
        match layout {
            Layout::Bgld | Layout::BgldHwPrefetch => KvCache::strided(
                KvTensor::bgld(k, l, m.g, m.d),
                KvTensor::bgld(v, l, m.g, m.d),
            ),
            Layout::Blgd => KvCache::strided(
                KvTensor::blgd(k, l, m.g, m.d),
                KvTensor::blgd(v, l, m.g, m.d),
            ),
            Layout::BlgdPad => {
                let token = m.g * m.d + pad_elems(job.dtype, m.d);
                let t = |x| KvTensor::new(x, l * token, token, m.d);
                KvCache::strided(t(k), t(v))
            }
            Layout::Paged(p) => KvCache::Paged(PagedKv {
                k: KvPages::gpd(k, p, m.g, m.d),
                v: KvPages::gpd(v, p, m.g, m.d),
                page_size: p,
                block_table: &self.table,
                blocks_per_seq: l.div_ceil(p),
            }),
            Layout::Ring => KvCache::Ring(RingKv {
                k: KvTensor::bgld(k, l, m.g, m.d),
                v: KvTensor::bgld(v, l, m.g, m.d),
                capacity: l,
                first_pos: &self.first_pos,
            }),
        }
    }
}

/// Elements of 64 bytes of `dtype` (the padded token-major layout's pad).
fn pad_elems(dtype: Dtype, d: usize) -> usize {
    let e = 64 * d / dtype.row_bytes(d);
    assert_eq!(
        e * dtype.row_bytes(d),
        64 * d,
        "64 bytes of {dtype} are whole elements"
    );
    e
}

/// Measures `jobs` (same model, batch, lengths and thread count; they may
/// differ in variant, KV types and layout): caches of their own, one plan
/// per job, and the jobs' runs interleaved burst by burst, so a disturbed
/// stretch of a shared machine falls on all of them alike. A cold job
/// rotates over several layers' caches, one per run, as a model's decode
/// step does; a hot one runs on one layer's cache.
fn measure(jobs: &[Job], probes: &Probes, min_secs: f64) -> Vec<Row> {
    let Job { m, b, l, q_len, .. } = jobs[0];
    let shape_of = |j: &Job| {
        Shape::new(b, m.h, m.g, m.d, j.dtype)
            .with_dtypes(j.dtype, j.v_dtype)
            .with_q_len(q_len)
            .with_max_kv_len(l)
    };
    let shape = shape_of(&jobs[0]);
    let llc = llc_bytes();
    let mut sets = Vec::new();
    let rigs: Vec<Rig> = jobs
        .iter()
        .map(|j| {
            let sh = shape_of(j);
            let layer_bytes = sh.kv_bytes(&vec![l; b]).max(1);
            let layers = if j.hot {
                1
            } else {
                ROTATION_BYTES
                    .max(4 * llc)
                    .div_ceil(layer_bytes)
                    .clamp(1, MODEL_LAYERS)
            };
            Rig::new(j, layers, &mut sets)
        })
        .collect();
    // One rotation per store set, shared by its jobs: every run reads the
    // layer after the one the previous run of that set read, so no job
    // finds rows another job left in the cache.
    let set_of: Vec<usize> = rigs.iter().map(|r| r.set).collect();
    let residency: Vec<(&'static str, usize)> = jobs
        .iter()
        .zip(&rigs)
        .map(|(j, rig)| {
            let bytes = shape_of(j).kv_bytes(&vec![l; b]) * rig.k.len();
            // A rotation that fits in the last-level cache (32 layers of a
            // short cache on a big-L3 host) is neither one hot layer nor a
            // DRAM read: `llc`.
            let res = if j.hot {
                "hot"
            } else if bytes >= 2 * llc {
                "cold"
            } else {
                "llc"
            };
            (res, rig.k.len())
        })
        .collect();
    let q: Vec<f32> = (0..shape.q_elems())
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let lens = vec![l; b];
    let bias_data: Vec<f32> = if jobs.iter().any(|j| j.variant == Variant::Bias) {
        (0..b * q_len * l).map(|i| (i % 7) as f32 * 0.1).collect()
    } else {
        Vec::new()
    };
    let bias = Bias {
        data: &bias_data,
        seq_stride: q_len * l,
        token_stride: l,
        head_stride: 0,
    };
    // batches[job][layer]
    let batches: Vec<Vec<Batch<'_>>> = jobs
        .iter()
        .zip(&rigs)
        .map(|(j, rig)| {
            (0..rig.k.len())
                .map(|i| {
                    let batch = Batch::new(&q, rig.cache(j, i), &lens);
                    if j.variant == Variant::Bias {
                        batch.with_bias(bias)
                    } else {
                        batch
                    }
                })
                .collect()
        })
        .collect();
    let mut out = vec![0f32; shape.out_elems()];
    let mut lse = vec![0f32; shape.lse_elems()];
    let shapes: Vec<Shape> = jobs.iter().map(shape_of).collect();
    let plans: Vec<Plan> = jobs
        .iter()
        .zip(&shapes)
        .map(|(j, sh)| make_plan(j, sh))
        .collect();
    let mut ws: Vec<Vec<u8>> = plans.iter().map(|p| p.alloc_workspace()).collect();
    let mut times = vec![Vec::new(); jobs.len()];
    let mut next = vec![0usize; sets.len()];
    let live = probes.live(jobs[0].threads);
    // The read probes' best pass in these minutes, and the time they took
    // (not counted in `min_secs`).
    let (mut live_bps, mut probe_secs) = (0.0f64, 0.0f64);
    let started = Instant::now();
    // Bursts of runs, job after job: the first runs of a burst are untimed
    // (they wake the plan's thread pool while the previous job's pool goes
    // to sleep); `min_secs` per job in all.
    let (burst, untimed) = if jobs[0].threads > 1 { (8, 2) } else { (4, 1) };
    for round in 0.. {
        for (i, layers) in batches.iter().enumerate() {
            for rep in 0..burst {
                let batch = &layers[next[set_of[i]] % layers.len()];
                next[set_of[i]] += 1;
                let t = Instant::now();
                plans[i]
                    .run(batch, &mut out, Some(&mut lse), &mut ws[i])
                    .expect("run");
                let dt = t.elapsed().as_secs_f64();
                if rep >= untimed {
                    times[i].push(dt);
                }
            }
            assert!(out.iter().all(|x| x.is_finite()), "non-finite output");
        }
        if let Some((one, two)) = live {
            let t = Instant::now();
            live_bps = live_bps.max(one.pass()).max(two.pass());
            probe_secs += t.elapsed().as_secs_f64();
        }
        // At least five rounds: five passes of each read probe.
        if round >= 4
            && started.elapsed().as_secs_f64() - probe_secs >= min_secs * jobs.len() as f64
        {
            break;
        }
    }
    jobs.iter()
        .zip(&plans)
        .zip(&mut times)
        .zip(&shapes)
        .zip(&residency)
        .map(|((((job, plan), times), shape), res)| {
            row(job, shape, plan, times, &lens, probes, live_bps, *res)
        })
        .collect()
}

/// The plan of `job`'s variant.
fn make_plan(job: &Job, shape: &Shape) -> Plan {
    let (m, tier, threads, variant) = (job.m, job.tier, job.threads, job.variant);
    Plan::new(
        shape,
        &Options {
            scale: None,
            tier: Some(tier),
            threads,
            window: match variant {
                Variant::Window(w) => Some(w),
                Variant::SoftcapWindow => Some(4096),
                _ => None,
            },
            softcap: matches!(variant, Variant::Softcap | Variant::SoftcapWindow).then_some(50.0),
            ..Options::default()
        },
    )
    .and_then(|p| match variant {
        Variant::Sinks => {
            let sinks: Vec<f32> = (0..m.h).map(|h| 0.5 + 0.1 * (h % 4) as f32).collect();
            p.with_sinks(&sinks)
        }
        Variant::Alibi => p.with_alibi_max_bias(8.0),
        _ => Ok(p),
    })
    .map(|p| {
        if job.layout == Layout::BgldHwPrefetch {
            p.with_stream_prefetch(0)
        } else {
            p
        }
    })
    .unwrap_or_else(|e| panic!("plan {}: {e}", m.name))
}

/// The report row of `job` from its run times, `live_bps` the best read
/// probe pass taken between them.
#[allow(clippy::too_many_arguments)]
fn row(
    job: &Job,
    shape: &Shape,
    plan: &Plan,
    times: &mut [f64],
    lens: &[usize],
    probes: &Probes,
    live_bps: f64,
    (residency, layers): (&'static str, usize),
) -> Row {
    let Job {
        section,
        m,
        b,
        l,
        dtype,
        v_dtype,
        tier,
        threads,
        layout,
        q_len,
        variant,
        ..
    } = *job;
    times.sort_by(f64::total_cmp);
    // Best run, as the probes keep their best pass: on a shared machine the
    // fastest run is the one least disturbed. The median is reported too.
    let seconds = times[0];
    let median = times[times.len() / 2];
    // What the step must read: with a window, the last W + q_len - 1
    // positions of each sequence.
    let visible: Vec<usize> = match variant {
        Variant::Window(w) => lens.iter().map(|&l| l.min(w + q_len - 1)).collect(),
        Variant::SoftcapWindow => lens.iter().map(|&l| l.min(4096 + q_len - 1)).collect(),
        _ => lens.to_vec(),
    };
    let kv_bytes = shape.kv_bytes(&visible);
    let (run_bw, fma) = probes.get(threads);
    // The read roof of the same minutes as the runs; the run's opening
    // probe where none was taken.
    let bw = if live_bps > 0.0 { live_bps } else { run_bw };
    let positions: usize = visible.iter().sum();
    let t_mem = kv_bytes as f64 / bw;
    let t_fma = shape.flops(&visible) / fma;
    let t_widen = (positions * m.g) as f64
        * (m.d as f64 / probes.widen(threads, dtype) + m.d as f64 / probes.widen(threads, v_dtype));
    let bound = t_mem.max(t_fma).max(t_widen);
    let roof = if bound == t_mem {
        "mem"
    } else if bound == t_fma {
        "fma"
    } else {
        "widen"
    };
    Row {
        section,
        model: m.name.to_string(),
        b,
        h: m.h,
        g: m.g,
        dk: m.d,
        dv: m.d,
        l,
        q_len,
        layout: layout.key(),
        variant: variant.key(),
        dtype,
        v_dtype,
        tier,
        kernel: plan.kernel_name(),
        threads,
        seconds,
        median,
        kv_bytes,
        probe_bps: bw,
        run_probe_bps: run_bw,
        fraction: bound / seconds,
        bytes_fraction: t_mem / seconds,
        roof,
        residency,
        layers,
    }
}

fn print_header(json: bool) {
    if !json {
        println!(
            "{:<15} {:>2} {:>3} {:>3} {:>4} {:>4} {:>6} {:>2} {:<8} {:<10} {:>5} {:>7} {:>3} {:>4} {:>10} {:>10} {:>8} {:>8} {:>8} {:>5}",
            "model",
            "B",
            "H",
            "G",
            "Dk",
            "Dv",
            "L",
            "q",
            "layout",
            "variant",
            "kv",
            "tier",
            "thr",
            "res",
            "seconds",
            "median s",
            "KV GB/s",
            "probe",
            "roofline",
            "roof"
        );
    }
}

/// The `kv_dtype` of a row: the type, or `k<K>_v<V>` when K and V differ.
fn kv_name(k: Dtype, v: Dtype) -> String {
    if k == v {
        k.name().to_string()
    } else {
        format!("k{k}_v{v}")
    }
}

fn print_row(r: &Row, json: bool) {
    let gbps = r.kv_bytes as f64 / r.seconds / 1e9;
    let kv = kv_name(r.dtype, r.v_dtype);
    if json {
        println!(
            "{{\"section\":\"{}\",\"model\":\"{}\",\"b\":{},\"h\":{},\"g\":{},\"dk\":{},\"dv\":{},\"l\":{},\"q_len\":{},\"layout\":\"{}\",\"variant\":\"{}\",\"kv_dtype\":\"{}\",\"k_dtype\":\"{}\",\"v_dtype\":\"{}\",\"tier\":\"{}\",\"kernel\":\"{}\",\"threads\":{},\"seconds\":{:.6e},\"seconds_median\":{:.6e},\"kv_bytes\":{},\"gbps\":{:.3},\"probe_gbps\":{:.3},\"run_probe_gbps\":{:.3},\"roofline_fraction\":{:.4},\"bytes_fraction\":{:.4},\"roof\":\"{}\",\"residency\":\"{}\",\"layers\":{}}}",
            r.section, r.model, r.b, r.h, r.g, r.dk, r.dv, r.l, r.q_len, r.layout, r.variant, kv, r.dtype, r.v_dtype, r.tier, r.kernel, r.threads, r.seconds, r.median, r.kv_bytes, gbps, r.probe_bps / 1e9, r.run_probe_bps / 1e9, r.fraction, r.bytes_fraction, r.roof, r.residency, r.layers
        );
    } else {
        println!(
            "{:<15} {:>2} {:>3} {:>3} {:>4} {:>4} {:>6} {:>2} {:<8} {:<10} {:>5} {:>7} {:>3} {:>4} {:>10.6} {:>10.6} {:>8.2} {:>8.2} {:>8.3} {:>5}",
            r.model,
            r.b,
            r.h,
            r.g,
            r.dk,
            r.dv,
            r.l,
            r.q_len,
            r.layout,
            r.variant,
            kv,
            r.tier.name(),
            r.threads,
            r.residency,
            r.seconds,
            r.median,
            gbps,
            r.probe_bps / 1e9,
            r.fraction,
            r.roof
        );
    }
}

/// What the memory system gives a plain read loop walking a paged cache in
/// the kernel's order: K and V pools of `pages` pages of `heads` pieces of
/// `piece` bytes, pages visited in a shuffled order, each page's pieces read
/// head by head, K then V (one thread; best of `reps`). Paged rows of the
/// report compare against this as well as against the streaming probe.
fn paged_read_probe(pages: usize, heads: usize, piece: usize, reps: usize) -> f64 {
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

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("roofline: {e}");
        std::process::exit(2);
    });
    let tier = args.tier.unwrap_or_else(|| {
        gqa_kernels::active_tier().unwrap_or_else(|e| {
            eprintln!("roofline: {e}");
            std::process::exit(2);
        })
    });
    let probes = probe_machine(&args);
    print_probes(&probes, tier, args.json);
    let wanted = |s: &str| args.sections.is_empty() || args.sections.iter().any(|x| x == s);
    let mut jobs = jobs(&args, tier);
    jobs.retain(|j| wanted(j.section));
    let min_secs = if args.quick { 0.15 } else { 0.4 };
    let rows = run_jobs(&jobs, &probes, tier, &args, min_secs);
    if wanted("append") {
        append_report(tier, args.json, min_secs);
    }
    if wanted("units") {
        units_report(tier, &args, &probes);
    }
    print_summaries(&rows, args.json);
}

/// Measures the machine: read bandwidth (DRAM-sized and cache-resident,
/// one stream and two), the f32 FMA rate, the dot-product and tile units,
/// widen rates per type, the live probes `measure` interleaves with its
/// runs, and the paged-order read probe.
fn probe_machine(args: &Args) -> Probes {
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
fn print_probes(probes: &Probes, tier: Tier, json: bool) {
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
                if *u == Unit::AmxBf16 {
                    "bf16 K and V kernels run on it"
                } else {
                    "no kernel uses it yet"
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

/// A job of plain decode (no variant) with V of K's type, measured cold.
#[allow(clippy::too_many_arguments)]
fn job(
    section: &'static str,
    m: Model,
    b: usize,
    l: usize,
    dtype: Dtype,
    tier: Tier,
    threads: usize,
    layout: Layout,
    q_len: usize,
) -> Job {
    Job {
        section,
        m,
        b,
        l,
        dtype,
        v_dtype: dtype,
        tier,
        threads,
        layout,
        q_len,
        variant: Variant::None,
        hot: false,
    }
}

/// Every measurement of the report, in order (before `--section` picks).
fn jobs(args: &Args, tier: Tier) -> Vec<Job> {
    let mut jobs = model_jobs(args, tier);
    jobs.extend(layout_jobs(args, tier));
    jobs.extend(variant_jobs(args, tier));
    jobs.extend(sweep_jobs(tier));
    jobs
}

/// The model table (every model, length and batch; every KV type of
/// Llama-3-8B), the serving batch and the tier comparison.
fn model_jobs(args: &Args, tier: Tier) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    let (models, lens, batches): (Vec<Model>, Vec<usize>, Vec<usize>) = if args.quick {
        (vec![LLAMA3_8B, FALCON_7B], vec![1024, 32768], vec![1])
    } else {
        (
            vec![LLAMA3_8B, QWEN25_7B, PHI3_MINI, FALCON_7B, GEMMA2_9B],
            vec![1024, 8192, 32768],
            vec![1, 4, 16],
        )
    };
    for &threads in &args.threads {
        for m in &models {
            for &l in &lens {
                for &b in &batches {
                    // Skip steps over 1.2 GB of KV (B = 16 at L = 32768):
                    // they add minutes and nothing the B = 4 rows don't show.
                    if b * l * m.g * m.d * 4 > 1_200_000_000 {
                        continue;
                    }
                    let dtypes: &[Dtype] = if m.name == LLAMA3_8B.name && !args.quick {
                        &Dtype::ALL
                    } else {
                        &[Dtype::F16]
                    };
                    for &dt in dtypes {
                        jobs.push(job("table", *m, b, l, dt, tier, threads, Layout::Bgld, 1));
                    }
                }
            }
        }
    }
    // A serving batch: many short sequences.
    for &threads in &args.threads {
        jobs.push(job(
            "serving",
            LLAMA3_8B,
            16,
            2048,
            Dtype::F16,
            tier,
            threads,
            Layout::Bgld,
            1,
        ));
    }
    // Tier comparison on the memory-bound shape, one thread.
    for t in Tier::available() {
        if !(args.quick && t == Tier::Scalar) {
            jobs.push(job(
                "tiers",
                LLAMA3_8B,
                1,
                32768,
                Dtype::F16,
                t,
                1,
                Layout::Bgld,
                1,
            ));
        }
    }
    jobs
}

/// The layouts section: each entry's layouts measured together.
fn layout_jobs(args: &Args, tier: Tier) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    // Cache layouts and query tokens on the memory-bound shapes: Llama-3-8B
    // (r = 4) and, for q_len, the MHA Phi-3-mini (r = 1), whose four query
    // tokens still leave it memory-bound. Each entry is one measurement of
    // its layouts, runs interleaved, cold (rotating over layer caches)
    // unless marked hot; the summary divides each step time by the
    // [B, G, L, D] one of the same entry and thread count.
    type LayoutSet = (Model, usize, usize, usize, bool, Vec<Layout>);
    let layouts: Vec<LayoutSet> = if args.quick {
        vec![
            (
                LLAMA3_8B,
                1,
                32768,
                1,
                false,
                vec![Layout::Bgld, Layout::Blgd, Layout::Paged(16), Layout::Ring],
            ),
            (LLAMA3_8B, 1, 1024, 1, true, vec![Layout::Bgld]),
            (PHI3_MINI, 1, 16384, 4, false, vec![Layout::Bgld]),
        ]
    } else {
        vec![
            (
                LLAMA3_8B,
                1,
                32768,
                1,
                false,
                vec![
                    Layout::Bgld,
                    Layout::BgldHwPrefetch,
                    Layout::Blgd,
                    Layout::BlgdPad,
                    Layout::Paged(16),
                    Layout::Paged(256),
                    Layout::Ring,
                ],
            ),
            (
                LLAMA3_8B,
                4,
                32768,
                1,
                false,
                vec![Layout::Bgld, Layout::Blgd, Layout::Paged(16)],
            ),
            (
                LLAMA3_8B,
                1,
                1024,
                1,
                true,
                vec![Layout::Bgld, Layout::Blgd, Layout::Paged(16)],
            ),
            (
                LLAMA3_8B,
                1,
                1024,
                1,
                false,
                vec![Layout::Bgld, Layout::Blgd, Layout::Paged(16)],
            ),
            (LLAMA3_8B, 1, 32768, 4, false, vec![Layout::Bgld]),
            (PHI3_MINI, 1, 16384, 1, false, vec![Layout::Bgld]),
            (
                PHI3_MINI,
                1,
                16384,
                4,
                false,
                vec![Layout::Bgld, Layout::Paged(16)],
            ),
        ]
    };
    for &threads in &args.threads {
        for (m, b, l, q_len, hot, set) in &layouts {
            for &layout in set {
                jobs.push(Job {
                    hot: *hot,
                    ..job(
                        "layouts",
                        *m,
                        *b,
                        *l,
                        Dtype::F16,
                        tier,
                        threads,
                        layout,
                        *q_len,
                    )
                });
            }
        }
    }
    jobs
}

/// The attention variants and the KV element types, each set measured
/// together.
fn variant_jobs(args: &Args, tier: Tier) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    // Attention variants on the memory-bound shape. Consecutive variant
    // jobs of one model and thread count are measured together, their runs
    // interleaved (see `measure`), and the summary compares each variant's
    // best run with plain decode's.
    for &threads in &args.threads {
        for variant in [
            Variant::None,
            Variant::Window(4096),
            Variant::Softcap,
            Variant::Alibi,
            Variant::Bias,
            Variant::Sinks,
        ] {
            jobs.push(Job {
                variant,
                ..job(
                    "variants",
                    LLAMA3_8B,
                    1,
                    32768,
                    Dtype::F16,
                    tier,
                    threads,
                    Layout::Bgld,
                    1,
                )
            });
        }
        // Gemma-2-9B local attention: plain, then softcap + window 4096.
        for variant in [Variant::None, Variant::SoftcapWindow] {
            jobs.push(Job {
                variant,
                ..job(
                    "variants",
                    GEMMA2_9B,
                    1,
                    32768,
                    Dtype::F16,
                    tier,
                    threads,
                    Layout::Bgld,
                    1,
                )
            });
        }
    }
    // KV element types: Llama-3-8B at L = 32768, B = 1, every type and the
    // usual mixed pairs, measured together (runs interleaved, like the
    // variants), each type's step time over f16's in the summary.
    for &threads in &args.threads {
        for (k, v) in KV_TYPES {
            jobs.push(Job {
                v_dtype: v,
                ..job(
                    "kv_types",
                    LLAMA3_8B,
                    1,
                    32768,
                    k,
                    tier,
                    threads,
                    Layout::Bgld,
                    1,
                )
            });
        }
    }
    jobs
}

/// The G sweep.
fn sweep_jobs(tier: Tier) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    // The paper's claim at kernel level: H = 32, D = 128, L = 16384, f16.
    // Three interleaved rounds; the summary keeps each G's fastest median, so
    // one disturbed measurement on a shared machine cannot skew the ratios.
    for g in [1, 2, 4, 8, 16, 32].repeat(SWEEP_ROUNDS) {
        let m = Model {
            name: "G-sweep",
            h: 32,
            g,
            d: 128,
        };
        jobs.push(Job {
            section: "g_sweep",
            m,
            b: 1,
            l: 16384,
            dtype: Dtype::F16,
            v_dtype: Dtype::F16,
            tier,
            threads: 1,
            layout: Layout::Bgld,
            q_len: 1,
            variant: Variant::None,
            hot: false,
        });
    }
    jobs
}

/// Runs the jobs, groups of interleaved ones together (see `measure`),
/// printing each row as it comes, under its section's heading.
fn run_jobs(jobs: &[Job], probes: &Probes, tier: Tier, args: &Args, min_secs: f64) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut section = "";
    let mut i = 0;
    while i < jobs.len() {
        let job = jobs[i];
        // A variants job takes the following jobs that differ from it in
        // the variant only into one interleaved measurement.
        let mut end = i + 1;
        while end < jobs.len()
            && (job.section == "variants" && same_but_variant(&job, &jobs[end])
                || job.section == "kv_types" && same_but_dtype(&job, &jobs[end])
                || job.section == "layouts" && same_but_layout(&job, &jobs[end]))
        {
            end += 1;
        }
        eprintln!(
            "[{}/{}] {}: {} B={} L={} {} {} threads={}",
            end,
            jobs.len(),
            job.section,
            job.m.name,
            job.b,
            job.l,
            job.dtype,
            job.tier,
            job.threads
        );
        let group = measure(&jobs[i..end], probes, min_secs);
        i = end;
        for row in group {
            let sec = row.section;
            if sec != section {
                section = sec;
                if !args.json {
                    println!();
                    println!("{}", section_title(sec, tier));
                    print_header(false);
                }
            }
            print_row(&row, args.json);
            rows.push(row);
        }
    }
    rows
}

/// The text report's heading of a section.
fn section_title(sec: &str, tier: Tier) -> String {
    let title = match sec {
        "table" => return format!("## Model shapes ([B, G, L, D] cache, tier {tier})"),
        "serving" => "## Serving batch: Llama-3-8B, f16, B = 16, L = 2048",
        "tiers" => "## Tiers on Llama-3-8B, f16, L = 32768, B = 1, 1 thread",
        "layouts" => {
            "## Layouts and query tokens, f16 (bgld [B, G, L, D]; bgld-hwpf the same \
             without the stream prefetch (hardware prefetcher only); blgd [B, L, G, D]; \
             blgd+64B the same with 64 bytes after each position; paged [G, page, D] \
             pages in shuffled order; ring read in two pieces; res: cold = rotating \
             over layer caches, llc = the same but they fit in the last-level cache, \
             hot = one layer's cache)"
        }
        "variants" => {
            "## Attention variants, f16, L = 32768, B = 1 \
             (window4096: sliding window of 4096 positions; softcap: cap 50; alibi: \
             max_bias 8; bias: one f32 per position, broadcast over heads; sinks: a sink \
             logit per head)"
        }
        "kv_types" => {
            "## KV element types, Llama-3-8B, L = 32768, B = 1 \
             (KV bytes: values and their scales; kint8_vf16: int8 K, f16 V)"
        }
        _ => "## G sweep: H = 32, D = 128, L = 16384, f16, B = 1, 1 thread",
    };
    title.to_string()
}

/// Prints the summary tables (text) or ratio lines (JSON) of `rows`.
fn print_summaries(rows: &[Row], json: bool) {
    let mut sweep: Vec<&Row> = Vec::new();
    for r in rows.iter().filter(|r| r.section == "g_sweep") {
        match sweep.iter_mut().find(|s| s.g == r.g) {
            Some(best) if r.seconds < best.seconds => *best = r,
            Some(_) => {}
            None => sweep.push(r),
        }
    }
    let t32 = sweep
        .iter()
        .find(|r| r.g == 32)
        .map(|r| r.seconds)
        .unwrap_or(f64::NAN);
    if json {
        print_ratio_lines(rows, &sweep, t32);
    } else {
        print_sweep_variant_type_tables(rows, &sweep, t32);
        print_layout_thread_tables(rows);
    }
}

/// The summaries as JSON lines: each variant, KV type, layout and thread
/// count over its baseline, and the G sweep.
fn print_ratio_lines(rows: &[Row], sweep: &[&Row], t32: f64) {
    for (r, ratio) in variant_summary(rows) {
        println!(
            "{{\"section\":\"variant_ratio\",\"variant\":\"{}\",\"threads\":{},\"seconds\":{:.6e},\"t_over_t_none\":{:.3}}}",
            r.variant, r.threads, r.seconds, ratio
        );
    }
    for (r, ratio) in kv_type_summary(rows) {
        println!(
            "{{\"section\":\"kv_type_ratio\",\"kv_dtype\":\"{}\",\"k_dtype\":\"{}\",\"v_dtype\":\"{}\",\"threads\":{},\"seconds\":{:.6e},\"t_over_t_f16\":{:.3},\"roofline_fraction\":{:.4},\"bytes_fraction\":{:.4},\"roof\":\"{}\"}}",
            kv_name(r.dtype, r.v_dtype), r.dtype, r.v_dtype, r.threads, r.seconds, ratio, r.fraction, r.bytes_fraction, r.roof
        );
    }
    for (r, ratio) in layout_summary(rows) {
        println!(
            "{{\"section\":\"layout_ratio\",\"model\":\"{}\",\"b\":{},\"l\":{},\"q_len\":{},\"layout\":\"{}\",\"residency\":\"{}\",\"threads\":{},\"seconds\":{:.6e},\"t_over_t_bgld\":{:.3},\"roofline_fraction\":{:.4},\"bytes_fraction\":{:.4}}}",
            r.model, r.b, r.l, r.q_len, r.layout, r.residency, r.threads, r.seconds, ratio, r.fraction, r.bytes_fraction
        );
    }
    for (r, ratio) in thread_summary(rows) {
        println!(
            "{{\"section\":\"thread_ratio\",\"model\":\"{}\",\"b\":{},\"l\":{},\"q_len\":{},\"layout\":\"{}\",\"residency\":\"{}\",\"threads\":{},\"seconds\":{:.6e},\"t_over_t_1thread\":{:.3}}}",
            r.model, r.b, r.l, r.q_len, r.layout, r.residency, r.threads, r.seconds, ratio
        );
    }
    for r in sweep {
        println!("{{\"section\":\"g_sweep_ratio\",\"g\":{},\"seconds\":{:.6e},\"t_g32_over_t_g\":{:.3}}}", r.g, r.seconds, t32 / r.seconds);
    }
}

/// The G sweep, the variants over plain decode and the KV types over f16.
fn print_sweep_variant_type_tables(rows: &[Row], sweep: &[&Row], t32: f64) {
    println!();
    println!("## G sweep: step time relative to MHA (G = 32), best of {SWEEP_ROUNDS} rounds");
    println!(
        "{:>3} {:>10} {:>12} {:>12}",
        "G", "seconds", "t(G)/t(32)", "t(32)/t(G)"
    );
    for r in sweep {
        println!(
            "{:>3} {:>10.6} {:>12.3} {:>12.2}",
            r.g,
            r.seconds,
            r.seconds / t32,
            t32 / r.seconds
        );
    }
    let variants = variant_summary(rows);
    if !variants.is_empty() {
        println!();
        println!(
            "## Attention variants: step time over plain decode, Llama-3-8B, best runs, runs interleaved"
        );
        println!(
            "{:<12} {:>3} {:>10} {:>10}",
            "variant", "thr", "seconds", "/ none"
        );
        for (r, ratio) in &variants {
            println!(
                "{:<12} {:>3} {:>10.6} {:>10.3}",
                r.variant, r.threads, r.seconds, ratio
            );
        }
    }
    let kv_types = kv_type_summary(rows);
    if !kv_types.is_empty() {
        println!();
        println!(
            "## KV types: step time over f16, Llama-3-8B, L = 32768, best runs, runs interleaved"
        );
        println!(
            "{:<15} {:>3} {:>10} {:>8} {:>8} {:>9} {:>9} {:>5}",
            "kv", "thr", "seconds", "KV GB/s", "/ f16", "bytes", "roofline", "roof"
        );
        for (r, ratio) in &kv_types {
            println!(
                "{:<15} {:>3} {:>10.6} {:>8.2} {:>8.3} {:>9.3} {:>9.3} {:>5}",
                kv_name(r.dtype, r.v_dtype),
                r.threads,
                r.seconds,
                r.kv_bytes as f64 / r.seconds / 1e9,
                ratio,
                r.bytes_fraction,
                r.fraction,
                r.roof
            );
        }
    }
}

/// The layouts over `[B, G, L, D]`, thread counts over one thread, and
/// the tier ratio.
fn print_layout_thread_tables(rows: &[Row]) {
    let layouts = layout_summary(rows);
    if !layouts.is_empty() {
        println!();
        println!(
            "## Layouts: step time over [B, G, L, D], f16, best runs, runs interleaved (fraction: of the roof; bytes: KV bytes / best read probe)"
        );
        println!(
            "{:<11} {:>2} {:>6} {:>2} {:<5} {:<9} {:>3} {:>10} {:>8} {:>8} {:>8}",
            "model",
            "B",
            "L",
            "q",
            "res",
            "layout",
            "thr",
            "seconds",
            "/ bgld",
            "bytes",
            "roofline"
        );
        for (r, ratio) in &layouts {
            println!(
                "{:<11} {:>2} {:>6} {:>2} {:<5} {:<9} {:>3} {:>10.6} {:>8.3} {:>8.3} {:>8.3}",
                r.model,
                r.b,
                r.l,
                r.q_len,
                r.residency,
                r.layout,
                r.threads,
                r.seconds,
                ratio,
                r.bytes_fraction,
                r.fraction
            );
        }
    }
    let threads = thread_summary(rows);
    if !threads.is_empty() {
        println!();
        println!("## Threads: step time over the 1-thread step, f16, best runs");
        println!(
            "{:<11} {:>2} {:>6} {:>2} {:<5} {:<9} {:>3} {:>10} {:>9}",
            "model", "B", "L", "q", "res", "layout", "thr", "seconds", "/ 1 thr"
        );
        for (r, ratio) in &threads {
            println!(
                "{:<11} {:>2} {:>6} {:>2} {:<5} {:<9} {:>3} {:>10.6} {:>9.3}",
                r.model, r.b, r.l, r.q_len, r.residency, r.layout, r.threads, r.seconds, ratio
            );
        }
    }
    let tiers: Vec<&Row> = rows.iter().filter(|r| r.section == "tiers").collect();
    if let (Some(a), Some(b)) = (
        tiers.iter().find(|r| r.tier == Tier::Avx512),
        tiers.iter().find(|r| r.tier == Tier::Avx2),
    ) {
        println!();
        println!(
            "# avx2 / avx512 step time on the memory-bound shape: {:.3}",
            b.seconds / a.seconds
        );
    }
}

/// The best Llama-3-8B variant row per (variant, threads), with its time
/// over the best plain row of the same thread count.
fn variant_summary(rows: &[Row]) -> Vec<(&Row, f64)> {
    let mut best: Vec<&Row> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.section == "variants" && r.model == LLAMA3_8B.name)
    {
        match best
            .iter_mut()
            .find(|b| b.variant == r.variant && b.threads == r.threads)
        {
            Some(b) if r.seconds < b.seconds => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    best.iter()
        .map(|r| {
            let none = best
                .iter()
                .find(|b| b.variant == "none" && b.threads == r.threads)
                .map_or(f64::NAN, |b| b.seconds);
            (*r, r.seconds / none)
        })
        .collect()
}

/// The KV-type rows, each with its time over the f16 row of the same
/// thread count.
fn kv_type_summary(rows: &[Row]) -> Vec<(&Row, f64)> {
    let kv: Vec<&Row> = rows.iter().filter(|r| r.section == "kv_types").collect();
    kv.iter()
        .map(|r| {
            let f16 = kv
                .iter()
                .find(|b| {
                    b.dtype == Dtype::F16 && b.v_dtype == Dtype::F16 && b.threads == r.threads
                })
                .map_or(f64::NAN, |b| b.seconds);
            (*r, r.seconds / f16)
        })
        .collect()
}

/// Whether `a` and `b` are the same measurement but for the KV types.
fn same_but_dtype(a: &Job, b: &Job) -> bool {
    a.section == b.section
        && a.m.name == b.m.name
        && (a.b, a.l, a.threads, a.q_len) == (b.b, b.l, b.threads, b.q_len)
        && a.tier == b.tier
        && a.layout == b.layout
        && a.variant == b.variant
}

/// Whether `a` and `b` are the same measurement but for the layout.
fn same_but_layout(a: &Job, b: &Job) -> bool {
    a.section == b.section
        && a.m.name == b.m.name
        && (a.b, a.l, a.threads, a.q_len, a.hot) == (b.b, b.l, b.threads, b.q_len, b.hot)
        && (a.dtype, a.v_dtype) == (b.dtype, b.v_dtype)
        && a.tier == b.tier
        && a.variant == b.variant
}

/// Every layouts row with its step time over the [B, G, L, D] row of the
/// same measurement (model, B, L, q_len, residency, threads).
fn layout_summary(rows: &[Row]) -> Vec<(&Row, f64)> {
    let lay: Vec<&Row> = rows.iter().filter(|r| r.section == "layouts").collect();
    lay.iter()
        .filter_map(|r| {
            let base = lay.iter().find(|x| {
                x.layout == "bgld"
                    && x.model == r.model
                    && (x.b, x.l, x.q_len, x.threads) == (r.b, r.l, r.q_len, r.threads)
                    && x.residency == r.residency
            })?;
            Some((*r, r.seconds / base.seconds))
        })
        .collect()
}

/// Layouts rows at more than one thread with their step time over the
/// 1-thread row of the same shape, layout and residency.
fn thread_summary(rows: &[Row]) -> Vec<(&Row, f64)> {
    let lay: Vec<&Row> = rows.iter().filter(|r| r.section == "layouts").collect();
    lay.iter()
        .filter(|r| r.threads > 1)
        .filter_map(|r| {
            let one = lay.iter().find(|x| {
                x.threads == 1
                    && x.model == r.model
                    && x.layout == r.layout
                    && (x.b, x.l, x.q_len) == (r.b, r.l, r.q_len)
                    && x.residency == r.residency
            })?;
            Some((*r, r.seconds / one.seconds))
        })
        .collect()
}

/// Whether `a` and `b` are the same measurement but for the variant.
fn same_but_variant(a: &Job, b: &Job) -> bool {
    a.section == b.section
        && a.m.name == b.m.name
        && (a.b, a.l, a.threads, a.q_len) == (b.b, b.l, b.threads, b.q_len)
        && (a.dtype, a.v_dtype) == (b.dtype, b.v_dtype)
        && a.tier == b.tier
        && a.layout == b.layout
}

/// KV append against the decode step it belongs to: one new token (f16
/// source) written into each of Llama-3-8B's 32 layer caches at L = 8192,
/// for each target type, next to one decode step over all 32 layers (one
/// layer's step measured, times 32) in the same run.
fn append_report(tier: Tier, json: bool, min_secs: f64) {
    const LAYERS: usize = 32;
    let (m, l) = (LLAMA3_8B, 8192);
    let row = m.g * m.d;
    // One decode step of one layer.
    let step = measure(
        &[Job {
            section: "append",
            m,
            b: 1,
            l,
            dtype: Dtype::F16,
            v_dtype: Dtype::F16,
            tier,
            threads: 1,
            layout: Layout::Bgld,
            q_len: 1,
            variant: Variant::None,
            hot: false,
        }],
        &Probes {
            at: vec![(1, 1.0, 1.0)],
            reads: Vec::new(),
            widen: Vec::new(),
            units: Vec::new(),
            live: Vec::new(),
            paged: f64::NAN,
        },
        min_secs,
    )[0]
    .seconds;
    let src: Vec<f16> = (0..row)
        .map(|i| f16::from_f32((i % 17) as f32 * 0.01))
        .collect();
    let offsets = [0usize, 1];
    let new = NewKv {
        k: KvData::F16(&src),
        v: KvData::F16(&src),
        offsets: &offsets,
        kv_heads: m.g,
        head_dim_k: m.d,
        head_dim_v: m.d,
    };
    if !json {
        println!();
        println!(
            "## KV append: one token (f16 source) into each of {LAYERS} Llama-3-8B layer caches ([B, G, L, D], L = {l}) vs one decode step over the {LAYERS} layers (f16, 1 thread: {:.3} ms)",
            step * LAYERS as f64 * 1e3
        );
        println!(
            "{:<8} {:>12} {:>14} {:>12} {:>16}",
            "target", "seconds", "tokens/s", "GB/s written", "append / step"
        );
    }
    for dtype in Dtype::ALL {
        // 32 layer caches of room for L + 1 positions; the token goes to
        // position L. Zeroed allocations are mapped lazily, so only the
        // rows written are ever touched.
        let n = (l + 1) * row;
        let mut caches: Vec<(KvBuffer, KvBuffer)> = (0..LAYERS)
            .map(|_| (zeroed(dtype, n, m.d), zeroed(dtype, n, m.d)))
            .collect();
        let mut best = f64::INFINITY;
        let started = Instant::now();
        for rep in 0.. {
            let t = Instant::now();
            for (k, v) in caches.iter_mut() {
                let mut cache = KvCacheMut::Strided {
                    k: KvTensorMut::bgld(k.data_mut(), l + 1, m.g, m.d),
                    v: KvTensorMut::bgld(v.data_mut(), l + 1, m.g, m.d),
                    capacity: l + 1,
                };
                append(&mut cache, &new, &[l]).expect("append");
            }
            let dt = t.elapsed().as_secs_f64();
            if rep > 0 {
                best = best.min(dt);
            }
            if rep >= 100 && started.elapsed().as_secs_f64() >= min_secs {
                break;
            }
        }
        let tokens = 1.0 / best; // every layer's K and V for one token
        let bytes = (LAYERS * 2 * m.g * dtype.row_bytes(m.d)) as f64;
        let ratio = best / (step * LAYERS as f64);
        if json {
            println!(
                "{{\"section\":\"append\",\"model\":\"{}\",\"layers\":{LAYERS},\"l\":{l},\"src_dtype\":\"f16\",\"kv_dtype\":\"{dtype}\",\"seconds\":{best:.6e},\"tokens_per_s\":{tokens:.1},\"bytes_per_s\":{:.4e},\"decode_step_seconds\":{:.6e},\"append_over_step\":{ratio:.5}}}",
                m.name,
                bytes / best,
                step * LAYERS as f64
            );
        } else {
            println!(
                "{:<8} {:>12.3e} {:>14.0} {:>12.2} {:>16.5}",
                dtype.name(),
                best,
                tokens,
                bytes / best / 1e9,
                ratio
            );
        }
    }
}

/// One shape of the units section.
struct UnitShape {
    model: &'static str,
    h: usize,
    g: usize,
    dk: usize,
    dv: usize,
    dtype: Dtype,
    q_len: usize,
    l: usize,
}

/// The "Units" section: compute-bound shapes (multi-query, several query
/// tokens, an MLA-size head) on each multiply-add unit that has kernels
/// for their types, and each precision class, one thread, runs
/// interleaved round by round; each row's time over the f32-FMA `Exact`
/// row of its shape.
fn units_report(tier: Tier, args: &Args, probes: &Probes) {
    use gqa_kernels::Precision;
    let div = if args.quick { 4 } else { 1 };
    // (model, H, G, Dk, Dv, K and V type, q_len, L)
    let shapes = [
        ("Falcon-7B", 71, 1, 64, 64, Dtype::Bf16, 1, 32768),
        ("Falcon-7B", 71, 1, 64, 64, Dtype::F16, 1, 32768),
        ("Llama-3-8B", 32, 8, 128, 128, Dtype::Bf16, 1, 32768),
        ("Llama-3-8B", 32, 8, 128, 128, Dtype::Bf16, 4, 32768),
        ("MLA-size", 128, 1, 576, 512, Dtype::Bf16, 1, 8192),
    ]
    .map(|(model, h, g, dk, dv, dtype, q_len, l)| UnitShape {
        model,
        h,
        g,
        dk,
        dv,
        dtype,
        q_len,
        l,
    });
    let (bw, fma) = probes.get(1);
    let rate = |u: Unit| {
        if u == Unit::F32Fma {
            fma
        } else {
            probes
                .units
                .iter()
                .find(|x| x.0 == 1 && x.1 == u)
                .map_or(f64::NAN, |x| x.2)
        }
    };
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    struct Cfg {
        shape_i: usize,
        shape: Shape,
        plan: Plan,
        best: f64,
    }
    struct Data {
        q: Vec<f32>,
        k: Vec<u16>,
        v: Vec<u16>,
        l: usize,
    }
    let mut data = Vec::new();
    let mut cfgs: Vec<Cfg> = Vec::new();
    for (i, u) in shapes.iter().enumerate() {
        let l = u.l / div;
        let shape = Shape::new(1, u.h, u.g, u.dk, u.dtype)
            .with_head_dims(u.dk, u.dv)
            .with_q_len(u.q_len)
            .with_max_kv_len(l);
        let bits = |x: f32| match u.dtype {
            Dtype::Bf16 => bf16::from_f32(x).to_bits(),
            _ => f16::from_f32(x).to_bits(),
        };
        data.push(Data {
            q: (0..shape.q_elems()).map(|_| next()).collect(),
            k: (0..l * u.g * u.dk).map(|_| bits(next())).collect(),
            v: (0..l * u.g * u.dv).map(|_| bits(next())).collect(),
            l,
        });
        let mut kinds = vec![(Unit::F32Fma, Precision::Exact)];
        if Unit::AmxBf16.runs(tier, u.dtype, u.dtype) {
            match Unit::AmxBf16.unavailable_reason() {
                None => kinds.extend([
                    (Unit::AmxBf16, Precision::Exact),
                    (Unit::AmxBf16, Precision::Fast),
                ]),
                Some(why) if i == 0 => eprintln!("units: amx-bf16 skipped: {why}"),
                Some(_) => {}
            }
        }
        for (unit, precision) in kinds {
            let opts = Options::default()
                .with_tier(tier)
                .with_unit(unit)
                .with_precision(precision);
            let plan = Plan::new(&shape, &opts).unwrap_or_else(|e| panic!("units plan: {e}"));
            cfgs.push(Cfg {
                shape_i: i,
                shape,
                plan,
                best: f64::INFINITY,
            });
        }
    }
    let rounds = if args.quick { 3 } else { 7 };
    eprintln!("units: {} rows, {rounds} interleaved rounds", cfgs.len());
    for _ in 0..rounds {
        for c in cfgs.iter_mut() {
            let d = &data[c.shape_i];
            let u = &shapes[c.shape_i];
            let (k, v): (KvData<'_>, KvData<'_>) = match u.dtype {
                Dtype::Bf16 => (
                    bytemuck::cast_slice::<u16, bf16>(&d.k).into(),
                    bytemuck::cast_slice::<u16, bf16>(&d.v).into(),
                ),
                _ => (
                    bytemuck::cast_slice::<u16, f16>(&d.k).into(),
                    bytemuck::cast_slice::<u16, f16>(&d.v).into(),
                ),
            };
            let kt = KvTensor::bgld(k, d.l, u.g, u.dk);
            let vt = KvTensor::bgld(v, d.l, u.g, u.dv);
            let mut out = vec![0f32; c.shape.out_elems()];
            let t = Instant::now();
            c.plan
                .decode(&d.q, &kt, &vt, &[d.l], &mut out, None)
                .unwrap_or_else(|e| panic!("units run: {e}"));
            c.best = c.best.min(t.elapsed().as_secs_f64());
        }
    }
    println!();
    println!(
        "## Units (1 thread, [B, G, L, D], B 1; time over the f32-fma exact row of the shape)"
    );
    println!(
        "{:<11} {:>4} {:>2} {:>4} {:>4} {:>5} {:>2} {:>6} {:>9} {:>6} {:>10} {:>8} {:>8} {:>6}",
        "model",
        "H",
        "G",
        "Dk",
        "Dv",
        "L",
        "q",
        "kv",
        "unit",
        "prec",
        "seconds",
        "GFLOP/s",
        "roofline",
        "ratio"
    );
    for c in &cfgs {
        let u = &shapes[c.shape_i];
        let d = &data[c.shape_i];
        let base = cfgs
            .iter()
            .find(|x| x.shape_i == c.shape_i && x.plan.unit() == Unit::F32Fma)
            .map_or(f64::NAN, |x| x.best);
        let flops = c.shape.flops(&[d.l]);
        let t_roof = (c.shape.kv_bytes(&[d.l]) as f64 / bw).max(flops / rate(c.plan.unit()));
        let (unit, prec) = (c.plan.unit().name(), c.plan.precision().name());
        let ratio = c.best / base;
        if args.json {
            println!(
                "{{\"section\":\"units\",\"model\":\"{}\",\"h\":{},\"g\":{},\"dk\":{},\"dv\":{},\"l\":{},\"kv_dtype\":\"{}\",\"q_len\":{},\"threads\":1,\"unit\":\"{unit}\",\"precision\":\"{prec}\",\"kernel\":\"{}\",\"seconds\":{:.6e},\"gflops\":{:.3},\"roofline_fraction\":{:.4}}}",
                u.model, u.h, u.g, u.dk, u.dv, d.l, u.dtype, u.q_len, c.plan.kernel_name(), c.best, flops / c.best / 1e9, t_roof / c.best
            );
            println!(
                "{{\"section\":\"unit_ratio\",\"model\":\"{}\",\"h\":{},\"g\":{},\"dk\":{},\"dv\":{},\"kv_dtype\":\"{}\",\"q_len\":{},\"threads\":1,\"unit\":\"{unit}\",\"precision\":\"{prec}\",\"t_over_t_f32_exact\":{ratio:.3}}}",
                u.model, u.h, u.g, u.dk, u.dv, u.dtype, u.q_len
            );
        } else {
            println!(
                "{:<11} {:>4} {:>2} {:>4} {:>4} {:>5} {:>2} {:>6} {:>9} {:>6} {:>10.6} {:>8.1} {:>8.3} {:>6.3}",
                u.model, u.h, u.g, u.dk, u.dv, d.l, u.q_len, u.dtype, unit, prec, c.best, flops / c.best / 1e9, t_roof / c.best, ratio
            );
        }
    }
}
