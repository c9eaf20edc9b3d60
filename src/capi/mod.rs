//! Layer 3: the C ABI (`include/gqa_kernels.h`).
//!
//! Every function returns a status (`GQA_OK` = 0, or a `GQA_ERR_…` code)
//! and leaves a message for the calling thread in [`gqa_last_error`]. Null
//! pointers, bad enum values, impossible sizes and misaligned buffers are
//! errors, never crashes, and every body runs under `catch_unwind`, so no
//! panic unwinds into the host (a panic would be a bug: it is reported as
//! `GQA_ERR_PANIC`).
//!
//! Structs passed by pointer that may grow (`gqa_shape`, `gqa_options`,
//! `gqa_cache`, `gqa_batch`, `gqa_new_kv`) start with `struct_size`, which the
//! caller sets to `sizeof` of the struct it was compiled with; a size
//! smaller than this version's is rejected (but for the sizes of earlier
//! versions of a struct that grew, `gqa_options` without `unit` and
//! `precision`, whose missing fields read as 0), a larger one is read up
//! to the fields this version knows.
//!
//! The caller owns every buffer; pointers must be valid for the lengths
//! given beside them (that, and that buffers written are not read or
//! written by another thread meanwhile, is all the ABI cannot check).

#![allow(non_camel_case_types)]

mod append;
mod args;
mod plan;
mod step;

pub use append::*;
pub use plan::*;
pub use step::*;

use args::*;

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use half::{bf16, f16};

use crate::quant::{BlockQ8_0, Fp8, QK8_0};
use crate::{
    Batch, Bias, Dtype, Error, KvCache, KvCacheMut, KvData, KvDataMut, KvPages, KvPagesMut,
    KvTensor, KvTensorMut, LatentCacheMut, NewKv, Options, PagedKv, Plan, Precision, RingKv, Shape,
    Tier, Unit,
};
use crate::{Blocks, BlocksMut};

/// Success.
pub const GQA_OK: i32 = 0;
/// A required pointer was null.
pub const GQA_ERR_NULL: i32 = 1;
/// A value is outside its domain (dims, enum values, offsets, scales, …).
pub const GQA_ERR_INVALID_ARGUMENT: i32 = 2;
/// An array has the wrong length.
pub const GQA_ERR_LENGTH: i32 = 3;
/// A view, page or bias reaches outside its buffer, or an index overflows.
pub const GQA_ERR_OUT_OF_BOUNDS: i32 = 4;
/// A type the call does not take, or K/V types that differ from the plan's.
pub const GQA_ERR_TYPE: i32 = 5;
/// The tier is not available on this CPU.
pub const GQA_ERR_TIER_UNAVAILABLE: i32 = 6;
/// A workspace or state buffer is smaller than the plan needs.
pub const GQA_ERR_BUFFER_TOO_SMALL: i32 = 7;
/// `gqa_append` would pass a sequence's capacity.
pub const GQA_ERR_CAPACITY: i32 = 8;
/// A struct's `struct_size` is smaller than this version's struct.
pub const GQA_ERR_STRUCT_SIZE: i32 = 9;
/// A buffer is not aligned for its element type.
pub const GQA_ERR_ALIGNMENT: i32 = 10;
/// A bug: the library panicked (the message says where).
pub const GQA_ERR_PANIC: i32 = 11;

/// `gqa_options.tier`: let the library choose (`GQA_KERNELS_ISA` or the best).
pub const GQA_TIER_AUTO: i32 = -1;

/// `gqa_options.unit`: let the plan choose ([`crate::Options::unit`] `None`).
pub const GQA_UNIT_AUTO: i32 = 0;
/// `gqa_options.unit` and `gqa_plan_unit`: f32 FMA.
pub const GQA_UNIT_F32_FMA: i32 = 1;
/// AVX512-BF16 `vdpbf16ps` (`avx512` tier) or Arm BF16 `bfdot` (`neon` tier).
pub const GQA_UNIT_BF16_DOT: i32 = 2;
/// `vpdpbusd` (AVX512-VNNI, AVX-VNNI).
pub const GQA_UNIT_INT8_DOT: i32 = 3;
/// AMX `tdpbf16ps`.
pub const GQA_UNIT_AMX_BF16: i32 = 4;
/// AMX `tdpbssd`.
pub const GQA_UNIT_AMX_INT8: i32 = 5;
/// `gqa_options.precision`: [`crate::Precision::Exact`] (the default).
pub const GQA_PRECISION_EXACT: i32 = 0;
/// [`crate::Precision::Fast`].
pub const GQA_PRECISION_FAST: i32 = 1;

