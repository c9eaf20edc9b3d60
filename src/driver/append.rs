//! Writing new tokens' K and V into a cache, in place: [`append`].
//!
//! A decode step reads the cache; the runtime must also write it, one or a
//! few tokens per sequence per step. [`append`] converts the new rows from
//! f32, f16 or bf16 into the cache's element type and writes them where the
//! cache's layout puts their positions (strided, paged or ring), touching
//! nothing else: its time is proportional to the new tokens only, and it
//! allocates nothing. Every destination is checked before the first write,
//! so a rejected call leaves the cache untouched.

use half::slice::HalfFloatSliceExt;

use super::validate::check_quant;
use crate::error::{Error, Result};
use crate::formats::{Fp8, QK};
use crate::quant::{quantize_block_bytes, quantize_fp8, quantize_int8_row, quantize_q8_0};
use crate::shape::MAX_HEAD_DIM;
use crate::views::{KvCacheMut, KvData, KvDataMut, KvPagesMut, KvTensorMut, NewKv};

/// Writes the new tokens of every sequence into `cache`: token `i` of
/// sequence `b` goes to position `positions[b] + i` (for a strided or paged
/// cache `positions[b]` is the sequence's length before the append; for a
/// ring it is the absolute position of its first new token).
///
/// Values are converted to the cache's type with round-to-nearest-even (a
/// value beyond the f16 range becomes ±inf, as IEEE conversion gives; NaN
/// stays NaN); same-type rows are copied bit for bit. Into a quantized
/// cache the rows are quantized on write with the encoders of
/// [`crate::quant`]: int8 computes each (token, KV head) row's scale and
/// writes it next to the row, q8_0 each block's, fp8 divides by the
/// cache's per-head scale (finite values beyond the format saturate). A NaN
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
    check_new(cache, new, positions.len())?;
    check_room(cache, new, positions)?;
    let (g, dk, dv) = (new.kv_heads, new.head_dim_k, new.head_dim_v);
    // Pass 2: convert and write (quantized rows go through one f32 row
    // buffer, zeroed once per call).
    let mut buf = [0f32; MAX_HEAD_DIM];
    for (seq, &start) in positions.iter().enumerate() {
        for (i, tok) in (new.offsets[seq]..new.offsets[seq + 1]).enumerate() {
            let j = start + i;
            let (ko, vo, kh, vh) = row_offsets(cache, seq, j, g, dk, dv)?;
            let (kd, vd) = match cache {
                KvCacheMut::Strided { k, v, .. } | KvCacheMut::Ring { k, v, .. } => {
                    (&mut k.data, &mut v.data)
                }
                KvCacheMut::Paged { k, v, .. } => (&mut k.data, &mut v.data),
            };
            for h in 0..g {
                write_row(kd, ko + h * kh, h, &new.k, (tok * g + h) * dk, dk, &mut buf);
                write_row(vd, vo + h * vh, h, &new.v, (tok * g + h) * dv, dv, &mut buf);
            }
        }
    }
    Ok(())
}

/// The new rows against the cache, for `b` sequences: dims, page size,
/// offsets, source types, the destination's types and scales, lengths,
/// and rows bound for a quantized cache finite.
fn check_new(cache: &KvCacheMut<'_>, new: &NewKv<'_>, b: usize) -> Result<()> {
    let (g, dk, dv) = (new.kv_heads, new.head_dim_k, new.head_dim_v);
    for (arg, value) in [("kv_heads", g), ("head_dim_k", dk), ("head_dim_v", dv)] {
        if value == 0 {
            return Err(Error::InvalidDim {
                arg,
                value,
                reason: "must be at least 1",
            });
        }
    }
    if let KvCacheMut::Paged { page_size: 0, .. } = cache {
        return Err(Error::InvalidDim {
            arg: "page_size",
            value: 0,
            reason: "must be at least 1",
        });
    }
    check_offsets(new.offsets, b)?;
    for (arg, data) in [("new.k", &new.k), ("new.v", &new.v)] {
        if data.dtype().is_quantized() {
            return Err(Error::UnsupportedDtype {
                arg,
                dtype: data.dtype(),
                reason: "new rows are given as f32, f16 or bf16 and quantized on write",
            });
        }
    }
    check_destination(cache, g, dk, dv)?;
    let t = new.offsets[b];
    for (arg, data, d) in [("new.k", &new.k, dk), ("new.v", &new.v, dv)] {
        let expected = t
            .checked_mul(g)
            .and_then(|x| x.checked_mul(d))
            .ok_or(Error::Overflow { arg, seq: 0 })?;
        if data.len() != expected {
            return Err(Error::LengthMismatch {
                arg,
                expected,
                actual: data.len(),
            });
        }
    }
    // Rows bound for a quantized cache must be finite (a NaN would poison
    // its row's or block's scale).
    let (kq, vq) = match cache {
        KvCacheMut::Strided { k, v, .. } | KvCacheMut::Ring { k, v, .. } => {
            (k.data.dtype(), v.data.dtype())
        }
        KvCacheMut::Paged { k, v, .. } => (k.data.dtype(), v.data.dtype()),
    };
    for (arg, data, q) in [("new.k", &new.k, kq), ("new.v", &new.v, vq)] {
        if q.is_quantized() {
            check_finite(arg, data)?;
        }
    }
    Ok(())
}

