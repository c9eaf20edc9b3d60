//! The KV formats: the element types a cache may hold ([`Dtype`]) and the
//! storage of the quantized ones. A leaf: the views, the microkernels and
//! the encoders of [`crate::quant`] (which return errors) build on it.
//!
//! **The format registry** is the one table below (`formats!`): a line per
//! format gives its `Dtype` variant, its stable C ABI code, its name and
//! the element type its kernels read, and its kind. `build.rs` reads the
//! same lines (as text) for the kernel list's dtype names and element
//! types, and `tests/header.rs` checks the header's `GQA_DTYPE_*` against
//! them. A block format (kind `block`) is one file here implementing
//! [`BlockFormat`] plus its line: the kernels, views, append, the C ABI and
//! the reference read it through that trait.

mod block;
mod ds_mla;
mod fp8;
mod iq4_nl;
mod q4_0;
mod q4_1;
mod q5_0;
mod q5_1;
mod q8_0;

pub(crate) use block::BlockVisitor;
pub use block::{BlockFormat, BlockInfo, BlockLayout, Quants, QK};
pub use ds_mla::{BlockFp8DsMla, DS_MLA_DIM, DS_MLA_LATENT, DS_MLA_TILE};
pub use fp8::Fp8;
pub(crate) use fp8::{E4M3Row, E4M3, E5M2};
pub use iq4_nl::{BlockIq4Nl, IQ4_NL_LEVELS};
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q8_0::{BlockQ8_0, QK8_0};

/// What kind of storage a format has (how its rows are laid out and
/// scaled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// f32, f16, bf16: one value per element, no scale.
    Float,
    /// One byte per value and one f32 scale per row.
    Int8,
    /// One byte per value, one f32 scale per KV head or per tensor.
    Fp8,
    /// One fp8 byte per value and one f32 scale per row (as `Int8`).
    Fp8Row,
    /// Blocks of 32 values with their scales ([`BlockFormat`]).
    Block,
    /// One block a row ([`BlockFormat`] with a `LEN` of its own): a latent
    /// row format, K and V in one row, so it pairs only with itself.
    Row,
}

/// `Some` block functions for kind `block`, `None` for the others (whose
/// element type is not named here).
/// `v` run with the block type for kind `block`, `None` for the others.
macro_rules! visit_block {
    (Block, $t:ty, $v:ident) => {
        Some($v.visit::<$t>())
    };
    (Row, $t:ty, $v:ident) => {
        Some($v.visit::<$t>())
    };
    ($other:ident, $t:ty, $v:ident) => {{
        let _ = $v;
        None
    }};
}

macro_rules! block_info {
    (Block, $t:ty) => {{
        const INFO: BlockInfo = BlockInfo::of::<$t>();
        Some(&INFO)
    }};
    (Row, $t:ty) => {{
        const INFO: BlockInfo = BlockInfo::of::<$t>();
        Some(&INFO)
    }};
    ($other:ident, $t:ty) => {
        None
    };
}

