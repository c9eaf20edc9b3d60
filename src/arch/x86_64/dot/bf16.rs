//! `bf16-dot`: AVX512-BF16 `vdpbf16ps` on bf16 K rows (and, `Fast`, on
//! bf16 V); see the parent module for the layouts and precision classes.

use core::arch::x86_64::*;

use super::super::super::kernel::unit::DotUnit;
use super::super::super::{pad, Elem, BLOCK};
use super::super::avx512::Avx512;
use super::{interleave, mask32, ROWS};

/// `vdpbf16ps` on bf16 K (and, `Fast`, bf16 V); `EXACT` selects the
/// precision class.
#[derive(Clone, Copy)]
pub(crate) struct Bf16Dot<const EXACT: bool>;

impl<const EXACT: bool> Bf16Dot<EXACT> {
    /// bf16 parts of each q value.
    const PARTS: usize = if EXACT { 3 } else { 1 };
}

impl<const EXACT: bool> DotUnit<Avx512> for Bf16Dot<EXACT> {
    type K = half::bf16;

    fn q_len(rows: usize, dk: usize) -> usize {
        // Row-major, then in tiles of `ROWS` rows (`interleave`).
        let words = Self::PARTS * dk.div_ceil(32) * 16;
        pad(rows * words) + rows.div_ceil(ROWS) * ROWS * words
    }

    fn work_len(dk: usize, dv: usize) -> usize {
        // The block's K as pairs by position; later V of the block as 8
        // rows of bf16 pairs, `dv` rounded to 32.
        (dk.div_ceil(32) * 256).max(8 * dv.div_ceil(32) * 32)
    }

