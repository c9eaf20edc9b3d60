//! `int8-dot`: `vpdpbusd` (AVX512-VNNI on the `avx512` tier, AVX-VNNI on
//! `avx2`) on int8 K rows against the query quantized to int8 parts; see
//! the parent module for the layouts and precision classes.

use core::arch::x86_64::*;

use super::super::super::kernel::unit::DotUnit;
use super::super::super::{pad, Simd, BLOCK};
use super::super::avx2::Avx2;
use super::super::avx512::Avx512;
use super::{interleave, mask64, ROWS};

/// The integer side of a tier for `vpdpbusd`: vectors of `LANES` i32
/// lanes (`4 · LANES` bytes).
pub(crate) trait ByteDot: Simd {
    /// The integer vector.
    type I: Copy;
    unsafe fn izero() -> Self::I;
    /// `4 · LANES` bytes from `p`, zero past `valid` (reads only those).
    unsafe fn load_bytes(p: *const i8, valid: usize) -> Self::I;
    /// Loads / stores a vector of scratch (aligned to its size).
    unsafe fn load_i(p: *const f32) -> Self::I;
    unsafe fn store_i(p: *mut f32, v: Self::I);
    /// `acc + Σ₄ u · s` per i32 lane (`u` unsigned, `s` signed bytes).
    unsafe fn dpbusd(acc: Self::I, u: Self::I, s: Self::I) -> Self::I;
    unsafe fn isub(a: Self::I, b: Self::I) -> Self::I;
    /// Every byte `b`.
    unsafe fn splat_byte(b: u8) -> Self::I;
    /// The lanes as f32.
    unsafe fn to_f32(v: Self::I) -> Self::V;
    /// Every i32 lane the 4 bytes at `p` (any alignment).
    unsafe fn bcast32(p: *const f32) -> Self::I;
    /// Transposes the first `LANES` vectors as a `LANES × LANES` matrix
    /// of 32-bit lanes.
    unsafe fn transpose(r: &mut [Self::I; 16]);
    /// Four vectors of integral f32 in `[-128, 127]` as `4 · LANES` bytes
    /// `x + 128`, in lane order.
    unsafe fn codes(x: [Self::V; 4]) -> Self::I;
}

