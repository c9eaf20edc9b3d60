//! The C ABI with arbitrary struct contents and sizes: `struct_size`,
//! dtype, tier and layout codes, dims, strides, lengths, page indices,
//! NULL or real pointers (every pointer given is valid for the length
//! given beside it, which is the ABI's one precondition). Every call must
//! return a status; a failed call must leave a message; a successful run
//! must leave finite outputs or NaN only where the inputs hold NaN (they
//! never do here); a failed append must leave the cache untouched.
//!
//! Shared by the cargo-fuzz target and `tests/fuzz_regressions.rs`.

use std::ffi::{c_void, CStr};

use arbitrary::{Result, Unstructured};
use gqa_kernels::capi::*;

/// Inputs that made a plan and ran a batch through it (a coverage signal
/// for the regression test).
pub static CHECKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs one input.
pub fn run(data: &[u8]) {
    let _ = go(&mut Unstructured::new(data));
}

/// A small count, sometimes 0 or past any limit.
fn count(u: &mut Unstructured<'_>, typical: usize) -> Result<usize> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => 0,
        1 => usize::MAX / u.int_in_range(1..=4usize)?,
        2 => u.int_in_range(0..=4096usize)?,
        _ => u.int_in_range(1..=typical)?,
    })
}

fn code(u: &mut Unstructured<'_>, n: i32) -> Result<i32> {
    Ok(if u.ratio(1, 8)? {
        u.arbitrary()?
    } else {
        u.int_in_range(-1..=n)?
    })
}

fn struct_size(u: &mut Unstructured<'_>, real: usize) -> Result<usize> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => 0,
        1 => real - 8,
        2 => real + 8,
        _ => real,
    })
}

/// A buffer of `n` 8-byte words whose every byte is at most 0x3B, so that
/// read as any KV type (f32, f16, bf16, int8, q8_0 scales, either fp8)
/// every value is finite.
fn words(u: &mut Unstructured<'_>, n: usize) -> Result<Vec<u64>> {
    let mut v = vec![0u64; n];
    for x in v.iter_mut() {
        let b = u64::from(u.int_in_range(0..=0x3Bu8)?);
        *x = (0..8).fold(0u64, |w, i| (w << 8) | ((b + 7 * i) % 0x3C));
    }
    Ok(v)
}

/// A failed call left a message, and was not a caught panic (always a
/// library bug).
fn message_is_set(status: i32) {
    // SAFETY: the library returns a NUL-terminated string of this thread.
    let m = unsafe { CStr::from_ptr(gqa_last_error()) };
    assert!(!m.to_bytes().is_empty(), "a failed call left no message");
    assert_ne!(status, GQA_ERR_PANIC, "the library panicked: {m:?}");
}

