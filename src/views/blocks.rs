//! [`Blocks`]: a borrowed buffer of one block format's blocks, as bytes
//! (what a host pointing at llama.cpp's cache holds).

use crate::formats::{BlockFormat, Dtype};

/// A borrowed buffer of blocks of one block format ([`Dtype::block`]),
/// as their bytes: whole blocks, any alignment. Made from typed blocks
/// ([`Blocks::of`]) or from bytes and a dtype ([`Blocks::new`], what a
/// host pointing at llama.cpp's cache holds).
#[derive(Clone, Copy, Debug)]
pub struct Blocks<'a> {
    pub(super) dtype: Dtype,
    pub(super) bytes: &'a [u8],
}

impl<'a> Blocks<'a> {
    /// The blocks of `blocks`.
    pub fn of<B: BlockFormat>(blocks: &'a [B]) -> Self {
        Blocks {
            dtype: B::DTYPE,
            bytes: bytemuck::cast_slice(blocks),
        }
    }

    /// `bytes` read as blocks of `dtype`. Errors: `dtype` is not a block
    /// format (`UnsupportedDtype`), or `bytes` is not a whole number of
    /// its blocks (`InvalidDim` naming `bytes`).
    pub fn new(dtype: Dtype, bytes: &'a [u8]) -> crate::Result<Self> {
        whole_blocks(dtype, bytes.len())?;
        Ok(Blocks { dtype, bytes })
    }

    /// The format.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The blocks' bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Number of values (32 per block; 576 per `fp8_ds_mla` row).
    pub fn len(&self) -> usize {
        self.bytes.len() / self.block_bytes() * self.block_len()
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(super) fn block_bytes(&self) -> usize {
        self.dtype.block().map_or(1, |b| b.bytes)
    }

    /// Values per block ([`Dtype::block_len`]).
    pub(super) fn block_len(&self) -> usize {
        self.dtype.block_len()
    }

    /// Value `i`, decoded by the format's literal decoder
    /// ([`BlockFormat::value`]). Panics when out of range.
    pub fn value(&self, i: usize) -> f64 {
        let info = self.dtype.block().expect("a block format");
        let b = i / info.len * info.bytes;
        (info.value)(&self.bytes[b..b + info.bytes], i % info.len)
    }
}

/// Checks that `len` bytes are whole blocks of `dtype`, a block format.
pub(crate) fn whole_blocks(dtype: Dtype, len: usize) -> crate::Result<()> {
    let Some(info) = dtype.block() else {
        return Err(crate::Error::UnsupportedDtype {
            arg: "dtype",
            dtype,
            reason: "a block format (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, fp8_ds_mla)",
        });
    };
    if !len.is_multiple_of(info.bytes) {
        return Err(crate::Error::InvalidDim {
            arg: "bytes",
            value: len,
            reason: "not a whole number of blocks of the format",
        });
    }
    Ok(())
}
