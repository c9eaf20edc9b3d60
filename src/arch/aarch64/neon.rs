//! The `neon` tier: 4 f32 lanes, aarch64 baseline (Advanced SIMD is
//! mandatory on aarch64, so this tier is always available there). f16 is
//! widened with `fcvtl`, bf16 with a 16-bit left shift (`ushll`); tails of a
//! row are copied element by element into a zeroed stack vector.

use core::arch::aarch64::*;

use super::super::{kernel, ChunkArgs, Dims, Elem, Simd, SimdOp};

/// The NEON vector type marker.
#[derive(Clone, Copy)]
pub(crate) struct Neon;

/// Loads 4 u16 at `p`, or only the first `valid` of them (zero elsewhere).
#[inline(always)]
unsafe fn load_u16x4(p: *const u16, valid: usize) -> uint16x4_t {
    if valid >= 4 {
        // SAFETY: the caller guarantees 4 readable u16 at `p`.
        unsafe { vld1_u16(p) }
    } else {
        let mut tmp = [0u16; 4];
        for (i, t) in tmp.iter_mut().enumerate().take(valid) {
            // SAFETY: `i < valid` elements are readable at `p`.
            *t = unsafe { p.add(i).read_unaligned() };
        }
        // SAFETY: `tmp` holds 4 u16.
        unsafe { vld1_u16(tmp.as_ptr()) }
    }
}

/// Loads 4 bytes at `p`, or only the first `valid` of them (zero
/// elsewhere), into the low lanes of a vector.
#[inline(always)]
unsafe fn load_u8x4(p: *const u8, valid: usize) -> uint8x8_t {
    let mut tmp = [0u8; 4];
    if valid >= 4 {
        // SAFETY: the caller guarantees 4 readable bytes at `p`.
        tmp = unsafe { p.cast::<[u8; 4]>().read_unaligned() };
    } else {
        for (i, t) in tmp.iter_mut().enumerate().take(valid) {
            // SAFETY: `i < valid` elements are readable at `p`.
            *t = unsafe { p.add(i).read() };
        }
    }
    // SAFETY: register construction under neon.
    unsafe { vcreate_u8(u64::from(u32::from_le_bytes(tmp))) }
}

