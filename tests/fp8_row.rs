//! fp8 E4M3 with one f32 scale per (token, KV head) row
//! (`Dtype::Fp8E4M3Row`), as serving runtimes store MLA caches: its
//! encoder's rule, a latent MLA cache whose rows span six orders of
//! magnitude on every tier against the f64 reference, staged sparse runs
//! (rows copied with their scales) on every layout, the validation of
//! its scales and strides, the units that do not take it, and the C ABI.

mod common;

use common::{check_all, gapped_runs, six_layouts, tiers, Rng, Spec};
use gqa_kernels::quant::{self, Fp8};
use gqa_kernels::{
    reference, Batch, Dtype, Error, KvBuffer, KvCache, KvData, KvTensor, Options, Plan, Shape, Unit,
};

/// The encoder: scale `absmax / 448`, the bytes E4M3 of `x / scale`
/// (so the row's largest value is 448), zero rows scale 0, NaN and
/// infinities rejected; the decoded row is within E4M3's bound.
#[test]
fn rows_are_encoded_against_their_own_absmax() {
    let mut rng = Rng(3);
    for m in [1e-30f32, 1e-3, 1.0, 1e3, 1e30] {
        let x: Vec<f32> = (0..96).map(|_| m * rng.uniform(-1.0, 1.0)).collect();
        let mut q = vec![0u8; 96];
        let s = quant::quantize_fp8_row(&x, &mut q).unwrap();
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert_eq!(s, amax / 448.0, "{m}");
        assert!(q.iter().any(|&b| Fp8::E4M3.decode(b).abs() == 448.0), "{m}");
        let mut y = vec![0f32; 96];
        quant::dequantize_fp8_row(&q, s, &mut y).unwrap();
        for (&a, &b) in x.iter().zip(&y) {
            // 2^-4 relative in E4M3's normal range (|x| / s >= 2^-6), else
            // half its subnormal step, 2^-10 · s; plus f32 roundings.
            let bound = (a.abs() / 16.0).max(s / 1024.0) * (1.0 + 1e-6);
            assert!((a - b).abs() <= bound, "{m}: {a} -> {b}");
        }
    }
    let mut q = vec![7u8; 8];
    assert_eq!(quant::quantize_fp8_row(&[0.0; 8], &mut q).unwrap(), 0.0);
    assert_eq!(q, [0; 8]);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = [1.0f32; 8];
        x[5] = bad;
        let e = quant::quantize_fp8_row(&x, &mut q).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NonFinite {
                    arg: "src",
                    index: 5,
                    ..
                }
            ),
            "{e:?}"
        );
    }
    let e = quant::quantize_fp8_row(&[1.0; 8], &mut [0u8; 7]).unwrap_err();
    assert!(
        matches!(e, Error::LengthMismatch { arg: "dst", .. }),
        "{e:?}"
    );
}

