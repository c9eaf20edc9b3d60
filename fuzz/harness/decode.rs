//! Differential decode: an arbitrary shape (group sizes up to 71, odd head
//! dims, every K and V type), layout (strided, padded, paged, ring), query
//! tokens, draft-tree masks, latent (MLA) caches, sparse position lists, shared-prefix groups, variants (window, softcap, sinks, ALiBi, bias; masks of `-inf`,
//! `-f32::MAX` and `-1e30` written into the bias) and values,
//! sometimes corrupted (lengths past the buffers, strides that split a
//! quantized row, page indices outside the pool, short queries, a tree
//! word with one bit flipped), run
//! through the public API on an arbitrary available tier and thread
//! count. The run either returns an error (the input was invalid: nothing
//! to compare) or succeeds, and then the f64 reference, which validates
//! nothing itself and indexes every buffer with bounds checks, reads the
//! same input without a panic (so the driver accepted no row outside its
//! buffer) and matches the run under the documented tolerance (no NaN),
//! which is bitwise the one-thread result.
//!
//! Shared by the cargo-fuzz target and the stable regression test
//! (`tests/fuzz_regressions.rs`).

use arbitrary::{Result, Unstructured};
use gqa_kernels::{reference, Dtype, Options, Plan, Shape, Tier};

use crate::common::{Layout, Mask, MaskKind, Sparse, Spec};

