//! The AMX-bf16 decode kernel: the block loop, query and weight packing,
//! score and P·V tile passes (the parent module has the method, the
//! precision classes and the tile state it runs under).

use core::arch::asm;
use core::arch::x86_64::*;

use super::super::super::{kernel, pad, ChunkArgs, BLOCK, PAD};
use super::super::avx512::Avx512;
use super::{mask32, release, transpose16, TileConfig};

/// f32 of tile-kernel scratch for `rows` query rows and head sizes `dk`,
/// `dv` (at least what [`decode`] carves; each region starts on a cache
/// line).
pub(crate) const fn scratch_len(rows: usize, dk: usize, dv: usize) -> usize {
    let r16 = rows.div_ceil(16) * 16;
    let (dk32, dv32) = (dk.div_ceil(32) * 32, dv.div_ceil(32) * 32);
    let ks = dk32 / 32;
    let cg = r16 / 16;
    pad(rows * BLOCK)          // scores / weights
        + pad(rows * PAD)      // lane-wise sums
        + 4 * 256              // result tiles to transpose
        + ks * cg * QPARTS * 256 // packed Qᵀ, up to three parts
        + 16 * dk32 / 2        // a padded K block (bf16)
        + 16 * dv32            // V in pairs, twice (bf16 pairs)
        + r16 * 16             // the P tile rows (hi | lo, bf16)
        + r16 * pad(dv) // the accumulator, padded to whole tiles
}

