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
//! smaller than this version's is rejected, a larger one is read up to the
//! fields this version knows.
//!
//! The caller owns every buffer; pointers must be valid for the lengths
//! given beside them (that, and that buffers written are not read or
//! written by another thread meanwhile, is all the ABI cannot check).

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use half::{bf16, f16};

use crate::quant::{BlockQ8_0, Fp8, QK8_0};
use crate::{
    Batch, Bias, Dtype, Error, KvCache, KvCacheMut, KvData, KvDataMut, KvPages, KvPagesMut,
    KvTensor, KvTensorMut, NewKv, Options, PagedKv, Plan, RingKv, Shape, Tier,
};

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
}

/// One K or V buffer and its strides (in values). `data` is read by
/// `gqa_run` and written by `gqa_append`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gqa_kv {
    /// `GQA_DTYPE_…` code.
    pub dtype: i32,
    /// The values (q8_0: blocks of 34 bytes).
    pub data: *mut c_void,
    /// Values in `data` (q8_0: 32 per block).
    pub len: usize,
    /// int8: one scale per row of `head_dim` values; fp8: one per KV head
    /// or one; other types: NULL.
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

/// A failed call: the status and its message.
struct Fail(i32, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match &e {
            Error::LengthMismatch { .. } => GQA_ERR_LENGTH,
            Error::OutOfBounds { .. }
            | Error::Overflow { .. }
            | Error::PageOutOfRange { .. }
            | Error::BlockTableTooShort { .. } => GQA_ERR_OUT_OF_BOUNDS,
            Error::DtypeMismatch { .. } | Error::UnsupportedDtype { .. } => GQA_ERR_TYPE,
            Error::TierUnavailable { .. } | Error::UnitUnavailable { .. } => {
                GQA_ERR_TIER_UNAVAILABLE
            }
            Error::UnitUnsupported { .. } => GQA_ERR_TYPE,
            Error::BufferTooSmall { .. } => GQA_ERR_BUFFER_TOO_SMALL,
            Error::AppendBeyondCapacity { .. } => GQA_ERR_CAPACITY,
            _ => GQA_ERR_INVALID_ARGUMENT,
        };
        Fail(code, e.to_string())
    }
}

type R<T> = std::result::Result<T, Fail>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, catching panics, and turns its result into a status.
fn guard(f: impl FnOnce() -> R<()>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_error("");
            GQA_OK
        }
        Ok(Err(Fail(code, msg))) => {
            set_error(&msg);
            code
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(&format!("internal error (please report): {what}"));
            GQA_ERR_PANIC
        }
    }
}

fn null(arg: &str) -> Fail {
    Fail(GQA_ERR_NULL, format!("`{arg}` is NULL"))
}

fn invalid(msg: String) -> Fail {
    Fail(GQA_ERR_INVALID_ARGUMENT, msg)
}

/// Reads a versioned struct: `struct_size` must be at least this
/// version's size; fields past it are ignored.
///
/// # Safety
/// `p` is null or valid for reads of `struct_size` bytes (and of at least a
/// `usize`).
unsafe fn read_struct<T: Copy>(arg: &str, p: *const T) -> R<T> {
    if p.is_null() {
        return Err(null(arg));
    }
    // SAFETY: the caller's contract: `p` points to a struct that starts
    // with its `usize` size.
    let size = unsafe { p.cast::<usize>().read_unaligned() };
    if size < size_of::<T>() {
        return Err(Fail(
            GQA_ERR_STRUCT_SIZE,
            format!(
                "`{arg}.struct_size` = {size} is smaller than this library's {} bytes",
                size_of::<T>()
            ),
        ));
    }
    // SAFETY: `size >= size_of::<T>()` bytes are readable at `p`.
    Ok(unsafe { p.read_unaligned() })
}

