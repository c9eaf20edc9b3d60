//! [`KvBuffer`]: an owned buffer of cache elements of any format, the one
//! that examples, benches, tests and fuzz harnesses (and hosts without a
//! cache of their own) allocate, fill and lend out as [`KvData`] or
//! [`KvDataMut`].

use half::{bf16, f16};

use super::{Blocks, BlocksMut, KvData, KvDataMut};
use crate::error::{Error, Result};
use crate::formats::{BlockFormat, Dtype, Fp8};
use crate::quant::{quantize_block_bytes, quantize_fp8_row, quantize_int8_row};

/// `n` values whose first one starts a 64-byte cache line, as a host's
/// tensors do (PyTorch's CPU allocator aligns to 64 bytes). The system
/// allocator's 16 bytes would leave every row 16 bytes off a line: on an
/// AMD Zen 4 core that made a Llama-3-8B f32 step (1 thread, cold) 1.3x
/// slower, a cost no host with aligned tensors pays.
struct Lined<T> {
    v: Vec<T>,
    off: usize,
    n: usize,
}

impl<T: Copy> Lined<T> {
    /// The values of `x`, in order.
    fn from_iter(n: usize, fill: T, x: impl Iterator<Item = T>) -> Lined<T> {
        // 64 spare elements: every element size here is even or 1, so a
        // line start is at most 63 elements in (a 34-byte q8_0 block is
        // 2-byte aligned: 34·o ≡ −p (mod 64) has a solution o < 32).
        let mut v = Vec::with_capacity(n + 64);
        v.resize(64, fill);
        let size = std::mem::size_of::<T>();
        let p = v.as_ptr() as usize;
        let off = (0..64)
            .find(|o| (p + o * size).is_multiple_of(64))
            .unwrap_or(0);
        v.truncate(off);
        v.extend(x.take(n));
        debug_assert_eq!(v.len(), off + n);
        Lined { v, off, n }
    }

    /// `n` copies of `fill`, allocated in one piece (zeros of the
    /// primitive types come from the allocator zeroed, so the pages are
    /// mapped when first written).
    fn filled(n: usize, fill: T) -> Lined<T> {
        let v = vec![fill; n + 64];
        let size = std::mem::size_of::<T>();
        let p = v.as_ptr() as usize;
        let off = (0..64)
            .find(|o| (p + o * size).is_multiple_of(64))
            .unwrap_or(0);
        Lined { v, off, n }
    }

    fn get(&self) -> &[T] {
        &self.v[self.off..][..self.n]
    }

    fn get_mut(&mut self) -> &mut [T] {
        &mut self.v[self.off..][..self.n]
    }
}

impl<T: Copy> From<&[T]> for Lined<T> {
    fn from(x: &[T]) -> Lined<T> {
        match x.first() {
            Some(&f) => Lined::from_iter(x.len(), f, x.iter().copied()),
            None => Lined {
                v: Vec::new(),
                off: 0,
                n: 0,
            },
        }
    }
}

/// Equal values (the alignment padding is not compared).
impl<T: Copy + PartialEq> PartialEq for Lined<T> {
    fn eq(&self, other: &Lined<T>) -> bool {
        self.get() == other.get()
    }
}

impl<T: Copy> Clone for Lined<T> {
    fn clone(&self) -> Lined<T> {
        Lined::from(self.get())
    }
}

/// The values of a [`KvBuffer`], one variant per storage type.
#[derive(Clone, PartialEq)]
enum Values {
    F32(Lined<f32>),
    F16(Lined<f16>),
    Bf16(Lined<bf16>),
    Int8(Lined<i8>),
    /// The bytes of whole blocks of a block format (q8_0 included).
    Blocks(Dtype, Lined<u8>),
    Fp8(Fp8, Lined<u8>),
    /// fp8 E4M3FN bytes with one scale per row (`fp8e4m3_row`).
    Fp8Row(Lined<u8>),
}

