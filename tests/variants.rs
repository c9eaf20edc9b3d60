//! Attention variants on every tier and layout: sliding windows (boundary,
//! multi-token, ring, paged, KV splits) and attention sinks (counted once
//! under KV splits), against the f64 reference.

mod common;

use common::{check_all, check_thread_invariance, tiers, Layout, Spec};
use gqa_kernels::reference::{self, Variant};
use gqa_kernels::{Batch, Dtype, Error, KvTensor, Options, Plan, Shape};

#[test]
fn window_boundary_hides_p_minus_w_and_shows_p_minus_w_plus_1() {
    // One sequence of 50 positions, one query at p = 49, W = 10: position
    // 39 is hidden, 40 visible. Both carry a dominant logit; V is 1000 at
    // 39 and 7 at 40, and every row before 40 is NaN in K and V.
    let (l, w, d) = (50usize, 10usize, 16usize);
    let shape = Shape::new(1, 2, 1, d, Dtype::F32);
    let mut k = vec![0.01f32; l * d];
    let mut v = vec![1.0f32; l * d];
    for j in 0..l - w {
        k[j * d..][..d].fill(f32::NAN);
        v[j * d..][..d].fill(f32::NAN);
    }
    k[39 * d..][..d].fill(50.0);
    v[39 * d..][..d].fill(1000.0);
    k[40 * d..][..d].fill(50.0);
    v[40 * d..][..d].fill(7.0);
    let q = vec![1.0f32; shape.q_elems()];
    let kt = KvTensor::bgld(&k[..], l, 1, d);
    let vt = KvTensor::bgld(&v[..], l, 1, d);
    let lens = [l];
    let batch = Batch::strided(&q, kt, vt, &lens);
    let want = reference::decode_variant(
        &shape,
        &Variant {
            window: Some(w),
            ..Variant::default()
        },
        &batch,
    )
    .unwrap();
    for t in tiers() {
        let plan = Plan::new(&shape, &Options::default().with_tier(t).with_window(w)).unwrap();
        let mut out = vec![0f32; shape.out_elems()];
        let mut lse = vec![0f32; shape.lse_elems()];
        plan.run(
            &batch,
            &mut out,
            Some(&mut lse),
            &mut plan.alloc_workspace(),
        )
        .unwrap();
        for (o, r) in out.iter().zip(&want.out) {
            assert!((f64::from(*o) - r).abs() < 1e-3, "{t}: {o} vs {r}");
            assert!(
                (o - 7.0).abs() < 1e-3,
                "{t}: position 39 leaked or 40 missed: {o}"
            );
        }
        assert!(lse.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn windows_on_every_layout_with_splits_tokens_and_threads() {
    let shape = Shape::new(3, 12, 3, 40, Dtype::F16)
        .with_q_len(3)
        .with_max_kv_len(1400);
    for layout in [
        Layout::Bgld,
        Layout::Blgd,
        Layout::Paged {
            page: 16,
            head_major: true,
        },
        Layout::Ring { extra: 2 },
    ] {
        for w in [1, 2, 5, 300, 1500] {
            let mut s = Spec::new(shape, vec![1300, 4, 700]);
            s.layout = layout;
            s.window = Some(w);
            s.seed = w as u64;
            check_thread_invariance(&s.build(), &[2, 3]);
        }
    }
}

#[test]
fn sinks_join_once_under_kv_splits() {
    // 4 splits per sequence; sinks large enough to matter.
    let shape = Shape::new(2, 8, 2, 32, Dtype::Bf16)
        .with_q_len(2)
        .with_max_kv_len(2048);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    assert!(plan.split_len().unwrap() < 2000);
    for layout in [
        Layout::Bgld,
        Layout::Paged {
            page: 7,
            head_major: false,
        },
    ] {
        let mut s = Spec::new(shape, vec![2000, 3]);
        s.layout = layout;
        s.sinks = Some((0..8).map(|h| 1.5 - 0.5 * h as f32).collect());
        check_thread_invariance(&s.build(), &[2]);
        s.window = Some(64);
        check_all(&s.build());
    }
}

#[test]
fn a_row_that_sees_nothing_gets_zeros_and_the_sink_as_lse() {
    let shape = Shape::new(2, 4, 2, 8, Dtype::F32);
    let mut s = Spec::new(shape, vec![0, 5]);
    let sinks = vec![0.5f32, -1.0, 2.0, 0.0];
    s.sinks = Some(sinks.clone());
    let c = s.build();
    check_all(&c);
    for t in tiers() {
        let (out, lse, name) = c.run(t, 1).unwrap();
        assert!(out[..4 * 8].iter().all(|x| *x == 0.0), "{name}");
        for h in 0..4 {
            assert!(
                (lse[h] - sinks[h]).abs() < 1e-6,
                "{name}: lse {} vs sink {}",
                lse[h],
                sinks[h]
            );
        }
    }
    // Without sinks the same row has lse = -inf.
    let mut s = Spec::new(shape, vec![0, 5]);
    s.seed = 3;
    let c = s.build();
    for t in tiers() {
        let (_, lse, name) = c.run(t, 1).unwrap();
        assert!(lse[..4].iter().all(|x| *x == f32::NEG_INFINITY), "{name}");
    }
}

#[test]
fn bad_windows_and_sinks_are_typed_errors() {
    let shape = Shape::new(1, 4, 2, 8, Dtype::F32);
    let e = Plan::new(&shape, &Options::default().with_window(0)).unwrap_err();
    assert!(matches!(
        e,
        Error::InvalidDim {
            arg: "window",
            value: 0,
            ..
        }
    ));
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let e = plan.with_sinks(&[0.0; 3]).unwrap_err();
    assert_eq!(
        e,
        Error::LengthMismatch {
            arg: "sinks",
            expected: 4,
            actual: 3
        }
    );
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let e = plan.with_sinks(&[0.0, f32::NAN, 0.0, 0.0]).unwrap_err();
    assert!(matches!(
        e,
        Error::NonFinite {
            arg: "sinks",
            index: 1,
            ..
        }
    ));
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let e = plan
        .with_sinks(&[0.0, 0.0, f32::INFINITY, 0.0])
        .unwrap_err();
    assert!(matches!(
        e,
        Error::NonFinite {
            arg: "sinks",
            index: 2,
            ..
        }
    ));
}

#[test]
fn softcap_before_masking_on_every_layout() {
    // Lengths that leave most of a block as padding and a cap of 1: were
    // the padding capped instead of masked, it would carry weight e^-1.
    let shape = Shape::new(3, 8, 2, 24, Dtype::F16).with_q_len(2);
    for layout in [
        Layout::Bgld,
        Layout::Paged {
            page: 5,
            head_major: false,
        },
        Layout::Ring { extra: 1 },
    ] {
        for cap in [1.0f32, 30.0] {
            let mut s = Spec::new(shape, vec![3, 2, 19]);
            s.layout = layout;
            s.softcap = Some(cap);
            s.qk_range = 3.0;
            check_all(&s.build());
        }
    }
}

#[test]
fn softcap_window_and_sinks_together_with_splits_and_threads() {
    let shape = Shape::new(2, 12, 2, 64, Dtype::Bf16)
        .with_q_len(2)
        .with_max_kv_len(1500);
    for layout in [
        Layout::Blgd,
        Layout::Paged {
            page: 16,
            head_major: true,
        },
    ] {
        let mut s = Spec::new(shape, vec![1500, 37]);
        s.layout = layout;
        s.softcap = Some(20.0);
        s.window = Some(700);
        s.sinks = Some((0..12).map(|h| 0.1 * h as f32 - 0.5).collect());
        check_thread_invariance(&s.build(), &[2, 3]);
    }
}

#[test]
fn softcap_keeps_huge_logits_finite() {
    // Scores of magnitude ~1e4 (q, k uniform in ±25, D = 64) under a cap of
    // 50: every output finite and equal to the reference.
    let shape = Shape::new(1, 4, 1, 64, Dtype::F32);
    let mut s = Spec::new(shape, vec![77]);
    s.qk_range = 25.0;
    s.softcap = Some(50.0);
    let c = s.build();
    check_all(&c);
    for t in tiers() {
        let (out, lse, name) = c.run(t, 1).unwrap();
        assert!(out.iter().chain(&lse).all(|x| x.is_finite()), "{name}");
    }
}

#[test]
fn bad_softcaps_are_typed_errors() {
    let shape = Shape::new(1, 4, 2, 8, Dtype::F32);
    for c in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        let e = Plan::new(&shape, &Options::default().with_softcap(c)).unwrap_err();
        assert!(
            matches!(e, Error::InvalidParam { arg: "softcap", .. }),
            "{c}: {e:?}"
        );
    }
}

#[test]
fn alibi_slopes_follow_the_standard_formula() {
    let s8 = gqa_kernels::alibi_slopes(8, 8.0).unwrap();
    for (h, s) in s8.iter().enumerate() {
        assert_eq!(*s, (-(h as f32 + 1.0)).exp2(), "head {h}");
    }
    // 12 heads (not a power of two): 8 from 2^(-8/8 (h+1)), then 4 from
    // 2^(-4/8 (2 (h-8) + 1)).
    let s12 = gqa_kernels::alibi_slopes(12, 8.0).unwrap();
    assert_eq!(&s12[..8], &s8[..]);
    for (k, s) in s12[8..].iter().enumerate() {
        let want = (-0.5f64 * (2 * k + 1) as f64).exp2() as f32;
        assert!(
            (s - want).abs() <= f32::EPSILON * want,
            "head {}: {s} vs {want}",
            8 + k
        );
    }
}

#[test]
fn alibi_on_every_layout_with_splits_tokens_windows_and_threads() {
    let shape = Shape::new(2, 12, 3, 48, Dtype::F16)
        .with_q_len(3)
        .with_max_kv_len(1300);
    for layout in [
        Layout::Bgld,
        Layout::Paged {
            page: 16,
            head_major: false,
        },
        Layout::Ring { extra: 4 },
    ] {
        let mut s = Spec::new(shape, vec![1300, 9]);
        s.layout = layout;
        s.alibi = Some(gqa_kernels::alibi_slopes(12, 8.0).unwrap());
        check_thread_invariance(&s.build(), &[2, 3]);
        // All variants together.
        s.window = Some(500);
        s.softcap = Some(30.0);
        s.sinks = Some(vec![0.25; 12]);
        check_thread_invariance(&s.build(), &[2]);
    }
}

#[test]
fn bad_alibi_is_a_typed_error() {
    let shape = Shape::new(1, 4, 2, 8, Dtype::F32);
    let plan = || Plan::new(&shape, &Options::default()).unwrap();
    let e = plan().with_alibi(&[0.5; 5]).unwrap_err();
    assert_eq!(
        e,
        Error::LengthMismatch {
            arg: "alibi_slopes",
            expected: 4,
            actual: 5
        }
    );
    let e = plan().with_alibi(&[0.5, 0.5, f32::NAN, 0.5]).unwrap_err();
    assert!(matches!(
        e,
        Error::NonFinite {
            arg: "alibi_slopes",
            index: 2,
            ..
        }
    ));
    for m in [0.0f32, -2.0, f32::INFINITY, f32::NAN] {
        let e = plan().with_alibi_max_bias(m).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidParam {
                    arg: "max_bias",
                    ..
                }
            ),
            "{m}: {e:?}"
        );
    }
}

