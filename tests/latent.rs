//! Latent caches (multi-head latent attention, `KvCache::latent`): one row
//! per position serves as K and, by its leading `Dv` values, as V. Every
//! tier and unit, every layout (pages of 1 to 256 positions), the cache
//! types MLA caches use (DeepSeek-V3.2's fp8_ds_mla rows among them), KV splits, ragged and multi-token batches and the
//! variants, against the f64 reference (which reads V as K's leading
//! values); the same step with V given as a separate copy of K bit for
//! bit; what the declaration needs (`Dv <= Dk`) and what it counts; and
//! the C ABI's flag.

mod common;

use common::{
    assert_same_bits, capi_batch, capi_run, capi_strided_cache, capi_workspace, check_all,
    check_thread_invariance, Layout, Mask, MaskKind, Spec,
};
use gqa_kernels::{
    Batch, Dtype, Error, KvBuffer, KvCache, KvPages, KvTensor, Options, PagedKv, Plan, RingKv,
    Shape,
};

fn layouts() -> [Layout; 8] {
    [
        Layout::Blgd,
        Layout::Bgld,
        Layout::Padded,
        Layout::Paged {
            page: 1,
            head_major: false,
        },
        Layout::Paged {
            page: 16,
            head_major: true,
        },
        Layout::Paged {
            page: 256,
            head_major: false,
        },
        Layout::Paged {
            page: 7,
            head_major: false,
        },
        Layout::Ring { extra: 3 },
    ]
}

/// An MLA-like shape (one KV head, `Dk = Dv + rope`) and odd ones, in the
/// cache types MLA caches use, every layout, lengths 0, 1 and across a KV
/// split (517 with splits of 512) and pages; the variants spread over the
/// cases.
#[test]
fn latent_caches_match_the_reference_on_every_tier_unit_and_layout() {
    // (H, G, Dk, Dv, q_len): MLA-like (scaled down), r = 5 with Dk 67 / Dv
    // 37, r = 7 with Dv = Dk, two KV heads with four query tokens.
    let shapes = [
        (16usize, 1usize, 576usize, 512usize, 1usize),
        (5, 1, 67, 37, 1),
        (7, 1, 96, 96, 2),
        (8, 2, 96, 64, 4),
    ];
    let dtypes = [
        Dtype::Bf16,
        Dtype::F16,
        Dtype::F32,
        Dtype::Int8,
        Dtype::Fp8E4M3,
        Dtype::Q8_0,
        Dtype::Fp8E4M3Row,
        Dtype::Fp8DsMla,
    ];
    let mut n = 0u64;
    for (si, &(h, g, dk, dv, q_len)) in shapes.iter().enumerate() {
        for (di, &dt) in dtypes.iter().enumerate() {
            if !dt.fits_head_dim(dk) || !dt.fits_head_dim(dv) {
                continue;
            }
            let layout = layouts()[(si * 3 + di) % layouts().len()];
            let shape = Shape::new(2, h, g, dk, dt)
                .with_head_dims(dk, dv)
                .with_q_len(q_len)
                .with_max_kv_len(1024);
            // The long MLA shape reads 517 rows of 576 in f64 per head.
            let lens = if si == 0 { vec![517, 1] } else { vec![517, 0] };
            let lens = lens
                .into_iter()
                .map(|l| if l == 0 { 0 } else { l.max(q_len) });
            let mut s = Spec::new(shape, lens.collect());
            s.layout = layout;
            s.seed = 700 + n;
            s.latent = true;
            match n % 6 {
                1 => s.window = Some(40),
                2 => s.sinks = Some((0..h).map(|x| 0.5 * x as f32 - 1.0).collect()),
                3 => {
                    s.softcap = Some(30.0);
                    s.mask = Some(Mask {
                        kind: MaskKind::Range(0, 64),
                        value: f32::NEG_INFINITY,
                    });
                }
                4 => s.tree = q_len > 1,
                5 => s.offset = 1,
                _ => {}
            }
            let case = s.build();
            assert!(
                case.cache().is_latent(),
                "the case must declare its cache latent"
            );
            eprintln!("case {n}: {dt} {layout:?} H {h} G {g} Dk {dk} Dv {dv} q_len {q_len}");
            check_all(&case);
            n += 1;
        }
    }
}

