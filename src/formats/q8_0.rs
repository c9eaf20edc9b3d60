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
