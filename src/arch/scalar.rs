//! The portable tier: one-lane "vectors" in plain Rust. It runs the same
//! kernel body as the SIMD tiers, so it shares their blocking, masking and
//! online-softmax code paths, and is the fallback on any target.
//!
//! Its one lane is an f64 register: values are widened to f64 when loaded
//! and rounded to f32 only where the kernel stores them (scores, states,
//! scratch). With one lane, each dot product would otherwise be a single
//! serial f32 sum of `Dk` terms, whose rounding error grows with `Dk` and
//! the logits several times faster than the SIMD tiers' (each lane sums
//! `Dk / LANES` terms, then a tree); the fuzzer found a bf16 case (Dk = 48,
//! |q|, |k| <= 4, bias) where that pushed the scalar tier past the
//! documented tolerance while avx2 and avx512 stayed within a third of it.
//! Scalar f64 arithmetic costs what scalar f32 does.

use super::{kernel, ChunkArgs, Dims, Elem, Simd, SimdOp};

/// The scalar tier's vector type marker.
#[derive(Clone, Copy)]
pub(crate) struct Scalar;

impl Simd for Scalar {
    const LANES: usize = 1;
    const ROW_TILE: usize = 4;
    const ACC: usize = 8;
    type V = f64;

    #[inline(always)]
    unsafe fn zero() -> f64 {
        0.0
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> f64 {
        f64::from(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f64 {
        // SAFETY: the caller guarantees `p` is valid for one f32.
        f64::from(unsafe { p.read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f64) {
        // SAFETY: the caller guarantees `p` is valid for one f32.
        unsafe { p.write_unaligned(v as f32) }
    }
    #[inline(always)]
    unsafe fn add(a: f64, b: f64) -> f64 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f64, b: f64) -> f64 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f64, b: f64) -> f64 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f64, b: f64) -> f64 {
        a / b
    }
    #[inline(always)]
    unsafe fn fma(a: f64, b: f64, c: f64) -> f64 {
        // Not `mul_add`: without hardware FMA that is a slow libm call (the
        // product of two f32-born values is exact in f64 anyway).
        a * b + c
    }
    #[inline(always)]
    unsafe fn max(a: f64, b: f64) -> f64 {
        if b.is_nan() || b > a {
            b
        } else {
            a
        }
    }
    #[inline(always)]
    unsafe fn min(a: f64, b: f64) -> f64 {
        if b.is_nan() || b < a {
            b
        } else {
            a
        }
    }
    #[inline(always)]
    unsafe fn reduce_add(v: f64) -> f32 {
        v as f32
    }
    #[inline(always)]
    unsafe fn any_gt(v: f64, x: f32) -> bool {
        v > f64::from(x)
    }
    #[inline(always)]
    unsafe fn reduce_max(v: f64) -> f32 {
        v as f32
    }
    #[inline(always)]
    unsafe fn round(v: f64) -> f64 {
        v.round_ties_even()
    }
    #[inline(always)]
    unsafe fn pow2i(n: f64) -> f64 {
        // The f32 tiers' values exactly (2^-127 and below are 0.0), so that
        // a masked or underflowing weight is exactly zero here too.
        f64::from(f32::from_bits(((n as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    unsafe fn mask_tail(v: f64, valid: usize, fill: f32) -> f64 {
        if valid >= 1 {
            v
        } else {
            f64::from(fill)
        }
    }
    #[inline(always)]
    unsafe fn transpose_sum(v: &[f64; 16]) -> f64 {
        v[0]
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32, valid: usize) -> f64 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            f64::from(unsafe { p.read_unaligned() })
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16, valid: usize) -> f64 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            half::f16::from_bits(unsafe { p.read_unaligned() }).to_f64()
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16, valid: usize) -> f64 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            f64::from(f32::from_bits(
                u32::from(unsafe { p.read_unaligned() }) << 16,
            ))
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8, valid: usize) -> f64 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            f64::from(unsafe { p.read() })
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_e5m2(p: *const u8, valid: usize) -> f64 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            half::f16::from_bits(u16::from(unsafe { p.read() }) << 8).to_f64()
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_e4m3(p: *const u8, valid: usize) -> f64 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            let b = unsafe { p.read() } as i8;
            // Sign-extend, shift the 7 magnitude bits to 7..=13 and keep
            // the sign in bit 15 (bit 14 holds a copy of it: cleared).
            half::f16::from_bits(((i16::from(b) << 7) as u16) & 0xBF80).to_f64()
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load_nibbles(p: *const u8, high: bool, lut: &[i8; 16], valid: usize) -> f64 {
        if valid >= 1 {
            // SAFETY: `valid >= 1` elements are readable at `p`.
            let b = unsafe { p.read() };
            let code = if high { b >> 4 } else { b & 0x0F };
            f64::from(lut[usize::from(code)])
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn bits(bits: u32) -> f64 {
        f64::from(bits & 1)
    }
    #[inline(always)]
    unsafe fn splat_f16(bits: u16) -> f64 {
        half::f16::from_bits(bits).to_f64()
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
