//! Layer 2, part 1b: the cache layouts as the driver sees them.
//!
//! Two jobs: prove, before any load, that every row a step will read lies
//! inside its buffer ([`check_cache`]), and cut a range of positions of one
//! (sequence, KV head) into runs of rows that are equally spaced in memory
//! ([`for_runs`]), each of which is one microkernel call. Strided caches are
//! one run, ring buffers at most two (the wrap), paged caches one per page.

use crate::arch::BLOCK;
use crate::views::KvCache;

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

/// Most positions per token-major window (two blocks).
pub(crate) const TOKEN_WINDOW_MAX: usize = 2 * BLOCK;

/// Positions per token-major window of `window_bytes` K bytes for all
/// `kv_heads` heads of `row_bytes` each: never fewer than a block, never
/// more than [`TOKEN_WINDOW_MAX`]. Pages keep windows of their own size
/// (32-position windows over pages of 16 were 1.6x slower on an AMD Zen 4
/// core). Nor does one kernel call per head across the pages of a window
/// pay off: on the Intel development machine (Llama-3-8B f16, pages of 16
/// shuffled, L 32768, 1 thread) calls over 32-256 positions, each hinting
/// the next call's rows 1-4 calls ahead, cut the cache-resident step from
/// 1.11-1.17x to 1.03-1.10x of `[B, G, L, D]` but made the cold one
/// 1.17-1.35x against 1.15-1.19x page by page: reading each page's heads
/// together is worth more to the memory system than the ~50 ns a kernel
/// call costs.
pub(crate) fn token_window(window_bytes: usize, kv_heads: usize, row_bytes: usize) -> usize {
    (window_bytes / (kv_heads.max(1) * row_bytes).max(1)).clamp(BLOCK, TOKEN_WINDOW_MAX)
}

/// The walk of `cache` (see [`Walk`]), with windows of `token_window`
/// positions where it is token-major ([`crate::Plan::token_window`]).
pub(crate) fn walk(cache: &KvCache<'_>, token_window: usize, head_dim_k: usize) -> Option<Walk> {
    match cache {
        _ if token_major(cache) => Some(Walk {
            window: token_window.max(1),
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
