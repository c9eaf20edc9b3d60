//! What a step's new tokens are written through: the writable element
//! buffers ([`KvDataMut`]) and cache ([`KvCacheMut`], which lends itself
//! out for the step with [`KvCacheMut::as_cache`]), and [`NewKv`], the rows
//! to write. The strided and paged views are written once, generic over
//! the two element buffers (`TensorView`, `PagesView` in `mod.rs`).

use half::{bf16, f16};

use super::{Blocks, KvCache, KvData, KvPagesMut, KvTensorMut, PagedKv, RingKv};
use crate::formats::{BlockFormat, BlockQ8_0, Dtype, Fp8};

/// A mutably borrowed buffer of cache elements of one dtype, with the
/// layout rules of [`KvData`] (offsets in values; int8 scales per row,
/// q8_0 blocks of 32, fp8 scales per KV head).
#[derive(Debug)]
pub enum KvDataMut<'a> {
    /// f32 elements.
    F32(&'a mut [f32]),
    /// f16 elements.
    F16(&'a mut [f16]),
    /// bf16 elements.
    Bf16(&'a mut [bf16]),
    /// int8 values and their per-row scales, both written by [`append`](crate::append()).
    Int8 {
        /// The values.
        values: &'a mut [i8],
        /// One scale per row of `head_dim` values.
        scales: &'a mut [f32],
    },
    /// q8_0 blocks (values and block scales written by [`append`](crate::append())).
    Q8_0(&'a mut [BlockQ8_0]),
    /// Blocks of any block format, as their bytes (values and scales
    /// written by [`append`](crate::append())).
    Blocks(BlocksMut<'a>),
    /// fp8 E4M3FN bytes; the per-head scales are the host's (calibrated
    /// beforehand) and only read.
    Fp8E4M3 {
        /// The encoded values.
        values: &'a mut [u8],
        /// One scale per KV head, or one for the tensor.
        scales: &'a [f32],
    },
    /// fp8 E5M2 bytes, as `Fp8E4M3`.
    Fp8E5M2 {
        /// The encoded values.
        values: &'a mut [u8],
        /// One scale per KV head, or one for the tensor.
        scales: &'a [f32],
    },
    /// fp8 E4M3FN bytes and their per-row scales, both written by
    /// [`append`](crate::append()) (as `Int8`).
    Fp8E4M3Row {
        /// The encoded values.
        values: &'a mut [u8],
        /// One scale per row of `head_dim` values.
        scales: &'a mut [f32],
    },
}

impl<'a> KvDataMut<'a> {
    /// int8 values and their per-row scales.
    pub fn int8(values: &'a mut [i8], scales: &'a mut [f32]) -> Self {
        KvDataMut::Int8 { values, scales }
    }

    /// fp8 E4M3FN values and their per-row scales.
    pub fn fp8_row(values: &'a mut [u8], scales: &'a mut [f32]) -> Self {
        KvDataMut::Fp8E4M3Row { values, scales }
    }

    /// fp8 values of `format` and their per-head (or per-tensor) scales.
    pub fn fp8(format: Fp8, values: &'a mut [u8], scales: &'a [f32]) -> Self {
        match format {
            Fp8::E4M3 => KvDataMut::Fp8E4M3 { values, scales },
            Fp8::E5M2 => KvDataMut::Fp8E5M2 { values, scales },
        }
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.as_data().dtype()
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.as_data().len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same buffer, read-only.
    pub fn as_data(&self) -> KvData<'_> {
        match self {
            KvDataMut::F32(s) => KvData::F32(s),
            KvDataMut::F16(s) => KvData::F16(s),
            KvDataMut::Bf16(s) => KvData::Bf16(s),
            KvDataMut::Int8 { values, scales } => KvData::Int8 { values, scales },
            KvDataMut::Q8_0(b) => KvData::Q8_0(b),
            KvDataMut::Blocks(b) => KvData::Blocks(b.as_blocks()),
            KvDataMut::Fp8E4M3 { values, scales } => KvData::Fp8E4M3 { values, scales },
            KvDataMut::Fp8E5M2 { values, scales } => KvData::Fp8E5M2 { values, scales },
            KvDataMut::Fp8E4M3Row { values, scales } => KvData::Fp8E4M3Row { values, scales },
        }
    }
}

impl<'a> From<&'a mut [f32]> for KvDataMut<'a> {
    fn from(s: &'a mut [f32]) -> Self {
        KvDataMut::F32(s)
    }
}
impl<'a> From<&'a mut [f16]> for KvDataMut<'a> {
    fn from(s: &'a mut [f16]) -> Self {
        KvDataMut::F16(s)
    }
}
impl<'a> From<&'a mut [bf16]> for KvDataMut<'a> {
    fn from(s: &'a mut [bf16]) -> Self {
        KvDataMut::Bf16(s)
    }
}
impl<'a> From<&'a mut [BlockQ8_0]> for KvDataMut<'a> {
    fn from(s: &'a mut [BlockQ8_0]) -> Self {
        KvDataMut::Q8_0(s)
    }
}
impl<'a> From<BlocksMut<'a>> for KvDataMut<'a> {
    fn from(b: BlocksMut<'a>) -> Self {
        KvDataMut::Blocks(b)
    }
}

