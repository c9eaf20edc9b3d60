//! Sparse position lists (`Batch::positions`): each sequence, or each
//! (sequence, KV head), attends to the cached positions its list names,
//! read in place. Random lists (single positions and Quest-like runs of 16,
//! empty lists, every position) on every tier and unit, every layout, with
//! KV splits, multi-token and ragged batches and the variants, against the
//! f64 reference; the list of every position bitwise the dense step;
//! thread invariance; the lists the contract rejects; the C ABI.

mod common;

use common::{
    assert_same_bits, capi_batch, capi_run, capi_strided_cache, capi_workspace, check_all,
    check_thread_invariance, gapped_runs, six_layouts, Mask, MaskKind, Sparse, Spec,
};
use gqa_kernels::{Batch, Dtype, Error, KvBuffer, KvTensor, Options, Plan, Positions, Shape};

/// Lists per sequence and per KV head, single positions and runs of 16,
/// sparse and dense, over lengths 1100 and 517 (splits of 512 with
/// `max_kv_len = 2048`) and an empty sequence; group sizes 4, 7 and 5;
/// the variants spread over the cases.
#[test]
fn random_lists_on_every_tier_unit_and_layout() {
    let mut n = 0u64;
    for (keep, run) in [(20u8, 1usize), (60, 16), (250, 3), (0, 1)] {
        for per_kv_head in [false, true] {
            let layout = six_layouts()[n as usize % six_layouts().len()];
            let (heads, kv_heads, d) = match n % 3 {
                0 => (8, 2, 64),
                1 => (7, 1, 48),
                _ => (10, 2, 80),
            };
            let q_len = [1usize, 3][n as usize % 2];
            let shape = Shape::new(3, heads, kv_heads, d, Dtype::F16)
                .with_q_len(q_len)
                .with_max_kv_len(2048);
            let mut s = Spec::new(
                shape,
                vec![1100, 517, if n.is_multiple_of(4) { 0 } else { q_len }],
            );
            s.layout = layout;
            s.seed = 300 + n;
            s.sparse = Some(Sparse {
                per_kv_head,
                keep,
                run,
            });
            match n % 5 {
                1 => s.window = Some(600),
                2 => s.sinks = Some((0..heads).map(|h| 0.5 * h as f32 - 1.0).collect()),
                3 => {
                    s.softcap = Some(30.0);
                    s.mask = Some(Mask {
                        kind: MaskKind::Range(16, 600),
                        value: f32::NEG_INFINITY,
                    });
                }
                4 => {
                    s.alibi = Some(gqa_kernels::alibi_slopes(heads, 8.0).unwrap());
                    s.tree = q_len > 1;
                }
                _ => {}
            }
            eprintln!(
                "case {n}: keep {keep}/256 runs of {run}, per KV head {per_kv_head}, {layout:?}"
            );
            check_all(&s.build());
            n += 1;
        }
    }
}

/// Every dtype with a sparse list, on a latent cache too.
#[test]
fn lists_over_every_cache_type() {
    for (i, dt) in Dtype::ALL.into_iter().enumerate() {
        let shape = Shape::new(2, 8, 2, 64, dt).with_max_kv_len(1024);
        let mut s = Spec::new(shape, vec![700, 33]);
        s.seed = 50 + i as u64;
        s.layout = six_layouts()[i % six_layouts().len()];
        s.sparse = Some(Sparse {
            per_kv_head: i % 2 == 0,
            keep: 40,
            run: 1 + i % 4,
        });
        s.latent = i % 3 == 0;
        check_all(&s.build());
    }
}

