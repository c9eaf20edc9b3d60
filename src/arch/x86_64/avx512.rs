//! The `avx512` tier: 16 f32 lanes, masked loads for every tail, F16C-style
//! widening of f16 (`vcvtph2ps`) and shift-widening of bf16.

use core::arch::x86_64::*;

use super::super::{kernel, ChunkArgs, Dims, Elem, Simd, SimdOp};

/// The AVX-512 vector type marker. Only used inside [`entry`], which is
/// compiled with the tier's features and only reached through the dispatch
/// table after the CPU was checked for them.
#[derive(Clone, Copy)]
pub(crate) struct Avx512;

#[inline(always)]
fn tail_mask(valid: usize) -> u16 {
    if valid >= 16 {
        u16::MAX
    } else {
        ((1u32 << valid) - 1) as u16
    }
}

/// [`Simd::pin`]: an empty `asm!` that takes and returns `v` in a
/// register.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pin(mut v: __m512) -> __m512 {
    // SAFETY: the template is empty (a comment): it reads and writes only
    // the register it is given, no memory, stack or flags.
    unsafe {
        core::arch::asm!("/* {0} */", inout(zmm_reg) v, options(pure, nomem, nostack, preserves_flags));
    }
    v
}

impl Simd for Avx512 {
    const LANES: usize = 16;
    const ROW_TILE: usize = 8;
    const ACC: usize = 16;
    type V = __m512;

