//! Many threads share one plan (with and without its own worker pool) and
//! run steps on disjoint buffers at the same time: every result is bitwise
//! the one a lone thread gets, on every tier.

mod common;

use common::{capi_batch, capi_strided_cache, tiers, Layout, Spec};
use gqa_kernels::{Dtype, Options, Plan, Shape};

#[test]
fn threads_sharing_one_plan_get_the_lone_result() {
    let shape = Shape::new(2, 12, 3, 64, Dtype::F16).with_max_kv_len(300);
    // Eight different batches of one shape (different values, lengths and
    // layouts), one per host thread.
    let cases: Vec<_> = (0..8)
        .map(|i| {
            let mut s = Spec::new(shape, vec![300 - 17 * i, 1 + 31 * i]);
            s.seed = 100 + i as u64;
            s.layout = [Layout::Bgld, Layout::Blgd][i % 2];
            s.build()
        })
        .collect();
    for tier in tiers() {
        for threads in [1, 2] {
            let plan = Plan::new(
                &shape,
                &Options::default().with_tier(tier).with_threads(threads),
            )
            .unwrap();
            let lone: Vec<Vec<f32>> = cases
                .iter()
                .map(|c| {
                    let mut out = vec![0f32; shape.out_elems()];
                    plan.run(&c.batch(), &mut out, None, &mut plan.alloc_workspace())
                        .unwrap();
                    out
                })
                .collect();
            std::thread::scope(|s| {
                for (c, want) in cases.iter().zip(&lone) {
                    let plan = &plan;
                    s.spawn(move || {
                        let mut ws = plan.alloc_workspace();
                        let mut out = vec![0f32; shape.out_elems()];
                        for rep in 0..25 {
                            out.fill(f32::NAN);
                            plan.run(&c.batch(), &mut out, None, &mut ws).unwrap();
                            assert!(
                                out.iter()
                                    .zip(want)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{tier}, {threads} threads, rep {rep}: differs from a lone run"
                            );
                        }
                    });
                }
            });
        }
    }
}

/// Host-driven threading through the C ABI: four threads run interleaved
/// single items of one step into one shared states buffer (each borrowing
/// only its items' states); the merged result is bitwise `gqa_run`'s.
///
/// Long on purpose: the C structs are filled field by field, as a C host
/// writes them, before the calls; the batch and the strided cache start
/// from `common::capi_batch` and `common::capi_strided_cache` (every
/// optional field NULL or 0).
#[test]
fn c_abi_items_on_many_threads_match_gqa_run() {
    use gqa_kernels::capi::*;
    let (b, h, g, d, l) = (2usize, 12usize, 3usize, 64usize, 1300usize);
    let shape = gqa_shape {
        struct_size: size_of::<gqa_shape>(),
        batch: b,
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
    let n = b * g * l * d;
    let mut k: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut v: Vec<f32> = (0..n)
        .map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0)
        .collect();
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
    let q: Vec<f32> = (0..b * h * d)
        .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let lens = [l, 700];
    let batch = capi_batch(&q, &cache, &lens);
    let (mut ws_len, mut items, mut st_len, mut sc_len) = (0, 0, 0, 0);
    // SAFETY: a live plan and valid out-pointers.
    unsafe {
        assert_eq!(gqa_plan_workspace_bytes(plan, &mut ws_len), GQA_OK);
        assert_eq!(gqa_plan_work_items(plan, &mut items), GQA_OK);
        assert_eq!(gqa_plan_state_bytes(plan, &mut st_len), GQA_OK);
        assert_eq!(gqa_plan_scratch_bytes(plan, &mut sc_len), GQA_OK);
    }
    assert!(items > b * g, "the plan should split the KV range");
    let (mut want, mut want_lse) = (vec![0f32; b * h * d], vec![0f32; b * h]);
    let mut ws = vec![0u8; ws_len];
    // SAFETY: every pointer is valid for its length.
    let st = unsafe {
        gqa_run(
            plan,
            &batch,
            want.as_mut_ptr(),
            want.len(),
            want_lse.as_mut_ptr(),
            want_lse.len(),
            ws.as_mut_ptr().cast(),
            ws.len(),
        )
    };
    assert_eq!(st, GQA_OK);

    let mut states = vec![0u8; st_len];
    // Raw pointers cross threads as addresses.
    let (plan_a, batch_a, states_a) = (
        plan as usize,
        &batch as *const _ as usize,
        states.as_mut_ptr() as usize,
    );
    for rep in 0..5 {
        // SAFETY: valid pointers; no other call uses `states` now.
        let st = unsafe { gqa_begin(plan, &batch, states.as_mut_ptr().cast(), st_len) };
        assert_eq!(st, GQA_OK);
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    let mut scratch = vec![0u8; sc_len];
                    for item in (t..items).step_by(4) {
                        // SAFETY: the plan, batch and states outlive the
                        // scope; the threads' item sets are disjoint.
                        let st = unsafe {
                            gqa_run_items(
                                plan_a as *const gqa_plan,
                                batch_a as *const gqa_batch,
                                item,
                                1,
                                states_a as *mut std::ffi::c_void,
                                st_len,
                                scratch.as_mut_ptr().cast(),
                                sc_len,
                            )
                        };
                        assert_eq!(st, GQA_OK);
                    }
                });
            }
        });
        let (mut out, mut lse) = (vec![f32::NAN; b * h * d], vec![f32::NAN; b * h]);
        // SAFETY: every item has run; pointers valid for their lengths.
        let st = unsafe {
            gqa_finish(
                plan,
                &batch,
                states.as_ptr().cast(),
                st_len,
                out.as_mut_ptr(),
                out.len(),
                lse.as_mut_ptr(),
                lse.len(),
            )
        };
        assert_eq!(st, GQA_OK);
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same(&out, &want) && same(&lse, &want_lse),
            "rep {rep}: differs from gqa_run"
        );
    }
    // SAFETY: a live plan, destroyed once.
    unsafe { gqa_plan_destroy(plan) };
}