/// A slice of `len` `T` at `p` (null allowed only when `len == 0`),
/// checked for alignment.
///
/// # Safety
/// `p` is null or valid for reads of `len` `T` for `'a`.
unsafe fn slice<'a, T>(arg: &str, p: *const T, len: usize) -> R<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(null(arg));
    }
    if !(p as usize).is_multiple_of(align_of::<T>()) {
        return Err(Fail(
            GQA_ERR_ALIGNMENT,
            format!("`{arg}` is not aligned to {} bytes", align_of::<T>()),
        ));
    }
    if len
        .checked_mul(size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Fail(
            GQA_ERR_OUT_OF_BOUNDS,
            format!("`{arg}` length {len} is impossible"),
        ));
    }
    // SAFETY: non-null, aligned, and the caller guarantees `len` readable
    // elements.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// As [`slice`], mutable.
///
/// # Safety
/// `p` is null or valid for reads and writes of `len` `T` for `'a`, and no
/// other reference to that memory is live.
unsafe fn slice_mut<'a, T>(arg: &str, p: *mut T, len: usize) -> R<&'a mut [T]> {
    // SAFETY: forwarded; the checks are the same.
    unsafe { slice(arg, p.cast_const(), len)? };
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: checked above (non-null, aligned, sane length); the caller
    // guarantees exclusive access.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

fn dtype(arg: &str, code: i32) -> R<Dtype> {
    Dtype::from_abi_code(code)
        .ok_or_else(|| invalid(format!("`{arg}` = {code} is not a GQA_DTYPE_ value")))
}

fn tier_of(code: i32) -> R<Tier> {
    Tier::from_abi_code(code)
        .ok_or_else(|| invalid(format!("`tier` = {code} is not a GQA_TIER_ value")))
}

fn tier_code(t: Tier) -> i32 {
    t.abi_code()
}

/// The KV data of a `gqa_kv` (read-only).
///
/// # Safety
/// `kv.data` / `kv.scales` are valid for their lengths for `'a`.
unsafe fn kv_data<'a>(arg: &str, kv: &gqa_kv) -> R<KvData<'a>> {
    let t = dtype(&format!("{arg}.dtype"), kv.dtype)?;
    let (d, n) = (kv.data.cast_const(), kv.len);
    if t == Dtype::Q8_0 && !n.is_multiple_of(QK8_0) {
        return Err(invalid(format!(
            "`{arg}.len` = {n} is not a whole number of q8_0 blocks (32 values)"
        )));
    }
    let sarg = format!("{arg}.scales");
    // SAFETY: the caller's contract: `data` holds `len` values of the type
    // and `scales` `scales_len` floats, readable for `'a`; `slice` checks
    // null, alignment and size.
    unsafe {
        let scales = || slice(&sarg, kv.scales.cast_const(), kv.scales_len);
        Ok(match t {
            Dtype::F32 => KvData::F32(slice(arg, d.cast::<f32>(), n)?),
            Dtype::F16 => KvData::F16(slice(arg, d.cast::<f16>(), n)?),
            Dtype::Bf16 => KvData::Bf16(slice(arg, d.cast::<bf16>(), n)?),
            Dtype::Int8 => KvData::int8(slice(arg, d.cast::<i8>(), n)?, scales()?),
            Dtype::Q8_0 => KvData::Q8_0(slice(arg, d.cast::<BlockQ8_0>(), n / QK8_0)?),
            Dtype::Fp8E4M3 => KvData::fp8(Fp8::E4M3, slice(arg, d.cast::<u8>(), n)?, scales()?),
            Dtype::Fp8E5M2 => KvData::fp8(Fp8::E5M2, slice(arg, d.cast::<u8>(), n)?, scales()?),
        })
    }
}

/// Bytes `[start, end)` a `gqa_kv`'s data and scales span.
fn spans(kv: &gqa_kv) -> [(usize, usize); 2] {
    let bytes = match dtype("", kv.dtype) {
        Ok(Dtype::F32) => kv.len.saturating_mul(4),
        Ok(Dtype::F16 | Dtype::Bf16) => kv.len.saturating_mul(2),
        Ok(Dtype::Q8_0) => (kv.len / QK8_0).saturating_mul(34),
        _ => kv.len,
    };
    let a = kv.data as usize;
    let s = kv.scales as usize;
    [
        (a, a.saturating_add(bytes)),
        (s, s.saturating_add(kv.scales_len.saturating_mul(4))),
    ]
}

/// The KV data of a `gqa_kv`, writable.
///
/// # Safety
/// As [`kv_data`], writable, and not aliased by any other live reference.
unsafe fn kv_data_mut<'a>(arg: &str, kv: &gqa_kv) -> R<KvDataMut<'a>> {
    let t = dtype(&format!("{arg}.dtype"), kv.dtype)?;
    let (d, n) = (kv.data, kv.len);
    if t == Dtype::Q8_0 && !n.is_multiple_of(QK8_0) {
        return Err(invalid(format!(
            "`{arg}.len` = {n} is not a whole number of q8_0 blocks (32 values)"
        )));
    }
    let sarg = format!("{arg}.scales");
    // SAFETY: the caller's contract: `data` holds `len` values of the type
    // and `scales` `scales_len` floats, writable for `'a` and used by
    // nothing else (the caller checked that K and V do not overlap);
    // `slice_mut` checks null, alignment and size.
    unsafe {
        Ok(match t {
            Dtype::F32 => KvDataMut::F32(slice_mut(arg, d.cast::<f32>(), n)?),
            Dtype::F16 => KvDataMut::F16(slice_mut(arg, d.cast::<f16>(), n)?),
            Dtype::Bf16 => KvDataMut::Bf16(slice_mut(arg, d.cast::<bf16>(), n)?),
            Dtype::Int8 => KvDataMut::int8(
                slice_mut(arg, d.cast::<i8>(), n)?,
                slice_mut(&sarg, kv.scales, kv.scales_len)?,
            ),
            Dtype::Q8_0 => KvDataMut::Q8_0(slice_mut(arg, d.cast::<BlockQ8_0>(), n / QK8_0)?),
            Dtype::Fp8E4M3 | Dtype::Fp8E5M2 => {
                let f = if t == Dtype::Fp8E4M3 {
                    Fp8::E4M3
                } else {
                    Fp8::E5M2
                };
                KvDataMut::fp8(
                    f,
                    slice_mut(arg, d.cast::<u8>(), n)?,
                    slice(&sarg, kv.scales.cast_const(), kv.scales_len)?,
                )
            }
        })
    }
}

/// The read-only cache of a `gqa_cache`, for `n_seqs` sequences.
///
/// # Safety
/// Every pointer in `c` is valid for its length for `'a`.
unsafe fn cache<'a>(c: &gqa_cache, n_seqs: usize) -> R<KvCache<'a>> {
    // SAFETY: forwarded.
    let (k, v) = unsafe { (kv_data("cache.k", &c.k)?, kv_data("cache.v", &c.v)?) };
    let t = |d, kv: &gqa_kv| KvTensor::new(d, kv.outer_stride, kv.token_stride, kv.head_stride);
    let p = |d, kv: &gqa_kv| KvPages::new(d, kv.outer_stride, kv.token_stride, kv.head_stride);
    Ok(match c.layout {
        GQA_LAYOUT_STRIDED => KvCache::strided(t(k, &c.k), t(v, &c.v)),
        GQA_LAYOUT_PAGED => KvCache::Paged(PagedKv {
            k: p(k, &c.k),
            v: p(v, &c.v),
            page_size: c.page_size,
            // SAFETY: the caller's contract on `block_table`.
            block_table: unsafe { slice("cache.block_table", c.block_table, c.block_table_len)? },
            blocks_per_seq: c.blocks_per_seq,
        }),
        GQA_LAYOUT_RING => KvCache::Ring(RingKv {
            k: t(k, &c.k),
            v: t(v, &c.v),
            capacity: c.capacity,
            // SAFETY: the caller's contract on `first_pos` (`B` entries).
            first_pos: unsafe { slice("cache.first_pos", c.first_pos, n_seqs)? },
        }),
        other => {
            return Err(invalid(format!(
                "`cache.layout` = {other} is not a GQA_LAYOUT_ value"
            )))
        }
    })
}

/// The plan behind a handle.
///
/// # Safety
/// `p` is null or a live handle from [`gqa_plan_create`].
unsafe fn plan_ref<'a>(p: *const gqa_plan) -> R<&'a Plan> {
    if p.is_null() {
        return Err(null("plan"));
    }
    // SAFETY: a live handle.
    Ok(unsafe { &(*p).plan })
}

/// Writes `value` to `out`.
///
/// # Safety
/// `out` is null or valid for a write of `T`.
unsafe fn put<T>(arg: &str, out: *mut T, value: T) -> R<()> {
    if out.is_null() {
        return Err(null(arg));
    }
    // SAFETY: non-null, and the caller's contract.
    unsafe { out.write_unaligned(value) };
    Ok(())
}

/// The message of the last failed call on this thread ("" after a
/// success). Valid until the next call on this thread.
#[no_mangle]
pub extern "C" fn gqa_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library version (`"0.1.0"`), static.
#[no_mangle]
pub extern "C" fn gqa_version() -> *const c_char {
    static V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr().cast()
}

/// `sizeof` of the library's struct number `id` (0 `gqa_shape`,
/// 1 `gqa_options`, 2 `gqa_kv`, 3 `gqa_cache`, 4 `gqa_batch`,
/// 5 `gqa_new_kv`), or 0 for an unknown id: lets a host check that its
/// header and the library agree.
#[no_mangle]
pub extern "C" fn gqa_sizeof(id: i32) -> usize {
    usize::try_from(id)
        .ok()
        .and_then(|i| STRUCTS.get(i))
        .map_or(0, |s| s.1)
}

/// The name of a tier (`"avx512"`, …), static; NULL for an unknown code.
#[no_mangle]
pub extern "C" fn gqa_tier_name(tier: i32) -> *const c_char {
    match tier_of(tier) {
        Ok(Tier::Scalar) => c"scalar".as_ptr(),
        Ok(Tier::Avx2) => c"avx2".as_ptr(),
        Ok(Tier::Avx512) => c"avx512".as_ptr(),
        Ok(Tier::Neon) => c"neon".as_ptr(),
        Err(_) => std::ptr::null(),
    }
}

/// Whether the CPU runs tier `tier` (1) or not (0, also for unknown codes).
#[no_mangle]
pub extern "C" fn gqa_tier_available(tier: i32) -> i32 {
    tier_of(tier).is_ok_and(|t| t.is_available()) as i32
}

/// The tier plans use by default (`GQA_KERNELS_ISA` or the best).
///
/// # Safety
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_active_tier(out: *mut i32) -> i32 {
    guard(|| {
        let t = crate::active_tier()?;
        // SAFETY: the caller's contract.
        unsafe { put("out", out, tier_code(t)) }
    })
}

/// Makes a plan for `shape` (`options` may be NULL for the defaults) and
/// stores its handle in `*out` (free it with [`gqa_plan_destroy`]).
///
/// # Safety
/// Pointers are null or valid (structs for their `struct_size`).
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_create(
    shape: *const gqa_shape,
    options: *const gqa_options,
    out: *mut *mut gqa_plan,
) -> i32 {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: the caller's contract.
        let s = unsafe { read_struct("shape", shape)? };
        let o = if options.is_null() {
            None
        } else {
            // SAFETY: the caller's contract.
            Some(unsafe { read_struct("options", options)? })
        };
        let sh = Shape::new(s.batch, s.heads, s.kv_heads, s.head_dim_k, Dtype::F32)
            .with_head_dims(s.head_dim_k, s.head_dim_v)
            .with_dtypes(
                dtype("shape.k_dtype", s.k_dtype)?,
                dtype("shape.v_dtype", s.v_dtype)?,
            )
            .with_q_len(s.q_len.max(1))
            .with_max_kv_len(s.max_kv_len);
        let mut opts = Options::default();
        if let Some(o) = o {
            if o.scale != 0.0 {
                opts.scale = Some(o.scale);
            }
            if o.tier != GQA_TIER_AUTO {
                opts.tier = Some(tier_of(o.tier)?);
            }
            opts.threads = o.threads;
            opts.window = (o.window > 0).then_some(o.window);
            opts.softcap = (o.softcap != 0.0).then_some(o.softcap);
        }
        let plan = Plan::new(&sh, &opts)?;
        // SAFETY: `out` is non-null and valid for a write.
        unsafe { out.write(Box::into_raw(Box::new(gqa_plan { plan }))) };
        Ok(())
    })
}

