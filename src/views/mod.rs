//! The read-only views of a KV cache: element buffers ([`KvData`]),
//! strided tensors, pages, rings, the cache enum and a step's batch; their
//! mutable mirrors (`mutable.rs`) and the one owned buffer ([`KvBuffer`]).

use half::{bf16, f16};

use crate::arch::KvRows;
use crate::formats::{BlockFormat, BlockQ8_0, Dtype, Fp8, QK};

mod blocks;
mod mutable;
mod owned;

pub(crate) use blocks::whole_blocks;
pub use blocks::Blocks;

pub use mutable::{BlocksMut, KvCacheMut, KvDataMut, LatentCacheMut, NewKv};
pub use owned::KvBuffer;

/// A borrowed buffer of cache elements of one dtype.
///
/// Views over it ([`KvTensor`], [`KvPages`]) count strides and offsets in
/// **values** whatever the type, so a layout reads the same for every
/// dtype. The quantized variants carry their scales:
///
/// - `Int8`: the value at offset `o` belongs to the row `o / head_dim`,
///   whose scale is `scales[o / head_dim]` (so the scales of a
///   `[B, L, G, D]` cache are a `[B, L, G]` array, and every stride must be
///   a multiple of the head dim);
/// - `Q8_0` and `Blocks` (every block format: q8_0, q4_0, q4_1, q5_0,
///   q5_1, iq4_nl): the value at offset `o` is value `o % 32` of block
///   `o / 32` (every stride and the head dim must be multiples of 32);
/// - `Fp8E4M3` / `Fp8E5M2`: `scales` holds one f32 per KV head (`G`
///   entries) or one for the whole tensor;
/// - `Fp8E4M3Row`: fp8 E4M3FN bytes with int8's row scales (the value at
///   offset `o` has the scale `scales[o / head_dim]`).
#[derive(Clone, Copy, Debug)]
pub enum KvData<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    Bf16(&'a [bf16]),
    /// int8 values with one f32 scale per row of `head_dim` values.
    Int8 {
        /// The values.
        values: &'a [i8],
        /// One scale per row (`values.len() / head_dim` entries).
        scales: &'a [f32],
    },
    /// q8_0 blocks of 32 values.
    Q8_0(&'a [BlockQ8_0]),
    /// Blocks of 32 values of any block format (q4_0, q4_1, q5_0, q5_1,
    /// iq4_nl, q8_0), as their bytes.
    Blocks(Blocks<'a>),
    /// fp8 E4M3FN bytes.
    Fp8E4M3 {
        /// The encoded values.
        values: &'a [u8],
        /// One scale per KV head, or one for the tensor.
        scales: &'a [f32],
    },
    /// fp8 E5M2 bytes.
    Fp8E5M2 {
        /// The encoded values.
        values: &'a [u8],
        /// One scale per KV head, or one for the tensor.
        scales: &'a [f32],
    },
    /// fp8 E4M3FN bytes with one f32 scale per row of `head_dim` values
    /// (as `Int8`).
    Fp8E4M3Row {
        /// The encoded values.
        values: &'a [u8],
        /// One scale per row (`values.len() / head_dim` entries).
        scales: &'a [f32],
    },
}

impl<'a> KvData<'a> {
    /// int8 values and their per-row scales.
    pub fn int8(values: &'a [i8], scales: &'a [f32]) -> Self {
        KvData::Int8 { values, scales }
    }

    /// fp8 E4M3FN values and their per-row scales (one per `head_dim`
    /// values, as [`KvData::int8`]).
    pub fn fp8_row(values: &'a [u8], scales: &'a [f32]) -> Self {
        KvData::Fp8E4M3Row { values, scales }
    }

    /// fp8 values of `format` and their per-head (or per-tensor) scales.
    pub fn fp8(format: Fp8, values: &'a [u8], scales: &'a [f32]) -> Self {
        match format {
            Fp8::E4M3 => KvData::Fp8E4M3 { values, scales },
            Fp8::E5M2 => KvData::Fp8E5M2 { values, scales },
        }
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            KvData::F32(_) => Dtype::F32,
            KvData::F16(_) => Dtype::F16,
            KvData::Bf16(_) => Dtype::Bf16,
            KvData::Int8 { .. } => Dtype::Int8,
            KvData::Q8_0(_) => Dtype::Q8_0,
            KvData::Blocks(b) => b.dtype,
            KvData::Fp8E4M3 { .. } => Dtype::Fp8E4M3,
            KvData::Fp8E5M2 { .. } => Dtype::Fp8E5M2,
            KvData::Fp8E4M3Row { .. } => Dtype::Fp8E4M3Row,
        }
    }

    /// Number of values (for the block formats, 32 per block).
    pub fn len(&self) -> usize {
        match self {
            KvData::F32(s) => s.len(),
            KvData::F16(s) => s.len(),
            KvData::Bf16(s) => s.len(),
            KvData::Int8 { values, .. } => values.len(),
            KvData::Q8_0(b) => b.len() * QK,
            KvData::Blocks(b) => b.len(),
            KvData::Fp8E4M3 { values, .. }
            | KvData::Fp8E5M2 { values, .. }
            | KvData::Fp8E4M3Row { values, .. } => values.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at offset `i`, of KV head `kv_head` in a cache of head
    /// dim `head_dim`, dequantized to f64 by the literal scalar decoders of
    /// [`crate::quant`] (the reference's reading; never on the hot path).
    /// Panics when out of range.
    pub fn value_f64(&self, i: usize, kv_head: usize, head_dim: usize) -> f64 {
        let head_scale =
            |scales: &[f32]| f64::from(scales[if scales.len() == 1 { 0 } else { kv_head }]);
        match self {
            KvData::F32(s) => f64::from(s[i]),
            KvData::F16(s) => f64::from(s[i]),
            KvData::Bf16(s) => f64::from(s[i]),
            KvData::Int8 { values, scales } => {
                f64::from(scales[i / head_dim]) * f64::from(values[i])
            }
            KvData::Q8_0(b) => b[i / QK].value(i % QK),
            KvData::Blocks(b) => b.value(i),
            KvData::Fp8E4M3 { values, scales } => {
                head_scale(scales) * f64::from(Fp8::E4M3.decode(values[i]))
            }
            KvData::Fp8E5M2 { values, scales } => {
                head_scale(scales) * f64::from(Fp8::E5M2.decode(values[i]))
            }
            KvData::Fp8E4M3Row { values, scales } => {
                f64::from(scales[i / head_dim]) * f64::from(Fp8::E4M3.decode(values[i]))
            }
        }
    }

    /// Whether `other` is this very buffer: the same type, elements and
    /// scales (the same addresses and lengths, not equal contents).
    pub fn same_storage(&self, other: &KvData<'_>) -> bool {
        let parts = |d: &KvData<'_>| -> (Dtype, *const u8, usize, *const f32, usize) {
            let (p, s): (*const u8, &[f32]) = match d {
                KvData::F32(x) => (x.as_ptr().cast(), &[]),
                KvData::F16(x) => (x.as_ptr().cast(), &[]),
                KvData::Bf16(x) => (x.as_ptr().cast(), &[]),
                KvData::Int8 { values, scales } => (values.as_ptr().cast(), scales),
                KvData::Q8_0(b) => (b.as_ptr().cast(), &[]),
                KvData::Blocks(b) => (b.bytes.as_ptr(), &[]),
                KvData::Fp8E4M3 { values, scales }
                | KvData::Fp8E5M2 { values, scales }
                | KvData::Fp8E4M3Row { values, scales } => (values.as_ptr(), scales),
            };
            (d.dtype(), p, d.len(), s.as_ptr(), s.len())
        };
        parts(self) == parts(other)
    }

    /// The kernel's view of rows starting at value offset `o`, `stride`
    /// values apart (the caller validated both, and that they are
    /// multiples of what the type needs).
    pub(crate) fn kernel_rows(&self, o: usize, stride: usize, head_dim: usize) -> KvRows {
        let plain = |p: *const u8, size: usize| KvRows {
            ptr: p.wrapping_add(o * size),
            stride,
            scale: std::ptr::null(),
            scale_stride: 0,
        };
        match self {
            KvData::F32(s) => plain(s.as_ptr().cast(), 4),
            KvData::F16(s) => plain(s.as_ptr().cast(), 2),
            KvData::Bf16(s) => plain(s.as_ptr().cast(), 2),
            KvData::Fp8E4M3 { values, .. } | KvData::Fp8E5M2 { values, .. } => {
                plain(values.as_ptr(), 1)
            }
            KvData::Int8 { values, scales } => KvRows {
                ptr: values.as_ptr().cast::<u8>().wrapping_add(o),
                stride,
                scale: scales.as_ptr().wrapping_add(o / head_dim),
                scale_stride: stride / head_dim,
            },
            KvData::Fp8E4M3Row { values, scales } => KvRows {
                ptr: values.as_ptr().wrapping_add(o),
                stride,
                scale: scales.as_ptr().wrapping_add(o / head_dim),
                scale_stride: stride / head_dim,
            },
            KvData::Q8_0(b) => KvRows {
                ptr: b.as_ptr().wrapping_add(o / QK).cast(),
                stride: stride / QK,
                scale: std::ptr::null(),
                scale_stride: 0,
            },
            KvData::Blocks(b) => KvRows {
                ptr: b
                    .bytes
                    .as_ptr()
                    .wrapping_add(o / b.block_len() * b.block_bytes()),
                stride: stride / b.block_len(),
                scale: std::ptr::null(),
                scale_stride: 0,
            },
        }
    }

    /// The stored bytes of the row of `head_dim` values at value offset
    /// `o` (a row start the caller validated), without any per-row scale,
    /// and the row's scale (int8, fp8e4m3_row; 1 for every other type): what the sparse
    /// walk copies into its staging rows. Panics when out of range.
    pub(crate) fn row_at(&self, o: usize, head_dim: usize) -> (&[u8], f32) {
        let blocks = head_dim.div_ceil(self.dtype().block_len());
        match self {
            KvData::F32(s) => (bytemuck::cast_slice(&s[o..o + head_dim]), 1.0),
            KvData::F16(s) => (bytemuck::cast_slice(&s[o..o + head_dim]), 1.0),
            KvData::Bf16(s) => (bytemuck::cast_slice(&s[o..o + head_dim]), 1.0),
            KvData::Int8 { values, scales } => (
                bytemuck::cast_slice(&values[o..o + head_dim]),
                scales[o / head_dim],
            ),
            KvData::Q8_0(b) => (bytemuck::cast_slice(&b[o / QK..o / QK + blocks]), 1.0),
            KvData::Blocks(b) => {
                let (bb, n) = (b.block_bytes(), o / b.block_len());
                (&b.bytes[n * bb..(n + blocks) * bb], 1.0)
            }
            KvData::Fp8E4M3 { values, .. } | KvData::Fp8E5M2 { values, .. } => {
                (&values[o..o + head_dim], 1.0)
            }
            KvData::Fp8E4M3Row { values, scales } => {
                (&values[o..o + head_dim], scales[o / head_dim])
            }
        }
    }

    /// The kernel's view of rows staged by [`KvData::row_at`]: rows of
    /// `row_len` values stored one after the other from `ptr` (whole
    /// blocks for the block types), the row scales `scales` one after the
    /// other (int8, fp8e4m3_row; ignored for the other types).
    pub(crate) fn staged_rows(&self, ptr: *const u8, row_len: usize, scales: *const f32) -> KvRows {
        let (stride, scale, scale_stride) = match self {
            KvData::Int8 { .. } | KvData::Fp8E4M3Row { .. } => (row_len, scales, 1),
            KvData::Q8_0(_) | KvData::Blocks(_) => (
                row_len.div_ceil(self.dtype().block_len()),
                std::ptr::null(),
                0,
            ),
            _ => (row_len, std::ptr::null(), 0),
        };
        KvRows {
            ptr,
            stride,
            scale,
            scale_stride,
        }
    }

    /// The factor the driver applies per KV head outside the kernel: the
    /// fp8 per-head scale (times `2^8` for E4M3, which the kernel reads as
    /// `x · 2^-8`), `2^8` for E4M3 with row scales (the kernel applies the
    /// row scales), 1 for every other type.
    pub(crate) fn head_factor(&self, kv_head: usize) -> f32 {
        let pick = |scales: &[f32]| scales[if scales.len() == 1 { 0 } else { kv_head }];
        match self {
            KvData::Fp8E4M3 { scales, .. } => pick(scales) * 256.0,
            KvData::Fp8E5M2 { scales, .. } => pick(scales),
            KvData::Fp8E4M3Row { .. } => 256.0,
            _ => 1.0,
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
impl<'a> From<&'a [BlockQ8_0]> for KvData<'a> {
    fn from(s: &'a [BlockQ8_0]) -> Self {
        KvData::Q8_0(s)
    }
}
impl<'a> From<Blocks<'a>> for KvData<'a> {
    fn from(b: Blocks<'a>) -> Self {
        KvData::Blocks(b)
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

/// A strided view of a K or V cache for a whole batch, over read-only
/// elements ([`KvTensor`], what a step reads) or writable ones
/// ([`KvTensorMut`], what [`append`](crate::append()) writes): the strides
/// and constructors are the same for both.
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
pub struct TensorView<D> {
    /// The elements.
    pub data: D,
    /// Elements between sequence `b` and `b + 1`.
    pub seq_stride: usize,
    /// Elements between position (or ring slot) `j` and `j + 1`.
    pub token_stride: usize,
    /// Elements between KV head `g` and `g + 1`.
    pub head_stride: usize,
}

/// A read-only strided view of a K or V cache (see [`TensorView`]).
pub type KvTensor<'a> = TensorView<KvData<'a>>;

/// A writable strided view, with the strides of [`KvTensor`] (see
/// [`TensorView`]).
pub type KvTensorMut<'a> = TensorView<KvDataMut<'a>>;

impl<D> TensorView<D> {
    /// A view with explicit strides (in elements).
    pub fn new(
        data: impl Into<D>,
        seq_stride: usize,
        token_stride: usize,
        head_stride: usize,
    ) -> Self {
        TensorView {
            data: data.into(),
            seq_stride,
            token_stride,
            head_stride,
        }
    }

    /// A `[B, max_len, G, D]` (token-major) cache.
    pub fn blgd(data: impl Into<D>, max_len: usize, kv_heads: usize, head_dim: usize) -> Self {
        let [outer, token, head] = token_major_strides(max_len, kv_heads, head_dim);
        Self::new(data, outer, token, head)
    }

    /// A `[B, G, max_len, D]` (head-major) cache.
    pub fn bgld(data: impl Into<D>, max_len: usize, kv_heads: usize, head_dim: usize) -> Self {
        let [outer, token, head] = head_major_strides(max_len, kv_heads, head_dim);
        Self::new(data, outer, token, head)
    }
}

impl TensorView<KvData<'_>> {
    /// Whether `other` views the same buffer with the same strides.
    fn same_view(&self, other: &Self) -> bool {
        self.data.same_storage(&other.data)
            && (self.seq_stride, self.token_stride, self.head_stride)
                == (other.seq_stride, other.token_stride, other.head_stride)
    }
}

impl KvTensor<'_> {
    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.data.dtype()
    }
}

impl KvTensorMut<'_> {
    /// The same view, read-only.
    pub fn as_tensor(&self) -> KvTensor<'_> {
        KvTensor::new(
            self.data.as_data(),
            self.seq_stride,
            self.token_stride,
            self.head_stride,
        )
    }
}