/// A mutably borrowed buffer of blocks of one block format, as their
/// bytes ([`Blocks`]' writable mirror).
#[derive(Debug)]
pub struct BlocksMut<'a> {
    pub(super) dtype: Dtype,
    pub(super) bytes: &'a mut [u8],
}

impl<'a> BlocksMut<'a> {
    /// The blocks of `blocks`.
    pub fn of<B: BlockFormat>(blocks: &'a mut [B]) -> Self {
        BlocksMut {
            dtype: B::DTYPE,
            bytes: bytemuck::cast_slice_mut(blocks),
        }
    }

    /// `bytes` as blocks of `dtype`; the errors of [`Blocks::new`].
    pub fn new(dtype: Dtype, bytes: &'a mut [u8]) -> crate::Result<Self> {
        super::whole_blocks(dtype, bytes.len())?;
        Ok(BlocksMut { dtype, bytes })
    }

    /// The format.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The blocks' bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.bytes
    }

    /// The same blocks, read-only.
    pub fn as_blocks(&self) -> Blocks<'_> {
        Blocks {
            dtype: self.dtype,
            bytes: self.bytes,
        }
    }
}

/// A writable cache: the layouts of [`KvCache`] over mutable buffers.
#[derive(Debug)]
pub enum KvCacheMut<'a> {
    /// Strided storage of at most `capacity` positions per sequence.
    Strided {
        /// The K view.
        k: KvTensorMut<'a>,
        /// The V view.
        v: KvTensorMut<'a>,
        /// Positions each sequence has room for.
        capacity: usize,
    },
    /// A paged cache: position `j` of sequence `b` is slot `j % page_size`
    /// of page `block_table[b * blocks_per_seq + j / page_size]`.
    Paged {
        /// The K page pool.
        k: KvPagesMut<'a>,
        /// The V page pool.
        v: KvPagesMut<'a>,
        /// Positions per page.
        page_size: usize,
        /// `B` rows of `blocks_per_seq` page indices (the host allocates
        /// the pages; `append` only writes into them).
        block_table: &'a [u32],
        /// Entries per row of the block table.
        blocks_per_seq: usize,
    },
    /// A ring of `capacity` slots per sequence: absolute position `p` is
    /// slot `p % capacity`, overwriting position `p - capacity`.
    Ring {
        /// K slots.
        k: KvTensorMut<'a>,
        /// V slots.
        v: KvTensorMut<'a>,
        /// Slots per sequence.
        capacity: usize,
    },
}

