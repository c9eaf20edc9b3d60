//! What one microkernel call is given ([`ChunkArgs`]: the query tile, the
//! K and V rows, the softmax state, the score transforms) and the L2 hints
//! it issues while it works ([`Span`], [`Ahead`], [`prefetch_span`]).

/// The arguments of one microkernel call: `n` K/V rows of one KV head for a
/// tile of `rows` query rows that share that head, in four groups: the
/// query tile, the K and V rows ([`KvRows`]), the online-softmax state
/// ([`State`]) with the kernel's scratch, and the score transforms
/// ([`Transforms`]); plus the prefetch hints of a later window.
///
/// Preconditions (established by the driver, relied upon by every kernel):
/// - `q` points to `rows * pad(dk)` f32: the query rows already multiplied by
///   `scale * log2(e)`, zero in the padding lanes;
/// - for every `j < n`, `k.ptr + j * k.stride` (in elements of the kernel's
///   K type) is valid for reads of `dk` elements; likewise `v` and `dv`.
///   Nothing outside those ranges is read;
/// - `state.m` and `state.l` point to `rows` f32, `state.acc` to
///   `rows * pad(dv)` f32: the online-softmax state (running max in the
///   log2 domain, running sum, unnormalised output), initialised by the
///   driver to `-inf`, 0, 0;
/// - `scratch` points to `scratch_len(rows, dk, dv)` f32 that the kernel may
///   overwrite, aligned to 64 bytes and initialised (any values);
/// - for a K type with a per-row scale ([`Elem::ROW_SCALE`], int8), the
///   scale of row `j < n` is the f32 at `k.scale + j * k.scale_stride`
///   (likewise `v`); for other types these are ignored (null);
/// - none of these regions overlap, except the K and V rows and their
///   scales, which are only read;
/// - the transforms hold [`Transforms`]' conditions.
#[derive(Clone, Copy)]
pub(crate) struct ChunkArgs {
    /// The query tile.
    pub q: *const f32,
    /// Query rows of the tile.
    pub rows: usize,
    /// K rows to read.
    pub k: KvRows,
    /// V rows to read.
    pub v: KvRows,
    /// K/V rows (positions) of the call.
    pub n: usize,
    /// K head dim.
    pub dk: usize,
    /// V head dim.
    pub dv: usize,
    /// The tile's online-softmax state.
    pub state: State,
    /// The kernel's scratch.
    pub scratch: *mut f32,
    /// What happens to the scores before the softmax.
    pub transforms: Transforms,
    /// Memory the driver wants hinted into L2 while this call works (see
    /// [`Ahead`]): a later window's K and V, or empty spans. Hints only:
    /// any address is allowed.
    pub ahead: [Span; 2],
    /// Whether the kernel hints each block's V rows into L1 while it
    /// scores the block's K rows ([`block_v_prefetch`]; rows read straight
    /// from the cache only). A hint: results are the same either way.
    pub touch_v: bool,
}

/// Where the microkernel reads one run of rows: the first row's values, the
/// row stride in the kernel's element units, and the per-row scales (int8;
/// null for other types).
#[derive(Clone, Copy)]
pub(crate) struct KvRows {
    pub ptr: *const u8,
    pub stride: usize,
    pub scale: *const f32,
    pub scale_stride: usize,
}

/// A tile's online-softmax state: running max `m` and sum `l` per row (log2
/// domain), and the unnormalised output `acc`, `pad(dv)` floats per row.
#[derive(Clone, Copy)]
pub(crate) struct State {
    pub m: *mut f32,
    pub l: *mut f32,
    pub acc: *mut f32,
}

/// The score transforms, applied in this order between the scores and the
/// softmax. Conditions: `softcap` is 0 or finite and positive;
/// `alibi_slope` and `alibi_off` are both null or both point to `rows` f32;
/// `bias` is null, or for every row `i < rows` the `n` floats from its row
/// address below are valid for reads.
#[derive(Clone, Copy)]
pub(crate) struct Transforms {
    /// Logit softcap in the log2 domain (`cap · log2 e`), or 0 for none:
    /// each score `s` becomes `cap · tanh(s / cap)` before masking.
    pub softcap: f32,
    /// ALiBi, or null for none: per row, the slope in the log2 domain
    /// (`alibi_slope`) and the distance of the call's first position from
    /// the row's query position (`alibi_off`, the integer `pos0 − p_row` as
    /// f32); position `pos0 + j` gets `slope · (alibi_off + j)` added to its
    /// score, after the softcap.
    pub alibi_slope: *const f32,
    pub alibi_off: *const f32,
    /// Additive bias, or null for none: row `i` of the tile reads its bias
    /// for the call's position `j` at
    /// `bias + (i / bias_r) * bias_token_stride + (i % bias_r) * bias_head_stride + j`
    /// (natural-log units; added after ALiBi). No bias value is `+inf` or
    /// NaN (the driver checked); values below `LOGIT_FLOOR` count as it.
    pub bias: *const f32,
    pub bias_r: usize,
    pub bias_token_stride: usize,
    pub bias_head_stride: usize,
}