/// Frees a plan (NULL is a no-op).
///
/// # Safety
/// `plan` is null or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_destroy(plan: *mut gqa_plan) {
    if !plan.is_null() {
        // SAFETY: a live handle from `gqa_plan_create`, dropped once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(plan) })));
    }
}

/// Sets one attention-sink logit per query head (`n == heads`).
///
/// # Safety
/// `plan` is a live handle; `sinks` is valid for `n` floats.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_set_sinks(
    plan: *mut gqa_plan,
    sinks: *const f32,
    n: usize,
) -> i32 {
    guard(|| {
        if plan.is_null() {
            return Err(null("plan"));
        }
        // SAFETY: the caller's contract.
        let s = unsafe { slice("sinks", sinks, n)? };
        // SAFETY: a live handle, not shared during this call.
        unsafe { (*plan).plan.set_sinks(s)? };
        Ok(())
    })
}

/// Sets one ALiBi slope per query head (`n == heads`).
///
/// # Safety
/// `plan` is a live handle; `slopes` is valid for `n` floats.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_set_alibi(
    plan: *mut gqa_plan,
    slopes: *const f32,
    n: usize,
) -> i32 {
    guard(|| {
        if plan.is_null() {
            return Err(null("plan"));
        }
        // SAFETY: the caller's contract.
        let s = unsafe { slice("slopes", slopes, n)? };
        // SAFETY: a live handle, not shared during this call.
        unsafe { (*plan).plan.set_alibi(s)? };
        Ok(())
    })
}

