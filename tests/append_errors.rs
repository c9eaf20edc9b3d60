//! `append`'s and `append_latent`'s bad input: every bad argument is a typed error naming it, and
//! nothing is written; values beyond the target type's range convert as
//! IEEE does. (The placement and conversion suite is `tests/append.rs`.)

use gqa_kernels::{
    append, append_latent, f16, quant, Error, KvCacheMut, KvData, KvDataMut, KvPagesMut,
    KvTensorMut, LatentCacheMut, NewKv,
};

/// A small strided target and a one-token source for the error tests.
fn setup() -> (Vec<f16>, Vec<f16>, Vec<f32>) {
    (
        vec![f16::NAN; 2 * 4 * 2 * 8],
        vec![f16::NAN; 2 * 4 * 2 * 8],
        vec![1.0f32; 2 * 2 * 8],
    )
}

/// Every bad argument of `append` is an error and the cache is untouched.
///
/// Long on purpose: a list of cases, not a procedure. Each bad input is
/// a few lines (the call, the error it must give, and that nothing was
/// written), so the function is as long as the list.
#[test]
fn bad_input_is_rejected_before_any_write() {
    let (mut k, mut v, src) = setup();
    // NaN marks never-written slots; compare bits (NaN != NaN).
    let bits = |x: &[f16]| x.iter().map(|e| e.to_bits()).collect::<Vec<u16>>();
    let before = (bits(&k), bits(&v));
    let offsets = [0usize, 1, 2];
    let new = NewKv {
        k: KvData::F32(&src),
        v: KvData::F32(&src),
        offsets: &offsets,
        kv_heads: 2,
        head_dim_k: 8,
        head_dim_v: 8,
    };
    fn strided<'a>(
        k: &'a mut [f16],
        v: &'a mut [f16],
        capacity: usize,
    ) -> impl FnMut(&NewKv<'_>, &[usize]) -> Result<(), Error> + 'a {
        let mut c = KvCacheMut::Strided {
            k: KvTensorMut::bgld(k, 4, 2, 8),
            v: KvTensorMut::bgld(v, 4, 2, 8),
            capacity,
        };
        move |new: &NewKv<'_>, pos: &[usize]| append(&mut c, new, pos)
    }
    // Sequence 1 would write position 4 of 4.
    let err = strided(&mut k, &mut v, 4)(&new, &[0, 4]).unwrap_err();
    assert_eq!(
        err,
        Error::AppendBeyondCapacity {
            seq: 1,
            position: 4,
            new_tokens: 1,
            capacity: 4
        }
    );
    // A capacity the buffer does not have: rows outside it.
    let err = strided(&mut k, &mut v, 9)(&new, &[0, 5]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfBounds {
                arg: "k",
                seq: 1,
                ..
            }
        ),
        "{err:?}"
    );
    // Sources of the wrong length, offsets that do not start at 0 or that
    // decrease, a zero head dim.
    let short = NewKv {
        k: KvData::F32(&src[1..]),
        ..new
    };
    assert!(matches!(
        strided(&mut k, &mut v, 4)(&short, &[0, 0]).unwrap_err(),
        Error::LengthMismatch { arg: "new.k", .. }
    ));
    let bad = [1usize, 1, 2];
    let shifted = NewKv {
        offsets: &bad,
        ..new
    };
    assert!(matches!(
        strided(&mut k, &mut v, 4)(&shifted, &[0, 0]).unwrap_err(),
        Error::InvalidQOffsets { index: 0, .. }
    ));
    let down = [0usize, 2, 1];
    let decreasing = NewKv {
        offsets: &down,
        ..new
    };
    assert!(matches!(
        strided(&mut k, &mut v, 4)(&decreasing, &[0, 0]).unwrap_err(),
        Error::InvalidQOffsets { index: 2, .. }
    ));
    let zero = NewKv {
        head_dim_v: 0,
        ..new
    };
    assert!(matches!(
        strided(&mut k, &mut v, 4)(&zero, &[0, 0]).unwrap_err(),
        Error::InvalidDim {
            arg: "head_dim_v",
            ..
        }
    ));
    // Offsets for a different number of sequences than positions.
    assert!(matches!(
        strided(&mut k, &mut v, 4)(&new, &[0]).unwrap_err(),
        Error::LengthMismatch {
            arg: "new.offsets",
            ..
        }
    ));
    assert_eq!((bits(&k), bits(&v)), before, "a rejected append wrote");

    // Paged: a page outside the pool, a short block table, page size 0.
    let table = [0u32, 9];
    let paged = |k: &mut Vec<f16>, v: &mut Vec<f16>, table: &[u32], page: usize| {
        let (kp, vp): (&mut [f16], &mut [f16]) = (k, v);
        let mut c = KvCacheMut::Paged {
            k: KvPagesMut::gpd(kp, 4, 2, 8),
            v: KvPagesMut::gpd(vp, 4, 2, 8),
            page_size: page,
            block_table: table,
            blocks_per_seq: 1,
        };
        append(&mut c, &new, &[0, 0])
    };
    assert!(matches!(
        paged(&mut k, &mut v, &table, 4).unwrap_err(),
        Error::PageOutOfRange {
            arg: "k",
            seq: 1,
            page: 9,
            pages: 2,
            ..
        }
    ));
    assert!(matches!(
        paged(&mut k, &mut v, &table[..1], 4).unwrap_err(),
        Error::BlockTableTooShort { seq: 1, .. }
    ));
    assert!(matches!(
        paged(&mut k, &mut v, &table, 0).unwrap_err(),
        Error::InvalidDim {
            arg: "page_size",
            ..
        }
    ));
    // Ring: more new tokens than slots.
    let two = [0usize, 0, 2];
    let src2 = vec![1.0f32; 2 * 2 * 8];
    let ring_new = NewKv {
        k: KvData::F32(&src2),
        v: KvData::F32(&src2),
        offsets: &two,
        ..new
    };
    let mut c = KvCacheMut::Ring {
        k: KvTensorMut::bgld(&mut k[..], 1, 2, 8),
        v: KvTensorMut::bgld(&mut v[..], 1, 2, 8),
        capacity: 1,
    };
    assert_eq!(
        append(&mut c, &ring_new, &[0, 100]).unwrap_err(),
        Error::AppendBeyondCapacity {
            seq: 1,
            position: 100,
            new_tokens: 2,
            capacity: 1
        }
    );
    assert_eq!((bits(&k), bits(&v)), before, "a rejected append wrote");
}

