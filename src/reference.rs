//! The scalar f64 reference: the oracle of every test.
//!
//! Written for obviousness, never optimised: for every sequence, query token
//! and query head it computes all scores in f64, takes their maximum, and
//! normalises in a second pass. It takes the same batch description as the
//! kernels ([`Batch`]: plain slices and strides) and shares no code with
//! the driver: it validates nothing the driver validates. Hand it inputs
//! the plan accepted (every test and fuzz target runs the plan first); it
//! reads them with bounds-checked indexing, so an input the driver wrongly
//! accepts (a row outside its buffer, a length past the query) panics here
//! instead of passing unseen. It checks only its own arguments
//! ([`Variant`]'s window, ALiBi and sink lengths, the scale).
//! Everything it computes is its own: where each row lives in its buffer
//! (`row_index`, from the layouts' definitions) and what each stored value
//! means (`value`, literal decoders of every format from its bits, checked
//! exhaustively against the `half` and `float8` crates below), so a bug in
//! the driver's walk or in the kernels' loads shows up as a difference.

// Index loops mirror the formulas; obviousness is the point of this file.
#![allow(clippy::needless_range_loop)]

use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::views::{Batch, KvCache, KvData, KvTensor};

/// Output of the reference: `out` as `[T, H, Dv]` and `lse` as `[T, H]`
/// (natural log; `-inf` for a row that sees no position), `T` the query
/// tokens of the batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// Attention output.
    pub out: Vec<f64>,
    /// Log-sum-exp of each row's scaled scores.
    pub lse: Vec<f64>,
}

/// Decodes one step over strided K/V views, `q_len` tokens per sequence.
/// `scale = None` means `1 / sqrt(Dk)`.
pub fn decode(
    shape: &Shape,
    scale: Option<f32>,
    q: &[f32],
    k: &KvTensor<'_>,
    v: &KvTensor<'_>,
    seq_lens: &[usize],
) -> Result<Reference> {
    decode_batch(shape, scale, &Batch::strided(q, *k, *v, seq_lens))
}

/// Index in its buffer of element 0 of the K (`v = false`) or V row of
/// position `j` of sequence `b`, KV head `g`: the layouts' definitions,
/// written out independently of the driver's walk.
fn row_index(cache: &KvCache<'_>, v: bool, b: usize, g: usize, j: usize) -> usize {
    match cache {
        KvCache::Strided { k: kt, v: vt } => {
            let t = if v { vt } else { kt };
            b * t.seq_stride + j * t.token_stride + g * t.head_stride
        }
        KvCache::Ring(r) => {
            let t = if v { &r.v } else { &r.k };
            let slot = (r.first_pos[b] + j) % r.capacity;
            b * t.seq_stride + slot * t.token_stride + g * t.head_stride
        }
        KvCache::Paged(p) => {
            let pool = if v { &p.v } else { &p.k };
            let page = p.block_table[b * p.blocks_per_seq + j / p.page_size] as usize;
            page * pool.page_stride + (j % p.page_size) * pool.token_stride + g * pool.head_stride
        }
    }
}

/// Decodes one step of any batch (any layout, ragged query tokens).
/// `scale = None` means `1 / sqrt(Dk)`.
pub fn decode_batch(shape: &Shape, scale: Option<f32>, batch: &Batch<'_>) -> Result<Reference> {
    decode_variant(
        shape,
        &Variant {
            scale,
            ..Variant::default()
        },
        batch,
    )
}

/// The attention variants the reference applies, each in its most literal
/// form (see [`decode_variant`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Variant<'a> {
    /// Score scale; `None` means `1 / sqrt(Dk)`.
    pub scale: Option<f32>,
    /// Sliding window `W`: the query at position `p` sees `p - W + 1 ..= p`.
    pub window: Option<usize>,
    /// Attention-sink logit per query head.
    pub sinks: Option<&'a [f32]>,
    /// Logit softcap `c`: each scaled score `s` becomes `c tanh(s / c)`.
    pub softcap: Option<f32>,
    /// ALiBi slope per query head: `slope_h (j - p)` is added after the
    /// softcap.
    pub alibi: Option<&'a [f32]>,
}