/// Sets ALiBi slopes from `max_bias` by the standard formula.
///
/// # Safety
/// `plan` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_set_alibi_max_bias(plan: *mut gqa_plan, max_bias: f32) -> i32 {
    guard(|| {
        if plan.is_null() {
            return Err(null("plan"));
        }
        // SAFETY: a live handle, not shared during this call.
        let p = unsafe { &mut (*plan).plan };
        let slopes = crate::alibi_slopes(p.shape().heads, max_bias)?;
        p.set_alibi(&slopes)?;
        Ok(())
    })
}

/// Bytes of workspace `gqa_run` needs (exact; any alignment).
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_workspace_bytes(plan: *const gqa_plan, out: *mut usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, p.workspace_bytes()) }
    })
}

/// The plan's tier (`GQA_TIER_…`).
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_tier(plan: *const gqa_plan, out: *mut i32) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, tier_code(p.tier())) }
    })
}

/// The name of the plan's kernel instance for one query token
/// (`"decode_f16_d128_r4__avx512"`), static; NULL for a NULL plan.
///
/// # Safety
/// `plan` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_kernel_name(plan: *const gqa_plan) -> *const c_char {
    if plan.is_null() {
        return std::ptr::null();
    }
    // SAFETY: a live handle.
    let name = unsafe { (*plan).plan.kernel_name() };
    // Kernel names are static and ASCII; a static NUL-terminated copy per
    // name is kept in a table the first time one is asked for.
    static NAMES: std::sync::Mutex<Vec<(&'static str, &'static std::ffi::CStr)>> =
        std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = names.iter().find(|(n, _)| *n == name) {
        return c.as_ptr();
    }
    let c: &'static std::ffi::CStr =
        Box::leak(CString::new(name).unwrap_or_default().into_boxed_c_str());
    names.push((name, c));
    c.as_ptr()
}

