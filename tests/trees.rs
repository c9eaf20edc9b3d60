//! Draft-tree masks for speculative verification (`Batch::tree_mask`): the
//! step's new tokens form a draft tree (or forest) in topological order, and
//! each sees the cached prefix and, among the drafts, only its ancestors and
//! itself. Random forests on every tier and unit, every layout, with KV
//! splits, ragged batches, windows, sinks, softcaps, ALiBi and biases, up
//! to 64 draft tokens, against the f64 reference; the chain (every token
//! sees every earlier one) against the causal rule bit for bit; thread
//! invariance; and the masks the contract rejects.

mod common;

use common::{check_all, check_thread_invariance, six_layouts, tiers, Layout, Spec};
use gqa_kernels::{Batch, Dtype, Error, Options, Plan, Shape};

/// Random forests over 2 to 9 draft tokens, every layout, with and without
/// KV splits (lengths 1100 and 517 cut at 512 with `max_kv_len = 2048`, so
/// the drafts of the first sequence start a split's last block), group
/// sizes 4 and 7, the variants spread over the cases.
#[test]
fn random_trees_on_every_tier_unit_and_layout() {
    let mut n = 0u64;
    for q_len in [2usize, 5, 9] {
        for (li, layout) in six_layouts().into_iter().enumerate() {
            let (heads, kv_heads, d) = if li % 2 == 0 { (8, 2, 64) } else { (7, 1, 48) };
            let max_kv_len = if n % 3 == 2 { 0 } else { 2048 };
            let shape = Shape::new(2, heads, kv_heads, d, Dtype::Bf16)
                .with_q_len(q_len)
                .with_max_kv_len(max_kv_len);
            let mut s = Spec::new(shape, vec![1100, 517]);
            s.layout = layout;
            s.seed = 100 + n;
            s.tree = true;
            match n % 5 {
                1 => s.window = Some(40),
                2 => s.sinks = Some((0..heads).map(|h| 0.5 * h as f32 - 1.0).collect()),
                3 => {
                    s.softcap = Some(30.0);
                    s.bias = Some(true);
                }
                4 => s.alibi = Some(gqa_kernels::alibi_slopes(heads, 8.0).unwrap()),
                _ => {}
            }
            eprintln!("case {n}: q_len {q_len}, {layout:?}, max_kv_len {max_kv_len}");
            check_all(&s.build());
            n += 1;
        }
    }
}

/// The largest trees the mask holds (64 drafts), a ragged batch whose
/// sequences have 0, 1, 3 and 64 tokens (one of them empty), and a
/// sequence whose length is its draft alone.
#[test]
fn large_and_ragged_trees() {
    let shape = Shape::new(1, 4, 2, 32, Dtype::F16).with_q_len(64);
    for (seed, lens) in [(1u64, vec![64]), (2, vec![700]), (3, vec![1000])] {
        let mut s = Spec::new(shape.with_max_kv_len(1024), lens);
        s.seed = seed;
        s.tree = true;
        s.layout = Layout::Blgd;
        check_all(&s.build());
    }
    let shape = Shape::new(4, 4, 2, 32, Dtype::F16)
        .with_q_len(64)
        .with_max_kv_len(2048);
    for layout in six_layouts() {
        let mut s = Spec::new(shape, vec![900, 0, 40, 1500]);
        s.q_tokens = Some(vec![3, 2, 1, 64]);
        s.seed = 7;
        s.tree = true;
        s.layout = layout;
        check_all(&s.build());
    }
}

