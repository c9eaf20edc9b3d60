//! The serving-runtime surface: multi-token causal decode, paged and ring
//! caches, KV splits, thread-count invariance, host-driven parts and
//! `merge_states`, each against the f64 reference.

mod common;

use common::{check_all, check_thread_invariance, tiers, Layout, Spec};
use gqa_kernels::{merge_states, Batch, Dtype, KvTensor, Options, Plan, Shape};

const LAYOUTS: [Layout; 7] = [
    Layout::Blgd,
    Layout::Bgld,
    Layout::Padded,
    Layout::Paged {
        page: 16,
        head_major: false,
    },
    Layout::Paged {
        page: 5,
        head_major: true,
    },
    Layout::Paged {
        page: 1,
        head_major: false,
    },
    Layout::Ring { extra: 3 },
];

#[test]
fn bitwise_identical_for_any_thread_count_on_every_tier_and_layout() {
    // KV splits (max_kv_len), two query tokens, an empty sequence and
    // lengths that straddle splits, chunks, pages and the ring's wrap.
    let shape = Shape::new(4, 8, 2, 40, Dtype::F16)
        .with_q_len(2)
        .with_max_kv_len(1400);
    for layout in LAYOUTS {
        let mut s = Spec::new(shape, vec![1300, 7, 0, 600]);
        s.layout = layout;
        s.seed = 11;
        check_thread_invariance(&s.build(), &[2, 3, 8]);
    }
}

#[test]
fn kv_splits_merge_to_the_reference() {
    // max_kv_len 2048 over B*G = 2 gives 4 splits of 512 positions; the
    // causal tail of 4 tokens crosses the split boundary at 1024.
    let shape = Shape::new(1, 10, 2, 64, Dtype::Bf16)
        .with_q_len(4)
        .with_max_kv_len(2048);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    assert_eq!(plan.split_len(), Some(512));
    assert_eq!(plan.work_items(), 4 * 2);
    for (lens, layout) in [
        (vec![1026], Layout::Bgld),
        (vec![2048], Layout::Blgd),
        (vec![513], Layout::Ring { extra: 0 }),
        (
            vec![1500],
            Layout::Paged {
                page: 7,
                head_major: false,
            },
        ),
    ] {
        let mut s = Spec::new(shape, lens);
        s.layout = layout;
        check_all(&s.build());
    }
    // Without max_kv_len each sequence is one split.
    let plan = Plan::new(&shape.with_max_kv_len(0), &Options::default()).unwrap();
    assert_eq!(plan.split_len(), None);
}

#[test]
fn multi_token_decode_is_causal_and_bottom_right_aligned() {
    // r = 5 and 7 with q_len 3: 15 and 21 rows (past every row tile), the
    // last tokens seeing one more position each.
    for (h, g) in [(10, 2), (7, 1)] {
        for layout in [Layout::Bgld, Layout::Ring { extra: 1 }] {
            let shape = Shape::new(3, h, g, 17, Dtype::F32).with_q_len(3);
            let mut s = Spec::new(shape, vec![3, 40, 19]);
            s.layout = layout;
            check_all(&s.build());
        }
    }
}

#[test]
fn ragged_query_tokens() {
    // Sequences with 0, 1, 4 and 2 tokens; one sequence is empty.
    let shape = Shape::new(5, 8, 4, 64, Dtype::F16).with_q_len(4);
    for layout in [
        Layout::Blgd,
        Layout::Paged {
            page: 16,
            head_major: true,
        },
    ] {
        let mut s = Spec::new(shape, vec![9, 1, 33, 0, 2]);
        s.q_tokens = Some(vec![0, 1, 4, 0, 2]);
        s.layout = layout;
        let c = s.build();
        assert_eq!(c.tokens(), 7);
        check_all(&c);
    }
}

#[test]
fn paged_sequences_end_mid_page_and_share_nothing() {
    for page in [1, 2, 3, 16, 64, 256] {
        for head_major in [false, true] {
            let shape = Shape::new(3, 12, 3, 96, Dtype::F16);
            let mut s = Spec::new(shape, vec![1, 77, 300]);
            s.layout = Layout::Paged { page, head_major };
            check_all(&s.build());
        }
    }
}

#[test]
fn host_driven_parts_match_the_built_in_runner() {
    let shape = Shape::new(2, 16, 4, 64, Dtype::F16)
        .with_q_len(2)
        .with_max_kv_len(1100);
    let mut s = Spec::new(shape, vec![1100, 300]);
    s.layout = Layout::Paged {
        page: 16,
        head_major: false,
    };
    let c = s.build();
    for t in tiers() {
        let (want, want_lse, name) = c.run(t, 1).unwrap();
        let plan = Plan::new(&shape, &Options::default().with_tier(t)).unwrap();
        let batch = c.batch();
        for n_parts in [1, 2, 3, 7, 100] {
            let mut states = vec![0u8; plan.state_bytes()];
            let mut step = plan.begin(&batch, &mut states).unwrap();
            std::thread::scope(|sc| {
                for part in step.parts(n_parts) {
                    let plan = &plan;
                    sc.spawn(move || {
                        let mut scratch = vec![0x5Au8; plan.scratch_bytes()];
                        part.run(&mut scratch).unwrap();
                    });
                }
            });
            let mut out = vec![f32::NAN; want.len()];
            let mut lse = vec![f32::NAN; want_lse.len()];
            step.finish(&mut out, Some(&mut lse)).unwrap();
            assert!(
                out.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
                    && lse
                        .iter()
                        .zip(&want_lse)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: {n_parts} host parts differ from Plan::run"
            );
        }
    }
}