/// One pool of cache pages (K or V) of a paged cache, over read-only
/// elements ([`KvPages`]) or writable ones ([`KvPagesMut`]).
///
/// Element `d` of slot `s` (the position's offset inside its page) of KV
/// head `g` in page `p` is
/// `data[p * page_stride + s * token_stride + g * head_stride + d]`
/// (strides in elements). [`PagesView::pgd`] lays each page out as
/// `[page_size, G, D]` and [`PagesView::gpd`] as `[G, page_size, D]`; any
/// other strides work too.
#[derive(Clone, Copy, Debug)]
pub struct PagesView<D> {
    /// The pool's elements.
    pub data: D,
    /// Elements between page `p` and `p + 1`.
    pub page_stride: usize,
    /// Elements between slot `s` and `s + 1` of a page.
    pub token_stride: usize,
    /// Elements between KV head `g` and `g + 1` of a page.
    pub head_stride: usize,
}

/// A read-only page pool (see [`PagesView`]).
pub type KvPages<'a> = PagesView<KvData<'a>>;

/// A writable page pool, with the strides of [`KvPages`] (see
/// [`PagesView`]).
pub type KvPagesMut<'a> = PagesView<KvDataMut<'a>>;

impl<D> PagesView<D> {
    /// A pool with explicit strides (in elements).
    pub fn new(
        data: impl Into<D>,
        page_stride: usize,
        token_stride: usize,
        head_stride: usize,
    ) -> Self {
        PagesView {
            data: data.into(),
            page_stride,
            token_stride,
            head_stride,
        }
    }