/// The chain (token `t` sees drafts `0..=t`) is the causal rule: the same
/// bits as no mask, on every tier; the words of a star (every token sees
/// the root and itself) change the result, so the mask is read.
#[test]
fn the_chain_is_the_causal_rule() {
    let shape = Shape::new(2, 8, 2, 64, Dtype::F16)
        .with_q_len(6)
        .with_max_kv_len(2048);
    for layout in six_layouts() {
        let mut s = Spec::new(shape, vec![1100, 517]);
        s.layout = layout;
        let mut c = s.build();
        let plain = c.clone();
        c.tree = Some((0..12).map(|t| (1u64 << (t % 6 + 1)) - 1).collect());
        for tier in tiers() {
            let (a, la, _) = plain.run(tier, 1).unwrap();
            let (b, lb, name) = c.run(tier, 1).unwrap();
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits())
                    && la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}, {layout:?}: the chain tree differs from the causal rule"
            );
        }
        let mut star = c.clone();
        star.tree = Some((0..12).map(|t| 1u64 | 1 << (t % 6)).collect());
        check_all(&star);
        let (a, _, _) = plain.run(tiers()[0], 1).unwrap();
        let (b, _, name) = star.run(tiers()[0], 1).unwrap();
        // Tokens 0 and 1 see the same drafts either way; token 2 does not.
        let row = |t: usize| (t * 8) * 64..(t * 8 + 8) * 64;
        assert_eq!(a[row(0)], b[row(0)], "{name}: token 0");
        assert_ne!(a[row(2)], b[row(2)], "{name}: the star tree was not read");
    }
}

/// Results do not depend on the thread count with a tree either.
#[test]
fn trees_are_thread_invariant() {
    let shape = Shape::new(3, 8, 2, 64, Dtype::F16)
        .with_q_len(7)
        .with_max_kv_len(4096);
    for layout in [Layout::Bgld, Layout::Blgd] {
        let mut s = Spec::new(shape, vec![3000, 7, 1200]);
        s.layout = layout;
        s.seed = 11;
        s.tree = true;
        check_thread_invariance(&s.build(), &[2, 3, 5]);
    }
}

/// Words that are not a draft tree's rows, a mask of the wrong length and
/// more than 64 tokens under a mask are typed errors naming the token.
#[test]
fn bad_tree_masks_are_typed_errors() {
    let shape = Shape::new(2, 4, 2, 32, Dtype::F32).with_q_len(3);
    let mut s = Spec::new(shape, vec![10, 3]);
    s.seed = 3;
    let c = s.build();
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let mut out = vec![0f32; c.tokens() * 4 * 32];
    let mut ws = plan.alloc_workspace();
    let good = [0b1u64, 0b11, 0b101, 0b1, 0b11, 0b111];
    let run = |tree: &[u64], out: &mut [f32], ws: &mut [u8]| {
        let b: Batch<'_> = c.batch().with_tree_mask(tree);
        plan.run(&b, out, None, ws)
    };
    run(&good, &mut out, &mut ws).unwrap();
    let cases: [(&[u64], usize, &str); 4] = [
        (&[0b1, 0b01, 0b101, 0b1, 0b11, 0b111], 1, "must see itself"),
        (&[0b1, 0b11, 0b101, 0b1, 0b111, 0b111], 4, "bit above t"),
        (&[0b1, 0b11, 0b1101, 0b1, 0b11, 0b111], 2, "bit above t"),
        (&[0b1, 0b11, 0b101, 0b1, 0b11, 0b011], 5, "must see itself"),
    ];
    for (tree, token, what) in cases {
        match run(tree, &mut out, &mut ws) {
            Err(Error::InvalidTreeMask {
                token: t, reason, ..
            }) => {
                assert_eq!(t, token, "{tree:?}");
                assert!(reason.contains(what), "{tree:?}: {reason}");
            }
            other => panic!("{tree:?}: {other:?}"),
        }
    }
    match run(&good[..5], &mut out, &mut ws) {
        Err(Error::LengthMismatch {
            arg,
            expected,
            actual,
        }) => {
            assert_eq!((arg, expected, actual), ("tree_mask", 6, 5));
        }
        other => panic!("{other:?}"),
    }
    // 65 tokens: token 64 has no bit of its own.
    let shape = Shape::new(1, 2, 2, 16, Dtype::F32).with_q_len(65);
    let c = Spec::new(shape, vec![80]).build();
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let tree: Vec<u64> = (0..65)
        .map(|t| if t < 64 { (1u64 << t) | 1 } else { 1 })
        .collect();
    let mut out = vec![0f32; 65 * 2 * 16];
    let err = plan
        .run(
            &c.batch().with_tree_mask(&tree),
            &mut out,
            None,
            &mut plan.alloc_workspace(),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidTreeMask { token: 64, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("`tree_mask[64]`"), "{err}");
}