impl ByteDot for Avx512 {
    type I = __m512i;
    #[inline(always)]
    unsafe fn izero() -> __m512i {
        // SAFETY: register op under avx512f.
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn load_bytes(p: *const i8, valid: usize) -> __m512i {
        // SAFETY: the masked load reads only the `valid` bytes.
        unsafe { _mm512_maskz_loadu_epi8(mask64(valid), p) }
    }
    #[inline(always)]
    unsafe fn load_i(p: *const f32) -> __m512i {
        // SAFETY: the caller's 64 aligned bytes.
        unsafe { _mm512_load_si512(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store_i(p: *mut f32, v: __m512i) {
        // SAFETY: the caller's 64 aligned bytes.
        unsafe { _mm512_store_si512(p.cast(), v) }
    }
    #[inline(always)]
    unsafe fn dpbusd(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
        // SAFETY: register op; avx512vnni is enabled on the unit's entry.
        unsafe { _mm512_dpbusd_epi32(acc, u, s) }
    }
    #[inline(always)]
    unsafe fn isub(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: register op under avx512f.
        unsafe { _mm512_sub_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn splat_byte(b: u8) -> __m512i {
        // SAFETY: register op under avx512f.
        unsafe { _mm512_set1_epi8(b as i8) }
    }
    #[inline(always)]
    unsafe fn to_f32(v: __m512i) -> __m512 {
        // SAFETY: register op under avx512f.
        unsafe { _mm512_cvtepi32_ps(v) }
    }
    #[inline(always)]
    unsafe fn bcast32(p: *const f32) -> __m512i {
        // SAFETY: the caller's 4 readable bytes.
        unsafe { _mm512_set1_epi32(p.cast::<i32>().read_unaligned()) }
    }
    #[inline(always)]
    unsafe fn transpose(r: &mut [__m512i; 16]) {
        // SAFETY: register shuffles under avx512f.
        unsafe {
            let mut f = r.map(|x| _mm512_castsi512_ps(x));
            super::super::amx::transpose16(&mut f);
            *r = f.map(|x| _mm512_castps_si512(x));
        }
    }
    #[inline(always)]
    unsafe fn codes(x: [__m512; 4]) -> __m512i {
        // SAFETY: register ops under avx512f: each vector of integral
        // values becomes 16 bytes (`vpmovdb`), placed in lane order.
        unsafe {
            let b = |v: __m512| _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));
            let lo = _mm256_set_m128i(b(x[1]), b(x[0]));
            let hi = _mm256_set_m128i(b(x[3]), b(x[2]));
            let all = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            _mm512_xor_si512(all, _mm512_set1_epi8(-128))
        }
    }
}

impl ByteDot for Avx2 {
    type I = __m256i;
    #[inline(always)]
    unsafe fn izero() -> __m256i {
        // SAFETY: register op under avx.
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn load_bytes(p: *const i8, valid: usize) -> __m256i {
        if valid >= 32 {
            // SAFETY: 32 readable bytes at `p`.
            unsafe { _mm256_loadu_si256(p.cast()) }
        } else {
            // A copy of the tail (AVX2 has no byte-masked load).
            let mut tmp = [0i8; 32];
            for (i, t) in tmp.iter_mut().enumerate().take(valid) {
                // SAFETY: `i < valid` bytes are readable at `p`.
                *t = unsafe { *p.add(i) };
            }
            // SAFETY: `tmp` holds 32 bytes.
            unsafe { _mm256_loadu_si256(tmp.as_ptr().cast()) }
        }
    }
    #[inline(always)]
    unsafe fn load_i(p: *const f32) -> __m256i {
        // SAFETY: the caller's 32 aligned bytes.
        unsafe { _mm256_load_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store_i(p: *mut f32, v: __m256i) {
        // SAFETY: the caller's 32 aligned bytes.
        unsafe { _mm256_store_si256(p.cast(), v) }
    }
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: register op; avxvnni is enabled on the unit's entry.
        unsafe { _mm256_dpbusd_avx_epi32(acc, u, s) }
    }
    #[inline(always)]
    unsafe fn isub(a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: register op under avx2.
        unsafe { _mm256_sub_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn splat_byte(b: u8) -> __m256i {
        // SAFETY: register op under avx.
        unsafe { _mm256_set1_epi8(b as i8) }
    }
    #[inline(always)]
    unsafe fn to_f32(v: __m256i) -> __m256 {
        // SAFETY: register op under avx.
        unsafe { _mm256_cvtepi32_ps(v) }
    }
    #[inline(always)]
    unsafe fn bcast32(p: *const f32) -> __m256i {
        // SAFETY: the caller's 4 readable bytes.
        unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) }
    }
    #[inline(always)]
    unsafe fn transpose(r: &mut [__m256i; 16]) {
        // SAFETY: register shuffles under avx.
        unsafe {
            let f = |i: usize| _mm256_castsi256_ps(r[i]);
            let mut t = [_mm256_setzero_ps(); 8];
            for k in 0..4 {
                t[2 * k] = _mm256_unpacklo_ps(f(2 * k), f(2 * k + 1));
                t[2 * k + 1] = _mm256_unpackhi_ps(f(2 * k), f(2 * k + 1));
            }
            let mut u = [_mm256_setzero_ps(); 8];
            for k in 0..2 {
                let b = 4 * k;
                u[b] = _mm256_shuffle_ps::<0x44>(t[b], t[b + 2]);
                u[b + 1] = _mm256_shuffle_ps::<0xEE>(t[b], t[b + 2]);
                u[b + 2] = _mm256_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
                u[b + 3] = _mm256_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
            }
            for k in 0..4 {
                r[k] = _mm256_castps_si256(_mm256_permute2f128_ps::<0x20>(u[k], u[k + 4]));
                r[k + 4] = _mm256_castps_si256(_mm256_permute2f128_ps::<0x31>(u[k], u[k + 4]));
            }
        }
    }
    #[inline(always)]
    unsafe fn codes(x: [__m256; 4]) -> __m256i {
        // SAFETY: register ops under avx2. The packs work per 128-bit
        // half; the final permute puts the four vectors back in order.
        unsafe {
            let ab = _mm256_packs_epi32(_mm256_cvtps_epi32(x[0]), _mm256_cvtps_epi32(x[1]));
            let cd = _mm256_packs_epi32(_mm256_cvtps_epi32(x[2]), _mm256_cvtps_epi32(x[3]));
            let abcd = _mm256_packs_epi16(ab, cd);
            let ordered =
                _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_xor_si256(ordered, _mm256_set1_epi8(-128))
        }
    }
}

/// `vpdpbusd` on int8 K; `EXACT` selects the precision class.
#[derive(Clone, Copy)]
pub(crate) struct Int8Dot<const EXACT: bool>;

impl<const EXACT: bool> Int8Dot<EXACT> {
    /// int8 parts of each q value: two hold it to `2⁻¹⁵·max|q|`, finer
    /// than f16 (one part, 7 bits, was less accurate than llama.cpp's
    /// f16 path on model-like data: `tests/precision.rs`); three to
    /// `2⁻²²·max|q|`.
    const PARTS: usize = if EXACT { 3 } else { 2 };
    /// Ratio of consecutive parts' steps.
    const STEP: f32 = 128.0;

    /// Query rows per score tile: [`ROWS`] with 32 vector registers, half
    /// with 16.
    fn rt<S: Simd>() -> usize {
        if S::LANES == 16 {
            ROWS
        } else {
            ROWS / 2
        }
    }
}

impl<S: ByteDot, const EXACT: bool> DotUnit<S> for Int8Dot<EXACT> {
    type K = i8;

    fn q_len(rows: usize, dk: usize) -> usize {
        // Codes, `PARTS` steps per row, then the codes in tiles of rows
        // (`interleave`).
        let words = Self::PARTS * dk.div_ceil(4 * S::LANES) * S::LANES;
        let rt = Self::rt::<S>();
        rows * words + pad(rows * Self::PARTS) + rows.div_ceil(rt) * rt * words
    }

    fn work_len(dk: usize, _dv: usize) -> usize {
        // Per group of `LANES` positions: a correction vector and the
        // group's K as quadruples by position.
        BLOCK / S::LANES * (1 + dk.div_ceil(4 * S::LANES) * S::LANES) * S::LANES
    }

    /// Row `i`, part `p`, step `c` (`4 · LANES` values) is the vector at
    /// `((i * PARTS + p) * kc + c) * LANES` f32; the step of part `p` of
    /// row `i` is the f32 at `rows * PARTS * kc * LANES + i * PARTS + p`.
    #[inline(always)]
    unsafe fn pack_q(q: *const f32, rows: usize, dk: usize, out: *mut f32) {
        let dkp = pad(dk);
        let l = S::LANES;
        let kc = dk.div_ceil(4 * l);
        let steps = out.wrapping_add(rows * Self::PARTS * kc * l);
        // SAFETY: q rows hold `dkp` f32 (loads limited to them); `out`
        // holds `q_len` f32.
        unsafe {
            for i in 0..rows {
                let row = q.add(i * dkp);
                let mut mx = S::zero();
                let mut c = 0;
                while c < dkp {
                    let x = S::load_f32(row.add(c), dkp - c);
                    mx = S::max(mx, S::max(x, S::sub(S::zero(), x)));
                    c += l;
                }
                let m = S::reduce_max(mx);
                let mut step = if m > 0.0 { m / 127.0 } else { 1.0 };
                // The remainders of the previous parts, `4 · LANES` values
                // at a time.
                for p in 0..Self::PARTS {
                    *steps.add(i * Self::PARTS + p) = step;
                    let inv = S::splat(1.0 / step);
                    for c in 0..kc {
                        let mut x = [S::zero(); 4];
                        for t in 0..4 {
                            let o = c * 4 * l + t * l;
                            if o < dkp {
                                let src = row.add(o);
                                let mut v = S::load_f32(src, dkp - o);
                                // Subtract the earlier parts' codes
                                // (steps `s_0 = step · STEP^p`, ...).
                                let mut s = step * Self::STEP.powi(p as i32);
                                for _ in 0..p {
                                    let code = S::round(S::mul(v, S::splat(1.0 / s)));
                                    v = S::sub(v, S::mul(code, S::splat(s)));
                                    s /= Self::STEP;
                                }
                                let code = S::round(S::mul(v, inv));
                                // |code| <= 127 (part 0) or 64 (the rest);
                                // clamp against rounding at the edge.
                                x[t] = S::min(S::max(code, S::splat(-127.0)), S::splat(127.0));
                            }
                        }
                        let dst = out.add(((i * Self::PARTS + p) * kc + c) * l);
                        S::store_i(dst, S::codes(x));
                    }
                    step /= Self::STEP;
                }
            }
            let words = kc * l;
            let tiles = steps.add(pad(rows * Self::PARTS));
            interleave(out, rows, Self::PARTS, words, Self::rt::<S>(), tiles);
        }
    }

    #[inline(always)]
    unsafe fn scores(
        qp: *const f32,
        rows: usize,
        dk: usize,
        k: *const i8,
        stride: usize,
        nb: usize,
        sbuf: *mut f32,
        work: *mut f32,
    ) {
        let l = S::LANES;
        let kc = dk.div_ceil(4 * l);
        let quads = dk.div_ceil(4);
        let steps = qp.wrapping_add(rows * Self::PARTS * kc * l);
        let rt = Self::rt::<S>();
        let tiles = steps.wrapping_add(pad(rows * Self::PARTS));
        // Per group of `LANES` positions: its correction `-128 · Σ k` per
        // position, then its K as quadruples by position (vector `t`
        // holds values `4t..4t + 4` of each position), so a row's scores
        // accumulate in one register with its quadruple `t` broadcast.
        let group = (1 + kc * l) * l;
        // SAFETY: K rows `j < nb` hold `dk` bytes (loads limited to them);
        // `work` holds `BLOCK / LANES` groups (`work_len`); the packed
        // query as `pack_q` wrote it; `sbuf` rows hold BLOCK f32.
        unsafe {
            let ones = S::splat_byte(0x80);
            let mut h = 0;
            while h < nb {
                let n = (nb - h).min(l);
                let w = work.add(h / l * group);
                let mut corr = S::izero();
                for c in 0..kc {
                    let mut r = [S::izero(); 16];
                    for j in 0..n {
                        r[j] = S::load_bytes(k.add((h + j) * stride + c * 4 * l), dk - c * 4 * l);
                    }
                    S::transpose(&mut r);
                    for t in 0..l {
                        S::store_i(w.add((1 + c * l + t) * l), r[t]);
                        corr = S::dpbusd(corr, ones, r[t]);
                    }
                }
                S::store_i(w, S::isub(S::izero(), corr));
                h += l;
            }
            h = 0;
            while h < BLOCK {
                let w = work.add(h / l * group);
                let mut i0 = 0;
                while i0 < rows {
                    let nr = (rows - i0).min(rt);
                    if h >= nb {
                        for r in 0..nr {
                            S::store(sbuf.add((i0 + r) * BLOCK + h), S::zero());
                        }
                        i0 += nr;
                        continue;
                    }
                    let qt = tiles.add(i0 * Self::PARTS * kc * l);
                    let st = steps.add(i0 * Self::PARTS);
                    let out = sbuf.add(i0 * BLOCK + h);
                    macro_rules! tile {
                        ($($n:literal)*) => {
                            match nr {
                                $($n => int8_scores::<S, $n, EXACT>(qt, rt, w, quads, st, out),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    tile!(1 2 3 4 5 6 7 8);
                    i0 += nr;
                }
                h += l;
            }
        }
    }
}

/// The scores of `NR` query rows of a tile of `rt` rows (`qt`, as
/// `interleave` laid them out; their parts' steps at `st`) against a
/// group of `LANES` positions (`w`: the correction vector, then
/// quadruple `t` of every position at vector `1 + t`), into rows `BLOCK`
/// f32 apart at `out`; accumulators in registers.
///
/// # Safety
/// Under the unit's features; the regions as `Int8Dot::scores` sets them.
#[inline(always)]
unsafe fn int8_scores<S: ByteDot, const NR: usize, const EXACT: bool>(
    qt: *const f32,
    rt: usize,
    w: *const f32,
    quads: usize,
    st: *const f32,
    out: *mut f32,
) {
    let parts = Int8Dot::<EXACT>::PARTS;
    let l = S::LANES;
    // SAFETY: the reads and writes stay inside the regions above.
    unsafe {
        let neg = S::load_i(w);
        let mut acc = [[neg; 3]; NR];
        for t in 0..quads {
            let kv = S::load_i(w.add((1 + t) * l));
            let qw = qt.add(t * rt * parts);
            for r in 0..NR {
                for p in 0..parts {
                    acc[r][p] = S::dpbusd(acc[r][p], S::bcast32(qw.add(r * parts + p)), kv);
                }
            }
        }
        for r in 0..NR {
            let mut sv = S::zero();
            for p in 0..parts {
                sv = S::fma(S::to_f32(acc[r][p]), S::splat(*st.add(r * parts + p)), sv);
            }
            S::store(out.add(r * BLOCK), sv);
        }
    }
}
