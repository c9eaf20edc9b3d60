//! Hand-vectorised CPU kernels for the decode step of grouped-query
//! attention (GQA; Ainslie et al., 2023).
//!
//! `H` query heads share `G` KV heads in groups of `r = H / G`. Decode
//! attention reads every cached K and V row once per step and does only
//! `2·r` FLOPs per element read, so it is bound by memory bandwidth. GQA
//! shrinks the cache by `H / G`, and this crate turns that into step time:
//! every microkernel loads (and widens) each K/V row **once per KV head** and
//! uses it for all `r` query heads of the group while it sits in registers
//! and L1.
//!
//! # Layers
//! 1. **Microkernels** (`src/arch`): one algorithm written once over a small
//!    SIMD trait, instantiated for the `avx512`, `avx2`, `neon` and `scalar`
//!    tiers; specialised instances are generated from `kernels/` by
//!    `build.rs`.
//! 2. **Driver** ([`Plan`]): validation, kernel choice, cache layouts
//!    (strided, paged, ring; [`KvCache`]), causal multi-token decode, KV
//!    splits and their merge, walking a batch into kernel calls, threading
//!    (a plan-owned pool, or a host's own threads through [`Plan::begin`]).
//! 3. **Front-ends**: this API, the examples, benches and tests.
//!
//! # Example
//! ```
//! use gqa_kernels::{Dtype, KvTensor, Options, Plan, Shape};
//! use half::f16;
//!
//! // One sequence of 5 cached tokens; 8 query heads over 2 KV heads of dim 64.
//! let shape = Shape::new(1, 8, 2, 64, Dtype::F16);
//! let max_len = 5;
//! let k = vec![f16::from_f32(0.1); max_len * 2 * 64];
//! let v = vec![f16::from_f32(0.5); max_len * 2 * 64];
//! let q = vec![1.0f32; shape.q_elems()];
//! let mut out = vec![0.0f32; shape.out_elems()];
//! let mut lse = vec![0.0f32; shape.lse_elems()];
//!
//! let plan = Plan::new(&shape, &Options::default())?;
//! plan.decode(
//!     &q,
//!     &KvTensor::blgd(&k[..], max_len, 2, 64), // [B, L, G, D]
//!     &KvTensor::blgd(&v[..], max_len, 2, 64),
//!     &[5],
//!     &mut out,
//!     Some(&mut lse),
//! )?;
//! // Every V row is 0.5, so every output is 0.5 whatever the weights.
//! assert!(out.iter().all(|&x| (x - 0.5).abs() < 1e-6));
//! println!("ran {} on {}", plan.kernel_name(), plan.tier());
//! # Ok::<(), gqa_kernels::Error>(())
//! ```
//!
//! # Numerics
//! Q is converted to f32 and pre-multiplied by `scale·log2(e)` once; K/V
//! elements are widened to f32 exactly once per KV head per step; scores,
//! the online-softmax state and the V accumulator are f32 on every path.
//! See the README for the tolerance every tier is tested against.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
// The library's unit-test build holds no kernels (build.rs, `dispatch`):
// its tests run the tiers' primitives, so the kernel bodies are dead code
// there; so are the kernels of the tiers a build leaves out
// (`GQA_KERNELS_TIERS`, build.rs). The normal build keeps both lints.
#![cfg_attr(test, allow(dead_code, unused_imports))]
#![cfg_attr(all(gqa_kernels_some_tiers, not(test)), allow(dead_code))]

mod arch;
pub mod capi;
pub mod dispatch;
mod driver;
mod error;
mod formats;
pub mod probe;
pub mod quant;
pub mod reference;
mod shape;
mod tier;
mod views;

pub use dispatch::{active_tier, kernel_instances, KernelInfo};
pub use driver::append::{append, append_latent};
pub use driver::merge::merge_states;
pub use driver::plan::{alibi_slopes, Options, Plan};
pub use driver::step::{Part, Step};
pub use error::{Error, Result};
pub use formats::Dtype;
pub use shape::{Shape, LOGIT_FLOOR, MAX_HEADS, MAX_HEAD_DIM, MAX_KV_LEN};
pub use tier::{Precision, Tier, Unit};
pub use views::{
    Batch, Bias, Blocks, BlocksMut, KvBuffer, KvCache, KvCacheMut, KvData, KvDataMut, KvPages,
    KvPagesMut, KvTensor, KvTensorMut, LatentCacheMut, NewKv, PagedKv, PagesView, Positions,
    PrefixGroups, RingKv, TensorView,
};

/// Re-export of the `half` crate's 16-bit float types used in [`KvData`].
pub use half::{bf16, f16};

/// Plans and runs one decode step in a single call (see [`Plan::run`] for the
/// argument layouts). Prefer a [`Plan`] when the same shape runs repeatedly.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    shape: &Shape,
    options: &Options,
    q: &[f32],
    k: &KvTensor<'_>,
    v: &KvTensor<'_>,
    seq_lens: &[usize],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    Plan::new(shape, options)?.decode(q, k, v, seq_lens, out, lse)
}

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