    /// Pages laid out `[page_size, G, D]` (token-major, as vLLM stores them).
    pub fn pgd(data: impl Into<D>, page_size: usize, kv_heads: usize, head_dim: usize) -> Self {
        let [outer, token, head] = token_major_strides(page_size, kv_heads, head_dim);
        Self::new(data, outer, token, head)
    }

    /// Pages laid out `[G, page_size, D]` (head-major).
    pub fn gpd(data: impl Into<D>, page_size: usize, kv_heads: usize, head_dim: usize) -> Self {
        let [outer, token, head] = head_major_strides(page_size, kv_heads, head_dim);
        Self::new(data, outer, token, head)
    }
}

impl PagesView<KvData<'_>> {
    /// Whether `other` views the same pool with the same strides.
    fn same_view(&self, other: &Self) -> bool {
        self.data.same_storage(&other.data)
            && (self.page_stride, self.token_stride, self.head_stride)
                == (other.page_stride, other.token_stride, other.head_stride)
    }
}

impl KvPagesMut<'_> {
    /// The same pool, read-only.
    pub fn as_pages(&self) -> KvPages<'_> {
        KvPages::new(
            self.data.as_data(),
            self.page_stride,
            self.token_stride,
            self.head_stride,
        )
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

impl<'a> PagedKv<'a> {
    /// A paged latent cache (multi-head latent attention): one pool of
    /// rows that are both K and V, V being the leading `head_dim_v`
    /// values of each K row (see [`KvCache::latent`]).
    pub fn latent(
        kv: KvPages<'a>,
        page_size: usize,
        block_table: &'a [u32],
        blocks_per_seq: usize,
    ) -> Self {
        PagedKv {
            k: kv,
            v: kv,
            page_size,
            block_table,
            blocks_per_seq,
        }
    }
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

impl<'a> RingKv<'a> {
    /// A ring of latent rows, both K and V (see [`KvCache::latent`]).
    pub fn latent(kv: KvTensor<'a>, capacity: usize, first_pos: &'a [usize]) -> Self {
        RingKv {
            k: kv,
            v: kv,
            capacity,
            first_pos,
        }
    }
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