/// H 16, Dk 576, Dv 512, G 1, a latent cache (V = the leading 512 values
/// of each K row) quantized row by row. Sequence 0's tokens span 1e-3 to
/// 1e3; sequences 1 to 3 are centred on 1e-3, 1 and 1e3 (each token
/// within a factor 3 of it), with queries scaled by the inverse so their
/// softmax is not one-hot, and each sequence's outputs are held to the
/// tolerance of its own largest `|V|`: a row read with another row's
/// scale, or without the `2^8` the E4M3 load needs, fails at any
/// magnitude. A per-tensor E4M3 scale would flush the 1e-3 rows to zero
/// (checked too).
#[test]
fn latent_mla_rows_of_every_magnitude_match_the_reference_on_every_tier() {
    let (h, g, dk, dv) = (16usize, 1usize, 576usize, 512usize);
    let lens = [301usize, 200, 130, 77];
    let b = lens.len();
    let cap = 320;
    let mut rng = Rng(11);
    let centre = [1.0f32, 1e-3, 1.0, 1e3];
    let mut x = vec![0f32; b * cap * dk];
    for (s, &len) in lens.iter().enumerate() {
        for j in 0..len {
            let m = if s == 0 {
                10f32.powf(rng.uniform(-3.0, 3.0))
            } else {
                centre[s] * 3f32.powf(rng.uniform(-1.0, 1.0))
            };
            for e in 0..dk {
                x[(s * cap + j) * dk + e] = m * rng.uniform(-1.0, 1.0);
            }
        }
    }
    let buf = KvBuffer::from_f32(Dtype::Fp8E4M3Row, &x, dk).unwrap();
    // Every row keeps its own magnitude: within E4M3's bound of its values.
    let KvData::Fp8E4M3Row { values, scales } = buf.data() else {
        panic!("an fp8e4m3_row buffer")
    };
    assert_eq!(scales.len(), b * cap);
    for (i, (&v, &q)) in x.iter().zip(values).enumerate() {
        let s = scales[i / dk];
        let y = s * Fp8::E4M3.decode(q);
        assert!((v - y).abs() <= (v.abs() / 16.0).max(s / 1024.0) * 1.000_001);
    }
    // One scale for the tensor loses the smallest rows entirely.
    let per_tensor = KvBuffer::from_f32(Dtype::Fp8E4M3, &x, dk).unwrap();
    let KvData::Fp8E4M3 { values: pt, .. } = per_tensor.data() else {
        panic!("an fp8e4m3 buffer")
    };
    let row1 = cap * dk;
    assert!(pt[row1..row1 + lens[1] * dk].iter().all(|&q| q & 0x7f == 0));

    let kv = KvTensor::bgld(buf.data(), cap, g, dk);
    let cache = KvCache::latent(kv);
    assert!(cache.is_latent());
    let mut q = vec![0f32; b * h * dk];
    for s in 0..b {
        let inv = 1.0 / centre[s];
        for e in &mut q[s * h * dk..(s + 1) * h * dk] {
            *e = inv * rng.uniform(-1.0, 1.0);
        }
    }
    let shape = Shape::new(b, h, g, dk, Dtype::Fp8E4M3Row)
        .with_head_dims(dk, dv)
        .with_max_kv_len(cap);
    let batch = Batch::new(&q, cache, &lens);
    let want = reference::decode_batch(&shape, None, &batch).unwrap();
    let (to, tl) = reference::tolerance(Dtype::Fp8E4M3Row, Dtype::Fp8E4M3Row);
    // Each sequence's largest |V| (V: the leading dv values of its rows).
    let v_max: Vec<f64> = (0..b)
        .map(|s| {
            (0..lens[s])
                .flat_map(|j| (0..dv).map(move |e| (s * cap + j) * dk + e))
                .map(|i| buf.data().value_f64(i, 0, dk).abs())
                .fold(0.0, f64::max)
        })
        .collect();
    for tier in tiers() {
        let plan = Plan::new(&shape, &Options::default().with_tier(tier)).unwrap();
        let name = plan.kernel_name();
        assert!(name.contains("fp8e4m3_row"), "{name}");
        assert!(name.ends_with(&format!("__{}", tier.name())), "{name}");
        let mut out = vec![f32::NAN; b * h * dv];
        let mut lse = vec![f32::NAN; b * h];
        let mut ws = plan.alloc_workspace();
        plan.run(&batch, &mut out, Some(&mut lse), &mut ws).unwrap();
        for (s, &vm) in v_max.iter().enumerate() {
            for r in 0..h {
                let row = s * h + r;
                let (l, lw) = (f64::from(lse[row]), want.lse[row]);
                assert!(
                    tl.accepts(l, lw, 1.0),
                    "{name}: seq {s} row {r} lse {l} vs {lw}"
                );
                for e in 0..dv {
                    let (o, ow) = (f64::from(out[row * dv + e]), want.out[row * dv + e]);
                    assert!(
                        to.accepts(o, ow, vm),
                        "{name}: seq {s} row {r} out[{e}] = {o}, reference {ow}"
                    );
                }
            }
        }
    }
}

/// Scales one per row (int8's rule, named `k_scales` / `v_scales`),
/// strides multiples of the head dim.
#[test]
fn row_scales_and_strides_are_validated_as_int8s() {
    let (l, g, d) = (8usize, 2usize, 32usize);
    let shape =
        Shape::new(1, 4, g, d, Dtype::Fp8E4M3Row).with_dtypes(Dtype::Fp8E4M3Row, Dtype::F16);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let vals = vec![0x38u8; l * g * d];
    let scales = vec![0.5f32; l * g];
    let v = vec![gqa_kernels::f16::ONE; l * g * d];
    let q = vec![0.1f32; 4 * d];
    let mut out = vec![0f32; 4 * d];
    let mut ws = plan.alloc_workspace();
    let lens = [l];
    let vt = KvTensor::bgld(&v[..], l, g, d);
    let good = KvTensor::bgld(KvData::fp8_row(&vals, &scales), l, g, d);
    plan.run(
        &Batch::strided(&q, good, vt, &lens),
        &mut out,
        None,
        &mut ws,
    )
    .unwrap();
    // All K values are 0.5: every row's output is V's 1.
    assert!(out.iter().all(|&o| (o - 1.0).abs() < 1e-6), "{out:?}");
    let short = KvTensor::bgld(KvData::fp8_row(&vals, &scales[1..]), l, g, d);
    let e = plan
        .run(
            &Batch::strided(&q, short, vt, &lens),
            &mut out,
            None,
            &mut ws,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                arg: "k_scales",
                ..
            }
        ),
        "{e:?}"
    );
    let odd = KvTensor::new(KvData::fp8_row(&vals, &scales), 0, g * d, d / 2);
    let e = plan
        .run(&Batch::strided(&q, odd, vt, &lens), &mut out, None, &mut ws)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidDim {
                arg: "k.head_stride",
                ..
            }
        ),
        "{e:?}"
    );
}

