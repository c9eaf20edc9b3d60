//! Shared-prefix (cascade) decode (`Batch::prefix`, `PrefixGroups`): the
//! members of a group read positions below its length from the first
//! member's rows, once per step, as one tile of all members' query rows.
//! Groups of several sizes on every tier and unit, every layout (paged
//! members sharing the first member's pages), with KV and prefix splits,
//! multi-token, ragged and tree-masked batches and the variants, against
//! the f64 reference; sharing declared vs the same pages undeclared;
//! thread invariance and the host's parts; what the contract rejects.

mod common;

use common::{check_all, check_thread_invariance, six_layouts, Layout, Spec};
use gqa_kernels::{
    Batch, Bias, Dtype, Error, KvBuffer, KvTensor, Options, Plan, Positions, PrefixGroups, Shape,
};

/// Five sequences, two groups (one led by a sequence that is not its
/// lowest, one of a single member) and a sequence of its own; lengths
/// across the prefix splits of 512; group sizes 4, 7 and 5; the variants
/// spread over the cases, a window that hides part of the prefix from
/// some members, ragged tokens with a first member that has none.
#[test]
fn groups_on_every_tier_unit_and_layout() {
    let mut layouts = six_layouts().to_vec();
    layouts.push(Layout::Paged {
        page: 1,
        head_major: false,
    });
    layouts.push(Layout::Paged {
        page: 256,
        head_major: true,
    });
    for (n, layout) in layouts.into_iter().enumerate() {
        let (heads, kv_heads, d) = match n % 3 {
            0 => (8, 2, 64),
            1 => (7, 1, 48),
            _ => (10, 2, 80),
        };
        let q_len = [1usize, 3][n % 2];
        let shape = Shape::new(5, heads, kv_heads, d, Dtype::F16)
            .with_q_len(q_len)
            .with_max_kv_len(2048);
        let mut s = Spec::new(shape, vec![1300, 900, 1250, 1100, 600]);
        s.layout = layout;
        s.seed = 700 + n as u64;
        s.prefix = Some(vec![(1000, vec![2, 0, 3]), (500, vec![4])]);
        if n == 3 {
            s.q_tokens = Some(vec![1, 1, 0, 1, 1]);
        }
        match n % 5 {
            1 => s.window = Some(600),
            2 => s.sinks = Some((0..heads).map(|h| 0.5 * h as f32 - 1.0).collect()),
            3 => s.softcap = Some(30.0),
            4 => {
                s.alibi = Some(gqa_kernels::alibi_slopes(heads, 8.0).unwrap());
                s.tree = q_len > 1;
            }
            _ => {}
        }
        eprintln!(
            "case {n}: {layout:?}, q_len {q_len}, r {}",
            heads / kv_heads
        );
        let case = s.build();
        check_all(&case);
        if n % 4 == 0 {
            check_thread_invariance(&case, &[2, 3]);
        }
    }
}

/// Every cache type, latent caches too, and a wide tile: 16 heads on one
/// KV head, two tokens, four members (128 rows).
#[test]
fn groups_over_every_cache_type_and_wide_tiles() {
    for (i, dt) in Dtype::ALL.into_iter().enumerate() {
        let shape = Shape::new(3, 8, 2, 64, dt).with_max_kv_len(1024);
        let mut s = Spec::new(shape, vec![700, 650, 40]);
        s.seed = 80 + i as u64;
        s.layout = six_layouts()[i % six_layouts().len()];
        s.prefix = Some(vec![(600, vec![1, 0])]);
        s.latent = i % 3 == 0;
        check_all(&s.build());
    }
    let shape = Shape::new(4, 16, 1, 64, Dtype::Bf16)
        .with_q_len(2)
        .with_max_kv_len(1500);
    let mut s = Spec::new(shape, vec![1400, 1300, 1350, 1200]);
    s.prefix = Some(vec![(1100, vec![0, 1, 2, 3])]);
    s.layout = Layout::Paged {
        page: 16,
        head_major: false,
    };
    check_thread_invariance(&s.build(), &[2]);
}

