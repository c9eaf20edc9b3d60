//! How hosts map onto this library: ONNX Runtime's `GroupQueryAttention`,
//! llama.cpp's `ggml_flash_attn_ext` and Hugging Face attention, each
//! convention of the README's table ("Coming from ONNX Runtime, llama.cpp
//! or Hugging Face") as a test. Every test writes the host's semantics as
//! a plain f64 attention (`host_attention`, independent of the crate's
//! reference) over the host's own inputs, maps those inputs to this
//! library the way the table says, runs every tier and compares.

mod common;

use common::{tiers, Rng};
use gqa_kernels::reference::tolerance;
use gqa_kernels::{Batch, Bias, Dtype, KvData, KvTensor, Options, Plan, Shape, Tier};

/// One problem: `q` is `[B·q_len, H, D]`, K and V are `[B, L, G, D]` f32
/// (token-major, as ggml's cache; strides map any other layout).
struct Problem {
    b: usize,
    h: usize,
    g: usize,
    d: usize,
    max_len: usize,
    lens: Vec<usize>,
    q_len: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Problem {
    fn new(b: usize, h: usize, g: usize, d: usize, lens: Vec<usize>, q_len: usize) -> Problem {
        let mut rng = Rng(h as u64 * 131 + d as u64);
        let max_len = lens.iter().copied().max().unwrap();
        let mut vals = |n: usize| (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect::<Vec<f32>>();
        let q = vals(b * q_len * h * d);
        let k = vals(b * max_len * g * d);
        let v = vals(b * max_len * g * d);
        Problem {
            b,
            h,
            g,
            d,
            max_len,
            lens,
            q_len,
            q,
            k,
            v,
        }
    }

    /// The host's attention in f64: query token `t` of sequence `b` sits at
    /// `p = L_b - q_len + t` and sees `j <= p`; `term(b, t, h, p, j)` is the
    /// additive logit term (`-inf`: masked); head `h` reads KV head
    /// `h / (H / G)`; `softcap` maps the scaled score `s` to
    /// `c·tanh(s / c)` before the term; `sink` adds `exp(z_h)` to the
    /// denominator. A row with nothing visible outputs zeros.
    fn host_attention(
        &self,
        scale: f64,
        softcap: Option<f64>,
        sink: Option<&[f32]>,
        term: impl Fn(usize, usize, usize, usize, usize) -> f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let (h_n, d) = (self.h, self.d);
        let r = h_n / self.g;
        let mut out = vec![0.0; self.b * self.q_len * h_n * d];
        let mut lse = vec![f64::NEG_INFINITY; self.b * self.q_len * h_n];
        for b in 0..self.b {
            let len = self.lens[b];
            for t in 0..self.q_len {
                let p = len - self.q_len + t;
                for h in 0..h_n {
                    let row = (b * self.q_len + t) * h_n + h;
                    let kv = h / r;
                    let at = |buf: &[f32], j: usize, e: usize| {
                        f64::from(buf[((b * self.max_len + j) * self.g + kv) * d + e])
                    };
                    let scores: Vec<f64> = (0..=p)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|e| f64::from(self.q[row * d + e]) * at(&self.k, j, e))
                                .sum();
                            let s = scale * dot;
                            let s = softcap.map_or(s, |c| c * (s / c).tanh());
                            s + term(b, t, h, p, j)
                        })
                        .collect();
                    let z = sink.map(|z| f64::from(z[h]));
                    let m = scores
                        .iter()
                        .cloned()
                        .chain(z)
                        .fold(f64::NEG_INFINITY, f64::max);
                    if m == f64::NEG_INFINITY {
                        continue;
                    }
                    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let l = w.iter().sum::<f64>() + z.map_or(0.0, |z| (z - m).exp());
                    for (j, wj) in w.iter().enumerate() {
                        for e in 0..d {
                            out[row * d + e] += wj * at(&self.v, j, e) / l;
                        }
                    }
                    lse[row] = m + l.ln();
                }
            }
        }
        (out, lse)
    }

    fn shape(&self) -> Shape {
        Shape::new(self.b, self.h, self.g, self.d, Dtype::F32).with_q_len(self.q_len)
    }

    /// Runs the mapped problem on `tier`: `seq_lens`, the plan's options
    /// and optional sinks / ALiBi / bias.
    fn run(
        &self,
        tier: Tier,
        seq_lens: &[usize],
        opts: Options,
        sinks: Option<&[f32]>,
        alibi_max_bias: Option<f32>,
        bias: Option<Bias<'_>>,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut plan = Plan::new(
            &self.shape(),
            &Options {
                tier: Some(tier),
                ..opts
            },
        )
        .unwrap();
        if let Some(z) = sinks {
            plan = plan.with_sinks(z).unwrap();
        }
        if let Some(mb) = alibi_max_bias {
            plan = plan.with_alibi_max_bias(mb).unwrap();
        }
        let (g, d) = (self.g, self.d);
        let kt = KvTensor::new(KvData::F32(&self.k), self.max_len * g * d, g * d, d);
        let vt = KvTensor::new(KvData::F32(&self.v), self.max_len * g * d, g * d, d);
        let mut batch = Batch::strided(&self.q, kt, vt, seq_lens);
        if let Some(bias) = bias {
            batch = batch.with_bias(bias);
        }
        let rows = self.b * self.q_len * self.h;
        let mut out = vec![f32::NAN; rows * d];
        let mut lse = vec![f32::NAN; rows];
        plan.run(
            &batch,
            &mut out,
            Some(&mut lse),
            &mut plan.alloc_workspace(),
        )
        .unwrap();
        (out, lse)
    }

    /// Compares every tier's run with the host's semantics.
    fn check(
        &self,
        what: &str,
        want: &(Vec<f64>, Vec<f64>),
        run: impl Fn(Tier) -> (Vec<f32>, Vec<f32>),
    ) {
        let (to, tl) = tolerance(Dtype::F32, Dtype::F32);
        let vmax = self.v.iter().fold(0.0f64, |m, x| m.max(f64::from(x.abs())));
        for tier in tiers() {
            let (out, lse) = run(tier);
            for (i, (g, w)) in out.iter().zip(&want.0).enumerate() {
                assert!(
                    to.accepts(f64::from(*g), *w, vmax),
                    "{what}, {tier}: out[{i}] = {g}, host {w}"
                );
            }
            for (i, (g, w)) in lse.iter().zip(&want.1).enumerate() {
                assert!(
                    tl.accepts(f64::from(*g), *w, 1.0),
                    "{what}, {tier}: lse[{i}] = {g}, host {w}"
                );
            }
        }
    }
}

