//! Quantized caches end to end: appended with quantize-on-write and then
//! decoded on every tier against the reference (which dequantizes with
//! the literal decoders), and every piece of bad input a quantized cache
//! adds, rejected with a typed error naming the argument.

mod common;

use common::{check_all, tiers, Layout, Spec};
use gqa_kernels::quant::{BlockQ8_0, Fp8, QK8_0};
use gqa_kernels::reference;
use gqa_kernels::{
    append, Batch, Dtype, Error, KvCache, KvCacheMut, KvData, KvDataMut, KvPages, KvPagesMut,
    KvTensor, KvTensorMut, NewKv, Options, PagedKv, Plan, Shape,
};

fn run(plan: &Plan, batch: &Batch<'_>) -> Result<(), Error> {
    let s = plan.shape();
    let rows = batch.q.len() / s.head_dim_k;
    let mut out = vec![0f32; rows * s.head_dim_v];
    plan.run(batch, &mut out, None, &mut plan.alloc_workspace())
}

/// Every quantized type and every K/V pairing of a quantized type with
/// f16, on every layout, against the reference on every tier.
#[test]
fn quantized_and_mixed_caches_on_every_layout() {
    let layouts = [
        Layout::Blgd,
        Layout::Bgld,
        Layout::Padded,
        Layout::Paged {
            page: 3,
            head_major: false,
        },
        Layout::Paged {
            page: 16,
            head_major: true,
        },
        Layout::Ring { extra: 2 },
    ];
    let quant = Dtype::ALL.into_iter().filter(|d| d.is_quantized());
    let mut seed = 7;
    for layout in layouts {
        for q in quant.clone() {
            let pairs = [(q, q), (q, Dtype::F16), (Dtype::F16, q)];
            for (k, v) in pairs.into_iter().filter(|(k, v)| k.pairs_with(*v)) {
                // Group sizes 5 and 7, lengths that are not multiples of any
                // tile, two query tokens.
                let sh = Shape::new(2, 10, 2, 64, k).with_dtypes(k, v).with_q_len(2);
                let mut s = Spec::new(sh, vec![37, 2]);
                s.layout = layout;
                s.seed = seed;
                seed += 1;
                check_all(&s.build());
                let sh7 = Shape::new(1, 7, 1, 96, k).with_dtypes(k, v);
                let mut s = Spec::new(sh7, vec![65]);
                s.layout = layout;
                s.seed = seed;
                check_all(&s.build());
            }
        }
    }
}

/// Logits around ±1e3 through int8 and fp8 K: the scale folding keeps
/// the softmax finite and exact to the tolerance.
#[test]
fn extreme_logits_through_quantized_keys() {
    for dt in Dtype::ALL.into_iter().filter(|d| d.is_quantized()) {
        let mut s = Spec::new(Shape::new(1, 4, 1, 32, dt), vec![70]);
        s.qk_range = 6.0;
        s.scale = Some(30.0);
        check_all(&s.build());
    }
}