/// Declaring the sharing changes how the prefix is read, not what it is:
/// members whose block tables point at the first member's pages give, as
/// a group, what they give undeclared (the same f64 reference, and both
/// within its tolerance); a masked prefix (`-inf` over part of it) too.
#[test]
fn declared_sharing_matches_the_same_pages_undeclared() {
    for (i, page) in [16usize, 5].into_iter().enumerate() {
        let shape = Shape::new(4, 8, 2, 64, Dtype::F16)
            .with_q_len(2)
            .with_max_kv_len(2048);
        let mut s = Spec::new(shape, vec![1900, 1400, 1700, 300]);
        s.seed = 90 + i as u64;
        s.layout = Layout::Paged {
            page,
            head_major: i == 1,
        };
        // Whole pages: the members' own rows are the first member's.
        let len = 1280 / page * page;
        s.prefix = Some(vec![(len, vec![0, 1, 2])]);
        let declared = s.build();
        let mut undeclared = declared.clone();
        undeclared.prefix = None;
        let (a, b) = (declared.reference(), undeclared.reference());
        assert_eq!(
            a.out, b.out,
            "the declared prefix is not the members' own rows"
        );
        assert_eq!(a.lse, b.lse);
        check_all(&declared);
        check_all(&undeclared);
    }
    // A window that hides most of the prefix from every member.
    let shape = Shape::new(2, 4, 1, 32, Dtype::F32).with_max_kv_len(600);
    let mut s = Spec::new(shape, vec![600, 590]);
    s.prefix = Some(vec![(500, vec![0, 1])]);
    s.window = Some(64);
    check_all(&s.build());
}

/// The host's parts (`Step::parts`) never cut a group: every part count
/// gives bitwise what `Plan::run` gives, with many small groups.
#[test]
fn host_parts_give_the_plans_result() {
    let shape = Shape::new(7, 8, 2, 32, Dtype::F16).with_max_kv_len(1100);
    let mut s = Spec::new(shape, vec![1000, 1100, 900, 1050, 700, 800, 20]);
    s.prefix = Some(vec![
        (600, vec![1, 3]),
        (650, vec![0, 2, 5, 4]),
        (10, vec![6]),
    ]);
    let case = s.build();
    let plan = Plan::new(&shape, &Options::default().with_cascade()).unwrap();
    let batch = case.batch();
    let rows = case.tokens() * shape.heads;
    let mut want = vec![0.0; rows * shape.head_dim_v];
    let mut want_lse = vec![0.0; rows];
    plan.run(
        &batch,
        &mut want,
        Some(&mut want_lse),
        &mut plan.alloc_workspace(),
    )
    .unwrap();
    for n in 1..=9 {
        let mut states = vec![0u8; plan.state_bytes()];
        let mut step = plan.begin(&batch, &mut states).unwrap();
        let mut covered = 0;
        for part in step.parts(n) {
            assert_eq!(part.items().start, covered, "parts are contiguous");
            covered = part.items().end;
            part.run(&mut vec![0u8; plan.scratch_bytes()]).unwrap();
        }
        assert_eq!(covered, plan.work_items());
        let mut out = vec![f32::NAN; rows * shape.head_dim_v];
        let mut lse = vec![f32::NAN; rows];
        step.finish(&mut out, Some(&mut lse)).unwrap();
        let same = out
            .iter()
            .chain(&lse)
            .zip(want.iter().chain(&want_lse))
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{n} host parts differ from Plan::run");
    }
}