fn default_scale(d: usize) -> f64 {
    1.0 / (d as f64).sqrt()
}

/// ONNX Runtime: `seqlens_k[b]` is the total length minus one, so
/// `seq_lens[b] = seqlens_k[b] + 1`; `local_window_size = w` is our
/// `window = w` from ONNX Runtime 1.24 on (the query sees `j > p - w`) and
/// `window = w + 1` up to 1.23 (it saw `j >= p - w`).
#[test]
fn ort_seqlens_k_and_local_window_size() {
    let pr = Problem::new(2, 8, 2, 16, vec![90, 41], 2);
    let seqlens_k: Vec<usize> = vec![89, 40];
    let seq_lens: Vec<usize> = seqlens_k.iter().map(|s| s + 1).collect();
    let scale = default_scale(pr.d);
    // No window: every position up to the query.
    let want = pr.host_attention(scale, None, None, |_, _, _, _, _| 0.0);
    pr.check("seqlens_k + 1", &want, |t| {
        pr.run(t, &seq_lens, Options::default(), None, None, None)
    });
    let w = 17;
    let ort_124 = pr.host_attention(scale, None, None, |_, _, _, p, j| {
        if j + w > p {
            0.0
        } else {
            f64::NEG_INFINITY
        }
    });
    pr.check("local_window_size (1.24)", &ort_124, |t| {
        let o = Options {
            window: Some(w),
            ..Options::default()
        };
        pr.run(t, &seq_lens, o, None, None, None)
    });
    let ort_123 = pr.host_attention(scale, None, None, |_, _, _, p, j| {
        if j + w >= p {
            0.0
        } else {
            f64::NEG_INFINITY
        }
    });
    pr.check("local_window_size (1.23)", &ort_123, |t| {
        let o = Options {
            window: Some(w + 1),
            ..Options::default()
        };
        pr.run(t, &seq_lens, o, None, None, None)
    });
}

