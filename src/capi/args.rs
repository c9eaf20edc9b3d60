//! Reading the C arguments: statuses and messages, null and length checks, the C structs turned into the crate's views.

use super::*;

/// A failed call: the status and its message.
pub(super) struct Fail(pub(super) i32, pub(super) String);

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

pub(super) type R<T> = std::result::Result<T, Fail>;

thread_local! {
    pub(super) static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(super) fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, catching panics, and turns its result into a status.
pub(super) fn guard(f: impl FnOnce() -> R<()>) -> i32 {
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

pub(super) fn null(arg: &str) -> Fail {
    Fail(GQA_ERR_NULL, format!("`{arg}` is NULL"))
}

pub(super) fn invalid(msg: String) -> Fail {
    Fail(GQA_ERR_INVALID_ARGUMENT, msg)
}

/// Reads a versioned struct: `struct_size` must be at least this
/// version's size; fields past it are ignored.
///
/// # Safety
/// `p` is null or valid for reads of `struct_size` bytes (and of at least a
/// `usize`).
pub(super) unsafe fn read_struct<T: Copy>(arg: &str, p: *const T) -> R<T> {
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

/// [`read_struct`] for a struct that grew: a `struct_size` of at least
/// `since` bytes (the size of its first version) is read up to that size,
/// the later fields as zero (their defaults).
///
/// # Safety
/// As [`read_struct`]; `T` is valid with every byte zero.
pub(super) unsafe fn read_struct_since<T: Copy>(arg: &str, p: *const T, since: usize) -> R<T> {
    if p.is_null() {
        return Err(null(arg));
    }
    // SAFETY: the caller's contract: `p` starts with its `usize` size.
    let size = unsafe { p.cast::<usize>().read_unaligned() };
    if size < since {
        return Err(Fail(
            GQA_ERR_STRUCT_SIZE,
            format!(
                "`{arg}.struct_size` = {size} is smaller than the first version's {since} bytes"
            ),
        ));
    }
    let n = size.min(size_of::<T>());
    let mut out = std::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: `n <= size` bytes are readable at `p` and `n <= size_of::<T>()`
    // fit in `out`; `T` is valid with any bytes past `n` zero (the
    // caller's contract), and the first `n` come from a `T` the caller
    // wrote.
    unsafe {
        std::ptr::copy_nonoverlapping(p.cast::<u8>(), out.as_mut_ptr().cast::<u8>(), n);
        Ok(out.assume_init())
    }
}

/// The unit of a `GQA_UNIT_…` code (`None` for `GQA_UNIT_AUTO`).
pub(super) fn unit_of(code: i32) -> R<Option<Unit>> {
    Ok(Some(match code {
        GQA_UNIT_AUTO => return Ok(None),
        GQA_UNIT_F32_FMA => Unit::F32Fma,
        GQA_UNIT_BF16_DOT => Unit::Bf16Dot,
        GQA_UNIT_INT8_DOT => Unit::Int8Dot,
        GQA_UNIT_AMX_BF16 => Unit::AmxBf16,
        GQA_UNIT_AMX_INT8 => Unit::AmxInt8,
        c => {
            return Err(invalid(format!(
                "`options.unit` = {c} is not a GQA_UNIT_ code"
            )))
        }
    }))
}

/// The `GQA_UNIT_…` code of a unit.
pub(super) fn unit_code(u: Unit) -> i32 {
    match u {
        Unit::F32Fma => GQA_UNIT_F32_FMA,
        Unit::Bf16Dot => GQA_UNIT_BF16_DOT,
        Unit::Int8Dot => GQA_UNIT_INT8_DOT,
        Unit::AmxBf16 => GQA_UNIT_AMX_BF16,
        Unit::AmxInt8 => GQA_UNIT_AMX_INT8,
    }
}

/// The precision class of a `GQA_PRECISION_…` code.
pub(super) fn precision_of(code: i32) -> R<Precision> {
    match code {
        GQA_PRECISION_EXACT => Ok(Precision::Exact),
        GQA_PRECISION_FAST => Ok(Precision::Fast),
        c => Err(invalid(format!(
            "`options.precision` = {c} is not a GQA_PRECISION_ code"
        ))),
    }
}

/// A slice of `len` `T` at `p` (null allowed only when `len == 0`),
/// checked for alignment.
///
/// # Safety
/// `p` is null or valid for reads of `len` `T` for `'a`.
pub(super) unsafe fn slice<'a, T>(arg: &str, p: *const T, len: usize) -> R<&'a [T]> {
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
pub(super) unsafe fn slice_mut<'a, T>(arg: &str, p: *mut T, len: usize) -> R<&'a mut [T]> {
    // SAFETY: forwarded; the checks are the same.
    unsafe { slice(arg, p.cast_const(), len)? };
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: checked above (non-null, aligned, sane length); the caller
    // guarantees exclusive access.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

pub(super) fn dtype(arg: &str, code: i32) -> R<Dtype> {
    Dtype::from_abi_code(code)
        .ok_or_else(|| invalid(format!("`{arg}` = {code} is not a GQA_DTYPE_ value")))
}

pub(super) fn tier_of(code: i32) -> R<Tier> {
    Tier::from_abi_code(code)
        .ok_or_else(|| invalid(format!("`tier` = {code} is not a GQA_TIER_ value")))
}

pub(super) fn tier_code(t: Tier) -> i32 {
    t.abi_code()
}

/// A block format's `len` (values) must be whole blocks (of 32 values; of
/// 576 for fp8_ds_mla).
fn whole_blocks(arg: &str, t: Dtype, n: usize) -> R<()> {
    if let Some(b) = t.block() {
        if !n.is_multiple_of(b.len) {
            return Err(invalid(format!(
                "`{arg}.len` = {n} is not a whole number of {t} blocks ({} values)",
                b.len
            )));
        }
    }
    Ok(())
}

/// Bytes of `n` values (whole blocks) of block format `t`.
fn block_bytes(t: Dtype, n: usize) -> usize {
    t.block().map_or(0, |b| (n / b.len).saturating_mul(b.bytes))
}

/// The KV data of a `gqa_kv` (read-only).
///
/// # Safety
/// `kv.data` / `kv.scales` are valid for their lengths for `'a`.
pub(super) unsafe fn kv_data<'a>(arg: &str, kv: &gqa_kv) -> R<KvData<'a>> {
    let t = dtype(&format!("{arg}.dtype"), kv.dtype)?;
    let (d, n) = (kv.data.cast_const(), kv.len);
    whole_blocks(arg, t, n)?;
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
            Dtype::Fp8E4M3Row => KvData::fp8_row(slice(arg, d.cast::<u8>(), n)?, scales()?),
            _ => {
                let bytes = slice(arg, d.cast::<u8>(), block_bytes(t, n))?;
                KvData::Blocks(Blocks::new(t, bytes).map_err(Fail::from)?)
            }
        })
    }
}

/// Bytes `[start, end)` a `gqa_kv`'s data and scales span.
pub(super) fn spans(kv: &gqa_kv) -> [(usize, usize); 2] {
    let bytes = match dtype("", kv.dtype) {
        Ok(Dtype::F32) => kv.len.saturating_mul(4),
        Ok(Dtype::F16 | Dtype::Bf16) => kv.len.saturating_mul(2),
        Ok(t) if t.block().is_some() => block_bytes(t, kv.len),
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
pub(super) unsafe fn kv_data_mut<'a>(arg: &str, kv: &gqa_kv) -> R<KvDataMut<'a>> {
    let t = dtype(&format!("{arg}.dtype"), kv.dtype)?;
    let (d, n) = (kv.data, kv.len);
    whole_blocks(arg, t, n)?;
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
            Dtype::Fp8E4M3Row => KvDataMut::fp8_row(
                slice_mut(arg, d.cast::<u8>(), n)?,
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
            _ => {
                let bytes = slice_mut(arg, d.cast::<u8>(), block_bytes(t, n))?;
                KvDataMut::Blocks(BlocksMut::new(t, bytes).map_err(Fail::from)?)
            }
        })
    }
}

/// The read-only cache of a `gqa_cache`, for `n_seqs` sequences.
///
/// # Safety
/// Every pointer in `c` is valid for its length for `'a`.
pub(super) unsafe fn cache<'a>(c: &gqa_cache, n_seqs: usize) -> R<KvCache<'a>> {
    // A latent cache: V is K's view (`c.v` is not read).
    let cv = match c.latent {
        0 => &c.v,
        1 => &c.k,
        x => return Err(invalid(format!("`cache.latent` = {x} is not 0 or 1"))),
    };
    // SAFETY: forwarded.
    let (k, v) = unsafe { (kv_data("cache.k", &c.k)?, kv_data("cache.v", cv)?) };
    let t = |d, kv: &gqa_kv| KvTensor::new(d, kv.outer_stride, kv.token_stride, kv.head_stride);
    let p = |d, kv: &gqa_kv| KvPages::new(d, kv.outer_stride, kv.token_stride, kv.head_stride);
    Ok(match c.layout {
        GQA_LAYOUT_STRIDED => KvCache::strided(t(k, &c.k), t(v, cv)),
        GQA_LAYOUT_PAGED => KvCache::Paged(PagedKv {
            k: p(k, &c.k),
            v: p(v, cv),
            page_size: c.page_size,
            // SAFETY: the caller's contract on `block_table`.
            block_table: unsafe { slice("cache.block_table", c.block_table, c.block_table_len)? },
            blocks_per_seq: c.blocks_per_seq,
        }),
        GQA_LAYOUT_RING => KvCache::Ring(RingKv {
            k: t(k, &c.k),
            v: t(v, cv),
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
pub(super) unsafe fn plan_ref<'a>(p: *const gqa_plan) -> R<&'a Plan> {
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
pub(super) unsafe fn put<T>(arg: &str, out: *mut T, value: T) -> R<()> {
    if out.is_null() {
        return Err(null(arg));
    }
    // SAFETY: non-null, and the caller's contract.
    unsafe { out.write_unaligned(value) };
    Ok(())
}
