//! The decode microkernel, written once for every tier.
//!
//! One call consumes `n` K/V rows of one KV head for a tile of `rows` query
//! rows (the `r` query heads of the group, times the query tokens), in blocks
//! of [`BLOCK`] positions:
//!
//! 1. **Convert** the block's K rows to f32 in scratch. Each K element is
//!    loaded from the cache and widened exactly once per call, whatever
//!    `rows` is: this is the point of GQA.
//! 2. **Scores** `S = Q · Kᵀ` for all rows, in register tiles of
//!    [`ROW_TILE`] rows × 2 positions; the unreduced per-position vectors of a
//!    row are reduced [`Simd::LANES`] at a time by a transpose-and-add tree
//!    ([`Simd::transpose_sum`]) instead of one horizontal sum each.
//! 3. **Online softmax** per row (log2 domain: Q was pre-multiplied by
//!    `scale·log2 e`): block max, rescale the state only when the max grew,
//!    `p = 2^(s - m)` with the vectorised [`exp2`].
//! 4. **Convert** the block's V rows once, then **accumulate** `acc += P · V`
//!    in register tiles of [`ROW_TILE`] rows × `COL_TILE` vectors of `Dv`.
//!
//! Tails never read past a row: the conversion loads mask (or copy) the last
//! partial vector of a row, and positions past `n` in the last block are
//! masked to `-inf` before the softmax and skipped in `P · V`.

use super::{exp2, pad, ChunkArgs, Dims, Elem, Simd, BLOCK, ROW_TILE};

/// Vectors of `Dv` per register tile in the P·V loop.
const COL_TILE: usize = 4;

/// Runs one chunk. See [`ChunkArgs`] for the preconditions.
#[inline(always)]
pub(crate) unsafe fn decode_chunk<S: Simd, K: Elem, V: Elem, D: Dims>(a: &ChunkArgs) {
    let rows = D::rows(a);
    let dk = D::dk(a);
    let dv = D::dv(a);
    let (dkp, dvp) = (pad(dk), pad(dv));
    let kc = dk.div_ceil(S::LANES);
    let vc = dv.div_ceil(S::LANES);
    let kbuf = a.scratch;
    // SAFETY: all offsets stay inside the `scratch_len(rows, dk, dv)` floats
    // the driver provides (the layout below is exactly `scratch_len`).
    let (vbuf, sbuf, part) = unsafe {
        let vbuf = kbuf.add(BLOCK * dkp);
        let sbuf = vbuf.add(BLOCK * dvp);
        (vbuf, sbuf, sbuf.add(rows * BLOCK))
    };
    let k = a.k.cast::<K>();
    let v = a.v.cast::<V>();

    let mut start = 0;
    while start < a.n {
        let nb = BLOCK.min(a.n - start);
        // SAFETY: rows `start..start + nb` are `< n`, so each K/V row read is
        // inside the range the driver validated; every scratch/state offset
        // is inside the buffers described in `ChunkArgs`.
        unsafe {
            convert_rows::<S, K>(k.add(start * a.k_stride), a.k_stride, nb, dk, kc, kbuf, dkp);
            scores::<S>(a.q, rows, dkp, kc, kbuf, nb, part, sbuf);
            softmax_update::<S>(rows, nb, sbuf, a.m, a.l, a.acc, dvp, vc);
            convert_rows::<S, V>(v.add(start * a.v_stride), a.v_stride, nb, dv, vc, vbuf, dvp);
            accumulate::<S>(rows, nb, sbuf, vbuf, dvp, vc, a.acc);
        }
        start += nb;
    }
}

/// Widens `nb` rows of `d` elements (row stride `stride`) into `dst` (row
/// stride `dp`), `chunks` vectors per row, the last one masked to `d`.
#[inline(always)]
unsafe fn convert_rows<S: Simd, E: Elem>(
    src: *const E,
    stride: usize,
    nb: usize,
    d: usize,
    chunks: usize,
    dst: *mut f32,
    dp: usize,
) {
    for j in 0..nb {
        for c in 0..chunks {
            let off = c * S::LANES;
            // SAFETY: row `j < nb` is valid for `d` elements; the load reads
            // `min(d - off, LANES)` of them; `dst` has `nb * dp` floats and
            // `off + LANES <= dp`.
            unsafe {
                let x = E::load::<S>(src.add(j * stride + off), d - off);
                S::store(dst.add(j * dp + off), x);
            }
        }
    }
}

