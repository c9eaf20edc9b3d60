//! Converting a multi-head checkpoint to GQA: the initialisation of
//! Ainslie et al. (2023, §2.1), which builds each KV head of a group as the
//! mean of the group's source heads, before a short uptraining.
//!
//! A K or V projection of `H` heads of size `D` is a weight of `H·D` rows
//! of `d_model` values (row `h·D + d` makes element `d` of head `h`), or a
//! bias of `H·D` values (one column). Converting it to `G` groups keeps
//! `G·D` rows: head `g` is made from source heads `g·r … (g+1)·r − 1`
//! (`r = H/G`, contiguous groups as in the paper), by [`Pooling::Mean`] (the
//! paper's choice) or [`Pooling::First`] (its "keep the first head"
//! alternative). A source that is already GQA converts to fewer groups the
//! same way; `G = H` returns the input unchanged, `G = 1` is MQA.
//!
//! Means are accumulated in f64 and rounded once to the tensor's type, so a
//! pooled value is the correctly rounded mean of its sources (f32, f16 and
//! bf16). The `gqa-convert` binary of this crate applies this to every
//! layer of a safetensors checkpoint.
//!
//! This crate is the converter: the library function here and the command
//! line tool (`src/main.rs`), apart from the kernel crate so that the
//! kernels carry no command-line or checkpoint-format dependencies. It
//! shares the kernel crate's [`Dtype`] and [`Error`].

use gqa_kernels::{bf16, f16, Dtype, Error, Result};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// How the KV head of a group is made from the group's source heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The element-wise mean of the group's heads (the paper's method).
    Mean,
    /// The group's first head, the others dropped (the paper's ablation).
    First,
}

/// The layout of a K or V projection tensor: `heads · head_dim` rows of
/// `cols` values each (`cols = d_model` for a weight, 1 for a bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjShape {
    /// KV heads of the source `H`.
    pub heads: usize,
    /// Head dim `D`.
    pub head_dim: usize,
    /// Values per row.
    pub cols: usize,
}

impl ProjShape {
    /// Values of a tensor of this shape.
    pub fn len(&self) -> Option<usize> {
        self.heads
            .checked_mul(self.head_dim)
            .and_then(|n| n.checked_mul(self.cols))
    }

    /// Whether the tensor is empty (never, once validated).
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    fn validate(&self, groups: usize, src_len: usize) -> Result<()> {
        for (arg, value) in [
            ("heads", self.heads),
            ("head_dim", self.head_dim),
            ("cols", self.cols),
            ("groups", groups),
        ] {
            if value == 0 {
                return Err(Error::InvalidDim {
                    arg,
                    value,
                    reason: "must be at least 1",
                });
            }
        }
        if !self.heads.is_multiple_of(groups) {
            return Err(Error::HeadsNotDivisible {
                heads: self.heads,
                kv_heads: groups,
            });
        }
        let n = self.len().ok_or(Error::Overflow { arg: "src", seq: 0 })?;
        if src_len != n {
            return Err(Error::LengthMismatch {
                arg: "src",
                expected: n,
                actual: src_len,
            });
        }
        Ok(())
    }
}

/// An element type a projection can be stored in (f32, f16, bf16).
pub trait Weight: Copy + sealed::Sealed {
    /// The crate's name for the type.
    const DTYPE: Dtype;
    /// Widened exactly.
    fn to_f64(self) -> f64;
    /// Rounded to nearest, ties to even.
    fn from_f64(x: f64) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for gqa_kernels::f16 {}
    impl Sealed for gqa_kernels::bf16 {}
}

impl Weight for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Weight for f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(x: f64) -> Self {
        f16::from_f64(x)
    }
}

impl Weight for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(x: f64) -> Self {
        bf16::from_f64(x)
    }
}

/// Pools the `shape.heads` heads of `src` into `groups` heads (see the
/// module docs): `groups · head_dim` rows of `cols`.
///
/// Errors: a zero dim or `groups`, `heads % groups != 0`
/// ([`Error::HeadsNotDivisible`]), `src` not `heads · head_dim · cols` long.
pub fn pool_heads<T: Weight>(
    src: &[T],
    shape: ProjShape,
    groups: usize,
    how: Pooling,
) -> Result<Vec<T>> {
    pool_with(
        src.len(),
        shape,
        groups,
        how,
        |i| src[i].to_f64(),
        T::from_f64,
    )
}

