//! Bad input: every rejected argument gets a typed error naming it; nothing
//! panics.

use gqa_kernels::{f16, Dtype, Error, KvTensor, Options, Plan, Precision, Shape, Tier, Unit};

fn plan(shape: Shape) -> Result<Plan, Error> {
    Plan::new(&shape, &Options::default())
}

#[test]
fn zero_dims_are_rejected_by_name() {
    let ok = Shape::new(1, 8, 2, 64, Dtype::F16);
    for (arg, s) in [
        ("heads", Shape { heads: 0, ..ok }),
        ("kv_heads", Shape { kv_heads: 0, ..ok }),
        (
            "head_dim_k",
            Shape {
                head_dim_k: 0,
                ..ok
            },
        ),
        (
            "head_dim_v",
            Shape {
                head_dim_v: 0,
                ..ok
            },
        ),
        ("q_len", Shape { q_len: 0, ..ok }),
        (
            "head_dim_k",
            Shape {
                head_dim_k: 100_000,
                ..ok
            },
        ),
        // Found by the C-ABI fuzzer: a huge max_kv_len overflowed the
        // split length to 0 and divided by it.
        (
            "max_kv_len",
            Shape {
                max_kv_len: usize::MAX,
                ..ok
            },
        ),
        (
            "max_kv_len",
            Shape {
                max_kv_len: gqa_kernels::MAX_KV_LEN + 1,
                ..ok
            },
        ),
    ] {
        match plan(s) {
            Err(Error::InvalidDim { arg: a, .. }) => assert_eq!(a, arg),
            other => panic!("{arg}: expected InvalidDim, got {other:?}"),
        }
    }
}

#[test]
fn heads_not_divisible_by_kv_heads() {
    let e = plan(Shape::new(1, 10, 4, 64, Dtype::F16)).unwrap_err();
    assert_eq!(
        e,
        Error::HeadsNotDivisible {
            heads: 10,
            kv_heads: 4
        }
    );
    assert!(e.to_string().contains("`heads` = 10"), "{e}");
}

#[test]
fn bad_scales() {
    for s in [0.0, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = Plan::new(
            &Shape::new(1, 2, 1, 8, Dtype::F32),
            &Options::default().with_scale(s),
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidScale { .. }), "{s}: {e:?}");
        assert!(e.to_string().contains("scale"), "{e}");
    }
}

#[test]
fn unavailable_or_unknown_tiers() {
    assert!(matches!(
        "sse9".parse::<Tier>(),
        Err(Error::UnknownTier { .. })
    ));
    assert_eq!("AVX512".parse::<Tier>().unwrap(), Tier::Avx512);
    for t in Tier::ALL.into_iter().filter(|t| !t.is_available()) {
        let e = Plan::new(
            &Shape::new(1, 2, 1, 8, Dtype::F32),
            &Options::default().with_tier(t),
        )
        .unwrap_err();
        assert_eq!(e, Error::TierUnavailable { tier: t });
    }
}