    #[inline(always)]
    unsafe fn pin(v: __m512) -> __m512 {
        // SAFETY: caller runs with avx512f (trait contract).
        unsafe { pin(v) }
    }
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: caller runs with avx512f (trait contract).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        // SAFETY: as above.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: caller guarantees 16 readable f32 at `p`.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: caller guarantees 16 writable f32 at `p`.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: register arithmetic under avx512f.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        // SAFETY: register arithmetic under avx512f.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: register arithmetic under avx512f.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        // SAFETY: register arithmetic under avx512f.
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: register arithmetic under avx512f.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        // SAFETY: register arithmetic under avx512f. `vmaxps` returns its
        // second source when either is NaN, so a NaN `b` propagates.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        // SAFETY: as `max`.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn reduce_add(v: __m512) -> f32 {
        // SAFETY: register arithmetic under avx512f.
        unsafe { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    unsafe fn any_gt(v: __m512, x: f32) -> bool {
        // SAFETY: register arithmetic under avx512f.
        unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, _mm512_set1_ps(x)) != 0 }
    }
    #[inline(always)]
    unsafe fn reduce_max(v: __m512) -> f32 {
        // SAFETY: register arithmetic under avx512f.
        unsafe { _mm512_reduce_max_ps(v) }
    }
    #[inline(always)]
    unsafe fn round(v: __m512) -> __m512 {
        // SAFETY: register arithmetic under avx512f; imm 0x08 = nearest-even,
        // exceptions suppressed.
        unsafe { _mm512_roundscale_ps::<0x08>(v) }
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m512) -> __m512 {
        // SAFETY: register arithmetic under avx512f.
        unsafe {
            let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e))
        }
    }
    #[inline(always)]
    unsafe fn mask_tail(v: __m512, valid: usize, fill: f32) -> __m512 {
        // SAFETY: register arithmetic under avx512f.
        unsafe { _mm512_mask_blend_ps(tail_mask(valid), _mm512_set1_ps(fill), v) }
    }
    #[inline(always)]
    unsafe fn transpose_sum(v: &[__m512; 16]) -> __m512 {
        // SAFETY: register arithmetic under avx512f.
        unsafe {
            // Input slot 4k+q takes vector 4q+k, so that the tree below,
            // which leaves slot 4k+q's total in lane 4q+k, returns vector i's
            // total in lane i.
            let ld = |slot: usize| v[(slot % 4) * 4 + slot / 4];
            // Level 1: add the 256-bit halves of pairs of vectors.
            let mut t = [_mm512_setzero_ps(); 8];
            for (i, ti) in t.iter_mut().enumerate() {
                let (a, b) = (ld(2 * i), ld(2 * i + 1));
                let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
                let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
                *ti = _mm512_add_ps(lo, hi);
            }
            // Level 2: add the 128-bit quarters; u[k] quarter q = slot 4k+q.
            let mut u = [_mm512_setzero_ps(); 4];
            for (i, ui) in u.iter_mut().enumerate() {
                let (a, b) = (t[2 * i], t[2 * i + 1]);
                let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b);
                let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b);
                *ui = _mm512_add_ps(lo, hi);
            }
            // Level 3: 4x4 transpose-add inside each 128-bit quarter.
            let y = _mm512_add_ps(
                _mm512_unpacklo_ps(u[0], u[1]),
                _mm512_unpackhi_ps(u[0], u[1]),
            );
            let z = _mm512_add_ps(
                _mm512_unpacklo_ps(u[2], u[3]),
                _mm512_unpackhi_ps(u[2], u[3]),
            );
            let w0 = _mm512_shuffle_ps::<0b01_00_01_00>(y, z);
            let w1 = _mm512_shuffle_ps::<0b11_10_11_10>(y, z);
            _mm512_add_ps(w0, w1)
        }
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32, valid: usize) -> __m512 {
        // SAFETY: masked-off lanes are not accessed (no fault, no read);
        // the caller guarantees `min(valid, 16)` readable f32.
        unsafe { _mm512_maskz_loadu_ps(tail_mask(valid), p) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16, valid: usize) -> __m512 {
        // SAFETY: masked 16-bit load (avx512bw+vl) reads only the valid
        // elements; `vcvtph2ps` widens exactly.
        unsafe {
            let h = _mm256_maskz_loadu_epi16(tail_mask(valid), p.cast());
            _mm512_cvtph_ps(h)
        }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16, valid: usize) -> __m512 {
        // SAFETY: masked 16-bit load reads only the valid elements; bf16 is
        // the high half of an f32, so zero-extend and shift left by 16.
        unsafe {
            let h = _mm256_maskz_loadu_epi16(tail_mask(valid), p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8, valid: usize) -> __m512 {
        // SAFETY: masked byte load (avx512bw+vl) reads only the valid
        // elements; sign extension and int-to-float are exact.
        unsafe {
            let b = _mm_maskz_loadu_epi8(tail_mask(valid), p);
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))
        }
    }
    #[inline(always)]
    unsafe fn load_e5m2(p: *const u8, valid: usize) -> __m512 {
        // SAFETY: masked byte load reads only the valid elements; the byte
        // shifted to the high half is the binary16 of the same value.
        unsafe {
            let b = _mm_maskz_loadu_epi8(tail_mask(valid), p.cast());
            _mm512_cvtph_ps(_mm256_slli_epi16::<8>(_mm256_cvtepu8_epi16(b)))
        }
    }
    #[inline(always)]
    unsafe fn load_e4m3(p: *const u8, valid: usize) -> __m512 {
        // SAFETY: masked byte load reads only the valid elements.
        // Sign-extended and shifted by 7, the byte's magnitude lands in
        // bits 7..=13 and its sign in 14 and 15; clearing 14 leaves the
        // binary16 of `x / 256`.
        unsafe {
            let b = _mm_maskz_loadu_epi8(tail_mask(valid), p.cast());
            let h = _mm256_slli_epi16::<7>(_mm256_cvtepi8_epi16(b));
            _mm512_cvtph_ps(_mm256_and_si256(h, _mm256_set1_epi16(0xBF80u16 as i16)))
        }
    }
    #[inline(always)]
    unsafe fn load_nibbles(p: *const u8, high: bool, lut: &[i8; 16], valid: usize) -> __m512 {
        // SAFETY: masked byte load reads only the valid elements; the
        // codes (`< 16`) index the 16-byte table through `vpshufb` (lanes
        // past `valid` zeroed by its mask), whose levels sign-extend and
        // convert exactly.
        unsafe {
            let m = tail_mask(valid);
            let b = _mm_maskz_loadu_epi8(m, p.cast());
            let b = if high { _mm_srli_epi16::<4>(b) } else { b };
            let codes = _mm_and_si128(b, _mm_set1_epi8(0x0F));
            let q = _mm_maskz_shuffle_epi8(m, _mm_loadu_si128(lut.as_ptr().cast()), codes);
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))
        }
    }
    #[inline(always)]
    unsafe fn bits(bits: u32) -> __m512 {
        // SAFETY: register operation under avx512f: the low 16 bits are a
        // lane mask selecting 1.0.
        unsafe { _mm512_maskz_mov_ps(bits as u16, _mm512_set1_ps(1.0)) }
    }
    #[inline(always)]
    unsafe fn splat_f16(bits: u16) -> __m512 {
        // SAFETY: register conversion under f16c/avx512f.
        unsafe { _mm512_cvtph_ps(_mm256_set1_epi16(bits as i16)) }
    }
    #[inline(always)]
    unsafe fn out_of_line<O: SimdOp>(op: O) -> O::Out {
        // SAFETY: forwarded preconditions (tier available, `op`'s own).
        unsafe { with(op) }
    }
}

/// Entry point of every avx512 kernel instance.
///
/// # Safety
/// The CPU supports the tier's features ([`crate::Tier::features`], the
/// string below) and the preconditions of [`ChunkArgs`] hold.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(crate) unsafe fn entry<K: Elem, V: Elem, D: Dims>(a: &ChunkArgs) {
    // SAFETY: features enabled on this function; forwarded preconditions.
    unsafe { kernel::decode_chunk::<Avx512, K, V, D>(a) }
}

/// Runs `op` on this tier.
///
/// # Safety
/// The CPU supports the tier's features ([`crate::Tier::features`], the
/// string below).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
#[inline(never)]
pub(crate) unsafe fn with<O: SimdOp>(op: O) -> O::Out {
    // SAFETY: the tier's features are enabled on this function.
    unsafe { op.run::<Avx512>() }
}
