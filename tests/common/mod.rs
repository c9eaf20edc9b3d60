//! Shared test helpers: deterministic case generation and the comparison of
//! a tier's output with the f64 reference under the documented tolerance.
#![allow(dead_code)]

use gqa_kernels::quant::{self, BlockQ8_0, Fp8, QK8_0};
use gqa_kernels::reference::{self, tolerance, Tolerance};
use gqa_kernels::{
    bf16, f16, Batch, Bias, Dtype, KvBuffer, KvCache, KvData, KvPages, KvTensor, Options, PagedKv,
    Plan, Precision, RingKv, Shape, Tier, Unit,
};

/// SplitMix64: a tiny deterministic generator for test data.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Owned cache storage of one dtype: the crate's [`KvBuffer`], with the
/// row length of its int8 scales (for views at an offset).
#[derive(Clone, Debug)]
pub struct Store {
    pub buf: KvBuffer,
    pub d: usize,
}

/// Values a quantized buffer's offsets and strides must be multiples of.
pub fn unit(dtype: Dtype, d: usize) -> usize {
    match dtype {
        Dtype::Int8 => d,
        Dtype::Q8_0 => QK8_0,
        _ => 1,
    }
}

impl Store {
    /// An empty f32 store.
    pub fn empty() -> Store {
        Store {
            buf: KvBuffer::from(&[][..] as &[f32]),
            d: 1,
        }
    }

    /// `x` stored as `dtype`. Quantized types quantize each row (int8, `d`
    /// values), block (q8_0) or value (fp8, with `head_scales[head[i]]`)
    /// with the crate's encoders; non-finite entries (the `fill` of slots
    /// no step may read) become NaN scales (int8, q8_0) or NaN bytes (fp8),
    /// so reading one shows in the output.
    pub fn quantize(dtype: Dtype, x: &[f32], d: usize, head: &[u32], head_scales: &[f32]) -> Store {
        let buf = match dtype {
            Dtype::F32 => KvBuffer::from(x),
            Dtype::F16 => {
                KvBuffer::from(&x.iter().map(|v| f16::from_f32(*v)).collect::<Vec<_>>()[..])
            }
            Dtype::Bf16 => {
                KvBuffer::from(&x.iter().map(|v| bf16::from_f32(*v)).collect::<Vec<_>>()[..])
            }
            Dtype::Int8 => {
                assert_eq!(x.len() % d, 0);
                let mut values = vec![0i8; x.len()];
                let scales: Vec<f32> = x
                    .chunks_exact(d)
                    .zip(values.chunks_exact_mut(d))
                    .map(|(row, q)| {
                        quant::quantize_int8_row(row, q).unwrap_or_else(|_| {
                            q.fill(100);
                            f32::NAN
                        })
                    })
                    .collect();
                KvBuffer::int8(&values, &scales)
            }
            Dtype::Q8_0 => {
                assert_eq!(x.len() % QK8_0, 0);
                let mut blocks = vec![BlockQ8_0::default(); x.len() / QK8_0];
                for (b, xs) in blocks.iter_mut().zip(x.chunks_exact(QK8_0)) {
                    if quant::quantize_q8_0(xs, std::slice::from_mut(b)).is_err() {
                        b.d = f16::NAN;
                        b.qs = [100; QK8_0];
                    }
                }
                KvBuffer::from(&blocks[..])
            }
            Dtype::Fp8E4M3 | Dtype::Fp8E5M2 => {
                let format = if dtype == Dtype::Fp8E4M3 {
                    Fp8::E4M3
                } else {
                    Fp8::E5M2
                };
                let values: Vec<u8> = x
                    .iter()
                    .zip(head)
                    .map(|(&v, &h)| {
                        if v.is_finite() {
                            let sc = head_scales[if head_scales.len() == 1 {
                                0
                            } else {
                                h as usize
                            }];
                            format.encode(v / sc)
                        } else {
                            0x7F // NaN in both formats
                        }
                    })
                    .collect();
                KvBuffer::fp8(format, &values, head_scales)
            }
        };
        Store { buf, d }
    }