/// A forced unit is never a silent fallback: no kernels for the types or
/// tier, or a unit this process cannot use, is a typed error naming it.
#[test]
fn forced_units_without_kernels_or_hardware() {
    let bf = Shape::new(1, 16, 1, 64, Dtype::Bf16);
    let f = Shape::new(1, 16, 1, 64, Dtype::F16);
    let i8s = Shape::new(1, 16, 1, 64, Dtype::Int8).with_dtypes(Dtype::Int8, Dtype::F16);
    let f8r =
        Shape::new(1, 16, 1, 64, Dtype::Fp8E4M3Row).with_dtypes(Dtype::Fp8E4M3Row, Dtype::F16);
    let best = Tier::best();
    for unit in Unit::ALL {
        for shape in [bf, f, i8s, f8r] {
            let opts = Options::default().with_tier(best).with_unit(unit);
            let got = Plan::new(&shape, &opts);
            let (k, v) = (shape.k_dtype, shape.v_dtype);
            if !unit.runs(best, k, v) {
                let e = got.unwrap_err();
                assert_eq!(
                    e,
                    Error::UnitUnsupported {
                        unit,
                        tier: best,
                        k,
                        v
                    }
                );
                assert!(e.to_string().contains("`unit`"), "{e}");
            } else if let Some(reason) = unit.unavailable_on(best) {
                assert_eq!(got.unwrap_err(), Error::UnitUnavailable { unit, reason });
            } else {
                let p = got.unwrap();
                assert_eq!(p.unit(), unit);
                assert_eq!(p.precision(), Precision::Exact);
            }
        }
    }
    // The dot-product units have no kernels on the portable tier either,
    // nor int8-dot for another K type.
    for (unit, shape) in [(Unit::Bf16Dot, bf), (Unit::Int8Dot, i8s)] {
        let opts = Options::default().with_tier(Tier::Scalar).with_unit(unit);
        let e = Plan::new(&shape, &opts).unwrap_err();
        assert!(matches!(e, Error::UnitUnsupported { .. }), "{e:?}");
    }
    let e = Plan::new(
        &bf,
        &Options::default().with_tier(best).with_unit(Unit::Int8Dot),
    )
    .unwrap_err();
    assert!(matches!(e, Error::UnitUnsupported { .. }), "{e:?}");
    // The tile unit has no kernels on the portable tier, whatever the CPU.
    let e = Plan::new(
        &bf,
        &Options::default()
            .with_tier(Tier::Scalar)
            .with_unit(Unit::AmxBf16),
    )
    .unwrap_err();
    assert!(matches!(e, Error::UnitUnsupported { .. }), "{e:?}");
    // Left to the plan, f16 and short groups stay on f32 FMA.
    let p = Plan::new(&f, &Options::default()).unwrap();
    assert_eq!(p.unit(), Unit::F32Fma);
    let p = Plan::new(&Shape::new(1, 4, 1, 64, Dtype::Bf16), &Options::default()).unwrap();
    assert_eq!(p.unit(), Unit::F32Fma);
    // int8-dot is never chosen by the plan (no faster on the hosts we
    // have; see the README's Units section).
    let p = Plan::new(&i8s, &Options::default()).unwrap();
    assert_eq!(p.unit(), Unit::F32Fma);
    // bf16 K and V with 8 or more rows: AMX where the process may use it,
    // else bf16-dot only when `Fast` is asked for on a CPU without AMX.
    let rows8 = Shape::new(1, 8, 1, 64, Dtype::Bf16);
    let exact = Plan::new(&rows8, &Options::default()).unwrap();
    let fast = Plan::new(&rows8, &Options::default().with_precision(Precision::Fast)).unwrap();
    let below = Plan::new(
        &Shape::new(1, 7, 1, 64, Dtype::Bf16),
        &Options::default().with_precision(Precision::Fast),
    )
    .unwrap();
    assert_eq!(below.unit(), Unit::F32Fma);
    #[cfg(target_arch = "x86_64")]
    // CPUID leaf 7 EDX: AMX-BF16 (bit 22) and AMX-TILE (bit 24).
    let amx_cpu = {
        let edx = core::arch::x86_64::__cpuid_count(7, 0).edx;
        (edx >> 22) & 1 == 1 && (edx >> 24) & 1 == 1
    };
    #[cfg(not(target_arch = "x86_64"))]
    let amx_cpu = false;
    let avx512 = exact.tier() == Tier::Avx512;
    if avx512 && Unit::AmxBf16.is_available() {
        assert_eq!((exact.unit(), fast.unit()), (Unit::AmxBf16, Unit::AmxBf16));
    } else if avx512 && Unit::Bf16Dot.is_available() && !amx_cpu {
        assert_eq!((exact.unit(), fast.unit()), (Unit::F32Fma, Unit::Bf16Dot));
    } else {
        assert_eq!((exact.unit(), fast.unit()), (Unit::F32Fma, Unit::F32Fma));
    }
}

struct Bufs {
    q: Vec<f32>,
    k: Vec<f16>,
    v: Vec<f16>,
    out: Vec<f32>,
    lse: Vec<f32>,
}