/// The tile kernel for bf16 K and V; `EXACT` selects the precision class
/// (see the module docs).
///
/// # Safety
/// [`status`](super::status) returned `Ok`; the preconditions of [`ChunkArgs`] hold, with
/// `k` and `v` bf16 rows and `scratch` at least [`scratch_len`] f32.
pub(crate) unsafe fn decode<const EXACT: bool>(a: &ChunkArgs) {
    // SAFETY: forwarded.
    unsafe { decode_inner::<EXACT>(a) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c")]
unsafe fn decode_inner<const EXACT: bool>(a: &ChunkArgs) {
    let rows = a.rows;
    let (dk, dv) = (a.dk, a.dv);
    let dvp = pad(dv);
    let r16 = rows.div_ceil(16) * 16;
    let cg = r16 / 16;
    let (dk32, dv32) = (dk.div_ceil(32) * 32, dv.div_ceil(32) * 32);
    let ks = dk32 / 32;
    // Scratch regions, in the order of `scratch_len`.
    let sbuf = a.scratch;
    // SAFETY: each offset below stays inside `scratch_len(rows, dk, dv)`
    // f32 (the same sums), which the caller provides.
    let (lsum, ctmp, qpack, kpad, vpack, pbuf, accp) = unsafe {
        let lsum = sbuf.add(pad(rows * BLOCK));
        let ctmp = lsum.add(pad(rows * PAD));
        let qpack = ctmp.add(4 * 256);
        let kpad = qpack.add(ks * cg * QPARTS * 256);
        let vpack = kpad.add(16 * dk32 / 2);
        let pbuf = vpack.add(16 * dv32);
        let accp = pbuf.add(r16 * 16);
        (lsum, ctmp, qpack, kpad.cast::<u16>(), vpack, pbuf, accp)
    };
    // SAFETY: the regions above are inside scratch; `a.state.acc` has `rows *
    // dvp` f32, `a.q` `rows * pad(dk)`, `a.state.m`/`a.state.l` `rows`.
    unsafe {
        for i in 0..rows * PAD {
            *lsum.add(i) = 0.0;
        }
        // The accumulator: the state itself when the rows fill whole tiles,
        // else a copy with zero rows up to the next tile.
        let acc = if rows == r16 {
            a.state.acc
        } else {
            std::ptr::copy_nonoverlapping(a.state.acc, accp, rows * dvp);
            std::ptr::write_bytes(accp.add(rows * dvp), 0, (r16 - rows) * dvp);
            accp
        };
        pack_q::<EXACT>(a.q, rows, dk, ks, cg, qpack);
        // The P rows past `rows` stay zero.
        std::ptr::write_bytes(pbuf, 0, r16 * 16);

        let pw = if EXACT { 64 } else { 32 };
        let vr = if EXACT { 16 } else { 8 };
        let cfg = TileConfig::new([
            (16, 64), // 0-3: score and accumulator tiles
            (16, 64),
            (16, 64),
            (16, 64),
            (16, 64), // 4: K rows
            (16, 64), // 5: Qᵀ pairs
            (16, pw), // 6: P rows
            (vr, 64), // 7: V pairs
        ]);
        cfg.load();

        let kb = a.k.ptr.cast::<u16>();
        let vb = a.v.ptr.cast::<u16>();
        let kstride = a.k.stride * 2;
        let transformed = a.transforms.any();
        let vpitch = dv32 * 4;
        let mut start = 0;
        while start < a.n {
            let nb = BLOCK.min(a.n - start);
            // K: in place, or a zero-padded copy.
            let (kp, ks_bytes) = if nb == BLOCK && dk == dk32 {
                (kb.add(start * a.k.stride), kstride)
            } else {
                copy_rows(kb.add(start * a.k.stride), a.k.stride, nb, dk, dk32, kpad);
                (kpad as *const u16, dk32 * 2)
            };
            // Scores, up to four column groups of 16 query rows per pass.
            let mut c0 = 0;
            while c0 < cg {
                let nc = (cg - c0).min(4);
                score_pass::<EXACT>(kp, ks_bytes, ks, qpack, cg, c0, nc, ctmp);
                for c in 0..nc {
                    scatter_scores(ctmp.add(c * 256), (c0 + c) * 16, rows, sbuf);
                }
                c0 += nc;
            }
            kernel::block_softmax::<Avx512>(a, rows, nb, start, sbuf, lsum, acc, dvp, transformed);
            pack_p::<EXACT>(sbuf, rows, pbuf);
            pack_v::<EXACT>(vb.add(start * a.v.stride), a.v.stride, nb, dv, dv32, vpack);
            for g in 0..cg {
                accumulate_group(pbuf.add(g * 256), vpack, vpitch, acc.add(g * 16 * dvp), dvp);
            }
            start += nb;
        }
        release();
        if rows != r16 {
            std::ptr::copy_nonoverlapping(accp, a.state.acc, rows * dvp);
        }
        kernel::fold_sums::<Avx512>(rows, a.state.l, lsum);
    }
}

/// Parts of each q value in the `Exact` class: bf16 `hi + mid + lo` hold
/// all 24 significant bits of an f32.
const QPARTS: usize = 3;

/// Packs the prescaled query rows as B tiles: for K step `t` (32 values of
/// `Dk`) and column group `c` (16 query rows), 16 rows of 16 bf16 pairs,
/// row `k` holding `(q[n][32t + 2k], q[n][32t + 2k + 1])` for each query
/// row `n` of the group (zero past `rows` and past `dk`); `EXACT` packs
/// the mid and low parts in the two tiles after it.
#[inline(always)]
unsafe fn pack_q<const EXACT: bool>(
    q: *const f32,
    rows: usize,
    dk: usize,
    ks: usize,
    cg: usize,
    out: *mut f32,
) {
    let dkp = pad(dk);
    let parts = if EXACT { QPARTS } else { 1 };
    // SAFETY: q rows `< rows` hold `dkp` f32 (zero past `dk`); loads are
    // masked to them; `out` holds `ks * cg * QPARTS * 256` f32.
    unsafe {
        for t in 0..ks {
            for c in 0..cg {
                let mut x0 = [_mm512_setzero_ps(); 16];
                let mut x1 = [_mm512_setzero_ps(); 16];
                for n in 0..16.min(rows - c * 16) {
                    let base = q.add((c * 16 + n) * dkp + t * 32);
                    let avail = dkp - t * 32;
                    x0[n] = _mm512_maskz_loadu_ps(mask32(avail) as u16, base);
                    if avail > 16 {
                        x1[n] = _mm512_maskz_loadu_ps(mask32(avail - 16) as u16, base.add(16));
                    }
                }
                for part in 0..parts {
                    let mut w = [_mm512_setzero_ps(); 16];
                    for n in 0..16 {
                        let h = _mm512_cvtne2ps_pbh(x1[n], x0[n]);
                        w[n] = core::mem::transmute::<__m512bh, __m512>(h);
                        if part + 1 < parts {
                            // The remainders, exact in f32.
                            let h0 = _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(x0[n]));
                            let h1 = _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(x1[n]));
                            x0[n] = _mm512_sub_ps(x0[n], h0);
                            x1[n] = _mm512_sub_ps(x1[n], h1);
                        }
                    }
                    transpose16(&mut w);
                    let dst = out.add(((t * cg + c) * QPARTS + part) * 256);
                    for k in 0..16 {
                        _mm512_store_ps(dst.add(k * 16), w[k]);
                    }
                }
            }
        }
    }
}

