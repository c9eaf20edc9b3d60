//! `q4_0`: llama.cpp's block of 32 4-bit values and an f16 scale (GGUF
//! type 2): value `i` is `d · (code_i − 8)`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::block::{
    inverse, nibble, pack_nibbles, signed_absmax, BlockFormat, BlockLayout, Quants, QK,
};
use super::Dtype;

/// A `q4_0` block, bit-compatible with llama.cpp's `block_q4_0`: the f16
/// scale, then 16 bytes of 4-bit codes (code `i < 16` in the low nibble of
/// byte `i`, code `16 + i` in its high nibble). 18 bytes, 2-byte aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// The block's scale.
    pub d: f16,
    /// The packed codes.
    pub qs: [u8; 16],
}

impl BlockFormat for BlockQ4_0 {
    const DTYPE: Dtype = Dtype::Q4_0;
    const LAYOUT: BlockLayout = BlockLayout {
        d: 0,
        m: None,
        qh: None,
        qs: 2,
        quants: Quants::Nibbles {
            lut: [-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7],
        },
    };

    fn value(&self, i: usize) -> f64 {
        f64::from(self.d) * (f64::from(nibble(&self.qs, i)) - 8.0)
    }

    /// The value of largest magnitude `x_max` sets `d = x_max / −8` (so it
    /// is stored exactly as level −8, GGUF's rule), rounded to f16; each
    /// value takes the nearest of the 16 levels against the stored `d`.
    fn quantize(x: &[f32]) -> Self {
        let d = f16::from_f32(signed_absmax(x) / -8.0);
        let inv = inverse(d.to_f32());
        let codes: [u8; QK] =
            std::array::from_fn(|i| ((x[i] * inv).round_ties_even() + 8.0).clamp(0.0, 15.0) as u8);
        BlockQ4_0 {
            d,
            qs: pack_nibbles(&codes),
        }
    }
}