    /// The elements starting at `offset` (to test misaligned base
    /// pointers; a multiple of [`unit`] for quantized types).
    pub fn data(&self, offset: usize) -> KvData<'_> {
        match self.buf.data() {
            KvData::F32(v) => KvData::F32(&v[offset..]),
            KvData::F16(v) => KvData::F16(&v[offset..]),
            KvData::Bf16(v) => KvData::Bf16(&v[offset..]),
            KvData::Int8 { values, scales } => {
                KvData::int8(&values[offset..], &scales[offset / self.d..])
            }
            KvData::Q8_0(b) => KvData::Q8_0(&b[offset / QK8_0..]),
            KvData::Fp8E4M3 { values, scales } => KvData::Fp8E4M3 {
                values: &values[offset..],
                scales,
            },
            KvData::Fp8E5M2 { values, scales } => KvData::Fp8E5M2 {
                values: &values[offset..],
                scales,
            },
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }
}

/// How a case lays its cache out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// `[B, L, G, D]`.
    Blgd,
    /// `[B, G, L, D]`.
    Bgld,
    /// `[B, L, G, D]` with padding after every row, head and sequence.
    Padded,
    /// A paged cache: pages of `page` positions, `[page, G, D]` inside a
    /// page (or `[G, page, D]` when `head_major`), pages of the pool handed
    /// out in shuffled order with spare pages between them.
    Paged { page: usize, head_major: bool },
    /// A ring buffer of `max_len + extra` slots per sequence, each
    /// sequence starting at a random absolute position (so most wrap).
    Ring { extra: usize },
}

impl Layout {
    pub fn name(&self) -> &'static str {
        match self {
            Layout::Blgd => "blgd",
            Layout::Bgld => "bgld",
            Layout::Padded => "padded",
            Layout::Paged { .. } => "paged",
            Layout::Ring { .. } => "ring",
        }
    }
}

/// A complete decode problem with owned buffers.
#[derive(Clone, Debug)]
pub struct Case {
    pub shape: Shape,
    pub scale: Option<f32>,
    pub seq_lens: Vec<usize>,
    /// Ragged query offsets (`None`: `q_len` tokens per sequence).
    pub q_offsets: Option<Vec<usize>>,
    pub q: Vec<f32>,
    pub k: Store,
    pub v: Store,
    pub layout: Layout,
    /// Strides of K and V: (seq or page, token or slot, head).
    pub k_strides: (usize, usize, usize),
    pub v_strides: (usize, usize, usize),
    /// Element offset of the buffers' base (misalignment), in units of
    /// [`unit`] of each buffer's type.
    pub offset: usize,
    /// The offsets in values, of K and V.
    pub k_off: usize,
    pub v_off: usize,
    pub block_table: Vec<u32>,
    pub blocks_per_seq: usize,
    pub capacity: usize,
    pub first_pos: Vec<usize>,
    /// Sliding window.
    pub window: Option<usize>,
    /// Attention-sink logit per query head.
    pub sinks: Option<Vec<f32>>,
    /// Logit softcap.
    pub softcap: Option<f32>,
    /// ALiBi slope per query head.
    pub alibi: Option<Vec<f32>>,
    /// Additive bias values and their (seq, token, head) strides.
    pub bias: Option<(Vec<f32>, (usize, usize, usize))>,
}

