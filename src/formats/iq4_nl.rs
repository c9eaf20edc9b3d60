//! `iq4_nl`: llama.cpp's block of 32 4-bit codes into a fixed non-linear
//! table of levels, and an f16 scale (GGUF type 20): value `i` is
//! `d · LEVELS[code_i]`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::block::{
    inverse, nibble, pack_nibbles, signed_absmax, BlockFormat, BlockLayout, Quants, QK,
};
use super::Dtype;

/// The 16 levels of `iq4_nl` (ggml's `kvalues_iq4nl`), denser near zero.
pub const IQ4_NL_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// An `iq4_nl` block, bit-compatible with llama.cpp's `block_iq4_nl`: the
/// f16 scale, then 16 bytes of 4-bit codes packed as in
/// [`super::BlockQ4_0`]. 18 bytes, 2-byte aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIq4Nl {
    /// The block's scale.
    pub d: f16,
    /// The packed codes.
    pub qs: [u8; 16],
}

/// The code whose level is nearest to `t` (the lower on a tie).
fn nearest(t: f32) -> u8 {
    let mut best = 0;
    for (c, &l) in IQ4_NL_LEVELS.iter().enumerate() {
        if (t - f32::from(l)).abs() < (t - f32::from(IQ4_NL_LEVELS[best])).abs() {
            best = c;
        }
    }
    best as u8
}

impl BlockIq4Nl {
    fn encode(x: &[f32], d: f16) -> (BlockIq4Nl, f64) {
        let inv = inverse(d.to_f32());
        let codes: [u8; QK] = std::array::from_fn(|i| nearest(x[i] * inv));
        let b = BlockIq4Nl {
            d,
            qs: pack_nibbles(&codes),
        };
        let err = (0..QK)
            .map(|i| (b.value(i) - f64::from(x[i])).powi(2))
            .sum();
        (b, err)
    }
}

impl BlockFormat for BlockIq4Nl {
    const DTYPE: Dtype = Dtype::Iq4Nl;
    const LAYOUT: BlockLayout = BlockLayout {
        d: 0,
        m: None,
        qh: None,
        qs: 2,
        quants: Quants::Nibbles { lut: IQ4_NL_LEVELS },
    };

    fn value(&self, i: usize) -> f64 {
        f64::from(self.d) * f64::from(IQ4_NL_LEVELS[usize::from(nibble(&self.qs, i))])
    }

    /// `d = x_max / −127` (the value of largest magnitude on the level
    /// −127), rounded to f16, each value on its nearest level; then once
    /// the least-squares scale for those levels, kept if it lowers the
    /// block's squared error.
    fn quantize(x: &[f32]) -> Self {
        let (first, err) = BlockIq4Nl::encode(x, f16::from_f32(signed_absmax(x) / -127.0));
        let (num, den) = (0..QK).fold((0f64, 0f64), |(n, s), i| {
            let l = f64::from(IQ4_NL_LEVELS[usize::from(nibble(&first.qs, i))]);
            (n + l * f64::from(x[i]), s + l * l)
        });
        if den == 0.0 {
            return first;
        }
        let (second, err2) = BlockIq4Nl::encode(x, f16::from_f64(num / den));
        if err2 < err {
            second
        } else {
            first
        }
    }
}