/// Raw scores (log2 domain) of every row against the `nb` converted K rows of
/// the block, written to `sbuf[row * BLOCK + j]`.
#[inline(always)]
unsafe fn scores<S: Simd>(
    q: *const f32,
    rows: usize,
    dkp: usize,
    kc: usize,
    kbuf: *const f32,
    nb: usize,
    part: *mut f32,
    sbuf: *mut f32,
) {
    let mut i0 = 0;
    while i0 < rows {
        let rt = ROW_TILE.min(rows - i0);
        // SAFETY: rows `i0..i0 + rt` exist in `q` and `sbuf`.
        unsafe {
            let qt = q.add(i0 * dkp);
            let st = sbuf.add(i0 * BLOCK);
            match rt {
                4 => score_tile::<S, 4>(qt, dkp, kc, kbuf, nb, part, st),
                3 => score_tile::<S, 3>(qt, dkp, kc, kbuf, nb, part, st),
                2 => score_tile::<S, 2>(qt, dkp, kc, kbuf, nb, part, st),
                _ => score_tile::<S, 1>(qt, dkp, kc, kbuf, nb, part, st),
            }
        }
        i0 += rt;
    }
}

#[inline(always)]
unsafe fn score_tile<S: Simd, const RT: usize>(
    q: *const f32,
    dkp: usize,
    kc: usize,
    kbuf: *const f32,
    nb: usize,
    part: *mut f32,
    sbuf: *mut f32,
) {
    let l = S::LANES;
    let mut j = 0;
    // Two positions per step: each loaded q vector feeds two FMAs. When `nb`
    // is odd the second position of the last pair reads a stale (but
    // initialised) scratch row whose score is masked out afterwards.
    while j < nb {
        // SAFETY: `j + 1 < BLOCK` (BLOCK is even), so both K rows are inside
        // the scratch block; q rows `0..RT` of the tile exist; `part` holds
        // `ROW_TILE * BLOCK` vectors.
        unsafe {
            let mut a0 = [S::zero(); RT];
            let mut a1 = [S::zero(); RT];
            let k0p = kbuf.add(j * dkp);
            let k1p = kbuf.add((j + 1) * dkp);
            for c in 0..kc {
                let k0 = S::load(k0p.add(c * l));
                let k1 = S::load(k1p.add(c * l));
                for i in 0..RT {
                    let qv = S::load(q.add(i * dkp + c * l));
                    a0[i] = S::fma(k0, qv, a0[i]);
                    a1[i] = S::fma(k1, qv, a1[i]);
                }
            }
            for i in 0..RT {
                S::store(part.add((i * BLOCK + j) * l), a0[i]);
                S::store(part.add((i * BLOCK + j + 1) * l), a1[i]);
            }
        }
        j += 2;
    }
    for i in 0..RT {
        let mut s = 0;
        while s < nb {
            // SAFETY: vectors `s..s + LANES` of row `i` are inside `part`
            // (BLOCK is a multiple of LANES); `sbuf` row `i` has BLOCK floats.
            unsafe {
                let sums = S::transpose_sum(part.add((i * BLOCK + s) * l));
                S::store(sbuf.add(i * BLOCK + s), sums);
            }
            s += l;
        }
    }
}

/// Folds the block's scores into each row's running max and sum, rescales
/// the row's accumulator when the max grew, and replaces the scores in
/// `sbuf` by the weights `p = 2^(s - m)` (0 for positions `>= nb`).
#[inline(always)]
unsafe fn softmax_update<S: Simd>(
    rows: usize,
    nb: usize,
    sbuf: *mut f32,
    m: *mut f32,
    l: *mut f32,
    acc: *mut f32,
    dvp: usize,
    vc: usize,
) {
    let lanes = S::LANES;
    let used = nb.div_ceil(lanes) * lanes;
    for i in 0..rows {
        // SAFETY: row `i < rows` of `sbuf` (BLOCK floats), `m`, `l` and `acc`
        // (`dvp` floats) exist; `used <= BLOCK`.
        unsafe {
            let row = sbuf.add(i * BLOCK);
            let mut mx = S::splat(f32::NEG_INFINITY);
            let mut s = 0;
            while s < used {
                let x = S::mask_tail(S::load(row.add(s)), nb - s, f32::NEG_INFINITY);
                S::store(row.add(s), x);
                mx = S::max(mx, x);
                s += lanes;
            }
            let m_old = *m.add(i);
            let m_new = m_old.max(S::reduce_max(mx));
            if m_new > m_old {
                // First block: m_old = -inf, alpha = 0 and the state is zero.
                let alpha = (m_old - m_new).exp2();
                *l.add(i) *= alpha;
                let ar = acc.add(i * dvp);
                let av = S::splat(alpha);
                for c in 0..vc {
                    let p = ar.add(c * lanes);
                    S::store(p, S::mul(S::load(p), av));
                }
                *m.add(i) = m_new;
            }
            let mv = S::splat(m_new);
            let mut sum = S::zero();
            let mut s = 0;
            while s < used {
                let p = exp2::<S>(S::sub(S::load(row.add(s)), mv));
                S::store(row.add(s), p);
                sum = S::add(sum, p);
                s += lanes;
            }
            *l.add(i) += S::reduce_add(sum);
        }
    }
}

