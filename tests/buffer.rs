//! `KvBuffer`, the owned cache buffer: what it stores is what the crate's
//! encoders make of the input, its views see exactly that, it repeats
//! rows with their scales, and bad input is a typed error naming the
//! argument.

use gqa_kernels::quant::{self, BlockQ8_0, Fp8, QK8_0};
use gqa_kernels::{bf16, f16, Dtype, Error, KvBuffer, KvData, KvDataMut};

fn ramp(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0)
        .collect()
}

#[test]
fn from_f32_stores_what_the_encoders_make() {
    let (d, rows) = (64, 5);
    let x = ramp(d * rows);
    // fp8_ds_mla's 576-value rows: `tests/ds_mla.rs`.
    for dtype in Dtype::ALL.into_iter().filter(|&t| t != Dtype::Fp8DsMla) {
        let b = KvBuffer::from_f32(dtype, &x, d).unwrap();
        assert_eq!((b.dtype(), b.len()), (dtype, x.len()), "{dtype}");
        match b.data() {
            KvData::F32(v) => assert_eq!(v, &x[..]),
            KvData::F16(v) => assert!(v.iter().zip(&x).all(|(a, b)| *a == f16::from_f32(*b))),
            KvData::Bf16(v) => assert!(v.iter().zip(&x).all(|(a, b)| *a == bf16::from_f32(*b))),
            KvData::Int8 { values, scales } => {
                assert_eq!(scales.len(), rows);
                for r in 0..rows {
                    let mut q = vec![0i8; d];
                    let s = quant::quantize_int8_row(&x[r * d..][..d], &mut q).unwrap();
                    assert_eq!((&values[r * d..][..d], scales[r]), (&q[..], s));
                }
            }
            KvData::Q8_0(blocks) => {
                let mut q = vec![BlockQ8_0::default(); x.len() / QK8_0];
                quant::quantize_q8_0(&x, &mut q).unwrap();
                assert_eq!(blocks, &q[..]);
            }
            KvData::Blocks(blocks) => {
                let mut q = vec![0u8; blocks.bytes().len()];
                quant::quantize_block_bytes(dtype, &x, &mut q).unwrap();
                assert_eq!(blocks.bytes(), &q[..]);
                assert_eq!(
                    blocks.bytes().len(),
                    x.len() / 32 * dtype.block().unwrap().bytes
                );
            }
            KvData::Fp8E4M3 { values, scales } | KvData::Fp8E5M2 { values, scales } => {
                let f = if dtype == Dtype::Fp8E4M3 {
                    Fp8::E4M3
                } else {
                    Fp8::E5M2
                };
                // One per-tensor scale: the largest |x| lands on the format's
                // largest value.
                assert_eq!(scales, &[2.0 / f.max()][..]);
                let mut q = vec![0u8; x.len()];
                quant::quantize_fp8(&x, scales[0], f, &mut q).unwrap();
                assert_eq!(values, &q[..]);
            }
            KvData::Fp8E4M3Row { values, scales } => {
                assert_eq!(scales.len(), rows);
                for r in 0..rows {
                    let mut q = vec![0u8; d];
                    let s = quant::quantize_fp8_row(&x[r * d..][..d], &mut q).unwrap();
                    assert_eq!((&values[r * d..][..d], scales[r]), (&q[..], s));
                }
            }
        }
    }
}

#[test]
fn fp8_scales_per_head() {
    let x = ramp(4 * 8);
    // Two heads of 8 values, [L, G, D]: value i is head (i / 8) % 2.
    let b = KvBuffer::fp8_from_f32(Fp8::E5M2, &x, vec![0.5, 0.25], |i| (i / 8) % 2).unwrap();
    let KvData::Fp8E5M2 { values, scales } = b.data() else {
        panic!("an fp8 buffer")
    };
    assert_eq!(scales, &[0.5, 0.25][..]);
    for (i, (&q, &v)) in values.iter().zip(&x).enumerate() {
        let s = [0.5, 0.25][(i / 8) % 2];
        assert_eq!(q, Fp8::E5M2.encode(v / s), "value {i}");
    }
    let e = KvBuffer::fp8_from_f32(Fp8::E4M3, &x, vec![1.0], |i| i % 2).unwrap_err();
    assert!(
        matches!(e, Error::OutOfBounds { arg: "scales", .. }),
        "{e:?}"
    );
    let e = KvBuffer::fp8_from_f32(Fp8::E4M3, &x, vec![0.0], |_| 0).unwrap_err();
    assert!(
        matches!(e, Error::InvalidParam { arg: "scales", .. }),
        "{e:?}"
    );
    let e = KvBuffer::fp8_from_f32(Fp8::E4M3, &x, vec![], |_| 0).unwrap_err();
    assert!(
        matches!(e, Error::InvalidParam { arg: "scales", .. }),
        "{e:?}"
    );
}

