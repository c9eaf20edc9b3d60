//! Throughput probes of the x86-64 dot-product units the kernels do not use
//! yet: AVX512-BF16 `vdpbf16ps` (pairs of bf16 products summed into f32)
//! and AVX512-VNNI `vpdpbusd` (four u8 × i8 products summed into i32). They
//! say what a kernel on those units could reach on this core, next to the
//! f32 FMA rate the kernels run at today.

use core::arch::x86_64::*;

/// Whether this CPU has `vdpbf16ps` on 512-bit vectors.
pub(crate) fn has_bf16_dot() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
}

/// Whether this CPU has `vpdpbusd` on 512-bit vectors.
pub(crate) fn has_int8_dot() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni")
}

/// [`bf16_dot`] where the CPU has it.
pub(crate) fn bf16_dot_ops(iters: usize) -> Option<f64> {
    // SAFETY: the features `bf16_dot` needs were detected.
    has_bf16_dot().then(|| unsafe { bf16_dot(iters) })
}

/// [`int8_dot`] where the CPU has it.
pub(crate) fn int8_dot_ops(iters: usize) -> Option<f64> {
    // SAFETY: the features `int8_dot` needs were detected.
    has_int8_dot().then(|| unsafe { int8_dot(iters) })
}

/// Independent accumulator chains: enough to cover the instruction's
/// latency on the cores this runs on (5-6 cycles, two ports).
const CHAINS: usize = 12;

/// `iters` rounds of `CHAINS` independent `vdpbf16ps` on 512-bit registers;
/// returns the FLOPs done (each instruction: 16 lanes × 2 products × 2).
///
/// # Safety
/// The CPU supports avx512f and avx512bf16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_dot(iters: usize) -> f64 {
    let one = _mm512_set1_ps(1.0);
    let a = std::hint::black_box(_mm512_cvtne2ps_pbh(one, one));
    let b = std::hint::black_box(_mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-7), one));
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbf16_ps(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in acc {
        s = _mm512_add_ps(s, x);
    }
    std::hint::black_box(_mm512_reduce_add_ps(s));
    (iters * CHAINS * 16 * 2 * 2) as f64
}

/// `iters` rounds of `CHAINS` independent `vpdpbusd` on 512-bit registers;
/// returns the integer operations done (each: 16 lanes × 4 products × 2).
///
/// # Safety
/// The CPU supports avx512f and avx512vnni.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn int8_dot(iters: usize) -> f64 {
    let a = std::hint::black_box(_mm512_set1_epi8(3));
    let b = std::hint::black_box(_mm512_set1_epi8(-2));
    let mut acc = [_mm512_setzero_si512(); CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbusd_epi32(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_si512();
    for x in acc {
        s = _mm512_add_epi32(s, x);
    }
    std::hint::black_box(_mm512_reduce_add_epi32(s));
    (iters * CHAINS * 16 * 4 * 2) as f64
}