    /// Row `i`, part `p`, step `c` (32 values) is the vector at
    /// `((i * PARTS + p) * kc + c) * 16`: value `m` is the bf16 of
    /// `q[32c + m]` (its `p`-th part).
    #[inline(always)]
    unsafe fn pack_q(q: *const f32, rows: usize, dk: usize, out: *mut f32) {
        let dkp = pad(dk);
        let kc = dk.div_ceil(32);
        // SAFETY: q rows hold `dkp` f32 (loads masked to them); `out`
        // holds `q_len` f32.
        unsafe {
            for i in 0..rows {
                for c in 0..kc {
                    let base = q.add(i * dkp + c * 32);
                    let avail = dkp - c * 32;
                    let mut x0 = _mm512_maskz_loadu_ps(mask32(avail) as u16, base);
                    let mut x1 = if avail > 16 {
                        _mm512_maskz_loadu_ps(mask32(avail - 16) as u16, base.add(16))
                    } else {
                        _mm512_setzero_ps()
                    };
                    for p in 0..Self::PARTS {
                        let h = _mm512_cvtne2ps_pbh(x1, x0);
                        let dst = out.add(((i * Self::PARTS + p) * kc + c) * 16);
                        _mm512_store_ps(dst, core::mem::transmute::<__m512bh, __m512>(h));
                        if p + 1 < Self::PARTS {
                            // The remainders, exact in f32.
                            let h0 = _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(x0));
                            let h1 = _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(x1));
                            x0 = _mm512_sub_ps(x0, h0);
                            x1 = _mm512_sub_ps(x1, h1);
                        }
                    }
                }
            }
            let words = kc * 16;
            let tiles = out.add(pad(rows * Self::PARTS * words));
            interleave(out, rows, Self::PARTS, words, ROWS, tiles);
        }
    }

    #[inline(always)]
    unsafe fn scores(
        qp: *const f32,
        rows: usize,
        dk: usize,
        k: *const half::bf16,
        stride: usize,
        nb: usize,
        sbuf: *mut f32,
        work: *mut f32,
    ) {
        let kc = dk.div_ceil(32);
        let k = k.cast::<u16>();
        // The block's K as pairs by position: vector `t` holds pair `t`
        // (values `2t`, `2t + 1`) of each of the 16 positions, so a row's
        // 16 scores accumulate in one register with its pair `t`
        // broadcast. The V area of `work` is free until P·V.
        let kp = work;
        // SAFETY: K rows `j < nb` hold `dk` values (loads masked to them);
        // `work` holds `kc * 16` vectors (`work_len`); the packed query as
        // `pack_q` wrote it (row-part blocks of `kc * 16` pairs); `sbuf`
        // rows hold BLOCK f32.
        unsafe {
            for c in 0..kc {
                let m = mask32(dk - c * 32);
                let mut r = [_mm512_setzero_ps(); 16];
                for j in 0..16 {
                    if j < nb {
                        let x = _mm512_maskz_loadu_epi16(m, k.add(j * stride + c * 32).cast());
                        r[j] = _mm512_castsi512_ps(x);
                    }
                }
                super::super::amx::transpose16(&mut r);
                for t in 0..16 {
                    _mm512_store_ps(kp.add((c * 16 + t) * 16), r[t]);
                }
            }
            let pairs = dk.div_ceil(2);
            let words = kc * 16;
            let tiles = qp.add(pad(rows * Self::PARTS * words));
            let mut i0 = 0;
            while i0 < rows {
                let nr = (rows - i0).min(ROWS);
                let qt = tiles.add(i0 * Self::PARTS * words);
                let out = sbuf.add(i0 * BLOCK);
                macro_rules! tile {
                    ($($n:literal)*) => {
                        match nr {
                            $($n => bf16_scores::<$n, EXACT>(qt, kp, pairs, out),)*
                            _ => unreachable!(),
                        }
                    };
                }
                tile!(1 2 3 4 5 6 7 8);
                i0 += nr;
            }
        }
    }

    fn takes_v<V: Elem>() -> bool {
        !EXACT && core::any::TypeId::of::<V>() == core::any::TypeId::of::<half::bf16>()
    }

    #[inline(always)]
    unsafe fn accumulate(
        rows: usize,
        nb: usize,
        pbuf: *const f32,
        v: *const u8,
        stride: usize,
        dv: usize,
        acc: *mut f32,
        dvp: usize,
        work: *mut f32,
    ) {
        let dv32 = dv.div_ceil(32) * 32;
        let pairs = nb.div_ceil(2);
        // SAFETY: V rows `j < nb` hold `dv` bf16 values; `work` holds the
        // 8 pair rows of `dv32` pairs; P rows hold BLOCK f32 (zero past
        // `nb`); `acc` rows hold `dvp` f32 and `dvp` is a multiple of 16.
        unsafe {
            super::super::amx::pack_v::<false>(v.cast(), stride, nb, dv, dv32, work);
            let vt = dvp / 16;
            let mut i0 = 0;
            while i0 < rows {
                let nr = (rows - i0).min(4);
                // The weights of `nr` rows as bf16 pairs.
                let mut pw = [[0u32; 8]; 4];
                for r in 0..nr {
                    let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(pbuf.add((i0 + r) * BLOCK)));
                    _mm256_storeu_si256(
                        pw[r].as_mut_ptr().cast(),
                        core::mem::transmute::<__m256bh, __m256i>(h),
                    );
                }
                let mut d0 = 0;
                while d0 < vt {
                    let nd = (vt - d0).min(4);
                    let (w, a) = (work.add(d0 * 16), acc.add(i0 * dvp + d0 * 16));
                    macro_rules! tile {
                        ($(($r:literal, $d:literal))*) => {
                            match (nr, nd) {
                                $(($r, $d) => bf16_pv::<$r, $d>(&pw, pairs, w, dv32, a, dvp),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    tile!(
                        (1, 1)(1, 2)(1, 3)(1, 4)(2, 1)(2, 2)(2, 3)(2, 4)(3, 1)(3, 2)(3, 3)(3, 4)(
                            4, 1
                        )(4, 2)(4, 3)(4, 4)
                    );
                    d0 += nd;
                }
                i0 += nr;
            }
        }
    }
}

/// The scores of `NR` query rows of a tile (`qt`, as `interleave` laid
/// them out) against the block's K pairs (`kp`, pair `t` of the 16
/// positions at vector `t`), into rows `BLOCK` f32 apart at `out`. Two
/// accumulators per row (even and odd pairs) keep enough products in
/// flight to cover `vdpbf16ps`' latency.
///
/// # Safety
/// Under avx512bf16; `qt` holds `pairs` words of `ROWS` rows and
/// `Bf16Dot::<EXACT>::PARTS` parts, `kp` `pairs` vectors, `out` `NR` rows.
#[inline(always)]
unsafe fn bf16_scores<const NR: usize, const EXACT: bool>(
    qt: *const f32,
    kp: *const f32,
    pairs: usize,
    out: *mut f32,
) {
    let parts = Bf16Dot::<EXACT>::PARTS;
    // SAFETY: the reads stay inside the regions above.
    unsafe {
        // Macros, not closures: the intrinsics must inline into the
        // caller's target features.
        macro_rules! dot {
            ($acc:expr, $q:expr, $k:expr) => {{
                let w = _mm512_set1_epi32($q.cast::<i32>().read());
                _mm512_dpbf16_ps($acc, core::mem::transmute::<__m512i, __m512bh>(w), $k)
            }};
        }
        macro_rules! kv {
            ($t:expr) => {
                core::mem::transmute::<__m512, __m512bh>(_mm512_load_ps(kp.add($t * 16)))
            };
        }
        let mut a0 = [_mm512_setzero_ps(); NR];
        let mut a1 = [_mm512_setzero_ps(); NR];
        let mut t = 0;
        while t + 1 < pairs {
            let (k0, k1) = (kv!(t), kv!(t + 1));
            let q0 = qt.add(t * ROWS * parts);
            let q1 = q0.add(ROWS * parts);
            for r in 0..NR {
                for p in 0..parts {
                    a0[r] = dot!(a0[r], q0.add(r * parts + p), k0);
                    a1[r] = dot!(a1[r], q1.add(r * parts + p), k1);
                }
            }
            t += 2;
        }
        if t < pairs {
            let k0 = kv!(t);
            let q0 = qt.add(t * ROWS * parts);
            for r in 0..NR {
                for p in 0..parts {
                    a0[r] = dot!(a0[r], q0.add(r * parts + p), k0);
                }
            }
        }
        for r in 0..NR {
            _mm512_storeu_ps(out.add(r * BLOCK), _mm512_add_ps(a0[r], a1[r]));
        }
    }
}

/// `P·V` of `NR` rows (weights `pw`, bf16 pairs of consecutive
/// positions) and `ND` vectors of `Dv` (V pairs at `w`, pair `p` at `p ·
/// dv32`), added to the rows at `acc` (`dvp` f32 apart), accumulators in
/// registers.
///
/// # Safety
/// Under avx512bf16; `w` holds `pairs` pair rows of `ND` vectors, `acc`
/// `NR` rows of `ND` vectors.
#[inline(always)]
unsafe fn bf16_pv<const NR: usize, const ND: usize>(
    pw: &[[u32; 8]; 4],
    pairs: usize,
    w: *const f32,
    dv32: usize,
    acc: *mut f32,
    dvp: usize,
) {
    // SAFETY: the reads and writes stay inside the regions above.
    unsafe {
        let mut a = [[_mm512_setzero_ps(); ND]; NR];
        for r in 0..NR {
            for d in 0..ND {
                a[r][d] = _mm512_loadu_ps(acc.add(r * dvp + d * 16));
            }
        }
        for p in 0..pairs {
            let mut vv = [_mm512_setzero_ps(); ND];
            for d in 0..ND {
                vv[d] = _mm512_loadu_ps(w.add(p * dv32 + d * 16));
            }
            for r in 0..NR {
                let x = _mm512_set1_epi32(pw[r][p] as i32);
                let x = core::mem::transmute::<__m512i, __m512bh>(x);
                for d in 0..ND {
                    let v = core::mem::transmute::<__m512, __m512bh>(vv[d]);
                    a[r][d] = _mm512_dpbf16_ps(a[r][d], x, v);
                }
            }
        }
        for r in 0..NR {
            for d in 0..ND {
                _mm512_storeu_ps(acc.add(r * dvp + d * 16), a[r][d]);
            }
        }
    }
}
