//! The x86-64 dot-product units ([`DotUnit`]): AVX512-BF16 `vdpbf16ps`
//! for bf16 K caches, and `vpdpbusd` (AVX512-VNNI on the `avx512` tier,
//! AVX-VNNI on the `avx2` tier) for int8 K caches, with the query
//! quantized to int8.
//!
//! **Scores.** Lanes run over positions: each block's K is transposed in
//! L1 into pairs (bf16) or quadruples (int8) by position, and each query
//! row's pair or quadruple is broadcast against them, so a row's 16 scores
//! accumulate in one register without a horizontal sum (up to [`ROWS`]
//! rows share each K vector). The row tiles take their row count as a
//! const parameter, one instance per count: with a run-time count LLVM
//! kept the accumulators on the stack (a `memcpy` and a load and store
//! around each dot product).
//!
//! - `bf16-dot`: `Fast` rounds q to bf16 (2⁻⁸ relative); `Exact` splits
//!   each f32 q value into bf16 `hi + mid + lo` (all 24 significant bits),
//!   three products per pair, each exact in f32 and summed in f32 like
//!   the f32 kernels'.
//! - `int8-dot`: q is quantized per row, `q ≈ s · c`, `s = max|q| / 127`,
//!   plus parts of the remainder in steps of `s / 128` (`Fast`: one more
//!   part, q held to `2⁻¹⁵·max|q|`, finer than f16) and `s / 128²`
//!   (`Exact`: q held to `2⁻²²·max|q|`). `vpdpbusd`
//!   multiplies unsigned by signed bytes, so the codes are stored as
//!   `c + 128` and each position's `128 · Σ k` (one `vpdpbusd` per K
//!   vector per block, shared by every row) starts its accumulator
//!   negated. Integer sums are exact; the K row scale is applied per
//!   position afterwards, as on the f32 path.
//!
//! **P·V.** `bf16-dot` `Fast` with bf16 V: the block's weights rounded to
//! bf16 pairs of consecutive positions, V rearranged in L1 into the same
//! pairs, one `vdpbf16ps` per pair of positions and 16 values of `Dv`.
//! Every other case runs P·V on f32 FMA (exact weights), which keeps
//! `Exact` within the f32 kernels' tolerance.

// The units' helpers take the kernel's raw pointers and sizes explicitly.
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use core::arch::x86_64::*;

use super::super::kernel::unit::{decode_unit, DotUnit};
use super::super::{pad, ChunkArgs, Elem, Simd, BLOCK};
use super::avx2::Avx2;
use super::avx512::Avx512;

/// Query rows whose scores accumulate together against one K vector (8
/// on AVX-512, 4 on AVX2).
const ROWS: usize = 8;

/// Copies the packed query from row-major order (row `i`, part `p`, word
/// `t` at `(i · parts + p) · words + t`) into tiles of `rt` rows (tile
/// `b`, word `t`, row `r`, part `p` at `((b · words + t) · rt + r) ·
/// parts + p`; rows past `rows` zero), so that the score loop reads the
/// words of a tile's rows for one K vector from consecutive addresses,
/// one pointer for the whole tile.
///
/// # Safety
/// `src` holds `rows · parts · words` words, `dst` `rows.div_ceil(rt) ·
/// rt · parts · words`.
#[inline(always)]
unsafe fn interleave(
    src: *const f32,
    rows: usize,
    parts: usize,
    words: usize,
    rt: usize,
    dst: *mut f32,
) {
    for b in 0..rows.div_ceil(rt) {
        for t in 0..words {
            for r in 0..rt {
                let i = b * rt + r;
                for p in 0..parts {
                    // SAFETY: both offsets are inside the regions above.
                    unsafe {
                        *dst.add(((b * words + t) * rt + r) * parts + p) = if i < rows {
                            *src.add((i * parts + p) * words + t)
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// Mask of the first `n` of 32 lanes.
#[inline(always)]
fn mask32(n: usize) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// Mask of the first `n` of 64 lanes.
#[inline(always)]
fn mask64(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

// ---------------------------------------------------------------- bf16

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
                super::amx::transpose16(&mut r);
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
            super::amx::pack_v::<false>(v.cast(), stride, nb, dv, dv32, work);
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

// ---------------------------------------------------------------- int8

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
            super::amx::transpose16(&mut f);
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

// ---------------------------------------------------------------- entries

/// The `bf16-dot` kernel, bf16 K, V of type `V`.
///
/// # Safety
/// The CPU has the features below; the preconditions of [`ChunkArgs`]
/// hold, with `scratch` at least [`unit_scratch_len`] f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c,avx512bf16")]
pub(crate) unsafe fn bf16_entry<V: Elem, const EXACT: bool>(a: &ChunkArgs) {
    // SAFETY: features enabled on this function; forwarded preconditions.
    unsafe { decode_unit::<Avx512, Bf16Dot<EXACT>, V>(a) }
}

/// The `int8-dot` kernel on the `avx512` tier, int8 K, V of type `V`.
///
/// # Safety
/// As [`bf16_entry`], for the features below.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c,avx512vnni")]
pub(crate) unsafe fn int8_entry_512<V: Elem, const EXACT: bool>(a: &ChunkArgs) {
    // SAFETY: features enabled on this function; forwarded preconditions.
    unsafe { decode_unit::<Avx512, Int8Dot<EXACT>, V>(a) }
}

/// The `int8-dot` kernel on the `avx2` tier (AVX-VNNI), int8 K, V of type
/// `V`.
///
/// # Safety
/// As [`bf16_entry`], for the features below.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(crate) unsafe fn int8_entry_256<V: Elem, const EXACT: bool>(a: &ChunkArgs) {
    // SAFETY: features enabled on this function; forwarded preconditions.
    unsafe { decode_unit::<Avx2, Int8Dot<EXACT>, V>(a) }
}

/// f32 of scratch the kernels of a dot-product unit need (`int8` on the
/// `avx512` tier when `wide`).
pub(crate) fn unit_scratch_len(bf16: bool, wide: bool, rows: usize, dk: usize, dv: usize) -> usize {
    use super::super::kernel::unit::scratch_len_unit as len;
    match (bf16, wide) {
        (true, _) => len::<Avx512, Bf16Dot<true>>(rows, dk, dv),
        (false, true) => len::<Avx512, Int8Dot<true>>(rows, dk, dv),
        (false, false) => len::<Avx2, Int8Dot<true>>(rows, dk, dv),
    }
}

/// Whether the CPU has AVX-VNNI (`vpdpbusd` on 256-bit vectors, VEX).
pub(crate) fn has_avx_vnni() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("avxvnni")
}
