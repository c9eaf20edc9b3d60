//! Phase 4: `acc += P · V` in register tiles.

use super::*;

/// `acc[row] += sum_j p[row][j] * V[j]` for `j < nb`.
#[inline(always)]
pub(super) unsafe fn accumulate<S: Simd, R: RowSource>(
    rows: usize,
    nb: usize,
    pbuf: *const f32,
    vrows: R,
    dvp: usize,
    vc: usize,
    acc: *mut f32,
    ahead: &Ahead,
) {
    let mut i0 = 0;
    while i0 < rows {
        let rt = if vrows.row_at_a_time() {
            wide_pv_rows(S::ACC, vc, S::ROW_TILE)
        } else {
            S::ROW_TILE
        }
        .min(rows - i0);
        // SAFETY: rows `i0..i0 + rt` exist in `pbuf` and `acc`.
        unsafe {
            let pt = pbuf.add(i0 * BLOCK);
            let at = acc.add(i0 * dvp);
            match rt {
                8 => accumulate_rows::<S, R, 8>(nb, pt, vrows, dvp, vc, at, ahead),
                7 => accumulate_rows::<S, R, 7>(nb, pt, vrows, dvp, vc, at, ahead),
                6 => accumulate_rows::<S, R, 6>(nb, pt, vrows, dvp, vc, at, ahead),
                5 => accumulate_rows::<S, R, 5>(nb, pt, vrows, dvp, vc, at, ahead),
                4 => accumulate_rows::<S, R, 4>(nb, pt, vrows, dvp, vc, at, ahead),
                3 => accumulate_rows::<S, R, 3>(nb, pt, vrows, dvp, vc, at, ahead),
                2 => accumulate_rows::<S, R, 2>(nb, pt, vrows, dvp, vc, at, ahead),
                _ => accumulate_rows::<S, R, 1>(nb, pt, vrows, dvp, vc, at, ahead),
            }
        }
        i0 += rt;
    }
}

#[inline(always)]
pub(super) unsafe fn accumulate_rows<S: Simd, R: RowSource, const RT: usize>(
    nb: usize,
    pbuf: *const f32,
    vrows: R,
    dvp: usize,
    vc: usize,
    acc: *mut f32,
    ahead: &Ahead,
) {
    let ct = acc_cols(S::ACC, RT);
    let mut c0 = 0;
    if ct > 4 {
        // Few rows: the widest column tile that fits the registers and what
        // is left of the row (`Dv = 256` on AVX-512 with one row: one
        // 16-wide pass; `Dv = 128` with two rows: one 8-wide pass).
        while c0 < vc {
            let rem = vc - c0;
            let w = if ct >= 16 && rem >= 16 {
                16
            } else if ct >= 8 && rem >= 8 {
                8
            } else if rem >= 4 {
                4
            } else {
                1
            };
            // SAFETY: vectors `c0..c0 + w` lie inside each row (`w <= rem`).
            unsafe {
                match w {
                    16 => accumulate_tile::<S, R, RT, 16>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                    8 => accumulate_tile::<S, R, RT, 8>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                    4 => accumulate_tile::<S, R, RT, 4>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                    _ => accumulate_tile::<S, R, RT, 1>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                }
            }
            c0 += w;
        }
        return;
    }
    while c0 + ct <= vc {
        // SAFETY: vectors `c0..c0 + ct` lie inside each row.
        unsafe {
            match ct {
                4 => accumulate_tile::<S, R, RT, 4>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                3 => accumulate_tile::<S, R, RT, 3>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                2 => accumulate_tile::<S, R, RT, 2>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                _ => accumulate_tile::<S, R, RT, 1>(nb, pbuf, vrows, dvp, c0, acc, ahead),
            }
        }
        c0 += ct;
    }
    while c0 < vc {
        // SAFETY: as above, one vector.
        unsafe { accumulate_tile::<S, R, RT, 1>(nb, pbuf, vrows, dvp, c0, acc, ahead) };
        c0 += 1;
    }
}

#[inline(always)]
pub(super) unsafe fn accumulate_tile<S: Simd, R: RowSource, const RT: usize, const CT: usize>(
    nb: usize,
    pbuf: *const f32,
    vrows: R,
    dvp: usize,
    c0: usize,
    acc: *mut f32,
    ahead: &Ahead,
) {
    let l = S::LANES;
    // SAFETY: the caller checked that vectors `c0..c0 + CT` are inside each
    // row; rows `0..RT` of `pbuf` (BLOCK floats) and `acc` (`dvp`) exist;
    // V rows `j < nb` are inside the block.
    unsafe {
        let mut t = [[S::zero(); CT]; RT];
        for i in 0..RT {
            for c in 0..CT {
                t[i][c] = S::load(acc.add(i * dvp + (c0 + c) * l));
            }
        }
        for j in 0..nb {
            ahead.tick(1);
            let mut vv = [S::zero(); CT];
            for c in 0..CT {
                vv[c] = vrows.load::<S>(j, c0 + c);
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