/// Everything needed to build a case.
#[derive(Clone, Debug)]
pub struct Spec {
    pub shape: Shape,
    pub seq_lens: Vec<usize>,
    /// Query tokens per sequence when ragged (each `<= shape.q_len`).
    pub q_tokens: Option<Vec<usize>>,
    pub layout: Layout,
    pub scale: Option<f32>,
    pub offset: usize,
    pub seed: u64,
    /// Range of the uniform values of q, k and v.
    pub qk_range: f32,
    /// Value stored in cache slots no sequence may read (beyond `L_b`).
    pub fill: f32,
    /// Sliding window.
    pub window: Option<usize>,
    /// Attention-sink logit per query head.
    pub sinks: Option<Vec<f32>>,
    /// Logit softcap.
    pub softcap: Option<f32>,
    /// ALiBi slope per query head.
    pub alibi: Option<Vec<f32>>,
    /// Additive bias: `Some(per_head)`, values uniform in `±bias_range`.
    pub bias: Option<bool>,
    pub bias_range: f32,
    /// A mask written into the bias (a per-head bias is made if there is
    /// none): `mask.value` at every position the pattern covers.
    pub mask: Option<Mask>,
}

/// Where a mask written as a bias puts its value, for the query token at
/// position `p` of a sequence of `len` positions (`j` the KV position,
/// `h` the query head, `b` the sequence).
#[derive(Clone, Debug, PartialEq)]
pub enum MaskKind {
    /// `j < n`.
    Prefix(usize),
    /// `j >= len - n` (the query's own position included).
    Suffix(usize),
    /// `a <= j < e`.
    Range(usize, usize),
    /// Every other position (`j % 2 == 0`).
    Alternating,
    /// Every position.
    All,
    /// Left padding: `j < pad[b]`.
    LeftPad(Vec<usize>),
    /// A sliding window of `w` written as a mask: `j + w <= p`.
    Window(usize),
    /// Runs of masked positions: position `j` of head `h` is masked when a
    /// hash of `(seed, b, h, j / run)` is below `density` (of 256).
    Runs { seed: u64, run: usize, density: u8 },
}

impl MaskKind {
    pub fn covers(&self, b: usize, h: usize, p: usize, len: usize, j: usize) -> bool {
        match self {
            MaskKind::Prefix(n) => j < *n,
            MaskKind::Suffix(n) => j + n >= len,
            MaskKind::Range(a, e) => (*a..*e).contains(&j),
            MaskKind::Alternating => j.is_multiple_of(2),
            MaskKind::All => true,
            MaskKind::LeftPad(pad) => j < pad[b],
            MaskKind::Window(w) => j + w <= p,
            MaskKind::Runs { seed, run, density } => {
                let mut r = Rng(seed ^ ((b as u64) << 48) ^ ((h as u64) << 32) ^ (j / run) as u64);
                (r.next_u64() & 255) < u64::from(*density)
            }
        }
    }
}

/// A mask written as an additive bias.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub kind: MaskKind,
    /// What a masked position's bias holds: `-inf`, `-f32::MAX` (Hugging
    /// Face's `finfo(float32).min`), a large finite negative, …
    pub value: f32,
}

impl Spec {
    pub fn new(shape: Shape, seq_lens: Vec<usize>) -> Spec {
        Spec {
            shape,
            seq_lens,
            q_tokens: None,
            layout: Layout::Blgd,
            scale: None,
            offset: 0,
            seed: 1,
            qk_range: 1.0,
            fill: f32::NAN,
            window: None,
            sinks: None,
            softcap: None,
            alibi: None,
            bias: None,
            bias_range: 2.0,
            mask: None,
        }
    }