fn bufs(s: &Shape, max_len: usize) -> Bufs {
    Bufs {
        q: vec![0.1; s.q_elems()],
        k: vec![f16::ONE; s.batch * max_len * s.kv_heads * s.head_dim_k],
        v: vec![f16::ONE; s.batch * max_len * s.kv_heads * s.head_dim_v],
        out: vec![0.0; s.out_elems()],
        lse: vec![0.0; s.lse_elems()],
    }
}

/// Every argument of a run that disagrees with the plan is a typed error.
///
/// Long on purpose: a list of cases, not a procedure. Each bad argument
/// is a few lines (the call and the error it must give), so the function
/// is as long as the list.
#[test]
fn run_arguments_are_checked_against_the_plan() {
    let s = Shape::new(2, 4, 2, 16, Dtype::F16);
    let p = plan(s).unwrap();
    let mut b = bufs(&s, 10);
    let kt = KvTensor::blgd(&b.k[..], 10, 2, 16);
    let vt = KvTensor::blgd(&b.v[..], 10, 2, 16);
    let lens = [10, 3];

    let e = p
        .decode(&b.q[1..], &kt, &vt, &lens, &mut b.out, None)
        .unwrap_err();
    assert_eq!(
        e,
        Error::LengthMismatch {
            arg: "q",
            expected: s.q_elems(),
            actual: s.q_elems() - 1
        }
    );
    let e = p
        .decode(&b.q, &kt, &vt, &lens[..1], &mut b.out, None)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                arg: "seq_lens",
                ..
            }
        ),
        "{e:?}"
    );
    let n = b.out.len();
    let e = p
        .decode(&b.q, &kt, &vt, &lens, &mut b.out[..n - 1], None)
        .unwrap_err();
    assert!(
        matches!(e, Error::LengthMismatch { arg: "out", .. }),
        "{e:?}"
    );
    let e = p
        .decode(&b.q, &kt, &vt, &lens, &mut b.out, Some(&mut b.lse[1..]))
        .unwrap_err();
    assert!(
        matches!(e, Error::LengthMismatch { arg: "lse", .. }),
        "{e:?}"
    );

    // A length past the end of the buffer (for sequence 0, position 10 is
    // still inside the buffer: the view only promises in-bounds reads).
    let e = p
        .decode(&b.q, &kt, &vt, &[3, 11], &mut b.out, None)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::OutOfBounds {
                arg: "k",
                seq: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("`k`"), "{e}");
    // V too short while K is fine.
    let vshort = KvTensor::blgd(&b.v[..b.v.len() - 1], 10, 2, 16);
    let e = p
        .decode(
            &b.q,
            &kt,
            &vshort,
            &lens[..].iter().map(|_| 10).collect::<Vec<_>>(),
            &mut b.out,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::OutOfBounds {
                arg: "v",
                seq: 1,
                ..
            }
        ),
        "{e:?}"
    );
    // Wrong dtype.
    let f32s = vec![0f32; b.k.len()];
    let kf = KvTensor::blgd(&f32s[..], 10, 2, 16);
    let e = p
        .decode(&b.q, &kf, &vt, &lens, &mut b.out, None)
        .unwrap_err();
    assert_eq!(
        e,
        Error::DtypeMismatch {
            arg: "k",
            expected: Dtype::F16,
            actual: Dtype::F32
        }
    );
    // Strides whose product overflows usize.
    let huge = KvTensor::new(&b.k[..], 1, usize::MAX / 2, 16);
    let e = p
        .decode(&b.q, &huge, &vt, &lens, &mut b.out, None)
        .unwrap_err();
    assert!(matches!(e, Error::Overflow { arg: "k", seq: 0 }), "{e:?}");
    let huge = KvTensor::new(&b.k[..], usize::MAX, 16, 16);
    let e = p
        .decode(&b.q, &huge, &vt, &lens, &mut b.out, None)
        .unwrap_err();
    assert!(matches!(e, Error::Overflow { arg: "k", seq: 1 }), "{e:?}");
    // Nothing was written by the failed calls.
    assert!(b.out.iter().all(|x| *x == 0.0));
}

#[test]
fn shape_products_that_overflow_are_rejected() {
    let s = Shape::new(usize::MAX / 2, 4, 2, 16, Dtype::F16);
    assert!(matches!(plan(s), Err(Error::Overflow { .. })));
}