/// Values beyond f16's range become ±inf and NaN stays NaN (IEEE
/// conversion), as documented.
#[test]
fn out_of_range_values_convert_as_ieee() {
    let mut k = [f16::ZERO; 4];
    let mut v = [f16::ZERO; 4];
    let src = [1e6f32, -1e6, f32::NAN, 65504.0];
    let offsets = [0usize, 1];
    let mut c = KvCacheMut::Strided {
        k: KvTensorMut::bgld(&mut k[..], 1, 1, 4),
        v: KvTensorMut::bgld(&mut v[..], 1, 1, 4),
        capacity: 1,
    };
    let new = NewKv {
        k: KvData::F32(&src),
        v: KvData::F32(&src),
        offsets: &offsets,
        kv_heads: 1,
        head_dim_k: 4,
        head_dim_v: 4,
    };
    append(&mut c, &new, &[0]).unwrap();
    assert_eq!(k[0], f16::INFINITY);
    assert_eq!(k[1], f16::NEG_INFINITY);
    assert!(k[2].is_nan());
    assert_eq!(k[3], f16::MAX);
}

/// A latent cache's append takes K rows only (V rows are an error naming
/// `new.v`), shares `append`'s checks, names its pool `k` / `k_pages`, and
/// writes nothing when it refuses; into an int8 latent cache it writes one
/// scale per row.
///
/// Long on purpose: a list of cases, as in the test above.
#[test]
fn latent_append_rejects_v_rows_and_checks_like_append() {
    let mut kv = vec![f16::NAN; 2 * 4 * 8];
    let bits = |x: &[f16]| x.iter().map(|e| e.to_bits()).collect::<Vec<u16>>();
    let before = bits(&kv);
    let src = vec![1.0f32; 2 * 8];
    let offsets = [0usize, 1, 2];
    let new = NewKv {
        k: KvData::F32(&src),
        v: KvData::F32(&[]),
        offsets: &offsets,
        kv_heads: 1,
        head_dim_k: 8,
        head_dim_v: 0,
    };
    fn strided<'a>(
        kv: &'a mut [f16],
        capacity: usize,
    ) -> impl FnMut(&NewKv<'_>, &[usize]) -> Result<(), Error> + 'a {
        let mut c = LatentCacheMut::Strided {
            kv: KvTensorMut::bgld(kv, 4, 1, 8),
            capacity,
        };
        move |new: &NewKv<'_>, pos: &[usize]| append_latent(&mut c, new, pos)
    }
    // V rows given: refused (a latent cache's V is its K rows).
    let with_v = NewKv {
        v: KvData::F32(&src),
        ..new
    };
    assert_eq!(
        strided(&mut kv, 4)(&with_v, &[0, 0]).unwrap_err(),
        Error::LengthMismatch {
            arg: "new.v",
            expected: 0,
            actual: 16
        }
    );
    // Past the capacity, rows outside the buffer, a short source, a zero
    // head dim.
    assert!(matches!(
        strided(&mut kv, 4)(&new, &[0, 4]).unwrap_err(),
        Error::AppendBeyondCapacity { seq: 1, .. }
    ));
    assert!(matches!(
        strided(&mut kv, 9)(&new, &[0, 5]).unwrap_err(),
        Error::OutOfBounds {
            arg: "k",
            seq: 1,
            ..
        }
    ));
    let short = NewKv {
        k: KvData::F32(&src[1..]),
        ..new
    };
    assert!(matches!(
        strided(&mut kv, 4)(&short, &[0, 0]).unwrap_err(),
        Error::LengthMismatch { arg: "new.k", .. }
    ));
    let zero = NewKv {
        head_dim_k: 0,
        ..new
    };
    assert!(matches!(
        strided(&mut kv, 4)(&zero, &[0, 0]).unwrap_err(),
        Error::InvalidDim {
            arg: "head_dim_k",
            ..
        }
    ));
    // A paged latent pool: a page outside it.
    let table = [0u32, 7];
    let mut c = LatentCacheMut::Paged {
        kv: KvPagesMut::gpd(&mut kv[..], 4, 1, 8),
        page_size: 4,
        block_table: &table,
        blocks_per_seq: 1,
    };
    assert!(matches!(
        append_latent(&mut c, &new, &[0, 0]).unwrap_err(),
        Error::PageOutOfRange {
            arg: "k",
            seq: 1,
            page: 7,
            ..
        }
    ));
    assert_eq!(bits(&kv), before, "a rejected append wrote");
    // Accepted: head_dim_v is not read; each row lands once.
    strided(&mut kv, 4)(&new, &[1, 2]).unwrap();
    let ones = |r: &[f16]| r.iter().all(|&x| x == f16::ONE);
    assert!(ones(&kv[8..16]) && ones(&kv[48..56]));
    let written = kv.iter().filter(|x| !x.is_nan()).count();
    assert_eq!(written, 16);
    // int8: values and one scale per row, as the crate's encoder gives;
    // a NaN row is refused before any write.
    let mut values = vec![0i8; 2 * 4 * 8];
    let mut scales = vec![f32::NAN; 2 * 4];
    let ramp: Vec<f32> = (0..16).map(|i| i as f32 / 4.0 - 2.0).collect();
    let rows = NewKv {
        k: KvData::F32(&ramp),
        ..new
    };
    let mut c = LatentCacheMut::Strided {
        kv: KvTensorMut::bgld(KvDataMut::int8(&mut values, &mut scales), 4, 1, 8),
        capacity: 4,
    };
    let mut bad = ramp.clone();
    bad[11] = f32::NAN;
    let nan_rows = NewKv {
        k: KvData::F32(&bad),
        ..new
    };
    assert!(matches!(
        append_latent(&mut c, &nan_rows, &[0, 0]).unwrap_err(),
        Error::NonFinite {
            arg: "new.k",
            index: 11,
            ..
        }
    ));
    append_latent(&mut c, &rows, &[0, 3]).unwrap();
    for (seq, pos) in [(0usize, 0usize), (1, 3)] {
        let mut q = [0i8; 8];
        let scale = quant::quantize_int8_row(&ramp[seq * 8..][..8], &mut q).unwrap();
        let row = (seq * 4 + pos) * 8;
        assert_eq!(values[row..row + 8], q, "seq {seq}");
        assert_eq!(scales[row / 8].to_bits(), scale.to_bits(), "seq {seq}");
    }
    assert_eq!(scales.iter().filter(|s| !s.is_nan()).count(), 2);
}