    /// The case: q, the cache in its layout (quantized), and the
    /// variants' inputs. Long on purpose: the random stream is drawn in
    /// this order, and every seeded case (and every failure a seed
    /// reproduces) depends on it staying one sequence.
    pub fn build(&self) -> Case {
        let s = self.shape;
        let mut rng = Rng(self.seed);
        let max_len = self.seq_lens.iter().copied().max().unwrap_or(0).max(1);
        let (g, dk, dv) = (s.kv_heads, s.head_dim_k, s.head_dim_v);
        let mut c = Case {
            shape: s,
            scale: self.scale,
            seq_lens: self.seq_lens.clone(),
            q_offsets: None,
            q: Vec::new(),
            k: Store::empty(),
            v: Store::empty(),
            layout: self.layout,
            k_strides: (0, 0, 0),
            v_strides: (0, 0, 0),
            offset: self.offset,
            k_off: self.offset * unit(s.k_dtype, dk),
            v_off: self.offset * unit(s.v_dtype, dv),
            block_table: Vec::new(),
            blocks_per_seq: 0,
            capacity: 0,
            first_pos: Vec::new(),
            window: self.window,
            sinks: self.sinks.clone(),
            softcap: self.softcap,
            alibi: self.alibi.clone(),
            bias: None,
        };
        let strided = |max_len: usize, d: usize, u: usize| match self.layout {
            Layout::Blgd | Layout::Ring { .. } => (max_len * g * d, g * d, d),
            Layout::Bgld => (g * max_len * d, d, max_len * d),
            Layout::Padded => {
                // Quantized types need strides in whole rows or blocks.
                let (p1, p2, p3) = if u == 1 { (3, 5, 7) } else { (u, u, u) };
                let hs = d + p1;
                let ts = g * hs + p2;
                (max_len * ts + p3, ts, hs)
            }
            Layout::Paged { page, head_major } => {
                if head_major {
                    (g * page * d, d, page * d)
                } else {
                    (page * g * d, g * d, d)
                }
            }
        };
        // Elements of each buffer (without the offset).
        let n_units = match self.layout {
            Layout::Paged { page, .. } => {
                // Pages 0..n, handed out shuffled, with 3 spare pages.
                let bps = max_len.div_ceil(page);
                let pages = s.batch * bps + 3;
                let mut ids: Vec<u32> = (0..pages as u32).collect();
                for i in (1..ids.len()).rev() {
                    ids.swap(i, rng.below(i + 1));
                }
                c.block_table = ids[..s.batch * bps].to_vec();
                c.blocks_per_seq = bps;
                pages
            }
            Layout::Ring { extra } => {
                c.capacity = max_len + extra;
                c.first_pos = (0..s.batch).map(|_| rng.below(1000)).collect();
                s.batch
            }
            _ => s.batch,
        };
        let cap_or_len = if c.capacity > 0 { c.capacity } else { max_len };
        let (uk, uv) = (unit(s.k_dtype, dk), unit(s.v_dtype, dv));
        c.k_strides = strided(cap_or_len, dk, uk);
        c.v_strides = strided(cap_or_len, dv, uv);
        let fill_cache = |c: &Case, rng: &mut Rng, v: bool, range: f32| {
            let (st, d, off, u) = if v {
                (c.v_strides, dv, c.v_off, uv)
            } else {
                (c.k_strides, dk, c.k_off, uk)
            };
            let n = (off + n_units.max(1) * st.0 + 8).div_ceil(u) * u;
            // Unread slots hold `fill` (NaN by default): a kernel that reads
            // past a row, a length, a page or a sequence produces NaN.
            let mut x = vec![self.fill; n];
            let mut head = vec![u32::MAX; n];
            for b in 0..s.batch {
                for j in 0..self.seq_lens[b] {
                    for h in 0..g {
                        let base = off + c.row_index(v, b, h, j);
                        for e in 0..d {
                            x[base + e] = rng.uniform(-range, range);
                            head[base + e] = h as u32;
                        }
                    }
                }
            }
            let dtype = if v { s.v_dtype } else { s.k_dtype };
            // fp8: a scale per KV head that maps the range to about a
            // quarter of the format's maximum (different per head), or
            // one for the tensor.
            let fmax = match dtype {
                Dtype::Fp8E5M2 => 57344.0,
                _ => 448.0,
            };
            let scales: Vec<f32> = if rng.below(3) == 0 {
                vec![range / (fmax / 4.0)]
            } else {
                (0..g)
                    .map(|h| range * (1.0 + 0.5 * h as f32) / (fmax / 4.0))
                    .collect()
            };
            Store::quantize(dtype, &x, d, &head, &scales)
        };
        c.k = fill_cache(&c, &mut rng, false, self.qk_range);
        c.v = fill_cache(&c, &mut rng, true, 1.0);
        let tokens = match &self.q_tokens {
            Some(t) => {
                let mut o = vec![0];
                for x in t {
                    o.push(o.last().unwrap() + x);
                }
                let total = *o.last().unwrap();
                c.q_offsets = Some(o);
                total
            }
            None => s.batch * s.q_len,
        };
        c.q = (0..tokens * s.heads * dk)
            .map(|_| rng.uniform(-self.qk_range, self.qk_range))
            .collect();
        let bias = match (&self.mask, self.bias) {
            (Some(_), None) => Some(true),
            (_, b) => b,
        };
        if let Some(per_head) = bias {
            let hs = if per_head { max_len + 1 } else { 0 };
            let ts = if per_head {
                s.heads * hs + 2
            } else {
                max_len + 3
            };
            let ss = s.q_len.max(1) * ts + 5;
            let r = self.bias_range;
            let mut data: Vec<f32> = (0..s.batch * ss + 7).map(|_| rng.uniform(-r, r)).collect();
            if let Some(m) = &self.mask {
                let heads = if per_head { s.heads } else { 1 };
                for b in 0..s.batch {
                    let len = self.seq_lens[b];
                    let q_len = match &self.q_tokens {
                        Some(t) => t[b],
                        None => s.q_len,
                    };
                    for t in 0..q_len.min(len) {
                        let p = len - q_len + t;
                        for h in 0..heads {
                            for j in 0..len {
                                if m.kind.covers(b, h, p, len, j) {
                                    data[b * ss + t * ts + h * hs + j] = m.value;
                                }
                            }
                        }
                    }
                }
            }
            c.bias = Some((data, (ss, ts, hs)));
        }
        c
    }
}