/// An owned buffer of K or V cache elements of one [`Dtype`], with the
/// scales the type needs (int8, fp8e4m3_row: one per row; fp8: one per KV head or one
/// for the tensor; the block formats keep them in their blocks), its first value at the
/// start of a 64-byte cache line.
///
/// It is addressed like the views that borrow it ([`KvBuffer::data`],
/// [`KvBuffer::data_mut`]): offsets and strides in values, whatever the
/// type.
///
/// ```
/// use gqa_kernels::{Dtype, KvBuffer, KvTensor};
///
/// // 4 positions of 2 KV heads of dim 32, [B, L, G, D], as q8_0.
/// let x: Vec<f32> = (0..4 * 2 * 32).map(|i| (i as f32 * 0.1).sin()).collect();
/// let k = KvBuffer::from_f32(Dtype::Q8_0, &x, 32)?;
/// let view = KvTensor::blgd(k.data(), 4, 2, 32);
/// assert_eq!(view.dtype(), Dtype::Q8_0);
/// # Ok::<(), gqa_kernels::Error>(())
/// ```
///
/// Two buffers are equal when their types, values and scales are (values
/// compare as their types do: a NaN equals nothing).
#[derive(Clone, PartialEq)]
pub struct KvBuffer {
    values: Values,
    /// int8, fp8e4m3_row: one per row; fp8: one per KV head or one; else
    /// empty.
    scales: Vec<f32>,
}

impl std::fmt::Debug for KvBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvBuffer")
            .field("dtype", &self.dtype())
            .field("len", &self.len())
            .field("scales", &self.scales.len())
            .finish()
    }
}

/// `len` is a whole number of rows of `head_dim` (int8, fp8e4m3_row) or
/// of blocks.
fn check_rows(dtype: Dtype, len: usize, head_dim: usize) -> Result<()> {
    if head_dim == 0 {
        return Err(Error::InvalidDim {
            arg: "head_dim",
            value: 0,
            reason: "must be at least 1",
        });
    }
    let unit = if dtype.has_row_scales() {
        head_dim
    } else {
        dtype.block_len()
    };
    if !len.is_multiple_of(unit) {
        return Err(Error::InvalidDim {
            arg: "len",
            value: len,
            reason: if dtype.has_row_scales() {
                "a buffer with row scales (int8, fp8e4m3_row) holds whole rows of head_dim values"
            } else {
                "a block-format buffer holds whole blocks (32 values; 576 for fp8_ds_mla)"
            },
        });
    }
    Ok(())
}

impl KvBuffer {
    /// `len` zero values of `dtype` in rows of `head_dim` (int8 and
    /// fp8e4m3_row scales 0;
    /// fp8 with one per-tensor scale of 1, see [`KvBuffer::with_scales`]).
    ///
    /// Errors: `head_dim` 0; an int8 or fp8e4m3_row `len` that is not whole rows, or a
    /// block format's `len` that is not whole blocks of 32.
    pub fn zeros(dtype: Dtype, len: usize, head_dim: usize) -> Result<KvBuffer> {
        check_rows(dtype, len, head_dim)?;
        if let Some(b) = dtype.block() {
            let values = Values::Blocks(dtype, Lined::filled(len / b.len * b.bytes, 0));
            return Ok(KvBuffer {
                values,
                scales: vec![],
            });
        }
        let (values, scales) = match dtype {
            Dtype::F32 => (Values::F32(Lined::filled(len, 0.0)), vec![]),
            Dtype::F16 => (Values::F16(Lined::filled(len, f16::ZERO)), vec![]),
            Dtype::Bf16 => (Values::Bf16(Lined::filled(len, bf16::ZERO)), vec![]),
            Dtype::Int8 => (
                Values::Int8(Lined::filled(len, 0)),
                vec![0.0; len / head_dim],
            ),
            Dtype::Fp8E4M3Row => (
                Values::Fp8Row(Lined::filled(len, 0)),
                vec![0.0; len / head_dim],
            ),
            _ => {
                let f = dtype.fp8().expect("an fp8 type");
                (Values::Fp8(f, Lined::filled(len, 0)), vec![1.0])
            }
        };
        Ok(KvBuffer { values, scales })
    }