impl Transforms {
    /// Whether any transform is on.
    #[inline(always)]
    pub(crate) fn any(&self) -> bool {
        self.softcap > 0.0 || !self.alibi_slope.is_null() || !self.bias.is_null()
    }
}

/// `bytes` bytes from `ptr`, to hint into L2 ([`prefetch_span`]); the
/// default is empty.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub ptr: *const u8,
    pub bytes: usize,
}

impl Default for Span {
    fn default() -> Self {
        Span {
            ptr: std::ptr::null(),
            bytes: 0,
        }
    }
}

impl Span {
    /// The part `[bytes * i / n, bytes * (i + 1) / n)` of the span
    /// (`i < n`; `n > 0`).
    pub(crate) fn share(self, i: usize, n: usize) -> Span {
        let (x, x1) = (self.bytes * i / n, self.bytes * (i + 1) / n);
        Span {
            ptr: self.ptr.wrapping_add(x),
            bytes: x1 - x,
        }
    }
}

/// A [`Span`] hinted into L2 a few cache lines at a time, spread over a
/// phase's `ticks` steps ([`Ahead::tick`]) instead of in one burst: on an
/// AMD Zen 4 core a burst of 64-128 `prefetcht1` per kernel call stalled
/// the loads of the call itself (Llama-3-8B f16 `[B, L, G, D]`, L 32768,
/// 1 thread cold: 13.4 -> 11.4 ms spread per block, 10.4-11.4 ms spread
/// over the positions of each phase). [`Ahead::finish`] hints what is left.
pub(crate) struct Ahead {
    next: std::cell::Cell<usize>,
    end: usize,
    per_tick: usize,
}

impl Ahead {
    /// `span` (cache-line aligned down) in `ticks` steps.
    #[inline(always)]
    pub(crate) fn new(span: Span, ticks: usize) -> Ahead {
        let a = span.ptr as usize & !63;
        let end = (span.ptr as usize).saturating_add(span.bytes);
        let lines = end.saturating_sub(a).div_ceil(64);
        Ahead {
            next: std::cell::Cell::new(a),
            end,
            per_tick: 64 * lines.div_ceil(ticks.max(1)),
        }
    }

    /// Hints the next `n` steps' lines.
    #[inline(always)]
    pub(crate) fn tick(&self, n: usize) {
        let p = self.next.get();
        if p < self.end {
            let bytes = (n * self.per_tick).min(self.end - p);
            prefetch_span(p as *const u8, bytes);
            self.next.set(p + bytes);
        }
    }

    /// Whether any line is left to hint.
    #[inline(always)]
    pub(crate) fn pending(&self) -> bool {
        self.next.get() < self.end
    }

    /// Hints every line not hinted yet.
    #[inline(always)]
    pub(crate) fn finish(&self) {
        let p = self.next.get();
        if p < self.end {
            prefetch_span(p as *const u8, self.end - p);
            self.next.set(self.end);
        }
    }

    /// Lines not hinted yet.
    #[cfg(test)]
    pub(crate) fn left(&self) -> usize {
        self.end.saturating_sub(self.next.get()).div_ceil(64)
    }
}

