//! Quantized KV formats and their literal scalar encoders and decoders.
//!
//! A decode step is bound by the bytes of K and V it reads, so a smaller
//! cache is a faster step. These are the formats the quantized caches use,
//! each with a stated round-trip error and a decided behaviour for values
//! that do not fit:
//!
//! | format | storage | scale | round-trip error per element |
//! |---|---|---|---|
//! | `int8` | `i8` per element | one f32 per (token, KV head) row, `absmax / 127` | `<= scale / 2` |
//! | `q8_0` | [`BlockQ8_0`]: 32 `i8` + one f16 scale (llama.cpp / GGUF layout, 34 bytes) | `absmax / 127` per 32 elements, stored as f16 | `<= d / 2 + absmax · 2^-10` (`d` the stored f16 scale; the f16 rounding of `d` adds the second term) |
//! | `q4_0` | [`BlockQ4_0`]: 16 bytes of 4-bit codes + f16 scale (GGUF, 18 bytes) | `d = x_max / −8` (the value of largest magnitude, with its sign) per 32, as f16 | `<= |d|` (`|d| / 2` but for values beyond `7|d|` on the side opposite `x_max`, clamped) plus the f16 rounding of `d` times the level |
//! | `q4_1` | [`BlockQ4_1`]: 4-bit codes + f16 scale and offset (GGUF, 20 bytes) | `d = (max − min) / 15`, `m = min`, as f16 | `<= d / 2` plus the f16 roundings of `d` and `m` |
//! | `q5_0` | [`BlockQ5_0`]: 5-bit codes (4 + 1 bits) + f16 scale (GGUF, 22 bytes) | `d = x_max / −16`, as f16 | as `q4_0` with 32 levels |
//! | `q5_1` | [`BlockQ5_1`]: 5-bit codes + f16 scale and offset (GGUF, 24 bytes) | `d = (max − min) / 31`, `m = min`, as f16 | as `q4_1` with 32 levels |
//! | `iq4_nl` | [`BlockIq4Nl`]: 4-bit codes into [`IQ4_NL_LEVELS`] + f16 scale (GGUF, 18 bytes) | `d = x_max / −127`, then the least-squares scale if better | `<= 12 |d|` (half the widest gap between levels) |
//! | `fp8e4m3` | OCP E4M3FN byte (no infinities, max 448) | one f32 per KV head (divides before encoding) | `<= 2^-4 · |x|` for `|x| / scale >= 2^-6`, else `<= 2^-10 · scale` |
//! | `fp8e5m2` | OCP E5M2 byte (max finite 57344) | one f32 per KV head | `<= 2^-3 · |x|` for `|x| / scale >= 2^-14`, else `<= 2^-17 · scale` |
//! | `fp8e4m3_row` | OCP E4M3FN byte | one f32 per (token, KV head) row, `absmax / 448` | as `fp8e4m3` with the row's scale |
//! | `fp8_ds_mla` | [`BlockFp8DsMla`]: a 576-value latent row in 656 bytes (FlashMLA's FP8 row: 512 E4M3FN bytes, 4 f32 scales, 64 bf16) | one f32 per 128 latent values, `absmax / 448`; none for the 64 bf16 rotary values | latent values as `fp8e4m3` with their tile's scale; rotary values `<= 2^-8 · |x|` (bf16 rounding) |
//!
//! Values that do not fit: NaN or ±Inf in the input is rejected with
//! [`Error::NonFinite`] by every encoder (a NaN would poison the scale of its
//! whole row, or the softmax of every query that reads it). Finite values
//! beyond an fp8 format's range saturate to its largest finite value, with
//! their sign; int8 and q8_0 cannot overflow (their scale comes from the
//! row's or block's own maximum). Rounding is to nearest, ties to even,
//! everywhere.
//!
//! The fp8 conversions are the `float8` crate's (saturating, round to
//! nearest even); the decoders here are the reference's literal
//! dequantization.

