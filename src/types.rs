//! Element types and KV-cache views.

use half::{bf16, f16};

/// The element type of a K or V cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the high half of a binary32).
    Bf16,
}

impl Dtype {
    /// Every dtype, in table order.
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

    /// The name used in kernel names, reports and errors (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A borrowed buffer of cache elements of one dtype.
#[derive(Clone, Copy, Debug)]
pub enum KvData<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    Bf16(&'a [bf16]),
}

impl<'a> KvData<'a> {
    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            KvData::F32(_) => Dtype::F32,
            KvData::F16(_) => Dtype::F16,
            KvData::Bf16(_) => Dtype::Bf16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            KvData::F32(s) => s.len(),
            KvData::F16(s) => s.len(),
            KvData::Bf16(s) => s.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to f64 (panics when out of range; used by the
    /// reference, never on the hot path).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            KvData::F32(s) => f64::from(s[i]),
            KvData::F16(s) => f64::from(s[i]),
            KvData::Bf16(s) => f64::from(s[i]),
        }
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        match self {
            KvData::F32(s) => s.as_ptr().cast(),
            KvData::F16(s) => s.as_ptr().cast(),
            KvData::Bf16(s) => s.as_ptr().cast(),
        }
    }
}

impl<'a> From<&'a [f32]> for KvData<'a> {
    fn from(s: &'a [f32]) -> Self {
        KvData::F32(s)
    }
}
impl<'a> From<&'a [f16]> for KvData<'a> {
    fn from(s: &'a [f16]) -> Self {
        KvData::F16(s)
    }
}
impl<'a> From<&'a [bf16]> for KvData<'a> {
    fn from(s: &'a [bf16]) -> Self {
        KvData::Bf16(s)
    }
}

/// `(outer, token, head)` strides of `[outer, len, G, D]` storage (token
/// major: `[B, L, G, D]` caches, `[page, G, D]` pages).
pub(crate) fn token_major_strides(len: usize, kv_heads: usize, head_dim: usize) -> [usize; 3] {
    let row = kv_heads.saturating_mul(head_dim);
    [len.saturating_mul(row), row, head_dim]
}

/// `(outer, token, head)` strides of `[outer, G, len, D]` storage (head
/// major: `[B, G, L, D]` caches, `[G, page, D]` pages).
pub(crate) fn head_major_strides(len: usize, kv_heads: usize, head_dim: usize) -> [usize; 3] {
    let head = len.saturating_mul(head_dim);
    [kv_heads.saturating_mul(head), head_dim, head]
}

/// A strided view of a K or V cache for a whole batch.
///
/// Element `d` of position `j` of KV head `g` of sequence `b` is
/// `data[b * seq_stride + j * token_stride + g * head_stride + d]`; strides
/// are in elements. `[B, L, G, D]` storage is
/// `(seq_stride, token_stride, head_stride) = (L*G*D, G*D, D)` and
/// `[B, G, L, D]` is `(G*L*D, D, L*D)`; any other strides work too, with no
/// copy. Zero strides are allowed (the aliased rows are only read). Every
/// position the kernels will read is checked against `data.len()` before any
/// load.
#[derive(Clone, Copy, Debug)]
pub struct KvTensor<'a> {
    /// The elements.
    pub data: KvData<'a>,
    /// Elements between sequence `b` and `b + 1`.
    pub seq_stride: usize,
    /// Elements between position `j` and `j + 1`.
    pub token_stride: usize,
    /// Elements between KV head `g` and `g + 1`.
    pub head_stride: usize,
}

impl<'a> KvTensor<'a> {
    /// A view with explicit strides (in elements).
    pub fn new(
        data: impl Into<KvData<'a>>,
        seq_stride: usize,
        token_stride: usize,
        head_stride: usize,
    ) -> Self {
        KvTensor {
            data: data.into(),
            seq_stride,
            token_stride,
            head_stride,
        }
    }

    /// A `[B, max_len, G, D]` (token-major) cache.
    pub fn blgd(
        data: impl Into<KvData<'a>>,
        max_len: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let [outer, token, head] = token_major_strides(max_len, kv_heads, head_dim);
        Self::new(data, outer, token, head)
    }

