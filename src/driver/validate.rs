//! Layer 2: everything the unsafe kernel call relies on, checked before
//! the first load: the batch against the plan's shape ([`check_batch`]:
//! lengths, offsets, q, bias, masks) and the cache ([`check_cache`]: types,
//! quantization scales, and that every row a step will read lies inside
//! its buffer).

use crate::error::{Error, Result};
use crate::formats::{Dtype, QK};
use crate::shape::Shape;
use crate::views::{
    Batch, Bias, KvCache, KvData, KvTensor, PagedKv, Positions, PrefixGroups, RingKv,
};

/// Checks a batch against the shape: lengths of `q`, `seq_lens`, the ragged
/// offsets, `out`/`lse` lengths (when given), `q_len_b <= L_b <=
/// max_kv_len` (an empty sequence, `L_b = 0`, is allowed with any token
/// count: its rows see nothing), and the cache (types, extents, page indices). Returns the
/// number of query tokens `T` of the batch.
pub(crate) fn check_batch(
    shape: &Shape,
    batch: &Batch<'_>,
    out_len: Option<usize>,
    lse_len: Option<usize>,
) -> Result<usize> {
    expect("seq_lens", shape.batch, batch.seq_lens.len())?;
    let tokens = check_tokens(shape, batch)?;
    if shape.max_kv_len > 0 {
        for (seq, &l) in batch.seq_lens.iter().enumerate() {
            if l > shape.max_kv_len {
                return Err(Error::KvLenExceedsPlan {
                    seq,
                    kv_len: l,
                    max_kv_len: shape.max_kv_len,
                });
            }
        }
    }
    // tokens <= B * q_len, whose products with H and D were checked by
    // `Shape::validate`.
    expect("q", tokens * shape.heads * shape.head_dim_k, batch.q.len())?;
    if let Some(n) = out_len {
        expect("out", tokens * shape.heads * shape.head_dim_v, n)?;
    }
    if let Some(n) = lse_len {
        expect("lse", tokens * shape.heads, n)?;
    }
    if let Some(bias) = &batch.bias {
        check_bias(shape, batch, bias)?;
    }
    if let Some(tree) = batch.tree_mask {
        check_tree(shape, batch, tree, tokens)?;
    }
    if let Some(p) = &batch.positions {
        check_positions(shape, batch.seq_lens, p)?;
    }
    if let Some(p) = &batch.prefix {
        check_prefix(shape, batch, p)?;
    }
    check_cache(shape, &batch.cache, batch.seq_lens)?;
    Ok(tokens)
}

/// `Err(LengthMismatch)` naming `arg` unless `expected == actual`.
fn expect(arg: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            arg,
            expected,
            actual,
        })
    }
}

/// The batch's query tokens `T`: `B · q_len`, or the ragged offsets'
/// last entry once they are checked (from 0, non-decreasing, at most
/// `q_len` and at most `L_b` tokens per non-empty sequence).
fn check_tokens(shape: &Shape, batch: &Batch<'_>) -> Result<usize> {
    let nb = shape.batch;
    let tokens = match batch.q_offsets {
        None => {
            for (seq, &l) in batch.seq_lens.iter().enumerate() {
                if l > 0 && shape.q_len > l {
                    return Err(Error::QLenExceedsKvLen {
                        seq,
                        q_len: shape.q_len,
                        kv_len: l,
                    });
                }
            }
            nb * shape.q_len
        }
        Some(o) => {
            expect("q_offsets", nb + 1, o.len())?;
            if o[0] != 0 {
                return Err(Error::InvalidQOffsets {
                    index: 0,
                    value: o[0],
                    reason: "must start at 0",
                });
            }
            for b in 0..nb {
                if o[b + 1] < o[b] {
                    return Err(Error::InvalidQOffsets {
                        index: b + 1,
                        value: o[b + 1],
                        reason: "offsets must not decrease",
                    });
                }
                let t = o[b + 1] - o[b];
                if t > shape.q_len {
                    return Err(Error::InvalidQOffsets {
                        index: b + 1,
                        value: o[b + 1],
                        reason: "a sequence has more tokens than the plan's q_len",
                    });
                }
                if batch.seq_lens[b] > 0 && t > batch.seq_lens[b] {
                    return Err(Error::QLenExceedsKvLen {
                        seq: b,
                        q_len: t,
                        kv_len: batch.seq_lens[b],
                    });
                }
            }
            o[nb]
        }
    };
    Ok(tokens)
}

