//! Owned cache storage for the cases: a `KvBuffer` and the row length of its scales.

use super::*;

/// Owned cache storage of one dtype: the crate's [`KvBuffer`], with the
/// row length of its row scales (int8, fp8e4m3_row; for views at an
/// offset).
#[derive(Clone, Debug)]
pub struct Store {
    pub buf: KvBuffer,
    pub d: usize,
}

/// Values a quantized buffer's offsets and strides must be multiples of.
pub fn unit(dtype: Dtype, d: usize) -> usize {
    match dtype {
        t if t.has_row_scales() => d,
        _ => dtype.block_len(),
    }
}

/// `d` made a head dim `dt` takes: as it is where it fits (a row format,
/// fp8_ds_mla, takes any `d <= 576`), else rounded up to whole blocks of
/// 32.
pub fn fit(dt: Dtype, d: usize) -> usize {
    if dt.fits_head_dim(d) {
        d
    } else {
        d.next_multiple_of(dt.block_len())
    }
}

/// `v` as V beside K of type `k`, or `k` where the two do not pair (a row
/// format, fp8_ds_mla, pairs only with itself).
pub fn paired(k: Dtype, v: Dtype) -> Dtype {
    if k.pairs_with(v) {
        v
    } else {
        k
    }
}

/// Values one row of head dim `d` occupies in a buffer of `dtype`: `d`,
/// or a row format's whole row (576 values for fp8_ds_mla, whatever the
/// head dim reads of it).
pub fn row_width(dtype: Dtype, d: usize) -> usize {
    match dtype.block() {
        Some(b) if dtype.is_row_format() => b.len,
        _ => d,
    }
}

impl Store {
    /// An empty f32 store.
    pub fn empty() -> Store {
        Store {
            buf: KvBuffer::from(&[][..] as &[f32]),
            d: 1,
        }
    }

