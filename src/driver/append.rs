//! Writing new tokens' K and V into a cache, in place: [`append`], and
//! [`append_latent`] for a latent cache's single rows.
//!
//! A decode step reads the cache; the runtime must also write it, one or a
//! few tokens per sequence per step. [`append`] converts the new rows from
//! f32, f16 or bf16 into the cache's element type and writes them where the
//! cache's layout puts their positions (strided, paged or ring), touching
//! nothing else: its time is proportional to the new tokens only, and it
//! allocates nothing. Every destination is checked before the first write,
//! so a rejected call leaves the cache untouched.
//!
//! Both entries describe what they write as pools ([`Pool`]: one buffer,
//! its strides and the rows bound for it) placed by one layout rule
//! ([`Place`]): two pools for K and V, one for a latent cache, whose V is
//! the leading values of its K rows.

use half::slice::HalfFloatSliceExt;

use super::validate::check_quant;
use crate::error::{Error, Result};
use crate::formats::{Fp8, QK};
use crate::quant::{
    quantize_block_bytes, quantize_fp8, quantize_fp8_row, quantize_int8_row, quantize_q8_0,
};
use crate::shape::MAX_HEAD_DIM;
use crate::views::{KvCacheMut, KvData, KvDataMut, KvPagesMut, KvTensorMut, LatentCacheMut, NewKv};

/// Writes the new tokens of every sequence into `cache`: token `i` of
/// sequence `b` goes to position `positions[b] + i` (for a strided or paged
/// cache `positions[b]` is the sequence's length before the append; for a
/// ring it is the absolute position of its first new token).
///
/// Values are converted to the cache's type with round-to-nearest-even (a
/// value beyond the f16 range becomes ±inf, as IEEE conversion gives; NaN
/// stays NaN); same-type rows are copied bit for bit. Into a quantized
/// cache the rows are quantized on write with the encoders of
/// [`crate::quant`]: int8 and fp8e4m3_row compute each (token, KV head)
/// row's scale and write it next to the row, q8_0 each block's, fp8 divides
/// by the cache's per-head scale (finite values beyond the format
/// saturate). A NaN
/// or infinity in a row bound for a quantized cache is rejected
/// ([`Error::NonFinite`], naming `new.k` or `new.v` and the index).
/// Rejected, before anything is written: new rows of a quantized type,
/// mismatched lengths or dims, bad `offsets`, a quantized cache whose
/// strides or scales do not fit its type (as a step would reject), a
/// sequence whose new positions pass its capacity (`capacity`, the block
/// table row's `blocks_per_seq · page_size`, or, for a ring, more new tokens
/// than slots), a block-table entry outside the pool, and any row that
/// would fall outside its buffer.
pub fn append(cache: &mut KvCacheMut<'_>, new: &NewKv<'_>, positions: &[usize]) -> Result<()> {
    check_dims(&[
        ("kv_heads", new.kv_heads),
        ("head_dim_k", new.head_dim_k),
        ("head_dim_v", new.head_dim_v),
    ])?;
    let (dk, dv) = (new.head_dim_k, new.head_dim_v);
    let (place, mut pools) = match cache {
        KvCacheMut::Strided { k, v, capacity } => (
            Place::Strided {
                capacity: *capacity,
            },
            [
                Pool::tensor("k", k, dk, new.k, "new.k"),
                Pool::tensor("v", v, dv, new.v, "new.v"),
            ],
        ),
        KvCacheMut::Ring { k, v, capacity } => (
            Place::Ring {
                capacity: *capacity,
            },
            [
                Pool::tensor("k", k, dk, new.k, "new.k"),
                Pool::tensor("v", v, dv, new.v, "new.v"),
            ],
        ),
        KvCacheMut::Paged {
            k,
            v,
            page_size,
            block_table,
            blocks_per_seq,
        } => (
            Place::Paged {
                page_size: *page_size,
                block_table,
                blocks_per_seq: *blocks_per_seq,
            },
            [
                Pool::pages("k", "k_pages", k, dk, new.k, "new.k"),
                Pool::pages("v", "v_pages", v, dv, new.v, "new.v"),
            ],
        ),
    };
    write(&place, &mut pools, new.offsets, new.kv_heads, positions)
}