/// The batch a `gqa_batch` describes.
///
/// # Safety
/// `batch` is null or valid, and every pointer in it valid for its length
/// for `'a`.
unsafe fn batch_of<'a>(batch: *const gqa_batch) -> R<Batch<'a>> {
    // SAFETY: the caller's contract on every pointer.
    unsafe {
        let b = read_struct("batch", batch)?;
        if b.cache.is_null() {
            return Err(null("batch.cache"));
        }
        let c = read_struct("batch.cache", b.cache)?;
        let seq_lens = slice("batch.seq_lens", b.seq_lens, b.n_seqs)?;
        let q = slice("batch.q", b.q, b.q_elems)?;
        let mut bt = Batch::new(q, cache(&c, b.n_seqs)?, seq_lens);
        if !b.q_offsets.is_null() {
            let n = b.n_seqs.checked_add(1).ok_or_else(|| {
                Fail(GQA_ERR_OUT_OF_BOUNDS, "`batch.n_seqs` is impossible".into())
            })?;
            bt = bt.with_q_offsets(slice("batch.q_offsets", b.q_offsets, n)?);
        }
        if !b.bias.is_null() {
            bt = bt.with_bias(Bias {
                data: slice("batch.bias", b.bias, b.bias_len)?,
                seq_stride: b.bias_seq_stride,
                token_stride: b.bias_token_stride,
                head_stride: b.bias_head_stride,
            });
        }
        Ok(bt)
    }
}

