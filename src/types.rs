//! Element types and KV-cache views.

use half::{bf16, f16};

/// The element type of a K or V cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the high half of a binary32).
    Bf16,
}

impl Dtype {
    /// Every dtype, in table order.
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

    /// The name used in kernel names, reports and errors (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A borrowed buffer of cache elements of one dtype.
#[derive(Clone, Copy, Debug)]
pub enum KvData<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    Bf16(&'a [bf16]),
}

impl<'a> KvData<'a> {
    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            KvData::F32(_) => Dtype::F32,
            KvData::F16(_) => Dtype::F16,
            KvData::Bf16(_) => Dtype::Bf16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            KvData::F32(s) => s.len(),
            KvData::F16(s) => s.len(),
            KvData::Bf16(s) => s.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to f64 (panics when out of range; used by the
    /// reference, never on the hot path).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            KvData::F32(s) => f64::from(s[i]),
            KvData::F16(s) => f64::from(s[i]),
            KvData::Bf16(s) => f64::from(s[i]),
        }
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        match self {
            KvData::F32(s) => s.as_ptr().cast(),
            KvData::F16(s) => s.as_ptr().cast(),
            KvData::Bf16(s) => s.as_ptr().cast(),
        }
    }
}

impl<'a> From<&'a [f32]> for KvData<'a> {
    fn from(s: &'a [f32]) -> Self {
        KvData::F32(s)
    }
}
impl<'a> From<&'a [f16]> for KvData<'a> {
    fn from(s: &'a [f16]) -> Self {
        KvData::F16(s)
    }
}
impl<'a> From<&'a [bf16]> for KvData<'a> {
    fn from(s: &'a [bf16]) -> Self {
        KvData::Bf16(s)
    }
}

/// A strided view of a K or V cache for a whole batch.
///
/// Element `d` of position `j` of KV head `g` of sequence `b` is
/// `data[b * seq_stride + j * token_stride + g * head_stride + d]`; strides
/// are in elements. `[B, L, G, D]` storage is
/// `(seq_stride, token_stride, head_stride) = (L*G*D, G*D, D)` and
/// `[B, G, L, D]` is `(G*L*D, D, L*D)`; any other strides work too, with no
/// copy. Zero strides are allowed (the aliased rows are only read). Every
/// position the kernels will read is checked against `data.len()` before any
/// load.
#[derive(Clone, Copy, Debug)]
pub struct KvTensor<'a> {
    /// The elements.
    pub data: KvData<'a>,
    /// Elements between sequence `b` and `b + 1`.
    pub seq_stride: usize,
    /// Elements between position `j` and `j + 1`.
    pub token_stride: usize,
    /// Elements between KV head `g` and `g + 1`.
    pub head_stride: usize,
}

impl<'a> KvTensor<'a> {
    /// A view with explicit strides (in elements).
    pub fn new(
        data: impl Into<KvData<'a>>,
        seq_stride: usize,
        token_stride: usize,
        head_stride: usize,
    ) -> Self {
        KvTensor {
            data: data.into(),
            seq_stride,
            token_stride,
            head_stride,
        }
    }

    /// A `[B, max_len, G, D]` (token-major) cache.
    pub fn blgd(
        data: impl Into<KvData<'a>>,
        max_len: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let row = kv_heads.saturating_mul(head_dim);
        Self::new(data, max_len.saturating_mul(row), row, head_dim)
    }

    /// A `[B, G, max_len, D]` (head-major) cache.
    pub fn bgld(
        data: impl Into<KvData<'a>>,
        max_len: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let head = max_len.saturating_mul(head_dim);
        Self::new(data, kv_heads.saturating_mul(head), head_dim, head)
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.data.dtype()
    }
}