/// A list of every position is the dense step, bit for bit: the runs are
/// cut where the dense walk cuts its calls. Every tier and unit, one and
/// two threads, token-major and paged layouts too.
#[test]
fn every_position_listed_is_the_dense_step_bit_for_bit() {
    for (i, layout) in six_layouts().into_iter().enumerate() {
        let shape = Shape::new(2, 8, 2, 64, Dtype::Bf16)
            .with_q_len(2)
            .with_max_kv_len(2048);
        let mut s = Spec::new(shape, vec![1300, 77]);
        s.layout = layout;
        s.seed = 10 + i as u64;
        let dense = s.build();
        s.sparse = Some(Sparse {
            per_kv_head: i % 2 == 1,
            keep: 255,
            run: 1,
        });
        let mut sparse = s.build();
        // keep 255 of 256 drops some: list every position instead.
        let per = if i % 2 == 1 { 2 } else { 1 };
        let (mut pos, mut off) = (Vec::new(), vec![0]);
        for list in 0..2 * per {
            pos.extend((0..dense.seq_lens[list / per] as u32).collect::<Vec<_>>());
            off.push(pos.len());
        }
        sparse.positions = Some((pos, off, i % 2 == 1));
        sparse.q = dense.q.clone();
        sparse.k = dense.k.clone();
        sparse.v = dense.v.clone();
        assert_same_bits(&dense, &sparse, "dense step vs a list of every position");
    }
}

/// Lists whose runs are staged (copied, several per kernel call): runs of
/// 1 to 80 positions one position apart, so that staged calls fill up and
/// flush mid-run, runs as long as a staged call or longer are read in
/// place between them, and the last positions (seen by some tokens only,
/// drafts of a tree) are read in place too. Every tier and unit, every
/// layout, every K/V type pair family (int8 row scales and q8_0 blocks
/// staged), a latent cache, a window, per-KV-head lists, and the ALiBi and
/// bias steps that stage nothing; thread invariance over KV splits.
#[test]
fn staged_runs_match_the_reference() {
    let dtypes = [
        Dtype::F16,
        Dtype::Int8,
        Dtype::Q8_0,
        Dtype::F32,
        Dtype::Bf16,
        Dtype::Fp8E4M3,
    ];
    for (i, layout) in six_layouts().into_iter().enumerate() {
        let dt = dtypes[i % dtypes.len()];
        let q_len = [1usize, 4][i % 2];
        let shape = Shape::new(2, 12, 2, 64, dt)
            .with_q_len(q_len)
            .with_max_kv_len(4096);
        let lens = vec![3001, 1290];
        let mut s = Spec::new(shape, lens.clone());
        s.layout = layout;
        s.seed = 900 + i as u64;
        s.latent = i == 2;
        match i {
            1 => s.window = Some(1500),
            3 => s.tree = true,
            4 => s.alibi = Some(gqa_kernels::alibi_slopes(12, 8.0).unwrap()),
            5 => {
                s.softcap = Some(20.0);
                s.bias = Some(true);
            }
            _ => {}
        }
        let mut case = s.build();
        let per_kv_head = i % 2 == 1;
        let lists = if per_kv_head { 4 } else { 2 };
        // Runs of 1, 2, ..., 80 positions (shifted per list), each
        // followed by one position left out.
        let (pos, off) = gapped_runs(&lens, lists, 3, 7, 80);
        case.positions = Some((pos, off, per_kv_head));
        eprintln!("case {i}: {dt:?} {layout:?} q_len {q_len}");
        check_all(&case);
        if i == 0 {
            check_thread_invariance(&case, &[2, 3]);
        }
    }
}

/// Thread invariance with sparse lists over several KV splits.
#[test]
fn sparse_results_do_not_depend_on_threads() {
    let shape = Shape::new(2, 16, 2, 64, Dtype::F16).with_max_kv_len(4096);
    let mut s = Spec::new(shape, vec![3000, 900]);
    s.sparse = Some(Sparse {
        per_kv_head: true,
        keep: 30,
        run: 16,
    });
    check_thread_invariance(&s.build(), &[2, 3]);
}