/// Sequences per window of the duplicate check of [`check_prefix`] (a
/// bitmap of this many bits on the stack).
const SEEN_WINDOW: usize = 4096;

/// Shared-prefix groups: one offset more than `lens`, strictly increasing
/// from 0 to `members.len()` (no empty group); members are sequences of
/// the batch, none named twice; each prefix ends before each member's new
/// tokens; no bias or sparse lists beside them. Nothing is allocated: the
/// duplicate check marks the members of each window of [`SEEN_WINDOW`]
/// sequences in a bitmap on the stack.
fn check_prefix(shape: &Shape, batch: &Batch<'_>, p: &PrefixGroups<'_>) -> Result<()> {
    let err = |arg, index, value, reason| Error::InvalidPrefixGroups {
        arg,
        index,
        value,
        reason,
    };
    if batch.bias.is_some() {
        return Err(err(
            "prefix",
            0,
            0,
            "prefix groups cannot be combined with an additive bias",
        ));
    }
    if batch.positions.is_some() {
        return Err(err(
            "prefix",
            0,
            0,
            "prefix groups cannot be combined with sparse position lists",
        ));
    }
    let groups = p.lens.len();
    expect("prefix.offsets", groups + 1, p.offsets.len())?;
    for (i, &o) in p.offsets.iter().enumerate() {
        if i == 0 && o != 0 {
            return Err(err("prefix.offsets", 0, o, "must start at 0"));
        }
        if i > 0 && o <= p.offsets[i - 1] {
            return Err(err(
                "prefix.offsets",
                i,
                o,
                "offsets must increase: a group has at least one member",
            ));
        }
        if o > p.members.len() {
            return Err(err(
                "prefix.offsets",
                i,
                o,
                "past the end of `prefix.members`",
            ));
        }
    }
    expect("prefix.members", p.offsets[groups], p.members.len())?;
    for (i, &m) in p.members.iter().enumerate() {
        if m >= shape.batch {
            return Err(err(
                "prefix.members",
                i,
                m,
                "not a sequence of the batch (at least B)",
            ));
        }
    }
    let mut base = 0;
    while base < shape.batch {
        let mut seen = [0u64; SEEN_WINDOW / 64];
        for (i, &m) in p.members.iter().enumerate() {
            if (base..base + SEEN_WINDOW).contains(&m) {
                let (w, bit) = ((m - base) / 64, (m - base) % 64);
                if seen[w] >> bit & 1 == 1 {
                    return Err(err(
                        "prefix.members",
                        i,
                        m,
                        "a sequence is named twice (in one group or in two)",
                    ));
                }
                seen[w] |= 1 << bit;
            }
        }
        base += SEEN_WINDOW;
    }
    for (g, &len) in p.lens.iter().enumerate() {
        for &m in p.group(g) {
            let tq = match batch.q_offsets {
                Some(o) => o[m + 1] - o[m],
                None => shape.q_len,
            };
            if len > 0 && len.saturating_add(tq) > batch.seq_lens[m] {
                return Err(err(
                    "prefix.lens",
                    g,
                    len,
                    "a prefix must end before each member's new tokens (lens[p] <= L_b - q_len_b)",
                ));
            }
        }
    }
    Ok(())
}

