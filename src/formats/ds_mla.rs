//! The `fp8_ds_mla` format's storage: DeepSeek-V3.2's FP8 latent-cache row
//! (FlashMLA's FP8 KV cache, vLLM's and SGLang's `fp8_ds_mla`): one token's
//! 576-value MLA row in 656 bytes, the 512 latent values as fp8 E4M3FN with
//! an f32 scale per 128-value tile, the 64 rotary values in bf16.

use bytemuck::{Pod, Zeroable};

/// Values per [`BlockFp8DsMla`] row: the 512-value latent and 64 rotary
/// values (`head_dim_k` of DeepSeek-V2/V3 absorbed decode).
pub const DS_MLA_DIM: usize = 576;
/// The latent values (stored as fp8), the row's leading values.
pub const DS_MLA_LATENT: usize = 512;
/// Latent values per f32 scale.
pub const DS_MLA_TILE: usize = 128;

/// One token's latent row, bit-compatible with FlashMLA's FP8 KV cache
/// entry (656 bytes, 4-byte aligned, no padding): `codes[i]` is value `i <
/// 512` as E4M3FN, to be multiplied by `scales[i / 128]`; `rope[j]` is
/// value `512 + j` as bf16 bits. A host points at its cache's rows
/// ([`crate::Blocks::new`] with [`crate::Dtype::Fp8DsMla`]); the format
/// is read as both K (all 576 values) and V (the leading `head_dim_v <=
/// 576`, 512 in DeepSeek's models) of a latent cache
/// ([`crate::KvCache::latent`]).
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockFp8DsMla {
    /// The latent values, E4M3FN.
    pub codes: [u8; DS_MLA_LATENT],
    /// One scale per 128 latent values.
    pub scales: [f32; DS_MLA_LATENT / DS_MLA_TILE],
    /// The rotary values, bf16 bits.
    pub rope: [u16; DS_MLA_DIM - DS_MLA_LATENT],
}

impl Default for BlockFp8DsMla {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl super::block::BlockFormat for BlockFp8DsMla {
    const DTYPE: super::Dtype = super::Dtype::Fp8DsMla;
    const LEN: usize = DS_MLA_DIM;
    const LAYOUT: super::block::BlockLayout = super::block::BlockLayout {
        d: 0,
        m: None,
        qh: None,
        qs: 0,
        quants: super::block::Quants::E4M3Tiles {
            tile: DS_MLA_TILE,
            codes: DS_MLA_LATENT,
            scales: DS_MLA_LATENT,
            tail: DS_MLA_LATENT + 4 * (DS_MLA_LATENT / DS_MLA_TILE),
        },
    };

    /// Value `i`: the E4M3FN byte (decoded exactly, the `float8` crate's
    /// reading, as [`super::Fp8::decode`]) times its tile's scale, or the
    /// bf16 value.
    fn value(&self, i: usize) -> f64 {
        if i < DS_MLA_LATENT {
            let x = super::Fp8::E4M3.decode(self.codes[i]);
            f64::from(self.scales[i / DS_MLA_TILE]) * f64::from(x)
        } else {
            f64::from(half::bf16::from_bits(self.rope[i - DS_MLA_LATENT]))
        }
    }

    /// Each tile's scale `absmax / 448` (0 for an all-zero tile), each
    /// latent value `x / scale` encoded as E4M3FN (round to nearest even,
    /// saturating); the rotary values rounded to bf16 (nearest even).
    fn quantize(x: &[f32]) -> Self {
        let mut row = Self::zeroed();
        for (t, xs) in x[..DS_MLA_LATENT].chunks_exact(DS_MLA_TILE).enumerate() {
            let absmax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = absmax / super::Fp8::E4M3.max();
            row.scales[t] = scale;
            let codes = &mut row.codes[t * DS_MLA_TILE..(t + 1) * DS_MLA_TILE];
            for (c, &v) in codes.iter_mut().zip(xs) {
                *c = if scale == 0.0 {
                    0
                } else {
                    super::Fp8::E4M3.encode(v / scale)
                };
            }
        }
        for (r, &v) in row.rope.iter_mut().zip(&x[DS_MLA_LATENT..]) {
            *r = half::bf16::from_f32(v).to_bits();
        }
        row
    }
}
