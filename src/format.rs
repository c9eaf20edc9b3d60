//! The storage of the quantized KV formats (see [`crate::quant`] for their
//! encoders, decoders and error bounds): the `q8_0` block and the two fp8
//! formats. A leaf: the views ([`crate::KvData`]) hold these types, and the
//! encoders, which return errors, build on them.

use bytemuck::{Pod, Zeroable};
use float8::{F8E4M3, F8E5M2};
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

/// The two OCP 8-bit float formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8 {
    /// E4M3FN: 4 exponent bits, 3 mantissa bits, no infinities, max 448.
    E4M3,
    /// E5M2: 5 exponent bits, 2 mantissa bits, max finite 57344.
    E5M2,
}

impl Fp8 {
    /// The largest finite value.
    pub fn max(self) -> f32 {
        match self {
            Fp8::E4M3 => 448.0,
            Fp8::E5M2 => 57344.0,
        }
    }

    /// Encodes one value (already divided by its scale): round to nearest
    /// even, finite values beyond the range saturate.
    pub fn encode(self, x: f32) -> u8 {
        match self {
            Fp8::E4M3 => F8E4M3::from_f32(x).to_bits(),
            Fp8::E5M2 => F8E5M2::from_f32(x).to_bits(),
        }
    }

    /// Decodes one byte (exact).
    pub fn decode(self, b: u8) -> f32 {
        match self {
            Fp8::E4M3 => F8E4M3::from_bits(b).to_f32(),
            Fp8::E5M2 => F8E5M2::from_bits(b).to_f32(),
        }
    }
}
