//! The `avx2` tier: 8 f32 lanes, AVX2 + FMA + F16C. The tail of a row is
//! copied element by element into a zeroed stack vector (a scalar epilogue),
//! so nothing past a row is read.

use core::arch::x86_64::*;

use super::super::{kernel, ChunkArgs, Dims, Elem, Simd, SimdOp};

/// The AVX2 vector type marker. Only used inside [`entry`].
#[derive(Clone, Copy)]
pub(crate) struct Avx2;

/// Loads 8 u16 at `p`, or only the first `valid` of them (zero elsewhere).
#[inline(always)]
unsafe fn load_u16x8(p: *const u16, valid: usize) -> __m128i {
    if valid >= 8 {
        // SAFETY: the caller guarantees 8 readable u16 at `p`.
        unsafe { _mm_loadu_si128(p.cast()) }
    } else {
        let mut tmp = [0u16; 8];
        for (i, t) in tmp.iter_mut().enumerate().take(valid) {
            // SAFETY: `i < valid` elements are readable at `p`.
            *t = unsafe { p.add(i).read_unaligned() };
        }
        // SAFETY: `tmp` is 16 readable bytes.
        unsafe { _mm_loadu_si128(tmp.as_ptr().cast()) }
    }
}

/// Loads 8 bytes at `p`, or only the first `valid` of them (zero elsewhere),
/// into the low half of a vector.
#[inline(always)]
unsafe fn load_u8x8(p: *const u8, valid: usize) -> __m128i {
    if valid >= 8 {
        // SAFETY: the caller guarantees 8 readable bytes at `p`.
        unsafe { _mm_loadl_epi64(p.cast()) }
    } else {
        let mut tmp = [0u8; 16];
        for (i, t) in tmp.iter_mut().enumerate().take(valid) {
            // SAFETY: `i < valid` elements are readable at `p`.
            *t = unsafe { p.add(i).read() };
        }
        // SAFETY: `tmp` is 16 readable bytes.
        unsafe { _mm_loadu_si128(tmp.as_ptr().cast()) }
    }
}

#[inline(always)]
unsafe fn lane_mask(valid: usize) -> __m256i {
    // SAFETY: register arithmetic under avx2.
    unsafe {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(valid.min(8) as i32), idx)
    }
}

#[inline(always)]
unsafe fn hsum128(x: __m128) -> f32 {
    // SAFETY: register arithmetic under avx.
    unsafe {
        let s = _mm_add_ps(x, _mm_movehl_ps(x, x));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }
}

