//! `q4_1`: llama.cpp's block of 32 4-bit values with an f16 scale and an
//! f16 offset (GGUF type 3): value `i` is `d · code_i + m`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::block::{
    inverse, min_max, nibble, pack_nibbles, BlockFormat, BlockLayout, Quants, LEVELS_0_15, QK,
};
use super::Dtype;

/// A `q4_1` block, bit-compatible with llama.cpp's `block_q4_1`: the f16
/// scale `d`, the f16 offset `m`, then 16 bytes of 4-bit codes packed as
/// in [`super::BlockQ4_0`]. 20 bytes, 2-byte aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// The block's scale.
    pub d: f16,
    /// The block's offset (its minimum).
    pub m: f16,
    /// The packed codes.
    pub qs: [u8; 16],
}

impl BlockFormat for BlockQ4_1 {
    const DTYPE: Dtype = Dtype::Q4_1;
    const LAYOUT: BlockLayout = BlockLayout {
        d: 0,
        m: Some(2),
        qh: None,
        qs: 4,
        quants: Quants::Nibbles { lut: LEVELS_0_15 },
    };

    fn value(&self, i: usize) -> f64 {
        f64::from(self.d) * f64::from(nibble(&self.qs, i)) + f64::from(self.m)
    }

    /// `m` is the block's minimum and `d = (max − min) / 15` (GGUF's rule),
    /// both rounded to f16; each value takes the nearest level against the
    /// stored `d` and `m`.
    fn quantize(x: &[f32]) -> Self {
        let (lo, hi) = min_max(x);
        let (d, m) = (f16::from_f32((hi - lo) / 15.0), f16::from_f32(lo));
        let (inv, m32) = (inverse(d.to_f32()), m.to_f32());
        let codes: [u8; QK] =
            std::array::from_fn(|i| ((x[i] - m32) * inv).round_ties_even().clamp(0.0, 15.0) as u8);
        BlockQ4_1 {
            d,
            m,
            qs: pack_nibbles(&codes),
        }
    }
}
