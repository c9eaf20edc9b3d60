//! What a decode step is: its shape, the limits a plan accepts, and the
//! numeric constant of the masking contract ([`LOGIT_FLOOR`]). A leaf of the
//! driver: the kernels, the layouts' validation, the plan and the reference
//! all read it.

use crate::error::{Error, Result};
use crate::formats::Dtype;

/// Largest head dimension accepted (`Dk`, `Dv`).
pub const MAX_HEAD_DIM: usize = 4096;
/// Largest number of query heads accepted.
pub const MAX_HEADS: usize = 1 << 16;

/// The largest `max_kv_len` (and so `L_b`) a plan accepts: 2^40 positions.
pub const MAX_KV_LEN: usize = 1 << 40;

/// The shape of one decode step.
///
/// Vocabulary: `B` = [`batch`](Shape::batch), `H` = [`heads`](Shape::heads),
/// `G` = [`kv_heads`](Shape::kv_heads), `r = H / G`, `Dk`/`Dv` the head dims
/// of K (and Q) and V, `q_len` the query tokens per sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Sequences in the batch (`B`; 0 is an empty batch).
    pub batch: usize,
    /// Query heads (`H`).
    pub heads: usize,
    /// KV heads (`G`, divides `H`).
    pub kv_heads: usize,
    /// Head dim of Q and K (`Dk`).
    pub head_dim_k: usize,
    /// Head dim of V and of the output (`Dv`).
    pub head_dim_v: usize,
    /// Query tokens per sequence (1 for plain decode; more for speculative
    /// verification or chunked decode). With ragged `q_offsets` this is the
    /// most any sequence may have.
    pub q_len: usize,
    /// Element type of the K cache.
    pub k_dtype: Dtype,
    /// Element type of the V cache.
    pub v_dtype: Dtype,
    /// Longest `L_b` a run may pass; 0 means unbounded. When set, the plan
    /// cuts long sequences into KV splits (flash-decoding) and sizes the
    /// workspace for them; when 0, each sequence is one split.
    pub max_kv_len: usize,
}

impl Shape {
    /// A plain decode shape: `q_len = 1`, `Dk = Dv = head_dim`, K and V of
    /// type `dtype`.
    pub fn new(
        batch: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: Dtype,
    ) -> Shape {
        Shape {
            batch,
            heads,
            kv_heads,
            head_dim_k: head_dim,
            head_dim_v: head_dim,
            q_len: 1,
            k_dtype: dtype,
            v_dtype: dtype,
            max_kv_len: 0,
        }
    }

    /// The same shape with `q_len` query tokens per sequence.
    pub fn with_q_len(mut self, q_len: usize) -> Shape {
        self.q_len = q_len;
        self
    }

    /// The same shape with a bound on `L_b`, which enables KV splits.
    pub fn with_max_kv_len(mut self, max_kv_len: usize) -> Shape {
        self.max_kv_len = max_kv_len;
        self
    }

    /// The same shape with different head dims for K and V.
    pub fn with_head_dims(mut self, dk: usize, dv: usize) -> Shape {
        self.head_dim_k = dk;
        self.head_dim_v = dv;
        self
    }

    /// The same shape with different K and V element types.
    pub fn with_dtypes(mut self, k: Dtype, v: Dtype) -> Shape {
        self.k_dtype = k;
        self.v_dtype = v;
        self
    }