/// No dot-product or tile unit takes fp8e4m3_row: forcing one is a typed
/// error, and the plan's own choice is f32 FMA.
#[test]
fn units_fall_back_to_f32_fma() {
    for (k, v) in [
        (Dtype::Fp8E4M3Row, Dtype::Fp8E4M3Row),
        (Dtype::Fp8E4M3Row, Dtype::Bf16),
        (Dtype::Bf16, Dtype::Fp8E4M3Row),
        (Dtype::Int8, Dtype::Fp8E4M3Row),
    ] {
        let shape = Shape::new(1, 16, 1, 64, k).with_dtypes(k, v);
        for tier in tiers() {
            for unit in Unit::ALL {
                if unit == Unit::F32Fma {
                    continue;
                }
                assert!(!unit.runs(tier, k, v), "{unit:?} {tier} {k} {v}");
                let opts = Options::default().with_tier(tier).with_unit(unit);
                let e = Plan::new(&shape, &opts).unwrap_err();
                assert!(matches!(e, Error::UnitUnsupported { .. }), "{e:?}");
            }
            for precision in [gqa_kernels::Precision::Exact, gqa_kernels::Precision::Fast] {
                let opts = Options {
                    precision,
                    ..Options::default().with_tier(tier)
                };
                let p = Plan::new(&shape, &opts).unwrap();
                assert_eq!(p.unit(), Unit::F32Fma);
                assert!(
                    p.kernel_name().contains("fp8e4m3_row"),
                    "{}",
                    p.kernel_name()
                );
            }
        }
    }
}

/// Sparse lists of short runs (staged: the rows copied with their row
/// scales into the worker scratch) and long ones (in place), every layout,
/// fp8e4m3_row as K, as V, as both and as a latent cache, per sequence and
/// per KV head, every tier and unit against the reference.
#[test]
fn staged_sparse_runs_carry_their_row_scales() {
    let pairs = [
        (Dtype::Fp8E4M3Row, Dtype::Fp8E4M3Row),
        (Dtype::Fp8E4M3Row, Dtype::F16),
        (Dtype::Int8, Dtype::Fp8E4M3Row),
    ];
    for (i, layout) in six_layouts().into_iter().enumerate() {
        let (k, v) = pairs[i % pairs.len()];
        let q_len = [1usize, 3][i % 2];
        let shape = Shape::new(2, 8, 2, 64, k)
            .with_dtypes(k, v)
            .with_q_len(q_len)
            .with_max_kv_len(2048);
        let lens = vec![1501, 700];
        let mut s = Spec::new(shape, lens.clone());
        s.layout = layout;
        s.seed = 1200 + i as u64;
        s.latent = i == 3 || i == 4;
        if s.latent {
            s.shape = Shape::new(2, 8, 2, 64, k)
                .with_q_len(q_len)
                .with_max_kv_len(2048);
        }
        let mut case = s.build();
        let per_kv_head = i % 2 == 1;
        let lists = if per_kv_head { 4 } else { 2 };
        // Runs of 1, 2, ..., 40 positions, each followed by one left out.
        let (pos, off) = gapped_runs(&lens, lists, 5, 3, 40);
        case.positions = Some((pos, off, per_kv_head));
        eprintln!("case {i}: {k}/{v} {layout:?} latent {}", s.latent);
        check_all(&case);
    }
}