#[test]
fn parts_cover_every_item_once() {
    let shape = Shape::new(3, 8, 2, 32, Dtype::F32).with_max_kv_len(4096);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let (q, kv) = (vec![0f32; shape.q_elems()], vec![0f32; 3 * 2 * 32]);
    let view = KvTensor::bgld(&kv[..], 1, 2, 32);
    let lens = [1, 1, 1];
    let batch = Batch::strided(&q, view, view, &lens);
    let mut states = vec![0u8; plan.state_bytes()];
    let mut step = plan.begin(&batch, &mut states).unwrap();
    for n in [1, 4, 5, 1000] {
        let mut next = 0;
        for p in step.parts(n) {
            assert_eq!(p.items().start, next);
            next = p.items().end;
        }
        assert_eq!(next, plan.work_items());
    }
}

/// Runs plain attention over positions `a..e` of a `[1, G, L, D]` f32 cache
/// by viewing the sub-range, returning `(out, lse)`.
fn attend_range(
    shape: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    l: usize,
    a: usize,
    e: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (g, d) = (shape.kv_heads, shape.head_dim_k);
    let kt = KvTensor::new(&k[a * d..], g * l * d, d, l * d);
    let vt = KvTensor::new(&v[a * d..], g * l * d, d, l * d);
    let plan = Plan::new(shape, &Options::default()).unwrap();
    let mut out = vec![0f32; shape.out_elems()];
    let mut lse = vec![0f32; shape.lse_elems()];
    plan.decode(q, &kt, &vt, &[e - a], &mut out, Some(&mut lse))
        .unwrap();
    (out, lse)
}

#[test]
fn merge_states_of_a_cache_cut_in_several_places_matches_the_reference() {
    use gqa_kernels::reference::{self, tolerance};
    let shape = Shape::new(1, 12, 3, 48, Dtype::F32);
    let l = 1000;
    let mut rng = common::Rng(5);
    let n = 3 * l * 48;
    let k: Vec<f32> = (0..n).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let v: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let q: Vec<f32> = (0..shape.q_elems())
        .map(|_| rng.uniform(-2.0, 2.0))
        .collect();
    let kt = KvTensor::bgld(&k[..], l, 3, 48);
    let vt = KvTensor::bgld(&v[..], l, 3, 48);
    let want = reference::decode(&shape, None, &q, &kt, &vt, &[l]).unwrap();
    let (tol_o, tol_l) = tolerance(Dtype::F32, Dtype::F32);
    for cuts in [
        vec![0, 1000],
        vec![0, 1, 1000],
        vec![0, 333, 334, 900, 1000],
    ] {
        let (mut out, mut lse) = attend_range(&shape, &q, &k, &v, l, cuts[0], cuts[1]);
        for w in cuts[1..].windows(2) {
            let (o, s) = attend_range(&shape, &q, &k, &v, l, w[0], w[1]);
            merge_states(&mut out, &mut lse, &o, &s, 48).unwrap();
        }
        for (g, w) in out.iter().zip(&want.out) {
            assert!(
                tol_o.accepts(f64::from(*g), *w, 1.0),
                "cuts {cuts:?}: {g} vs {w}"
            );
        }
        for (g, w) in lse.iter().zip(&want.lse) {
            assert!(
                tol_l.accepts(f64::from(*g), *w, 1.0),
                "cuts {cuts:?}: lse {g} vs {w}"
            );
        }
    }
}

#[test]
fn an_empty_range_merges_as_a_no_op() {
    let shape = Shape::new(1, 4, 2, 8, Dtype::F32);
    let l = 20;
    let k: Vec<f32> = (0..2 * l * 8).map(|i| (i % 7) as f32 * 0.1).collect();
    let v: Vec<f32> = (0..2 * l * 8).map(|i| (i % 5) as f32 * 0.2).collect();
    let q = vec![0.3f32; shape.q_elems()];
    let (out, lse) = attend_range(&shape, &q, &k, &v, l, 0, l);
    let (empty_out, empty_lse) = attend_range(&shape, &q, &k, &v, l, 5, 5);
    assert!(empty_lse.iter().all(|x| *x == f32::NEG_INFINITY));
    assert!(empty_out.iter().all(|x| *x == 0.0));
    // Merging the empty state in either order leaves the other bitwise.
    let (mut o1, mut l1) = (out.clone(), lse.clone());
    merge_states(&mut o1, &mut l1, &empty_out, &empty_lse, 8).unwrap();
    let (mut o2, mut l2) = (empty_out.clone(), empty_lse.clone());
    merge_states(&mut o2, &mut l2, &out, &lse, 8).unwrap();
    for (a, b) in [(&o1, &out), (&l1, &lse), (&o2, &out), (&l2, &lse)] {
        assert!(a
            .iter()
            .zip(b.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn merge_states_rejects_mismatched_lengths() {
    use gqa_kernels::Error;
    let (mut o, mut l) = (vec![0f32; 8], vec![0f32; 2]);
    let e = merge_states(&mut o, &mut l, &[0.0; 8], &[0.0; 3], 4).unwrap_err();
    assert!(matches!(
        e,
        Error::LengthMismatch {
            arg: "other_lse",
            expected: 2,
            actual: 3
        }
    ));
    let e = merge_states(&mut o, &mut l, &[0.0; 7], &[0.0; 2], 4).unwrap_err();
    assert!(matches!(
        e,
        Error::LengthMismatch {
            arg: "other_out",
            ..
        }
    ));
    let e = merge_states(&mut o, &mut l, &[0.0; 8], &[0.0; 2], 0).unwrap_err();
    assert!(matches!(
        e,
        Error::InvalidDim {
            arg: "head_dim_v",
            ..
        }
    ));
}