/// The tree mask has a word per query token, and each word is a draft
/// tree's row: its own bit set, no bit above it (so at most 64 tokens per
/// sequence).
fn check_tree(shape: &Shape, batch: &Batch<'_>, tree: &[u64], tokens: usize) -> Result<()> {
    expect("tree_mask", tokens, tree.len())?;
    for b in 0..shape.batch {
        let (tok0, tq) = match batch.q_offsets {
            Some(o) => (o[b], o[b + 1] - o[b]),
            None => (b * shape.q_len, shape.q_len),
        };
        for t in 0..tq {
            let (token, value) = (tok0 + t, tree[tok0 + t]);
            let err = |reason| Error::InvalidTreeMask {
                token,
                value,
                reason,
            };
            if t >= 64 {
                return Err(err("a sequence with a tree mask has at most 64 tokens"));
            }
            if value >> t & 1 == 0 {
                return Err(err("a token must see itself (bit t of token t's word)"));
            }
            if t < 63 && value >> (t + 1) != 0 {
                return Err(err(
                    "a token sees only earlier draft tokens (ancestors come first): a bit above t is set",
                ));
            }
        }
    }
    Ok(())
}

/// Sparse position lists: one per sequence (or per sequence and KV head),
/// offsets from 0 to the end of `positions`, each list strictly increasing
/// and below its sequence's length.
fn check_positions(shape: &Shape, seq_lens: &[usize], p: &Positions<'_>) -> Result<()> {
    let per = if p.per_kv_head { shape.kv_heads } else { 1 };
    let lists = shape.batch * per;
    expect("positions.offsets", lists + 1, p.offsets.len())?;
    let mut prev = 0;
    for (index, &o) in p.offsets.iter().enumerate() {
        let first = index == 0 && o != 0;
        if first || o < prev || o > p.positions.len() {
            return Err(Error::InvalidPositionOffsets {
                index,
                value: o,
                reason: if first {
                    "must start at 0"
                } else if o < prev {
                    "must not decrease"
                } else {
                    "past the end of `positions`"
                },
            });
        }
        prev = o;
    }
    expect("positions", prev, p.positions.len())?;
    for list in 0..lists {
        let len = seq_lens[list / per];
        let (a, e) = (p.offsets[list], p.offsets[list + 1]);
        for index in a..e {
            let value = p.positions[index];
            let err = |reason| Error::InvalidPositions {
                list,
                index,
                value,
                reason,
            };
            if value as usize >= len {
                return Err(err("at or past its sequence's length"));
            }
            if index > a && value <= p.positions[index - 1] {
                return Err(err("a list must be strictly increasing"));
            }
        }
    }
    Ok(())
}

/// The bias covers every (token, head, position) a step reads, and every
/// value it reads is finite or `-inf`.
fn check_bias(shape: &Shape, batch: &Batch<'_>, bias: &Bias<'_>) -> Result<()> {
    let nb = shape.batch;
    for seq in 0..nb {
        let l = batch.seq_lens[seq];
        let t = match batch.q_offsets {
            Some(o) => o[seq + 1] - o[seq],
            None => shape.q_len,
        };
        if l == 0 || t == 0 {
            continue;
        }
        let end = seq
            .checked_mul(bias.seq_stride)
            .and_then(|x| (t - 1).checked_mul(bias.token_stride)?.checked_add(x))
            .and_then(|x| {
                (shape.heads - 1)
                    .checked_mul(bias.head_stride)?
                    .checked_add(x)
            })
            .and_then(|x| x.checked_add(l))
            .ok_or(Error::Overflow { arg: "bias", seq })?;
        if end > bias.data.len() {
            return Err(Error::OutOfBounds {
                arg: "bias",
                seq,
                needed: end,
                len: bias.data.len(),
            });
        }
        // Every value the step may read (positions < L_b of each token
        // and head) is finite or -inf: +inf or NaN would make the row
        // NaN (a softmax of +inf is undefined), so they are rejected
        // here, naming the first one. Rows a zero stride repeats are
        // scanned once.
        let tokens = if bias.token_stride == 0 { 1 } else { t };
        let heads = if bias.head_stride == 0 {
            1
        } else {
            shape.heads
        };
        for tok in 0..tokens {
            for h in 0..heads {
                let base = seq * bias.seq_stride + tok * bias.token_stride + h * bias.head_stride;
                if let Some(j) = first_nan_or_pos_inf(&bias.data[base..base + l]) {
                    return Err(Error::NonFinite {
                        arg: "bias",
                        index: base + j,
                        value: bias.data[base + j],
                    });
                }
            }
        }
    }
    Ok(())
}

