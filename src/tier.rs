//! The vocabulary of dispatch, with no dependencies: kernel tiers, the
//! multiply-add units a tier's kernels can run on, and precision classes.
//! What this CPU has, and which kernels run where, is
//! [`crate::dispatch`]'s business (it adds the detecting methods).

/// The tier table, slowest first (the order of [`Tier::ALL`], and the
/// reverse of the order [`Tier::best`] tries): what the crate knows about a
/// tier that is not code (the code is the tier's file under `src/arch/`).
/// Each row is
///
/// - the `Tier` variant, with its doc comment;
/// - its code in the C ABI (`GQA_TIER_*`): fixed per tier, never reused (a
///   new tier takes the next free code, whatever its place in the order);
/// - its name in kernel names, reports and `GQA_KERNELS_ISA`;
/// - the `cfg` under which it is compiled (`all()`: everywhere);
/// - its module under `crate::arch`, which has `entry` (the kernel) and
///   `with` (the primitives, for probes and tests);
/// - the CPU features its code is compiled for, spelled as
///   `#[target_feature(enable = ...)]` and the feature-detection macros
///   spell them: the tier's entry points carry exactly these, joined by
///   commas (a test reads the tier files to check it); detection requires
///   every one.
///
/// A new tier is a row here, its file under `src/arch/`, its `GQA_TIER_*`
/// line in the header and its instances in `kernels/decode.kernels`:
/// everything that goes over the tiers (the enum, detection, the
/// primitives' dispatch, the kernel tables `build.rs` writes, the C ABI's
/// names) is generated from this table. The macro hands the rows to
/// `$then`; `build.rs` reads them as text.
macro_rules! tier_table {
    ($then:ident) => {
        $then! {
            /// Portable Rust, any target.
            Scalar 0 "scalar" [all()] scalar [];
            /// x86-64 with AVX2, FMA and F16C.
            Avx2 1 "avx2" [target_arch = "x86_64"] x86_64::avx2 ["avx2" "fma" "f16c"];
            /// x86-64 with AVX-512 F, BW and VL (plus FMA and F16C).
            Avx512 2 "avx512" [target_arch = "x86_64"] x86_64::avx512
                ["avx512f" "avx512bw" "avx512vl" "fma" "f16c"];
            /// aarch64 Advanced SIMD.
            Neon 3 "neon" [target_arch = "aarch64"] aarch64::neon ["neon"];
        }
    };
}
pub(crate) use tier_table;