    /// Group size `r = H / G`.
    pub fn group_size(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// Query rows sharing one KV head in one kernel call: `r * q_len`.
    pub fn rows(&self) -> usize {
        self.group_size() * self.q_len
    }

    /// Elements of `q`: `B * q_len * H * Dk`.
    pub fn q_elems(&self) -> usize {
        self.batch * self.q_len * self.heads * self.head_dim_k
    }

    /// Elements of `out`: `B * q_len * H * Dv`.
    pub fn out_elems(&self) -> usize {
        self.batch * self.q_len * self.heads * self.head_dim_v
    }

    /// Elements of `lse`: `B * q_len * H`.
    pub fn lse_elems(&self) -> usize {
        self.batch * self.q_len * self.heads
    }

    /// Bytes of K and V a step over `seq_lens` must read, values and
    /// per-row or per-block scales ([`Dtype::row_bytes`]): what the
    /// bandwidth report divides by the probe's bandwidth.
    pub fn kv_bytes(&self, seq_lens: &[usize]) -> usize {
        let per_pos = self.kv_heads
            * (self.k_dtype.row_bytes(self.head_dim_k) + self.v_dtype.row_bytes(self.head_dim_v));
        seq_lens.iter().sum::<usize>() * per_pos
    }

    /// Floating-point operations of a step: `2 (Dk + Dv) H q_len L` summed
    /// over the batch (exponentials not counted).
    pub fn flops(&self, seq_lens: &[usize]) -> f64 {
        let per_pos =
            2.0 * (self.head_dim_k + self.head_dim_v) as f64 * (self.heads * self.q_len) as f64;
        seq_lens.iter().map(|&l| l as f64 * per_pos).sum()
    }

    /// Checks every dimension; the checks are independent of the buffers.
    pub fn validate(&self) -> Result<()> {
        let dim = |arg, value: usize, max: usize| {
            if value == 0 {
                Err(Error::InvalidDim {
                    arg,
                    value,
                    reason: "must be at least 1",
                })
            } else if value > max {
                Err(Error::InvalidDim {
                    arg,
                    value,
                    reason: "exceeds the supported maximum",
                })
            } else {
                Ok(())
            }
        };
        dim("heads", self.heads, MAX_HEADS)?;
        dim("kv_heads", self.kv_heads, MAX_HEADS)?;
        dim("head_dim_k", self.head_dim_k, MAX_HEAD_DIM)?;
        dim("head_dim_v", self.head_dim_v, MAX_HEAD_DIM)?;
        dim("q_len", self.q_len, MAX_HEADS)?;
        // 0 means unbounded; anything else is rounded up to whole chunks
        // when the plan cuts KV splits, which must not overflow.
        if self.max_kv_len > MAX_KV_LEN {
            return Err(Error::InvalidDim {
                arg: "max_kv_len",
                value: self.max_kv_len,
                reason: "exceeds the supported maximum",
            });
        }
        for (arg, dtype, d) in [
            ("head_dim_k", self.k_dtype, self.head_dim_k),
            ("head_dim_v", self.v_dtype, self.head_dim_v),
        ] {
            if !dtype.fits_head_dim(d) {
                return Err(Error::InvalidDim {
                    arg,
                    value: d,
                    reason: dtype.head_dim_rule(),
                });
            }
        }
        if !self.k_dtype.pairs_with(self.v_dtype) {
            return Err(Error::UnsupportedDtype {
                arg: "v_dtype",
                dtype: self.v_dtype,
                reason: "fp8_ds_mla holds K and V in one latent row: K and V are both fp8_ds_mla, or neither",
            });
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::HeadsNotDivisible {
                heads: self.heads,
                kv_heads: self.kv_heads,
            });
        }
        // Element counts of q/out must fit in usize.
        let total = self
            .batch
            .checked_mul(self.q_len)
            .and_then(|x| x.checked_mul(self.heads))
            .and_then(|x| x.checked_mul(self.head_dim_k.max(self.head_dim_v)));
        if total.is_none() {
            return Err(Error::Overflow {
                arg: "batch",
                seq: 0,
            });
        }
        Ok(())
    }
}

/// The lowest logit term a step distinguishes: a bias value (or a sink
/// logit) below `-2^127` counts as `-2^127`. The kernels add biases in the
/// log2 domain, and `log2 e` times anything below about `-2.3587e38`
/// overflows f32 to `-inf`: Hugging Face's mask value
/// `finfo(float32).min = -f32::MAX` would then mask a row completely
/// (zeros) where f64 arithmetic averages its equally masked positions.
/// Floored, such positions weigh 0 next to any ordinary position and share
/// the weight equally in a row that sees nothing else, as in PyTorch.
/// `-inf` is not floored: it masks (a row whose every visible position is
/// `-inf` outputs zeros and `lse = -inf`).
pub const LOGIT_FLOOR: f32 = -1.701_411_8e38;