/// Index of the first NaN or `+inf` in `x` (vectorisable: blocks of 64 are
/// tested with a branch-free fold, and only a block that holds one is
/// searched).
fn first_nan_or_pos_inf(x: &[f32]) -> Option<usize> {
    // NaN and +inf are exactly the values not below +inf.
    let bad = |v: &f32| v.is_nan() || *v == f32::INFINITY;
    let mut base = 0;
    for block in x.chunks(64) {
        if block.iter().fold(false, |acc, v| acc | bad(v)) {
            return block.iter().position(bad).map(|j| base + j);
        }
        base += block.len();
    }
    None
}

/// One past the last element read from a row group: base `start`, `tokens`
/// rows `token_stride` apart, heads `0..kv_heads`, `head_dim` elements each.
/// `None` on overflow.
fn extent(
    start: usize,
    tokens: usize,
    token_stride: usize,
    kv_heads: usize,
    head_stride: usize,
    head_dim: usize,
) -> Option<usize> {
    (tokens - 1)
        .checked_mul(token_stride)
        .and_then(|x| start.checked_add(x))
        .and_then(|x| (kv_heads - 1).checked_mul(head_stride)?.checked_add(x))
        .and_then(|x| x.checked_add(head_dim))
}

/// Checks that a strided view holds the first `tokens(b)` rows of every
/// sequence `b` (`arg` names it in errors).
fn check_view(
    arg: &'static str,
    view: &KvTensor<'_>,
    kv_heads: usize,
    head_dim: usize,
    batch: usize,
    tokens: impl Fn(usize) -> usize,
) -> Result<()> {
    let len = view.data.len();
    for seq in 0..batch {
        let t = tokens(seq);
        if t == 0 {
            continue;
        }
        let end = seq
            .checked_mul(view.seq_stride)
            .and_then(|s| {
                extent(
                    s,
                    t,
                    view.token_stride,
                    kv_heads,
                    view.head_stride,
                    head_dim,
                )
            })
            .ok_or(Error::Overflow { arg, seq })?;
        if end > len {
            return Err(Error::OutOfBounds {
                arg,
                seq,
                needed: end,
                len,
            });
        }
    }
    Ok(())
}

fn check_dtype(arg: &'static str, data: &KvData<'_>, expected: Dtype) -> Result<()> {
    if data.dtype() != expected {
        return Err(Error::DtypeMismatch {
            arg,
            expected,
            actual: data.dtype(),
        });
    }
    Ok(())
}