/// `acc[row] += sum_j p[row][j] * vbuf[j]` for `j < nb`.
#[inline(always)]
unsafe fn accumulate<S: Simd>(
    rows: usize,
    nb: usize,
    pbuf: *const f32,
    vbuf: *const f32,
    dvp: usize,
    vc: usize,
    acc: *mut f32,
) {
    let mut i0 = 0;
    while i0 < rows {
        let rt = ROW_TILE.min(rows - i0);
        // SAFETY: rows `i0..i0 + rt` exist in `pbuf` and `acc`.
        unsafe {
            let pt = pbuf.add(i0 * BLOCK);
            let at = acc.add(i0 * dvp);
            match rt {
                4 => accumulate_rows::<S, 4>(nb, pt, vbuf, dvp, vc, at),
                3 => accumulate_rows::<S, 3>(nb, pt, vbuf, dvp, vc, at),
                2 => accumulate_rows::<S, 2>(nb, pt, vbuf, dvp, vc, at),
                _ => accumulate_rows::<S, 1>(nb, pt, vbuf, dvp, vc, at),
            }
        }
        i0 += rt;
    }
}

#[inline(always)]
unsafe fn accumulate_rows<S: Simd, const RT: usize>(
    nb: usize,
    pbuf: *const f32,
    vbuf: *const f32,
    dvp: usize,
    vc: usize,
    acc: *mut f32,
) {
    let mut c0 = 0;
    while c0 + COL_TILE <= vc {
        // SAFETY: vectors `c0..c0 + COL_TILE` lie inside each `dvp`-float row.
        unsafe { accumulate_tile::<S, RT, COL_TILE>(nb, pbuf, vbuf, dvp, c0, acc) };
        c0 += COL_TILE;
    }
    while c0 < vc {
        // SAFETY: as above, one vector.
        unsafe { accumulate_tile::<S, RT, 1>(nb, pbuf, vbuf, dvp, c0, acc) };
        c0 += 1;
    }
}

#[inline(always)]
unsafe fn accumulate_tile<S: Simd, const RT: usize, const CT: usize>(
    nb: usize,
    pbuf: *const f32,
    vbuf: *const f32,
    dvp: usize,
    c0: usize,
    acc: *mut f32,
) {
    let l = S::LANES;
    // SAFETY: the caller checked that vectors `c0..c0 + CT` are inside each
    // row; rows `0..RT` of `pbuf` (BLOCK floats) and `acc` (`dvp`) exist;
    // V rows `j < nb <= BLOCK` are inside the scratch block.
    unsafe {
        let mut t = [[S::zero(); CT]; RT];
        for i in 0..RT {
            for c in 0..CT {
                t[i][c] = S::load(acc.add(i * dvp + (c0 + c) * l));
            }
        }
        for j in 0..nb {
            let mut vv = [S::zero(); CT];
            for c in 0..CT {
                vv[c] = S::load(vbuf.add(j * dvp + (c0 + c) * l));
            }
            for i in 0..RT {
                let p = S::splat(*pbuf.add(i * BLOCK + j));
                for c in 0..CT {
                    t[i][c] = S::fma(p, vv[c], t[i][c]);
                }
            }
        }
        for i in 0..RT {
            for c in 0..CT {
                S::store(acc.add(i * dvp + (c0 + c) * l), t[i][c]);
            }
        }
    }
}