/// Copies `nb` bf16 rows of `d` values (`stride` apart) into 16 rows of
/// `dp` values, zero past `d` and in rows `nb..16`.
#[inline(always)]
unsafe fn copy_rows(src: *const u16, stride: usize, nb: usize, d: usize, dp: usize, dst: *mut u16) {
    // SAFETY: rows `j < nb` of `src` hold `d` values (loads masked to
    // them); `dst` holds `16 * dp` values.
    unsafe {
        for j in 0..16 {
            for x in (0..dp).step_by(32) {
                let v = if j < nb && x < d {
                    _mm512_maskz_loadu_epi16(mask32(d - x), src.add(j * stride + x).cast())
                } else {
                    _mm512_setzero_si512()
                };
                _mm512_storeu_si512(dst.add(j * dp + x).cast(), v);
            }
        }
    }
}

/// One pass of the score tiles: result tile `c < nc` (registers 0-3) is
/// `K · Qᵀ` of column group `c0 + c`, stored to `ctmp + c * 256` as 16
/// positions × 16 query rows.
#[inline(always)]
unsafe fn score_pass<const EXACT: bool>(
    kp: *const u16,
    kstride: usize,
    ks: usize,
    qpack: *const f32,
    cg: usize,
    c0: usize,
    nc: usize,
    ctmp: *mut f32,
) {
    // SAFETY: tiles are configured (16 × 64 bytes for 0-5); the K tile
    // reads 16 rows of 64 bytes from `kp + t * 32` values, which the
    // caller made readable; the Q tiles read packed tiles inside `qpack`;
    // the stores write `nc` tiles of 1 KiB inside `ctmp`.
    unsafe {
        tzero!(0);
        tzero!(1);
        tzero!(2);
        tzero!(3);
        for t in 0..ks {
            tload!(4, kp.add(t * 32), kstride);
            let q = |c: usize, part: usize| qpack.add(((t * cg + c0 + c) * QPARTS + part) * 256);
            macro_rules! col {
                ($c:literal) => {
                    if nc > $c {
                        tload!(5, q($c, 0), 64usize);
                        tdp!($c, 4, 5);
                        if EXACT {
                            tload!(5, q($c, 1), 64usize);
                            tdp!($c, 4, 5);
                            tload!(5, q($c, 2), 64usize);
                            tdp!($c, 4, 5);
                        }
                    }
                };
            }
            col!(0);
            col!(1);
            col!(2);
            col!(3);
        }
        tstore!(0, ctmp, 64usize);
        if nc > 1 {
            tstore!(1, ctmp.add(256), 64usize);
        }
        if nc > 2 {
            tstore!(2, ctmp.add(512), 64usize);
        }
        if nc > 3 {
            tstore!(3, ctmp.add(768), 64usize);
        }
    }
}

/// Writes a 16 positions × 16 query rows result tile as score rows
/// `r0..r0 + 16` (those `< rows`) of `sbuf` (`BLOCK` f32 each).
#[inline(always)]
unsafe fn scatter_scores(tile: *const f32, r0: usize, rows: usize, sbuf: *mut f32) {
    // SAFETY: `tile` holds 256 f32; rows `< rows` of `sbuf` exist.
    unsafe {
        let mut r = [_mm512_setzero_ps(); 16];
        for j in 0..16 {
            r[j] = _mm512_loadu_ps(tile.add(j * 16));
        }
        transpose16(&mut r);
        for n in 0..16.min(rows - r0) {
            _mm512_storeu_ps(sbuf.add((r0 + n) * BLOCK), r[n]);
        }
    }
}