impl Case {
    /// Element index (before `offset`) of the K or V row of position `j`
    /// of sequence `b`, head `g`.
    pub fn row_index(&self, v: bool, b: usize, g: usize, j: usize) -> usize {
        let st = if v { self.v_strides } else { self.k_strides };
        match self.layout {
            Layout::Paged { page, .. } => {
                let p = self.block_table[b * self.blocks_per_seq + j / page] as usize;
                p * st.0 + (j % page) * st.1 + g * st.2
            }
            Layout::Ring { .. } => {
                let slot = (self.first_pos[b] + j) % self.capacity;
                b * st.0 + slot * st.1 + g * st.2
            }
            _ => b * st.0 + j * st.1 + g * st.2,
        }
    }

    pub fn k_view(&self) -> KvTensor<'_> {
        let (a, b, c) = self.k_strides;
        KvTensor::new(self.k.data(self.k_off), a, b, c)
    }
    pub fn v_view(&self) -> KvTensor<'_> {
        let (a, b, c) = self.v_strides;
        KvTensor::new(self.v.data(self.v_off), a, b, c)
    }

    pub fn cache(&self) -> KvCache<'_> {
        match self.layout {
            Layout::Paged { page, .. } => {
                let (ka, kb, kc) = self.k_strides;
                let (va, vb, vc) = self.v_strides;
                KvCache::Paged(PagedKv {
                    k: KvPages::new(self.k.data(self.k_off), ka, kb, kc),
                    v: KvPages::new(self.v.data(self.v_off), va, vb, vc),
                    page_size: page,
                    block_table: &self.block_table,
                    blocks_per_seq: self.blocks_per_seq,
                })
            }
            Layout::Ring { .. } => KvCache::Ring(RingKv {
                k: self.k_view(),
                v: self.v_view(),
                capacity: self.capacity,
                first_pos: &self.first_pos,
            }),
            _ => KvCache::strided(self.k_view(), self.v_view()),
        }
    }

    pub fn batch(&self) -> Batch<'_> {
        let mut b = Batch::new(&self.q, self.cache(), &self.seq_lens);
        if let Some((data, (ss, ts, hs))) = &self.bias {
            b = b.with_bias(Bias {
                data,
                seq_stride: *ss,
                token_stride: *ts,
                head_stride: *hs,
            });
        }
        match &self.q_offsets {
            Some(o) => b.with_q_offsets(o),
            None => b,
        }
    }

    /// Query tokens of the batch.
    pub fn tokens(&self) -> usize {
        self.q.len() / (self.shape.heads * self.shape.head_dim_k)
    }

    pub fn reference(&self) -> reference::Reference {
        let variant = reference::Variant {
            scale: self.scale,
            window: self.window,
            sinks: self.sinks.as_deref(),
            softcap: self.softcap,
            alibi: self.alibi.as_deref(),
        };
        reference::decode_variant(&self.shape, &variant, &self.batch())
            .expect("reference accepts the case")
    }

    /// Runs the case on `tier` with `threads` through the public API
    /// (`Plan::run` in a caller workspace).
    pub fn run(
        &self,
        tier: Tier,
        threads: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, &'static str), String> {
        self.run_on(tier, Unit::F32Fma, Precision::Exact, threads)
    }

    /// [`Case::run`] on `unit` with precision class `precision`.
    pub fn run_on(
        &self,
        tier: Tier,
        unit: Unit,
        precision: Precision,
        threads: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, &'static str), String> {
        let opts = Options {
            scale: self.scale,
            tier: Some(tier),
            threads,
            window: self.window,
            softcap: self.softcap,
            unit: Some(unit),
            precision,
        };
        let mut plan = Plan::new(&self.shape, &opts).map_err(|e| format!("plan: {e}"))?;
        if let Some(sk) = &self.sinks {
            plan = plan.with_sinks(sk).map_err(|e| format!("sinks: {e}"))?;
        }
        if let Some(al) = &self.alibi {
            plan = plan.with_alibi(al).map_err(|e| format!("alibi: {e}"))?;
        }
        let name = plan.kernel_name();
        if !name.ends_with(&format!("__{}", tier.name())) || plan.tier() != tier {
            return Err(format!("asked for {tier}, plan picked {name}"));
        }
        let rows = self.tokens() * self.shape.heads;
        let mut out = vec![f32::NAN; rows * self.shape.head_dim_v];
        let mut lse = vec![f32::NAN; rows];
        let mut ws = plan.alloc_workspace();
        // Garbage in the workspace must not matter.
        ws.fill(0xA5);
        plan.run(&self.batch(), &mut out, Some(&mut lse), &mut ws)
            .map_err(|e| format!("{name}: run: {e}"))?;
        Ok((out, lse, name))
    }

    /// Runs the case on `tier` and compares with the reference; the error
    /// names the kernel instance, the element and the case.
    pub fn check(&self, tier: Tier) -> Result<(), String> {
        self.check_against(tier, &self.reference())
    }

    pub fn check_against(&self, tier: Tier, want: &reference::Reference) -> Result<(), String> {
        let (out, lse, name) = self.run(tier, 1)?;
        self.compare(name, &out, &lse, want)
    }

    /// Runs the case on a dot-product or tile unit and compares with the
    /// reference under that precision class's bound.
    pub fn check_unit(
        &self,
        tier: Tier,
        unit: Unit,
        precision: Precision,
        want: &reference::Reference,
    ) -> Result<(), String> {
        let (out, lse, name) = self.run_on(tier, unit, precision, 1)?;
        self.compare_within(name, &out, &lse, want, self.unit_tolerance(precision))
    }

    /// The bound of a precision class on this case: the documented
    /// tolerance for `Exact`; for `Fast` (q and the weights P rounded to
    /// bf16, 2^-8 relative each) that plus what those roundings can do. A
    /// score moves by at most `delta = 2^-8 · scale · max Σ_d |q_d k_d|`
    /// (bounded here by `max_row Σ_d |q_d| · max |k|`), so every normalised
    /// weight by a factor within `e^(±2 delta)` and the output by `(e^(2
    /// delta) − 1) · max |v|`; rounded weights against their unrounded sum
    /// move it by `2^-8 · max |v|` more; `lse` moves by `delta`.
    pub fn unit_tolerance(&self, precision: Precision) -> (Tolerance, Tolerance) {
        let (mut o, mut l) = tolerance(self.shape.k_dtype, self.shape.v_dtype);
        if precision == Precision::Fast {
            let s = &self.shape;
            let scale = f64::from(self.scale.unwrap_or(1.0 / (s.head_dim_k as f32).sqrt()));
            let q1 = self
                .q
                .chunks(s.head_dim_k.max(1))
                .map(|r| r.iter().map(|x| f64::from(x.abs())).sum::<f64>())
                .fold(0.0, f64::max);
            let delta = 2f64.powi(-8) * scale * q1 * self.k_max();
            o.atol += (2.0 * delta).exp_m1() + 2f64.powi(-8);
            l.atol += delta;
        }
        (o, l)
    }

    /// Largest `|K|` element any sequence may read (0 for an empty cache).
    pub fn k_max(&self) -> f64 {
        let data = self.k.data(self.k_off);
        let mut m = 0.0f64;
        for b in 0..self.shape.batch {
            for j in 0..self.seq_lens[b] {
                for g in 0..self.shape.kv_heads {
                    let base = self.row_index(false, b, g, j);
                    for d in 0..self.shape.head_dim_k {
                        m = m.max(data.value_f64(base + d, g, self.shape.head_dim_k).abs());
                    }
                }
            }
        }
        m
    }

    /// Compares a result with the reference under the documented tolerance.
    pub fn compare(
        &self,
        name: &str,
        out: &[f32],
        lse: &[f32],
        want: &reference::Reference,
    ) -> Result<(), String> {
        let tol = tolerance(self.shape.k_dtype, self.shape.v_dtype);
        self.compare_within(name, out, lse, want, tol)
    }

    /// Compares a result with the reference under `(output, lse)` bounds.
    pub fn compare_within(
        &self,
        name: &str,
        out: &[f32],
        lse: &[f32],
        want: &reference::Reference,
        (tol_o, tol_l): (Tolerance, Tolerance),
    ) -> Result<(), String> {
        let vmax = self.v_max();
        let s = &self.shape;
        let ctx = || {
            format!(
                "shape {s:?}, lens {:?}, layout {:?}, q_offsets {:?}, window {:?}, sinks {}, softcap {:?}, alibi {}, bias {}",
                self.seq_lens,
                self.layout,
                self.q_offsets,
                self.window,
                self.sinks.is_some(),
                self.softcap,
                self.alibi.is_some(),
                self.bias.is_some()
            )
        };
        if out.len() != want.out.len() || lse.len() != want.lse.len() {
            return Err(format!("{name}: output lengths differ ({})", ctx()));
        }
        for (i, (g, w)) in out.iter().zip(&want.out).enumerate() {
            if !tol_o.accepts(f64::from(*g), *w, vmax) {
                let row = i / s.head_dim_v;
                return Err(format!(
                    "{name}: out[token={}, h={}, d={}] = {g}, reference {w} ({})",
                    row / s.heads,
                    row % s.heads,
                    i % s.head_dim_v,
                    ctx()
                ));
            }
        }
        for (i, (g, w)) in lse.iter().zip(&want.lse).enumerate() {
            if !tol_l.accepts(f64::from(*g), *w, 1.0) {
                return Err(format!(
                    "{name}: lse[token={}, h={}] = {g}, reference {w} ({})",
                    i / s.heads,
                    i % s.heads,
                    ctx()
                ));
            }
        }
        Ok(())
    }

    /// Largest `|V|` element any sequence may read (1 for an empty cache).
    pub fn v_max(&self) -> f64 {
        let data = self.v.data(self.v_off);
        let mut m = 0.0f64;
        for b in 0..self.shape.batch {
            for j in 0..self.seq_lens[b] {
                for g in 0..self.shape.kv_heads {
                    let base = self.row_index(true, b, g, j);
                    for d in 0..self.shape.head_dim_v {
                        m = m.max(data.value_f64(base + d, g, self.shape.head_dim_v).abs());
                    }
                }
            }
        }
        if m == 0.0 {
            1.0
        } else {
            m
        }
    }
}