#[test]
fn repeat_keeps_rows_and_their_scales() {
    let (d, rows) = (32, 3);
    let x = ramp(d * rows);
    // fp8_ds_mla's 576-value rows: `tests/ds_mla.rs`.
    for dtype in Dtype::ALL.into_iter().filter(|&t| t != Dtype::Fp8DsMla) {
        let b = KvBuffer::from_f32(dtype, &x, d).unwrap();
        let r = b.repeat_to(d * 7).unwrap();
        assert_eq!(r.len(), d * 7, "{dtype}");
        for row in 0..7 {
            let src = row % rows;
            let same = match (b.data(), r.data()) {
                (KvData::F32(a), KvData::F32(c)) => a[src * d..][..d] == c[row * d..][..d],
                (KvData::F16(a), KvData::F16(c)) => a[src * d..][..d] == c[row * d..][..d],
                (KvData::Bf16(a), KvData::Bf16(c)) => a[src * d..][..d] == c[row * d..][..d],
                (
                    KvData::Int8 {
                        values: a,
                        scales: sa,
                    },
                    KvData::Int8 {
                        values: c,
                        scales: sc,
                    },
                ) => a[src * d..][..d] == c[row * d..][..d] && sa[src] == sc[row],
                (
                    KvData::Fp8E4M3Row {
                        values: a,
                        scales: sa,
                    },
                    KvData::Fp8E4M3Row {
                        values: c,
                        scales: sc,
                    },
                ) => a[src * d..][..d] == c[row * d..][..d] && sa[src] == sc[row],
                (KvData::Q8_0(a), KvData::Q8_0(c)) => a[src] == c[row],
                (KvData::Blocks(a), KvData::Blocks(c)) => {
                    let n = d / 32 * dtype.block().unwrap().bytes;
                    a.bytes()[src * n..][..n] == c.bytes()[row * n..][..n]
                }
                (
                    KvData::Fp8E4M3 {
                        values: a,
                        scales: sa,
                    },
                    KvData::Fp8E4M3 {
                        values: c,
                        scales: sc,
                    },
                )
                | (
                    KvData::Fp8E5M2 {
                        values: a,
                        scales: sa,
                    },
                    KvData::Fp8E5M2 {
                        values: c,
                        scales: sc,
                    },
                ) => a[src * d..][..d] == c[row * d..][..d] && sa == sc,
                _ => false,
            };
            assert!(same, "{dtype} row {row}");
        }
    }
    let e = KvBuffer::from_f32(Dtype::Int8, &x, d)
        .unwrap()
        .repeat_to(d + 1)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidDim { arg: "len", .. }), "{e:?}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let e = KvBuffer::zeros(Dtype::F16, 8, 0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidDim {
                arg: "head_dim",
                ..
            }
        ),
        "{e:?}"
    );
    let e = KvBuffer::zeros(Dtype::Int8, 100, 64).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidDim {
                arg: "len",
                value: 100,
                ..
            }
        ),
        "{e:?}"
    );
    let e = KvBuffer::zeros(Dtype::Q8_0, 48, 48).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidDim {
                arg: "len",
                value: 48,
                ..
            }
        ),
        "{e:?}"
    );
    let mut x = ramp(64);
    x[9] = f32::NAN;
    // (fp8_ds_mla: `tests/ds_mla.rs`.)
    for dtype in Dtype::ALL
        .into_iter()
        .filter(|&t| t.is_quantized() && t != Dtype::Fp8DsMla)
    {
        let e = KvBuffer::from_f32(dtype, &x, 32).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NonFinite {
                    arg: "x",
                    index: 9,
                    ..
                }
            ),
            "{dtype}: {e:?}"
        );
    }
    // Float types keep a NaN as it is.
    assert!(KvBuffer::from_f32(Dtype::F16, &x, 32).is_ok());
    let e = KvBuffer::zeros(Dtype::F16, 8, 8)
        .unwrap()
        .with_scales(vec![1.0])
        .unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedDtype { arg: "self", .. }),
        "{e:?}"
    );
    let e = KvBuffer::zeros(Dtype::Fp8E4M3, 8, 8)
        .unwrap()
        .with_scales(vec![f32::INFINITY]);
    assert!(
        matches!(e, Err(Error::InvalidParam { arg: "scales", .. })),
        "{e:?}"
    );
}

#[test]
fn writes_through_data_mut_are_seen_by_data() {
    let mut b = KvBuffer::zeros(Dtype::Int8, 4 * 16, 16).unwrap();
    if let KvDataMut::Int8 { values, scales } = b.data_mut() {
        values[17] = -5;
        scales[1] = 0.5;
    }
    let KvData::Int8 { values, scales } = b.data() else {
        panic!("an int8 buffer")
    };
    assert_eq!((values[17], scales[1], values[16]), (-5, 0.5, 0));
    let c = b.clone();
    assert_eq!(b, c);
}
