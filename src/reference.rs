//! The scalar f64 reference: the oracle of every test.
//!
//! Written for obviousness, never optimised: for every sequence, query token
//! and query head it computes all scores in f64, takes their maximum, and
//! normalises in a second pass. It reads elements through the same strided
//! views as the kernels ([`KvTensor`]) and validates its arguments the same
//! way, so a test can hand both the same inputs.

// Index loops mirror the formulas; obviousness is the point of this file.
#![allow(clippy::needless_range_loop)]

use crate::error::{Error, Result};
use crate::plan::{check_batch, Shape};
use crate::types::{Batch, KvCache, KvData, KvTensor};

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
/// the visible positions are `j <= p`, and `j >= p - W + 1` with a window;
/// a softcap `c` maps each scaled score `s` to `c tanh(s / c)`, then ALiBi
/// adds `slope_h (j - p)` and the batch's bias its value; a sink
/// logit `z` adds `exp(z)` to the softmax denominator and nothing
/// to the numerator, so `lse = log(sum_j exp(s_j) + exp(z))`.
pub fn decode_variant(
    shape: &Shape,
    variant: &Variant<'_>,
    batch: &Batch<'_>,
) -> Result<Reference> {
    let scale = variant.scale;
    shape.validate()?;
    if variant.window == Some(0) {
        return Err(Error::InvalidDim {
            arg: "window",
            value: 0,
            reason: "a window holds at least the query's own position",
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
    let tokens = check_batch(shape, batch, None, None)?;
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
            if visible == first {
                // No visible position: zeros, and lse = -inf (or the
                // sink's logit).
                for h in 0..h_count {
                    let row = (tok0 + t) * h_count + h;
                    lse[row] = variant.sinks.map_or(f64::NEG_INFINITY, |s| {
                        f64::from(s[h].max(crate::plan::LOGIT_FLOOR))
                    });
                }
                continue;
            }
            for g in 0..g_count {
                // The visible K and V rows of KV head g, dequantized once
                // for the r query heads that share them.
                let rows = |is_v: bool, d_count: usize, data: &KvData<'_>| -> Vec<f64> {
                    (first..visible)
                        .flat_map(|j| {
                            let base = row_index(&batch.cache, is_v, b, g, j);
                            (0..d_count).map(move |d| data.value_f64(base + d, g, d_count))
                        })
                        .collect()
                };
                let krows = rows(false, dk, &kdata);
                let vrows = rows(true, dv, &vdata);
                for h in g * r..(g + 1) * r {
                    let row = (tok0 + t) * h_count + h;
                    let qrow = &q[row * dk..(row + 1) * dk];
                    let sink = variant
                        .sinks
                        .map(|s| f64::from(s[h].max(crate::plan::LOGIT_FLOOR)));
                    let mut scores = Vec::with_capacity(visible - first);
                    for (jj, krow) in krows.chunks(dk).enumerate() {
                        let j = first + jj;
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
                            add.max(f64::from(crate::plan::LOGIT_FLOOR))
                        };
                        scores.push(s + bias + add);
                    }
                    let m = scores
                        .iter()
                        .cloned()
                        .chain(sink)
                        .fold(f64::NEG_INFINITY, f64::max);
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
/// 2^8 for E4M3) are folded into the query and the output, each a relative
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