#[test]
fn additive_bias_per_head_and_broadcast_on_every_layout() {
    let shape = Shape::new(3, 8, 2, 32, Dtype::F16)
        .with_q_len(2)
        .with_max_kv_len(1200);
    for layout in [
        Layout::Bgld,
        Layout::Paged {
            page: 16,
            head_major: true,
        },
        Layout::Ring { extra: 3 },
    ] {
        for per_head in [false, true] {
            let mut s = Spec::new(shape, vec![1100, 2, 0]);
            s.layout = layout;
            s.bias = Some(per_head);
            check_thread_invariance(&s.build(), &[2, 3]);
            // With every other variant.
            s.window = Some(400);
            s.softcap = Some(25.0);
            s.alibi = Some(gqa_kernels::alibi_slopes(8, 8.0).unwrap());
            s.sinks = Some(vec![0.5; 8]);
            check_all(&s.build());
        }
    }
}

#[test]
fn logits_near_1e30_after_bias_stay_finite() {
    // Biases of ±1e30 (a mask written as a bias) on top of ordinary scores.
    let shape = Shape::new(2, 4, 1, 16, Dtype::F32).with_q_len(2);
    let mut s = Spec::new(shape, vec![40, 17]);
    s.bias = Some(true);
    s.bias_range = 1e30;
    let c = s.build();
    check_all(&c);
    for t in tiers() {
        let (out, lse, name) = c.run(t, 1).unwrap();
        assert!(out.iter().chain(&lse).all(|x| x.is_finite()), "{name}");
    }
}