    /// `x` stored as `dtype` in rows of `head_dim`: f16 and bf16 rounded to
    /// nearest even; int8, fp8e4m3_row and the block formats quantized by
    /// the encoders of [`crate::quant`] (a scale per row, per block); fp8
    /// (per-head types) encoded with one
    /// per-tensor scale, `max |x|` over the format's largest value (1 for
    /// an all-zero `x`). For per-head fp8 scales, see
    /// [`KvBuffer::fp8_from_f32`].
    ///
    /// Errors: as [`KvBuffer::zeros`], and a NaN or infinity in `x` for a
    /// quantized type ([`Error::NonFinite`], naming `x`).
    pub fn from_f32(dtype: Dtype, x: &[f32], head_dim: usize) -> Result<KvBuffer> {
        check_rows(dtype, x.len(), head_dim)?;
        if dtype.is_quantized() {
            if let Some(index) = x.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    arg: "x",
                    index,
                    value: x[index],
                });
            }
        }
        if let Some(b) = dtype.block() {
            let mut bytes = Lined::filled(x.len() / b.len * b.bytes, 0u8);
            quantize_block_bytes(dtype, x, bytes.get_mut())?;
            return Ok(KvBuffer {
                values: Values::Blocks(dtype, bytes),
                scales: vec![],
            });
        }
        let (values, scales) = match dtype {
            Dtype::F32 => (Values::F32(Lined::from(x)), vec![]),
            Dtype::F16 => (
                Values::F16(Lined::from_iter(
                    x.len(),
                    f16::ZERO,
                    x.iter().map(|&v| f16::from_f32(v)),
                )),
                vec![],
            ),
            Dtype::Bf16 => (
                Values::Bf16(Lined::from_iter(
                    x.len(),
                    bf16::ZERO,
                    x.iter().map(|&v| bf16::from_f32(v)),
                )),
                vec![],
            ),
            Dtype::Int8 => {
                let mut q = Lined::filled(x.len(), 0i8);
                let scales = x
                    .chunks_exact(head_dim)
                    .zip(q.get_mut().chunks_exact_mut(head_dim))
                    .map(|(row, dst)| quantize_int8_row(row, dst))
                    .collect::<Result<Vec<f32>>>()?;
                (Values::Int8(q), scales)
            }
            Dtype::Fp8E4M3Row => {
                let mut q = Lined::filled(x.len(), 0u8);
                let scales = x
                    .chunks_exact(head_dim)
                    .zip(q.get_mut().chunks_exact_mut(head_dim))
                    .map(|(row, dst)| quantize_fp8_row(row, dst))
                    .collect::<Result<Vec<f32>>>()?;
                (Values::Fp8Row(q), scales)
            }
            _ => {
                let f = dtype.fp8().expect("an fp8 type");
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = if amax > 0.0 { amax / f.max() } else { 1.0 };
                return KvBuffer::fp8_from_f32(f, x, vec![scale], |_| 0);
            }
        };
        Ok(KvBuffer { values, scales })
    }

    /// `x` encoded as fp8 `format`, value `i` divided by
    /// `scales[scale_of(i)]` first (the KV head of value `i` in the
    /// caller's layout, or 0 for a per-tensor scale); finite values beyond
    /// the format saturate.
    ///
    /// Errors: a scale that is not finite and positive
    /// ([`Error::InvalidParam`], `scales`), `scale_of` naming a scale that
    /// is not there ([`Error::OutOfBounds`], `scales`), a NaN or infinity
    /// in `x` ([`Error::NonFinite`]).
    pub fn fp8_from_f32(
        format: Fp8,
        x: &[f32],
        scales: Vec<f32>,
        scale_of: impl Fn(usize) -> usize,
    ) -> Result<KvBuffer> {
        check_fp8_scales(&scales)?;
        let mut q = Lined::filled(x.len(), 0u8);
        for (i, (&v, dst)) in x.iter().zip(q.get_mut()).enumerate() {
            if !v.is_finite() {
                return Err(Error::NonFinite {
                    arg: "x",
                    index: i,
                    value: v,
                });
            }
            let s = scale_of(i);
            let Some(&scale) = scales.get(s) else {
                return Err(Error::OutOfBounds {
                    arg: "scales",
                    seq: 0,
                    needed: s + 1,
                    len: scales.len(),
                });
            };
            *dst = format.encode(v / scale);
        }
        Ok(KvBuffer {
            values: Values::Fp8(format, q),
            scales,
        })
    }

    /// int8 `values` with one scale per row (copied).
    pub fn int8(values: &[i8], scales: &[f32]) -> KvBuffer {
        KvBuffer {
            values: Values::Int8(Lined::from(values)),
            scales: scales.to_vec(),
        }
    }

    /// fp8 E4M3FN `values` with one scale per row (`fp8e4m3_row`;
    /// copied).
    pub fn fp8_row(values: &[u8], scales: &[f32]) -> KvBuffer {
        KvBuffer {
            values: Values::Fp8Row(Lined::from(values)),
            scales: scales.to_vec(),
        }
    }

    /// Blocks of the block format `dtype`, as their bytes (copied; any
    /// alignment). Errors: as [`Blocks::new`].
    pub fn blocks(dtype: Dtype, bytes: &[u8]) -> Result<KvBuffer> {
        let b = Blocks::new(dtype, bytes)?;
        Ok(KvBuffer {
            values: Values::Blocks(b.dtype(), Lined::from(b.bytes())),
            scales: vec![],
        })
    }

    /// fp8 `values` of `format` with one scale per KV head or one per
    /// tensor (copied).
    pub fn fp8(format: Fp8, values: &[u8], scales: &[f32]) -> KvBuffer {
        KvBuffer {
            values: Values::Fp8(format, Lined::from(values)),
            scales: scales.to_vec(),
        }
    }

    /// The fp8 buffer with `scales` (one per KV head, or one) in place of
    /// its own; the values are not re-encoded.
    ///
    /// Errors: a buffer of another type ([`Error::UnsupportedDtype`],
    /// `self`), an empty `scales` or one that is not finite and positive
    /// ([`Error::InvalidParam`], `scales`).
    pub fn with_scales(mut self, scales: Vec<f32>) -> Result<KvBuffer> {
        if !matches!(self.values, Values::Fp8(..)) {
            return Err(Error::UnsupportedDtype {
                arg: "self",
                dtype: self.dtype(),
                reason: "only an fp8 buffer takes per-head scales",
            });
        }
        check_fp8_scales(&scales)?;
        self.scales = scales;
        Ok(self)
    }

    /// A buffer of `len` values that repeats this one's from its start
    /// (with int8's and fp8e4m3_row's row scales; block formats in whole blocks): a long synthetic
    /// cache from a short block of data, as benchmarks need.
    ///
    /// Errors: an empty buffer and `len > 0`; an int8 or block `len` that is
    /// not whole rows or blocks.
    pub fn repeat_to(&self, len: usize) -> Result<KvBuffer> {
        let n = self.len();
        if n == 0 && len > 0 {
            return Err(Error::InvalidDim {
                arg: "self",
                value: 0,
                reason: "an empty buffer cannot be repeated",
            });
        }
        let d = match &self.values {
            Values::Int8(_) | Values::Fp8Row(_) if !self.scales.is_empty() => n / self.scales.len(),
            _ => 1,
        };
        check_rows(self.dtype(), len, d)?;
        fn cycle<T: Copy>(x: &Lined<T>, len: usize) -> Lined<T> {
            match x.get().first() {
                Some(&f) => Lined::from_iter(len, f, x.get().iter().copied().cycle()),
                None => Lined::from(&[][..]),
            }
        }
        let values = match &self.values {
            Values::F32(x) => Values::F32(cycle(x, len)),
            Values::F16(x) => Values::F16(cycle(x, len)),
            Values::Bf16(x) => Values::Bf16(cycle(x, len)),
            Values::Int8(x) => Values::Int8(cycle(x, len)),
            Values::Blocks(t, x) => {
                let b = t.block().expect("a block format");
                Values::Blocks(*t, cycle(x, len / b.len * b.bytes))
            }
            Values::Fp8(f, x) => Values::Fp8(*f, cycle(x, len)),
            Values::Fp8Row(x) => Values::Fp8Row(cycle(x, len)),
        };
        let scales = match &self.values {
            Values::Int8(_) | Values::Fp8Row(_) => {
                self.scales.iter().copied().cycle().take(len / d).collect()
            }
            _ => self.scales.clone(),
        };
        Ok(KvBuffer { values, scales })
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.data().dtype()
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data().len()
    }

    /// Whether the buffer holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer, borrowed for a step.
    pub fn data(&self) -> KvData<'_> {
        let s = &self.scales[..];
        match &self.values {
            Values::F32(x) => KvData::F32(x.get()),
            Values::F16(x) => KvData::F16(x.get()),
            Values::Bf16(x) => KvData::Bf16(x.get()),
            Values::Int8(x) => KvData::int8(x.get(), s),
            Values::Blocks(Dtype::Q8_0, x) => KvData::Q8_0(bytemuck::cast_slice(x.get())),
            Values::Blocks(t, x) => KvData::Blocks(Blocks {
                dtype: *t,
                bytes: x.get(),
            }),
            Values::Fp8(f, x) => KvData::fp8(*f, x.get(), s),
            Values::Fp8Row(x) => KvData::fp8_row(x.get(), s),
        }
    }

    /// The buffer, borrowed for writing (an append, or a host's own fill).
    pub fn data_mut(&mut self) -> KvDataMut<'_> {
        let s = &mut self.scales[..];
        match &mut self.values {
            Values::F32(x) => KvDataMut::F32(x.get_mut()),
            Values::F16(x) => KvDataMut::F16(x.get_mut()),
            Values::Bf16(x) => KvDataMut::Bf16(x.get_mut()),
            Values::Int8(x) => KvDataMut::int8(x.get_mut(), s),
            Values::Blocks(Dtype::Q8_0, x) => {
                KvDataMut::Q8_0(bytemuck::cast_slice_mut(x.get_mut()))
            }
            Values::Blocks(t, x) => KvDataMut::Blocks(BlocksMut {
                dtype: *t,
                bytes: x.get_mut(),
            }),
            Values::Fp8(f, x) => KvDataMut::fp8(*f, x.get_mut(), s),
            Values::Fp8Row(x) => KvDataMut::fp8_row(x.get_mut(), s),
        }
    }
}

