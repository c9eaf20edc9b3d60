//! Bad input to the serving surface: each case returns a typed error naming
//! the argument, before any memory is read.

mod common;

use common::{Layout, Spec};
use gqa_kernels::{
    Batch, Dtype, Error, KvCache, KvPages, KvTensor, Options, PagedKv, Plan, RingKv, Shape,
};

fn paged_case(lens: Vec<usize>) -> common::Case {
    let mut s = Spec::new(Shape::new(2, 4, 2, 16, Dtype::F16), lens);
    s.layout = Layout::Paged {
        page: 4,
        head_major: false,
    };
    s.build()
}

fn run(plan: &Plan, batch: &Batch<'_>) -> Result<(), Error> {
    let tokens = batch.q.len() / (plan.shape().heads * plan.shape().head_dim_k);
    let rows = tokens * plan.shape().heads;
    let mut out = vec![0f32; rows * plan.shape().head_dim_v];
    let mut lse = vec![0f32; rows];
    plan.run(batch, &mut out, Some(&mut lse), &mut plan.alloc_workspace())
}

#[test]
fn page_index_outside_the_pool() {
    let c = paged_case(vec![10, 5]);
    let plan = Plan::new(&c.shape, &Options::default()).unwrap();
    assert!(run(&plan, &c.batch()).is_ok());
    let KvCache::Paged(p) = c.cache() else {
        unreachable!()
    };
    let pages = c.k.len() / c.k_strides.0;
    let mut table = c.block_table.clone();
    table[1] = 1_000_000;
    let batch = Batch::new(
        &c.q,
        KvCache::Paged(PagedKv {
            block_table: &table,
            ..p
        }),
        &c.seq_lens,
    );
    let e = run(&plan, &batch).unwrap_err();
    assert!(
        matches!(
            e,
            Error::PageOutOfRange {
                arg: "k_pages",
                seq: 0,
                block: 1,
                page: 1_000_000,
                ..
            }
        ),
        "{e:?}"
    );
    // The first page past the pool's end, in the V pool only.
    let v_short = match c.v.data(0) {
        gqa_kernels::KvData::F16(v) => v,
        _ => unreachable!(),
    };
    let v_short = &v_short[..(pages - 1) * c.v_strides.0];
    let mut table = c.block_table.clone();
    table[0] = (pages - 1) as u32;
    let (va, vb, vc) = c.v_strides;
    let cache = KvCache::Paged(PagedKv {
        block_table: &table,
        v: KvPages::new(v_short, va, vb, vc),
        ..p
    });
    let e = run(&plan, &Batch::new(&c.q, cache, &c.seq_lens)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::PageOutOfRange {
                arg: "v_pages",
                seq: 0,
                block: 0,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn block_table_shorter_than_the_sequence_needs() {
    let c = paged_case(vec![10, 5]);
    let plan = Plan::new(&c.shape, &Options::default()).unwrap();
    let KvCache::Paged(p) = c.cache() else {
        unreachable!()
    };
    // Row length 2 blocks (8 positions) for a sequence of 10.
    let cache = KvCache::Paged(PagedKv {
        blocks_per_seq: 2,
        ..p
    });
    let e = run(&plan, &Batch::new(&c.q, cache, &c.seq_lens)).unwrap_err();
    assert_eq!(
        e,
        Error::BlockTableTooShort {
            seq: 0,
            needed: 3,
            available: 2
        }
    );
    // The table itself ends before sequence 1's row.
    let cache = KvCache::Paged(PagedKv {
        block_table: &c.block_table[..c.blocks_per_seq + 1],
        ..p
    });
    let e = run(&plan, &Batch::new(&c.q, cache, &c.seq_lens)).unwrap_err();
    assert_eq!(
        e,
        Error::BlockTableTooShort {
            seq: 1,
            needed: 2,
            available: 1
        }
    );
    // Page size 0.
    let cache = KvCache::Paged(PagedKv { page_size: 0, ..p });
    let e = run(&plan, &Batch::new(&c.q, cache, &c.seq_lens)).unwrap_err();
    assert!(matches!(
        e,
        Error::InvalidDim {
            arg: "page_size",
            value: 0,
            ..
        }
    ));
}

#[test]
fn ring_smaller_than_a_resident_length() {
    let mut s = Spec::new(Shape::new(2, 4, 2, 16, Dtype::F32), vec![6, 3]);
    s.layout = Layout::Ring { extra: 0 };
    let c = s.build();
    let plan = Plan::new(&c.shape, &Options::default()).unwrap();
    assert!(run(&plan, &c.batch()).is_ok());
    let KvCache::Ring(r) = c.cache() else {
        unreachable!()
    };
    let cache = KvCache::Ring(RingKv { capacity: 5, ..r });
    let e = run(&plan, &Batch::new(&c.q, cache, &c.seq_lens)).unwrap_err();
    assert_eq!(
        e,
        Error::RingTooSmall {
            seq: 0,
            kv_len: 6,
            capacity: 5
        }
    );
    let cache = KvCache::Ring(RingKv {
        first_pos: &c.first_pos[..1],
        ..r
    });
    let e = run(&plan, &Batch::new(&c.q, cache, &c.seq_lens)).unwrap_err();
    assert!(matches!(
        e,
        Error::LengthMismatch {
            arg: "first_pos",
            expected: 2,
            actual: 1
        }
    ));
    // A view too short for the slots the ring wraps over.
    let k = KvTensor::new(c.k.data(0), c.k_strides.0, c.k_strides.1, c.k_strides.2);
    let short = match k.data {
        gqa_kernels::KvData::F32(x) => &x[..c.k_strides.0 + 2 * c.k_strides.1],
        _ => unreachable!(),
    };
    let cache = KvCache::Ring(RingKv {
        k: KvTensor::new(short, c.k_strides.0, c.k_strides.1, c.k_strides.2),
        ..r
    });
    let e = run(&plan, &Batch::new(&c.q, cache, &c.seq_lens)).unwrap_err();
    assert!(matches!(e, Error::OutOfBounds { arg: "k", .. }), "{e:?}");
}

#[test]
fn query_tokens_beyond_the_cache_or_the_plan() {
    let shape = Shape::new(2, 4, 2, 16, Dtype::F32).with_q_len(3);
    let c = Spec::new(shape, vec![5, 5]).build();
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    assert!(run(&plan, &c.batch()).is_ok());
    let lens = [5, 2];
    let e = run(&plan, &Batch::new(&c.q, c.cache(), &lens)).unwrap_err();
    assert_eq!(
        e,
        Error::QLenExceedsKvLen {
            seq: 1,
            q_len: 3,
            kv_len: 2
        }
    );
    // Ragged offsets.
    let bad = |o: &[usize]| run(&plan, &c.batch().with_q_offsets(o)).unwrap_err();
    assert!(matches!(
        bad(&[0, 3]),
        Error::LengthMismatch {
            arg: "q_offsets",
            expected: 3,
            actual: 2
        }
    ));
    assert!(matches!(
        bad(&[1, 3, 6]),
        Error::InvalidQOffsets {
            index: 0,
            value: 1,
            ..
        }
    ));
    assert!(matches!(
        bad(&[0, 3, 2]),
        Error::InvalidQOffsets {
            index: 2,
            value: 2,
            ..
        }
    ));
    assert!(matches!(
        bad(&[0, 4, 6]),
        Error::InvalidQOffsets {
            index: 1,
            value: 4,
            ..
        }
    ));
    // Offsets fine, but q sized for 6 tokens while they say 5.
    assert!(matches!(
        bad(&[0, 3, 5]),
        Error::LengthMismatch { arg: "q", .. }
    ));
    let e = run(
        &plan,
        &Batch::new(&c.q, c.cache(), &[5, 2]).with_q_offsets(&[0, 3, 6]),
    )
    .unwrap_err();
    assert_eq!(
        e,
        Error::QLenExceedsKvLen {
            seq: 1,
            q_len: 3,
            kv_len: 2
        }
    );
}

#[test]
fn lengths_beyond_max_kv_len() {
    let shape = Shape::new(1, 4, 2, 16, Dtype::F32).with_max_kv_len(8);
    let c = Spec::new(shape, vec![9]).build();
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let e = run(&plan, &c.batch()).unwrap_err();
    assert_eq!(
        e,
        Error::KvLenExceedsPlan {
            seq: 0,
            kv_len: 9,
            max_kv_len: 8
        }
    );
}

#[test]
fn workspace_states_and_scratch_too_small() {
    let shape = Shape::new(1, 4, 2, 16, Dtype::F32);
    let c = Spec::new(shape, vec![9]).build();
    let plan = Plan::new(&shape, &Options::default().with_threads(2)).unwrap();
    let (mut out, mut lse) = (vec![0f32; shape.out_elems()], vec![0f32; shape.lse_elems()]);
    let need = plan.workspace_bytes();
    let mut ws = vec![0u8; need - 1];
    let e = plan
        .run(&c.batch(), &mut out, Some(&mut lse), &mut ws)
        .unwrap_err();
    assert_eq!(
        e,
        Error::BufferTooSmall {
            arg: "workspace",
            needed: need,
            len: need - 1
        }
    );
    let mut st = vec![0u8; plan.state_bytes() - 4];
    let e = plan.begin(&c.batch(), &mut st).err().unwrap();
    assert!(matches!(e, Error::BufferTooSmall { arg: "states", .. }));
    let mut st = vec![0u8; plan.state_bytes()];
    let mut step = plan.begin(&c.batch(), &mut st).unwrap();
    let mut sc = vec![0u8; plan.scratch_bytes() - 1];
    let part = step.parts(1).next().unwrap();
    assert!(matches!(
        part.run(&mut sc),
        Err(Error::BufferTooSmall { arg: "scratch", .. })
    ));
    // finish checks its buffers too.
    let e = step.finish(&mut out[1..], None).unwrap_err();
    assert!(matches!(e, Error::LengthMismatch { arg: "out", .. }));
}

#[test]
fn a_run_whose_shape_differs_from_its_plan() {
    let shape = Shape::new(2, 4, 2, 16, Dtype::F16);
    let c = paged_case(vec![4, 4]);
    // The plan says f32 K; the pools hold f16.
    let plan = Plan::new(
        &shape.with_dtypes(Dtype::F32, Dtype::F16),
        &Options::default(),
    )
    .unwrap();
    let e = run(&plan, &c.batch()).unwrap_err();
    assert!(
        matches!(e, Error::DtypeMismatch { arg: "k_pages", .. }),
        "{e:?}"
    );
    // Plan for 3 sequences, batch of 2.
    let plan = Plan::new(&Shape { batch: 3, ..shape }, &Options::default()).unwrap();
    let e = run(&plan, &c.batch()).unwrap_err();
    assert!(matches!(
        e,
        Error::LengthMismatch {
            arg: "seq_lens",
            expected: 3,
            actual: 2
        }
    ));
    // Plan with q_len 2: q holds one token per sequence.
    let plan = Plan::new(&shape.with_q_len(2), &Options::default()).unwrap();
    let e = run(&plan, &c.batch()).unwrap_err();
    assert!(matches!(e, Error::LengthMismatch { arg: "q", .. }), "{e:?}");
}