    /// A latent cache (multi-head latent attention, as DeepSeek-V2/V3
    /// decode it with the projections absorbed): one row per position
    /// and KV head serves as K (all `head_dim_k` values) and as V (its
    /// leading `head_dim_v` values, so `head_dim_v <= head_dim_k`). A step
    /// reads each row once for both, and counts it once
    /// ([`KvCache::kv_bytes`]). The same as a strided cache whose
    /// V view is the K view; any strides, dtype or layout work
    /// ([`PagedKv::latent`], [`RingKv::latent`]); int8 and fp8e4m3_row
    /// scales stay one per K row.
    pub fn latent(kv: KvTensor<'a>) -> Self {
        KvCache::Strided { k: kv, v: kv }
    }

    /// [`Shape::kv_bytes`](crate::Shape::kv_bytes) for a step of `shape`
    /// over this cache: a latent cache ([`KvCache::is_latent`]) reads each
    /// K row once for K and V, so its V bytes are not counted again.
    pub fn kv_bytes(&self, shape: &crate::Shape, seq_lens: &[usize]) -> usize {
        if self.is_latent() {
            let per_pos = shape.kv_heads * shape.k_dtype.row_bytes(shape.head_dim_k);
            seq_lens.iter().sum::<usize>() * per_pos
        } else {
            shape.kv_bytes(seq_lens)
        }
    }

