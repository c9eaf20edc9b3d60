//! Layer 1: the microkernels.
//!
//! The decode algorithm is written **once**, in [`kernel`], generic over a
//! tiny [`Simd`] trait (f32 vectors plus the conversions from each KV element
//! type). Each ISA tier is a thin module that implements [`Simd`] with
//! `std::arch` intrinsics and owns the single `#[target_feature]` function
//! that instantiates the body:
//!
//! | tier | module | lanes | target features |
//! |---|---|---|---|
//! | `avx512` | [`x86_64::avx512`] | 16 | avx512f, avx512bw, avx512vl, fma, f16c |
//! | `avx2` | [`x86_64::avx2`] | 8 | avx2, fma, f16c |
//! | `neon` | `aarch64::neon` | 4 | neon (aarch64 baseline) |
//! | `scalar` | [`scalar`] | 1 | none (portable Rust) |
//!
//! Everything a microkernel sees is in its [`ChunkArgs`]: no allocation, no
//! validation, no knowledge of batches or layouts. The driver
//! (`crate::driver::walk`) guarantees the preconditions documented on `ChunkArgs`.

mod args;
pub(crate) mod kernel;
pub(crate) mod probes;
pub(crate) mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;

pub(crate) use args::*;

use crate::tier::Tier;

/// `with_tier(tier, op)`: runs `op` on `tier`'s primitives (the `with` of
/// the tier's module), one arm per row of the tier table; a tier of another
/// target runs on the portable one.
///
/// # Safety
///
/// `tier` must be available on this CPU ([`Tier::is_available`]).
macro_rules! define_with_tier {
    ($( $(#[$doc:meta])* $v:ident $code:literal $name:literal [$($cfg:tt)*]
        $m0:ident $(:: $m:ident)* [$($feature:tt)*]; )*) => {
        pub(crate) unsafe fn with_tier<O: SimdOp>(tier: Tier, op: O) -> O::Out {
            match tier {
                $(
                    #[cfg($($cfg)*)]
                    // SAFETY: the caller's contract: the tier's features
                    // are present.
                    Tier::$v => unsafe { self::$m0 $(:: $m)* ::with(op) },
                )*
                #[allow(unreachable_patterns)]
                // SAFETY: the portable tier needs no CPU feature.
                _ => unsafe { self::scalar::with(op) },
            }
        }
    };
}
crate::tier::tier_table!(define_with_tier);

use crate::formats::{BlockFormat, Quants};
pub(crate) use crate::formats::{E4M3Row, E4M3, E5M2};

/// Every row buffer the driver hands a microkernel (`q`, the state's `acc`,
/// the scratch blocks) is padded to a multiple of this many f32 so that every
/// tier (16, 8, 4 or 1 lanes) reads whole vectors from it.
pub(crate) const PAD: usize = 16;

/// KV positions processed per block: scores for `BLOCK` positions are
/// computed, the online softmax is updated once, then `BLOCK` V rows are
/// accumulated. A multiple of every tier's lane count.
pub(crate) const BLOCK: usize = 16;

/// The largest [`Simd::ROW_TILE`] of any tier (sizes the scratch).
pub(crate) const MAX_ROW_TILE: usize = 8;

/// f32 of scratch the kernels of `unit` need beyond [`scratch_len`] (the
/// tile kernels carve their own regions; 0 for the f32 kernels).
pub(crate) fn unit_scratch_len(
    unit: crate::tier::Unit,
    rows: usize,
    dk: usize,
    dv: usize,
) -> usize {
    match unit {
        #[cfg(target_arch = "x86_64")]
        crate::tier::Unit::AmxBf16 => x86_64::amx::scratch_len(rows, dk, dv),
        #[cfg(target_arch = "x86_64")]
        crate::tier::Unit::Bf16Dot => x86_64::dot::unit_scratch_len(true, true, rows, dk, dv),
        // Sized for the avx512 tier's vectors, which need more than avx2's.
        #[cfg(target_arch = "x86_64")]
        crate::tier::Unit::Int8Dot => x86_64::dot::unit_scratch_len(false, true, rows, dk, dv),
        #[cfg(target_arch = "aarch64")]
        crate::tier::Unit::Bf16Dot => aarch64::dot::unit_scratch_len(true, rows, dk, dv),
        #[cfg(target_arch = "aarch64")]
        crate::tier::Unit::Int8Dot => aarch64::dot::unit_scratch_len(false, rows, dk, dv),
        _ => {
            let _ = (rows, dk, dv);
            0
        }
    }
}

/// Rounds `n` up to a multiple of [`PAD`].
#[inline(always)]
pub(crate) const fn pad(n: usize) -> usize {
    n.div_ceil(PAD) * PAD
}

/// f32 elements of scratch one microkernel call needs for a tile of `rows`
/// query rows: one block of widened K rows and one of V rows, the score
/// block, the unreduced partial dot products of one row tile and the
/// lane-wise softmax sums of every row.
pub(crate) const fn scratch_len(rows: usize, dk: usize, dv: usize) -> usize {
    BLOCK * pad(dk)
        + BLOCK * pad(dv)
        + rows * BLOCK
        + MAX_ROW_TILE * BLOCK * PAD
        + rows * PAD
        + 3 * SKEW
}

/// Floats between the scratch regions beyond their sizes, so that regions
/// whose sizes are multiples of 4 KiB do not start at the same offset within
/// a page (a guard against 4K aliasing between loads of one region and
/// stores to another; it made no measurable difference on the development
/// machine, and costs 960 bytes).
pub(crate) const SKEW: usize = 80;

/// The type of every microkernel in the dispatch table.
pub(crate) type KernelFn = unsafe fn(&ChunkArgs);

/// An f32 SIMD vector type of one ISA tier.
///
/// All functions are `unsafe`: they may only be called from code compiled
/// with the tier's target features (inside the tier's `#[target_feature]`
/// entry point, after inlining), and pointer arguments must be valid for the
/// documented number of elements.
pub(crate) trait Simd: Copy + 'static {
    /// f32 lanes per vector.
    const LANES: usize;
    /// Query rows per register tile (at most [`MAX_ROW_TILE`]). Up to this
    /// many rows, every K/V vector is widened once, straight into registers.
    const ROW_TILE: usize;
    /// Vector accumulators a register tile may use (rows × positions in the
    /// score tile, rows × vectors of `Dv` in the P·V tile), leaving room for
    /// the operands in the register file.
    const ACC: usize;
    /// The vector.
    type V: Copy;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    /// Loads `LANES` f32 from `p` (any alignment).
    unsafe fn load(p: *const f32) -> Self::V;
    /// Stores `LANES` f32 to `p` (any alignment).
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`, correctly rounded.
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused where the tier has FMA.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise maximum; when `b` is NaN the result is NaN.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise minimum; when `b` is NaN the result is NaN.
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn reduce_add(v: Self::V) -> f32;
    /// Whether any lane of `v` is greater than `x` (false for NaN lanes).
    unsafe fn any_gt(v: Self::V, x: f32) -> bool;
    unsafe fn reduce_max(v: Self::V) -> f32;
    /// Round to nearest integer, ties to even.
    unsafe fn round(v: Self::V) -> Self::V;
    /// `2^n` for integral `n` in `[-127, 127]`; `n = -127` gives `0.0`.
    unsafe fn pow2i(n: Self::V) -> Self::V;
    /// Lanes `>= valid` replaced by `fill` (all lanes kept when `valid >= LANES`).
    unsafe fn mask_tail(v: Self::V, valid: usize, fill: f32) -> Self::V;
    /// The vector whose lane `i` is the sum of the lanes of `v[i]`, for
    /// `i < LANES` (entries past `LANES` are ignored).
    unsafe fn transpose_sum(v: &[Self::V; 16]) -> Self::V;
    /// Loads `min(valid, LANES)` f32 from `p`, zero in the other lanes; never
    /// touches memory past `p + valid`.
    unsafe fn load_f32(p: *const f32, valid: usize) -> Self::V;
    /// As [`Simd::load_f32`] for IEEE binary16 bits, widened exactly to f32.
    unsafe fn load_f16(p: *const u16, valid: usize) -> Self::V;
    /// As [`Simd::load_f32`] for bfloat16 bits, widened exactly to f32.
    unsafe fn load_bf16(p: *const u16, valid: usize) -> Self::V;
    /// As [`Simd::load_f32`] for signed bytes, widened exactly to f32.
    unsafe fn load_i8(p: *const i8, valid: usize) -> Self::V;
    /// As [`Simd::load_f32`] for OCP fp8 E5M2 bytes, widened exactly: an
    /// E5M2 byte is the high byte of the binary16 of the same value, so
    /// the tiers shift it into place and use their f16 widening.
    unsafe fn load_e5m2(p: *const u8, valid: usize) -> Self::V;
    /// As [`Simd::load_f32`] for OCP fp8 E4M3FN bytes, widened exactly to
    /// **`x · 2^-8`**: sign to bit 15 and the 7 exponent-and-mantissa bits
    /// to bits 7..=13 make the binary16 of `x / 256` for every finite byte
    /// (normal and subnormal; E4M3's bias is 7, binary16's 15). The caller
    /// folds the `2^8` into a per-head scale. The NaN bytes `0x7F`/`0xFF`
    /// read as `±480 · 2^-8` (no encoder here produces them).
    unsafe fn load_e4m3(p: *const u8, valid: usize) -> Self::V;
    /// As [`Simd::load_f32`] for 4-bit codes packed two per byte: lane
    /// `l` is `lut[code]` for the low nibble of byte `p[l]` (or its high
    /// nibble when `high`), widened exactly to f32.
    unsafe fn load_nibbles(p: *const u8, high: bool, lut: &[i8; 16], valid: usize) -> Self::V;
    /// Lane `l` is bit `l` of `bits` (0.0 or 1.0).
    unsafe fn bits(bits: u32) -> Self::V;
    /// Every lane the binary16 `bits` widened to f32.
    unsafe fn splat_f16(bits: u16) -> Self::V;
    /// `v`, as a value the compiler must keep (in a register, or spilled
    /// once) rather than reload from where it came, so that a
    /// loop-invariant vector loaded before a loop stays out of the loop's
    /// loads. The default is `v` itself (the compiler decides); AVX-512
    /// passes it through an empty `asm!`.
    #[inline(always)]
    unsafe fn pin(v: Self::V) -> Self::V {
        v
    }
    /// Runs `op` on this tier through the tier module's `with`: a separate
    /// function that is never inlined, so rare work called from a kernel's
    /// block loop (the score transforms) stays out of the loop's code.
    ///
    /// # Safety
    /// The CPU supports the tier; `op`'s own preconditions hold.
    unsafe fn out_of_line<O: SimdOp>(op: O) -> O::Out;
}

/// An operation written once over [`Simd`], run on a tier through the tier
/// module's `with` (its `#[target_feature]` boundary, never inlined), like
/// pulp's `WithSimd`.
pub(crate) trait SimdOp {
    type Out;
    /// # Safety
    /// Called only under the target features of `S`.
    unsafe fn run<S: Simd>(self) -> Self::Out;
}

/// A KV element type the microkernels can read: one row of `d` values is
/// read as `d.div_ceil(LANES)` f32 vectors, each dequantized on load, so a
/// row is dequantized once per kernel call (once per group of query heads),
/// never per query head.
pub(crate) trait Elem: Copy + 'static {
    /// Whether each row carries its own f32 scale (int8,
    /// [`ChunkArgs::k_scale`]). `load` then returns the unscaled values and
    /// the kernel applies the scale once per position: to the score (K)
    /// or to the softmax weight (V), not once per vector.
    const ROW_SCALE: bool = false;
    /// Whether the type is one of the quantized ones (their generic
    /// kernels run the block loop's phases out of line; see
    /// `kernel::phase`).
    const QUANTIZED: bool = true;
    /// Vector `c` of the row of `d` values at `row` (values
    /// `c * LANES..min((c + 1) * LANES, d)`, zero in the other lanes),
    /// dequantized (but for a [`Elem::ROW_SCALE`] type's row scale). Reads
    /// only inside the row.
    unsafe fn load<S: Simd>(row: *const Self, c: usize, d: usize) -> S::V;
}