/// A latent step is bitwise the same step with V given as a separate
/// buffer holding a copy of K (same strides): each tier and unit, one and
/// two threads, head-major, token-major and paged. Only where V comes from
/// differs (and the hints, which do not change results).
#[test]
fn latent_is_bitwise_a_separate_copy_of_k() {
    for (i, layout) in [
        Layout::Bgld,
        Layout::Blgd,
        Layout::Paged {
            page: 16,
            head_major: false,
        },
    ]
    .into_iter()
    .enumerate()
    {
        for (dt, dv) in [
            (Dtype::Bf16, 512),
            (Dtype::F16, 512),
            (Dtype::Int8, 576),
            (Dtype::Fp8DsMla, 512),
        ] {
            let shape = Shape::new(1, 16, 1, 576, dt)
                .with_head_dims(576, dv)
                .with_max_kv_len(1024);
            let mut s = Spec::new(shape, vec![700]);
            s.layout = layout;
            s.seed = 40 + i as u64;
            s.latent = true;
            let latent = s.build();
            let mut copy = latent.clone();
            copy.latent = false;
            assert!(latent.cache().is_latent());
            assert!(!copy.cache().is_latent(), "a copy of K is not K");
            assert_same_bits(&latent, &copy, &format!("{dt}: latent vs a copy of K"));
        }
    }
}

/// Thread invariance over a latent cache with several KV splits.
#[test]
fn latent_results_do_not_depend_on_threads() {
    let shape = Shape::new(2, 16, 1, 576, Dtype::Bf16)
        .with_head_dims(576, 512)
        .with_max_kv_len(2048);
    let mut s = Spec::new(shape, vec![1500, 300]);
    s.latent = true;
    s.layout = Layout::Paged {
        page: 64,
        head_major: false,
    };
    check_thread_invariance(&s.build(), &[2, 3]);
}

/// What declares a cache latent: the V view is the K view (the
/// constructors build that); a copy of K, or K's buffer with other
/// strides, is a separate V.
#[test]
fn the_constructors_declare_a_latent_cache() {
    let (l, d) = (8usize, 64usize);
    let x: Vec<f32> = (0..l * d).map(|i| i as f32).collect();
    let y = x.clone();
    let t = KvTensor::bgld(&x[..], l, 1, d);
    assert!(KvCache::latent(t).is_latent());
    assert!(!KvCache::strided(t, KvTensor::bgld(&y[..], l, 1, d)).is_latent());
    assert!(!KvCache::strided(t, KvTensor::new(&x[..], l * d, d + 1, 0)).is_latent());
    let pages = KvPages::pgd(&x[..], 4, 1, d);
    let table = [1u32, 0];
    let paged = PagedKv::latent(pages, 4, &table, 2);
    assert!(KvCache::Paged(paged).is_latent());
    assert!(!KvCache::Paged(PagedKv {
        v: KvPages::pgd(&y[..], 4, 1, d),
        ..paged
    })
    .is_latent());
    let first = [3usize];
    assert!(KvCache::Ring(RingKv::latent(t, l, &first)).is_latent());
    // int8: the same values with other scales are another buffer.
    let vals = vec![1i8; l * d];
    let (s1, s2) = (vec![1.0f32; l], vec![1.0f32; l]);
    let a = KvTensor::bgld(gqa_kernels::KvData::int8(&vals, &s1), l, 1, d);
    let b = KvTensor::bgld(gqa_kernels::KvData::int8(&vals, &s2), l, 1, d);
    assert!(KvCache::latent(a).is_latent());
    assert!(!KvCache::strided(a, b).is_latent());
}