/// Decodes one step of any batch with attention variants: for the query at
/// position `p` (token `t` of `q_len_b` sits at `p = L_b - q_len_b + t`)
/// the visible positions are `j <= p`, and `j >= p - W + 1` with a window,
/// and with sparse position lists only the positions its (sequence's or
/// KV head's) list names, and with a tree mask, of the draft positions `j >= L_b - q_len_b`, those
/// whose bit `j - (L_b - q_len_b)` token `t`'s word sets; a softcap `c` maps each scaled score `s` to `c tanh(s / c)`, then ALiBi
/// adds `slope_h (j - p)` and the batch's bias its value; a sink
/// logit `z` adds `exp(z)` to the softmax denominator and nothing
/// to the numerator, so `lse = log(sum_j exp(s_j) + exp(z))`. A member
/// of a prefix group reads positions below the group's length from the
/// group's first member's rows.
///
/// One function of 150 lines on purpose: the oracle reads as the
/// definition above, top to bottom, one loop nest per output row, with no
/// helper whose correctness the reader must take on trust.
pub fn decode_variant(
    shape: &Shape,
    variant: &Variant<'_>,
    batch: &Batch<'_>,
) -> Result<Reference> {
    let scale = variant.scale;
    if variant.window == Some(0) {
        return Err(Error::InvalidDim {
            arg: "window",
            value: 0,
            reason: "a window holds at least the query's own position",
        });
    }
    if batch.cache.is_latent() && shape.head_dim_v > shape.head_dim_k {
        return Err(Error::InvalidDim {
            arg: "head_dim_v",
            value: shape.head_dim_v,
            reason: "a latent cache's V is the leading head_dim_v values of each K row",
        });
    }
    if let Some(a) = variant.alibi {
        if a.len() != shape.heads {
            return Err(Error::LengthMismatch {
                arg: "alibi_slopes",
                expected: shape.heads,
                actual: a.len(),
            });
        }
    }
    if let Some(s) = variant.sinks {
        if s.len() != shape.heads {
            return Err(Error::LengthMismatch {
                arg: "sinks",
                expected: shape.heads,
                actual: s.len(),
            });
        }
    }
    // Query tokens of the batch: the ragged offsets' end, else q_len each.
    let tokens = batch
        .q_offsets
        .map_or(shape.batch * shape.q_len, |o| o[shape.batch]);
    let scale = match scale {
        None => 1.0 / (shape.head_dim_k as f64).sqrt(),
        Some(s) if s.is_finite() && s > 0.0 => f64::from(s),
        Some(s) => return Err(Error::InvalidScale { value: s }),
    };
    let (h_count, g_count) = (shape.heads, shape.kv_heads);
    let r = h_count / g_count;
    let (dk, dv) = (shape.head_dim_k, shape.head_dim_v);
    let mut out = vec![0.0; tokens * h_count * dv];
    let mut lse = vec![f64::NEG_INFINITY; tokens * h_count];
    let (kdata, vdata) = match &batch.cache {
        KvCache::Strided { k, v } => (k.data, v.data),
        KvCache::Ring(rg) => (rg.k.data, rg.v.data),
        KvCache::Paged(p) => (p.k.data, p.v.data),
    };
    let q = batch.q;

    for b in 0..shape.batch {
        let len = batch.seq_lens[b];
        let (q_len, tok0) = match batch.q_offsets {
            Some(o) => (o[b + 1] - o[b], o[b]),
            None => (shape.q_len, b * shape.q_len),
        };
        for t in 0..q_len {
            // Causal, bottom-right aligned: token t sees j <= len - q_len + t.
            let visible = (len + t + 1).saturating_sub(q_len).min(len);
            // With a window W, also j >= p - W + 1 where p = visible - 1.
            let first = match variant.window {
                Some(w) => visible.saturating_sub(w),
                None => 0,
            };
            // A tree mask: among the draft tokens (the last q_len
            // positions) token t sees those whose bits its word sets.
            let seen: Vec<usize> = (first..visible)
                .filter(|&j| match batch.tree_mask {
                    Some(tree) if j + q_len >= len => tree[tok0 + t] >> (j + q_len - len) & 1 == 1,
                    _ => true,
                })
                .collect();
            if seen.is_empty() {
                // No visible position: zeros, and lse = -inf (or the
                // sink's logit).
                for h in 0..h_count {
                    let row = (tok0 + t) * h_count + h;
                    lse[row] = variant.sinks.map_or(f64::NEG_INFINITY, |s| {
                        f64::from(s[h].max(crate::shape::LOGIT_FLOOR))
                    });
                }
                continue;
            }
            for g in 0..g_count {
                // Sparse lists: only the positions KV head g's list names.
                let seen: Vec<usize> = match &batch.positions {
                    Some(p) => {
                        let i = if p.per_kv_head { b * g_count + g } else { b };
                        let list = &p.positions[p.offsets[i]..p.offsets[i + 1]];
                        seen.iter()
                            .copied()
                            .filter(|&j| list.contains(&(j as u32)))
                            .collect()
                    }
                    None => seen.clone(),
                };
                // The visible K and V rows of KV head g, dequantized once
                // for the r query heads that share them.
                let rows = |is_v: bool, d_count: usize, data: &KvData<'_>| -> Vec<f64> {
                    seen.iter()
                        .flat_map(|&j| {
                            // A shared prefix's positions are the group's
                            // first member's rows.
                            let src = batch
                                .prefix
                                .and_then(|pg| {
                                    let c = pg.members.iter().position(|&m| m == b)?;
                                    let grp = (0..pg.lens.len())
                                        .find(|&p| pg.offsets[p] <= c && c < pg.offsets[p + 1])?;
                                    (j < pg.lens[grp]).then(|| pg.members[pg.offsets[grp]])
                                })
                                .unwrap_or(b);
                            let base = row_index(&batch.cache, is_v, src, g, j);
                            (0..d_count).map(move |d| value(data, base + d, g, d_count))
                        })
                        .collect()
                };
                let krows = rows(false, dk, &kdata);
                // A latent cache: V is the leading dv values of each K row.
                let vrows = if batch.cache.is_latent() {
                    krows.chunks(dk).flat_map(|k| k[..dv].to_vec()).collect()
                } else {
                    rows(true, dv, &vdata)
                };
                for h in g * r..(g + 1) * r {
                    let row = (tok0 + t) * h_count + h;
                    let qrow = &q[row * dk..(row + 1) * dk];
                    let sink = variant
                        .sinks
                        .map(|s| f64::from(s[h].max(crate::shape::LOGIT_FLOOR)));
                    let mut scores = Vec::with_capacity(seen.len());
                    for (&j, krow) in seen.iter().zip(krows.chunks(dk)) {
                        let mut dot = 0.0f64;
                        for d in 0..dk {
                            dot += f64::from(qrow[d]) * krow[d];
                        }
                        let s = scale * dot;
                        let s = match variant.softcap {
                            Some(c) => f64::from(c) * (s / f64::from(c)).tanh(),
                            None => s,
                        };
                        // The query sits at position p = visible - 1.
                        let bias = variant.alibi.map_or(0.0, |al| {
                            f64::from(al[h]) * (j as f64 - (visible - 1) as f64)
                        });
                        let add = batch.bias.map_or(0.0, |bi| {
                            f64::from(
                                bi.data[b * bi.seq_stride
                                    + t * bi.token_stride
                                    + h * bi.head_stride
                                    + j],
                            )
                        });
                        // The logit floor: a finite bias below it counts
                        // as the floor; -inf masks.
                        let add = if add == f64::NEG_INFINITY {
                            add
                        } else {
                            add.max(f64::from(crate::shape::LOGIT_FLOOR))
                        };
                        scores.push(s + bias + add);
                    }
                    // A NaN score (NaN in the cache rows or the query)
                    // makes the row NaN: `f64::max` alone would drop it,
                    // and beside -inf-masked positions call the row fully
                    // masked (zeros), hiding the NaN from the callers
                    // that skip NaN inputs.
                    let m = scores
                        .iter()
                        .cloned()
                        .chain(sink)
                        .fold(f64::NEG_INFINITY, |a, b| {
                            if a.is_nan() || b.is_nan() {
                                f64::NAN
                            } else {
                                a.max(b)
                            }
                        });
                    if m == f64::NEG_INFINITY {
                        // Every visible position masked by -inf and no
                        // sink: zeros and lse = -inf, as with no position.
                        continue;
                    }
                    let weights: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let l: f64 = weights.iter().sum::<f64>() + sink.map_or(0.0, |z| (z - m).exp());
                    let o = &mut out[row * dv..(row + 1) * dv];
                    for (w, vrow) in weights.iter().zip(vrows.chunks(dv)) {
                        for d in 0..dv {
                            o[d] += w * vrow[d];
                        }
                    }
                    for x in o.iter_mut() {
                        *x /= l;
                    }
                    lse[row] = m + l.ln();
                }
            }
        }
    }
    Ok(Reference { out, lse })
}