    /// A `[B, G, max_len, D]` (head-major) cache.
    pub fn bgld(
        data: impl Into<KvData<'a>>,
        max_len: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let [outer, token, head] = head_major_strides(max_len, kv_heads, head_dim);
        Self::new(data, outer, token, head)
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.data.dtype()
    }
}

/// One pool of cache pages (K or V) of a paged cache.
///
/// Element `d` of slot `s` (the position's offset inside its page) of KV
/// head `g` in page `p` is
/// `data[p * page_stride + s * token_stride + g * head_stride + d]`
/// (strides in elements). [`KvPages::pgd`] lays each page out as
/// `[page_size, G, D]` and [`KvPages::gpd`] as `[G, page_size, D]`; any
/// other strides work too.
#[derive(Clone, Copy, Debug)]
pub struct KvPages<'a> {
    /// The pool's elements.
    pub data: KvData<'a>,
    /// Elements between page `p` and `p + 1`.
    pub page_stride: usize,
    /// Elements between slot `s` and `s + 1` of a page.
    pub token_stride: usize,
    /// Elements between KV head `g` and `g + 1` of a page.
    pub head_stride: usize,
}

impl<'a> KvPages<'a> {
    /// A pool with explicit strides (in elements).
    pub fn new(
        data: impl Into<KvData<'a>>,
        page_stride: usize,
        token_stride: usize,
        head_stride: usize,
    ) -> Self {
        KvPages {
            data: data.into(),
            page_stride,
            token_stride,
            head_stride,
        }
    }

    /// Pages laid out `[page_size, G, D]` (token-major, as vLLM stores them).
    pub fn pgd(
        data: impl Into<KvData<'a>>,
        page_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let [outer, token, head] = token_major_strides(page_size, kv_heads, head_dim);
        Self::new(data, outer, token, head)
    }

    /// Pages laid out `[G, page_size, D]` (head-major).
    pub fn gpd(
        data: impl Into<KvData<'a>>,
        page_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let [outer, token, head] = head_major_strides(page_size, kv_heads, head_dim);
        Self::new(data, outer, token, head)
    }
}

/// A paged KV cache: each sequence's positions live in fixed-size pages of
/// a K pool and a V pool, found through its row of the block table.
///
/// Position `j` of sequence `b` is slot `j % page_size` of page
/// `block_table[b * blocks_per_seq + j / page_size]` in both pools. A
/// sequence may end mid-page; every page index a step will use is checked
/// against the pools before any load.
#[derive(Clone, Copy, Debug)]
pub struct PagedKv<'a> {
    /// The K page pool.
    pub k: KvPages<'a>,
    /// The V page pool.
    pub v: KvPages<'a>,
    /// Positions per page (any value ≥ 1).
    pub page_size: usize,
    /// `B` rows of `blocks_per_seq` page indices.
    pub block_table: &'a [u32],
    /// Entries per row of the block table.
    pub blocks_per_seq: usize,
}

/// A ring-buffer cache for sliding-window models: each sequence owns
/// `capacity` slots, and absolute position `p` lives in slot
/// `p % capacity` of its [`KvTensor`] (whose "position" index is the slot).
///
/// Sequence `b` attends to the `seq_lens[b]` positions starting at absolute
/// position `first_pos[b]`, which must all be resident
/// (`seq_lens[b] <= capacity`). The kernels read them in at most two
/// contiguous pieces, without copying.
#[derive(Clone, Copy, Debug)]
pub struct RingKv<'a> {
    /// K slots of every sequence.
    pub k: KvTensor<'a>,
    /// V slots of every sequence.
    pub v: KvTensor<'a>,
    /// Slots per sequence.
    pub capacity: usize,
    /// Absolute position of each sequence's first attended position.
    pub first_pos: &'a [usize],
}