/// The tiers every test covers: all this CPU supports. Fails (panics) when
/// `GQA_KERNELS_REQUIRE` names a tier that is not among them.
pub fn tiers() -> Vec<Tier> {
    let have = Tier::available();
    if let Ok(req) = std::env::var("GQA_KERNELS_REQUIRE") {
        for name in req.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let t: Tier = name
                .parse()
                .unwrap_or_else(|e| panic!("GQA_KERNELS_REQUIRE: {e}"));
            assert!(
                have.contains(&t),
                "GQA_KERNELS_REQUIRE names {t}, which this CPU lacks (have {have:?})"
            );
        }
    }
    have
}

/// The kernels on other units than f32 FMA that this CPU and process can
/// run, with each precision class: the tile kernels where AMX is usable.
/// Prints, once per test binary, which were skipped and why.
pub fn units() -> Vec<(Tier, Unit, Precision)> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let mut v = Vec::new();
    for (tier, unit) in [(Tier::Avx512, Unit::AmxBf16)] {
        match unit.unavailable_reason() {
            None if tier.is_available() => {
                v.extend([Precision::Exact, Precision::Fast].map(|p| (tier, unit, p)));
            }
            why => SAID.call_once(|| {
                eprintln!(
                    "note: {} kernels skipped: {}",
                    unit.name(),
                    why.unwrap_or("their tier is not available")
                )
            }),
        }
    }
    v
}

