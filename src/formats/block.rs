//! What every block format shares: blocks of [`QK`] = 32 values with an f16
//! scale (the GGUF formats), or one block a row (`fp8_ds_mla`), described
//! once ([`BlockFormat`]) so that one generic
//! reader serves every tier (`arch::Elem` is implemented for every
//! `BlockFormat`), one generic encoder serves append and the owned buffer,
//! and the reference reads each block through the format's own literal
//! decoder ([`BlockFormat::value`]).

use bytemuck::Pod;

use super::Dtype;

/// Values per block of the GGUF-style formats ([`BlockFormat::LEN`] of all
/// but the row formats).
pub const QK: usize = 32;

/// How a block's quantized values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quants {
    /// One signed byte per value (q8_0): value `i` is byte `i`.
    Bytes,
    /// Two 4-bit codes per byte, GGUF order: value `i < 16` is the low
    /// nibble of byte `i`, value `i ≥ 16` the high nibble of byte `i - 16`.
    /// A code reads as `lut[code]`.
    Nibbles {
        /// The level of each 4-bit code.
        lut: [i8; 16],
    },
    /// fp8 E4M3FN bytes with an f32 scale per `tile` values, then bf16
    /// values (`fp8_ds_mla`): value `i < codes` is byte `qs + i` times the
    /// little-endian f32 at `scales + 4 · (i / tile)`, value `i >= codes`
    /// the bf16 at `tail + 2 · (i - codes)`. The layout's `d`, `m` and `qh`
    /// are not read.
    E4M3Tiles {
        /// Values per scale.
        tile: usize,
        /// How many values are fp8 (a multiple of `tile`).
        codes: usize,
        /// Offset of the scales.
        scales: usize,
        /// Offset of the bf16 values.
        tail: usize,
    },
}

/// Where a block keeps its parts (byte offsets inside the block), which is
/// all the kernels need to dequantize it: value `i` is
/// `d · (q_i + 16 · bit_i) + m`, where `q_i` is the stored level
/// ([`Quants`]), `bit_i` bit `i` of the little-endian `u32` at `qh` (0 when
/// the format has none) and `m` the f16 at `m` (0 when none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    /// Offset of the f16 scale `d`.
    pub d: usize,
    /// Offset of the f16 offset `m` (q4_1, q5_1).
    pub m: Option<usize>,
    /// Offset of the 32 fifth bits (q5_0, q5_1).
    pub qh: Option<usize>,
    /// Offset of the quantized values.
    pub qs: usize,
    /// How the values are stored.
    pub quants: Quants,
}

/// A block format: a `repr(C)` block of [`BlockFormat::LEN`] values,
/// bit-compatible with its namesake (GGUF's, or FlashMLA's row), so a host
/// can point at its cache's blocks.
///
/// Each format's file implements this (its storage, its literal decoder,
/// its encoder); the kernels, the views, append and the C ABI read every
/// format through it.
pub trait BlockFormat: Pod + Default + PartialEq + std::fmt::Debug + Send + Sync {
    /// The format's dtype.
    const DTYPE: Dtype;
    /// Values per block: [`QK`] (the GGUF formats: head dims and strides
    /// are multiples of it), or a whole row (a *row format*, `fp8_ds_mla`:
    /// strides are multiples of it and a head dim reads the leading
    /// `head_dim <= LEN` values of each row).
    const LEN: usize = QK;
    /// Where the block keeps its parts.
    const LAYOUT: BlockLayout;
    /// Value `i < LEN`, decoded literally from the format's definition, in
    /// f64 (the reference's reading; never on the hot path).
    fn value(&self, i: usize) -> f64;
    /// The block that stores `x` ([`BlockFormat::LEN`] finite values) as closely as the
    /// encoder can: the scale from the block's range, rounded to f16, and
    /// each value's level chosen against the stored scale.
    fn quantize(x: &[f32]) -> Self;
}

/// Code generic over a block format, run for a format named at run time
/// ([`Dtype::visit_block`]): what a `match` over the block dtypes would
/// otherwise spell out once per format.
pub(crate) trait BlockVisitor {
    type Out;
    fn visit<B: BlockFormat>(self) -> Self::Out;
}

/// A block format's functions, for code that holds a [`Dtype`] and bytes
/// rather than a type ([`Dtype::block`]).
#[derive(Clone, Copy, Debug)]
pub struct BlockInfo {
    /// Values per block ([`BlockFormat::LEN`]).
    pub len: usize,
    /// Bytes per block.
    pub bytes: usize,
    /// Value `i` of the block in `bytes` (exactly one block, any
    /// alignment), as [`BlockFormat::value`].
    pub value: fn(&[u8], usize) -> f64,
    /// Encodes `len` finite values into one block (`out`: its bytes, any
    /// alignment), as [`BlockFormat::quantize`].
    pub quantize: fn(&[f32], &mut [u8]),
    /// Where the block keeps its parts.
    pub layout: BlockLayout,
}

impl BlockInfo {
    /// The functions of format `B`.
    pub const fn of<B: BlockFormat>() -> BlockInfo {
        BlockInfo {
            len: B::LEN,
            bytes: std::mem::size_of::<B>(),
            value: value_of::<B>,
            quantize: quantize_into::<B>,
            layout: B::LAYOUT,
        }
    }

    /// Encodes `x` (a whole number of blocks of finite values) into `out`
    /// (`x.len() / len` blocks' bytes).
    pub fn quantize_row(&self, x: &[f32], out: &mut [u8]) {
        debug_assert_eq!(x.len() / self.len * self.bytes, out.len());
        for (xs, o) in x
            .chunks_exact(self.len)
            .zip(out.chunks_exact_mut(self.bytes))
        {
            (self.quantize)(xs, o);
        }
    }
}

fn value_of<B: BlockFormat>(bytes: &[u8], i: usize) -> f64 {
    bytemuck::pod_read_unaligned::<B>(bytes).value(i)
}

fn quantize_into<B: BlockFormat>(x: &[f32], out: &mut [u8]) {
    out.copy_from_slice(bytemuck::bytes_of(&B::quantize(x)));
}

/// The value of largest magnitude in `x` (the first such, with its sign),
/// 0 for an empty or all-zero `x`: GGUF's symmetric formats map it to their
/// most negative level.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    x.iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// `(min, max)` of `x`, with 0 included in neither (GGUF's offset formats
/// take the block's own range).
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// `1 / d`, or 0 for a zero scale (every level then decodes to the offset).
pub(crate) fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// The nibble `i` of 32 packed GGUF-style into 16 bytes.
pub(crate) fn nibble(qs: &[u8; 16], i: usize) -> u8 {
    if i < 16 {
        qs[i] & 0x0F
    } else {
        qs[i - 16] >> 4
    }
}

/// 32 codes (each `< 16`) packed GGUF-style: code `i < 16` in the low
/// nibble of byte `i`, code `16 + i` in its high nibble.
pub(crate) fn pack_nibbles(codes: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|i| (codes[i] & 0x0F) | (codes[i + 16] << 4))
}

/// The 32 fifth bits of 5-bit codes, bit `i` of the little-endian `u32`
/// for code `i`.
pub(crate) fn pack_high_bits(codes: &[u8; 32]) -> [u8; 4] {
    let bits = codes
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &c)| acc | (u32::from(c >> 4 & 1) << i));
    bits.to_le_bytes()
}

/// The 4-bit levels `0..=15`, as a lookup table (q4_1, q5_1).
pub(crate) const LEVELS_0_15: [i8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
