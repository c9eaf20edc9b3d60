//! Tier detection, the process-wide tier choice and the kernel table.
//!
//! CPU features are detected once and cached; the `GQA_KERNELS_ISA`
//! environment variable, read once, forces a tier for the whole process (an
//! unknown name or a tier this CPU lacks is an error, never a silent
//! fallback). Plans may also name a tier explicitly ([`crate::Options::tier`]).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

#[cfg(not(any(test, feature = "generic-only")))]
use crate::arch::Fixed;
use crate::arch::{Dynamic, KernelFn};
use crate::error::{Error, Result};
use crate::formats::Dtype;
pub use crate::tier::{Precision, Tier, Unit};

impl Tier {
    /// Whether this CPU and build target can run the tier (detected once),
    /// and this build has its kernels (every tier unless the build set
    /// `GQA_KERNELS_TIERS`).
    pub fn is_available(self) -> bool {
        static DETECTED: OnceLock<[bool; Tier::ALL.len()]> = OnceLock::new();
        DETECTED.get_or_init(|| Tier::ALL.map(detect))[self as usize]
            && generated::BUILT[self as usize]
    }

    /// The fastest available tier.
    pub fn best() -> Tier {
        Tier::ALL
            .into_iter()
            .rev()
            .find(|t| t.is_available())
            .unwrap_or(Tier::Scalar)
    }

    /// Every available tier, slowest first.
    pub fn available() -> Vec<Tier> {
        Tier::ALL.into_iter().filter(|t| t.is_available()).collect()
    }

    /// `self` if available, else [`Error::TierUnavailable`].
    pub fn require(self) -> Result<Tier> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(Error::TierUnavailable { tier: self })
        }
    }

    /// Number of decode runs this process executed on the tier (every
    /// [`crate::Plan::run`] counts once). Lets a test prove that a tier was
    /// exercised, not skipped.
    pub fn runs(self) -> u64 {
        RUNS[self as usize].load(Ordering::Relaxed)
    }
}

static RUNS: [AtomicU64; Tier::ALL.len()] = [const { AtomicU64::new(0) }; Tier::ALL.len()];

pub(crate) fn count_run(tier: Tier) {
    RUNS[tier as usize].fetch_add(1, Ordering::Relaxed);
}

impl FromStr for Tier {
    type Err = Error;
    fn from_str(s: &str) -> Result<Tier> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| Error::UnknownTier {
                name: s.to_string(),
            })
    }
}

/// Whether this CPU has every feature of `features` (the detection macros
/// take the features as literal tokens, so the tier table's rows are spelled
/// into them here; a tier of another target is never detected).
macro_rules! detect_features {
    ([all()]) => {
        true
    };
    ([target_arch = "x86_64"] $($f:tt)*) => {{
        #[cfg(target_arch = "x86_64")]
        let yes = true $(&& std::arch::is_x86_feature_detected!($f))*;
        #[cfg(not(target_arch = "x86_64"))]
        let yes = false;
        yes
    }};
    ([target_arch = "aarch64"] $($f:tt)*) => {{
        #[cfg(target_arch = "aarch64")]
        let yes = true $(&& std::arch::is_aarch64_feature_detected!($f))*;
        #[cfg(not(target_arch = "aarch64"))]
        let yes = false;
        yes
    }};
}