/// Cache layouts (`gqa_cache.layout`).
pub const GQA_LAYOUT_STRIDED: i32 = 0;
/// Paged cache.
pub const GQA_LAYOUT_PAGED: i32 = 1;
/// Ring buffer.
pub const GQA_LAYOUT_RING: i32 = 2;

/// Struct ids for [`gqa_sizeof`].
const STRUCTS: [(&str, usize); 6] = [
    ("gqa_shape", size_of::<gqa_shape>()),
    ("gqa_options", size_of::<gqa_options>()),
    ("gqa_kv", size_of::<gqa_kv>()),
    ("gqa_cache", size_of::<gqa_cache>()),
    ("gqa_batch", size_of::<gqa_batch>()),
    ("gqa_new_kv", size_of::<gqa_new_kv>()),
];

/// The problem shape (see [`Shape`]); dtypes are `GQA_DTYPE_…` codes
/// ([`Dtype::abi_code`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gqa_shape {
    /// `sizeof(gqa_shape)` as the caller compiled it.
    pub struct_size: usize,
    /// Sequences `B`.
    pub batch: usize,
    /// Query heads `H`.
    pub heads: usize,
    /// KV heads `G`.
    pub kv_heads: usize,
    /// Head dim of Q and K.
    pub head_dim_k: usize,
    /// Head dim of V.
    pub head_dim_v: usize,
    /// Query tokens per sequence (0 is read as 1).
    pub q_len: usize,
    /// Longest `L_b` a run may pass; 0 = unbounded (no KV splits).
    pub max_kv_len: usize,
    /// K element type.
    pub k_dtype: i32,
    /// V element type.
    pub v_dtype: i32,
}

/// Plan options (see [`Options`]); zero means "default" for every field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gqa_options {
    /// `sizeof(gqa_options)` as the caller compiled it.
    pub struct_size: usize,
    /// Score scale; 0 = `1 / sqrt(Dk)`.
    pub scale: f32,
    /// `GQA_TIER_AUTO` (-1) or a `GQA_TIER_…` code.
    pub tier: i32,
    /// Worker threads of `gqa_run` (0 or 1: the calling thread).
    pub threads: usize,
    /// Sliding window; 0 = none.
    pub window: usize,
    /// Logit softcap; 0 = none.
    pub softcap: f32,
    /// `GQA_UNIT_AUTO` (0) or a `GQA_UNIT_…` code. Added after the
    /// first version: a caller compiled without it passes a smaller
    /// `struct_size` and gets the default.
    pub unit: i32,
    /// `GQA_PRECISION_EXACT` (0) or `GQA_PRECISION_FAST`. Added with
    /// `unit`.
    pub precision: i32,
    /// 1: the plan takes shared-prefix groups ([`Options::cascade`]); 0:
    /// not. Added after `precision` (a caller compiled before passes 0).
    pub cascade: i32,
}

/// One K or V buffer and its strides (in values). `data` is read by
/// `gqa_run` and written by `gqa_append`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gqa_kv {
    /// `GQA_DTYPE_…` code.
    pub dtype: i32,
    /// The values (the block formats: their blocks, q8_0 2-byte aligned,
    /// the others at any address).
    pub data: *mut c_void,
    /// Values in `data` (the block formats: 32 per block).
    pub len: usize,
    /// int8, fp8e4m3_row: one scale per row of `head_dim` values; fp8:
    /// one per KV head or one; other types: NULL.
    pub scales: *mut f32,
    /// Entries of `scales`.
    pub scales_len: usize,
    /// Values between sequences (strided, ring) or pages (paged).
    pub outer_stride: usize,
    /// Values between positions (slots).
    pub token_stride: usize,
    /// Values between KV heads.
    pub head_stride: usize,
}