use crate::error::{Error, Result};
pub use crate::formats::{
    BlockFormat, BlockFp8DsMla, BlockInfo, BlockIq4Nl, BlockLayout, BlockQ4_0, BlockQ4_1,
    BlockQ5_0, BlockQ5_1, BlockQ8_0, Fp8, Quants, DS_MLA_DIM, DS_MLA_LATENT, DS_MLA_TILE,
    IQ4_NL_LEVELS, QK, QK8_0,
};
use crate::Dtype;

/// The first non-finite element of `src`, as an error.
fn check_finite(src: &[f32]) -> Result<()> {
    match src.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            arg: "src",
            index,
            value: src[index],
        }),
        None => Ok(()),
    }
}

fn check_len(arg: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected != actual {
        return Err(Error::LengthMismatch {
            arg,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Symmetric int8 quantization of one row: returns the row's scale
/// `absmax / 127` (0 for an all-zero row) and writes
/// `round(x / scale)` (in `-127..=127`) to `dst`: the nearest level, ties to
/// even. Decoding a value gives `y = scale · q` with
/// `|x − y| ≤ scale / 2 + 2⁻²⁴·|y|` (the last term is the f32 rounding of
/// the product).
pub fn quantize_int8_row(src: &[f32], dst: &mut [i8]) -> Result<f32> {
    check_len("dst", src.len(), dst.len())?;
    check_finite(src)?;
    let absmax = src.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = absmax / 127.0;
    if scale == 0.0 {
        dst.fill(0);
        return Ok(0.0);
    }
    // The quotient in f64 picks the nearest level: a quotient of two f32
    // values is a half-integer only when it is one exactly, and f64 holds it
    // well enough to tell. Multiplying by an f32 reciprocal could land on the
    // farther level for values near a midpoint.
    let scale64 = f64::from(scale);
    for (q, &x) in dst.iter_mut().zip(src) {
        *q = (f64::from(x) / scale64)
            .round_ties_even()
            .clamp(-127.0, 127.0) as i8;
    }
    Ok(scale)
}

/// `dst[i] = scale · src[i]`.
pub fn dequantize_int8_row(src: &[i8], scale: f32, dst: &mut [f32]) -> Result<()> {
    check_len("dst", src.len(), dst.len())?;
    for (y, &q) in dst.iter_mut().zip(src) {
        *y = scale * f32::from(q);
    }
    Ok(())
}

/// Quantizes `src` (a multiple of 32 elements, e.g. one head's row) into
/// `src.len() / 32` q8_0 blocks. The scale of a block is its
/// `absmax / 127` rounded to f16, and the values are rounded against the
/// stored (rounded) scale, so decoding reproduces them as closely as the
/// format allows.
pub fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) -> Result<()> {
    quantize_blocks(src, dst)
}

/// The length rule of every block format: whole blocks (of 32 values; of
/// 576 for fp8_ds_mla).
fn check_whole_blocks(dtype: Dtype, len: usize) -> Result<()> {
    if !len.is_multiple_of(dtype.block_len()) {
        return Err(Error::InvalidDim {
            arg: "head_dim",
            value: len,
            reason: dtype.head_dim_rule(),
        });
    }
    Ok(())
}

/// Quantizes `src` (a multiple of 32 elements) into `src.len() / 32`
/// blocks of format `B` with the format's encoder
/// ([`BlockFormat::quantize`]; the table above).
pub fn quantize_blocks<B: BlockFormat>(src: &[f32], dst: &mut [B]) -> Result<()> {
    check_whole_blocks(B::DTYPE, src.len())?;
    check_len("dst", src.len() / B::LEN, dst.len())?;
    check_finite(src)?;
    for (block, xs) in dst.iter_mut().zip(src.chunks_exact(B::LEN)) {
        *block = B::quantize(xs);
    }
    Ok(())
}

/// As [`quantize_blocks`] for a block format named at run time, into the
/// blocks' bytes (`src.len() / 32` blocks of the format's size, any
/// alignment). Errors: `dtype` is not a block format (`UnsupportedDtype`
/// naming `dtype`), and those of [`quantize_blocks`].
pub fn quantize_block_bytes(dtype: Dtype, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let Some(info) = dtype.block() else {
        return Err(Error::UnsupportedDtype {
            arg: "dtype",
            dtype,
            reason: "a block format (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, fp8_ds_mla)",
        });
    };
    check_whole_blocks(dtype, src.len())?;
    check_len("dst", src.len() / info.len * info.bytes, dst.len())?;
    check_finite(src)?;
    info.quantize_row(src, dst);
    Ok(())
}

/// Decodes blocks of format `B`: element `i` of block `b` is
/// `b.value(i)` ([`BlockFormat::value`]), rounded to f32.
pub fn dequantize_blocks<B: BlockFormat>(src: &[B], dst: &mut [f32]) -> Result<()> {
    check_len("dst", src.len() * B::LEN, dst.len())?;
    for (block, ys) in src.iter().zip(dst.chunks_exact_mut(B::LEN)) {
        for (i, y) in ys.iter_mut().enumerate() {
            *y = block.value(i) as f32;
        }
    }
    Ok(())
}

/// Decodes q8_0 blocks: element `i` of block `b` is `d_b · qs_b[i]`.
pub fn dequantize_q8_0(src: &[BlockQ8_0], dst: &mut [f32]) -> Result<()> {
    check_len("dst", src.len() * QK8_0, dst.len())?;
    for (block, ys) in src.iter().zip(dst.chunks_exact_mut(QK8_0)) {
        let d = block.d.to_f32();
        for (y, &q) in ys.iter_mut().zip(&block.qs) {
            *y = d * f32::from(q);
        }
    }
    Ok(())
}

/// Encodes `src / scale` as fp8 bytes (`scale`: finite and positive, one
/// per KV head, or per tensor).
pub fn quantize_fp8(src: &[f32], scale: f32, format: Fp8, dst: &mut [u8]) -> Result<()> {
    check_len("dst", src.len(), dst.len())?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::InvalidScale { value: scale });
    }
    check_finite(src)?;
    for (b, &x) in dst.iter_mut().zip(src) {
        *b = format.encode(x / scale);
    }
    Ok(())
}

/// fp8 E4M3FN quantization of one row with its own scale
/// (`fp8e4m3_row`): returns the row's scale `absmax / 448` (0 for an
/// all-zero row, or one whose `absmax / 448` underflows to 0, whose bytes
/// are then all 0, as [`quantize_int8_row`]) and writes the E4M3 encoding
/// of `x / scale` to `dst` (round to nearest even; the row's largest value
/// is the format's largest, 448, and a quotient rounded past it saturates).
/// Decoding gives `y = scale · decode(b)` with
/// `|x − y| <= 2^-4 · |x|` for `|x| / scale >= 2^-6`, else
/// `<= 2^-10 · scale`, plus the f32 roundings of the quotient and product.
pub fn quantize_fp8_row(src: &[f32], dst: &mut [u8]) -> Result<f32> {
    check_len("dst", src.len(), dst.len())?;
    check_finite(src)?;
    let absmax = src.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = absmax / Fp8::E4M3.max();
    if scale == 0.0 {
        dst.fill(0);
        return Ok(0.0);
    }
    for (b, &x) in dst.iter_mut().zip(src) {
        *b = Fp8::E4M3.encode(x / scale);
    }
    Ok(scale)
}

/// `dst[i] = scale · decode(src[i])`, E4M3FN with the row's scale.
pub fn dequantize_fp8_row(src: &[u8], scale: f32, dst: &mut [f32]) -> Result<()> {
    dequantize_fp8(src, scale, Fp8::E4M3, dst)
}

/// `dst[i] = scale · decode(src[i])`.
pub fn dequantize_fp8(src: &[u8], scale: f32, format: Fp8, dst: &mut [f32]) -> Result<()> {
    check_len("dst", src.len(), dst.len())?;
    for (y, &b) in dst.iter_mut().zip(src) {
        *y = scale * format.decode(b);
    }
    Ok(())
}
