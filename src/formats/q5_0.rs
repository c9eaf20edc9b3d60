//! `q5_0`: llama.cpp's block of 32 5-bit values and an f16 scale (GGUF
//! type 6): value `i` is `d · (code_i − 16)`, the code's low 4 bits packed
//! as in `q4_0` and its fifth bit in a 32-bit mask.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::block::{
    inverse, nibble, pack_high_bits, pack_nibbles, signed_absmax, BlockFormat, BlockLayout, Quants,
    QK,
};
use super::Dtype;

/// A `q5_0` block, bit-compatible with llama.cpp's `block_q5_0`: the f16
/// scale, the fifth bits (bit `i` of the little-endian `u32` for value
/// `i`), then 16 bytes of low 4-bit codes packed as in
/// [`super::BlockQ4_0`]. 22 bytes, 2-byte aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    /// The block's scale.
    pub d: f16,
    /// The fifth bit of each code.
    pub qh: [u8; 4],
    /// The low 4 bits of each code, packed.
    pub qs: [u8; 16],
}

impl BlockFormat for BlockQ5_0 {
    const DTYPE: Dtype = Dtype::Q5_0;
    const LAYOUT: BlockLayout = BlockLayout {
        d: 0,
        m: None,
        qh: Some(2),
        qs: 6,
        quants: Quants::Nibbles {
            lut: [
                -16, -15, -14, -13, -12, -11, -10, -9, -8, -7, -6, -5, -4, -3, -2, -1,
            ],
        },
    };

    fn value(&self, i: usize) -> f64 {
        let high = u32::from_le_bytes(self.qh) >> i & 1;
        let code = u32::from(nibble(&self.qs, i)) | high << 4;
        f64::from(self.d) * (f64::from(code) - 16.0)
    }

    /// As `q4_0` with 32 levels: `d = x_max / −16` rounded to f16, each
    /// value the nearest level against it.
    fn quantize(x: &[f32]) -> Self {
        let d = f16::from_f32(signed_absmax(x) / -16.0);
        let inv = inverse(d.to_f32());
        let codes: [u8; QK] =
            std::array::from_fn(|i| ((x[i] * inv).round_ties_even() + 16.0).clamp(0.0, 31.0) as u8);
        BlockQ5_0 {
            d,
            qh: pack_high_bits(&codes),
            qs: pack_nibbles(&codes),
        }
    }
}