/// Pass 1 of an append: every destination row is inside its buffer (and
/// the new positions inside the sequence's capacity) before anything is
/// written.
fn check_room(cache: &KvCacheMut<'_>, new: &NewKv<'_>, positions: &[usize]) -> Result<()> {
    let (g, dk, dv) = (new.kv_heads, new.head_dim_k, new.head_dim_v);
    for (seq, &start) in positions.iter().enumerate() {
        let n = new.offsets[seq + 1] - new.offsets[seq];
        if n == 0 {
            continue;
        }
        let capacity = match cache {
            KvCacheMut::Strided { capacity, .. } => Some(*capacity),
            KvCacheMut::Paged {
                page_size,
                blocks_per_seq,
                ..
            } => Some(page_size.saturating_mul(*blocks_per_seq)),
            KvCacheMut::Ring { capacity, .. } => {
                if n > *capacity {
                    return Err(Error::AppendBeyondCapacity {
                        seq,
                        position: start,
                        new_tokens: n,
                        capacity: *capacity,
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
            row_offsets(cache, seq, j, g, dk, dv)?;
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

/// Element offsets of head 0 of position `j` of sequence `seq` in the K and
/// V buffers, and their head strides, checked (with checked arithmetic) so
/// that all `g` heads' rows lie inside the buffers.
fn row_offsets(
    cache: &KvCacheMut<'_>,
    seq: usize,
    j: usize,
    g: usize,
    dk: usize,
    dv: usize,
) -> Result<(usize, usize, usize, usize)> {
    let overflow = |arg| Error::Overflow { arg, seq };
    // Offset of head 0's row and the head stride, for one pool or view.
    let place = |arg: &'static str, base: Option<usize>, head: usize, d: usize, len: usize| {
        let base = base.ok_or(overflow(arg))?;
        let needed = (g - 1)
            .checked_mul(head)
            .and_then(|x| x.checked_add(base))
            .and_then(|x| x.checked_add(d))
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
    };
    let strided = |t: &KvTensorMut<'_>, slot: usize| {
        seq.checked_mul(t.seq_stride)
            .and_then(|x| slot.checked_mul(t.token_stride)?.checked_add(x))
    };
    let (k, v) = match cache {
        KvCacheMut::Strided { k, v, .. } => (
            place("k", strided(k, j), k.head_stride, dk, k.data.len())?,
            place("v", strided(v, j), v.head_stride, dv, v.data.len())?,
        ),
        KvCacheMut::Ring { k, v, capacity } => {
            let slot = j % capacity;
            (
                place("k", strided(k, slot), k.head_stride, dk, k.data.len())?,
                place("v", strided(v, slot), v.head_stride, dv, v.data.len())?,
            )
        }
        KvCacheMut::Paged {
            k,
            v,
            page_size,
            block_table,
            blocks_per_seq,
        } => {
            let block = j / page_size;
            let entry = seq
                .checked_mul(*blocks_per_seq)
                .and_then(|x| x.checked_add(block))
                .ok_or(overflow("block_table"))?;
            let page = *block_table.get(entry).ok_or(Error::BlockTableTooShort {
                seq,
                needed: entry + 1,
                available: block_table.len(),
            })?;
            let slot = j % page_size;
            let at = |p: &KvPagesMut<'_>, arg: &'static str, d: usize| {
                // A zero page stride aliases every page onto the first.
                let pages = p
                    .data
                    .len()
                    .checked_div(p.page_stride)
                    .unwrap_or(usize::MAX);
                if page as usize >= pages {
                    return Err(Error::PageOutOfRange {
                        arg,
                        seq,
                        block,
                        page,
                        pages,
                    });
                }
                let base = (page as usize)
                    .checked_mul(p.page_stride)
                    .and_then(|x| slot.checked_mul(p.token_stride)?.checked_add(x));
                place(arg, base, p.head_stride, d, p.data.len())
            };
            (at(k, "k", dk)?, at(v, "v", dv)?)
        }
    };
    Ok((k.0, v.0, k.1, v.1))
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
fn check_destination(cache: &KvCacheMut<'_>, g: usize, dk: usize, dv: usize) -> Result<()> {
    let pools: [(&'static str, KvData<'_>, [usize; 3], usize); 2] = match cache {
        KvCacheMut::Strided { k, v, .. } | KvCacheMut::Ring { k, v, .. } => [
            (
                "k",
                k.data.as_data(),
                [k.seq_stride, k.token_stride, k.head_stride],
                dk,
            ),
            (
                "v",
                v.data.as_data(),
                [v.seq_stride, v.token_stride, v.head_stride],
                dv,
            ),
        ],
        KvCacheMut::Paged { k, v, .. } => [
            (
                "k_pages",
                k.data.as_data(),
                [k.page_stride, k.token_stride, k.head_stride],
                dk,
            ),
            (
                "v_pages",
                v.data.as_data(),
                [v.page_stride, v.token_stride, v.head_stride],
                dv,
            ),
        ],
    };
    for (arg, data, strides, d) in pools {
        if !data.dtype().is_quantized() {
            continue;
        }
        let dim_arg = if arg.starts_with('k') {
            "head_dim_k"
        } else {
            "head_dim_v"
        };
        if d > MAX_HEAD_DIM {
            return Err(Error::InvalidDim {
                arg: dim_arg,
                value: d,
                reason: "exceeds the supported maximum",
            });
        }
        if data.dtype().block().is_some() && !d.is_multiple_of(QK) {
            return Err(Error::InvalidDim {
                arg: dim_arg,
                value: d,
                reason: data.dtype().head_dim_rule(),
            });
        }
        check_quant(arg, &data, strides, g, d)?;
        if let KvData::Fp8E4M3 { scales, .. } | KvData::Fp8E5M2 { scales, .. } = data {
            if let Some(&bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                return Err(Error::InvalidScale { value: bad });
            }
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
                let (t, n) = (b.dtype(), b.dtype().block().map_or(0, |i| i.bytes));
                quantize_block_bytes(t, row, &mut b.bytes_mut()[o / QK * n..(o + d) / QK * n])
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
                crate::quant::quantize_fp8_row(row, &mut values[o..o + d])
                    .map(|sc| scales[o / d] = sc)
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