/// The f32 item states inside a host's `states` buffer of `len` bytes
/// (at least `gqa_plan_state_bytes`): the first 64-byte aligned address,
/// as `Plan::begin` carves it, and the f32 count of all the states.
fn states_base(p: &Plan, states: *mut c_void, len: usize) -> R<(*mut f32, usize)> {
    if states.is_null() {
        return Err(null("states"));
    }
    let needed = p.state_bytes();
    if len < needed {
        return Err(Error::BufferTooSmall {
            arg: "states",
            needed,
            len,
        }
        .into());
    }
    let off = states.align_offset(64).min(64);
    Ok((
        states.cast::<u8>().wrapping_add(off).cast::<f32>(),
        p.work_items() * p.state_len(),
    ))
}

/// Number of independent work items of a step (one per sequence, KV split
/// and KV head), for host-driven threading.
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_work_items(plan: *const gqa_plan, out: *mut usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, p.work_items()) }
    })
}

/// Bytes of the states buffer of a host-driven step (exact; any alignment).
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_state_bytes(plan: *const gqa_plan, out: *mut usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, p.state_bytes()) }
    })
}

/// Bytes of scratch each `gqa_run_items` call needs (exact; any alignment).
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_scratch_bytes(plan: *const gqa_plan, out: *mut usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, p.scratch_bytes()) }
    })
}

/// Starts a host-driven step: checks `batch` against the plan and resets
/// every item state in `states` (`gqa_plan_state_bytes`, any contents).
///
/// # Safety
/// `plan` is a live handle; every pointer is valid for its length; nothing
/// else uses `states` during the call.
#[no_mangle]
pub unsafe extern "C" fn gqa_begin(
    plan: *const gqa_plan,
    batch: *const gqa_batch,
    states: *mut c_void,
    states_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let p = plan_ref(plan)?;
            let bt = batch_of(batch)?;
            if states.is_null() {
                return Err(null("states"));
            }
            let st = slice_mut("states", states.cast::<u8>(), states_len)?;
            p.begin(&bt, st)?;
        }
        Ok(())
    })
}

/// Runs work items `first .. first + count` of a step begun with
/// `gqa_begin`, writing only their states. Calls on disjoint item ranges
/// may run at the same time on any threads (each with its own `scratch`,
/// `gqa_plan_scratch_bytes`).
///
/// # Safety
/// `plan` is a live handle; every pointer is valid for its length; no other
/// call uses the same items' states or `scratch` at the same time.
#[no_mangle]
pub unsafe extern "C" fn gqa_run_items(
    plan: *const gqa_plan,
    batch: *const gqa_batch,
    first: usize,
    count: usize,
    states: *mut c_void,
    states_len: usize,
    scratch: *mut c_void,
    scratch_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let p = plan_ref(plan)?;
            let bt = batch_of(batch)?;
            let items = p.work_items();
            if first.checked_add(count).is_none_or(|e| e > items) {
                return Err(Fail(
                    GQA_ERR_OUT_OF_BOUNDS,
                    format!("items `first` = {first} + `count` = {count} exceed the plan's {items} work items"),
                ));
            }
            let (base, _) = states_base(p, states, states_len)?;
            let slen = p.state_len();
            // Only these items' states are borrowed: other threads may
            // hold the others.
            let st = slice_mut("states", base.add(first * slen), count * slen)?;
            if scratch.is_null() {
                return Err(null("scratch"));
            }
            let sc = slice_mut("scratch", scratch.cast::<u8>(), scratch_len)?;
            p.run_item_range(&bt, first, st, sc)?;
        }
        Ok(())
    })
}