impl Simd for Neon {
    const LANES: usize = 4;
    const ROW_TILE: usize = 8;
    const ACC: usize = 16;
    type V = float32x4_t;

    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        // SAFETY: neon is baseline on aarch64.
        unsafe { vdupq_n_f32(0.0) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4_t {
        // SAFETY: neon is baseline on aarch64.
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        // SAFETY: caller guarantees 4 readable f32 at `p`.
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        // SAFETY: caller guarantees 4 writable f32 at `p`.
        unsafe { vst1q_f32(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: register arithmetic.
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: register arithmetic.
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: register arithmetic.
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: register arithmetic.
        unsafe { vdivq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // SAFETY: register arithmetic; vfmaq(c, a, b) = c + a * b.
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: register arithmetic; `fmax` propagates NaN.
        unsafe { vmaxq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: register arithmetic; `fmin` propagates NaN.
        unsafe { vminq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn reduce_add(v: float32x4_t) -> f32 {
        // SAFETY: register arithmetic.
        unsafe { vaddvq_f32(v) }
    }
    #[inline(always)]
    unsafe fn any_gt(v: float32x4_t, x: f32) -> bool {
        // SAFETY: register arithmetic.
        unsafe { vmaxvq_u32(vcgtq_f32(v, vdupq_n_f32(x))) != 0 }
    }
    #[inline(always)]
    unsafe fn reduce_max(v: float32x4_t) -> f32 {
        // SAFETY: register arithmetic.
        unsafe { vmaxvq_f32(v) }
    }
    #[inline(always)]
    unsafe fn round(v: float32x4_t) -> float32x4_t {
        // SAFETY: register arithmetic; `frintn` rounds to nearest-even.
        unsafe { vrndnq_f32(v) }
    }
    #[inline(always)]
    unsafe fn pow2i(n: float32x4_t) -> float32x4_t {
        // SAFETY: register arithmetic.
        unsafe {
            let e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
            vreinterpretq_f32_s32(vshlq_n_s32::<23>(e))
        }
    }
    #[inline(always)]
    unsafe fn mask_tail(v: float32x4_t, valid: usize, fill: f32) -> float32x4_t {
        // SAFETY: register arithmetic; `idx` is a 4-element array.
        unsafe {
            let idx_arr = [0u32, 1, 2, 3];
            let idx = vld1q_u32(idx_arr.as_ptr());
            let keep = vcltq_u32(idx, vdupq_n_u32(valid.min(4) as u32));
            vbslq_f32(keep, v, vdupq_n_f32(fill))
        }
    }
    #[inline(always)]
    unsafe fn transpose_sum(v: &[float32x4_t; 16]) -> float32x4_t {
        // SAFETY: register arithmetic.
        unsafe { vpaddq_f32(vpaddq_f32(v[0], v[1]), vpaddq_f32(v[2], v[3])) }
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32, valid: usize) -> float32x4_t {
        if valid >= 4 {
            // SAFETY: 4 readable f32 at `p`.
            unsafe { vld1q_f32(p) }
        } else {
            let mut tmp = [0f32; 4];
            for (i, t) in tmp.iter_mut().enumerate().take(valid) {
                // SAFETY: `i < valid` elements are readable at `p`.
                *t = unsafe { p.add(i).read_unaligned() };
            }
            // SAFETY: `tmp` holds 4 f32.
            unsafe { vld1q_f32(tmp.as_ptr()) }
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16, valid: usize) -> float32x4_t {
        // SAFETY: `load_u16x4` reads only `min(valid, 4)` elements; `fcvtl`
        // widens binary16 to binary32 exactly.
        unsafe { vcvt_f32_f16(vreinterpret_f16_u16(load_u16x4(p, valid))) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16, valid: usize) -> float32x4_t {
        // SAFETY: as `load_f16`; bf16 widens by a 16-bit left shift.
        unsafe { vreinterpretq_f32_u32(vshll_n_u16::<16>(load_u16x4(p, valid))) }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8, valid: usize) -> float32x4_t {
        // SAFETY: `load_u8x4` reads only `min(valid, 4)` bytes; sign
        // extension and int-to-float are exact.
        unsafe {
            let b = vreinterpret_s8_u8(load_u8x4(p.cast(), valid));
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(b))))
        }
    }
    #[inline(always)]
    unsafe fn load_e5m2(p: *const u8, valid: usize) -> float32x4_t {
        // SAFETY: as `load_i8`; the byte shifted to the high half is the
        // binary16 of the same value, widened by `fcvtl`.
        unsafe {
            let h = vget_low_u16(vshll_n_u8::<8>(load_u8x4(p, valid)));
            vcvt_f32_f16(vreinterpret_f16_u16(h))
        }
    }
    #[inline(always)]
    unsafe fn load_e4m3(p: *const u8, valid: usize) -> float32x4_t {
        // SAFETY: as `load_i8`. Sign-extended and shifted by 7, the
        // magnitude lands in bits 7..=13, the sign in 14 and 15; clearing
        // 14 leaves the binary16 of `x / 256`.
        unsafe {
            let w = vmovl_s8(vreinterpret_s8_u8(load_u8x4(p, valid)));
            let h = vandq_u16(
                vreinterpretq_u16_s16(vshlq_n_s16::<7>(w)),
                vdupq_n_u16(0xBF80),
            );
            vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)))
        }
    }
    #[inline(always)]
    unsafe fn load_nibbles(p: *const u8, high: bool, lut: &[i8; 16], valid: usize) -> float32x4_t {
        // SAFETY: `load_u8x4` reads only `min(valid, 4)` bytes; the codes
        // (`< 16`) index the 16-byte table through `tbl`, whose levels
        // sign-extend and convert exactly; a lane past `valid` gets index
        // 0xFF, which `tbl` reads as zero.
        unsafe {
            let b = load_u8x4(p, valid);
            let b = if high { vshr_n_u8::<4>(b) } else { b };
            let mut codes = vand_u8(b, vdup_n_u8(0x0F));
            if valid < 4 {
                let lane = vcreate_u8(0x0706_0504_0302_0100);
                let keep = vclt_u8(lane, vdup_n_u8(valid as u8));
                codes = vorr_u8(codes, vmvn_u8(keep));
            }
            let q = vqtbl1_s8(vld1q_s8(lut.as_ptr()), codes);
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(q))))
        }
    }
    #[inline(always)]
    unsafe fn bits(bits: u32) -> float32x4_t {
        // SAFETY: register arithmetic under neon: lane `l` keeps 1.0 where
        // bit `l` is set.
        unsafe {
            let lane_bit = vld1q_u32([1u32, 2, 4, 8].as_ptr());
            let mask = vtstq_u32(vdupq_n_u32(bits), lane_bit);
            vreinterpretq_f32_u32(vandq_u32(mask, vreinterpretq_u32_f32(vdupq_n_f32(1.0))))
        }
    }
    #[inline(always)]
    unsafe fn splat_f16(bits: u16) -> float32x4_t {
        // SAFETY: register conversion under neon.
        unsafe { vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(bits))) }
    }
    #[inline(always)]
    unsafe fn out_of_line<O: SimdOp>(op: O) -> O::Out {
        // SAFETY: forwarded preconditions (tier available, `op`'s own).
        unsafe { with(op) }
    }
}

/// Entry point of every neon kernel instance.
///
/// # Safety
/// The preconditions of [`ChunkArgs`] (neon is always present on aarch64).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn entry<K: Elem, V: Elem, D: Dims>(a: &ChunkArgs) {
    // SAFETY: forwarded preconditions.
    unsafe { kernel::decode_chunk::<Neon, K, V, D>(a) }
}

/// Runs `op` on this tier.
///
/// # Safety
/// The CPU supports the tier's features ([`crate::Tier::features`], the
/// string below).
#[target_feature(enable = "neon")]
#[inline(never)]
pub(crate) unsafe fn with<O: SimdOp>(op: O) -> O::Out {
    // SAFETY: the tier's features are enabled on this function.
    unsafe { op.run::<Neon>() }
}
