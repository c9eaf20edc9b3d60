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

/// The (family, model) of an AMD CPU (CPUID leaf 0 vendor "AuthenticAMD";
/// leaf 1 family and model, base plus extended), `None` for other vendors.
fn amd_family_model() -> Option<(u32, u32)> {
    use core::arch::x86_64::__cpuid;
    let l0 = __cpuid(0);
    if (l0.ebx, l0.edx, l0.ecx) != (0x6874_7541, 0x6974_6e65, 0x444d_4163) {
        return None;
    }
    let eax = __cpuid(1).eax;
    let base = (eax >> 8) & 0xF;
    let (family, model) = if base == 0xF {
        (
            base + ((eax >> 20) & 0xFF),
            ((eax >> 12) & 0xF0) | ((eax >> 4) & 0xF),
        )
    } else {
        (base, (eax >> 4) & 0xF)
    };
    Some((family, model))
}

/// Whether the CPU is an AMD one of family 0x1A or later (Zen 5).
pub(crate) fn amd_zen5_or_later() -> bool {
    amd_family_model().is_some_and(|(family, _)| family >= 0x1A)
}

/// Whether the CPU is an AMD Zen 3 (family 0x19, models 0x00-0x0F,
/// 0x20-0x2F and 0x40-0x5F; Zen 4 is the same family, other models).
pub(crate) fn amd_zen3() -> bool {
    amd_family_model().is_some_and(|(family, model)| {
        family == 0x19 && matches!(model, 0x00..=0x0F | 0x20..=0x2F | 0x40..=0x5F)
    })
}