/// The runtime's loop for a quantized cache: append each step's token
/// (quantize on write) into a paged int8 K / fp8 V cache, then decode;
/// every tier matches the reference over the same quantized bytes, and the
/// output is within the quantization error of an f32 cache of the source
/// values.
#[test]
fn append_then_decode_a_quantized_paged_cache() {
    let (g, h, d, page, len) = (2usize, 6usize, 64usize, 4usize, 23usize);
    let pages = len.div_ceil(page) + 2;
    let table: Vec<u32> = (0..len.div_ceil(page) as u32).rev().collect();
    let n = pages * page * g * d;
    let mut kv = vec![0i8; n];
    let mut ks = vec![0f32; n / d];
    let mut vv = vec![0u8; n];
    let vs = [0.004f32, 0.006];
    let mut dense_k = vec![0f32; len * g * d];
    let mut dense_v = vec![0f32; len * g * d];
    let mut x = 1u64;
    let mut rnd = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    for (a, b) in dense_k.iter_mut().zip(dense_v.iter_mut()) {
        *a = rnd();
        *b = rnd();
    }
    for p in 0..len {
        let mut cache = KvCacheMut::Paged {
            k: KvPagesMut::gpd(KvDataMut::int8(&mut kv, &mut ks), page, g, d),
            v: KvPagesMut::pgd(KvDataMut::fp8(Fp8::E4M3, &mut vv, &vs), page, g, d),
            page_size: page,
            block_table: &table,
            blocks_per_seq: table.len(),
        };
        let new = NewKv {
            k: KvData::F32(&dense_k[p * g * d..][..g * d]),
            v: KvData::F32(&dense_v[p * g * d..][..g * d]),
            offsets: &[0, 1],
            kv_heads: g,
            head_dim_k: d,
            head_dim_v: d,
        };
        append(&mut cache, &new, &[p]).unwrap();
    }
    let shape = Shape::new(1, h, g, d, Dtype::Int8).with_dtypes(Dtype::Int8, Dtype::Fp8E4M3);
    let q: Vec<f32> = (0..h * d).map(|_| rnd()).collect();
    let lens = [len];
    let cache = KvCache::Paged(PagedKv {
        k: KvPages::gpd(KvData::int8(&kv, &ks), page, g, d),
        v: KvPages::pgd(KvData::fp8(Fp8::E4M3, &vv, &vs), page, g, d),
        page_size: page,
        block_table: &table,
        blocks_per_seq: table.len(),
    });
    let batch = Batch::new(&q, cache, &lens);
    let want = reference::decode_batch(&shape, None, &batch).unwrap();
    let dense_shape = Shape::new(1, h, g, d, Dtype::F32);
    let dense = reference::decode(
        &dense_shape,
        None,
        &q,
        &KvTensor::blgd(&dense_k[..], len, g, d),
        &KvTensor::blgd(&dense_v[..], len, g, d),
        &lens,
    )
    .unwrap();
    let (tol, _) = reference::tolerance(Dtype::Int8, Dtype::Fp8E4M3);
    for t in tiers() {
        let plan = Plan::new(&shape, &Options::default().with_tier(t)).unwrap();
        let mut out = vec![0f32; h * d];
        plan.run(&batch, &mut out, None, &mut plan.alloc_workspace())
            .unwrap();
        for (i, (o, w)) in out.iter().zip(&want.out).enumerate() {
            assert!(
                tol.accepts(f64::from(*o), *w, 1.0),
                "{t}: out[{i}] = {o}, reference {w}"
            );
            // The quantized cache's answer is close to the f32 cache's:
            // int8 K moves each score by at most scale/2 · |q|₁ / sqrt(d),
            // E4M3 V each value by 2^-4 relative; outputs are averages of V
            // rows in [-1, 1].
            let e = (f64::from(*o) - dense.out[i]).abs();
            assert!(
                e < 0.1,
                "{t}: out[{i}] = {o}, f32 cache {} (error {e})",
                dense.out[i]
            );
        }
    }
}

#[test]
fn scale_arrays_of_the_wrong_length() {
    let (g, d, l) = (2usize, 32usize, 5usize);
    let vals = vec![0i8; g * l * d];
    let scales = vec![1f32; g * l];
    let bytes = vec![0u8; g * l * d];
    let shape = Shape::new(1, 4, g, d, Dtype::Int8).with_dtypes(Dtype::Int8, Dtype::Fp8E5M2);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let q = vec![0f32; 4 * d];
    let lens = [l];
    let good_v = KvTensor::bgld(KvData::fp8(Fp8::E5M2, &bytes, &[1.0, 2.0]), l, g, d);
    let good_k = KvTensor::bgld(KvData::int8(&vals, &scales), l, g, d);
    assert!(run(&plan, &Batch::strided(&q, good_k, good_v, &lens)).is_ok());
    // int8: one scale per row of d values.
    let short = KvTensor::bgld(KvData::int8(&vals, &scales[1..]), l, g, d);
    let e = run(&plan, &Batch::strided(&q, short, good_v, &lens)).unwrap_err();
    assert_eq!(
        e,
        Error::LengthMismatch {
            arg: "k_scales",
            expected: g * l,
            actual: g * l - 1
        }
    );
    // fp8: one scale per KV head, or one; three is neither.
    let three = KvTensor::bgld(KvData::fp8(Fp8::E5M2, &bytes, &[1.0, 2.0, 3.0]), l, g, d);
    let e = run(&plan, &Batch::strided(&q, good_k, three, &lens)).unwrap_err();
    assert_eq!(
        e,
        Error::LengthMismatch {
            arg: "v_scales",
            expected: g,
            actual: 3
        }
    );
    let per_tensor = KvTensor::bgld(KvData::fp8(Fp8::E5M2, &bytes, &[1.5]), l, g, d);
    assert!(run(&plan, &Batch::strided(&q, good_k, per_tensor, &lens)).is_ok());
    // The same check on a paged pool.
    let table = [0u32, 1];
    let pool = |s: &'static str| -> Result<(), Error> {
        let ks = if s == "short" {
            &scales[..3]
        } else {
            &scales[..]
        };
        let cache = KvCache::Paged(PagedKv {
            k: KvPages::gpd(KvData::int8(&vals, ks), 4, g, d),
            v: KvPages::gpd(KvData::fp8(Fp8::E5M2, &bytes, &[1.0]), 4, g, d),
            page_size: 4,
            block_table: &table,
            blocks_per_seq: 2,
        });
        run(&plan, &Batch::new(&q, cache, &lens))
    };
    assert!(matches!(
        pool("short"),
        Err(Error::LengthMismatch {
            arg: "k_scales",
            ..
        })
    ));
}

