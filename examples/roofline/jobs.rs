//! The jobs the report measures: the model shapes, variants, KV types and layouts, and the lists of jobs per section.

use super::*;

#[derive(Clone, Copy)]
pub(crate) struct Model {
    pub(crate) name: &'static str,
    pub(crate) h: usize,
    pub(crate) g: usize,
    pub(crate) d: usize,
}

pub(crate) const LLAMA3_8B: Model = Model {
    name: "Llama-3-8B",
    h: 32,
    g: 8,
    d: 128,
};

pub(crate) const QWEN25_7B: Model = Model {
    name: "Qwen2.5-7B",
    h: 28,
    g: 4,
    d: 128,
};

pub(crate) const PHI3_MINI: Model = Model {
    name: "Phi-3-mini",
    h: 32,
    g: 32,
    d: 96,
};

pub(crate) const FALCON_7B: Model = Model {
    name: "Falcon-7B",
    h: 71,
    g: 1,
    d: 64,
};

pub(crate) const GEMMA2_9B: Model = Model {
    name: "Gemma-2-9B",
    h: 16,
    g: 8,
    d: 256,
};

/// The (K, V) types of the KV-types section: f16 (the baseline), every
/// type, an int8 or fp8 K with an f16 V, and llama.cpp's popular q8_0 K
/// with a q4_0 V.
pub(crate) const KV_TYPES: [(Dtype, Dtype); 15] = [
    (Dtype::F16, Dtype::F16),
    (Dtype::F32, Dtype::F32),
    (Dtype::Bf16, Dtype::Bf16),
    (Dtype::Int8, Dtype::Int8),
    (Dtype::Q8_0, Dtype::Q8_0),
    (Dtype::Fp8E4M3, Dtype::Fp8E4M3),
    (Dtype::Fp8E5M2, Dtype::Fp8E5M2),
    (Dtype::Q4_0, Dtype::Q4_0),
    (Dtype::Q4_1, Dtype::Q4_1),
    (Dtype::Q5_0, Dtype::Q5_0),
    (Dtype::Q5_1, Dtype::Q5_1),
    (Dtype::Iq4Nl, Dtype::Iq4Nl),
    (Dtype::Int8, Dtype::F16),
    (Dtype::Fp8E4M3, Dtype::F16),
    (Dtype::Q8_0, Dtype::Q4_0),
];

/// Interleaved rounds of the G sweep.
pub(crate) const SWEEP_ROUNDS: usize = 3;

/// One measurement to make.
#[derive(Clone, Copy)]
pub(crate) struct Job {
    pub(crate) section: &'static str,
    pub(crate) m: Model,
    pub(crate) b: usize,
    pub(crate) l: usize,
    /// K element type.
    pub(crate) dtype: Dtype,
    /// V element type.
    pub(crate) v_dtype: Dtype,
    pub(crate) tier: Tier,
    pub(crate) threads: usize,
    pub(crate) layout: Layout,
    pub(crate) q_len: usize,
    pub(crate) variant: Variant,
    /// Run on one layer's cache over and over (cache-resident when it
    /// fits) instead of rotating over a model's layers.
    pub(crate) hot: bool,
}

/// Which attention variant a job runs.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Variant {
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
    pub(crate) fn key(self) -> String {
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
pub(crate) enum Layout {
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
    pub(crate) fn key(self) -> String {
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

/// A job of plain decode (no variant) with V of K's type, measured cold.
#[allow(clippy::too_many_arguments)]
pub(crate) fn job(
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
pub(crate) fn jobs(args: &Args, tier: Tier) -> Vec<Job> {
    let mut jobs = model_jobs(args, tier);
    jobs.extend(layout_jobs(args, tier));
    jobs.extend(variant_jobs(args, tier));
    jobs.extend(sweep_jobs(tier));
    jobs
}

/// The model table (every model, length and batch; every KV type of
/// Llama-3-8B), the serving batch and the tier comparison.
pub(crate) fn model_jobs(args: &Args, tier: Tier) -> Vec<Job> {
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
                    // fp8_ds_mla is a latent (MLA) row: the workloads' MLA rows.
                    for &dt in dtypes.iter().filter(|d| !d.is_row_format()) {
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
pub(crate) fn layout_jobs(args: &Args, tier: Tier) -> Vec<Job> {
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
pub(crate) fn variant_jobs(args: &Args, tier: Tier) -> Vec<Job> {
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
pub(crate) fn sweep_jobs(tier: Tier) -> Vec<Job> {
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

/// Whether `a` and `b` are the same measurement but for the KV types.
pub(crate) fn same_but_dtype(a: &Job, b: &Job) -> bool {
    a.section == b.section
        && a.m.name == b.m.name
        && (a.b, a.l, a.threads, a.q_len) == (b.b, b.l, b.threads, b.q_len)
        && a.tier == b.tier
        && a.layout == b.layout
        && a.variant == b.variant
}

/// Whether `a` and `b` are the same measurement but for the layout.
pub(crate) fn same_but_layout(a: &Job, b: &Job) -> bool {
    a.section == b.section
        && a.m.name == b.m.name
        && (a.b, a.l, a.threads, a.q_len, a.hot) == (b.b, b.l, b.threads, b.q_len, b.hot)
        && (a.dtype, a.v_dtype) == (b.dtype, b.v_dtype)
        && a.tier == b.tier
        && a.variant == b.variant
}

/// Whether `a` and `b` are the same measurement but for the variant.
pub(crate) fn same_but_variant(a: &Job, b: &Job) -> bool {
    a.section == b.section
        && a.m.name == b.m.name
        && (a.b, a.l, a.threads, a.q_len) == (b.b, b.l, b.threads, b.q_len)
        && (a.dtype, a.v_dtype) == (b.dtype, b.v_dtype)
        && a.tier == b.tier
        && a.layout == b.layout
}