/// Merges the item states of a step whose every item ran into `out`
/// `[T, H, head_dim_v]` and `lse` `[T, H]` (may be NULL).
///
/// # Safety
/// `plan` is a live handle; every pointer is valid for its length; no
/// `gqa_run_items` call on `states` is still running.
#[no_mangle]
pub unsafe extern "C" fn gqa_finish(
    plan: *const gqa_plan,
    batch: *const gqa_batch,
    states: *const c_void,
    states_len: usize,
    out: *mut f32,
    out_len: usize,
    lse: *mut f32,
    lse_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let p = plan_ref(plan)?;
            let bt = batch_of(batch)?;
            let (base, n) = states_base(p, states.cast_mut(), states_len)?;
            let st = slice("states", base.cast_const(), n)?;
            let out = slice_mut("out", out, out_len)?;
            let lse = if lse.is_null() {
                None
            } else {
                Some(slice_mut("lse", lse, lse_len)?)
            };
            p.finish_items(&bt, st, out, lse)?;
        }
        Ok(())
    })
}

/// Runs one step: `out` `[T, H, Dv]`, `lse` `[T, H]` (may be NULL),
/// `workspace` at least [`gqa_plan_workspace_bytes`].
///
/// # Safety
/// `plan` is a live handle; every pointer is valid for its length; `out`,
/// `lse` and `workspace` are not aliased by the inputs.
#[no_mangle]
pub unsafe extern "C" fn gqa_run(
    plan: *const gqa_plan,
    batch: *const gqa_batch,
    out: *mut f32,
    out_len: usize,
    lse: *mut f32,
    lse_len: usize,
    workspace: *mut c_void,
    workspace_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let p = plan_ref(plan)?;
            let bt = batch_of(batch)?;
            let out = slice_mut("out", out, out_len)?;
            let lse = if lse.is_null() {
                None
            } else {
                Some(slice_mut("lse", lse, lse_len)?)
            };
            let ws = slice_mut("workspace", workspace.cast::<u8>(), workspace_len)?;
            p.run(&bt, out, lse, ws)?;
        }
        Ok(())
    })
}

/// Merges the state `(other_out, other_lse)` into `(out, lse)`: `rows`
/// rows of `head_dim_v` (see [`crate::merge_states`]).
///
/// # Safety
/// Every pointer is valid for its length (`rows * head_dim_v` or `rows`);
/// `out`/`lse` do not alias the others.
#[no_mangle]
pub unsafe extern "C" fn gqa_merge_states(
    out: *mut f32,
    lse: *mut f32,
    other_out: *const f32,
    other_lse: *const f32,
    rows: usize,
    head_dim_v: usize,
) -> i32 {
    guard(|| {
        let n = rows.checked_mul(head_dim_v).ok_or_else(|| {
            Fail(
                GQA_ERR_OUT_OF_BOUNDS,
                "`rows * head_dim_v` overflows".into(),
            )
        })?;
        // SAFETY: the caller's contract.
        unsafe {
            crate::merge_states(
                slice_mut("out", out, n)?,
                slice_mut("lse", lse, rows)?,
                slice("other_out", other_out, n)?,
                slice("other_lse", other_lse, rows)?,
                head_dim_v,
            )?;
        }
        Ok(())
    })
}

