//! Entries that run a step: in one call, or in parts on the host's threads, and merging states.

use super::*;

/// The batch a `gqa_batch` describes.
///
/// # Safety
/// `batch` is null or valid, and every pointer in it valid for its length
/// for `'a`.
unsafe fn batch_of<'a>(batch: *const gqa_batch) -> R<Batch<'a>> {
    // SAFETY: the caller's contract on every pointer.
    unsafe {
        let b = read_struct_since("batch", batch, std::mem::offset_of!(gqa_batch, tree_mask))?;
        if b.cache.is_null() {
            return Err(null("batch.cache"));
        }
        let c = read_struct_since(
            "batch.cache",
            b.cache,
            std::mem::offset_of!(gqa_cache, latent),
        )?;
        let seq_lens = slice("batch.seq_lens", b.seq_lens, b.n_seqs)?;
        let q = slice("batch.q", b.q, b.q_elems)?;
        let mut bt = Batch::new(q, cache(&c, b.n_seqs)?, seq_lens);
        if !b.q_offsets.is_null() {
            let n = b.n_seqs.checked_add(1).ok_or_else(|| {
                Fail(GQA_ERR_OUT_OF_BOUNDS, "`batch.n_seqs` is impossible".into())
            })?;
            bt = bt.with_q_offsets(slice("batch.q_offsets", b.q_offsets, n)?);
        }
        if !b.tree_mask.is_null() {
            bt = bt.with_tree_mask(slice("batch.tree_mask", b.tree_mask, b.tree_mask_len)?);
        }
        if !b.positions.is_null() || !b.position_offsets.is_null() {
            let per_kv_head = match b.positions_per_kv_head {
                0 => false,
                1 => true,
                x => {
                    return Err(invalid(format!(
                        "`batch.positions_per_kv_head` = {x} is not 0 or 1"
                    )))
                }
            };
            bt = bt.with_positions(crate::Positions {
                positions: slice("batch.positions", b.positions, b.positions_len)?,
                offsets: slice(
                    "batch.position_offsets",
                    b.position_offsets,
                    b.position_offsets_len,
                )?,
                per_kv_head,
            });
        }
        if !b.prefix_lens.is_null() {
            let n = b.n_prefix_groups.checked_add(1).ok_or_else(|| {
                Fail(
                    GQA_ERR_OUT_OF_BOUNDS,
                    "`batch.n_prefix_groups` is impossible".into(),
                )
            })?;
            bt = bt.with_prefix_groups(crate::PrefixGroups {
                lens: slice("batch.prefix_lens", b.prefix_lens, b.n_prefix_groups)?,
                offsets: slice("batch.prefix_offsets", b.prefix_offsets, n)?,
                members: slice(
                    "batch.prefix_members",
                    b.prefix_members,
                    b.prefix_members_len,
                )?,
            });
        }
        if !b.bias.is_null() {
            bt = bt.with_bias(Bias {
                data: slice("batch.bias", b.bias, b.bias_len)?,
                seq_stride: b.bias_seq_stride,
                token_stride: b.bias_token_stride,
                head_stride: b.bias_head_stride,
            });
        }
        Ok(bt)
    }
}

/// The f32 item states inside a host's `states` buffer of `len` bytes
/// (at least `gqa_plan_state_bytes`): the first 64-byte aligned address,
/// as `Plan::begin` carves it, and the f32 count of all the states.
fn states_base(p: &Plan, states: *mut c_void, len: usize) -> R<(*mut f32, usize)> {
    if states.is_null() {
        return Err(null("states"));
    }
    let needed = p.state_bytes();
    if len < needed {
        return Err(Error::BufferTooSmall {
            arg: "states",
            needed,
            len,
        }
        .into());
    }
    let off = states.align_offset(64).min(64);
    Ok((
        states.cast::<u8>().wrapping_add(off).cast::<f32>(),
        p.work_items() * p.state_len(),
    ))
}

/// Number of independent work items of a step (one per sequence, KV split
/// and KV head), for host-driven threading.
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_work_items(plan: *const gqa_plan, out: *mut usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, p.work_items()) }
    })
}

/// Bytes of the states buffer of a host-driven step (exact; any alignment).
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_state_bytes(plan: *const gqa_plan, out: *mut usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, p.state_bytes()) }
    })
}

/// Bytes of scratch each `gqa_run_items` call needs (exact; any alignment).
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_scratch_bytes(plan: *const gqa_plan, out: *mut usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, p.scratch_bytes()) }
    })
}

/// Starts a host-driven step: checks `batch` against the plan and resets
/// every item state in `states` (`gqa_plan_state_bytes`, any contents).
///
/// # Safety
/// `plan` is a live handle; every pointer is valid for its length; nothing
/// else uses `states` during the call.
#[no_mangle]
pub unsafe extern "C" fn gqa_begin(
    plan: *const gqa_plan,
    batch: *const gqa_batch,
    states: *mut c_void,
    states_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let p = plan_ref(plan)?;
            let bt = batch_of(batch)?;
            if states.is_null() {
                return Err(null("states"));
            }
            let st = slice_mut("states", states.cast::<u8>(), states_len)?;
            p.begin(&bt, st)?;
        }
        Ok(())
    })
}