/// The block's weights as A tile rows: row `i` of `pbuf` (64 bytes) is
/// `P_hi` of the 16 positions, then (`EXACT`) `P_lo`. Rows past `rows`
/// stay as they are (zero).
#[inline(always)]
unsafe fn pack_p<const EXACT: bool>(sbuf: *const f32, rows: usize, pbuf: *mut f32) {
    // SAFETY: `sbuf` rows `< rows` hold BLOCK = 16 f32; `pbuf` holds 16 f32
    // per row.
    unsafe {
        for i in 0..rows {
            let p = _mm512_loadu_ps(sbuf.add(i * BLOCK));
            let h = _mm512_cvtneps_pbh(p);
            let dst = pbuf.add(i * 16).cast::<__m256i>();
            _mm256_storeu_si256(dst, core::mem::transmute::<__m256bh, __m256i>(h));
            if EXACT {
                let l = _mm512_cvtneps_pbh(_mm512_sub_ps(p, _mm512_cvtpbh_ps(h)));
                _mm256_storeu_si256(dst.add(1), core::mem::transmute::<__m256bh, __m256i>(l));
            }
        }
    }
}

/// Rearranges the block's V rows into B tile rows: pair row `p` holds, for
/// every `d < dp`, `(V[2p][d], V[2p + 1][d])` (zero past `d` and for rows
/// `>= nb`); `EXACT` writes the 8 pair rows twice (rows 8-15 again), to
/// meet `P_lo` in the A tile.
#[inline(always)]
pub(crate) unsafe fn pack_v<const EXACT: bool>(
    src: *const u16,
    stride: usize,
    nb: usize,
    d: usize,
    dp: usize,
    out: *mut f32,
) {
    // SAFETY: rows `j < nb` of `src` hold `d` values (loads masked to
    // them); `out` holds 16 pair rows of `dp` f32.
    unsafe {
        let lo_idx = _mm512_set_epi16(
            47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5, 36,
            4, 35, 3, 34, 2, 33, 1, 32, 0,
        );
        let hi_idx = _mm512_set_epi16(
            63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23, 54, 22, 53, 21,
            52, 20, 51, 19, 50, 18, 49, 17, 48, 16,
        );
        for p in 0..8 {
            let (j0, j1) = (2 * p, 2 * p + 1);
            for x in (0..dp).step_by(32) {
                let load = |j: usize| {
                    if j < nb && x < d {
                        _mm512_maskz_loadu_epi16(mask32(d - x), src.add(j * stride + x).cast())
                    } else {
                        _mm512_setzero_si512()
                    }
                };
                let (a, b) = (load(j0), load(j1));
                let lo = _mm512_permutex2var_epi16(a, lo_idx, b);
                let hi = _mm512_permutex2var_epi16(a, hi_idx, b);
                let dst = out.add(p * dp + x);
                _mm512_storeu_si512(dst.cast(), lo);
                _mm512_storeu_si512(dst.add(16).cast(), hi);
                if EXACT {
                    let dst = out.add((p + 8) * dp + x);
                    _mm512_storeu_si512(dst.cast(), lo);
                    _mm512_storeu_si512(dst.add(16).cast(), hi);
                }
            }
        }
    }
}

/// `acc += P · V` for one group of 16 query rows: `prow` is its P tile
/// (16 rows of 64 bytes), `vpack` the pair rows (`vpitch` bytes apart),
/// `acc` the group's first accumulator row (`dvp` f32 per row, 16 rows).
#[inline(always)]
unsafe fn accumulate_group(
    prow: *const f32,
    vpack: *const f32,
    vpitch: usize,
    acc: *mut f32,
    dvp: usize,
) {
    let tiles = dvp / 16;
    let astride = dvp * 4;
    // SAFETY: tiles are configured (6: P rows, 7: V pairs, 0-3: 16 × 64
    // bytes); `prow` holds 16 rows of 64 bytes; the V tile reads its pair
    // rows at 64-byte column `d` of `vpack` (`d < tiles <= dv32 / 16`);
    // the accumulator tiles read and write 16 rows × 16 f32 at column
    // `16 d < dvp` of `acc`.
    unsafe {
        tload!(6, prow, 64usize);
        let mut d = 0;
        while d < tiles {
            let n = (tiles - d).min(4);
            let c = |i: usize| acc.add((d + i) * 16);
            let v = |i: usize| vpack.add((d + i) * 16);
            macro_rules! run {
                ($i:literal) => {
                    if n > $i {
                        tload!($i, c($i), astride);
                        tload!(7, v($i), vpitch);
                        tdp!($i, 6, 7);
                        tstore!($i, c($i), astride);
                    }
                };
            }
            run!(0);
            run!(1);
            run!(2);
            run!(3);
            d += n;
        }
    }
}
