//! Layer 2, part 1: shapes, options, validation and the plan.

use crate::dispatch::{self, active_tier, KernelEntry, Tier};
use crate::error::{Error, Result};
use crate::types::{Dtype, KvTensor};

/// Largest head dimension accepted (`Dk`, `Dv`).
pub const MAX_HEAD_DIM: usize = 4096;
/// Largest number of query heads accepted.
pub const MAX_HEADS: usize = 1 << 16;

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
    /// Query tokens per sequence (1 for plain decode; only 1 is implemented
    /// in this version).
    pub q_len: usize,
    /// Element type of the K cache.
    pub k_dtype: Dtype,
    /// Element type of the V cache.
    pub v_dtype: Dtype,
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
        }
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

    /// Bytes of K and V a step over `seq_lens` must read (what the
    /// bandwidth report divides by the probe's bandwidth).
    pub fn kv_bytes(&self, seq_lens: &[usize]) -> usize {
        let per_pos = self.kv_heads
            * (self.head_dim_k * self.k_dtype.size() + self.head_dim_v * self.v_dtype.size());
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
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::HeadsNotDivisible {
                heads: self.heads,
                kv_heads: self.kv_heads,
            });
        }
        if self.q_len != 1 {
            return Err(Error::Unsupported {
                arg: "q_len",
                value: self.q_len,
                reason: "multi-token decode is not implemented yet; use q_len = 1",
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

/// Options of a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Options {
    /// Score scale; `None` means `1 / sqrt(Dk)`. Must be finite and > 0.
    pub scale: Option<f32>,
    /// Tier to run on; `None` means [`crate::active_tier`]
    /// (`GQA_KERNELS_ISA` or the best available).
    pub tier: Option<Tier>,
    /// Worker threads for [`Plan::run`] (0 or 1: the calling thread only).
    /// Results are bitwise identical for every value.
    pub threads: usize,
}

impl Options {
    /// Default options with the given scale.
    pub fn with_scale(mut self, scale: f32) -> Options {
        self.scale = Some(scale);
        self
    }
    /// Default options forcing `tier`.
    pub fn with_tier(mut self, tier: Tier) -> Options {
        self.tier = Some(tier);
        self
    }
    /// Default options with `threads` workers.
    pub fn with_threads(mut self, threads: usize) -> Options {
        self.threads = threads;
        self
    }
}

/// A validated decode step: shape, scale, tier and kernel instance fixed.
/// Reusable for every layer and step of the same shape.
pub struct Plan {
    pub(crate) shape: Shape,
    pub(crate) scale: f32,
    pub(crate) tier: Tier,
    pub(crate) kernel: &'static KernelEntry,
    pub(crate) threads: usize,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("shape", &self.shape)
            .field("scale", &self.scale)
            .field("tier", &self.tier)
            .field("kernel", &self.kernel.name)
            .field("threads", &self.threads)
            .finish()
    }
}

impl Plan {
    /// Validates `shape` and `options` and picks the tier and kernel.
    pub fn new(shape: &Shape, options: &Options) -> Result<Plan> {
        shape.validate()?;
        let scale = match options.scale {
            None => 1.0 / (shape.head_dim_k as f32).sqrt(),
            Some(s) if s.is_finite() && s > 0.0 => s,
            Some(s) => return Err(Error::InvalidScale { value: s }),
        };
        let tier = match options.tier {
            Some(t) => t.require()?,
            None => active_tier()?,
        };
        let kernel = dispatch::select(
            tier,
            shape.k_dtype,
            shape.v_dtype,
            shape.head_dim_k,
            shape.head_dim_v,
            shape.rows(),
        );
        Ok(Plan {
            shape: *shape,
            scale,
            tier,
            kernel,
            threads: options.threads.max(1),
        })
    }

    /// The shape planned for.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The score scale in use.
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// The tier the plan runs on.
    pub fn tier(&self) -> Tier {
        self.tier
    }
    /// The kernel instance the plan runs, e.g. `decode_f16_d128_r4__avx512`.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.name
    }
    /// Worker threads used by [`Plan::run`].
    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// Checks that `view` holds every element the kernels will read for
/// `seq_lens` (`arg` names it in errors).
pub(crate) fn check_view(
    arg: &'static str,
    view: &KvTensor<'_>,
    expected: Dtype,
    kv_heads: usize,
    head_dim: usize,
    seq_lens: &[usize],
) -> Result<()> {
    if view.dtype() != expected {
        return Err(Error::DtypeMismatch {
            arg,
            expected,
            actual: view.dtype(),
        });
    }
    let len = view.data.len();
    for (seq, &l) in seq_lens.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let end = seq
            .checked_mul(view.seq_stride)
            .and_then(|x| {
                (l - 1)
                    .checked_mul(view.token_stride)
                    .and_then(|y| x.checked_add(y))
            })
            .and_then(|x| {
                (kv_heads - 1)
                    .checked_mul(view.head_stride)
                    .and_then(|y| x.checked_add(y))
            })
            .and_then(|x| x.checked_add(head_dim))
            .ok_or(Error::Overflow { arg, seq })?;
        if end > len {
            return Err(Error::OutOfBounds {
                arg,
                seq,
                needed: end,
                len,
            });
        }
    }
    Ok(())
}

/// Checks every run argument against the shape.
pub(crate) fn check_run_args(
    shape: &Shape,
    q: &[f32],
    k: &KvTensor<'_>,
    v: &KvTensor<'_>,
    seq_lens: &[usize],
    out_len: usize,
    lse_len: Option<usize>,
) -> Result<()> {
    let expect = |arg, expected: usize, actual: usize| {
        if expected == actual {
            Ok(())
        } else {
            Err(Error::LengthMismatch {
                arg,
                expected,
                actual,
            })
        }
    };
    expect("seq_lens", shape.batch, seq_lens.len())?;
    expect("q", shape.q_elems(), q.len())?;
    expect("out", shape.out_elems(), out_len)?;
    if let Some(n) = lse_len {
        expect("lse", shape.lse_elems(), n)?;
    }
    check_view(
        "k",
        k,
        shape.k_dtype,
        shape.kv_heads,
        shape.head_dim_k,
        seq_lens,
    )?;
    check_view(
        "v",
        v,
        shape.v_dtype,
        shape.kv_heads,
        shape.head_dim_v,
        seq_lens,
    )?;
    Ok(())
}