/// [`pool_heads`] on little-endian bytes of `dtype` (F32, F16 or Bf16), as
/// a safetensors file stores them (at any alignment); returns the pooled
/// tensor's bytes.
pub fn pool_heads_le(
    dtype: Dtype,
    src: &[u8],
    shape: ProjShape,
    groups: usize,
    how: Pooling,
) -> Result<Vec<u8>> {
    fn go<const N: usize, T: Weight>(
        src: &[u8],
        shape: ProjShape,
        groups: usize,
        how: Pooling,
        read: fn([u8; N]) -> T,
        write: fn(T) -> [u8; N],
    ) -> Result<Vec<u8>> {
        if !src.len().is_multiple_of(N) {
            return Err(Error::LengthMismatch {
                arg: "src",
                expected: src.len().next_multiple_of(N),
                actual: src.len(),
            });
        }
        let at = |i: usize| {
            let mut b = [0u8; N];
            b.copy_from_slice(&src[i * N..(i + 1) * N]);
            read(b).to_f64()
        };
        let out = pool_with(src.len() / N, shape, groups, how, at, T::from_f64)?;
        Ok(out.into_iter().flat_map(write).collect())
    }
    match dtype {
        Dtype::F32 => go(
            src,
            shape,
            groups,
            how,
            f32::from_le_bytes,
            f32::to_le_bytes,
        ),
        Dtype::F16 => go(
            src,
            shape,
            groups,
            how,
            f16::from_le_bytes,
            f16::to_le_bytes,
        ),
        Dtype::Bf16 => go(
            src,
            shape,
            groups,
            how,
            bf16::from_le_bytes,
            bf16::to_le_bytes,
        ),
        other => Err(Error::UnsupportedDtype {
            arg: "dtype",
            dtype: other,
            reason: "projection weights are f32, f16 or bf16",
        }),
    }
}

fn pool_with<T>(
    len: usize,
    shape: ProjShape,
    groups: usize,
    how: Pooling,
    at: impl Fn(usize) -> f64,
    from: fn(f64) -> T,
) -> Result<Vec<T>> {
    shape.validate(groups, len)?;
    let r = shape.heads / groups;
    let head = shape.head_dim * shape.cols;
    let mut out = Vec::with_capacity(groups * head);
    for g in 0..groups {
        let first = g * r * head;
        match how {
            Pooling::First => out.extend((0..head).map(|i| from(at(first + i)))),
            Pooling::Mean => out.extend((0..head).map(|i| {
                let sum: f64 = (0..r).map(|j| at(first + j * head + i)).sum();
                from(sum / r as f64)
            })),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(heads: usize, head_dim: usize, cols: usize) -> ProjShape {
        ProjShape {
            heads,
            head_dim,
            cols,
        }
    }

    #[test]
    fn mean_of_contiguous_groups() {
        // 4 heads of 2 rows of 3: value = 100 h + 10 d + c.
        let src: Vec<f32> = (0..4 * 2 * 3)
            .map(|i| (100 * (i / 6) + 10 * (i / 3 % 2) + i % 3) as f32)
            .collect();
        let out = pool_heads(&src, shape(4, 2, 3), 2, Pooling::Mean).unwrap();
        // Group 0 = heads 0, 1 (mean 50 + ...), group 1 = heads 2, 3 (250 + ...).
        let want: Vec<f32> = (0..2 * 2 * 3)
            .map(|i| (50 + 200 * (i / 6) + 10 * (i / 3 % 2) + i % 3) as f32)
            .collect();
        assert_eq!(out, want);
        let first = pool_heads(&src, shape(4, 2, 3), 2, Pooling::First).unwrap();
        let want: Vec<f32> = (0..2 * 2 * 3)
            .map(|i| (200 * (i / 6) + 10 * (i / 3 % 2) + i % 3) as f32)
            .collect();
        assert_eq!(first, want);
    }

    #[test]
    fn identity_mqa_and_bytes() {
        let src: Vec<f16> = (0..6 * 4)
            .map(|i| f16::from_f32(i as f32 * 0.37 - 3.0))
            .collect();
        assert_eq!(
            pool_heads(&src, shape(6, 4, 1), 6, Pooling::Mean).unwrap(),
            src
        );
        let mqa = pool_heads(&src, shape(6, 4, 1), 1, Pooling::Mean).unwrap();
        for d in 0..4 {
            let m: f64 = (0..6).map(|h| f64::from(src[h * 4 + d])).sum::<f64>() / 6.0;
            assert_eq!(mqa[d], f16::from_f64(m));
        }
        let bytes: Vec<u8> = bytemuck::cast_slice(&src).to_vec();
        let pooled =
            pool_heads_le(Dtype::F16, &bytes[..], shape(6, 4, 1), 3, Pooling::Mean).unwrap();
        let typed = pool_heads(&src, shape(6, 4, 1), 3, Pooling::Mean).unwrap();
        assert_eq!(pooled, bytemuck::cast_slice::<f16, u8>(&typed));
    }

    #[test]
    fn bad_input_is_named() {
        let src = vec![0f32; 24];
        assert_eq!(
            pool_heads(&src, shape(6, 4, 1), 4, Pooling::Mean),
            Err(Error::HeadsNotDivisible {
                heads: 6,
                kv_heads: 4
            })
        );
        assert!(matches!(
            pool_heads(&src, shape(6, 4, 1), 0, Pooling::Mean),
            Err(Error::InvalidDim { arg: "groups", .. })
        ));
        assert!(matches!(
            pool_heads(&src, shape(6, 5, 1), 3, Pooling::Mean),
            Err(Error::LengthMismatch {
                arg: "src",
                expected: 30,
                actual: 24
            })
        ));
        assert!(matches!(
            pool_heads_le(Dtype::Int8, &[0u8; 24], shape(6, 4, 1), 3, Pooling::Mean),
            Err(Error::UnsupportedDtype { .. })
        ));
        assert!(matches!(
            pool_heads_le(Dtype::F32, &[0u8; 23], shape(6, 1, 1), 3, Pooling::Mean),
            Err(Error::LengthMismatch { .. })
        ));
    }
}