/// `Dv > Dk` cannot be the leading values of a K row: the step and the
/// reference refuse it, naming `head_dim_v`; the bytes a latent step reads
/// are its K rows, once.
#[test]
fn latent_needs_dv_at_most_dk_and_counts_rows_once() {
    let (l, dk) = (40usize, 64usize);
    let k = KvBuffer::from_f32(Dtype::Bf16, &vec![0.5f32; 2 * l * dk], dk).unwrap();
    let q = vec![0.25f32; 4 * dk];
    let lens = [l];
    let cache = KvCache::latent(KvTensor::bgld(k.data(), l, 2, dk));
    for dv in [dk + 1, 2 * dk] {
        let shape = Shape::new(1, 4, 2, dk, Dtype::Bf16).with_head_dims(dk, dv);
        let plan = Plan::new(&shape, &Options::default()).unwrap();
        let mut out = vec![0f32; shape.out_elems()];
        let err = plan
            .run(
                &Batch::new(&q, cache, &lens),
                &mut out,
                None,
                &mut plan.alloc_workspace(),
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidDim { arg: "head_dim_v", value, .. } if value == dv),
            "{err:?}"
        );
        assert!(
            gqa_kernels::reference::decode_batch(&shape, None, &Batch::new(&q, cache, &lens))
                .is_err()
        );
    }
    let shape = Shape::new(1, 4, 2, dk, Dtype::Bf16).with_head_dims(dk, 48);
    assert_eq!(cache.kv_bytes(&shape, &lens), l * 2 * dk * 2);
    let v = KvBuffer::from_f32(Dtype::Bf16, &vec![0.5f32; 2 * l * 48], 48).unwrap();
    let separate = KvCache::strided(
        KvTensor::bgld(k.data(), l, 2, dk),
        KvTensor::bgld(v.data(), l, 2, 48),
    );
    assert_eq!(separate.kv_bytes(&shape, &lens), shape.kv_bytes(&lens));
    assert_eq!(shape.kv_bytes(&lens), l * 2 * (dk + 48) * 2);
}