/// Value `i` of a K or V buffer (`head_dim` values per row, KV head `g`),
/// decoded literally from the format's definition: int8 times its row's
/// scale (one per `head_dim` values), a q8_0 block's f16 scale times its
/// value, fp8 times the KV head's scale (or the tensor's single one), or
/// for fp8e4m3_row times its row's scale (as int8's), the
/// other block formats by their format file's literal decoder.
fn value(data: &KvData<'_>, i: usize, g: usize, head_dim: usize) -> f64 {
    let head_scale = |scales: &[f32]| f64::from(scales[if scales.len() == 1 { 0 } else { g }]);
    match data {
        KvData::F32(s) => f64::from(s[i]),
        KvData::F16(s) => binary16(s[i].to_bits()),
        KvData::Bf16(s) => bfloat16(s[i].to_bits()),
        KvData::Int8 { values, scales } => f64::from(scales[i / head_dim]) * f64::from(values[i]),
        KvData::Q8_0(blocks) => {
            let blk = &blocks[i / 32];
            binary16(blk.d.to_bits()) * f64::from(blk.qs[i % 32])
        }
        KvData::Fp8E4M3 { values, scales } => head_scale(scales) * e4m3fn(values[i]),
        KvData::Fp8E5M2 { values, scales } => head_scale(scales) * e5m2(values[i]),
        KvData::Fp8E4M3Row { values, scales } => {
            f64::from(scales[i / head_dim]) * e4m3fn(values[i])
        }
        // The format file's literal decoder (`BlockFormat::value`), which
        // reads the block's fields by name; the kernels read it through
        // its layout description instead.
        KvData::Blocks(b) => b.value(i),
    }
}

