//! The subset run under Miri (`cargo +nightly miri test --features
//! generic-only --test miri`): the driver, the scalar tier, append, merge
//! and the C ABI on tiny cases of every layout and KV type. Miri checks
//! that no step reads outside its buffers, reads uninitialised memory or
//! breaks Rust's aliasing rules; the results are checked against the
//! reference as everywhere else. (Miri does not run the SIMD tiers'
//! intrinsics; those are covered by the sanitizer run of the whole suite.)
//! Runs natively too, as part of `cargo test`.

mod common;

use common::{capi_batch, capi_run, capi_strided_cache, capi_workspace, paired, Layout, Spec};
use gqa_kernels::{merge_states, Dtype, Shape, Tier};

#[test]
fn every_layout_and_type_on_the_scalar_tier() {
    let layouts = [
        Layout::Blgd,
        Layout::Bgld,
        Layout::Padded,
        Layout::Paged {
            page: 3,
            head_major: false,
        },
        Layout::Ring { extra: 1 },
    ];
    for (i, dt) in Dtype::ALL.into_iter().enumerate() {
        let layout = layouts[i % layouts.len()];
        // Group size 2, two query tokens, lengths 5 and 0 and 3.
        let shape = Shape::new(3, 4, 2, 32, dt)
            .with_dtypes(dt, paired(dt, Dtype::ALL[(i + 1) % Dtype::ALL.len()]))
            .with_q_len(2)
            .with_max_kv_len(5);
        let mut s = Spec::new(shape, vec![5, 0, 3]);
        s.layout = layout;
        s.seed = i as u64;
        s.window = (i % 2 == 0).then_some(3);
        s.softcap = (i % 3 == 0).then_some(5.0);
        s.bias = (i % 2 == 1).then_some(true);
        s.build()
            .check(Tier::Scalar)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Sparse lists whose short runs are staged (copied into the worker
/// scratch, one kernel call over several) and whose long runs are read in
/// place, on six KV types and a latent cache: the staged rows' bytes, the
/// row scales and the kernel's reads of them stay inside their buffers.
#[test]
fn staged_sparse_runs_on_the_scalar_tier() {
    // A float, the per-row scales of int8, a block format, fp8, 4-bit
    // blocks, fp8 with row scales (each type takes about a minute under
    // Miri).
    let types = [
        Dtype::F16,
        Dtype::Int8,
        Dtype::Q8_0,
        Dtype::Fp8E4M3,
        Dtype::Q4_0,
        Dtype::Fp8E4M3Row,
    ];
    for (i, dt) in types.into_iter().enumerate() {
        let shape = Shape::new(1, 4, 2, 32, dt).with_max_kv_len(40);
        let mut case = Spec::new(shape, vec![40]);
        case.layout = [
            Layout::Bgld,
            Layout::Paged {
                page: 3,
                head_major: true,
            },
        ][i % 2];
        case.seed = 70 + i as u64;
        case.latent = i % 3 == 0;
        let mut case = case.build();
        // Runs of 1, 2 and 3 positions (staged) and one of 17 (in place).
        let list: Vec<u32> = [0u32, 2, 3, 5, 6, 7, 9]
            .into_iter()
            .chain(12..29)
            .chain([31, 33, 34, 39])
            .collect();
        case.positions = Some((list.clone(), vec![0, list.len()], false));
        case.check(Tier::Scalar).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn merge_states_of_two_ranges() {
    let (rows, d) = (3, 4);
    let mut out = vec![0.5f32; rows * d];
    let mut lse = vec![0.1f32, f32::NEG_INFINITY, 2.0];
    let other = vec![-0.25f32; rows * d];
    let other_lse = vec![0.3f32, 1.0, f32::NEG_INFINITY];
    merge_states(&mut out, &mut lse, &other, &other_lse, d).unwrap();
    assert_eq!(&out[d..2 * d], &other[d..2 * d]);
    assert_eq!(&out[2 * d..], &[0.5; 4]);
    assert!(out[0] < 0.5 && out[0] > -0.25);
}

/// One step through the C ABI under Miri: plan, run, the host-driven
/// items, merge.
///
/// Long on purpose: the C structs are filled field by field, as a C host
/// writes them, before the calls; the batch and the strided cache start
/// from `common::capi_batch` and `common::capi_strided_cache` (every
/// optional field NULL or 0).
#[test]
fn the_c_abi_on_a_tiny_step() {
    use gqa_kernels::capi::*;
    let (h, g, d, l) = (4usize, 2usize, 8usize, 5usize);
    let shape = gqa_shape {
        struct_size: size_of::<gqa_shape>(),
        batch: 1,
        heads: h,
        kv_heads: g,
        head_dim_k: d,
        head_dim_v: d,
        q_len: 1,
        max_kv_len: 0,
        k_dtype: 0,
        v_dtype: 0,
    };
    let options = gqa_options {
        struct_size: size_of::<gqa_options>(),
        scale: 0.0,
        tier: 0, // scalar
        threads: 1,
        window: 0,
        softcap: 0.0,
        unit: GQA_UNIT_AUTO,
        precision: GQA_PRECISION_EXACT,
        cascade: 0,
    };
    let mut plan: *mut gqa_plan = std::ptr::null_mut();
    // SAFETY: valid structs and out-pointer.
    assert_eq!(
        unsafe { gqa_plan_create(&shape, &options, &mut plan) },
        GQA_OK
    );
    let mut k: Vec<f32> = (0..g * l * d).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut v: Vec<f32> = (0..g * l * d).map(|i| (i % 5) as f32 * 0.2).collect();
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
    let q = vec![0.3f32; h * d];
    let lens = [l];
    let batch = capi_batch(&q, &cache, &lens);
    let mut ws = capi_workspace(plan);
    let (st, mut out) = capi_run(plan, &batch, h * d, &mut ws);
    assert_eq!(st, GQA_OK);
    assert!(out.iter().all(|x| x.is_finite()));
    let whole = out.clone();
    // A short output is an error with a message, and writes nothing.
    out.fill(7.0);
    // SAFETY: a live plan; every pointer is valid for its length (the
    // output for one float more than the length passed).
    let st = unsafe {
        gqa_run(
            plan,
            &batch,
            out.as_mut_ptr(),
            out.len() - 1,
            std::ptr::null_mut(),
            0,
            ws.as_mut_ptr().cast(),
            ws.len(),
        )
    };
    assert_eq!(st, GQA_ERR_LENGTH);
    assert!(out.iter().all(|&x| x == 7.0));
    // Host-driven: item by item into one states buffer, from a pointer
    // that is not 64-byte aligned.
    let (mut items, mut st_len, mut sc_len) = (0, 0, 0);
    // SAFETY: a live plan and valid out-pointers.
    unsafe {
        assert_eq!(gqa_plan_work_items(plan, &mut items), GQA_OK);
        assert_eq!(gqa_plan_state_bytes(plan, &mut st_len), GQA_OK);
        assert_eq!(gqa_plan_scratch_bytes(plan, &mut sc_len), GQA_OK);
    }
    let mut states = vec![0u8; st_len + 1];
    let mut scratch = vec![0u8; sc_len];
    let sp = states[1..].as_mut_ptr();
    // SAFETY: `sp` is valid for `st_len` bytes, used by one call at a time.
    unsafe {
        assert_eq!(gqa_begin(plan, &batch, sp.cast(), st_len), GQA_OK);
        for item in (0..items).rev() {
            let st = gqa_run_items(
                plan,
                &batch,
                item,
                1,
                sp.cast(),
                st_len,
                scratch.as_mut_ptr().cast(),
                sc_len,
            );
            assert_eq!(st, GQA_OK);
        }
        let mut out2 = vec![f32::NAN; h * d];
        let st = gqa_finish(
            plan,
            &batch,
            sp.cast_const().cast(),
            st_len,
            out2.as_mut_ptr(),
            out2.len(),
            std::ptr::null_mut(),
            0,
        );
        assert_eq!(st, GQA_OK);
        assert_eq!(whole, out2);
    }
    // SAFETY: a live plan, destroyed once.
    unsafe { gqa_plan_destroy(plan) };
}