/// The C ABI's `gqa_cache.latent`: 1 reads V from K (whatever `v` holds,
/// NULL here) and gives the Rust latent step's bits; other values are
/// refused; a cache struct of the first version (without the field) reads
/// it as 0; `gqa_append` writes a token's row once into `k` (and refuses
/// V rows).
///
/// Long on purpose: the C structs are filled field by field, as a C host
/// writes them, before the calls; the batch and the strided cache start
/// from `common::capi_batch` and `common::capi_strided_cache` (every
/// optional field NULL or 0).
#[test]
fn c_abi_latent_flag() {
    use gqa_kernels::capi::*;
    let (h, dk, dv, l) = (16usize, 576usize, 512usize, 300usize);
    let shape = gqa_shape {
        struct_size: size_of::<gqa_shape>(),
        batch: 1,
        heads: h,
        kv_heads: 1,
        head_dim_k: dk,
        head_dim_v: dv,
        q_len: 1,
        max_kv_len: l,
        k_dtype: Dtype::Bf16.abi_code(),
        v_dtype: Dtype::Bf16.abi_code(),
    };
    let mut plan: *mut gqa_plan = std::ptr::null_mut();
    // SAFETY: a valid shape and out-pointer (NULL options: defaults).
    assert_eq!(
        unsafe { gqa_plan_create(&shape, std::ptr::null(), &mut plan) },
        GQA_OK
    );
    let kf: Vec<f32> = (0..l * dk)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut k: Vec<gqa_kernels::bf16> =
        kf.iter().map(|&x| gqa_kernels::bf16::from_f32(x)).collect();
    let q: Vec<f32> = (0..h * dk)
        .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let lens = [l];
    // The Rust step over the same buffer, declared latent.
    let rs_shape = Shape::new(1, h, 1, dk, Dtype::Bf16)
        .with_head_dims(dk, dv)
        .with_max_kv_len(l);
    let rs_plan = Plan::new(&rs_shape, &Options::default()).unwrap();
    let mut want = vec![0f32; h * dv];
    rs_plan
        .run(
            &Batch::new(&q, KvCache::latent(KvTensor::bgld(&k[..], l, 1, dk)), &lens),
            &mut want,
            None,
            &mut rs_plan.alloc_workspace(),
        )
        .unwrap();
    let kv = gqa_kv {
        dtype: Dtype::Bf16.abi_code(),
        data: k.as_mut_ptr().cast(),
        len: k.len(),
        scales: std::ptr::null_mut(),
        scales_len: 0,
        outer_stride: l * dk,
        token_stride: dk,
        head_stride: l * dk,
    };
    let none = gqa_kv {
        dtype: Dtype::Bf16.abi_code(),
        data: std::ptr::null_mut(),
        len: 0,
        scales: std::ptr::null_mut(),
        scales_len: 0,
        outer_stride: 0,
        token_stride: 0,
        head_stride: 0,
    };
    let mut cache = gqa_cache {
        latent: 1,
        ..capi_strided_cache(kv, none, l)
    };
    let mut ws = capi_workspace(plan);
    let mut run = |cache: &gqa_cache| {
        let batch = capi_batch(&q, cache, &lens);
        capi_run(plan, &batch, h * dv, &mut ws)
    };
    let (st, out) = run(&cache);
    assert_eq!(st, GQA_OK);
    assert!(out
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // Not 0 or 1: refused, naming the field.
    cache.latent = 2;
    assert_eq!(run(&cache).0, GQA_ERR_INVALID_ARGUMENT);
    // SAFETY: the message is a NUL-terminated string of this thread.
    let msg = unsafe { std::ffi::CStr::from_ptr(gqa_last_error()) };
    assert!(msg.to_string_lossy().contains("cache.latent"), "{msg:?}");
    // The first version's struct: no flag, so V is the (empty) `v`.
    cache.latent = 1;
    cache.struct_size = std::mem::offset_of!(gqa_cache, latent);
    assert_ne!(run(&cache).0, GQA_OK);
    // gqa_append into the latent cache: V rows are refused (naming
    // `new.v`); without them the token's row lands once, in `k`, and the
    // step reads it as K and V.
    cache.struct_size = size_of::<gqa_cache>();
    let new: Vec<f32> = (0..dk).map(|i| (i % 13) as f32 / 4.0 - 1.5).collect();
    let offsets = [0usize, 1];
    let mut nk = gqa_new_kv {
        struct_size: size_of::<gqa_new_kv>(),
        dtype: Dtype::F32.abi_code(),
        k: new.as_ptr().cast(),
        k_len: dk,
        v: new.as_ptr().cast(),
        v_len: dv,
        offsets: offsets.as_ptr(),
        offsets_len: 2,
        kv_heads: 1,
        head_dim_k: dk,
        head_dim_v: dv,
    };
    let pos = [l - 1];
    // SAFETY: every pointer is valid for its length.
    let st = unsafe { gqa_append(&cache, &nk, pos.as_ptr(), 1) };
    assert_eq!(st, GQA_ERR_LENGTH);
    // SAFETY: the message is a NUL-terminated string of this thread.
    let msg = unsafe { std::ffi::CStr::from_ptr(gqa_last_error()) };
    assert!(msg.to_string_lossy().contains("new.v"), "{msg:?}");
    nk.v = std::ptr::null();
    nk.v_len = 0;
    let before = k.clone();
    // SAFETY: every pointer is valid for its length (`cache.k` is `k`).
    let st = unsafe { gqa_append(&cache, &nk, pos.as_ptr(), 1) };
    assert_eq!(st, GQA_OK);
    let want_row: Vec<gqa_kernels::bf16> = new
        .iter()
        .map(|&x| gqa_kernels::bf16::from_f32(x))
        .collect();
    assert_eq!(k[(l - 1) * dk..], want_row[..]);
    assert_eq!(k[..(l - 1) * dk], before[..(l - 1) * dk]);
    let mut want = vec![0f32; h * dv];
    rs_plan
        .run(
            &Batch::new(&q, KvCache::latent(KvTensor::bgld(&k[..], l, 1, dk)), &lens),
            &mut want,
            None,
            &mut rs_plan.alloc_workspace(),
        )
        .unwrap();
    let cache = gqa_cache {
        latent: 1,
        ..capi_strided_cache(kv, none, l)
    };
    let (st, out) = run(&cache);
    assert_eq!(st, GQA_OK);
    assert!(
        out.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "the step after gqa_append"
    );
    // SAFETY: a live plan.
    unsafe { gqa_plan_destroy(plan) };
}
