//! The x86-64 dot-product units ([`DotUnit`]): AVX512-BF16 `vdpbf16ps`
//! for bf16 K caches, and `vpdpbusd` (AVX512-VNNI on the `avx512` tier,
//! AVX-VNNI on the `avx2` tier) for int8 K caches, with the query
//! quantized to int8.
//!
//! **Scores.** Lanes run over positions: each block's K is transposed in
//! L1 into pairs (bf16) or quadruples (int8) by position, and each query
//! row's pair or quadruple is broadcast against them, so a row's 16 scores
//! accumulate in one register without a horizontal sum (up to [`ROWS`]
//! rows share each K vector). The row tiles take their row count as a
//! const parameter, one instance per count: with a run-time count LLVM
//! kept the accumulators on the stack (a `memcpy` and a load and store
//! around each dot product).
//!
//! - `bf16-dot`: `Fast` rounds q to bf16 (2⁻⁸ relative); `Exact` splits
//!   each f32 q value into bf16 `hi + mid + lo` (all 24 significant bits),
//!   three products per pair, each exact in f32 and summed in f32 like
//!   the f32 kernels'.
//! - `int8-dot`: q is quantized per row, `q ≈ s · c`, `s = max|q| / 127`,
//!   plus parts of the remainder in steps of `s / 128` (`Fast`: one more
//!   part, q held to `2⁻¹⁵·max|q|`, finer than f16) and `s / 128²`
//!   (`Exact`: q held to `2⁻²²·max|q|`). `vpdpbusd`
//!   multiplies unsigned by signed bytes, so the codes are stored as
//!   `c + 128` and each position's `128 · Σ k` (one `vpdpbusd` per K
//!   vector per block, shared by every row) starts its accumulator
//!   negated. Integer sums are exact; the K row scale is applied per
//!   position afterwards, as on the f32 path.
//!
//! **P·V.** `bf16-dot` `Fast` with bf16 V: the block's weights rounded to
//! bf16 pairs of consecutive positions, V rearranged in L1 into the same
//! pairs, one `vdpbf16ps` per pair of positions and 16 values of `Dv`.
//! Every other case runs P·V on f32 FMA (exact weights), which keeps
//! `Exact` within the f32 kernels' tolerance.

// The units' helpers take the kernel's raw pointers and sizes explicitly
// (the lints hold for the unit modules below too).
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

mod bf16;
mod int8;

use super::super::kernel::unit::decode_unit;
use super::super::{ChunkArgs, Elem};
use super::amx::mask32;
use super::avx2::Avx2;
use super::avx512::Avx512;
use bf16::Bf16Dot;
use int8::Int8Dot;

/// Query rows whose scores accumulate together against one K vector (8
/// on AVX-512, 4 on AVX2).
const ROWS: usize = 8;

/// Copies the packed query from row-major order (row `i`, part `p`, word
/// `t` at `(i · parts + p) · words + t`) into tiles of `rt` rows (tile
/// `b`, word `t`, row `r`, part `p` at `((b · words + t) · rt + r) ·
/// parts + p`; rows past `rows` zero), so that the score loop reads the
/// words of a tile's rows for one K vector from consecutive addresses,
/// one pointer for the whole tile.
///
/// # Safety
/// `src` holds `rows · parts · words` words, `dst` `rows.div_ceil(rt) ·
/// rt · parts · words`.
#[inline(always)]
unsafe fn interleave(
    src: *const f32,
    rows: usize,
    parts: usize,
    words: usize,
    rt: usize,
    dst: *mut f32,
) {
    for b in 0..rows.div_ceil(rt) {
        for t in 0..words {
            for r in 0..rt {
                let i = b * rt + r;
                for p in 0..parts {
                    // SAFETY: both offsets are inside the regions above.
                    unsafe {
                        *dst.add(((b * words + t) * rt + r) * parts + p) = if i < rows {
                            *src.add((i * parts + p) * words + t)
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// Mask of the first `n` of 64 lanes.
#[inline(always)]
fn mask64(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The `bf16-dot` kernel, bf16 K, V of type `V`.
///
/// # Safety
/// The CPU has the features below; the preconditions of [`ChunkArgs`]
/// hold, with `scratch` at least [`unit_scratch_len`] f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c,avx512bf16")]
pub(crate) unsafe fn bf16_entry<V: Elem, const EXACT: bool>(a: &ChunkArgs) {
    // SAFETY: features enabled on this function; forwarded preconditions.
    unsafe { decode_unit::<Avx512, Bf16Dot<EXACT>, V>(a) }
}

/// The `int8-dot` kernel on the `avx512` tier, int8 K, V of type `V`.
///
/// # Safety
/// As [`bf16_entry`], for the features below.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c,avx512vnni")]
pub(crate) unsafe fn int8_entry_512<V: Elem, const EXACT: bool>(a: &ChunkArgs) {
    // SAFETY: features enabled on this function; forwarded preconditions.
    unsafe { decode_unit::<Avx512, Int8Dot<EXACT>, V>(a) }
}

/// The `int8-dot` kernel on the `avx2` tier (AVX-VNNI), int8 K, V of type
/// `V`.
///
/// # Safety
/// As [`bf16_entry`], for the features below.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(crate) unsafe fn int8_entry_256<V: Elem, const EXACT: bool>(a: &ChunkArgs) {
    // SAFETY: features enabled on this function; forwarded preconditions.
    unsafe { decode_unit::<Avx2, Int8Dot<EXACT>, V>(a) }
}

/// f32 of scratch the kernels of a dot-product unit need (`int8` on the
/// `avx512` tier when `wide`).
pub(crate) fn unit_scratch_len(bf16: bool, wide: bool, rows: usize, dk: usize, dv: usize) -> usize {
    use super::super::kernel::unit::scratch_len_unit as len;
    match (bf16, wide) {
        (true, _) => len::<Avx512, Bf16Dot<true>>(rows, dk, dv),
        (false, true) => len::<Avx512, Int8Dot<true>>(rows, dk, dv),
        (false, false) => len::<Avx2, Int8Dot<true>>(rows, dk, dv),
    }
}

/// Whether the CPU has AVX-VNNI (`vpdpbusd` on 256-bit vectors, VEX).
pub(crate) fn has_avx_vnni() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("avxvnni")
}