impl Elem for f32 {
    const QUANTIZED: bool = false;
    #[inline(always)]
    unsafe fn load<S: Simd>(row: *const Self, c: usize, d: usize) -> S::V {
        let o = c * S::LANES;
        // SAFETY: forwarded precondition: the row holds `d > o` values.
        unsafe { S::load_f32(row.add(o), d - o) }
    }
}

impl Elem for half::f16 {
    const QUANTIZED: bool = false;
    #[inline(always)]
    unsafe fn load<S: Simd>(row: *const Self, c: usize, d: usize) -> S::V {
        let o = c * S::LANES;
        // SAFETY: `f16` is `repr(transparent)` over `u16`; forwarded bounds.
        unsafe { S::load_f16(row.add(o).cast::<u16>(), d - o) }
    }
}

impl Elem for half::bf16 {
    const QUANTIZED: bool = false;
    #[inline(always)]
    unsafe fn load<S: Simd>(row: *const Self, c: usize, d: usize) -> S::V {
        let o = c * S::LANES;
        // SAFETY: `bf16` is `repr(transparent)` over `u16`; forwarded bounds.
        unsafe { S::load_bf16(row.add(o).cast::<u16>(), d - o) }
    }
}

/// int8 with one f32 scale per row.
impl Elem for i8 {
    const ROW_SCALE: bool = true;
    #[inline(always)]
    unsafe fn load<S: Simd>(row: *const Self, c: usize, d: usize) -> S::V {
        let o = c * S::LANES;
        // SAFETY: forwarded bounds.
        unsafe { S::load_i8(row.add(o), d - o) }
    }
}