/// Expands the registry into [`Dtype`] and its tables.
macro_rules! formats {
    ($( $(#[$doc:meta])* $v:ident $code:literal $name:literal $elem:ty, $kind:ident; )*) => {
        /// The element type of a K or V cache.
        ///
        /// The quantized types (see [`crate::quant`] for their formats,
        /// error bounds and encoders) are read by every tier's microkernel
        /// directly, dequantized once per row per group of query heads.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Dtype {
            $( $(#[$doc])* $v, )*
        }

        impl Dtype {
            /// Every dtype, in table order.
            pub const ALL: [Dtype; [$($name),*].len()] = [$(Dtype::$v),*];

            /// The name used in kernel names, reports and errors (`f32`,
            /// `f16`, `bf16`, `int8`, `q8_0`, `fp8e4m3`, `fp8e5m2`,
            /// `q4_0`, `q4_1`, `q5_0`, `q5_1`, `iq4_nl`, `fp8e4m3_row`, `fp8_ds_mla`).
            pub fn name(self) -> &'static str {
                match self { $(Dtype::$v => $name,)* }
            }

            /// The type's code in the C ABI (`GQA_DTYPE_*` in the header).
            /// Fixed per type and never reused, whatever the order of
            /// [`Dtype::ALL`]: a new type takes the next free code.
            pub const fn abi_code(self) -> i32 {
                match self { $(Dtype::$v => $code,)* }
            }

            /// The kind of storage.
            pub(crate) const fn kind(self) -> Kind {
                match self { $(Dtype::$v => Kind::$kind,)* }
            }

            /// `v` run with the block type of a block format (`None` for
            /// the others).
            pub(crate) fn visit_block<V: BlockVisitor>(self, v: V) -> Option<V::Out> {
                match self { $(Dtype::$v => visit_block!($kind, $elem, v),)* }
            }

            /// The functions of a block format (`None` for the others).
            pub fn block(self) -> Option<&'static BlockInfo> {
                match self { $(Dtype::$v => block_info!($kind, $elem),)* }
            }
        }
    };
}

// The registry. One line per format: variant, C ABI code, name, the
// element type the kernels read, kind. `build.rs` parses these lines.
formats! {
    /// IEEE binary32.
    F32 0 "f32" f32, Float;
    /// IEEE binary16.
    F16 1 "f16" half::f16, Float;
    /// bfloat16 (the high half of a binary32).
    Bf16 2 "bf16" half::bf16, Float;
    /// Symmetric int8 with one f32 scale per (token, KV head) row.
    Int8 3 "int8" i8, Int8;
    /// llama.cpp / GGUF `q8_0` blocks: 32 int8 values and one f16 scale
    /// ([`BlockQ8_0`]); head dims must be multiples of 32.
    Q8_0 4 "q8_0" crate::formats::BlockQ8_0, Block;
    /// OCP fp8 E4M3FN with one f32 scale per KV head (or per tensor).
    Fp8E4M3 5 "fp8e4m3" crate::formats::E4M3, Fp8;
    /// OCP fp8 E5M2 with one f32 scale per KV head (or per tensor).
    Fp8E5M2 6 "fp8e5m2" crate::formats::E5M2, Fp8;
    /// GGUF `q4_0` blocks ([`BlockQ4_0`]): 32 4-bit values and an f16
    /// scale; head dims must be multiples of 32.
    Q4_0 7 "q4_0" crate::formats::BlockQ4_0, Block;
    /// GGUF `q4_1` blocks ([`BlockQ4_1`]): 32 4-bit values, an f16 scale
    /// and an f16 offset; head dims must be multiples of 32.
    Q4_1 8 "q4_1" crate::formats::BlockQ4_1, Block;
    /// GGUF `q5_0` blocks ([`BlockQ5_0`]): 32 5-bit values and an f16
    /// scale; head dims must be multiples of 32.
    Q5_0 9 "q5_0" crate::formats::BlockQ5_0, Block;
    /// GGUF `q5_1` blocks ([`BlockQ5_1`]): 32 5-bit values, an f16 scale
    /// and an f16 offset; head dims must be multiples of 32.
    Q5_1 10 "q5_1" crate::formats::BlockQ5_1, Block;
    /// GGUF `iq4_nl` blocks ([`BlockIq4Nl`]): 32 4-bit codes into a fixed
    /// non-linear table, and an f16 scale; head dims must be multiples
    /// of 32.
    Iq4Nl 11 "iq4_nl" crate::formats::BlockIq4Nl, Block;
    /// OCP fp8 E4M3FN with one f32 scale per (token, KV head) row, laid
    /// out as int8's (multi-head latent attention caches as serving
    /// runtimes store them: a scale per token).
    Fp8E4M3Row 12 "fp8e4m3_row" crate::formats::E4M3Row, Fp8Row;
    /// DeepSeek-V3.2's FP8 latent row (FlashMLA's FP8 KV cache, `fp8_ds_mla`
    /// in vLLM and SGLang; [`BlockFp8DsMla`]): 576 values in 656 bytes,
    /// the 512 latent values E4M3FN with an f32 scale per 128, the 64
    /// rotary values bf16. A latent cache's format: K and V are both
    /// `fp8_ds_mla`, head dims at most 576.
    Fp8DsMla 13 "fp8_ds_mla" crate::formats::BlockFp8DsMla, Row;
}

impl Dtype {
    /// The type whose [`Dtype::abi_code`] is `code`, if any.
    pub fn from_abi_code(code: i32) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.abi_code() == code)
    }

    /// The type named `name` ([`Dtype::name`]), if any.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Whether the type keeps one f32 scale per row of `head_dim` values
    /// (int8, fp8e4m3_row): `scales[o / head_dim]` for the value at
    /// offset `o`, every stride a multiple of the head dim.
    pub fn has_row_scales(self) -> bool {
        matches!(self.kind(), Kind::Int8 | Kind::Fp8Row)
    }

    /// Whether the type stores quantized values (with scales).
    pub fn is_quantized(self) -> bool {
        self.kind() != Kind::Float
    }

    /// The fp8 format of an fp8 type with per-head (or per-tensor)
    /// scales (`None` for [`Dtype::Fp8E4M3Row`], whose scales are per
    /// row).
    pub fn fp8(self) -> Option<Fp8> {
        match self {
            Dtype::Fp8E4M3 => Some(Fp8::E4M3),
            Dtype::Fp8E5M2 => Some(Fp8::E5M2),
            _ => None,
        }
    }

    /// Values per block every stride must be a multiple of: 32 for the
    /// GGUF block formats, 576 for `fp8_ds_mla` (a row), 1 for the others.
    pub fn block_len(self) -> usize {
        self.block().map_or(1, |b| b.len)
    }

    /// Whether a cache of this type may have head dim `d` (`d >= 1`): a
    /// multiple of [`Dtype::block_len`], or for a row format (`fp8_ds_mla`)
    /// at most its row (a head reads the leading `d` values of each row).
    pub fn fits_head_dim(self, d: usize) -> bool {
        match self.block() {
            Some(b) if self.is_row_format() => d <= b.len,
            _ => d.is_multiple_of(self.block_len()),
        }
    }

    /// Whether the type is a row format (`fp8_ds_mla`): one block a row,
    /// K and V in one latent row.
    pub fn is_row_format(self) -> bool {
        self.kind() == Kind::Row
    }

    /// Whether K of this type and V of type `v` may form a cache: any two
    /// types, but a row format only with itself.
    pub fn pairs_with(self, v: Dtype) -> bool {
        self == v || !(self.is_row_format() || v.is_row_format())
    }

    /// Why a head dim that [`Dtype::fits_head_dim`] refuses is refused
    /// (the error's reason).
    pub(crate) fn head_dim_rule(self) -> &'static str {
        match self {
            Dtype::Q8_0 => "q8_0 stores blocks of 32 values: the head dim must be a multiple of 32",
            Dtype::Fp8DsMla => "fp8_ds_mla rows hold 576 values: the head dim must be at most 576",
            _ => "block formats store blocks of 32 values: the head dim must be a multiple of 32",
        }
    }

    /// Bytes a step reads for one row of `head_dim` values: the values and
    /// the scales stored with them (int8 and fp8e4m3_row: one f32 per row; the block
    /// formats: their whole blocks; fp8's per-head scale is not counted).
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match (self, self.block()) {
            (_, Some(b)) => head_dim.div_ceil(b.len) * b.bytes,
            (Dtype::F32, _) => 4 * head_dim,
            (Dtype::F16 | Dtype::Bf16, _) => 2 * head_dim,
            (Dtype::Int8 | Dtype::Fp8E4M3Row, _) => head_dim + 4,
            _ => head_dim,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