#[test]
fn a_bias_too_short_is_a_typed_error() {
    use gqa_kernels::Bias;
    let shape = Shape::new(2, 4, 2, 8, Dtype::F32);
    let c = Spec::new(shape, vec![6, 3]).build();
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let data = vec![0f32; 4 * 6 + 4 * 6 - 1];
    // Per head, L = 6 positions: sequence b reads up to
    // b * seq_stride + 3 * 6 + L_b; with 47 elements seq_stride 24 fits
    // (24 + 18 + 3 = 45) and 30 does not (51).
    let bias = |ss| Bias {
        data: &data,
        seq_stride: ss,
        token_stride: 0,
        head_stride: 6,
    };
    let mut out = vec![0f32; shape.out_elems()];
    let mut ws = plan.alloc_workspace();
    assert!(plan
        .run(&c.batch().with_bias(bias(24)), &mut out, None, &mut ws)
        .is_ok());
    let e = plan
        .run(&c.batch().with_bias(bias(30)), &mut out, None, &mut ws)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::OutOfBounds {
                arg: "bias",
                seq: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let e = plan
        .run(
            &c.batch().with_bias(bias(usize::MAX)),
            &mut out,
            None,
            &mut ws,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Overflow {
                arg: "bias",
                seq: 1
            }
        ),
        "{e:?}"
    );
}
