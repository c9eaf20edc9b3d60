//! A decode problem: its layout, its owned buffers (`Case`), and the spec it is built from (`Spec`, `Mask`).

use super::*;

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
    /// Draft-tree mask: a word per query token (`Batch::tree_mask`).
    pub tree: Option<Vec<u64>>,
    /// A latent cache: `v` is `k` (the same store, strides and offset),
    /// and the views hand the kernels K's buffer as V.
    pub latent: bool,
    /// Sparse position lists: (positions, offsets, per KV head).
    pub positions: Option<(Vec<u32>, Vec<usize>, bool)>,
    /// Shared-prefix groups: (lens, offsets, members).
    pub prefix: Option<(Vec<usize>, Vec<usize>, Vec<usize>)>,
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
    /// A random draft forest over each sequence's tokens as a tree mask:
    /// each token's parent is an earlier token or none (a new root).
    pub tree: bool,
    /// A latent cache (`KvCache::latent`): V is the leading `Dv` values of
    /// each K row (needs the same K and V types and `Dv <= Dk`).
    pub latent: bool,
    /// Sparse position lists (`Batch::positions`).
    pub sparse: Option<Sparse>,
    /// Shared-prefix groups (`Batch::prefix`): (prefix length, members),
    /// the first member holding the prefix. In a paged layout the other
    /// members' block tables point at the first member's pages for the
    /// prefix's whole pages (as a serving runtime's would).
    pub prefix: Option<Vec<(usize, Vec<usize>)>>,
}

/// How a case draws its sparse position lists: each run of `run`
/// positions (`run` 1: single positions; 16: Quest-like pages) is kept
/// with probability `keep / 256`, per sequence or per (sequence, KV head).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sparse {
    pub per_kv_head: bool,
    pub keep: u8,
    pub run: usize,
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
            tree: false,
            latent: false,
            sparse: None,
            prefix: None,
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
            tree: None,
            latent: self.latent,
            positions: None,
            prefix: None,
        };
        if self.latent {
            assert!(
                s.k_dtype == s.v_dtype && dv <= dk,
                "a latent case needs one K/V type and Dv <= Dk"
            );
            c.v_off = c.k_off;
        }
        // A row of a row format (fp8_ds_mla) takes its whole row whatever
        // the head dim.
        let (wk, wv) = (row_width(s.k_dtype, dk), row_width(s.v_dtype, dv));
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
                // Members share the first member's whole prefix pages.
                for (len, members) in self.prefix.iter().flatten() {
                    for &m in &members[1..] {
                        for blk in 0..len / page {
                            c.block_table[m * bps + blk] = c.block_table[members[0] * bps + blk];
                        }
                    }
                }
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
        c.k_strides = strided(cap_or_len, wk, uk);
        c.v_strides = if self.latent {
            c.k_strides
        } else {
            strided(cap_or_len, wv, uv)
        };
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
        c.v = if self.latent {
            c.k.clone()
        } else {
            fill_cache(&c, &mut rng, true, 1.0)
        };
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
        if self.tree {
            // Drawn last, so that cases without a tree keep their values.
            let mut words = Vec::with_capacity(tokens);
            for b in 0..s.batch {
                let q_len = match &self.q_tokens {
                    Some(t) => t[b],
                    None => s.q_len,
                };
                let w0 = words.len();
                for t in 0..q_len {
                    // A parent among the earlier tokens, or (one in four)
                    // none: a forest, so some tokens do not see token 0.
                    let parent = rng.below(4 * t + 1);
                    let up = if t > 0 && parent < 3 * t {
                        words[w0 + parent / 3]
                    } else {
                        0
                    };
                    words.push(up | 1u64 << t);
                }
            }
            c.tree = Some(words);
        }
        if let Some(sp) = self.sparse {
            // Drawn after the tree, for the same reason.
            let per = if sp.per_kv_head { g } else { 1 };
            let (mut positions, mut offsets) = (Vec::new(), vec![0]);
            for list in 0..s.batch * per {
                let len = self.seq_lens[list / per];
                for a in (0..len).step_by(sp.run.max(1)) {
                    if rng.below(256) < usize::from(sp.keep) {
                        positions.extend((a..(a + sp.run.max(1)).min(len)).map(|p| p as u32));
                    }
                }
                offsets.push(positions.len());
            }
            c.positions = Some((positions, offsets, sp.per_kv_head));
        }
        if let Some(groups) = &self.prefix {
            let lens = groups.iter().map(|(len, _)| *len).collect();
            let mut offsets = vec![0];
            let mut members = Vec::new();
            for (_, m) in groups {
                members.extend_from_slice(m);
                offsets.push(members.len());
            }
            c.prefix = Some((lens, offsets, members));
        }
        c
    }
}