/// A KV cache of any layout.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gqa_cache {
    /// `sizeof(gqa_cache)` as the caller compiled it.
    pub struct_size: usize,
    /// `GQA_LAYOUT_STRIDED`, `GQA_LAYOUT_PAGED` or `GQA_LAYOUT_RING`.
    pub layout: i32,
    /// K buffer.
    pub k: gqa_kv,
    /// V buffer.
    pub v: gqa_kv,
    /// Paged: positions per page.
    pub page_size: usize,
    /// Paged: `B` rows of `blocks_per_seq` page indices.
    pub block_table: *const u32,
    /// Paged: entries of `block_table`.
    pub block_table_len: usize,
    /// Paged: entries per row.
    pub blocks_per_seq: usize,
    /// Ring: slots per sequence; strided: positions per sequence (append).
    pub capacity: usize,
    /// Ring (`gqa_run`): absolute position of each sequence's first attended
    /// position, `B` entries.
    pub first_pos: *const usize,
    /// Added after the first version (a smaller `struct_size` reads 0):
    /// nonzero declares a latent cache ([`KvCache::latent`]): V is the
    /// leading `head_dim_v` values of each K row, `v` is ignored, and a step
    /// reads each row once.
    pub latent: i32,
}

/// The inputs of one step (see [`Batch`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gqa_batch {
    /// `sizeof(gqa_batch)` as the caller compiled it.
    pub struct_size: usize,
    /// Queries `[T, H, Dk]`.
    pub q: *const f32,
    /// Elements of `q`.
    pub q_elems: usize,
    /// The cache.
    pub cache: *const gqa_cache,
    /// `L_b` per sequence.
    pub seq_lens: *const usize,
    /// Entries of `seq_lens` (must equal the plan's batch).
    pub n_seqs: usize,
    /// NULL, or `n_seqs + 1` ragged query offsets.
    pub q_offsets: *const usize,
    /// NULL, or an additive bias (see [`Bias`]).
    pub bias: *const f32,
    /// Elements of `bias`.
    pub bias_len: usize,
    /// Bias elements between sequences.
    pub bias_seq_stride: usize,
    /// Bias elements between query tokens.
    pub bias_token_stride: usize,
    /// Bias elements between query heads (0: broadcast).
    pub bias_head_stride: usize,
    /// NULL, or a draft-tree mask: a word per query token (see
    /// [`Batch::tree_mask`]). Added after the first version: a caller
    /// compiled against that one (a smaller `struct_size`) passes none.
    pub tree_mask: *const u64,
    /// Words of `tree_mask`.
    pub tree_mask_len: usize,
    /// NULL, or sparse position lists (see [`crate::Positions`]): every
    /// list's positions, one list after another. Added after the tree
    /// mask (a caller compiled before passes none).
    pub positions: *const u32,
    /// Entries of `positions`.
    pub positions_len: usize,
    /// The lists' offsets into `positions`: `n_seqs + 1` entries, or
    /// `n_seqs · kv_heads + 1` with `positions_per_kv_head`.
    pub position_offsets: *const usize,
    /// Entries of `position_offsets`.
    pub position_offsets_len: usize,
    /// 1: a list per (sequence, KV head); 0: a list per sequence.
    pub positions_per_kv_head: i32,
    /// NULL, or shared-prefix groups (see [`crate::PrefixGroups`]): the
    /// positions each group shares, one per group. Added after the
    /// position lists (a caller compiled before passes none).
    pub prefix_lens: *const usize,
    /// Groups (entries of `prefix_lens`).
    pub n_prefix_groups: usize,
    /// `n_prefix_groups + 1` offsets into `prefix_members`.
    pub prefix_offsets: *const usize,
    /// The members of every group, group after group (each group's first
    /// member holds its prefix).
    pub prefix_members: *const usize,
    /// Entries of `prefix_members`.
    pub prefix_members_len: usize,
}

/// New K/V rows for `gqa_append` (see [`NewKv`]): `[T, G, D]` of f32, f16
/// or bf16.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gqa_new_kv {
    /// `sizeof(gqa_new_kv)` as the caller compiled it.
    pub struct_size: usize,
    /// `GQA_DTYPE_F32`, `_F16` or `_BF16`.
    pub dtype: i32,
    /// New K rows.
    pub k: *const c_void,
    /// Elements of `k`.
    pub k_len: usize,
    /// New V rows (same type).
    pub v: *const c_void,
    /// Elements of `v`.
    pub v_len: usize,
    /// `B + 1` token offsets.
    pub offsets: *const usize,
    /// Entries of `offsets`.
    pub offsets_len: usize,
    /// KV heads `G`.
    pub kv_heads: usize,
    /// K head dim.
    pub head_dim_k: usize,
    /// V head dim.
    pub head_dim_v: usize,
}

/// An opaque plan handle.
pub struct gqa_plan {
    plan: Plan,
}
