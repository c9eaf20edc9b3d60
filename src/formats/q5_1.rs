//! `q5_1`: llama.cpp's block of 32 5-bit values with an f16 scale and an
//! f16 offset (GGUF type 7): value `i` is `d · code_i + m`, the codes
//! stored as in `q5_0`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::block::{
    inverse, min_max, nibble, pack_high_bits, pack_nibbles, BlockFormat, BlockLayout, Quants,
    LEVELS_0_15, QK,
};
use super::Dtype;

/// A `q5_1` block, bit-compatible with llama.cpp's `block_q5_1`: the f16
/// scale `d`, the f16 offset `m`, the fifth bits, then the low 4-bit codes
/// (as [`super::BlockQ5_0`]). 24 bytes, 2-byte aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_1 {
    /// The block's scale.
    pub d: f16,
    /// The block's offset (its minimum).
    pub m: f16,
    /// The fifth bit of each code.
    pub qh: [u8; 4],
    /// The low 4 bits of each code, packed.
    pub qs: [u8; 16],
}

impl BlockFormat for BlockQ5_1 {
    const DTYPE: Dtype = Dtype::Q5_1;
    const LAYOUT: BlockLayout = BlockLayout {
        d: 0,
        m: Some(2),
        qh: Some(4),
        qs: 8,
        quants: Quants::Nibbles { lut: LEVELS_0_15 },
    };

    fn value(&self, i: usize) -> f64 {
        let high = u32::from_le_bytes(self.qh) >> i & 1;
        let code = u32::from(nibble(&self.qs, i)) | high << 4;
        f64::from(self.d) * f64::from(code) + f64::from(self.m)
    }

    /// As `q4_1` with 32 levels: `m` the minimum, `d = (max − min) / 31`.
    fn quantize(x: &[f32]) -> Self {
        let (lo, hi) = min_max(x);
        let (d, m) = (f16::from_f32((hi - lo) / 31.0), f16::from_f32(lo));
        let (inv, m32) = (inverse(d.to_f32()), m.to_f32());
        let codes: [u8; QK] =
            std::array::from_fn(|i| ((x[i] - m32) * inv).round_ties_even().clamp(0.0, 31.0) as u8);
        BlockQ5_1 {
            d,
            m,
            qh: pack_high_bits(&codes),
            qs: pack_nibbles(&codes),
        }
    }
}
