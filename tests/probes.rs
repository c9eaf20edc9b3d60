//! The machine probes the report divides by: each multiply-add unit's rate
//! exists exactly where the CPU has the unit, and is a plausible rate.

use gqa_kernels::probe::{unit_rate, Unit};
use gqa_kernels::Tier;

#[test]
fn dot_unit_rates_exist_where_the_units_do() {
    assert!(Unit::F32Fma.is_available());
    #[cfg(target_arch = "x86_64")]
    {
        let f = std::is_x86_feature_detected!("avx512f");
        assert_eq!(
            Unit::Bf16Dot.is_available(),
            f && std::is_x86_feature_detected!("avx512bf16")
        );
        let vnni512 = f && std::is_x86_feature_detected!("avx512vnni");
        let vnni256 =
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("avxvnni");
        assert_eq!(Unit::Int8Dot.is_available(), vnni512 || vnni256);
        assert_eq!(
            Unit::Int8Dot.unavailable_on(Tier::Avx512).is_none(),
            vnni512
        );
        assert_eq!(Unit::Int8Dot.unavailable_on(Tier::Avx2).is_none(), vnni256);
    }
    #[cfg(target_arch = "aarch64")]
    assert_eq!(
        Unit::Bf16Dot.is_available(),
        std::arch::is_aarch64_feature_detected!("bf16")
    );
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    assert!(!Unit::Bf16Dot.is_available());
    #[cfg(target_arch = "aarch64")]
    assert_eq!(
        Unit::Int8Dot.is_available(),
        std::arch::is_aarch64_feature_detected!("dotprod")
    );
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    assert!(!Unit::Int8Dot.is_available());
    // Any core with these units does billions of operations per second;
    // the aarch64 suite runs under qemu-user in CI, which emulates `bfdot`
    // at about 10^8.
    let floor = if cfg!(target_arch = "aarch64") {
        1e7
    } else {
        1e9
    };
    // The f32 FMA rate is the report's (and slow under an emulator): only
    // the dot units are timed here.
    for u in [Unit::Bf16Dot, Unit::Int8Dot, Unit::AmxBf16, Unit::AmxInt8] {
        match unit_rate(u, 1) {
            Some(r) => assert!(u.is_available() && r.is_finite() && r > floor, "{u:?}: {r}"),
            // The int8 probe runs on 512-bit vectors (AVX512-VNNI).
            None => assert!(
                u.unavailable_on(Tier::Avx512).is_some(),
                "{u:?} available but not measured"
            ),
        }
    }
    let names: Vec<&str> = Unit::ALL.iter().map(|u| u.name()).collect();
    assert_eq!(
        names,
        ["f32-fma", "bf16-dot", "int8-dot", "amx-bf16", "amx-int8"]
    );
    // The tile units need the CPU's AMX flags (CPUID leaf 7, EDX bits 22,
    // 24, 25) and the OS's permission; where CPUID lacks them they are
    // never available, and a reason is given.
    #[cfg(target_arch = "x86_64")]
    {
        let l7 = core::arch::x86_64::__cpuid_count(7, 0).edx;
        let (tile, bf, i8) = ((l7 >> 24) & 1, (l7 >> 22) & 1, (l7 >> 25) & 1);
        if tile == 0 || bf == 0 {
            assert!(Unit::AmxBf16.unavailable_reason().is_some());
        }
        if tile == 0 || i8 == 0 {
            assert!(Unit::AmxInt8.unavailable_reason().is_some());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    assert!(!Unit::AmxBf16.is_available() && !Unit::AmxInt8.is_available());
}