/// Every block format ([`BlockFormat`]: q8_0, q4_0, q4_1, q5_0, q5_1,
/// iq4_nl, fp8_ds_mla), read through its [`BlockLayout`](crate::formats::BlockLayout): rows of
/// whole blocks of `B::LEN` values (the driver guarantees it: `d` a
/// multiple of 32, or for a row format one block a row), so a vector (at
/// most 16 lanes, and 16 is a multiple of every tier's lane count) never
/// straddles two blocks, the low and high nibbles of one, two fp8 tiles or
/// the fp8 and bf16 parts of a row. The layout is a constant, so each
/// format's load compiles to its own straight-line code.
impl<B: BlockFormat> Elem for B {
    #[inline(always)]
    unsafe fn load<S: Simd>(row: *const Self, c: usize, d: usize) -> S::V {
        const {
            assert!(B::LEN.is_multiple_of(16));
            if let Quants::E4M3Tiles { tile, codes, .. } = B::LAYOUT.quants {
                assert!(tile.is_multiple_of(16) && codes.is_multiple_of(tile));
            }
        };
        let o = c * S::LANES;
        let (blk, i) = (o / B::LEN, o % B::LEN);
        let l = B::LAYOUT;
        // SAFETY: the row holds `d.div_ceil(B::LEN)` blocks and `o < d`, so
        // block `blk` exists; every read below stays inside it (the
        // layout's offsets are the block's fields, `i < B::LEN`, and
        // `valid` counts what is left of the block's values from `i`, and
        // of its fp8 part for an fp8 value). Reads are unaligned.
        unsafe {
            let b = row.add(blk).cast::<u8>();
            let valid = (d - o).min(B::LEN - i);
            let q = match l.quants {
                // A row format's fp8 tiles carry an f32 scale each and end
                // in bf16 values: no f16 scale or min.
                Quants::E4M3Tiles {
                    tile,
                    codes,
                    scales,
                    tail,
                } => {
                    return if i < codes {
                        let s = b
                            .add(scales + 4 * (i / tile))
                            .cast::<f32>()
                            .read_unaligned();
                        // `load_e4m3` reads `x · 2^-8`: times 2^8 (exact),
                        // then the tile's scale (one rounding, as `x · s`).
                        let x = S::load_e4m3(b.add(l.qs + i), valid.min(codes - i));
                        S::mul(S::mul(x, S::splat(256.0)), S::splat(s))
                    } else {
                        S::load_bf16(b.add(tail + 2 * (i - codes)).cast::<u16>(), valid)
                    };
                }
                Quants::Bytes => S::load_i8(b.add(l.qs + i).cast::<i8>(), valid),
                Quants::Nibbles { lut } => {
                    let half = i / 16;
                    let q = S::load_nibbles(b.add(l.qs + i % 16), half == 1, &lut, valid);
                    match l.qh {
                        Some(h) => {
                            let bits = u32::from_le(b.add(h).cast::<u32>().read_unaligned()) >> i;
                            S::fma(S::bits(bits), S::splat(16.0), q)
                        }
                        None => q,
                    }
                }
            };
            let scale = S::splat_f16(b.add(l.d).cast::<u16>().read_unaligned());
            match l.m {
                Some(m) => S::fma(
                    q,
                    scale,
                    S::splat_f16(b.add(m).cast::<u16>().read_unaligned()),
                ),
                None => S::mul(q, scale),
            }
        }
    }
}