    /// `x` stored as `dtype`. Quantized types quantize each row (int8 and
    /// fp8e4m3_row, `d`
    /// values), block (q8_0) or value (fp8, with `head_scales[head[i]]`)
    /// with the crate's encoders; non-finite entries (the `fill` of slots
    /// no step may read) become NaN scales (int8, q8_0) or NaN bytes (fp8),
    /// so reading one shows in the output.
    pub fn quantize(dtype: Dtype, x: &[f32], d: usize, head: &[u32], head_scales: &[f32]) -> Store {
        let buf = match dtype {
            Dtype::F32 => KvBuffer::from(x),
            Dtype::F16 => {
                KvBuffer::from(&x.iter().map(|v| f16::from_f32(*v)).collect::<Vec<_>>()[..])
            }
            Dtype::Bf16 => {
                KvBuffer::from(&x.iter().map(|v| bf16::from_f32(*v)).collect::<Vec<_>>()[..])
            }
            Dtype::Int8 => {
                assert_eq!(x.len() % d, 0);
                let mut values = vec![0i8; x.len()];
                let scales: Vec<f32> = x
                    .chunks_exact(d)
                    .zip(values.chunks_exact_mut(d))
                    .map(|(row, q)| {
                        quant::quantize_int8_row(row, q).unwrap_or_else(|_| {
                            q.fill(100);
                            f32::NAN
                        })
                    })
                    .collect();
                KvBuffer::int8(&values, &scales)
            }
            Dtype::Fp8E4M3Row => {
                assert_eq!(x.len() % d, 0);
                let mut values = vec![0u8; x.len()];
                let scales: Vec<f32> = x
                    .chunks_exact(d)
                    .zip(values.chunks_exact_mut(d))
                    .map(|(row, q)| {
                        quant::quantize_fp8_row(row, q).unwrap_or_else(|_| {
                            q.fill(0x7F); // NaN
                            f32::NAN
                        })
                    })
                    .collect();
                KvBuffer::fp8_row(&values, &scales)
            }
            Dtype::Q8_0 => {
                assert_eq!(x.len() % QK8_0, 0);
                let mut blocks = vec![BlockQ8_0::default(); x.len() / QK8_0];
                for (b, xs) in blocks.iter_mut().zip(x.chunks_exact(QK8_0)) {
                    if quant::quantize_q8_0(xs, std::slice::from_mut(b)).is_err() {
                        b.d = f16::NAN;
                        b.qs = [100; QK8_0];
                    }
                }
                KvBuffer::from(&blocks[..])
            }
            Dtype::Fp8E4M3 | Dtype::Fp8E5M2 => {
                let format = if dtype == Dtype::Fp8E4M3 {
                    Fp8::E4M3
                } else {
                    Fp8::E5M2
                };
                let values: Vec<u8> = x
                    .iter()
                    .zip(head)
                    .map(|(&v, &h)| {
                        if v.is_finite() {
                            let sc = head_scales[if head_scales.len() == 1 {
                                0
                            } else {
                                h as usize
                            }];
                            format.encode(v / sc)
                        } else {
                            0x7F // NaN in both formats
                        }
                    })
                    .collect();
                KvBuffer::fp8(format, &values, head_scales)
            }
            Dtype::Fp8DsMla => {
                // The unread values of a row (past the head dim) are
                // quantized as 0, then their bytes set to NaN (fp8 0x7F,
                // bf16 0x7FC0): reading one shows in the output. A row no
                // step may read is NaN throughout.
                let info = dtype.block().expect("a row format");
                let Quants::E4M3Tiles { codes, tail, .. } = info.layout.quants else {
                    unreachable!("fp8_ds_mla's layout")
                };
                let mut bytes = vec![0u8; x.len() / info.len * info.bytes];
                for (b, xs) in bytes
                    .chunks_exact_mut(info.bytes)
                    .zip(x.chunks_exact(info.len))
                {
                    let finite: Vec<f32> = xs
                        .iter()
                        .map(|&v| if v.is_finite() { v } else { 0.0 })
                        .collect();
                    quant::quantize_block_bytes(dtype, &finite, b).unwrap();
                    for i in (0..xs.len()).filter(|&i| !xs[i].is_finite()) {
                        if i < codes {
                            b[i] = 0x7F;
                        } else {
                            let at = tail + 2 * (i - codes);
                            b[at..at + 2].copy_from_slice(&0x7FC0u16.to_le_bytes());
                        }
                    }
                }
                KvBuffer::blocks(dtype, &bytes).unwrap()
            }
            t => {
                let info = t.block().expect("a block format");
                let mut bytes = vec![0u8; x.len() / QK8_0 * info.bytes];
                for (b, xs) in bytes
                    .chunks_exact_mut(info.bytes)
                    .zip(x.chunks_exact(QK8_0))
                {
                    if quant::quantize_block_bytes(t, xs, b).is_err() {
                        b.fill(0x77);
                        let d = info.layout.d;
                        b[d..d + 2].copy_from_slice(&f16::NAN.to_le_bytes());
                    }
                }
                KvBuffer::blocks(t, &bytes).unwrap()
            }
        };
        Store { buf, d }
    }

    /// The elements starting at `offset` (to test misaligned base
    /// pointers; a multiple of [`unit`] for quantized types).
    pub fn data(&self, offset: usize) -> KvData<'_> {
        match self.buf.data() {
            KvData::F32(v) => KvData::F32(&v[offset..]),
            KvData::F16(v) => KvData::F16(&v[offset..]),
            KvData::Bf16(v) => KvData::Bf16(&v[offset..]),
            KvData::Int8 { values, scales } => {
                KvData::int8(&values[offset..], &scales[offset / self.d..])
            }
            KvData::Q8_0(b) => KvData::Q8_0(&b[offset / QK8_0..]),
            KvData::Blocks(b) => {
                let info = b.dtype().block().unwrap();
                let at = offset / info.len * info.bytes;
                KvData::Blocks(Blocks::new(b.dtype(), &b.bytes()[at..]).unwrap())
            }
            KvData::Fp8E4M3 { values, scales } => KvData::Fp8E4M3 {
                values: &values[offset..],
                scales,
            },
            KvData::Fp8E5M2 { values, scales } => KvData::Fp8E5M2 {
                values: &values[offset..],
                scales,
            },
            KvData::Fp8E4M3Row { values, scales } => {
                KvData::fp8_row(&values[offset..], &scales[offset / self.d..])
            }
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }
}
