//! The C ABI's batch and strided cache structs with every optional field
//! NULL or 0, for the C ABI tests to fill the rest with struct update
//! syntax, and the workspace and `gqa_run` call every C ABI test makes.

use gqa_kernels::capi::{
    gqa_batch, gqa_cache, gqa_kv, gqa_plan, gqa_plan_workspace_bytes, gqa_run, GQA_LAYOUT_STRIDED,
    GQA_OK,
};

/// A `gqa_batch` of queries `q` over `cache`, one sequence per entry of
/// `seq_lens`; no ragged query offsets, bias, tree mask, position lists
/// or prefix groups.
pub fn capi_batch(q: &[f32], cache: &gqa_cache, seq_lens: &[usize]) -> gqa_batch {
    gqa_batch {
        struct_size: size_of::<gqa_batch>(),
        q: q.as_ptr(),
        q_elems: q.len(),
        cache,
        seq_lens: seq_lens.as_ptr(),
        n_seqs: seq_lens.len(),
        q_offsets: std::ptr::null(),
        bias: std::ptr::null(),
        bias_len: 0,
        bias_seq_stride: 0,
        bias_token_stride: 0,
        bias_head_stride: 0,
        tree_mask: std::ptr::null(),
        tree_mask_len: 0,
        positions: std::ptr::null(),
        positions_len: 0,
        position_offsets: std::ptr::null(),
        position_offsets_len: 0,
        positions_per_kv_head: 0,
        prefix_lens: std::ptr::null(),
        n_prefix_groups: 0,
        prefix_offsets: std::ptr::null(),
        prefix_members: std::ptr::null(),
        prefix_members_len: 0,
    }
}

/// A strided `gqa_cache` of `k` and `v`, `capacity` positions per
/// sequence; no block table, no first positions, not latent.
pub fn capi_strided_cache(k: gqa_kv, v: gqa_kv, capacity: usize) -> gqa_cache {
    gqa_cache {
        struct_size: size_of::<gqa_cache>(),
        layout: GQA_LAYOUT_STRIDED,
        k,
        v,
        page_size: 0,
        block_table: std::ptr::null(),
        block_table_len: 0,
        blocks_per_seq: 0,
        capacity,
        first_pos: std::ptr::null(),
        latent: 0,
    }
}

/// A zeroed workspace of the size `plan` asks for (asserting the query
/// succeeds). `plan` must be a live handle.
pub fn capi_workspace(plan: *const gqa_plan) -> Vec<u8> {
    let mut ws_len = 0;
    // SAFETY: the caller passes a live plan; `ws_len` is valid for a write.
    assert_eq!(
        unsafe { gqa_plan_workspace_bytes(plan, &mut ws_len) },
        GQA_OK
    );
    vec![0u8; ws_len]
}

/// `gqa_run` of `batch` on `plan` (a live handle; `batch`'s pointers valid
/// for their lengths) into a fresh NaN-filled output of `out_len` floats,
/// without `lse`, in workspace `ws`: the status and the output.
pub fn capi_run(
    plan: *const gqa_plan,
    batch: &gqa_batch,
    out_len: usize,
    ws: &mut [u8],
) -> (i32, Vec<f32>) {
    let mut out = vec![f32::NAN; out_len];
    // SAFETY: the caller's contract on `plan` and `batch`; `out` and `ws`
    // are valid for their lengths.
    let st = unsafe {
        gqa_run(
            plan,
            batch,
            out.as_mut_ptr(),
            out.len(),
            std::ptr::null_mut(),
            0,
            ws.as_mut_ptr().cast(),
            ws.len(),
        )
    };
    (st, out)
}
