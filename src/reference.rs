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
use crate::plan::{check_run_args, Shape};
use crate::types::KvTensor;

/// Output of the reference: `out` as `[B, q_len, H, Dv]` and `lse` as
/// `[B, q_len, H]` (natural log; `-inf` for a row that sees no position).
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// Attention output.
    pub out: Vec<f64>,
    /// Log-sum-exp of each row's scaled scores.
    pub lse: Vec<f64>,
}

/// Decodes one step in f64. `scale = None` means `1 / sqrt(Dk)`.
pub fn decode(
    shape: &Shape,
    scale: Option<f32>,
    q: &[f32],
    k: &KvTensor<'_>,
    v: &KvTensor<'_>,
    seq_lens: &[usize],
) -> Result<Reference> {
    shape.validate()?;
    check_run_args(shape, q, k, v, seq_lens, shape.out_elems(), None)?;
    let scale = match scale {
        None => 1.0 / (shape.head_dim_k as f64).sqrt(),
        Some(s) if s.is_finite() && s > 0.0 => f64::from(s),
        Some(s) => return Err(Error::InvalidScale { value: s }),
    };
    let (h_count, g_count) = (shape.heads, shape.kv_heads);
    let r = h_count / g_count;
    let (dk, dv) = (shape.head_dim_k, shape.head_dim_v);
    let mut out = vec![0.0; shape.out_elems()];
    let mut lse = vec![f64::NEG_INFINITY; shape.lse_elems()];

    for b in 0..shape.batch {
        let len = seq_lens[b];
        for t in 0..shape.q_len {
            // Causal, bottom-right aligned: token t sees j <= len - q_len + t.
            let visible = (len + t + 1).saturating_sub(shape.q_len).min(len);
            for h in 0..h_count {
                let g = h / r;
                let row = (b * shape.q_len + t) * h_count + h;
                let qrow = &q[row * dk..(row + 1) * dk];
                if visible == 0 {
                    continue; // zeros and -inf
                }
                let kbase = b * k.seq_stride + g * k.head_stride;
                let vbase = b * v.seq_stride + g * v.head_stride;

                let mut scores = Vec::with_capacity(visible);
                for j in 0..visible {
                    let mut dot = 0.0f64;
                    for d in 0..dk {
                        dot += f64::from(qrow[d]) * k.data.get_f64(kbase + j * k.token_stride + d);
                    }
                    scores.push(scale * dot);
                }
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let l: f64 = weights.iter().sum();
                let o = &mut out[row * dv..(row + 1) * dv];
                for (j, w) in weights.iter().enumerate() {
                    for d in 0..dv {
                        o[d] += w * v.data.get_f64(vbase + j * v.token_stride + d);
                    }
                }
                for x in o.iter_mut() {
                    *x /= l;
                }
                lse[row] = m + l.ln();
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
/// weights). The same bound therefore holds for every dtype pair; the
/// function exists so that a lossy type (a later quantized cache) gets its
/// own row here. The bound is tight enough to catch one missed or extra
/// position in thousands, a wrong tail lane or a wrong scale.
pub fn tolerance(k: crate::Dtype, v: crate::Dtype) -> (Tolerance, Tolerance) {
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