/// A float of `e_bits` exponent and `m_bits` mantissa bits with IEEE 754
/// rules (bias `2^(e_bits-1) - 1`, subnormals at exponent 0, infinities
/// and NaN at the all-ones exponent), from its bits.
fn ieee(bits: u32, e_bits: u32, m_bits: u32) -> f64 {
    let sign = if bits >> (e_bits + m_bits) & 1 == 1 {
        -1.0
    } else {
        1.0
    };
    let e = (bits >> m_bits) & ((1 << e_bits) - 1);
    let m = f64::from(bits & ((1 << m_bits) - 1));
    let bias = (1i32 << (e_bits - 1)) - 1;
    let frac = m / f64::from(1u32 << m_bits);
    if e == 0 {
        sign * frac * 2f64.powi(1 - bias)
    } else if e == (1 << e_bits) - 1 {
        if m == 0.0 {
            sign * f64::INFINITY
        } else {
            f64::NAN
        }
    } else {
        sign * (1.0 + frac) * 2f64.powi(e as i32 - bias)
    }
}

/// IEEE 754 binary16 (f16).
fn binary16(bits: u16) -> f64 {
    ieee(u32::from(bits), 5, 10)
}

/// bfloat16: the top half of a binary32.
fn bfloat16(bits: u16) -> f64 {
    ieee(u32::from(bits), 8, 7)
}

/// OCP fp8 E5M2: IEEE rules with 5 exponent and 2 mantissa bits.
fn e5m2(bits: u8) -> f64 {
    ieee(u32::from(bits), 5, 2)
}

/// OCP fp8 E4M3FN: bias 7, subnormals at exponent 0, no infinities; only
/// `S.1111.111` is NaN, so the all-ones exponent holds values up to 448.
fn e4m3fn(bits: u8) -> f64 {
    let sign = if bits >> 7 == 1 { -1.0 } else { 1.0 };
    let (e, m) = (i32::from((bits >> 3) & 15), f64::from(bits & 7));
    if e == 15 && m == 7.0 {
        f64::NAN
    } else if e == 0 {
        sign * m / 8.0 * 2f64.powi(-6)
    } else {
        sign * (1.0 + m / 8.0) * 2f64.powi(e - 7)
    }
}

/// `|got - want| <= atol + rtol * |want|`, elementwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute part, in units of the largest `|V|` element of the case for
    /// outputs, absolute for `lse`.
    pub atol: f64,
    /// Relative part.
    pub rtol: f64,
}

impl Tolerance {
    /// Whether `got` is within tolerance of `want` (`scale` multiplies
    /// `atol`: the largest `|V|` for outputs, 1 for `lse`). Infinities must
    /// match exactly; NaN never passes.
    pub fn accepts(&self, got: f64, want: f64, scale: f64) -> bool {
        if want.is_infinite() || got.is_infinite() {
            return got == want;
        }
        (got - want).abs() <= self.atol * scale + self.rtol * want.abs()
    }
}

