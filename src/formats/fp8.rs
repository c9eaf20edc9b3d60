//! The fp8 formats (OCP E4M3FN and E5M2): one byte per value, scaled per
//! KV head or per tensor, or (E4M3, `Dtype::Fp8E4M3Row`) per row.

use float8::{F8E4M3, F8E5M2};

/// An fp8 E4M3FN byte as a kernel element type (the kernels' reading is
/// `arch::Elem`'s).
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct E4M3(pub(crate) u8);

/// An fp8 E4M3FN byte with one f32 scale per row (`Dtype::Fp8E4M3Row`)
/// as a kernel element type: read as [`E4M3`], the row scale applied by
/// the kernel as int8's.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct E4M3Row(pub(crate) u8);

/// An fp8 E5M2 byte as a kernel element type.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct E5M2(pub(crate) u8);

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