/// ONNX Runtime: `smooth_softmax = 1` adds `exp(0)` to the softmax
/// denominator: a sink logit of 0 for every head; `softcap = c` is our
/// softcap; `attention_bias` `[B or 1, H or 1, S, T]` is our bias with
/// `seq_stride = H·S·T` (0 when broadcast), `head_stride = S·T` (0 when
/// broadcast) and `token_stride = T`.
#[test]
fn ort_smooth_softmax_softcap_and_attention_bias() {
    let (s_len, h) = (3, 8);
    let pr = Problem::new(2, h, 4, 24, vec![60, 33], s_len);
    let t_len = pr.max_len;
    let scale = default_scale(pr.d);
    let mut rng = Rng(5);
    // [B, H, S, T] and the broadcast [1, 1, S, T].
    let full: Vec<f32> = (0..2 * h * s_len * t_len)
        .map(|_| rng.uniform(-2.0, 2.0))
        .collect();
    let bcast: Vec<f32> = (0..s_len * t_len).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let zeros = vec![0.0f32; h];
    for (name, data, ss, hs) in [
        ("[B, H, S, T]", &full, h * s_len * t_len, s_len * t_len),
        ("[1, 1, S, T]", &bcast, 0, 0),
    ] {
        let want = pr.host_attention(scale, Some(30.0), Some(&zeros), |b, t, hh, _, j| {
            f64::from(data[b * ss + hh * hs + t * t_len + j])
        });
        pr.check(name, &want, |tier| {
            let o = Options {
                softcap: Some(30.0),
                ..Options::default()
            };
            let bias = Bias {
                data,
                seq_stride: ss,
                token_stride: t_len,
                head_stride: hs,
            };
            pr.run(tier, &pr.lens, o, Some(&zeros), None, Some(bias))
        });
    }
}

/// ONNX Runtime (fp16) returns NaN for a row whose every visible position
/// the bias masks with `-inf`; here such a row is zeros with `lse = -inf`.
#[test]
fn ort_fully_masked_row_is_zeros_here() {
    let pr = Problem::new(1, 4, 2, 8, vec![20], 1);
    let mask = vec![f32::NEG_INFINITY; 4 * 20];
    for tier in tiers() {
        let bias = Bias {
            data: &mask,
            seq_stride: 0,
            token_stride: 0,
            head_stride: 20,
        };
        let (out, lse) = pr.run(tier, &pr.lens, Options::default(), None, None, Some(bias));
        assert!(out.iter().all(|&x| x == 0.0), "{tier}");
        assert!(lse.iter().all(|&x| x == f32::NEG_INFINITY), "{tier}");
    }
}