/// [`append`] for a latent cache (multi-head latent attention,
/// [`KvCache::latent`](crate::KvCache::latent)): each new token's rows are
/// written once, as K, and a step reads their leading `head_dim_v` values
/// as V. The rows are `new.k` (`T · G · head_dim_k` values); `new.v` must
/// be empty and `head_dim_v` is not read. Conversion, quantization (int8
/// and fp8e4m3_row: one scale per K row), capacity and every check are those of
/// [`append`]; errors name the pool `k` (`k_pages` for a paged one), as a
/// step over the latent cache does.
pub fn append_latent(
    cache: &mut LatentCacheMut<'_>,
    new: &NewKv<'_>,
    positions: &[usize],
) -> Result<()> {
    check_dims(&[("kv_heads", new.kv_heads), ("head_dim_k", new.head_dim_k)])?;
    if !new.v.is_empty() {
        return Err(Error::LengthMismatch {
            arg: "new.v",
            expected: 0,
            actual: new.v.len(),
        });
    }
    let dk = new.head_dim_k;
    let (place, mut pools) = match cache {
        LatentCacheMut::Strided { kv, capacity } => (
            Place::Strided {
                capacity: *capacity,
            },
            [Pool::tensor("k", kv, dk, new.k, "new.k")],
        ),
        LatentCacheMut::Ring { kv, capacity } => (
            Place::Ring {
                capacity: *capacity,
            },
            [Pool::tensor("k", kv, dk, new.k, "new.k")],
        ),
        LatentCacheMut::Paged {
            kv,
            page_size,
            block_table,
            blocks_per_seq,
        } => (
            Place::Paged {
                page_size: *page_size,
                block_table,
                blocks_per_seq: *blocks_per_seq,
            },
            [Pool::pages("k", "k_pages", kv, dk, new.k, "new.k")],
        ),
    };
    write(&place, &mut pools, new.offsets, new.kv_heads, positions)
}

/// Where position `j` of sequence `seq` lives: a layout without its
/// buffers.
enum Place<'b> {
    /// `capacity` positions per sequence at the view's strides.
    Strided { capacity: usize },
    /// Slot `j % page_size` of page `block_table[seq · blocks_per_seq + j /
    /// page_size]`.
    Paged {
        page_size: usize,
        block_table: &'b [u32],
        blocks_per_seq: usize,
    },
    /// Slot `j % capacity` of the sequence's ring.
    Ring { capacity: usize },
}

/// One buffer being written and the rows bound for it.
struct Pool<'p, 'a> {
    /// The buffer's name in bounds errors (`k`, `v`).
    arg: &'static str,
    /// Its name in type and stride errors (`k`, `v`, `k_pages`, `v_pages`).
    pool_arg: &'static str,
    data: &'p mut KvDataMut<'a>,
    /// Sequence (or page) stride, token stride, head stride, in values.
    strides: [usize; 3],
    /// Values per row.
    d: usize,
    /// The name of `d` in errors (`head_dim_k`, `head_dim_v`).
    dim_arg: &'static str,
    /// The new rows, `T · G · d` values.
    src: KvData<'p>,
    src_arg: &'static str,
}

impl<'p, 'a> Pool<'p, 'a> {
    fn tensor(
        arg: &'static str,
        t: &'p mut KvTensorMut<'a>,
        d: usize,
        src: KvData<'p>,
        src_arg: &'static str,
    ) -> Self {
        Pool {
            arg,
            pool_arg: arg,
            strides: [t.seq_stride, t.token_stride, t.head_stride],
            data: &mut t.data,
            d,
            dim_arg: if arg == "k" {
                "head_dim_k"
            } else {
                "head_dim_v"
            },
            src,
            src_arg,
        }
    }

    fn pages(
        arg: &'static str,
        pool_arg: &'static str,
        p: &'p mut KvPagesMut<'a>,
        d: usize,
        src: KvData<'p>,
        src_arg: &'static str,
    ) -> Self {
        Pool {
            arg,
            pool_arg,
            strides: [p.page_stride, p.token_stride, p.head_stride],
            data: &mut p.data,
            d,
            dim_arg: if arg == "k" {
                "head_dim_k"
            } else {
                "head_dim_v"
            },
            src,
            src_arg,
        }
    }
}