impl Simd for Avx2 {
    const LANES: usize = 8;
    const ROW_TILE: usize = 4;
    const ACC: usize = 8;
    type V = __m256;

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: caller runs with avx2 (trait contract).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        // SAFETY: as above.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: caller guarantees 8 readable f32 at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: caller guarantees 8 writable f32 at `p`.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: register arithmetic under avx.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        // SAFETY: register arithmetic under avx.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: register arithmetic under avx.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        // SAFETY: register arithmetic under avx.
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: register arithmetic under fma.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        // SAFETY: register arithmetic under avx; NaN in `b` propagates.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        // SAFETY: register arithmetic under avx; NaN in `b` propagates.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn reduce_add(v: __m256) -> f32 {
        // SAFETY: register arithmetic under avx.
        unsafe {
            hsum128(_mm_add_ps(
                _mm256_castps256_ps128(v),
                _mm256_extractf128_ps::<1>(v),
            ))
        }
    }
    #[inline(always)]
    unsafe fn any_gt(v: __m256, x: f32) -> bool {
        // SAFETY: register arithmetic under avx.
        unsafe { _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, _mm256_set1_ps(x))) != 0 }
    }
    #[inline(always)]
    unsafe fn reduce_max(v: __m256) -> f32 {
        // SAFETY: register arithmetic under avx.
        unsafe {
            let x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let x = _mm_max_ps(x, _mm_movehl_ps(x, x));
            let x = _mm_max_ss(x, _mm_shuffle_ps::<0b01>(x, x));
            _mm_cvtss_f32(x)
        }
    }
    #[inline(always)]
    unsafe fn round(v: __m256) -> __m256 {
        // SAFETY: register arithmetic under avx; nearest-even, no exceptions.
        unsafe { _mm256_round_ps::<0x08>(v) }
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m256) -> __m256 {
        // SAFETY: register arithmetic under avx2.
        unsafe {
            let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
        }
    }
    #[inline(always)]
    unsafe fn mask_tail(v: __m256, valid: usize, fill: f32) -> __m256 {
        // SAFETY: register arithmetic under avx2.
        unsafe {
            let keep = _mm256_castsi256_ps(lane_mask(valid));
            _mm256_blendv_ps(_mm256_set1_ps(fill), v, keep)
        }
    }
    #[inline(always)]
    unsafe fn transpose_sum(v: &[__m256; 16]) -> __m256 {
        // SAFETY: register arithmetic under avx.
        unsafe {
            let ld = |i: usize| v[i];
            // hadd(a, b) = [a01 a23 b01 b23 | a45 a67 b45 b67]
            let ab = _mm256_hadd_ps(ld(0), ld(1));
            let cd = _mm256_hadd_ps(ld(2), ld(3));
            let ef = _mm256_hadd_ps(ld(4), ld(5));
            let gh = _mm256_hadd_ps(ld(6), ld(7));
            // [a b c d (low halves) | a b c d (high halves)]
            let abcd = _mm256_hadd_ps(ab, cd);
            let efgh = _mm256_hadd_ps(ef, gh);
            let lo = _mm256_permute2f128_ps::<0x20>(abcd, efgh);
            let hi = _mm256_permute2f128_ps::<0x31>(abcd, efgh);
            _mm256_add_ps(lo, hi)
        }
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32, valid: usize) -> __m256 {
        if valid >= 8 {
            // SAFETY: 8 readable f32 at `p`.
            unsafe { _mm256_loadu_ps(p) }
        } else {
            // A scalar epilogue rather than `vmaskmovps`: it is as fast for
            // one tail per row, and emulators that implement the masked load
            // as a full-width read cannot fault on it.
            let mut tmp = [0f32; 8];
            for (i, t) in tmp.iter_mut().enumerate().take(valid) {
                // SAFETY: `i < valid` elements are readable at `p`.
                *t = unsafe { p.add(i).read_unaligned() };
            }
            // SAFETY: `tmp` holds 8 f32.
            unsafe { _mm256_loadu_ps(tmp.as_ptr()) }
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16, valid: usize) -> __m256 {
        // SAFETY: `load_u16x8` reads only `min(valid, 8)` elements; F16C
        // widens exactly.
        unsafe { _mm256_cvtph_ps(load_u16x8(p, valid)) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16, valid: usize) -> __m256 {
        // SAFETY: as `load_f16`; bf16 widens by a 16-bit left shift.
        unsafe {
            let w = _mm256_cvtepu16_epi32(load_u16x8(p, valid));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
        }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8, valid: usize) -> __m256 {
        // SAFETY: `load_u8x8` reads only `min(valid, 8)` bytes; sign
        // extension and int-to-float are exact.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load_u8x8(p.cast(), valid))) }
    }
    #[inline(always)]
    unsafe fn load_e5m2(p: *const u8, valid: usize) -> __m256 {
        // SAFETY: as `load_i8`; the byte shifted to the high half is the
        // binary16 of the same value.
        unsafe { _mm256_cvtph_ps(_mm_slli_epi16::<8>(_mm_cvtepu8_epi16(load_u8x8(p, valid)))) }
    }
    #[inline(always)]
    unsafe fn load_e4m3(p: *const u8, valid: usize) -> __m256 {
        // SAFETY: as `load_i8`. Sign-extended and shifted by 7, the
        // magnitude lands in bits 7..=13, the sign in 14 and 15; clearing
        // 14 leaves the binary16 of `x / 256`.
        unsafe {
            let h = _mm_slli_epi16::<7>(_mm_cvtepi8_epi16(load_u8x8(p, valid)));
            _mm256_cvtph_ps(_mm_and_si128(h, _mm_set1_epi16(0xBF80u16 as i16)))
        }
    }
    #[inline(always)]
    unsafe fn load_nibbles(p: *const u8, high: bool, lut: &[i8; 16], valid: usize) -> __m256 {
        // SAFETY: `load_u8x8` reads only `min(valid, 8)` bytes; the codes
        // (`< 16`) index the 16-byte table through `vpshufb`, whose levels
        // sign-extend and convert exactly; a lane past `valid` gets index
        // 0xFF, which `vpshufb` reads as zero.
        unsafe {
            let b = load_u8x8(p, valid);
            let b = if high { _mm_srli_epi16::<4>(b) } else { b };
            let mut codes = _mm_and_si128(b, _mm_set1_epi8(0x0F));
            if valid < 8 {
                let lane = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
                let keep = _mm_cmplt_epi8(lane, _mm_set1_epi8(valid as i8));
                codes = _mm_or_si128(codes, _mm_andnot_si128(keep, _mm_set1_epi8(-1)));
            }
            let q = _mm_shuffle_epi8(_mm_loadu_si128(lut.as_ptr().cast()), codes);
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))
        }
    }
    #[inline(always)]
    unsafe fn bits(bits: u32) -> __m256 {
        // SAFETY: register arithmetic under avx2: lane `l` keeps 1.0 where
        // bit `l` is set.
        unsafe {
            let lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
            let set = _mm256_and_si256(_mm256_set1_epi32(bits as i32), lane_bit);
            let mask = _mm256_cmpeq_epi32(set, lane_bit);
            _mm256_and_ps(_mm256_castsi256_ps(mask), _mm256_set1_ps(1.0))
        }
    }
    #[inline(always)]
    unsafe fn splat_f16(bits: u16) -> __m256 {
        // SAFETY: register conversion under f16c.
        unsafe { _mm256_cvtph_ps(_mm_set1_epi16(bits as i16)) }
    }
    #[inline(always)]
    unsafe fn out_of_line<O: SimdOp>(op: O) -> O::Out {
        // SAFETY: forwarded preconditions (tier available, `op`'s own).
        unsafe { with(op) }
    }
}

/// Entry point of every avx2 kernel instance.
///
/// # Safety
/// The CPU supports the tier's features ([`crate::Tier::features`], the
/// string below) and the preconditions of [`ChunkArgs`] hold.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn entry<K: Elem, V: Elem, D: Dims>(a: &ChunkArgs) {
    // SAFETY: features enabled on this function; forwarded preconditions.
    unsafe { kernel::decode_chunk::<Avx2, K, V, D>(a) }
}

/// Runs `op` on this tier.
///
/// # Safety
/// The CPU supports the tier's features ([`crate::Tier::features`], the
/// string below).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(crate) unsafe fn with<O: SimdOp>(op: O) -> O::Out {
    // SAFETY: the tier's features are enabled on this function.
    unsafe { op.run::<Avx2>() }
}