/// The lists the contract rejects, each naming what is wrong.
#[test]
fn bad_lists_are_rejected() {
    let (l, d) = (40usize, 32usize);
    let shape = Shape::new(2, 4, 2, d, Dtype::F32);
    let k = KvBuffer::from_f32(Dtype::F32, &vec![0.5f32; 2 * 2 * l * d], d).unwrap();
    let q = vec![0.25f32; 2 * 4 * d];
    let lens = [l, 10];
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let run = |p: Positions<'_>| {
        let t = KvTensor::bgld(k.data(), l, 2, d);
        let mut out = vec![0f32; shape.out_elems()];
        plan.run(
            &Batch::strided(&q, t, t, &lens).with_positions(p),
            &mut out,
            None,
            &mut plan.alloc_workspace(),
        )
    };
    let ok = [0u32, 5, 39, 1, 9];
    assert!(run(Positions::per_sequence(&ok, &[0, 3, 5])).is_ok());
    let err = |pos: &[u32], off: &[usize], per: bool| {
        run(Positions {
            positions: pos,
            offsets: off,
            per_kv_head: per,
        })
        .unwrap_err()
    };
    // Past the sequence's length (10 for sequence 1).
    assert!(matches!(
        err(&[0, 5, 39, 1, 10], &[0, 3, 5], false),
        Error::InvalidPositions {
            list: 1,
            index: 4,
            value: 10,
            ..
        }
    ));
    assert!(matches!(
        err(&[0, 40], &[0, 2, 2], false),
        Error::InvalidPositions {
            list: 0,
            index: 1,
            value: 40,
            ..
        }
    ));
    // Not increasing, repeated.
    assert!(matches!(
        err(&[5, 3], &[0, 2, 2], false),
        Error::InvalidPositions {
            index: 1,
            value: 3,
            ..
        }
    ));
    assert!(matches!(
        err(&[5, 5], &[0, 2, 2], false),
        Error::InvalidPositions { index: 1, .. }
    ));
    // Offsets: count (per KV head needs B·G + 1), start, order, end.
    assert!(matches!(
        err(&ok, &[0, 3, 5], true),
        Error::LengthMismatch {
            arg: "positions.offsets",
            expected: 5,
            actual: 3
        }
    ));
    assert!(matches!(
        err(&ok, &[1, 3, 5], false),
        Error::InvalidPositionOffsets { index: 0, .. }
    ));
    assert!(matches!(
        err(&ok, &[0, 3, 2], false),
        Error::InvalidPositionOffsets { index: 2, .. }
    ));
    assert!(matches!(
        err(&ok, &[0, 3, 4], false),
        Error::LengthMismatch {
            arg: "positions",
            expected: 4,
            actual: 5
        }
    ));
    assert!(matches!(
        err(&ok, &[0, 3, 6], false),
        Error::InvalidPositionOffsets {
            index: 2,
            value: 6,
            ..
        }
    ));
    // Empty lists: no position, zeros and lse = -inf.
    let t = KvTensor::bgld(k.data(), l, 2, d);
    let mut out = vec![1f32; shape.out_elems()];
    let mut lse = vec![0f32; 8];
    plan.run(
        &Batch::strided(&q, t, t, &lens).with_positions(Positions::per_sequence(&[], &[0, 0, 0])),
        &mut out,
        Some(&mut lse),
        &mut plan.alloc_workspace(),
    )
    .unwrap();
    assert!(out.iter().all(|&x| x == 0.0) && lse.iter().all(|&x| x == f32::NEG_INFINITY));
}