impl KvCacheMut<'_> {
    /// The cache, read-only, for a decode step. A ring needs each
    /// sequence's first attended absolute position (see [`RingKv`]).
    pub fn as_cache<'s>(&'s self, ring_first_pos: &'s [usize]) -> KvCache<'s> {
        match self {
            KvCacheMut::Strided { k, v, .. } => KvCache::strided(k.as_tensor(), v.as_tensor()),
            KvCacheMut::Paged {
                k,
                v,
                page_size,
                block_table,
                blocks_per_seq,
            } => KvCache::Paged(PagedKv {
                k: k.as_pages(),
                v: v.as_pages(),
                page_size: *page_size,
                block_table,
                blocks_per_seq: *blocks_per_seq,
            }),
            KvCacheMut::Ring { k, v, capacity } => KvCache::Ring(RingKv {
                k: k.as_tensor(),
                v: v.as_tensor(),
                capacity: *capacity,
                first_pos: ring_first_pos,
            }),
        }
    }
}

/// A writable latent cache (multi-head latent attention): one buffer of
/// rows that are both K and V, V being the leading `head_dim_v` values of
/// each row ([`KvCache::latent`]), in the layouts of [`KvCacheMut`].
/// [`append_latent`](crate::append_latent()) writes each new token's row
/// once; [`LatentCacheMut::as_cache`] lends it out for a step.
#[derive(Debug)]
pub enum LatentCacheMut<'a> {
    /// Strided storage of at most `capacity` positions per sequence.
    Strided {
        /// The rows.
        kv: KvTensorMut<'a>,
        /// Positions each sequence has room for.
        capacity: usize,
    },
    /// A paged cache: position `j` of sequence `b` is slot `j % page_size`
    /// of page `block_table[b * blocks_per_seq + j / page_size]`.
    Paged {
        /// The page pool.
        kv: KvPagesMut<'a>,
        /// Positions per page.
        page_size: usize,
        /// `B` rows of `blocks_per_seq` page indices.
        block_table: &'a [u32],
        /// Entries per row of the block table.
        blocks_per_seq: usize,
    },
    /// A ring of `capacity` slots per sequence (see [`KvCacheMut::Ring`]).
    Ring {
        /// The slots.
        kv: KvTensorMut<'a>,
        /// Slots per sequence.
        capacity: usize,
    },
}

impl LatentCacheMut<'_> {
    /// The latent cache, read-only, for a decode step. A ring needs each
    /// sequence's first attended absolute position (see [`RingKv`]).
    pub fn as_cache<'s>(&'s self, ring_first_pos: &'s [usize]) -> KvCache<'s> {
        match self {
            LatentCacheMut::Strided { kv, .. } => KvCache::latent(kv.as_tensor()),
            LatentCacheMut::Paged {
                kv,
                page_size,
                block_table,
                blocks_per_seq,
            } => KvCache::Paged(PagedKv::latent(
                kv.as_pages(),
                *page_size,
                block_table,
                *blocks_per_seq,
            )),
            LatentCacheMut::Ring { kv, capacity } => {
                KvCache::Ring(RingKv::latent(kv.as_tensor(), *capacity, ring_first_pos))
            }
        }
    }
}

/// The new tokens' K and V rows: `[T, G, D]` (token-major, rows of `D`
/// contiguous elements), the tokens of sequence `b` being
/// `offsets[b]..offsets[b + 1]` (cu_seqlens style, `B + 1` entries from 0
/// to `T`).
#[derive(Clone, Copy, Debug)]
pub struct NewKv<'a> {
    /// New K rows, `T · G · Dk` elements of f32, f16 or bf16.
    pub k: KvData<'a>,
    /// New V rows, `T · G · Dv` elements.
    pub v: KvData<'a>,
    /// Token ranges per sequence, `B + 1` non-decreasing entries.
    pub offsets: &'a [usize],
    /// KV heads `G`.
    pub kv_heads: usize,
    /// K head dim `Dk`.
    pub head_dim_k: usize,
    /// V head dim `Dv`.
    pub head_dim_v: usize,
}