/// fp8 scales: at least one, each finite and positive.
fn check_fp8_scales(scales: &[f32]) -> Result<()> {
    match scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        Some(&value) => Err(Error::InvalidParam {
            arg: "scales",
            value,
            reason: "fp8 scales must be finite and positive",
        }),
        None if scales.is_empty() => Err(Error::InvalidParam {
            arg: "scales",
            value: 0.0,
            reason: "an fp8 buffer needs one scale per KV head, or one",
        }),
        None => Ok(()),
    }
}

impl From<&[f32]> for KvBuffer {
    fn from(x: &[f32]) -> KvBuffer {
        KvBuffer {
            values: Values::F32(Lined::from(x)),
            scales: vec![],
        }
    }
}

impl From<&[f16]> for KvBuffer {
    fn from(x: &[f16]) -> KvBuffer {
        KvBuffer {
            values: Values::F16(Lined::from(x)),
            scales: vec![],
        }
    }
}

impl From<&[bf16]> for KvBuffer {
    fn from(x: &[bf16]) -> KvBuffer {
        KvBuffer {
            values: Values::Bf16(Lined::from(x)),
            scales: vec![],
        }
    }
}

/// Blocks of any block format (q8_0 included), copied.
impl<B: BlockFormat> From<&[B]> for KvBuffer {
    fn from(x: &[B]) -> KvBuffer {
        KvBuffer {
            values: Values::Blocks(B::DTYPE, Lined::from(bytemuck::cast_slice::<B, u8>(x))),
            scales: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type's first value starts a cache line, also after a clone
    /// and a repeat.
    #[test]
    fn values_start_a_line() {
        for dtype in Dtype::ALL {
            // Rows of 64 values, or one fp8_ds_mla row.
            let d = dtype.block_len().max(64);
            let b = KvBuffer::zeros(dtype, 4 * d, d).unwrap();
            let c = b.clone();
            let r = b.repeat_to(8 * d).unwrap();
            for buf in [&b, &c, &r] {
                let p = match buf.data() {
                    KvData::F32(x) => x.as_ptr() as usize,
                    KvData::F16(x) => x.as_ptr() as usize,
                    KvData::Bf16(x) => x.as_ptr() as usize,
                    KvData::Int8 { values, .. } => values.as_ptr() as usize,
                    KvData::Q8_0(x) => x.as_ptr() as usize,
                    KvData::Blocks(b) => b.bytes().as_ptr() as usize,
                    KvData::Fp8E4M3 { values, .. }
                    | KvData::Fp8E5M2 { values, .. }
                    | KvData::Fp8E4M3Row { values, .. } => values.as_ptr() as usize,
                };
                assert_eq!(p % 64, 0, "{dtype}");
            }
            assert_eq!(r.len(), 8 * d);
        }
    }
}