/// The C ABI's `gqa_batch.positions`: the Rust step's bits, per KV head
/// too; a bad flag refused; a batch struct of the previous version (without
/// the fields) passes none.
///
/// Long on purpose: the C structs are filled field by field, as a C host
/// writes them, before the calls; the batch and the strided cache start
/// from `common::capi_batch` and `common::capi_strided_cache` (every
/// optional field NULL or 0).
#[test]
fn c_abi_positions() {
    use gqa_kernels::capi::*;
    let (h, g, d, l) = (8usize, 2usize, 64usize, 300usize);
    let shape = gqa_shape {
        struct_size: size_of::<gqa_shape>(),
        batch: 1,
        heads: h,
        kv_heads: g,
        head_dim_k: d,
        head_dim_v: d,
        q_len: 1,
        max_kv_len: l,
        k_dtype: 0,
        v_dtype: 0,
    };
    let mut plan: *mut gqa_plan = std::ptr::null_mut();
    // SAFETY: a valid shape and out-pointer (NULL options: defaults).
    assert_eq!(
        unsafe { gqa_plan_create(&shape, std::ptr::null(), &mut plan) },
        GQA_OK
    );
    let mut k: Vec<f32> = (0..g * l * d)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut v: Vec<f32> = (0..g * l * d)
        .map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0)
        .collect();
    let q: Vec<f32> = (0..h * d)
        .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let lens = [l];
    // Per KV head: head 0 sees 7 scattered positions, head 1 a run of 20.
    let pos: Vec<u32> = [3u32, 50, 51, 52, 120, 255, 299]
        .into_iter()
        .chain(100..120)
        .collect();
    let off = [0usize, 7, 27];
    let rs_shape = Shape::new(1, h, g, d, Dtype::F32).with_max_kv_len(l);
    let rs_plan = Plan::new(&rs_shape, &Options::default()).unwrap();
    let mut want = vec![0f32; h * d];
    rs_plan
        .run(
            &Batch::strided(
                &q,
                KvTensor::bgld(&k[..], l, g, d),
                KvTensor::bgld(&v[..], l, g, d),
                &lens,
            )
            .with_positions(Positions::per_kv_head(&pos, &off)),
            &mut want,
            None,
            &mut rs_plan.alloc_workspace(),
        )
        .unwrap();
    let kv = |p: &mut Vec<f32>| gqa_kv {
        dtype: 0,
        data: p.as_mut_ptr().cast(),
        len: p.len(),
        scales: std::ptr::null_mut(),
        scales_len: 0,
        outer_stride: g * l * d,
        token_stride: d,
        head_stride: l * d,
    };
    let cache = capi_strided_cache(kv(&mut k), kv(&mut v), l);
    let mut batch = gqa_batch {
        positions: pos.as_ptr(),
        positions_len: pos.len(),
        position_offsets: off.as_ptr(),
        position_offsets_len: off.len(),
        positions_per_kv_head: 1,
        ..capi_batch(&q, &cache, &lens)
    };
    let mut ws = capi_workspace(plan);
    let mut run = |batch: &gqa_batch| capi_run(plan, batch, h * d, &mut ws);
    let (st, out) = run(&batch);
    assert_eq!(st, GQA_OK);
    assert!(out
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    batch.positions_per_kv_head = 2;
    assert_eq!(run(&batch).0, GQA_ERR_INVALID_ARGUMENT);
    // SAFETY: the message is a NUL-terminated string of this thread.
    let msg = unsafe { std::ffi::CStr::from_ptr(gqa_last_error()) };
    assert!(
        msg.to_string_lossy().contains("positions_per_kv_head"),
        "{msg:?}"
    );
    // A position past the length: refused, naming it.
    batch.positions_per_kv_head = 1;
    let bad: Vec<u32> = pos
        .iter()
        .map(|&p| if p == 299 { 300 } else { p })
        .collect();
    batch.positions = bad.as_ptr();
    assert_eq!(run(&batch).0, GQA_ERR_INVALID_ARGUMENT);
    // The previous version's struct: no lists, the dense step.
    batch.struct_size = std::mem::offset_of!(gqa_batch, positions);
    let (st, dense) = run(&batch);
    assert_eq!(st, GQA_OK);
    assert!(dense.iter().zip(&want).any(|(a, b)| a != b));
    // SAFETY: a live plan.
    unsafe { gqa_plan_destroy(plan) };
}