/// Runs work items `first .. first + count` of a step begun with
/// `gqa_begin`, writing only their states. Calls on disjoint item ranges
/// may run at the same time on any threads (each with its own `scratch`,
/// `gqa_plan_scratch_bytes`).
///
/// # Safety
/// `plan` is a live handle; every pointer is valid for its length; no other
/// call uses the same items' states or `scratch` at the same time.
#[no_mangle]
pub unsafe extern "C" fn gqa_run_items(
    plan: *const gqa_plan,
    batch: *const gqa_batch,
    first: usize,
    count: usize,
    states: *mut c_void,
    states_len: usize,
    scratch: *mut c_void,
    scratch_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let p = plan_ref(plan)?;
            let bt = batch_of(batch)?;
            let items = p.work_items();
            if first.checked_add(count).is_none_or(|e| e > items) {
                return Err(Fail(
                    GQA_ERR_OUT_OF_BOUNDS,
                    format!("items `first` = {first} + `count` = {count} exceed the plan's {items} work items"),
                ));
            }
            let (base, _) = states_base(p, states, states_len)?;
            let slen = p.state_len();
            // Only these items' states are borrowed: other threads may
            // hold the others.
            let st = slice_mut("states", base.add(first * slen), count * slen)?;
            if scratch.is_null() {
                return Err(null("scratch"));
            }
            let sc = slice_mut("scratch", scratch.cast::<u8>(), scratch_len)?;
            p.run_item_range(&bt, first, st, sc)?;
        }
        Ok(())
    })
}

/// Merges the item states of a step whose every item ran into `out`
/// `[T, H, head_dim_v]` and `lse` `[T, H]` (may be NULL).
///
/// # Safety
/// `plan` is a live handle; every pointer is valid for its length; no
/// `gqa_run_items` call on `states` is still running.
#[no_mangle]
pub unsafe extern "C" fn gqa_finish(
    plan: *const gqa_plan,
    batch: *const gqa_batch,
    states: *const c_void,
    states_len: usize,
    out: *mut f32,
    out_len: usize,
    lse: *mut f32,
    lse_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let p = plan_ref(plan)?;
            let bt = batch_of(batch)?;
            let (base, n) = states_base(p, states.cast_mut(), states_len)?;
            let st = slice("states", base.cast_const(), n)?;
            let out = slice_mut("out", out, out_len)?;
            let lse = if lse.is_null() {
                None
            } else {
                Some(slice_mut("lse", lse, lse_len)?)
            };
            p.finish_items(&bt, st, out, lse)?;
        }
        Ok(())
    })
}

/// Runs one step: `out` `[T, H, Dv]`, `lse` `[T, H]` (may be NULL),
/// `workspace` at least [`gqa_plan_workspace_bytes`].
///
/// # Safety
/// `plan` is a live handle; every pointer is valid for its length; `out`,
/// `lse` and `workspace` are not aliased by the inputs.
#[no_mangle]
pub unsafe extern "C" fn gqa_run(
    plan: *const gqa_plan,
    batch: *const gqa_batch,
    out: *mut f32,
    out_len: usize,
    lse: *mut f32,
    lse_len: usize,
    workspace: *mut c_void,
    workspace_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let p = plan_ref(plan)?;
            let bt = batch_of(batch)?;
            let out = slice_mut("out", out, out_len)?;
            let lse = if lse.is_null() {
                None
            } else {
                Some(slice_mut("lse", lse, lse_len)?)
            };
            let ws = slice_mut("workspace", workspace.cast::<u8>(), workspace_len)?;
            p.run(&bt, out, lse, ws)?;
        }
        Ok(())
    })
}

/// Merges the state `(other_out, other_lse)` into `(out, lse)`: `rows`
/// rows of `head_dim_v` (see [`crate::merge_states`]).
///
/// # Safety
/// Every pointer is valid for its length (`rows * head_dim_v` or `rows`);
/// `out`/`lse` do not alias the others.
#[no_mangle]
pub unsafe extern "C" fn gqa_merge_states(
    out: *mut f32,
    lse: *mut f32,
    other_out: *const f32,
    other_lse: *const f32,
    rows: usize,
    head_dim_v: usize,
) -> i32 {
    guard(|| {
        let n = rows.checked_mul(head_dim_v).ok_or_else(|| {
            Fail(
                GQA_ERR_OUT_OF_BOUNDS,
                "`rows * head_dim_v` overflows".into(),
            )
        })?;
        // SAFETY: the caller's contract.
        unsafe {
            crate::merge_states(
                slice_mut("out", out, n)?,
                slice_mut("lse", lse, rows)?,
                slice("other_out", other_out, n)?,
                slice("other_lse", other_lse, rows)?,
                head_dim_v,
            )?;
        }
        Ok(())
    })
}