/// Bytes ahead of its reads that each head-major K or V stream hints into
/// L2 by default ([`crate::Plan::stream_prefetch`]; 0: none), for a step
/// whose KV heads each serve `rows` query rows (group size × query
/// tokens) and whose wider K or V row takes `row_bytes`.
///
/// - Intel: on the 2-core Intel Xeon VM (Sapphire Rapids class),
///   Llama-3-8B f16 `[B, G, L, D]`, L 32768, cold: the hardware
///   prefetcher alone read 8.3 GB/s with 1 thread and 16.4 with 2;
///   hinting 8 to 128 KiB ahead, 11.7-12.2 and 22.3-22.5 GB/s, flat
///   across that range (f32 and D = 256 the same), so 32 KiB.
/// - AMD family 0x1A (Zen 5; the 2-core EPYC VM), 1 thread, L 32768,
///   cold, hinting 32 KiB ahead vs none: r = 4, D = 128 bf16 9.2 ->
///   4.9 ms, int8 9.3 -> 3.8 ms, f32 D = 64 13.2 -> 6.1 ms; r = 8 bf16
///   11.3 -> 7.9 ms; r = 2 f16 flat (4.5 -> 4.3 ms). But with one row
///   per head (r = 1, bf16 D = 128: 3.6 -> 4.5 ms) and with 512-byte rows
///   (bf16 D = 256, r = 4: 13.0 -> 17.0 ms; f32 D = 128 flat) the hints
///   cost more than they bring, so there they are off.
/// - AMD Zen 3 (family 0x19 model 1; the 2-core EPYC VM): 2 or more
///   rows of at most 512 bytes, 3 KiB ahead. 32 KiB vs none, one run
///   after the other, three pairs: Llama-3-8B f16 (r = 4, 256-byte rows),
///   L 32768, 1 thread, cold, 16.5 -> 14.1, 17.6 -> 14.5, 18.8 -> 14.6 ms;
///   Falcon-7B f16 (r = 71, D 64) 11.3 -> 11.0 ms. Later sweeps (one
///   binary, the distances' runs interleaved, best of 6 rounds over 1 GiB
///   of layer caches): 8 rows at 0.89-0.90x of 128 with 1 thread, 0.87-0.89x
///   with 2; with the one-position score loop of 512-byte rows ticking
///   its hints (it sent them in one burst per block before), 12 rows
///   (3 KiB) at 0.84-0.86x of 16 in four runs (1 thread; 0.95-0.97x with
///   2), f32 `D = 128` 4-6 rows 0.86-0.93x of none, Gemma-2-9B (f16
///   `D = 256`, r = 2) 6 rows 0.73x of none (0.72-0.78x with 2 threads).
/// - Others (Zen 4 among them) are left to their hardware prefetcher
///   until measured: on the AMD Zen 4 VM head-major caches read at least
///   as fast as token-major ones with software prefetch.
pub(crate) fn stream_prefetch_bytes(rows: usize, row_bytes: usize) -> usize {
    // Miri cannot run `cpuid` (inline assembly), and a prefetch changes
    // no result.
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        if super::x86_64::intel() {
            return 32 << 10;
        }
        if super::x86_64::amd_zen3() && rows >= 2 && row_bytes <= 512 {
            return 3 << 10;
        }
        if super::x86_64::amd_zen5_or_later() && rows >= 2 && row_bytes <= 256 {
            return 32 << 10;
        }
    }
    let _ = (rows, row_bytes);
    0
}

/// K bytes (all KV heads) of a token-major window by default
/// ([`crate::Plan::token_window`]): 64 KiB, 32 positions of Llama-3-8B
/// f16 (8 heads of 256 bytes) and 16 of an f32 or `D = 256` cache; 32 KiB
/// on AMD Zen 3.
///
/// - AMD Zen 4 (the 2-core EPYC VM), L 32768, 1 thread, cold, builds
///   alternately: windows of 32 positions, prefetched a window ahead, cut
///   the Llama-3-8B f16 `[B, L, G, D]` step by 10 % against windows of 16
///   (r = 4 and r = 1): half the calls, and a prefetch distance that
///   covers more of the DRAM latency. Windows of 64 or 128 positions were
///   slower again, and so were 32-position windows of 4 KiB positions
///   (f32 D = 128: 4 % slower; f16 D = 256: 1 %).
/// - AMD Zen 3 (family 0x19 model 1, the 2-core EPYC VM), the other way:
///   Llama-3-8B f16 `[B, L, G, D]`, L 32768, cold, one binary with the
///   window set by environment, runs alternating, three pairs: 1 thread
///   16 positions 12.95-13.38 ms (1.01-1.05x `[B, G, L, D]` in the same
///   run), 32 positions 14.48-14.97 ms (1.14-1.17x); 2 threads 7.04-7.12
///   against 7.70-7.78 ms. 64, 128 and 256 positions: 1.21-1.41x. From an
///   L3-resident cache (L 1024 and 4096) the window made no difference
///   (1.09-1.18x at every size), so the gain is in how DRAM is read.
/// - Others: 64 KiB until measured.
pub(crate) fn token_window_bytes() -> usize {
    // Miri cannot run `cpuid` (inline assembly).
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        if super::x86_64::amd_zen3() {
            return 32 << 10;
        }
    }
    64 << 10
}

