//! Layer 2, part 1b: the cache layouts as the driver sees them.
//!
//! Two jobs: prove, before any load, that every row a step will read lies
//! inside its buffer ([`check_cache`]), and cut a range of positions of one
//! (sequence, KV head) into runs of rows that are equally spaced in memory
//! ([`for_runs`]), each of which is one microkernel call. Strided caches are
//! one run, ring buffers at most two (the wrap), paged caches one per page.

use crate::arch::BLOCK;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::types::{KvCache, KvData, KvTensor};

/// Positions per kernel call: every call is cut at multiples of `CHUNK`
/// (absolute positions), whatever the walk order, so results never depend
/// on how items are scheduled. A multiple of the kernel block.
pub(crate) const CHUNK: usize = 256;

/// Rows `pos..pos + n` of one (sequence, KV head), equally spaced: the K row
/// of `pos` starts at element `k` (V at `v`), later rows one token stride on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub pos: usize,
    pub n: usize,
    pub k: usize,
    pub v: usize,
}

/// Element strides between consecutive positions of a run, for K and V.
pub(crate) fn token_strides(cache: &KvCache<'_>) -> (usize, usize) {
    match cache {
        KvCache::Strided { k, v } => (k.token_stride, v.token_stride),
        KvCache::Ring(r) => (r.k.token_stride, r.v.token_stride),
        KvCache::Paged(p) => (p.k.token_stride, p.v.token_stride),
    }
}

/// Elements between consecutive KV heads of K and of V.
pub(crate) fn head_strides(cache: &KvCache<'_>) -> (usize, usize) {
    match cache {
        KvCache::Strided { k, v } => (k.head_stride, v.head_stride),
        KvCache::Ring(r) => (r.k.head_stride, r.v.head_stride),
        KvCache::Paged(p) => (p.k.head_stride, p.v.head_stride),
    }
}

/// Whether the heads of one position sit closer together than consecutive
/// positions of one head (`[.., L, G, D]`-like).
pub(crate) fn token_major(cache: &KvCache<'_>) -> bool {
    let tm = |hs: usize, ts: usize| hs < ts;
    match cache {
        KvCache::Strided { k, v } => {
            tm(k.head_stride, k.token_stride) || tm(v.head_stride, v.token_stride)
        }
        KvCache::Ring(r) => {
            tm(r.k.head_stride, r.k.token_stride) || tm(r.v.head_stride, r.v.token_stride)
        }
        KvCache::Paged(p) => {
            tm(p.k.head_stride, p.k.token_stride) || tm(p.v.head_stride, p.v.token_stride)
        }
    }
}

/// How the driver walks the items of one (sequence, split) range, or `None`
/// to walk item by item.
///
/// Item by item suits head-major caches, where each head's rows are one
/// stream the hardware prefetcher follows. Where the heads of a position
/// interleave (`[.., L, G, D]` strides, in a strided, ring or paged cache)
/// or a page holds a short piece of each head, each KV head's pass reads
/// short pieces the hardware prefetcher does not follow; the driver then
/// walks all items of a range window by window, so a window's memory is
/// fetched once for all heads, and each head's pass hints the rows it reads
/// next into L2 (see [`Walk::prefetch`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Walk {
    /// Positions per window.
    pub(crate) window: usize,
    /// Whether each head's pass prefetches its rows `Plan::prefetch`
    /// positions ahead.
    pub(crate) prefetch: bool,
}

/// Bytes below which a head's contiguous piece of a page counts as short
/// (pages of 16 positions of 128 f16 values are 4 KiB per head). Longer
/// pieces stream well enough with the hardware prefetcher (pages of 256:
/// 1.08x of `[B, G, L, D]` without software prefetch, 1.25x with it, on an
/// AMD Zen 4 core at 2 threads).
const SHORT_PIECE: usize = 16 << 10;