/// Inputs that got past validation to the full check (a coverage signal
/// for the regression test).
pub static CHECKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs one input (never panics on a clean error; panics on a contract
/// violation, which is the finding).
pub fn run(data: &[u8]) {
    let _ = go(&mut Unstructured::new(data));
}

fn fit(t: Dtype, d: usize) -> usize {
    if t == Dtype::Q8_0 {
        d.next_multiple_of(32)
    } else {
        d
    }
}

/// One input, drawn and checked in order: the shape, the buffers, the call, then the comparison with the reference. Long on purpose: every
/// draw depends on the ones before it, and the input's bytes are consumed
/// in this order, so the regression files replay only if it stays one
/// straight sequence.
fn go(u: &mut Unstructured<'_>) -> Result<()> {
    let tiers = Tier::available();
    let tier = *u.choose(&tiers)?;
    let batch = u.int_in_range(0..=3usize)?;
    let g = u.int_in_range(1..=3usize)?;
    let r = *u.choose(&[1usize, 2, 3, 4, 5, 7, 8, 9, 16, 71])?;
    let kt = *u.choose(&Dtype::ALL)?;
    let vt = if u.arbitrary()? {
        kt
    } else {
        *u.choose(&Dtype::ALL)?
    };
    let dk = fit(kt, u.int_in_range(1..=72usize)?);
    let dv = if u.arbitrary()? {
        fit(vt, dk)
    } else {
        fit(vt, u.int_in_range(1..=72usize)?)
    };
    let q_len = u.int_in_range(1..=3usize)?;
    // Now and then lengths past a KV split (512 positions with
    // max_kv_len = 5000) and many 16-position blocks.
    let long = u.ratio(1, 6)?;
    let mut lens = Vec::new();
    for _ in 0..batch {
        let l = u.int_in_range(0..=if long { 1100 } else { 50usize })?;
        lens.push(if l == 0 { 0 } else { l.max(q_len) });
    }
    // Bound the work of one input (the f64 reference dominates an
    // execution): shapes past ~1M multiply-adds are skipped, which keeps
    // the fuzzer at thousands of executions per second while every
    // group size, head dim and length above still occurs, only not all at
    // their largest at once.
    let longest = lens.iter().copied().max().unwrap_or(0);
    if batch * q_len * g * r * longest * (dk + dv) > 1 << 20 {
        return Ok(());
    }
    let layout = match u.int_in_range(0..=4u8)? {
        0 => Layout::Blgd,
        1 => Layout::Bgld,
        2 => Layout::Padded,
        3 => Layout::Paged {
            page: *u.choose(&[1usize, 3, 16])?,
            head_major: u.arbitrary()?,
        },
        _ => Layout::Ring {
            extra: u.int_in_range(0..=3usize)?,
        },
    };
    let max_kv_len = *u.choose(&[0usize, 50, 5000])?;
    let shape = Shape::new(batch, g * r, g, dk, kt)
        .with_head_dims(dk, dv)
        .with_dtypes(kt, vt)
        .with_q_len(q_len)
        .with_max_kv_len(max_kv_len);
    let mut spec = Spec::new(shape, lens.clone());
    spec.layout = layout;
    spec.seed = u.arbitrary()?;
    spec.offset = u.int_in_range(0..=2usize)?;
    // Logits within the tolerance's domain: the f32 rounding of a score
    // grows with its magnitude (2^-24 relative per term) and moves the
    // softmax weights by as much; logits in the thousands are checked for
    // finiteness, not accuracy, by `tests/edges.rs`.
    spec.qk_range = *u.choose(&[1.0f32, 2.0, 4.0])?;
    spec.scale = if u.arbitrary()? {
        Some(u.int_in_range(1..=200u16)? as f32 / 100.0)
    } else {
        None
    };
    if u.ratio(1, 4)? {
        spec.window = Some(u.int_in_range(1..=60usize)?);
    }
    if u.ratio(1, 4)? {
        spec.softcap = Some(u.int_in_range(1..=600u16)? as f32 / 10.0);
    }
    if u.ratio(1, 5)? {
        spec.sinks = Some((0..g * r).map(|h| (h % 7) as f32 * 0.5 - 1.0).collect());
    }
    if u.ratio(1, 5)? {
        spec.alibi = Some(gqa_kernels::alibi_slopes(g * r, 8.0).expect("slopes"));
    }
    if u.ratio(1, 5)? {
        spec.bias = Some(u.arbitrary()?);
    }
    if u.ratio(1, 4)? {
        let kind = match u.int_in_range(0..=8u8)? {
            0 => MaskKind::Prefix(u.int_in_range(1..=600usize)?),
            1 => MaskKind::Suffix(u.int_in_range(1..=40usize)?),
            2 => {
                let a = u.int_in_range(0..=1100usize)?;
                MaskKind::Range(a, a + u.int_in_range(1..=600usize)?)
            }
            3 => MaskKind::Alternating,
            4 => MaskKind::All,
            5 => MaskKind::LeftPad(
                (0..batch)
                    .map(|_| u.int_in_range(0..=600usize))
                    .collect::<Result<_>>()?,
            ),
            6 => MaskKind::Window(u.int_in_range(1..=100usize)?),
            _ => MaskKind::Runs {
                seed: u.arbitrary()?,
                run: u.int_in_range(1..=32usize)?,
                density: u.arbitrary()?,
            },
        };
        let value = *u.choose(&[f32::NEG_INFINITY, -f32::MAX, -1e30])?;
        spec.mask = Some(Mask { kind, value });
    }
    if u.ratio(1, 4)? && batch > 0 {
        spec.q_tokens = Some(
            lens.iter()
                .map(|&l| if l == 0 { 0 } else { 1.min(l) })
                .collect(),
        );
    }
    // A draft-tree mask on a third of the multi-token inputs (from the
    // seed: no new draw, so stored inputs keep their meaning otherwise).
    spec.tree = q_len > 1 && spec.seed.is_multiple_of(3);
    // A latent cache (V the leading values of each K row) on a fifth of
    // the inputs, from the seed as well: one type, Dv at most Dk.
    let dv = if (spec.seed >> 7).is_multiple_of(5) {
        let dv = fit(kt, dv.min(dk));
        spec.latent = true;
        spec.shape = shape.with_head_dims(dk, dv).with_dtypes(kt, kt);
        dv
    } else {
        dv
    };
    // Sparse position lists on a quarter of the inputs (from the seed).
    if (spec.seed >> 11).is_multiple_of(4) {
        spec.sparse = Some(Sparse {
            per_kv_head: spec.seed >> 13 & 1 == 1,
            keep: (spec.seed >> 16) as u8,
            run: [1, 3, 16][(spec.seed >> 24) as usize % 3],
        });
        // ALiBi over far listed positions only reaches logits in the
        // thousands, outside the tolerance's domain.
        spec.alibi = None;
    }
    // Shared-prefix groups on a third of the inputs without a bias or
    // lists (from the seed): the sequences in a seed-drawn order cut into
    // one or two groups, each sharing a seed-drawn part of what all its
    // members can share.
    if batch > 0
        && spec.sparse.is_none()
        && spec.bias.is_none()
        && spec.mask.is_none()
        && (spec.seed >> 27).is_multiple_of(3)
    {
        let mut order: Vec<usize> = (0..batch).collect();
        order.rotate_left((spec.seed >> 30) as usize % batch);
        let cut = 1 + (spec.seed >> 33) as usize % batch;
        let room = |b: usize| {
            let tq = spec.q_tokens.as_ref().map_or(q_len, |t| t[b]);
            spec.seq_lens[b].saturating_sub(tq)
        };
        let mut groups = Vec::new();
        for (i, part) in [&order[..cut], &order[cut..]].into_iter().enumerate() {
            if let Some(most) = part.iter().map(|&b| room(b)).min() {
                let frac = (spec.seed >> (40 + 8 * i)) as usize & 255;
                groups.push((most * frac / 255, part.to_vec()));
            }
        }
        spec.prefix = Some(groups);
    }
    let mut case = spec.build();
    let strides0 = case.k_strides;
    // Sometimes corrupt one thing: the run must then fail cleanly, or the
    // input was still valid and everything below holds.
    match u.int_in_range(0..=9u8)? {
        0 if batch > 0 => {
            let b = u.choose_index(batch)?;
            case.seq_lens[b] += u.int_in_range(1..=200usize)?;
        }
        1 => case.k_strides.1 += u.int_in_range(1..=3usize)?,
        2 if !case.block_table.is_empty() => {
            let i = u.choose_index(case.block_table.len())?;
            case.block_table[i] = u.arbitrary()?;
        }
        3 if !case.q.is_empty() => {
            case.q.pop();
        }
        4 => case.v_strides.2 = u.int_in_range(0..=1000usize)?,
        6 if case.positions.as_ref().is_some_and(|p| !p.0.is_empty()) => {
            // A position moved: out of order, repeated or past the length.
            let p = &mut case.positions.as_mut().expect("lists").0;
            let i = u.choose_index(p.len())?;
            p[i] = u.int_in_range(0..=1200u32)?;
        }
        7 if case.prefix.is_some() => {
            // A group's prefix grown past a member's new tokens, or a
            // member named twice or outside the batch.
            let (lens, _, members) = case.prefix.as_mut().expect("groups");
            if u.arbitrary()? {
                lens[0] += u.int_in_range(1..=100usize)?;
            } else {
                let i = u.choose_index(members.len())?;
                members[i] = u.int_in_range(0..=batch)?;
            }
        }
        5 if case.tree.as_ref().is_some_and(|t| !t.is_empty()) => {
            let tree = case.tree.as_mut().expect("a tree");
            let i = u.choose_index(tree.len())?;
            tree[i] ^= 1 << u.int_in_range(0..=63u32)?;
        }
        _ => {}
    }
    // A corrupted stride of a latent case is K's and V's: it stays one view.
    if case.latent {
        if case.k_strides == strides0 {
            case.k_strides = case.v_strides;
        }
        case.v_strides = case.k_strides;
    }
    let threads = *u.choose(&[1usize, 2, 3])?;
    let opts = Options {
        scale: case.scale,
        tier: Some(tier),
        threads,
        window: case.window,
        softcap: case.softcap,
        cascade: case.prefix.is_some(),
        ..Options::default()
    };
    let Ok(mut plan) = Plan::new(&case.shape, &opts) else {
        return Ok(());
    };
    if let Some(s) = &case.sinks {
        plan = plan.with_sinks(s).expect("sinks of the right length");
    }
    if let Some(a) = &case.alibi {
        plan = plan.with_alibi(a).expect("slopes of the right length");
    }
    let tokens = match &case.q_offsets {
        Some(o) => *o.last().unwrap_or(&0),
        None => batch * q_len,
    };
    let rows = tokens * g * r;
    let mut out = vec![f32::NAN; rows * dv];
    let mut lse = vec![f32::NAN; rows];
    let mut ws = plan.alloc_workspace();
    let batch_in = case.batch();
    let variant = reference::Variant {
        scale: case.scale,
        window: case.window,
        sinks: case.sinks.as_deref(),
        softcap: case.softcap,
        alibi: case.alibi.as_deref(),
    };
    match plan.run(&batch_in, &mut out, Some(&mut lse), &mut ws) {
        Err(_) => {}
        Ok(()) => {
            let want =
                reference::decode_variant(&case.shape, &variant, &batch_in).unwrap_or_else(|e| {
                    panic!("{tier}: run accepted a variant the reference rejects ({e})")
                });
            // A corrupted stride may point a row at a slot the generator
            // filled with NaN (it marks the slots no step may read); NaN in
            // the data propagates, so only the absence of a crash is checked.
            if want.out.iter().chain(&want.lse).any(|x| x.is_nan()) {
                return Ok(());
            }
            CHECKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            case.compare(plan.kernel_name(), &out, &lse, &want)
                .unwrap_or_else(|e| panic!("{tier}, {threads} threads: {e}"));
            if threads > 1 {
                let one = Plan::new(&case.shape, &Options { threads: 1, ..opts })
                    .and_then(|p| match &case.sinks {
                        Some(s) => p.with_sinks(s),
                        None => Ok(p),
                    })
                    .and_then(|p| match &case.alibi {
                        Some(a) => p.with_alibi(a),
                        None => Ok(p),
                    })
                    .expect("the same plan on one thread");
                let mut o1 = vec![f32::NAN; rows * dv];
                let mut l1 = vec![f32::NAN; rows];
                one.run(
                    &batch_in,
                    &mut o1,
                    Some(&mut l1),
                    &mut one.alloc_workspace(),
                )
                .expect("one thread runs what several did");
                assert!(
                    o1.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits())
                        && l1.iter().zip(&lse).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{tier}: {threads} threads differ from one"
                );
            }
        }
    }
    Ok(())
}