/// One input, drawn and checked in order: each C struct, each call, and the check of its status. Long on purpose: every
/// draw depends on the ones before it, and the input's bytes are consumed
/// in this order, so the regression files replay only if it stays one
/// straight sequence.
fn go(u: &mut Unstructured<'_>) -> Result<()> {
    // Mostly a plausible shape (so that runs and appends get exercised),
    // sometimes anything at all.
    let shape = if u.ratio(3, 4)? {
        let kv_heads = u.int_in_range(1..=4usize)?;
        let (k_dtype, v_dtype) = (u.int_in_range(0..=6i32)?, u.int_in_range(0..=6i32)?);
        let dim = |u: &mut Unstructured<'_>, t: i32| -> Result<usize> {
            let d = u.int_in_range(1..=72usize)?;
            Ok(if t == 4 { d.next_multiple_of(32) } else { d })
        };
        gqa_shape {
            struct_size: size_of::<gqa_shape>(),
            batch: u.int_in_range(0..=3usize)?,
            heads: kv_heads * u.int_in_range(1..=8usize)?,
            kv_heads,
            head_dim_k: dim(u, k_dtype)?,
            head_dim_v: dim(u, v_dtype)?,
            q_len: u.int_in_range(0..=3usize)?,
            max_kv_len: *u.choose(&[0usize, 16, 64])?,
            k_dtype,
            v_dtype,
        }
    } else {
        gqa_shape {
            struct_size: struct_size(u, size_of::<gqa_shape>())?,
            batch: count(u, 3)?,
            heads: count(u, 16)?,
            kv_heads: count(u, 4)?,
            head_dim_k: count(u, 72)?,
            head_dim_v: count(u, 72)?,
            q_len: count(u, 3)?,
            max_kv_len: count(u, 64)?,
            k_dtype: code(u, 7)?,
            v_dtype: code(u, 7)?,
        }
    };
    let options = gqa_options {
        struct_size: struct_size(u, size_of::<gqa_options>())?,
        scale: *u.choose(&[0.0f32, 0.125, -1.0, f32::NAN, f32::INFINITY])?,
        tier: code(u, 4)?,
        threads: u.int_in_range(0..=3usize)?,
        window: count(u, 40)?,
        softcap: *u.choose(&[0.0f32, 30.0, -2.0, f32::NAN])?,
        unit: code(u, 6)?,
        precision: code(u, 2)?,
        // Takes prefix groups (1) or not (0, -1 as 0), or a bad flag.
        cascade: code(u, 1)?.max(0),
    };
    let mut plan: *mut gqa_plan = std::ptr::null_mut();
    let opts = if u.arbitrary()? {
        &options as *const _
    } else {
        std::ptr::null()
    };
    // SAFETY: the structs are valid for their own size; `struct_size`
    // larger than that is read only up to the library's size, which is
    // the struct's.
    let st = unsafe { gqa_plan_create(&shape, opts, &mut plan) };
    if st != GQA_OK {
        message_is_set(st);
        assert!(plan.is_null());
        return Ok(());
    }
    let mut ws_len = 0usize;
    // SAFETY: a live plan and a valid out-pointer.
    assert_eq!(
        unsafe { gqa_plan_workspace_bytes(plan, &mut ws_len) },
        GQA_OK
    );
    if ws_len > 64 << 20 {
        // A valid plan for a huge batch: its workspace is the host's to
        // find; this harness does not allocate it.
        // SAFETY: a live plan, destroyed once.
        unsafe { gqa_plan_destroy(plan) };
        return Ok(());
    }
    // A real plan: run an arbitrary batch over arbitrary, correctly sized
    // buffers.
    CHECKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let n_seqs = u.int_in_range(0..=3usize)?;
    let kv_words = u.int_in_range(0..=2048usize)?;
    let mut kbuf = words(u, kv_words)?;
    let mut vbuf = words(u, kv_words)?;
    let mut kscales = vec![0.5f32; u.int_in_range(0..=256usize)?];
    let mut vscales = vec![0.25f32; u.int_in_range(0..=256usize)?];
    let table: Vec<u32> = (0..u.int_in_range(0..=8usize)?)
        .map(|_| u.int_in_range(0..=9u32))
        .collect::<Result<_>>()?;
    let first_pos: Vec<usize> = (0..n_seqs)
        .map(|_| u.int_in_range(0..=100usize))
        .collect::<Result<_>>()?;
    let kv =
        |u: &mut Unstructured<'_>, data: &mut Vec<u64>, scales: &mut Vec<f32>| -> Result<gqa_kv> {
            let dtype = code(u, 7)?;
            // Never more values than the buffer holds at the widest type.
            let len = u.int_in_range(0..=data.len() * 2)?;
            Ok(gqa_kv {
                dtype,
                data: if u.ratio(1, 16)? {
                    std::ptr::null_mut()
                } else {
                    data.as_mut_ptr().cast::<c_void>()
                },
                len,
                scales: if u.ratio(1, 8)? {
                    std::ptr::null_mut()
                } else {
                    scales.as_mut_ptr()
                },
                scales_len: u.int_in_range(0..=scales.len())?,
                outer_stride: count(u, 512)?,
                token_stride: count(u, 128)?,
                head_stride: count(u, 256)?,
            })
        };
    let k = kv(u, &mut kbuf, &mut kscales)?;
    let v = kv(u, &mut vbuf, &mut vscales)?;
    let cache = gqa_cache {
        struct_size: struct_size(u, size_of::<gqa_cache>())?,
        layout: code(u, 3)?,
        k,
        v,
        page_size: count(u, 16)?,
        block_table: table.as_ptr(),
        block_table_len: table.len(),
        blocks_per_seq: u.int_in_range(0..=4usize)?,
        capacity: count(u, 64)?,
        first_pos: if first_pos.is_empty() {
            std::ptr::null()
        } else {
            first_pos.as_ptr()
        },
        // A latent cache (V read from K's rows) or not, or a bad flag.
        latent: code(u, 2)?,
    };
    let seq_lens: Vec<usize> = (0..n_seqs)
        .map(|_| u.int_in_range(0..=64usize))
        .collect::<Result<_>>()?;
    let q = vec![0.25f32; u.int_in_range(0..=4096usize)?];
    let q_offsets: Vec<usize> = (0..=n_seqs)
        .map(|i| i.min(u.int_in_range(0..=3usize).unwrap_or(0) + i))
        .collect();
    let bias = vec![0.5f32; u.int_in_range(0..=512usize)?];
    // Draft-tree words: a chain, or whatever the input holds (mostly not
    // a tree: the error paths).
    let tree: Vec<u64> = (0..u.int_in_range(0..=16usize)?)
        .map(|t| {
            if u.ratio(1, 2)? {
                Ok((2u64 << t) - 1)
            } else {
                u.arbitrary::<u64>()
            }
        })
        .collect::<Result<_>>()?;
    // Sparse lists: sorted positions under the lengths, or whatever the
    // input holds (the error paths), with offsets that split them.
    let positions: Vec<u32> = if u.ratio(1, 2)? {
        (0..u.int_in_range(0..=64u32)?).step_by(3).collect()
    } else {
        (0..u.int_in_range(0..=32usize)?)
            .map(|_| u.int_in_range(0..=80u32))
            .collect::<Result<_>>()?
    };
    let mut position_offsets = vec![0usize];
    for _ in 0..u.int_in_range(0..=9usize)? {
        let last = *position_offsets.last().unwrap_or(&0);
        position_offsets.push(u.int_in_range(last..=positions.len().max(last))?);
    }
    // Prefix groups: a few members (some outside the batch, some twice),
    // offsets that split them, a length per group; or none.
    let members: Vec<usize> = (0..u.int_in_range(0..=5usize)?)
        .map(|_| u.int_in_range(0..=n_seqs))
        .collect::<Result<_>>()?;
    let mut prefix_offsets = vec![0usize];
    for _ in 0..u.int_in_range(0..=3usize)? {
        let last = *prefix_offsets.last().unwrap_or(&0);
        prefix_offsets.push(u.int_in_range(last..=members.len().max(last))?);
    }
    let prefix_lens: Vec<usize> = (1..prefix_offsets.len())
        .map(|_| u.int_in_range(0..=64usize))
        .collect::<Result<_>>()?;
    let with_groups = u.ratio(1, 3)?;
    let batch = gqa_batch {
        struct_size: struct_size(u, size_of::<gqa_batch>())?,
        q: if u.ratio(1, 16)? {
            std::ptr::null()
        } else {
            q.as_ptr()
        },
        q_elems: q.len(),
        cache: &cache,
        seq_lens: seq_lens.as_ptr(),
        n_seqs,
        q_offsets: if u.ratio(1, 4)? {
            q_offsets.as_ptr()
        } else {
            std::ptr::null()
        },
        bias: if u.ratio(1, 4)? {
            bias.as_ptr()
        } else {
            std::ptr::null()
        },
        bias_len: bias.len(),
        bias_seq_stride: count(u, 64)?,
        bias_token_stride: count(u, 64)?,
        bias_head_stride: count(u, 64)?,
        tree_mask: if u.ratio(1, 4)? {
            tree.as_ptr()
        } else {
            std::ptr::null()
        },
        tree_mask_len: tree.len().min(count(u, 64)?),
        positions: if u.ratio(1, 4)? {
            positions.as_ptr()
        } else {
            std::ptr::null()
        },
        positions_len: positions.len().min(count(u, 64)?),
        position_offsets: if u.ratio(1, 4)? {
            position_offsets.as_ptr()
        } else {
            std::ptr::null()
        },
        position_offsets_len: position_offsets.len().min(count(u, 16)?),
        positions_per_kv_head: code(u, 1)?,
        prefix_lens: if with_groups {
            prefix_lens.as_ptr()
        } else {
            std::ptr::null()
        },
        n_prefix_groups: prefix_lens.len(),
        prefix_offsets: prefix_offsets.as_ptr(),
        prefix_members: members.as_ptr(),
        prefix_members_len: members.len(),
    };
    let mut out = vec![f32::NAN; u.int_in_range(0..=8192usize)?];
    let mut lse = vec![f32::NAN; u.int_in_range(0..=64usize)?];
    let mut ws = vec![
        0u8;
        if u.arbitrary()? {
            ws_len
        } else {
            u.int_in_range(0..=ws_len)?
        }
    ];
    // SAFETY: every pointer is valid for the length beside it (the data
    // buffers hold 8 bytes per word, at least as many bytes as `len`
    // values of any type need: `len <= 2 * words` and values are at most
    // 4 bytes).
    let st = unsafe {
        gqa_run(
            plan,
            &batch,
            out.as_mut_ptr(),
            out.len(),
            lse.as_mut_ptr(),
            lse.len(),
            ws.as_mut_ptr().cast(),
            ws.len(),
        )
    };
    if st == GQA_OK {
        // The values are finite, so is every output (empty rows give zeros).
        assert!(out.iter().all(|x| x.is_finite()), "NaN or Inf in out");
        assert!(lse.iter().all(|x| !x.is_nan()), "NaN in lse");
    } else {
        message_is_set(st);
    }
    // The same step host-driven: begin, arbitrary item ranges (some past
    // the end) with arbitrary buffer sizes, finish. When every call
    // succeeded and every item ran, the result is bitwise gqa_run's.
    let (mut items, mut st_len, mut sc_len) = (0usize, 0usize, 0usize);
    // SAFETY: a live plan and valid out-pointers.
    unsafe {
        assert_eq!(gqa_plan_work_items(plan, &mut items), GQA_OK);
        assert_eq!(gqa_plan_state_bytes(plan, &mut st_len), GQA_OK);
        assert_eq!(gqa_plan_scratch_bytes(plan, &mut sc_len), GQA_OK);
    }
    let mut states = vec![
        0u8;
        if u.ratio(7, 8)? {
            st_len
        } else {
            u.int_in_range(0..=st_len)?
        }
    ];
    let mut scratch = vec![
        0u8;
        if u.ratio(7, 8)? {
            sc_len
        } else {
            u.int_in_range(0..=sc_len)?
        }
    ];
    // SAFETY: every pointer is valid for the length beside it (as above).
    let sb = unsafe { gqa_begin(plan, &batch, states.as_mut_ptr().cast(), states.len()) };
    if sb == GQA_OK {
        let (mut first, mut all_ran) = (0usize, true);
        while first < items {
            let count = u.int_in_range(0..=items - first + 1)?;
            // SAFETY: as above.
            let sr = unsafe {
                gqa_run_items(
                    plan,
                    &batch,
                    first,
                    count,
                    states.as_mut_ptr().cast(),
                    states.len(),
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                )
            };
            if sr != GQA_OK {
                message_is_set(sr);
                all_ran = false;
            }
            first += count.max(1);
        }
        let mut out2 = vec![f32::NAN; out.len()];
        let mut lse2 = vec![f32::NAN; lse.len()];
        // SAFETY: as above.
        let sf = unsafe {
            gqa_finish(
                plan,
                &batch,
                states.as_ptr().cast(),
                states.len(),
                out2.as_mut_ptr(),
                out2.len(),
                lse2.as_mut_ptr(),
                lse2.len(),
            )
        };
        if sf != GQA_OK {
            message_is_set(sf);
        } else if st == GQA_OK && all_ran {
            let same =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same(&out, &out2) && same(&lse, &lse2),
                "host-driven items differ from gqa_run"
            );
        }
    } else {
        message_is_set(sb);
    }
    // Append arbitrary rows into the same cache: a failure leaves it as it
    // was.
    let (k0, v0, ks0, vs0) = (kbuf.clone(), vbuf.clone(), kscales.clone(), vscales.clone());
    let rows = vec![0.125f32; u.int_in_range(0..=1024usize)?];
    let offsets: Vec<usize> = (0..=n_seqs)
        .map(|i| i * u.int_in_range(0..=2usize).unwrap_or(0))
        .collect();
    let positions: Vec<usize> = (0..n_seqs)
        .map(|_| u.int_in_range(0..=70usize))
        .collect::<Result<_>>()?;
    let new = gqa_new_kv {
        struct_size: struct_size(u, size_of::<gqa_new_kv>())?,
        dtype: code(u, 7)?,
        k: rows.as_ptr().cast(),
        k_len: u.int_in_range(0..=rows.len())?,
        v: rows.as_ptr().cast(),
        v_len: u.int_in_range(0..=rows.len())?,
        offsets: offsets.as_ptr(),
        offsets_len: offsets.len(),
        kv_heads: count(u, 4)?,
        head_dim_k: count(u, 72)?,
        head_dim_v: count(u, 72)?,
    };
    // SAFETY: as above; `k`/`v` hold `rows.len()` f32 (at least as many
    // bytes as `k_len` values of any new-row type).
    let st = unsafe { gqa_append(&cache, &new, positions.as_ptr(), positions.len()) };
    if st != GQA_OK {
        message_is_set(st);
        assert!(
            kbuf == k0 && vbuf == v0 && kscales == ks0 && vscales == vs0,
            "a failed append ({st}) wrote into the cache"
        );
    }
    // SAFETY: a live plan, destroyed once.
    unsafe { gqa_plan_destroy(plan) };
    Ok(())
}
