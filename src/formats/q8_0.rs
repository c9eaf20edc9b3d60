//! The `q8_0` format's storage: llama.cpp's block of 32 values and an f16
//! scale.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per [`BlockQ8_0`].
pub const QK8_0: usize = 32;

/// A `q8_0` block, bit-compatible with llama.cpp's `block_q8_0` (GGUF type
/// 8): the f16 scale `d`, then 32 signed values; element `i` is
/// `d · qs[i]`. 34 bytes, 2-byte aligned, no padding, so a host can point
/// at a GGUF-style buffer directly ([`bytemuck::cast_slice`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// The block's scale.
    pub d: f16,
    /// The quantized values.
    pub qs: [i8; QK8_0],
}

impl super::block::BlockFormat for BlockQ8_0 {
    const DTYPE: super::Dtype = super::Dtype::Q8_0;
    const LAYOUT: super::block::BlockLayout = super::block::BlockLayout {
        d: 0,
        m: None,
        qh: None,
        qs: 2,
        quants: super::block::Quants::Bytes,
    };

    fn value(&self, i: usize) -> f64 {
        f64::from(self.d) * f64::from(self.qs[i])
    }

    /// `d = absmax / 127` rounded to f16, each value the nearest level
    /// against the stored `d` (as [`crate::quant::quantize_q8_0`]).
    fn quantize(x: &[f32]) -> Self {
        let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = half::f16::from_f32(absmax / 127.0);
        let inv = super::block::inverse(d.to_f32());
        BlockQ8_0 {
            d,
            qs: std::array::from_fn(|i| (x[i] * inv).round_ties_even().clamp(-127.0, 127.0) as i8),
        }
    }
}
