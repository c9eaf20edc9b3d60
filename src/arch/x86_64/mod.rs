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

/// Whether the CPU is an AMD one of family 0x1A or later (Zen 5): CPUID
/// leaf 0 vendor "AuthenticAMD", leaf 1 family (base plus extended).
pub(crate) fn amd_zen5_or_later() -> bool {
    use core::arch::x86_64::__cpuid;
    let l0 = __cpuid(0);
    if (l0.ebx, l0.edx, l0.ecx) != (0x6874_7541, 0x6974_6e65, 0x444d_4163) {
        return false;
    }
    let eax = __cpuid(1).eax;
    let base = (eax >> 8) & 0xF;
    let family = if base == 0xF {
        base + ((eax >> 20) & 0xFF)
    } else {
        base
    };
    family >= 0x1A
}