/// Checks a case on every tier, and on every other unit that has kernels
/// for its types; panics with every failure.
pub fn check_all(case: &Case) {
    let want = case.reference();
    let (k, v) = (case.shape.k_dtype, case.shape.v_dtype);
    let errs: Vec<String> = tiers()
        .into_iter()
        .filter_map(|t| case.check_against(t, &want).err())
        .chain(
            units()
                .into_iter()
                .filter(|&(t, u, _)| u.runs(t, k, v))
                .filter_map(|(t, u, p)| case.check_unit(t, u, p, &want).err()),
        )
        .collect();
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// Checks a case on every unit other than f32 FMA that has kernels for
/// its types ([`units`]); panics with every failure.
pub fn check_units(case: &Case) {
    let (k, v) = (case.shape.k_dtype, case.shape.v_dtype);
    let run: Vec<_> = units()
        .into_iter()
        .filter(|&(t, u, _)| u.runs(t, k, v))
        .collect();
    if run.is_empty() {
        return;
    }
    let want = case.reference();
    let errs: Vec<String> = run
        .into_iter()
        .filter_map(|(t, u, p)| case.check_unit(t, u, p, &want).err())
        .collect();
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// Checks that every tier gives bitwise the same result for each thread
/// count as for one thread, and that the one-thread result matches the
/// reference.
pub fn check_thread_invariance(case: &Case, threads: &[usize]) {
    let want = case.reference();
    for t in tiers() {
        let (base, base_lse, name) = case.run(t, 1).unwrap();
        case.compare(name, &base, &base_lse, &want)
            .unwrap_or_else(|e| panic!("{e}"));
        for &n in threads {
            let (o, l, _) = case.run(t, n).unwrap();
            let same = o.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits())
                && l.iter()
                    .zip(&base_lse)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{name}: {n} threads differ from 1 (layout {:?}, shape {:?}, lens {:?})",
                case.layout, case.shape, case.seq_lens
            );
        }
    }
    let (k, v) = (case.shape.k_dtype, case.shape.v_dtype);
    for (t, u, p) in units().into_iter().filter(|&(t, u, _)| u.runs(t, k, v)) {
        let (base, base_lse, name) = case.run_on(t, u, p, 1).unwrap();
        for &n in threads {
            let (o, l, _) = case.run_on(t, u, p, n).unwrap();
            let same = o
                .iter()
                .chain(&l)
                .zip(base.iter().chain(&base_lse))
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{name}: {n} threads differ from 1 (shape {:?})",
                case.shape
            );
        }
    }
}