/// Checks what a quantized type needs of a view beyond its extent: strides
/// that are whole rows (int8, fp8e4m3_row: multiples of the head dim, so each row's
/// scale is `scales[offset / head_dim]`) or whole blocks (the block formats:
/// multiples of 32), and scale arrays of the right length (int8, fp8e4m3_row: one per row of the
/// buffer; fp8: one per KV head, or one). Row scales are read as given,
/// as int8's: their values are not checked (a step would read them all).
pub(crate) fn check_quant(
    arg: &'static str,
    data: &KvData<'_>,
    strides: [usize; 3],
    kv_heads: usize,
    head_dim: usize,
) -> Result<()> {
    let (names, scales_arg): ([&'static str; 3], &'static str) = match arg {
        "k" => (
            ["k.seq_stride", "k.token_stride", "k.head_stride"],
            "k_scales",
        ),
        "v" => (
            ["v.seq_stride", "v.token_stride", "v.head_stride"],
            "v_scales",
        ),
        "k_pages" => (
            [
                "k_pages.page_stride",
                "k_pages.token_stride",
                "k_pages.head_stride",
            ],
            "k_scales",
        ),
        _ => (
            [
                "v_pages.page_stride",
                "v_pages.token_stride",
                "v_pages.head_stride",
            ],
            "v_scales",
        ),
    };
    let multiple = |unit: usize, reason: &'static str| {
        for (name, &stride) in names.iter().zip(&strides) {
            if !stride.is_multiple_of(unit) {
                return Err(Error::InvalidDim {
                    arg: name,
                    value: stride,
                    reason,
                });
            }
        }
        Ok(())
    };
    let scales_len = |expected: usize, actual: usize| {
        if expected != actual {
            return Err(Error::LengthMismatch {
                arg: scales_arg,
                expected,
                actual,
            });
        }
        Ok(())
    };
    match data {
        KvData::Int8 { values, scales } => {
            multiple(
                head_dim,
                "int8 rows carry one scale per head_dim values: strides must be multiples of the head dim",
            )?;
            scales_len(values.len().div_ceil(head_dim), scales.len())
        }
        KvData::Fp8E4M3Row { values, scales } => {
            multiple(
                head_dim,
                "fp8e4m3_row rows carry one scale per head_dim values: strides must be multiples of the head dim",
            )?;
            scales_len(values.len().div_ceil(head_dim), scales.len())
        }
        KvData::Q8_0(_) => multiple(
            QK,
            "q8_0 stores blocks of 32 values: strides must be multiples of 32",
        ),
        KvData::Blocks(b) if b.dtype().block_len() != QK => multiple(
            b.dtype().block_len(),
            "fp8_ds_mla stores one 576-value row a token: strides must be multiples of 576",
        ),
        KvData::Blocks(_) => multiple(
            QK,
            "block formats store blocks of 32 values: strides must be multiples of 32",
        ),
        KvData::Fp8E4M3 { scales, .. } | KvData::Fp8E5M2 { scales, .. } => {
            if scales.len() == 1 {
                Ok(())
            } else {
                scales_len(kv_heads, scales.len())
            }
        }
        _ => Ok(()),
    }
}

/// Validates `cache` for a step over `seq_lens` (already checked to have
/// `B` entries): element types, and that every row of every visible
/// position lies inside its buffer, with every index computation free of
/// overflow.
pub(crate) fn check_cache(shape: &Shape, cache: &KvCache<'_>, seq_lens: &[usize]) -> Result<()> {
    let (dk, dv) = (shape.head_dim_k, shape.head_dim_v);
    if cache.is_latent() {
        if dv > dk {
            return Err(Error::InvalidDim {
                arg: "head_dim_v",
                value: dv,
                reason: "a latent cache's V is the leading head_dim_v values of each K row: at most head_dim_k",
            });
        }
        // V's rows are the leading values of K's: K's checks cover them
        // (and int8 and fp8e4m3_row keep one scale per K row).
        let shape = Shape {
            head_dim_v: dk,
            ..*shape
        };
        return check_layout(&shape, cache, seq_lens);
    }
    check_layout(shape, cache, seq_lens)
}

/// [`check_cache`] after the latent rule: each layout's checks.
fn check_layout(shape: &Shape, cache: &KvCache<'_>, seq_lens: &[usize]) -> Result<()> {
    let (g, dk, dv) = (shape.kv_heads, shape.head_dim_k, shape.head_dim_v);
    let batch = seq_lens.len();
    match cache {
        KvCache::Strided { k, v } => {
            check_dtype("k", &k.data, shape.k_dtype)?;
            check_dtype("v", &v.data, shape.v_dtype)?;
            check_quant(
                "k",
                &k.data,
                [k.seq_stride, k.token_stride, k.head_stride],
                g,
                dk,
            )?;
            check_quant(
                "v",
                &v.data,
                [v.seq_stride, v.token_stride, v.head_stride],
                g,
                dv,
            )?;
            check_view("k", k, g, dk, batch, |b| seq_lens[b])?;
            check_view("v", v, g, dv, batch, |b| seq_lens[b])?;
        }
        KvCache::Ring(r) => check_ring(shape, r, seq_lens)?,
        KvCache::Paged(p) => check_paged(shape, p, seq_lens)?,
    }
    Ok(())
}