/// An fp8 E4M3FN byte: the kernel reads it as `x · 2^-8`
/// ([`Simd::load_e4m3`]); the driver folds `2^8` into the per-head scale.
impl Elem for E4M3 {
    #[inline(always)]
    unsafe fn load<S: Simd>(row: *const Self, c: usize, d: usize) -> S::V {
        let o = c * S::LANES;
        // SAFETY: `E4M3` is `repr(transparent)` over `u8`; forwarded bounds.
        unsafe { S::load_e4m3(row.add(o).cast::<u8>(), d - o) }
    }
}

/// An fp8 E4M3FN byte with one f32 scale per row: loaded as [`E4M3`]
/// (`x · 2^-8`), the row scale applied per position as int8's; the
/// driver folds the `2^8` into the call's scale (a per-head factor of
/// `2^8` for every head), so the stored row scales are the host's, as is.
impl Elem for E4M3Row {
    const ROW_SCALE: bool = true;
    #[inline(always)]
    unsafe fn load<S: Simd>(row: *const Self, c: usize, d: usize) -> S::V {
        let o = c * S::LANES;
        // SAFETY: `E4M3Row` is `repr(transparent)` over `u8`; forwarded
        // bounds.
        unsafe { S::load_e4m3(row.add(o).cast::<u8>(), d - o) }
    }
}