/// `detect(t)`: whether this CPU can run code compiled for `t`, every
/// feature of [`Tier::features`] detected (none for the portable tier);
/// one arm per row of the tier table.
macro_rules! define_detect {
    ($( $(#[$doc:meta])* $v:ident $code:literal $name:literal [$($cfg:tt)*]
        $m0:ident $(:: $m:ident)* [$($feature:tt)*]; )*) => {
        fn detect(t: Tier) -> bool {
            match t {
                $( Tier::$v => detect_features!([$($cfg)*] $($feature)*), )*
            }
        }
    };
}
crate::tier::tier_table!(define_detect);

/// Name of the environment variable that forces a tier for the process.
pub const ISA_ENV: &str = "GQA_KERNELS_ISA";

/// The tier plans use when none is named: `GQA_KERNELS_ISA` if set (read
/// once per process; an unknown or unavailable tier is an error), else
/// [`Tier::best`].
pub fn active_tier() -> Result<Tier> {
    static ACTIVE: OnceLock<Result<Tier>> = OnceLock::new();
    ACTIVE
        .get_or_init(|| match std::env::var(ISA_ENV) {
            Ok(name) if !name.trim().is_empty() => name.parse::<Tier>().and_then(Tier::require),
            _ => Ok(Tier::best()),
        })
        .clone()
}

/// Whether the CPU has AMX tiles (AMX-TILE and AMX-BF16), whether or not
/// this process may use them.
pub(crate) fn cpu_has_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::arch::x86_64::amx::cpu_has_tiles();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl Unit {
    /// Whether this process can use the unit; for AMX that includes the
    /// operating system's permission (see [`Unit::unavailable_reason`]).
    pub fn is_available(self) -> bool {
        self.unavailable_reason().is_none()
    }

    /// Why the unit cannot be used here, or `None` where it can.
    pub fn unavailable_reason(self) -> Option<&'static str> {
        match self {
            Unit::F32Fma => None,
            #[cfg(target_arch = "x86_64")]
            Unit::Bf16Dot => (!crate::arch::x86_64::dots::has_bf16_dot())
                .then_some("this CPU has no AVX512-BF16"),
            #[cfg(target_arch = "aarch64")]
            Unit::Bf16Dot => (!crate::arch::aarch64::dot::has_bf16_dot())
                .then_some("this CPU has no BF16 (FEAT_BF16, `bfdot`)"),
            #[cfg(target_arch = "aarch64")]
            Unit::Int8Dot => (!crate::arch::aarch64::dot::has_int8_dot())
                .then_some("this CPU has no dot product (FEAT_DotProd, `sdot`)"),
            #[cfg(target_arch = "x86_64")]
            Unit::Int8Dot => (!crate::arch::x86_64::dots::has_int8_dot()
                && !crate::arch::x86_64::dot::has_avx_vnni())
            .then_some("this CPU has neither AVX512-VNNI nor AVX-VNNI"),
            #[cfg(target_arch = "x86_64")]
            Unit::AmxBf16 => crate::arch::x86_64::amx::status().err(),
            #[cfg(target_arch = "x86_64")]
            Unit::AmxInt8 => crate::arch::x86_64::amx::int8_status().err(),
            #[allow(unreachable_patterns)]
            _ => Some("not an instruction of this architecture"),
        }
    }

    /// Why the unit's kernels of `tier` cannot run here, or `None` where
    /// they can: [`Unit::unavailable_reason`], and for `int8-dot` the
    /// instruction of that tier (AVX512-VNNI on `avx512`, AVX-VNNI on
    /// `avx2`).
    pub fn unavailable_on(self, tier: Tier) -> Option<&'static str> {
        match (self, tier) {
            #[cfg(target_arch = "x86_64")]
            (Unit::Int8Dot, Tier::Avx512) => (!crate::arch::x86_64::dots::has_int8_dot())
                .then_some("this CPU has no AVX512-VNNI (the avx512 tier's int8 dot product)"),
            #[cfg(target_arch = "x86_64")]
            (Unit::Int8Dot, Tier::Avx2) => (!crate::arch::x86_64::dot::has_avx_vnni())
                .then_some("this CPU has no AVX-VNNI (the avx2 tier's int8 dot product)"),
            _ => self.unavailable_reason(),
        }
    }

    /// Whether the library has kernels on this unit for K and V of these
    /// types on `tier`: f32 FMA for every pair and tier; AMX for bf16 K and
    /// V on the `avx512` tier; `bf16-dot` for bf16 K on `avx512` and
    /// `neon` and `int8-dot` for int8 K on `avx512`, `avx2` and `neon`,
    /// each with V of f32, f16, bf16 or int8.
    pub fn runs(self, tier: Tier, k: Dtype, v: Dtype) -> bool {
        let dot_v = matches!(v, Dtype::F32 | Dtype::F16 | Dtype::Bf16 | Dtype::Int8);
        match self {
            Unit::F32Fma => true,
            Unit::AmxBf16 => tier == Tier::Avx512 && k == Dtype::Bf16 && v == Dtype::Bf16,
            Unit::Bf16Dot => matches!(tier, Tier::Avx512 | Tier::Neon) && k == Dtype::Bf16 && dot_v,
            Unit::Int8Dot => {
                matches!(tier, Tier::Avx512 | Tier::Avx2 | Tier::Neon) && k == Dtype::Int8 && dot_v
            }
            _ => false,
        }
    }
}

/// One row of the generated dispatch table.
pub(crate) struct KernelEntry {
    pub name: &'static str,
    pub tier: Tier,
    pub k: Dtype,
    pub v: Dtype,
    /// 0 for the generic kernel (any dims).
    pub dk: usize,
    pub dv: usize,
    pub rows: usize,
    pub f: KernelFn,
}