/// Every `(name, value)` is at least 1.
fn check_dims(dims: &[(&'static str, usize)]) -> Result<()> {
    for &(arg, value) in dims {
        if value == 0 {
            return Err(Error::InvalidDim {
                arg,
                value,
                reason: "must be at least 1",
            });
        }
    }
    Ok(())
}

/// Checks everything ([`check_new`], [`check_room`]), then converts and
/// writes every pool's rows (quantized rows go through one f32 row
/// buffer, zeroed once per call).
fn write(
    place: &Place<'_>,
    pools: &mut [Pool<'_, '_>],
    offsets: &[usize],
    g: usize,
    positions: &[usize],
) -> Result<()> {
    check_new(place, pools, offsets, g, positions.len())?;
    check_room(place, pools, offsets, g, positions)?;
    let mut buf = [0f32; MAX_HEAD_DIM];
    for (seq, &start) in positions.iter().enumerate() {
        for (i, tok) in (offsets[seq]..offsets[seq + 1]).enumerate() {
            let j = start + i;
            for pool in pools.iter_mut() {
                let (o, head) = row_offset(place, pool, seq, j, g)?;
                let d = pool.d;
                for h in 0..g {
                    let so = (tok * g + h) * d;
                    write_row(pool.data, o + h * head, h, &pool.src, so, d, &mut buf);
                }
            }
        }
    }
    Ok(())
}

/// The new rows against the cache, for `b` sequences: page size, offsets,
/// source types, the destination's types and scales, lengths, and rows
/// bound for a quantized cache finite.
fn check_new(
    place: &Place<'_>,
    pools: &[Pool<'_, '_>],
    offsets: &[usize],
    g: usize,
    b: usize,
) -> Result<()> {
    if let Place::Paged { page_size: 0, .. } = place {
        return Err(Error::InvalidDim {
            arg: "page_size",
            value: 0,
            reason: "must be at least 1",
        });
    }
    check_offsets(offsets, b)?;
    for p in pools {
        if p.src.dtype().is_quantized() {
            return Err(Error::UnsupportedDtype {
                arg: p.src_arg,
                dtype: p.src.dtype(),
                reason: "new rows are given as f32, f16 or bf16 and quantized on write",
            });
        }
    }
    for p in pools {
        check_destination(p, g)?;
    }
    let t = offsets[b];
    for p in pools {
        let expected =
            t.checked_mul(g)
                .and_then(|x| x.checked_mul(p.d))
                .ok_or(Error::Overflow {
                    arg: p.src_arg,
                    seq: 0,
                })?;
        if p.src.len() != expected {
            return Err(Error::LengthMismatch {
                arg: p.src_arg,
                expected,
                actual: p.src.len(),
            });
        }
    }
    // Rows bound for a quantized cache must be finite (a NaN would poison
    // its row's or block's scale).
    for p in pools {
        if p.data.dtype().is_quantized() {
            check_finite(p.src_arg, &p.src)?;
        }
    }
    Ok(())
}

/// Pass 1 of an append: every destination row is inside its buffer (and
/// the new positions inside the sequence's capacity) before anything is
/// written.
fn check_room(
    place: &Place<'_>,
    pools: &[Pool<'_, '_>],
    offsets: &[usize],
    g: usize,
    positions: &[usize],
) -> Result<()> {
    for (seq, &start) in positions.iter().enumerate() {
        let n = offsets[seq + 1] - offsets[seq];
        if n == 0 {
            continue;
        }
        let capacity = match *place {
            Place::Strided { capacity } => Some(capacity),
            Place::Paged {
                page_size,
                blocks_per_seq,
                ..
            } => Some(page_size.saturating_mul(blocks_per_seq)),
            Place::Ring { capacity } => {
                if n > capacity {
                    return Err(Error::AppendBeyondCapacity {
                        seq,
                        position: start,
                        new_tokens: n,
                        capacity,
                    });
                }
                None
            }
        };
        let end = start.checked_add(n).ok_or(Error::Overflow {
            arg: "positions",
            seq,
        })?;
        if let Some(capacity) = capacity {
            if end > capacity {
                return Err(Error::AppendBeyondCapacity {
                    seq,
                    position: start,
                    new_tokens: n,
                    capacity,
                });
            }
        }
        for j in start..end {
            for pool in pools {
                row_offset(place, pool, seq, j, g)?;
            }
        }
    }
    Ok(())
}

/// `offsets` has `b + 1` non-decreasing entries starting at 0.
fn check_offsets(offsets: &[usize], b: usize) -> Result<()> {
    if offsets.len() != b + 1 {
        return Err(Error::LengthMismatch {
            arg: "new.offsets",
            expected: b + 1,
            actual: offsets.len(),
        });
    }
    if offsets[0] != 0 {
        return Err(Error::InvalidQOffsets {
            index: 0,
            value: offsets[0],
            reason: "the first offset must be 0",
        });
    }
    for i in 1..=b {
        if offsets[i] < offsets[i - 1] {
            return Err(Error::InvalidQOffsets {
                index: i,
                value: offsets[i],
                reason: "offsets must not decrease",
            });
        }
    }
    Ok(())
}

/// Element offset of head 0 of position `j` of sequence `seq` in `pool`,
/// and its head stride, checked (with checked arithmetic) so that all `g`
/// heads' rows lie inside the buffer.
fn row_offset(
    place: &Place<'_>,
    pool: &Pool<'_, '_>,
    seq: usize,
    j: usize,
    g: usize,
) -> Result<(usize, usize)> {
    let overflow = |arg| Error::Overflow { arg, seq };
    let (arg, [outer, token, head], len) = (pool.arg, pool.strides, pool.data.len());
    // The row's base offset: page (or sequence) and slot.
    let at = |outer_index: usize, slot: usize| {
        outer_index
            .checked_mul(outer)
            .and_then(|x| slot.checked_mul(token)?.checked_add(x))
    };
    let base = match *place {
        Place::Strided { .. } => at(seq, j),
        Place::Ring { capacity } => at(seq, j % capacity),
        Place::Paged {
            page_size,
            block_table,
            blocks_per_seq,
        } => {
            let block = j / page_size;
            let entry = seq
                .checked_mul(blocks_per_seq)
                .and_then(|x| x.checked_add(block))
                .ok_or(overflow("block_table"))?;
            let page = *block_table.get(entry).ok_or(Error::BlockTableTooShort {
                seq,
                needed: entry + 1,
                available: block_table.len(),
            })?;
            // A zero page stride aliases every page onto the first.
            let pages = len.checked_div(outer).unwrap_or(usize::MAX);
            if page as usize >= pages {
                return Err(Error::PageOutOfRange {
                    arg,
                    seq,
                    block,
                    page,
                    pages,
                });
            }
            at(page as usize, j % page_size)
        }
    };
    let base = base.ok_or(overflow(arg))?;
    let needed = (g - 1)
        .checked_mul(head)
        .and_then(|x| x.checked_add(base))
        .and_then(|x| x.checked_add(pool.d))
        .ok_or(overflow(arg))?;
    if needed > len {
        return Err(Error::OutOfBounds {
            arg,
            seq,
            needed,
            len,
        });
    }
    Ok((base, head))
}

/// The first non-finite element of a new-rows buffer, as an error.
fn check_finite(arg: &'static str, data: &KvData<'_>) -> Result<()> {
    let bad = |index: usize, value: f32| Err(Error::NonFinite { arg, index, value });
    match data {
        KvData::F32(s) => match s.iter().position(|x| !x.is_finite()) {
            Some(i) => bad(i, s[i]),
            None => Ok(()),
        },
        KvData::F16(s) => match s.iter().position(|x| !x.is_finite()) {
            Some(i) => bad(i, s[i].to_f32()),
            None => Ok(()),
        },
        KvData::Bf16(s) => match s.iter().position(|x| !x.is_finite()) {
            Some(i) => bad(i, s[i].to_f32()),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// What a quantized destination needs beyond its extent (checked once per
/// call): the strides and scale lengths a step would demand, fp8 scales
/// finite and positive, and head dims a stack row buffer holds.
fn check_destination(pool: &Pool<'_, '_>, g: usize) -> Result<()> {
    let (data, d) = (pool.data.as_data(), pool.d);
    if !data.dtype().is_quantized() {
        return Ok(());
    }
    if d > MAX_HEAD_DIM {
        return Err(Error::InvalidDim {
            arg: pool.dim_arg,
            value: d,
            reason: "exceeds the supported maximum",
        });
    }
    // Rows are written whole: a multiple of 32 values, or a row format's
    // whole row (576 values for fp8_ds_mla).
    if !d.is_multiple_of(data.dtype().block_len()) {
        return Err(Error::InvalidDim {
            arg: pool.dim_arg,
            value: d,
            reason: data.dtype().head_dim_rule(),
        });
    }
    check_quant(pool.pool_arg, &data, pool.strides, g, d)?;
    if let KvData::Fp8E4M3 { scales, .. } | KvData::Fp8E5M2 { scales, .. } = data {
        if let Some(&bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::InvalidScale { value: bad });
        }
    }
    Ok(())
}

/// Converts `d` source values from `src[so..]` into `dst[o..]` (KV head
/// `head`, for an fp8 cache's per-head scale). Quantized destinations were
/// checked by [`check_destination`] and their rows by [`check_finite`], so
/// the encoders cannot fail here.
fn write_row(
    dst: &mut KvDataMut<'_>,
    o: usize,
    head: usize,
    src: &KvData<'_>,
    so: usize,
    d: usize,
    buf: &mut [f32; MAX_HEAD_DIM],
) {
    if dst.dtype().is_quantized() {
        let row = &mut buf[..d];
        match src {
            KvData::F32(s) => row.copy_from_slice(&s[so..so + d]),
            KvData::F16(s) => s[so..so + d].convert_to_f32_slice(row),
            KvData::Bf16(s) => s[so..so + d].convert_to_f32_slice(row),
            _ => unreachable!("quantized sources are rejected before any write"),
        }
        let done = match dst {
            KvDataMut::Int8 { values, scales } => {
                quantize_int8_row(row, &mut values[o..o + d]).map(|sc| scales[o / d] = sc)
            }
            KvDataMut::Q8_0(blocks) => quantize_q8_0(row, &mut blocks[o / QK..(o + d) / QK]),
            KvDataMut::Blocks(b) => {
                let t = b.dtype();
                let (len, n) = t.block().map_or((1, 0), |i| (i.len, i.bytes));
                quantize_block_bytes(t, row, &mut b.bytes_mut()[o / len * n..(o + d) / len * n])
            }
            KvDataMut::Fp8E4M3 { values, scales } => {
                let sc = scales[if scales.len() == 1 { 0 } else { head }];
                quantize_fp8(row, sc, Fp8::E4M3, &mut values[o..o + d])
            }
            KvDataMut::Fp8E5M2 { values, scales } => {
                let sc = scales[if scales.len() == 1 { 0 } else { head }];
                quantize_fp8(row, sc, Fp8::E5M2, &mut values[o..o + d])
            }
            KvDataMut::Fp8E4M3Row { values, scales } => {
                quantize_fp8_row(row, &mut values[o..o + d]).map(|sc| scales[o / d] = sc)
            }
            _ => Ok(()),
        };
        debug_assert!(done.is_ok(), "append pre-checks every quantized write");
        return;
    }
    match (dst, src) {
        (KvDataMut::F32(x), KvData::F32(s)) => x[o..o + d].copy_from_slice(&s[so..so + d]),
        (KvDataMut::F16(x), KvData::F16(s)) => x[o..o + d].copy_from_slice(&s[so..so + d]),
        (KvDataMut::Bf16(x), KvData::Bf16(s)) => x[o..o + d].copy_from_slice(&s[so..so + d]),
        (KvDataMut::F16(x), KvData::F32(s)) => x[o..o + d].convert_from_f32_slice(&s[so..so + d]),
        (KvDataMut::Bf16(x), KvData::F32(s)) => x[o..o + d].convert_from_f32_slice(&s[so..so + d]),
        (KvDataMut::F32(x), KvData::F16(s)) => s[so..so + d].convert_to_f32_slice(&mut x[o..o + d]),
        (KvDataMut::F32(x), KvData::Bf16(s)) => {
            s[so..so + d].convert_to_f32_slice(&mut x[o..o + d])
        }
        // Between the two 16-bit types: through f32 (exact), a stack chunk
        // at a time, with the vectorised slice conversions.
        (KvDataMut::F16(x), KvData::Bf16(s)) => {
            let mut tmp = [0f32; 64];
            for (y, v) in x[o..o + d].chunks_mut(64).zip(s[so..so + d].chunks(64)) {
                v.convert_to_f32_slice(&mut tmp[..v.len()]);
                y.convert_from_f32_slice(&tmp[..v.len()]);
            }
        }
        (KvDataMut::Bf16(x), KvData::F16(s)) => {
            let mut tmp = [0f32; 64];
            for (y, v) in x[o..o + d].chunks_mut(64).zip(s[so..so + d].chunks(64)) {
                v.convert_to_f32_slice(&mut tmp[..v.len()]);
                y.convert_from_f32_slice(&tmp[..v.len()]);
            }
        }
        _ => unreachable!("quantized sources are rejected before any write"),
    }
}