impl Elem for E5M2 {
    #[inline(always)]
    unsafe fn load<S: Simd>(row: *const Self, c: usize, d: usize) -> S::V {
        let o = c * S::LANES;
        // SAFETY: `E5M2` is `repr(transparent)` over `u8`; forwarded bounds.
        unsafe { S::load_e5m2(row.add(o).cast::<u8>(), d - o) }
    }
}

/// The problem dimensions a kernel instance is compiled for: fixed at compile
/// time ([`Fixed`], the specialised instances listed in `kernels/`) or read
/// from the arguments at run time ([`Dynamic`], the generic kernel of a tier).
pub(crate) trait Dims: Copy + 'static {
    /// Whether the dims are compile-time constants (a specialised
    /// instance, whose phases are inlined into one loop).
    const FIXED: bool;
    fn rows(a: &ChunkArgs) -> usize;
    fn dk(a: &ChunkArgs) -> usize;
    fn dv(a: &ChunkArgs) -> usize;
}

/// Compile-time dimensions: `R` query rows, head dims `DK` and `DV`.
#[derive(Clone, Copy)]
#[cfg_attr(any(test, feature = "generic-only"), allow(dead_code))]
pub(crate) struct Fixed<const R: usize, const DK: usize, const DV: usize>;

impl<const R: usize, const DK: usize, const DV: usize> Dims for Fixed<R, DK, DV> {
    const FIXED: bool = true;
    #[inline(always)]
    fn rows(_: &ChunkArgs) -> usize {
        R
    }
    #[inline(always)]
    fn dk(_: &ChunkArgs) -> usize {
        DK
    }
    #[inline(always)]
    fn dv(_: &ChunkArgs) -> usize {
        DV
    }
}

/// Run-time dimensions, read from [`ChunkArgs`].
#[derive(Clone, Copy)]
pub(crate) struct Dynamic;

impl Dims for Dynamic {
    const FIXED: bool = false;
    #[inline(always)]
    fn rows(a: &ChunkArgs) -> usize {
        a.rows
    }
    #[inline(always)]
    fn dk(a: &ChunkArgs) -> usize {
        a.dk
    }
    #[inline(always)]
    fn dv(a: &ChunkArgs) -> usize {
        a.dv
    }
}

