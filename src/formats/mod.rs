//! The KV formats: the element types a cache may hold ([`Dtype`]) and the
//! storage of the quantized ones. A leaf: the views, the microkernels and
//! the encoders of [`crate::quant`] (which return errors) build on it.

mod fp8;
mod q8_0;

pub use fp8::Fp8;
pub use q8_0::{BlockQ8_0, QK8_0};

/// The element type of a K or V cache.
///
/// The quantized types (see [`crate::quant`] for their formats, error
/// bounds and encoders) are read by every tier's microkernel directly,
/// dequantized once per row per group of query heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the high half of a binary32).
    Bf16,
    /// Symmetric int8 with one f32 scale per (token, KV head) row.
    Int8,
    /// llama.cpp / GGUF `q8_0` blocks: 32 int8 values and one f16 scale
    /// ([`crate::quant::BlockQ8_0`]); head dims must be multiples of 32.
    Q8_0,
    /// OCP fp8 E4M3FN with one f32 scale per KV head (or per tensor).
    Fp8E4M3,
    /// OCP fp8 E5M2 with one f32 scale per KV head (or per tensor).
    Fp8E5M2,
}

impl Dtype {
    /// Every dtype, in table order.
    pub const ALL: [Dtype; 7] = [
        Dtype::F32,
        Dtype::F16,
        Dtype::Bf16,
        Dtype::Int8,
        Dtype::Q8_0,
        Dtype::Fp8E4M3,
        Dtype::Fp8E5M2,
    ];

    /// The name used in kernel names, reports and errors (`f32`, `f16`,
    /// `bf16`, `int8`, `q8_0`, `fp8e4m3`, `fp8e5m2`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::Int8 => "int8",
            Dtype::Q8_0 => "q8_0",
            Dtype::Fp8E4M3 => "fp8e4m3",
            Dtype::Fp8E5M2 => "fp8e5m2",
        }
    }

    /// The type's code in the C ABI (`GQA_DTYPE_*` in the header). Fixed
    /// per type and never reused, whatever the order of [`Dtype::ALL`]: a
    /// new type takes the next free code.
    pub const fn abi_code(self) -> i32 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::Bf16 => 2,
            Dtype::Int8 => 3,
            Dtype::Q8_0 => 4,
            Dtype::Fp8E4M3 => 5,
            Dtype::Fp8E5M2 => 6,
        }
    }

    /// The type whose [`Dtype::abi_code`] is `code`, if any.
    pub fn from_abi_code(code: i32) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.abi_code() == code)
    }

    /// Whether the type stores quantized values (with scales).
    pub fn is_quantized(self) -> bool {
        !matches!(self, Dtype::F32 | Dtype::F16 | Dtype::Bf16)
    }

    /// Bytes a step reads for one row of `head_dim` values: the values and
    /// the scales stored with them (int8: one f32 per row; q8_0: one f16
    /// per 32 values; fp8's per-head scale is not counted).
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            Dtype::F32 => 4 * head_dim,
            Dtype::F16 | Dtype::Bf16 => 2 * head_dim,
            Dtype::Int8 => head_dim + 4,
            Dtype::Q8_0 => head_dim.div_ceil(QK8_0) * 34,
            Dtype::Fp8E4M3 | Dtype::Fp8E5M2 => head_dim,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