/// The enum and its table, from the rows of [`tier_table`].
macro_rules! define_tiers {
    ($( $(#[$doc:meta])* $v:ident $code:literal $name:literal [$($cfg:tt)*]
        $m0:ident $(:: $m:ident)* [$($feature:literal)*]; )*) => {
        /// A kernel tier: one instruction set the microkernels are written for.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Tier {
            $( $(#[$doc])* $v, )*
        }

        const TABLE: &[TierRow] = &[
            $( TierRow {
                tier: Tier::$v,
                name: $name,
                c_name: match CStr::from_bytes_with_nul(concat!($name, "\0").as_bytes()) {
                    Ok(c) => c,
                    Err(_) => panic!("a tier name with a NUL"),
                },
                abi_code: $code,
                module: concat!(stringify!($m0) $(, "/", stringify!($m))*),
                features: &[$($feature),*],
            }, )*
        ];
    };
}

use std::ffi::CStr;

/// One row of the tier table, as data.
struct TierRow {
    tier: Tier,
    name: &'static str,
    c_name: &'static CStr,
    abi_code: i32,
    /// The tier's file under `src/arch/`, without `.rs` (read by a test).
    #[cfg_attr(not(test), allow(dead_code))]
    module: &'static str,
    features: &'static [&'static str],
}

tier_table!(define_tiers);

// Row `i` of the table describes the variant of discriminant `i`, so the
// methods below index the table with `self as usize`.
const _: () = {
    let mut i = 0;
    while i < TABLE.len() {
        assert!(TABLE[i].tier as usize == i);
        i += 1;
    }
};

impl Tier {
    /// Every tier, slowest first.
    pub const ALL: [Tier; TABLE.len()] = {
        let mut all = [Tier::Scalar; TABLE.len()];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].tier;
            i += 1;
        }
        all
    };

    /// The tier's name as used in kernel names and `GQA_KERNELS_ISA`.
    pub fn name(self) -> &'static str {
        TABLE[self as usize].name
    }

    /// The name as a C string (the C ABI's `gqa_tier_name`).
    pub(crate) fn c_name(self) -> &'static CStr {
        TABLE[self as usize].c_name
    }

    /// The tier's code in the C ABI (`GQA_TIER_*` in the header). Fixed
    /// per tier and never reused, whatever the order of [`Tier::ALL`]: a
    /// new tier takes the next free code.
    pub const fn abi_code(self) -> i32 {
        TABLE[self as usize].abi_code
    }

    /// The tier whose [`Tier::abi_code`] is `code`, if any.
    pub fn from_abi_code(code: i32) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.abi_code() == code)
    }

    /// The CPU features the tier requires (in the spelling of
    /// `#[target_feature]`), whatever the build target.
    pub fn features(self) -> &'static [&'static str] {
        TABLE[self as usize].features
    }

    /// The tier's source file under `src/arch/`, without `.rs`
    /// (`x86_64/avx2`): where its `#[target_feature]` lines are.
    #[cfg(test)]
    pub(crate) fn module(self) -> &'static str {
        TABLE[self as usize].module
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A multiply-add unit of this core: the f32 FMA every tier's kernels run
/// on, and the dot-product and tile units that sum several narrower
/// products into one f32 or i32 lane. [`crate::probe::unit_rate`] measures
/// each; [`crate::Options::unit`] runs a plan's kernels on one
/// ([`Unit::runs`] says which dtype pairs have kernels on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// f32 fused multiply-add on the tier's vectors.
    F32Fma,
    /// AVX512-BF16 `vdpbf16ps` (`avx512` tier) or Armv8.6 BF16 `bfdot`
    /// (`neon` tier): two bf16 products per f32 lane.
    Bf16Dot,
    /// AVX512-VNNI or AVX-VNNI `vpdpbusd` (four u8 × i8 products per i32
    /// lane), or Arm DotProd `sdot` (four i8 × i8 products per i32 lane,
    /// `neon` tier).
    Int8Dot,
    /// AMX `tdpbf16ps`: 16 × 16 f32 outputs of 32 bf16 products each.
    AmxBf16,
    /// AMX `tdpbssd`: 16 × 16 i32 outputs of 64 int8 products each.
    AmxInt8,
}

impl Unit {
    /// Every unit.
    pub const ALL: [Unit; 5] = [
        Unit::F32Fma,
        Unit::Bf16Dot,
        Unit::Int8Dot,
        Unit::AmxBf16,
        Unit::AmxInt8,
    ];

    /// The unit's name in reports and kernel names.
    pub fn name(self) -> &'static str {
        match self {
            Unit::F32Fma => "f32-fma",
            Unit::Bf16Dot => "bf16-dot",
            Unit::Int8Dot => "int8-dot",
            Unit::AmxBf16 => "amx-bf16",
            Unit::AmxInt8 => "amx-int8",
        }
    }
}

/// How closely a kernel on a dot-product or tile unit follows the f32
/// kernels ([`crate::Options::precision`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// The f32 kernels' documented tolerance on every unit: operands that
    /// the unit cannot take whole (q and the softmax weights P on a bf16
    /// unit) are split into a high and a low part, each multiplied exactly.
    #[default]
    Exact,
    /// q and P rounded to the unit's type (bf16: 8 significant bits), for
    /// up to twice the speed where the unit binds; its error bound per unit
    /// is in the README.
    Fast,
}

impl Precision {
    /// `exact` or `fast`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::Fast => "fast",
        }
    }
}