/// Coefficients of `2^f = sum c_k f^k` on `f` in `[-1/2, 1/2]`
/// (`c_k = ln(2)^k / k!`, Taylor to degree 7). The truncation error is below
/// `(ln2/2)^8 / 8! * sqrt(2) < 1e-8` relative, far below one f32 ulp; what
/// remains is the rounding of the Horner steps (see `exp2` tests: ≤ 2 ulp).
const EXP2_C: [f32; 8] = [
    1.0,
    std::f32::consts::LN_2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
    0.000_015_252_734,
];

/// Coefficients of `tanh x ≈ x · P(x²) / Q(x²)` on `|x| <= 9`, lowest
/// order first (a rational least-squares fit with Lawson reweighting, made
/// for this crate; 6e-9 absolute in exact arithmetic).
const TANH_P: [f32; 7] = [
    0.999_999_94,
    0.130_791_57,
    0.003_098_647,
    1.110_174_7e-5,
    -2.002_925_3e-8,
    5.192_546e-11,
    -8.290_942e-14,
];
const TANH_Q: [f32; 4] = [1.0, 0.464_124_77, 0.024_473_732, 0.000_253_859_06];

/// Vectorised `tanh x`, for the logit softcap.
///
/// A rational approximation `x · P(x²) / Q(x²)` on `x` clamped to
/// `[-9, 9]` (where `tanh` is within 3e-8 of ±1), clamped to `[-1, 1]`:
/// one short FMA chain per polynomial and one division, about half the
/// latency of going through `exp2`. Error bound: at most 3e-7 absolute for
/// every finite `x` (tested against f64 on a dense sweep on every tier), so
/// a softcap `c tanh(s / c)` is off by at most `3e-7 c` in the score;
/// `±inf` gives `±1`.
#[inline(always)]
pub(crate) unsafe fn tanh<S: Simd>(x: S::V) -> S::V {
    // SAFETY: only vector arithmetic on values; the caller runs under the
    // tier's target features.
    unsafe {
        let x = S::min(S::splat(9.0), S::max(S::splat(-9.0), x));
        let z = S::mul(x, x);
        let mut p = S::splat(TANH_P[6]);
        for c in TANH_P[..6].iter().rev() {
            p = S::fma(p, z, S::splat(*c));
        }
        let mut q = S::splat(TANH_Q[3]);
        for c in TANH_Q[..3].iter().rev() {
            q = S::fma(q, z, S::splat(*c));
        }
        let t = S::div(S::mul(x, p), q);
        S::min(S::splat(1.0), S::max(S::splat(-1.0), t))
    }
}

/// Vectorised `2^x`.
///
/// Error bound: ≤ 2 ulp relative for `x` in `[-126, 127]` (tested against
/// f64 on a dense sweep). Inputs below `-126` flush towards zero and
/// `x <= -127` (including `-inf`) gives exactly `0.0`; inputs above 127
/// saturate to `2^127`; NaN propagates. The kernels only call it with
/// `x <= 0`.
#[inline(always)]
pub(crate) unsafe fn exp2<S: Simd>(x: S::V) -> S::V {
    // SAFETY: only vector arithmetic on values; the caller runs under the
    // tier's target features.
    unsafe {
        let x = S::max(S::splat(-127.0), x);
        let x = S::min(S::splat(127.0), x);
        let n = S::round(x);
        let f = S::sub(x, n);
        let mut p = S::splat(EXP2_C[7]);
        p = S::fma(p, f, S::splat(EXP2_C[6]));
        p = S::fma(p, f, S::splat(EXP2_C[5]));
        p = S::fma(p, f, S::splat(EXP2_C[4]));
        p = S::fma(p, f, S::splat(EXP2_C[3]));
        p = S::fma(p, f, S::splat(EXP2_C[2]));
        p = S::fma(p, f, S::splat(EXP2_C[1]));
        p = S::fma(p, f, S::splat(EXP2_C[0]));
        S::mul(p, S::pow2i(n))
    }
}

#[cfg(test)]
pub(crate) mod tests;