/// Every malformed group, and groups where they cannot go: a typed error
/// naming the argument, before anything is written.
#[test]
fn bad_groups_are_rejected() {
    let (d, l) = (32usize, 40usize);
    let shape = Shape::new(3, 4, 2, d, Dtype::F32)
        .with_q_len(2)
        .with_max_kv_len(l);
    let q = vec![0.5f32; 3 * 2 * 4 * d];
    let kv = KvBuffer::from_f32(Dtype::F32, &vec![0.25f32; 3 * 2 * l * d], d).unwrap();
    let k = KvTensor::bgld(kv.data(), l, 2, d);
    let lens = [l, 30, 20];
    let plan = Plan::new(&shape, &Options::default().with_cascade()).unwrap();
    let run = |plan: &Plan, batch: &Batch<'_>| {
        let mut out = vec![f32::NAN; 3 * 2 * 4 * d];
        let r = plan.run(batch, &mut out, None, &mut plan.alloc_workspace());
        assert!(out.iter().all(|x| x.is_nan()), "a rejected step wrote out");
        r.unwrap_err()
    };
    let batch = |pg| Batch::strided(&q, k, k, &lens).with_prefix_groups(pg);
    let bad = |pl: &[usize], offsets: &[usize], members: &[usize]| {
        let pg = PrefixGroups::new(pl, offsets, members);
        run(
            &plan,
            &Batch::strided(&q, k, k, &lens).with_prefix_groups(pg),
        )
    };
    let arg_of = |e: Error| match e {
        Error::InvalidPrefixGroups { arg, index, .. } => (arg, index),
        Error::LengthMismatch { arg, .. } => (arg, usize::MAX),
        e => panic!("unexpected error {e}"),
    };
    // Offsets: one per group and one more, from 0, strictly increasing,
    // within `members`; `members` exactly covered.
    assert_eq!(
        arg_of(bad(&[10], &[0], &[0])),
        ("prefix.offsets", usize::MAX)
    );
    assert_eq!(arg_of(bad(&[10], &[1, 2], &[0, 1])), ("prefix.offsets", 0));
    assert_eq!(
        arg_of(bad(&[10, 5], &[0, 0, 1], &[0])),
        ("prefix.offsets", 1)
    );
    assert_eq!(arg_of(bad(&[10], &[0, 3], &[0, 1])), ("prefix.offsets", 1));
    assert_eq!(
        arg_of(bad(&[10], &[0, 1], &[0, 1])),
        ("prefix.members", usize::MAX)
    );
    // Members: in the batch, each once, in one group or across two.
    assert_eq!(arg_of(bad(&[10], &[0, 2], &[0, 3])), ("prefix.members", 1));
    assert_eq!(arg_of(bad(&[10], &[0, 2], &[1, 1])), ("prefix.members", 1));
    assert_eq!(
        arg_of(bad(&[10, 5], &[0, 2, 3], &[2, 0, 2])),
        ("prefix.members", 2)
    );
    // A prefix reaching a member's new tokens (L 20, 2 tokens: at most 18).
    assert_eq!(arg_of(bad(&[19], &[0, 2], &[0, 2])), ("prefix.lens", 0));
    // Where groups cannot go: beside a bias, beside sparse lists, on a
    // plan made without cascade.
    let (l1, o1, m1) = ([10usize], [0usize, 2], [0usize, 1]);
    let pg = PrefixGroups::new(&l1, &o1, &m1);
    let bias = vec![0.0f32; 3 * 2 * 4 * l];
    let with_bias = batch(pg).with_bias(Bias {
        data: &bias,
        seq_stride: 2 * 4 * l,
        token_stride: 4 * l,
        head_stride: l,
    });
    assert_eq!(arg_of(run(&plan, &with_bias)), ("prefix", 0));
    let (pos, off) = ([1u32, 2], [0usize, 1, 2, 2]);
    let with_lists = batch(pg).with_positions(Positions::per_sequence(&pos, &off));
    assert_eq!(arg_of(run(&plan, &with_lists)), ("prefix", 0));
    let plain = Plan::new(&shape, &Options::default()).unwrap();
    let e = run(&plain, &batch(pg));
    assert_eq!(arg_of(e.clone()), ("prefix", 0));
    assert!(e.to_string().contains("cascade"), "{e}");
    // And a valid group runs.
    let mut out = vec![f32::NAN; 3 * 2 * 4 * d];
    plan.run(
        &batch(PrefixGroups::new(&[18], &[0, 2], &[0, 2])),
        &mut out,
        None,
        &mut plan.alloc_workspace(),
    )
    .unwrap();
    assert!(out.iter().all(|x| x.is_finite()));
}

/// An empty sequence needs nothing shared (`lens 0`), and a group's
/// members may have no query tokens of their own.
#[test]
fn empty_prefixes_and_members_without_tokens() {
    let shape = Shape::new(3, 4, 2, 32, Dtype::Bf16)
        .with_q_len(2)
        .with_max_kv_len(600);
    let mut s = Spec::new(shape, vec![0, 520, 517]);
    s.q_tokens = Some(vec![0, 0, 2]);
    s.prefix = Some(vec![(0, vec![0]), (515, vec![1, 2])]);
    check_all(&s.build());
}