    /// Whether V is declared to be the leading values of the K rows: the
    /// V view is the K view (the same buffer and strides), as
    /// [`KvCache::latent`] builds it. A step then reads V from the K rows
    /// (int8 and fp8e4m3_row scales one per K row) and checks `head_dim_v <= head_dim_k`.
    pub fn is_latent(&self) -> bool {
        match self {
            KvCache::Strided { k, v } => k.same_view(v),
            KvCache::Paged(p) => p.k.same_view(&p.v),
            KvCache::Ring(r) => r.k.same_view(&r.v),
        }
    }

    /// The K and V element types.
    pub fn dtypes(&self) -> (Dtype, Dtype) {
        match self {
            KvCache::Strided { k, v } => (k.dtype(), v.dtype()),
            KvCache::Paged(p) => (p.k.data.dtype(), p.v.data.dtype()),
            KvCache::Ring(r) => (r.k.dtype(), r.v.dtype()),
        }
    }

    /// The K and V buffers.
    pub(crate) fn data(&self) -> (KvData<'a>, KvData<'a>) {
        match self {
            KvCache::Strided { k, v } => (k.data, v.data),
            KvCache::Paged(p) => (p.k.data, p.v.data),
            KvCache::Ring(r) => (r.k.data, r.v.data),
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

/// Sparse position lists (top-k selection as in DeepSeek's sparse
/// attention, Quest's or H2O's selected tokens): each sequence, or each
/// (sequence, KV head), attends only to the cached positions its list
/// names, read in place from any layout (no copy).
///
/// List `i` is `positions[offsets[i]..offsets[i + 1]]`, strictly
/// increasing, every entry below its sequence's `L_b`; `i` is the sequence
/// `b` (`B + 1` offsets) or, with `per_kv_head`, `b · G + g` (`B · G + 1`
/// offsets). The causal rule, the window and a tree mask still apply to the
/// listed positions; `lse` is over exactly those a row sees.
#[derive(Clone, Copy, Debug)]
pub struct Positions<'a> {
    /// Every list's positions, one list after another.
    pub positions: &'a [u32],
    /// Non-decreasing offsets from 0 to `positions.len()`, one more than
    /// there are lists.
    pub offsets: &'a [usize],
    /// Whether each KV head of a sequence has its own list.
    pub per_kv_head: bool,
}

impl<'a> Positions<'a> {
    /// One list per sequence.
    pub fn per_sequence(positions: &'a [u32], offsets: &'a [usize]) -> Self {
        Positions {
            positions,
            offsets,
            per_kv_head: false,
        }
    }

    /// One list per (sequence, KV head), sequence-major.
    pub fn per_kv_head(positions: &'a [u32], offsets: &'a [usize]) -> Self {
        Positions {
            positions,
            offsets,
            per_kv_head: true,
        }
    }

    /// The list of sequence `b`, KV head `g` of `kv_heads` (validated).
    pub(crate) fn list(&self, b: usize, g: usize, kv_heads: usize) -> &'a [u32] {
        let i = if self.per_kv_head {
            b * kv_heads + g
        } else {
            b
        };
        &self.positions[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// Shared-prefix (cascade) groups: sequences whose first positions are
/// the same tokens (a system prompt, few-shot examples, beams or parallel
/// samples of one prompt), read **once per step for all of them**.
///
/// Group `p` is the sequences `members[offsets[p]..offsets[p + 1]]` (at
/// least one, each sequence of the batch in at most one group) sharing
/// positions `0..lens[p]`. Those positions are read from the cache rows of
/// the group's **first member** (its block-table run, ring slots or
/// strided region), for every member: the other members' own rows below
/// `lens[p]` are never read (they may point at the same pages, or hold
/// nothing). A prefix ends before each member's new tokens
/// (`lens[p] <= L_b - q_len_b`), so every query token of the group sees
/// all of it; the `r · q_len` query rows of all members form one tile over
/// the prefix rows, and each member's prefix state merges with the state
/// of its own positions by the log-sum-exp merge of the splits.
///
/// Needs a plan made with [`crate::Options::cascade`]; cannot be combined
/// with an additive [`Bias`] or sparse [`Positions`].
#[derive(Clone, Copy, Debug)]
pub struct PrefixGroups<'a> {
    /// Positions each group shares, one per group.
    pub lens: &'a [usize],
    /// Offsets into `members`: strictly increasing from 0 to
    /// `members.len()`, one more than there are groups.
    pub offsets: &'a [usize],
    /// The sequences of every group, group after group; each group's first
    /// member holds its prefix.
    pub members: &'a [usize],
}

impl<'a> PrefixGroups<'a> {
    /// Groups `members[offsets[p]..offsets[p + 1]]` sharing `lens[p]`
    /// positions.
    pub fn new(lens: &'a [usize], offsets: &'a [usize], members: &'a [usize]) -> Self {
        PrefixGroups {
            lens,
            offsets,
            members,
        }
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether there is no group.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The members of group `p` (validated).
    pub(crate) fn group(&self, p: usize) -> &'a [usize] {
        &self.members[self.offsets[p]..self.offsets[p + 1]]
    }
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
    /// Optional additive bias per (sequence, token, head (optional), position).
    pub bias: Option<Bias<'a>>,
    /// Optional draft-tree mask for speculative verification: one word per
    /// query token of the batch (`T` words, in the order of `q`), bit `j`
    /// of token `t`'s word set when `t` sees draft token `j` of its own
    /// sequence (the token at position `L_b - q_len_b + j`: the step's new
    /// tokens are a draft tree in topological order, ancestors first).
    /// Every cached position before the draft stays visible by the causal
    /// rule (and the window, if any); among the draft tokens a token sees
    /// exactly those whose bits are set. A token must see itself (bit
    /// `t`) and only earlier tokens (no bit above `t`), so sequences with
    /// a mask have at most 64 tokens. `None` is the causal rule alone (the
    /// same as every bit `j <= t` set).
    pub tree_mask: Option<&'a [u64]>,
    /// Optional sparse position lists ([`Positions`]): each row sees only
    /// the listed positions (that the causal rule, the window and the tree
    /// mask show it). `None` is every position.
    pub positions: Option<Positions<'a>>,
    /// Optional shared-prefix groups ([`PrefixGroups`]): `None` reads each
    /// sequence's positions from its own rows.
    pub prefix: Option<PrefixGroups<'a>>,
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
            tree_mask: None,
            positions: None,
            prefix: None,
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
            tree_mask: None,
            positions: None,
            prefix: None,
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

    /// The same batch with sparse position lists (see [`Positions`]).
    pub fn with_positions(mut self, positions: Positions<'a>) -> Self {
        self.positions = Some(positions);
        self
    }

    /// The same batch with shared-prefix groups (see [`PrefixGroups`]).
    pub fn with_prefix_groups(mut self, prefix: PrefixGroups<'a>) -> Self {
        self.prefix = Some(prefix);
        self
    }

    /// The same batch with a draft-tree mask (see [`Batch::tree_mask`]).
    pub fn with_tree_mask(mut self, tree_mask: &'a [u64]) -> Self {
        self.tree_mask = Some(tree_mask);
        self
    }
}
