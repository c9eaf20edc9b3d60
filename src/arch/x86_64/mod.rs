//! x86-64 tiers.

pub(crate) mod amx;
pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod dot;
pub(crate) mod dots;

/// Whether the CPU says it is an Intel one (CPUID leaf 0 vendor string
/// "GenuineIntel"): the head-major stream prefetch default depends on it
/// ([`crate::Plan::stream_prefetch`]).
pub(crate) fn intel() -> bool {
    use core::arch::x86_64::__cpuid;
    let l0 = __cpuid(0);
    (l0.ebx, l0.edx, l0.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
}