/// Writes new tokens into `cache` (its `data` and, for int8, `scales`):
/// token `i` of sequence `b` at position `positions[b] + i` (see
/// [`crate::append`]). `n_seqs` is the number of sequences.
///
/// # Safety
/// Every pointer is valid for its length; K's and V's buffers do not
/// overlap (checked) and nothing else uses them during the call.
#[no_mangle]
pub unsafe extern "C" fn gqa_append(
    cache: *const gqa_cache,
    new: *const gqa_new_kv,
    positions: *const usize,
    n_seqs: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let c = read_struct("cache", cache)?;
            let n = read_struct("new", new)?;
            // Mutable views of K and V must not overlap (they would alias).
            let (ks, vs) = (spans(&c.k), spans(&c.v));
            for a in ks {
                for b in vs {
                    if a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1 {
                        return Err(invalid(
                            "`cache.k` and `cache.v` buffers overlap: append writes both".into(),
                        ));
                    }
                }
            }
            if ks[0].0 < ks[0].1 && ks[1].0 < ks[1].1 && ks[0].0 < ks[1].1 && ks[1].0 < ks[0].1 {
                return Err(invalid(
                    "`cache.k.data` and `cache.k.scales` overlap".into(),
                ));
            }
            if vs[0].0 < vs[0].1 && vs[1].0 < vs[1].1 && vs[0].0 < vs[1].1 && vs[1].0 < vs[0].1 {
                return Err(invalid(
                    "`cache.v.data` and `cache.v.scales` overlap".into(),
                ));
            }
            let positions = slice("positions", positions, n_seqs)?;
            let t = dtype("new.dtype", n.dtype)?;
            let src = |arg: &str, p: *const c_void, len: usize| -> R<KvData<'_>> {
                Ok(match t {
                    Dtype::F32 => KvData::F32(slice(arg, p.cast::<f32>(), len)?),
                    Dtype::F16 => KvData::F16(slice(arg, p.cast::<f16>(), len)?),
                    Dtype::Bf16 => KvData::Bf16(slice(arg, p.cast::<bf16>(), len)?),
                    other => {
                        return Err(Error::UnsupportedDtype {
                            arg: "new.dtype",
                            dtype: other,
                            reason: "new rows are given as f32, f16 or bf16",
                        }
                        .into())
                    }
                })
            };
            let new = NewKv {
                k: src("new.k", n.k, n.k_len)?,
                v: src("new.v", n.v, n.v_len)?,
                offsets: slice("new.offsets", n.offsets, n.offsets_len)?,
                kv_heads: n.kv_heads,
                head_dim_k: n.head_dim_k,
                head_dim_v: n.head_dim_v,
            };
            let (k, v) = (kv_data_mut("cache.k", &c.k)?, kv_data_mut("cache.v", &c.v)?);
            let t = |d, kv: &gqa_kv| {
                KvTensorMut::new(d, kv.outer_stride, kv.token_stride, kv.head_stride)
            };
            let p = |d, kv: &gqa_kv| {
                KvPagesMut::new(d, kv.outer_stride, kv.token_stride, kv.head_stride)
            };
            let mut m = match c.layout {
                GQA_LAYOUT_STRIDED => KvCacheMut::Strided {
                    k: t(k, &c.k),
                    v: t(v, &c.v),
                    capacity: c.capacity,
                },
                GQA_LAYOUT_PAGED => KvCacheMut::Paged {
                    k: p(k, &c.k),
                    v: p(v, &c.v),
                    page_size: c.page_size,
                    block_table: slice("cache.block_table", c.block_table, c.block_table_len)?,
                    blocks_per_seq: c.blocks_per_seq,
                },
                GQA_LAYOUT_RING => KvCacheMut::Ring {
                    k: t(k, &c.k),
                    v: t(v, &c.v),
                    capacity: c.capacity,
                },
                other => {
                    return Err(invalid(format!(
                        "`cache.layout` = {other} is not a GQA_LAYOUT_ value"
                    )))
                }
            };
            crate::append(&mut m, &new, positions)?;
        }
        Ok(())
    })
}