/// The C ABI: `gqa_append` writes an fp8e4m3_row cache's bytes and row
/// scales (what `quantize_fp8_row` makes of each row), and `gqa_run` over
/// it is bitwise the Rust step over the same buffers.
#[test]
fn c_abi_appends_and_reads_row_scales() {
    use common::{capi_batch, capi_run, capi_strided_cache, capi_workspace};
    use gqa_kernels::capi::*;
    let (h, g, d, l) = (4usize, 2usize, 32usize, 20usize);
    let t = Dtype::Fp8E4M3Row;
    let shape = gqa_shape {
        struct_size: size_of::<gqa_shape>(),
        batch: 1,
        heads: h,
        kv_heads: g,
        head_dim_k: d,
        head_dim_v: d,
        q_len: 1,
        max_kv_len: l,
        k_dtype: t.abi_code(),
        v_dtype: t.abi_code(),
    };
    let mut plan: *mut gqa_plan = std::ptr::null_mut();
    // SAFETY: a valid shape and out-pointer (NULL options: defaults).
    assert_eq!(
        unsafe { gqa_plan_create(&shape, std::ptr::null(), &mut plan) },
        GQA_OK
    );
    // [B, G, L, D] values, [B, G, L] scales, never written: NaN scales.
    let (mut kq, mut vq) = (vec![0x55u8; g * l * d], vec![0x55u8; g * l * d]);
    let (mut ks, mut vs) = (vec![f32::NAN; g * l], vec![f32::NAN; g * l]);
    let kv = |data: &mut [u8], scales: &mut [f32]| gqa_kv {
        dtype: t.abi_code(),
        data: data.as_mut_ptr().cast(),
        len: data.len(),
        scales: scales.as_mut_ptr(),
        scales_len: scales.len(),
        outer_stride: g * l * d,
        token_stride: d,
        head_stride: l * d,
    };
    let cache = capi_strided_cache(kv(&mut kq, &mut ks), kv(&mut vq, &mut vs), l);
    // `[T, G, D]` new rows, token j scaled by 10^(j % 7 - 3).
    let mut rng = Rng(5);
    let new_k: Vec<f32> = (0..l * g * d)
        .map(|i| 10f32.powi((i / (g * d)) as i32 % 7 - 3) * rng.uniform(-1.0, 1.0))
        .collect();
    let new_v: Vec<f32> = (0..l * g * d).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let offsets = [0usize, l];
    let nk = gqa_new_kv {
        struct_size: size_of::<gqa_new_kv>(),
        dtype: Dtype::F32.abi_code(),
        k: new_k.as_ptr().cast(),
        k_len: new_k.len(),
        v: new_v.as_ptr().cast(),
        v_len: new_v.len(),
        offsets: offsets.as_ptr(),
        offsets_len: 2,
        kv_heads: g,
        head_dim_k: d,
        head_dim_v: d,
    };
    let pos = [0usize];
    // SAFETY: every pointer is valid for its length; K and V are disjoint.
    assert_eq!(unsafe { gqa_append(&cache, &nk, pos.as_ptr(), 1) }, GQA_OK);
    for (src, vals, scales) in [(&new_k, &kq, &ks), (&new_v, &vq, &vs)] {
        for j in 0..l {
            for hd in 0..g {
                let mut q = vec![0u8; d];
                let s = quant::quantize_fp8_row(&src[(j * g + hd) * d..][..d], &mut q).unwrap();
                let at = hd * l + j;
                assert_eq!(&vals[at * d..][..d], &q[..], "token {j} head {hd}");
                assert_eq!(scales[at].to_bits(), s.to_bits(), "token {j} head {hd}");
            }
        }
    }
    let q: Vec<f32> = (0..h * d).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let lens = [l];
    let mut ws = capi_workspace(plan);
    let batch = capi_batch(&q, &cache, &lens);
    let (st, out) = capi_run(plan, &batch, h * d, &mut ws);
    assert_eq!(st, GQA_OK);
    // SAFETY: a live plan.
    unsafe { gqa_plan_destroy(plan) };
    let rs_shape = Shape::new(1, h, g, d, t).with_max_kv_len(l);
    let rs_plan = Plan::new(&rs_shape, &Options::default()).unwrap();
    let k = KvTensor::bgld(KvData::fp8_row(&kq, &ks), l, g, d);
    let v = KvTensor::bgld(KvData::fp8_row(&vq, &vs), l, g, d);
    let rs_batch = Batch::strided(&q, k, v, &lens);
    let mut want = vec![0f32; h * d];
    rs_plan
        .run(&rs_batch, &mut want, None, &mut rs_plan.alloc_workspace())
        .unwrap();
    assert!(out
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let r = reference::decode_batch(&rs_shape, None, &rs_batch).unwrap();
    let (to, _) = reference::tolerance(t, t);
    let vmax = (0..vq.len())
        .map(|i| KvData::fp8_row(&vq, &vs).value_f64(i, 0, d).abs())
        .fold(0.0, f64::max);
    for (o, w) in out.iter().zip(&r.out) {
        assert!(to.accepts(f64::from(*o), *w, vmax), "{o} vs {w}");
    }
}