#[test]
fn q8_0_head_dims_must_be_whole_blocks() {
    for (dk, dv, arg) in [(40, 64, "head_dim_k"), (64, 48, "head_dim_v")] {
        let shape = Shape::new(1, 4, 1, dk, Dtype::Q8_0)
            .with_head_dims(dk, dv)
            .with_dtypes(Dtype::Q8_0, Dtype::Q8_0);
        match Plan::new(&shape, &Options::default()) {
            Err(Error::InvalidDim {
                arg: a,
                value,
                reason,
            }) => {
                assert_eq!((a, value), (arg, if arg == "head_dim_k" { dk } else { dv }));
                assert!(reason.contains("multiple of 32"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Only q8_0 needs it.
    let shape = Shape::new(1, 4, 1, 40, Dtype::Int8);
    assert!(Plan::new(&shape, &Options::default()).is_ok());
}

#[test]
fn strides_that_split_a_scale_row_or_block() {
    let (d, l) = (64usize, 4usize);
    let q = vec![0f32; 2 * d];
    let lens = [l];
    // int8 rows padded by 8 values: the row at offset o would not start a
    // scale row (o / d would name the wrong scale).
    let vals = vec![0i8; l * (d + 8)];
    let scales = vec![1f32; vals.len().div_ceil(d)];
    let shape = Shape::new(1, 2, 1, d, Dtype::Int8);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let k = KvTensor::new(KvData::int8(&vals, &scales), 0, d + 8, d + 8);
    let e = run(&plan, &Batch::strided(&q, k, k, &lens)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidDim {
                arg: "k.token_stride",
                value: 72,
                ..
            }
        ),
        "{e:?}"
    );
    // q8_0 rows padded by 16 values: half a block.
    let blocks = vec![BlockQ8_0::default(); l * (d + 16) / QK8_0 + 1];
    let shape = Shape::new(1, 2, 1, d, Dtype::Q8_0);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let k = KvTensor::new(KvData::Q8_0(&blocks), 0, d + 16, d + 16);
    let e = run(&plan, &Batch::strided(&q, k, k, &lens)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidDim {
                arg: "k.token_stride",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn type_descriptors_must_match_the_plan() {
    let c = Spec::new(
        Shape::new(1, 4, 2, 32, Dtype::F16).with_dtypes(Dtype::F16, Dtype::Int8),
        vec![9],
    )
    .build();
    for (k, v, arg) in [
        (Dtype::Int8, Dtype::Int8, "k"),
        (Dtype::F16, Dtype::Fp8E4M3, "v"),
        (Dtype::F16, Dtype::Q8_0, "v"),
    ] {
        let shape = c.shape.with_dtypes(k, v);
        let plan = Plan::new(&shape, &Options::default()).unwrap();
        let e = run(&plan, &c.batch()).unwrap_err();
        assert!(
            matches!(e, Error::DtypeMismatch { arg: a, expected, .. } if a == arg && (expected == k || expected == v)),
            "{e:?}"
        );
    }
}

/// An int8 K / E4M3 V strided cache of `cap` positions.
struct Small {
    kv: Vec<i8>,
    ks: Vec<f32>,
    vv: Vec<u8>,
}

impl Small {
    fn append(&mut self, new: &NewKv<'_>, pos: usize, vscale: &[f32]) -> Result<(), Error> {
        let (g, d, cap) = (2, 32, 3);
        let mut cache = KvCacheMut::Strided {
            k: KvTensorMut::bgld(KvDataMut::int8(&mut self.kv, &mut self.ks), cap, g, d),
            v: KvTensorMut::bgld(KvDataMut::fp8(Fp8::E4M3, &mut self.vv, vscale), cap, g, d),
            capacity: cap,
        };
        append(&mut cache, new, &[pos])
    }
}

/// Append into a quantized cache: every bad input is rejected before
/// anything is written.
///
/// Long on purpose: a list of cases, not a procedure. Each bad input is
/// a few lines (the call, the error it must give, and that nothing was
/// written), so the function is as long as the list.
#[test]
fn append_bad_input_for_quantized_caches() {
    let (g, d, cap) = (2usize, 32usize, 3usize);
    let mut c = Small {
        kv: vec![7i8; g * cap * d],
        ks: vec![-1f32; g * cap],
        vv: vec![9u8; g * cap * d],
    };
    let before = (c.kv.clone(), c.ks.clone(), c.vv.clone());
    let rows: Vec<f32> = (0..g * d).map(|i| i as f32 * 0.01).collect();
    let offsets = [0usize, 1];
    fn new<'a>(k: KvData<'a>, v: &'a [f32], offsets: &'a [usize]) -> NewKv<'a> {
        NewKv {
            k,
            v: KvData::F32(v),
            offsets,
            kv_heads: 2,
            head_dim_k: 32,
            head_dim_v: 32,
        }
    }
    // New rows of a quantized type.
    let qvals = vec![0i8; g * d];
    let qsc = vec![1f32; g];
    let e = c
        .append(
            &new(KvData::int8(&qvals, &qsc), &rows, &offsets),
            0,
            &[0.1, 0.1],
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedDtype {
                arg: "new.k",
                dtype: Dtype::Int8,
                ..
            }
        ),
        "{e:?}"
    );
    // A NaN bound for a quantized row.
    let mut bad = rows.clone();
    bad[37] = f32::NAN;
    let e = c
        .append(&new(KvData::F32(&bad), &rows, &offsets), 0, &[0.1, 0.1])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                arg: "new.k",
                index: 37,
                ..
            }
        ),
        "{e:?}"
    );
    // fp8 scales: zero, negative or NaN; or the wrong count.
    let good = new(KvData::F32(&rows), &rows, &offsets);
    for s in [0.0f32, -1.0, f32::NAN] {
        let e = c.append(&good, 0, &[0.1, s]).unwrap_err();
        assert!(matches!(e, Error::InvalidScale { .. }), "{s}: {e:?}");
    }
    let e = c.append(&good, 0, &[0.1, 0.1, 0.1]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                arg: "v_scales",
                ..
            }
        ),
        "{e:?}"
    );
    // Beyond the capacity.
    let e = c.append(&good, cap, &[0.1, 0.1]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::AppendBeyondCapacity {
                seq: 0,
                position: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        (c.kv.clone(), c.ks.clone(), c.vv.clone()),
        before,
        "a rejected append wrote"
    );
    // The good append goes through and computes the row scales.
    c.append(&good, 1, &[0.1, 0.1]).unwrap();
    assert!(c.ks[1] > 0.0 && c.ks[cap + 1] > 0.0, "{:?}", c.ks);

    // q8_0 rows of 40 values, and a page outside the pool.
    let mut kb = vec![BlockQ8_0::default(); 8];
    let mut vb = vec![BlockQ8_0::default(); 8];
    let table = [5u32];
    let mut cache = KvCacheMut::Paged {
        k: KvPagesMut::gpd(KvDataMut::Q8_0(&mut kb), 2, 1, 32),
        v: KvPagesMut::gpd(KvDataMut::Q8_0(&mut vb), 2, 1, 32),
        page_size: 2,
        block_table: &table,
        blocks_per_seq: 1,
    };
    let r40: Vec<f32> = vec![0.5; 40];
    let n40 = NewKv {
        k: KvData::F32(&r40),
        v: KvData::F32(&r40),
        offsets: &offsets,
        kv_heads: 1,
        head_dim_k: 40,
        head_dim_v: 40,
    };
    let e = append(&mut cache, &n40, &[0]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidDim {
                arg: "head_dim_k",
                value: 40,
                ..
            }
        ),
        "{e:?}"
    );
    let r32: Vec<f32> = vec![0.5; 32];
    let n32 = NewKv {
        k: KvData::F32(&r32),
        v: KvData::F32(&r32),
        head_dim_k: 32,
        head_dim_v: 32,
        ..n40
    };
    let e = append(&mut cache, &n32, &[0]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::PageOutOfRange {
                arg: "k",
                page: 5,
                ..
            }
        ),
        "{e:?}"
    );
}