/// Whether a plan's kernels hint each 16-position block's V rows into L1
/// while they score its K rows, a row per scored position, by default
/// ([`crate::Plan::v_prefetch`]): `[head-major walk, window walk]` (the
/// window walk: token-major caches and pages, see
/// [`crate::Plan::token_window`]). Where a V row is wider than the
/// registers one pass of P·V can hold, P·V reads the block column tile by
/// column tile, so its first pass touches a slice of every row: from
/// DRAM that read slower than whole rows in order.
///
/// - AMD Zen 3 (family 0x19 model 1; the 2-core EPYC VM), AVX2, 1 thread,
///   L 32768, cold. An AVX2 loop shaped like the kernel (16 K rows scored,
///   then P·V in half-row column tiles per query row; f32 `D = 128`,
///   r = 4), interleaved in one binary: 38.6-40.3 ms, 32.5 with the V
///   rows hinted into L1 during the scores, the same as whole-row P·V
///   (31.0-33.9). The kernel itself: see the README's Zen 3 section. Both
///   walks.
/// - Intel (Sapphire Rapids, family 6 model 207, a 16-core KVM guest),
///   AVX-512, Llama-3-8B f16 L 32768, cold, one process, per-pair medians
///   of 15 steps against the step without the hint: `[B, G, L, D]`
///   0.918x / 0.937x (B 1, 1 / 2 threads) and 0.888x / 0.880x (B 4); on
///   `[B, L, G, D]` 1.077x / 1.017x / 1.022x / 1.010x, so the window walk
///   goes without. Then, without the hint over with it, head-major, 21
///   pairs (1 / 2 threads): Llama-3-8B f16 B 1 1.082 / 1.092, B 4 1.078 /
///   0.987, f32 1.012 / 1.057, Gemma-2-9B 1.034 / 0.969, Phi-3-mini
///   1.061 / 0.876 (the two-thread pairs spread by up to 8 %).
/// - Others: off until measured.
pub(crate) fn block_v_prefetch() -> [bool; 2] {
    // Miri cannot run `cpuid` (inline assembly).
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        if super::x86_64::amd_zen3() {
            return [true, true];
        }
        if super::x86_64::intel() {
            return [true, false];
        }
    }
    [false, false]
}

/// Hints every cache line of the `bytes` bytes from `p` into L1 (x86
/// `prefetcht0`, aarch64 `prfm pldl1keep`): a block's V rows while the
/// kernel scores the block ([`block_v_prefetch`]). Safe for any address.
#[inline(always)]
pub(crate) fn prefetch_span_l1(p: *const u8, bytes: usize) {
    prefetch_lines::<true>(p, bytes);
}

/// Hints every cache line of the `bytes` bytes from `p` into the core's
/// second-level cache (x86 `prefetcht1`, aarch64 `prfm pldl2keep`): the
/// driver's prefetch of the rows a KV head's pass over a token-major or
/// small-page cache reads next. Not into L1: on an AMD Zen 4 core,
/// `prefetcht0` of those rows made the step slower than no prefetch
/// (Llama-3-8B f16 [B, L, G, D], L = 32768: 20.9 -> 21.8 ms), `prefetcht1`
/// 1.9x faster (11.1 ms). Safe for any address: a prefetch never faults
/// and never reads architecturally.
#[inline]
pub(crate) fn prefetch_span(p: *const u8, bytes: usize) {
    prefetch_lines::<false>(p, bytes);
}

/// Every cache line of the `bytes` bytes from `p`, hinted into L1 (`L1`)
/// or L2.
#[inline(always)]
fn prefetch_lines<const L1: bool>(p: *const u8, bytes: usize) {
    let mut a = p.wrapping_sub(p as usize & 63);
    let end = p.wrapping_add(bytes);
    while a < end {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch hint (SSE, in every x86_64 CPU) never faults or
        // reads architecturally, whatever the address.
        unsafe {
            use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
            if L1 {
                _mm_prefetch::<_MM_HINT_T0>(a.cast::<i8>())
            } else {
                _mm_prefetch::<_MM_HINT_T1>(a.cast::<i8>())
            }
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `prfm` is a hint: it never faults or reads
        // architecturally, whatever the address, and touches no register
        // but its input.
        unsafe {
            if L1 {
                core::arch::asm!("prfm pldl1keep, [{0}]", in(reg) a, options(nostack, readonly, preserves_flags));
            } else {
                core::arch::asm!("prfm pldl2keep, [{0}]", in(reg) a, options(nostack, readonly, preserves_flags));
            }
        }
        a = a.wrapping_add(64);
    }
}