mod generated {
    #![allow(clippy::all)]
    #[cfg(not(any(test, feature = "generic-only")))]
    use super::Fixed;
    use super::{Dtype, Dynamic, KernelEntry, Tier};
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub(crate) use generated::table;

/// A tile kernel's table entry: bf16 K and V, any dims and rows.
#[cfg(all(target_arch = "x86_64", not(test)))]
const fn amx_bf16(name: &'static str, f: KernelFn) -> KernelEntry {
    KernelEntry {
        name,
        tier: Tier::Avx512,
        k: Dtype::Bf16,
        v: Dtype::Bf16,
        dk: 0,
        dv: 0,
        rows: 0,
        f,
    }
}

/// The tile kernels, `Exact` then `Fast`.
#[cfg(all(target_arch = "x86_64", not(test)))]
static AMX_BF16: [KernelEntry; 2] = [
    amx_bf16(
        "decode_bf16_amx_exact__avx512",
        crate::arch::x86_64::amx::decode::<true>,
    ),
    amx_bf16(
        "decode_bf16_amx_fast__avx512",
        crate::arch::x86_64::amx::decode::<false>,
    ),
];

/// The dot-product units' kernels: one per (unit, tier, V type,
/// precision), K fixed by the unit; `$arch` is the module under `arch/`
/// whose `dot` module holds the entry `$f`.
#[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), not(test)))]
macro_rules! dot_kernels {
    ($( $arch:ident $tier:ident $k:ident $f:ident $kn:literal $un:literal; )*) => {
        static DOT: &[[KernelEntry; 2]] = &[
            $(
                dot_kernels!(@v $arch $tier $k $f $kn $un, F32 "f32" f32),
                dot_kernels!(@v $arch $tier $k $f $kn $un, F16 "f16" half::f16),
                dot_kernels!(@v $arch $tier $k $f $kn $un, Bf16 "bf16" half::bf16),
                dot_kernels!(@v $arch $tier $k $f $kn $un, Int8 "int8" i8),
            )*
        ];
    };
    (@v $arch:ident $tier:ident $k:ident $f:ident $kn:literal $un:literal, $v:ident $vn:literal $vt:ty) => {
        [
            dot_kernels!(@e $arch $tier $k $f $kn $un, $v $vn $vt, "_exact__", true),
            dot_kernels!(@e $arch $tier $k $f $kn $un, $v $vn $vt, "_fast__", false),
        ]
    };
    (@e $arch:ident $tier:ident $k:ident $f:ident $kn:literal $un:literal, $v:ident $vn:literal $vt:ty,
     $class:literal, $exact:literal) => {
        KernelEntry {
            name: concat!("decode_k", $kn, "_v", $vn, "_", $un, $class, stringify!($tier)),
            tier: dot_kernels!(@tier $tier),
            k: Dtype::$k,
            v: Dtype::$v,
            dk: 0,
            dv: 0,
            rows: 0,
            f: crate::arch::$arch::dot::$f::<$vt, $exact>,
        }
    };
    (@tier avx512) => { Tier::Avx512 };
    (@tier avx2) => { Tier::Avx2 };
    (@tier neon) => { Tier::Neon };
}

#[cfg(all(target_arch = "x86_64", not(test)))]
dot_kernels! {
    x86_64 avx512 Bf16 bf16_entry "bf16" "bf16dot";
    x86_64 avx512 Int8 int8_entry_512 "int8" "int8dot";
    x86_64 avx2 Int8 int8_entry_256 "int8" "int8dot";
}

#[cfg(all(target_arch = "aarch64", not(test)))]
dot_kernels! {
    aarch64 neon Bf16 bf16_entry "bf16" "bf16dot";
    aarch64 neon Int8 int8_entry "int8" "int8dot";
}

/// The kernel of a unit other than f32 FMA (whose kernels [`select`]
/// finds), or `None` for f32 FMA. Only called for a unit that
/// [`Unit::runs`] the plan's types on `tier` and is available there.
pub(crate) fn unit_entry(
    unit: Unit,
    precision: Precision,
    tier: Tier,
    k: Dtype,
    v: Dtype,
) -> Option<&'static KernelEntry> {
    let fast = (precision == Precision::Fast) as usize;
    // Like the kernel tables, the units' kernels stay out of the library's
    // unit-test build.
    match unit {
        #[cfg(all(target_arch = "x86_64", not(test)))]
        Unit::AmxBf16 => Some(&AMX_BF16[fast]),
        #[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), not(test)))]
        Unit::Bf16Dot | Unit::Int8Dot => DOT
            .iter()
            .find(|e| e[0].tier == tier && e[0].k == k && e[0].v == v)
            .map(|e| &e[fast]),
        _ => {
            let _ = (fast, tier, k, v);
            None
        }
    }
}

/// The instance for a shape: the specialised one when `kernels/` lists it,
/// else the tier's generic kernel for the dtype pair.
pub(crate) fn select(
    tier: Tier,
    k: Dtype,
    v: Dtype,
    dk: usize,
    dv: usize,
    rows: usize,
) -> &'static KernelEntry {
    let t = table(tier);
    t.iter()
        .find(|e| e.k == k && e.v == v && e.dk == dk && e.dv == dv && e.rows == rows)
        .or_else(|| t.iter().find(|e| e.k == k && e.v == v && e.rows == 0))
        .expect("every tier table holds a generic kernel for every dtype pair")
}

/// A kernel instance of the dispatch table, as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// The instance name, e.g. `decode_f16_d128_r4__avx512`.
    pub name: &'static str,
    /// Its tier.
    pub tier: Tier,
    /// K element type.
    pub k_dtype: Dtype,
    /// V element type.
    pub v_dtype: Dtype,
    /// `(dk, dv, rows)` it is specialised for; `None` for a generic kernel.
    pub specialised: Option<(usize, usize, usize)>,
}

/// Every kernel instance compiled for `tier` on this target (empty for a
/// tier of another architecture), generic ones first.
pub fn kernel_instances(tier: Tier) -> Vec<KernelInfo> {
    table(tier)
        .iter()
        .map(|e| KernelInfo {
            name: e.name,
            tier: e.tier,
            k_dtype: e.k,
            v_dtype: e.v,
            specialised: (e.rows != 0).then_some((e.dk, e.dv, e.rows)),
        })
        .collect()
}