/// llama.cpp (`ggml_flash_attn_ext`): the KQ mask is `[n_kv, n_tokens]`
/// (f16, `-inf` where masked) shared by every head: our bias with
/// `head_stride = 0`, `token_stride = n_kv` (converted to f32); query head
/// `h` reads KV head `h / (H / G)`; the token-major cache `[n_kv, G, D]` is
/// `[B, L, G, D]`; `logit_softcap` is our softcap; `max_bias` is
/// `Plan::with_alibi_max_bias` (the same slopes), whose positional term
/// llama.cpp writes into the mask as `-|p - j|` and ggml multiplies by the
/// slope: here the mask keeps only its `-inf` entries and the plan adds
/// `slope · (j - p)`.
#[test]
fn ggml_mask_gqa_softcap_and_alibi() {
    let pr = Problem::new(1, 12, 4, 32, vec![75], 2);
    let n_kv = pr.max_len;
    let scale = default_scale(pr.d);
    let slopes = gqa_kernels::alibi_slopes(12, 8.0).unwrap();
    let hidden = |j: usize| j % 7 == 3; // another sequence's cells
    let mut kq_mask = vec![0f32; 2 * n_kv];
    let mut kq_mask_alibi = vec![0f32; 2 * n_kv];
    for t in 0..2 {
        let p = n_kv - 2 + t;
        for j in 0..n_kv {
            let masked = hidden(j) || j > p;
            kq_mask[t * n_kv + j] = if masked { f32::NEG_INFINITY } else { 0.0 };
            kq_mask_alibi[t * n_kv + j] = if masked {
                f32::NEG_INFINITY
            } else {
                -((p - j) as f32)
            };
        }
    }
    // ggml: score·scale, softcap, then slope·mask.
    let want = pr.host_attention(scale, Some(20.0), None, |_, t, h, _, j| {
        f64::from(slopes[h]) * f64::from(kq_mask_alibi[t * n_kv + j])
    });
    pr.check("ggml mask + max_bias + logit_softcap", &want, |tier| {
        let o = Options {
            softcap: Some(20.0),
            ..Options::default()
        };
        let bias = Bias {
            data: &kq_mask,
            seq_stride: 0,
            token_stride: n_kv,
            head_stride: 0,
        };
        pr.run(tier, &pr.lens, o, None, Some(8.0), Some(bias))
    });
}

/// Hugging Face: `attention_mask` (1 keep, 0 pad) becomes an additive mask
/// of 0 and `finfo(float32).min = -f32::MAX`, which this library takes as
/// a bias (left padding: the first positions of a row); a padded query
/// row, whose every position carries `-f32::MAX`, averages the V rows
/// uniformly as PyTorch does; `num_key_value_heads` is `G` with
/// `repeat_kv`'s contiguous groups; `sliding_window = W` is our
/// `window = W` (the query sees `j > p - W`).
#[test]
fn hf_attention_mask_and_sliding_window() {
    let pr = Problem::new(2, 8, 2, 16, vec![50, 50], 1);
    let scale = default_scale(pr.d);
    let pad = [0usize, 13];
    let mut mask = vec![0f32; 2 * 50];
    for (b, &p) in pad.iter().enumerate() {
        mask[b * 50..b * 50 + p].fill(-f32::MAX);
    }
    let w = 20;
    let want = pr.host_attention(scale, None, None, |b, _, _, p, j| {
        if j < pad[b] || j + w <= p {
            f64::NEG_INFINITY
        } else {
            0.0
        }
    });
    pr.check("attention_mask + sliding_window", &want, |tier| {
        let o = Options {
            window: Some(w),
            ..Options::default()
        };
        let bias = Bias {
            data: &mask,
            seq_stride: 50,
            token_stride: 0,
            head_stride: 0,
        };
        pr.run(tier, &pr.lens, o, None, None, Some(bias))
    });
    // A fully padded row: the uniform average of its V rows.
    let all = vec![-f32::MAX; 2 * 50];
    let uniform = pr.host_attention(scale, None, None, |_, _, _, _, _| -1e300);
    for tier in tiers() {
        let bias = Bias {
            data: &all,
            seq_stride: 50,
            token_stride: 0,
            head_stride: 0,
        };
        let (out, _) = pr.run(tier, &pr.lens, Options::default(), None, None, Some(bias));
        let vmax = 1.0;
        for (i, (g, w)) in out.iter().zip(&uniform.0).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-5 * vmax,
                "{tier}: out[{i}] = {g}, uniform {w}"
            );
        }
    }
}
