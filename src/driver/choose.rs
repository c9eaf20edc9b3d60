//! What a plan picks for the CPU it runs on: the unit that computes the
//! scores and P·V, the two software prefetch distances and the token-major
//! window. Each choice is visible on the [`Plan`](super::plan::Plan) and
//! can be overridden there (`Options::unit`, `Plan::with_prefetch`,
//! `Plan::with_stream_prefetch`, `Plan::with_token_window`).

use super::layout::{token_window, CHUNK};
use super::plan::Options;
use crate::error::{Error, Result};
use crate::formats::Dtype;
use crate::shape::Shape;
use crate::tier::{Precision, Tier, Unit};

/// Query rows per KV head (group size × query tokens) from which a plan for
/// bf16 K and V runs on the AMX tiles by itself ([`Options::unit`] `None`).
/// Below it the f32 kernels keep up with memory: the tile kernel pads the
/// rows to 16 and pays a transpose per block.
pub(crate) const AMX_MIN_ROWS: usize = 8;

/// The unit of a plan: the forced one if it runs here, else the tile unit
/// where it serves the shape, else f32 FMA.
pub(super) fn choose_unit(shape: &Shape, options: &Options, tier: Tier) -> Result<Unit> {
    let (k, v) = (shape.k_dtype, shape.v_dtype);
    match options.unit {
        Some(unit) => {
            if !unit.runs(tier, k, v) {
                return Err(Error::UnitUnsupported { unit, tier, k, v });
            }
            match unit.unavailable_on(tier) {
                Some(reason) => Err(Error::UnitUnavailable { unit, reason }),
                None => Ok(unit),
            }
        }
        None => Ok(if shape.rows() < AMX_MIN_ROWS {
            Unit::F32Fma
        } else if Unit::AmxBf16.runs(tier, k, v) && Unit::AmxBf16.is_available() {
            Unit::AmxBf16
        } else if options.precision == Precision::Fast
            && tier == Tier::Avx512
            && (k, v) == (Dtype::Bf16, Dtype::Bf16)
            && Unit::Bf16Dot.runs(tier, k, v)
            && Unit::Bf16Dot.is_available()
            && !crate::dispatch::cpu_has_amx()
        {
            // Measured on an AMD Zen 5 core (vdpbf16ps at 1.9x the f32
            // FMA rate), 1 thread, `Fast`: Falcon-7B bf16 0.66x the f32
            // step, Llama-3-8B bf16 q_len 2 and 4 (8 and 16 rows) 0.71x
            // and 0.70x; at 4 rows even. On the Sapphire Rapids core the
            // instruction ran at half the f32 rate, and AMX serves there.
            // The neon tier's `bfdot` kernels are not measured on a real
            // core yet, so only a forced unit runs them.
            Unit::Bf16Dot
        } else {
            Unit::F32Fma
        }),
    }
}

/// The software prefetch distance a plan starts with, in positions:
/// `GQA_KERNELS_PREFETCH` when set to a number (for experiments), else none
/// for the portable tier (it has no prefetch instruction) and
/// [`DEFAULT_PREFETCH`] for the vector tiers.
pub(super) fn default_prefetch(tier: Tier) -> usize {
    if let Some(n) = std::env::var("GQA_KERNELS_PREFETCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return n;
    }
    if tier == Tier::Scalar {
        0
    } else {
        DEFAULT_PREFETCH
    }
}

/// The head-major stream prefetch distance a plan starts with, in
/// positions: `GQA_KERNELS_STREAM_PREFETCH` when set to a number (for
/// experiments), else none for the portable tier and, for the vector
/// tiers, the CPU's distance in bytes
/// ([`crate::arch::stream_prefetch_bytes`]) in rows of the wider of K and
/// V, 1 to 256 positions.
pub(super) fn default_stream_prefetch(tier: Tier, shape: &Shape) -> usize {
    if let Some(n) = std::env::var("GQA_KERNELS_STREAM_PREFETCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return n;
    }
    if tier == Tier::Scalar {
        return 0;
    }
    let row = (shape.k_dtype.row_bytes(shape.head_dim_k))
        .max(shape.v_dtype.row_bytes(shape.head_dim_v))
        .max(1);
    let bytes = crate::arch::stream_prefetch_bytes(shape.rows(), row);
    if bytes == 0 {
        return 0;
    }
    (bytes / row).clamp(1, CHUNK)
}

/// Whether a plan's kernels start with the V-block hint
/// ([`crate::Plan::v_prefetch`]), on the head-major walk and on the window
/// walk: `GQA_KERNELS_V_PREFETCH` when set to 0 or 1 (for experiments; both
/// walks), else off for the portable tier and the CPU's choice
/// ([`crate::arch::block_v_prefetch`]) for the vector tiers.
pub(super) fn default_v_prefetch(tier: Tier) -> [bool; 2] {
    match std::env::var("GQA_KERNELS_V_PREFETCH")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("0") => return [false; 2],
        Some("1") => return [true; 2],
        _ => {}
    }
    if tier == Tier::Scalar {
        [false; 2]
    } else {
        crate::arch::block_v_prefetch()
    }
}

/// Positions per window of the token-major walk a plan starts with:
/// `GQA_KERNELS_TOKEN_WINDOW` when set to a number above 0 (for
/// experiments), else the CPU's window bytes
/// ([`crate::arch::token_window_bytes`]) of K for all KV heads, 16 to 32
/// positions.
pub(super) fn default_token_window(shape: &Shape) -> usize {
    if let Some(n) = std::env::var("GQA_KERNELS_TOKEN_WINDOW")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
    {
        return n;
    }
    token_window(
        crate::arch::token_window_bytes(),
        shape.kv_heads,
        shape.k_dtype.row_bytes(shape.head_dim_k),
    )
}

/// Prefetch distance of the vector tiers, in positions: one window ahead
/// (the walk rounds it up to its window: 16 to 32 positions token-major,
/// 16 for pages of 16). On an AMD Zen 4 core, 1 thread, token-major windows of 32:
/// 32 and 64 gave the same step time within noise; pages of 16: 16.
const DEFAULT_PREFETCH: usize = 16;