/// A ring cache: types, scales, `first_pos`, lengths within the capacity,
/// and the slots each sequence reads (from `first_pos % capacity`,
/// wrapping once) inside its views.
fn check_ring(shape: &Shape, r: &RingKv<'_>, seq_lens: &[usize]) -> Result<()> {
    let (g, dk, dv) = (shape.kv_heads, shape.head_dim_k, shape.head_dim_v);
    let batch = seq_lens.len();
    check_dtype("k", &r.k.data, shape.k_dtype)?;
    check_dtype("v", &r.v.data, shape.v_dtype)?;
    for (arg, t, d) in [("k", &r.k, dk), ("v", &r.v, dv)] {
        check_quant(
            arg,
            &t.data,
            [t.seq_stride, t.token_stride, t.head_stride],
            g,
            d,
        )?;
    }
    if r.first_pos.len() != batch {
        return Err(Error::LengthMismatch {
            arg: "first_pos",
            expected: batch,
            actual: r.first_pos.len(),
        });
    }
    for (seq, &l) in seq_lens.iter().enumerate() {
        if l > r.capacity {
            return Err(Error::RingTooSmall {
                seq,
                kv_len: l,
                capacity: r.capacity,
            });
        }
    }
    // Slots read by sequence b: from first % cap, wrapping once.
    let slots = |b: usize| {
        let l = seq_lens[b];
        if l == 0 {
            return 0;
        }
        let s = r.first_pos[b] % r.capacity;
        if l <= r.capacity - s {
            s + l
        } else {
            r.capacity
        }
    };
    check_view("k", &r.k, g, dk, batch, slots)?;
    check_view("v", &r.v, g, dv, batch, slots)?;
    Ok(())
}

/// A paged cache: types, scales, the page size, the block table rows the
/// lengths need, and every page they name inside its pool.
fn check_paged(shape: &Shape, p: &PagedKv<'_>, seq_lens: &[usize]) -> Result<()> {
    let (g, dk, dv) = (shape.kv_heads, shape.head_dim_k, shape.head_dim_v);
    check_dtype("k_pages", &p.k.data, shape.k_dtype)?;
    check_dtype("v_pages", &p.v.data, shape.v_dtype)?;
    for (arg, t, d) in [("k_pages", &p.k, dk), ("v_pages", &p.v, dv)] {
        check_quant(
            arg,
            &t.data,
            [t.page_stride, t.token_stride, t.head_stride],
            g,
            d,
        )?;
    }
    if p.page_size == 0 {
        return Err(Error::InvalidDim {
            arg: "page_size",
            value: 0,
            reason: "must be at least 1",
        });
    }
    for (seq, &l) in seq_lens.iter().enumerate() {
        let needed = l.div_ceil(p.page_size);
        if needed == 0 {
            continue;
        }
        let row_start = seq.checked_mul(p.blocks_per_seq);
        let available = row_start
            .map(|s| p.block_table.len().saturating_sub(s))
            .unwrap_or(0)
            .min(p.blocks_per_seq);
        if needed > available {
            return Err(Error::BlockTableTooShort {
                seq,
                needed,
                available,
            });
        }
        let row = &p.block_table[seq * p.blocks_per_seq..][..needed];
        for (block, &page) in row.iter().enumerate() {
            let used = (l - block * p.page_size).min(p.page_size);
            for (arg, pool, d) in [("k_pages", &p.k, dk), ("v_pages", &p.v, dv)] {
                let len = pool.data.len();
                let end = (page as usize)
                    .checked_mul(pool.page_stride)
                    .and_then(|s| extent(s, used, pool.token_stride, g, pool.head_stride, d));
                if end.is_none_or(|e| e > len) {
                    return Err(Error::PageOutOfRange {
                        arg,
                        seq,
                        block,
                        page,
                        pages: len.checked_div(pool.page_stride).unwrap_or(0),
                    });
                }
            }
        }
    }
    Ok(())
}
