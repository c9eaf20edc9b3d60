//! The portable tier: one-lane "vectors" in plain Rust. It runs the same
//! kernel body as the SIMD tiers, so it shares their blocking, masking and
//! online-softmax code paths, and is the fallback on any target.

use super::{kernel, ChunkArgs, Dims, Elem, Simd, SimdOp};

/// The scalar tier's vector type marker.
#[derive(Clone, Copy)]
pub(crate) struct Scalar;

impl Simd for Scalar {
    const LANES: usize = 1;
    const ROW_TILE: usize = 4;
    const ACC: usize = 8;
    type V = f32;

    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        // SAFETY: the caller guarantees `p` is valid for one f32.
        unsafe { p.read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        // SAFETY: the caller guarantees `p` is valid for one f32.
        unsafe { p.write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        // Not `mul_add`: without hardware FMA that is a slow libm call.
        a * b + c
    }
    #[inline(always)]
    unsafe fn max(a: f32, b: f32) -> f32 {
        if b.is_nan() || b > a {
            b
        } else {
            a
        }
    }
    #[inline(always)]
    unsafe fn min(a: f32, b: f32) -> f32 {
        if b.is_nan() || b < a {
            b
        } else {
            a
        }
    }
    #[inline(always)]
    unsafe fn reduce_add(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn any_gt(v: f32, x: f32) -> bool {
        v > x
    }
    #[inline(always)]
    unsafe fn reduce_max(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn round(v: f32) -> f32 {
        v.round_ties_even()
    }
    #[inline(always)]
    unsafe fn pow2i(n: f32) -> f32 {
        f32::from_bits(((n as i32 + 127) as u32) << 23)
    }
    #[inline(always)]
    unsafe fn mask_tail(v: f32, valid: usize, fill: f32) -> f32 {
        if valid >= 1 {
            v
        } else {
            fill
        }
    }
    #[inline(always)]
    unsafe fn transpose_sum(v: &[f32; 16]) -> f32 {
        v[0]
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32, valid: usize) -> f32 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            unsafe { p.read_unaligned() }
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16, valid: usize) -> f32 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            half::f16::from_bits(unsafe { p.read_unaligned() }).to_f32()
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16, valid: usize) -> f32 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            f32::from_bits(u32::from(unsafe { p.read_unaligned() }) << 16)
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8, valid: usize) -> f32 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            f32::from(unsafe { p.read() })
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_e5m2(p: *const u8, valid: usize) -> f32 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            half::f16::from_bits(u16::from(unsafe { p.read() }) << 8).to_f32()
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_e4m3(p: *const u8, valid: usize) -> f32 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            let b = unsafe { p.read() } as i8;
            // Sign-extend, shift the 7 magnitude bits to 7..=13 and keep
            // the sign in bit 15 (bit 14 holds a copy of it: cleared).
            half::f16::from_bits(((i16::from(b) << 7) as u16) & 0xBF80).to_f32()
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn splat_f16(bits: u16) -> f32 {
        half::f16::from_bits(bits).to_f32()
    }
    #[inline(always)]
    unsafe fn out_of_line<O: SimdOp>(op: O) -> O::Out {
        // SAFETY: forwarded preconditions (tier available, `op`'s own).
        unsafe { with(op) }
    }
}

/// Entry point of every scalar kernel instance.
///
/// # Safety
/// The preconditions of [`ChunkArgs`].
pub(crate) unsafe fn entry<K: Elem, V: Elem, D: Dims>(a: &ChunkArgs) {
    // SAFETY: forwarded preconditions; the scalar tier needs no CPU feature.
    unsafe { kernel::decode_chunk::<Scalar, K, V, D>(a) }
}

/// Runs `op` on this tier.
///
/// # Safety
/// None beyond the caller's own (the scalar tier needs no CPU feature).
#[inline(never)]
pub(crate) unsafe fn with<O: SimdOp>(op: O) -> O::Out {
    // SAFETY: the tier's features are enabled on this function.
    unsafe { op.run::<Scalar>() }
}
