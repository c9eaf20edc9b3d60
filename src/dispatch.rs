//! Tier detection, the process-wide tier choice and the kernel table.
//!
//! CPU features are detected once and cached; the `GQA_KERNELS_ISA`
//! environment variable, read once, forces a tier for the whole process (an
//! unknown name or a tier this CPU lacks is an error, never a silent
//! fallback). Plans may also name a tier explicitly ([`crate::Options::tier`]).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

#[cfg(not(feature = "generic-only"))]
use crate::arch::Fixed;
use crate::arch::{Dynamic, KernelFn};
use crate::error::{Error, Result};
use crate::types::Dtype;

/// A kernel tier: one instruction set the microkernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Portable Rust, any target.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 F, BW and VL (plus FMA and F16C).
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl Tier {
    /// Every tier, slowest first.
    pub const ALL: [Tier; 4] = [Tier::Scalar, Tier::Avx2, Tier::Avx512, Tier::Neon];

    /// The tier's name as used in kernel names and `GQA_KERNELS_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Neon => "neon",
        }
    }

    /// The tier's code in the C ABI (`GQA_TIER_*` in the header). Fixed
    /// per tier and never reused, whatever the order of [`Tier::ALL`]: a
    /// new tier takes the next free code.
    pub const fn abi_code(self) -> i32 {
        match self {
            Tier::Scalar => 0,
            Tier::Avx2 => 1,
            Tier::Avx512 => 2,
            Tier::Neon => 3,
        }
    }

    /// The tier whose [`Tier::abi_code`] is `code`, if any.
    pub fn from_abi_code(code: i32) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.abi_code() == code)
    }

    /// Whether this CPU and build target can run the tier (detected once).
    pub fn is_available(self) -> bool {
        static DETECTED: OnceLock<[bool; 4]> = OnceLock::new();
        DETECTED.get_or_init(|| Tier::ALL.map(detect))[self as usize]
    }

    /// The CPU features the tier requires.
    pub fn features(self) -> &'static [&'static str] {
        match self {
            Tier::Scalar => &[],
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => crate::arch::x86_64::avx2::FEATURES,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => crate::arch::x86_64::avx512::FEATURES,
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => crate::arch::aarch64::neon::FEATURES,
            #[allow(unreachable_patterns)]
            _ => &[],
        }
    }

    /// The fastest available tier.
    pub fn best() -> Tier {
        [Tier::Avx512, Tier::Neon, Tier::Avx2]
            .into_iter()
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

static RUNS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

pub(crate) fn count_run(tier: Tier) {
    RUNS[tier as usize].fetch_add(1, Ordering::Relaxed);
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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

#[cfg(target_arch = "x86_64")]
fn detect(t: Tier) -> bool {
    match t {
        Tier::Scalar => true,
        Tier::Avx2 => {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        Tier::Avx512 => {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        Tier::Neon => false,
    }
}

#[cfg(target_arch = "aarch64")]
fn detect(t: Tier) -> bool {
    match t {
        Tier::Scalar => true,
        Tier::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        _ => false,
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect(t: Tier) -> bool {
    t == Tier::Scalar
}

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
    #[cfg(not(feature = "generic-only"))]
    use super::Fixed;
    use super::{Dtype, Dynamic, KernelEntry, Tier};
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub(crate) fn table(tier: Tier) -> &'static [KernelEntry] {
    match tier {
        Tier::Scalar => generated::SCALAR,
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => generated::AVX2,
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => generated::AVX512,
        #[cfg(target_arch = "aarch64")]
        Tier::Neon => generated::NEON,
        #[allow(unreachable_patterns)]
        _ => &[],
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