/// Where a step's K and V rows live.
#[derive(Clone, Copy, Debug)]
pub enum KvCache<'a> {
    /// Strided views of contiguous per-sequence storage (`[B, L, G, D]`,
    /// `[B, G, L, D]` or any strides).
    Strided {
        /// The K view.
        k: KvTensor<'a>,
        /// The V view.
        v: KvTensor<'a>,
    },
    /// A paged cache (block tables into page pools).
    Paged(PagedKv<'a>),
    /// A ring buffer per sequence.
    Ring(RingKv<'a>),
}

impl<'a> KvCache<'a> {
    /// A strided cache.
    pub fn strided(k: KvTensor<'a>, v: KvTensor<'a>) -> Self {
        KvCache::Strided { k, v }
    }

    /// The K and V element types.
    pub fn dtypes(&self) -> (Dtype, Dtype) {
        match self {
            KvCache::Strided { k, v } => (k.dtype(), v.dtype()),
            KvCache::Paged(p) => (p.k.data.dtype(), p.v.data.dtype()),
            KvCache::Ring(r) => (r.k.dtype(), r.v.dtype()),
        }
    }

    /// The layout's name in reports (`strided`, `paged<page size>`, `ring`).
    pub fn layout_name(&self) -> String {
        match self {
            KvCache::Strided { .. } => "strided".into(),
            KvCache::Paged(p) => format!("paged{}", p.page_size),
            KvCache::Ring(_) => "ring".into(),
        }
    }
}

/// An additive attention bias (natural-log units, added to the scaled
/// score after softcap and ALiBi): the bias of sequence `b`, query token
/// `t` (of that sequence), query head `h` for KV position `j` is
/// `data[b * seq_stride + t * token_stride + h * head_stride + j]`.
/// `head_stride = 0` broadcasts one bias row over the heads. Every element a
/// step reads is checked against `data.len()` first.
#[derive(Clone, Copy, Debug)]
pub struct Bias<'a> {
    /// The bias values.
    pub data: &'a [f32],
    /// Elements between sequences.
    pub seq_stride: usize,
    /// Elements between query tokens of a sequence.
    pub token_stride: usize,
    /// Elements between query heads (0: the same bias for every head).
    pub head_stride: usize,
}

/// The inputs of one step: queries, cache, lengths and (optionally) ragged
/// query counts and an additive bias.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// Queries, `[T, H, Dk]` f32 where `T` is the number of query tokens of
    /// the whole batch (`B * q_len` unless `q_offsets` is given), tokens of
    /// sequence `b` before those of `b + 1`.
    pub q: &'a [f32],
    /// The K/V cache.
    pub cache: KvCache<'a>,
    /// `L_b` per sequence: cached positions, the step's new tokens included
    /// (a sequence's `q_len_b` tokens are its last `q_len_b` positions).
    pub seq_lens: &'a [usize],
    /// Ragged query tokens (like `cu_seqlens`): `B + 1` non-decreasing
    /// offsets from 0, sequence `b` owning tokens
    /// `q_offsets[b]..q_offsets[b + 1]` (at most the plan's `q_len`). `None`
    /// gives every sequence the plan's `q_len` tokens.
    pub q_offsets: Option<&'a [usize]>,
    /// Optional additive bias per (sequence, token, [head,] position).
    pub bias: Option<Bias<'a>>,
}

impl<'a> Batch<'a> {
    /// A batch over a strided cache, `q_len` tokens per sequence.
    pub fn strided(q: &'a [f32], k: KvTensor<'a>, v: KvTensor<'a>, seq_lens: &'a [usize]) -> Self {
        Batch {
            q,
            cache: KvCache::Strided { k, v },
            seq_lens,
            q_offsets: None,
            bias: None,
        }
    }

    /// A batch over any cache, `q_len` tokens per sequence.
    pub fn new(q: &'a [f32], cache: KvCache<'a>, seq_lens: &'a [usize]) -> Self {
        Batch {
            q,
            cache,
            seq_lens,
            q_offsets: None,
            bias: None,
        }
    }

    /// The same batch with ragged query tokens.
    pub fn with_q_offsets(mut self, q_offsets: &'a [usize]) -> Self {
        self.q_offsets = Some(q_offsets);
        self
    }

    /// The same batch with an additive bias.
    pub fn with_bias(mut self, bias: Bias<'a>) -> Self {
        self.bias = Some(bias);
        self
    }
}