/// The one tolerance policy every tier is tested against, for outputs and
/// for `lse`, per (K dtype, V dtype).
///
/// Every kernel widens K and V elements exactly (f16 and bf16 are subsets of
/// f32) and the reference reads the same widened values, so the stored
/// dtype adds no error: what remains is f32 arithmetic (dot products of up
/// to `Dk` terms, the `exp2` approximation at ≤ 2 ulp, sums over `L`
/// weights). The bound is tight enough to catch one missed or extra
/// position in thousands, a wrong tail lane or a wrong scale.
///
/// The quantized types get the same bound, and for the same reason: the
/// reference dequantizes the very bytes the kernel reads, with the literal
/// decoders of [`crate::quant`] in f64, so the quantization error itself
/// is not part of the comparison (it is bounded per type in
/// [`crate::quant`] and tested there). What the kernels add is one f32
/// rounding of each dequantized value or scale product: int8 scales
/// multiply the score and the softmax weight once per position, q8_0 block
/// scales multiply the widened values, and the fp8 per-head scales (times
/// 2^8 for E4M3, and 2^8 alone for fp8e4m3_row, whose row scales are
/// applied as int8's) are folded into the query and the output, each a relative
/// error of 2^-24, far inside `rtol`.
pub fn tolerance(k: crate::Dtype, v: crate::Dtype) -> (Tolerance, Tolerance) {
    // One bound for every pair, plain or quantized (see above).
    let _ = (k, v);
    (
        Tolerance {
            atol: 2e-5,
            rtol: 1e-4,
        },
        Tolerance {
            atol: 2e-5,
            rtol: 2e-5,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same value, or both NaN.
    fn same(a: f64, b: f64) -> bool {
        a == b || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn literal_decoders_agree_with_the_crates_on_every_bit_pattern() {
        for b in 0..=u16::MAX {
            let want = f64::from(half::f16::from_bits(b));
            assert!(same(binary16(b), want), "f16 {b:#06x}");
            let want = f64::from(half::bf16::from_bits(b));
            assert!(same(bfloat16(b), want), "bf16 {b:#06x}");
        }
        for b in 0..=u8::MAX {
            let want = f64::from(float8::F8E4M3::from_bits(b).to_f32());
            assert!(same(e4m3fn(b), want), "e4m3 {b:#04x}");
            let want = f64::from(float8::F8E5M2::from_bits(b).to_f32());
            assert!(same(e5m2(b), want), "e5m2 {b:#04x}");
        }
        // Landmarks, so a shared misreading of a format would show too.
        assert_eq!(binary16(0x3c00), 1.0);
        assert_eq!(binary16(0x7bff), 65504.0);
        assert_eq!(binary16(0x0001), 2f64.powi(-24));
        assert_eq!(bfloat16(0x3f80), 1.0);
        assert_eq!(e4m3fn(0x7e), 448.0);
        assert_eq!(e4m3fn(0x01), 2f64.powi(-9));
        assert_eq!(e5m2(0x7b), 57344.0);
        assert_eq!(e5m2(0x7c), f64::INFINITY);
        assert!(e4m3fn(0xff).is_nan() && e4m3fn(0x7f).is_nan());
    }

    #[test]
    fn quantized_values_carry_their_scales() {
        let (values, scales) = ([3i8, -4, 5, 6], [0.5f32, 2.0]);
        let d = KvData::Int8 {
            values: &values,
            scales: &scales,
        };
        let got: Vec<f64> = (0..4).map(|i| value(&d, i, 0, 2)).collect();
        assert_eq!(got, [1.5, -2.0, 10.0, 12.0]);
        let bytes = [0x38u8, 0xb8];
        let scales = [2.0f32, 3.0];
        let d = KvData::Fp8E4M3 {
            values: &bytes,
            scales: &scales,
        };
        // 0x38 is 1.0, 0xb8 is -1.0; head 1 takes the second scale.
        assert_eq!(value(&d, 0, 1, 2), 3.0);
        assert_eq!(value(&d, 1, 0, 2), -2.0);
        // fp8e4m3_row: row `i / head_dim`'s scale, whatever the head.
        let bytes = [0x38u8, 0xb8, 0x40, 0x7e];
        let d = KvData::Fp8E4M3Row {
            values: &bytes,
            scales: &scales,
        };
        // 0x40 is 2.0, 0x7e is 448.
        let got: Vec<f64> = (0..4).map(|i| value(&d, i, 0, 2)).collect();
        assert_eq!(got, [2.0, -2.0, 6.0, 1344.0]);
        let blk = crate::quant::BlockQ8_0 {
            d: half::f16::from_f32(0.25),
            qs: core::array::from_fn(|i| i as i8 - 16),
        };
        let blocks = [blk, blk];
        let d = KvData::Q8_0(&blocks);
        assert_eq!(value(&d, 0, 0, 64), -4.0);
        assert_eq!(value(&d, 32 + 20, 0, 64), 1.0);
    }
}