/// K bytes (all KV heads) of a token-major window: 32 positions of
/// Llama-3-8B f16 (8 heads of 256 bytes), 16 of an f32 or D = 256 cache;
/// never fewer than a block. On an AMD Zen 4 core (L 32768, 1 thread,
/// cold, builds alternately) windows of 32 positions, prefetched a window
/// ahead, cut the Llama-3-8B f16 `[B, L, G, D]` step by 10 % against
/// windows of 16 (r = 4 and r = 1): half the calls, and a prefetch
/// distance that covers more of the DRAM latency. Windows of 64 or 128
/// positions were slower again, and so were 32-position windows of 4 KiB
/// positions (f32 D = 128: 4 % slower; f16 D = 256: 1 %). Pages keep
/// windows of their own size (32-position windows over pages of 16 were
/// 1.6x slower). Nor does one kernel call per head across the pages of a
/// window pay off: on the Intel development machine (Llama-3-8B f16, pages
/// of 16 shuffled, L 32768, 1 thread) calls over 32-256 positions, each
/// hinting the next call's rows 1-4 calls ahead, cut the cache-resident
/// step from 1.11-1.17x to 1.03-1.10x of `[B, G, L, D]` but made the cold
/// one 1.17-1.35x against 1.15-1.19x page by page: reading each page's
/// heads together is worth more to the memory system than the ~50 ns a
/// kernel call costs.
const TOKEN_WINDOW_BYTES: usize = 64 << 10;

/// Most positions per token-major window (two blocks).
const TOKEN_WINDOW_MAX: usize = 2 * BLOCK;

/// The walk of `cache` (see [`Walk`]).
pub(crate) fn walk(cache: &KvCache<'_>, kv_heads: usize, head_dim_k: usize) -> Option<Walk> {
    match cache {
        _ if token_major(cache) => Some(Walk {
            window: (TOKEN_WINDOW_BYTES
                / (kv_heads.max(1) * cache.data().0.dtype().row_bytes(head_dim_k)).max(1))
            .clamp(BLOCK, TOKEN_WINDOW_MAX),
            prefetch: true,
        }),
        KvCache::Paged(p) => Some(Walk {
            window: p.page_size.clamp(BLOCK, CHUNK),
            prefetch: p.page_size * p.k.data.dtype().row_bytes(head_dim_k) < SHORT_PIECE,
        }),
        _ => None,
    }
}

/// Calls `f` for each run of positions `a..e` of sequence `b`, KV head `g`,
/// in position order. The caller has
/// validated the cache with [`check_cache`] and `e <= seq_lens[b]`, so no
/// offset computed here can overflow or leave its buffer.
#[inline]
pub(crate) fn for_runs(
    cache: &KvCache<'_>,
    b: usize,
    g: usize,
    a: usize,
    e: usize,
    mut f: impl FnMut(Run),
) {
    match cache {
        KvCache::Strided { k, v } => {
            if a < e {
                f(Run {
                    pos: a,
                    n: e - a,
                    k: b * k.seq_stride + g * k.head_stride + a * k.token_stride,
                    v: b * v.seq_stride + g * v.head_stride + a * v.token_stride,
                });
            }
        }
        KvCache::Ring(r) => {
            let (k, v, cap) = (&r.k, &r.v, r.capacity);
            let first = r.first_pos[b] % cap.max(1);
            let mut j = a;
            while j < e {
                // first < cap and j < cap, so the sum cannot overflow.
                let slot = (first + j) % cap;
                let n = (e - j).min(cap - slot);
                f(Run {
                    pos: j,
                    n,
                    k: b * k.seq_stride + g * k.head_stride + slot * k.token_stride,
                    v: b * v.seq_stride + g * v.head_stride + slot * v.token_stride,
                });
                j += n;
            }
        }
        KvCache::Paged(p) => {
            let ps = p.page_size;
            let row = &p.block_table[b * p.blocks_per_seq..];
            let mut j = a;
            while j < e {
                let (blk, slot) = (j / ps, j % ps);
                let n = (e - j).min(ps - slot);
                let page = row[blk] as usize;
                f(Run {
                    pos: j,
                    n,
                    k: page * p.k.page_stride + g * p.k.head_stride + slot * p.k.token_stride,
                    v: page * p.v.page_stride + g * p.v.head_stride + slot * p.v.token_stride,
                });
                j += n;
            }
        }
    }
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

fn check_dtype(arg: &'static str, data: &KvData<'_>, expected: crate::Dtype) -> Result<()> {
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
/// that are whole rows (int8: multiples of the head dim, so each row's
/// scale is `scales[offset / head_dim]`) or whole blocks (q8_0: multiples
/// of 32), and scale arrays of the right length (int8: one per row of the
/// buffer; fp8: one per KV head, or one).
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
        KvData::Q8_0(_) => multiple(
            crate::quant::QK8_0,
            "q8_0 stores blocks of 32 values: strides must be multiples of 32",
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
        KvCache::Ring(r) => {
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
        }
        KvCache::Paged(p) => {
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
                        let end = (page as usize).checked_mul(pool.page_stride).and_then(|s| {
                            extent(s, used, pool.token_stride, g, pool.head_stride, d)
                        });
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
        }
    }
    Ok(())
}
