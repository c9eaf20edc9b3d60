//! Layer 2, part 1: shapes, options, validation and the plan.

use super::choose::{
    choose_unit, default_prefetch, default_stream_prefetch, default_token_window,
    default_v_prefetch,
};
use super::layout::CHUNK;
use crate::arch::{pad, scratch_len, BLOCK};
use crate::dispatch::{self, active_tier, KernelEntry};
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tier::{Precision, Tier, Unit};
use crate::views::Batch;

/// Options of a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Options {
    /// Score scale; `None` means `1 / sqrt(Dk)`. Must be finite and > 0.
    pub scale: Option<f32>,
    /// Tier to run on; `None` means [`crate::active_tier`]
    /// (`GQA_KERNELS_ISA` or the best available).
    pub tier: Option<Tier>,
    /// Worker threads for [`Plan::run`] (0 or 1: the calling thread only).
    /// Results are bitwise identical for every value. With `n > 1` the plan
    /// starts `n - 1` threads of its own; the caller runs one part of each
    /// step, and after a step each worker spins for 200 µs (a core kept
    /// busy) watching for the next one before it parks, so that a model's
    /// back-to-back layer calls cost no wake-up.
    pub threads: usize,
    /// Sliding window `W` (Mistral, Gemma-2 local layers): the query at
    /// position `p` sees positions `p − W + 1 ..= p`, exactly `W` positions
    /// including its own (fewer near the start). `None` means no window;
    /// `Some(0)` is rejected (it does not mean "everything"). Positions
    /// outside every token's window are never loaded.
    pub window: Option<usize>,
    /// Logit softcap `c` (Gemma-2, Grok): each scaled score `s` becomes
    /// `c · tanh(s / c)`, before masking and before any bias. `None` means
    /// none; `c` must be finite and > 0.
    pub softcap: Option<f32>,
    /// The multiply-add unit to run on; `None` picks one per shape: with
    /// at least `AMX_MIN_ROWS` (8) query rows per KV head, bf16 K and V
    /// and the `avx512` tier, the AMX tile kernels where the process may
    /// use the tiles, else, with [`Precision::Fast`] on a CPU with
    /// AVX512-BF16 and no AMX (AMD Zen 4 and later), `bf16-dot`; f32 FMA
    /// otherwise. A unit that is
    /// unavailable ([`crate::Error::UnitUnavailable`]) or has no kernels for
    /// the dtypes ([`crate::Error::UnitUnsupported`]) is an error, never a
    /// silent fallback.
    pub unit: Option<Unit>,
    /// How closely the unit's kernels follow the f32 ones. f32 FMA meets
    /// both classes (it runs the same kernels for each).
    pub precision: Precision,
    /// Whether the plan runs batches with shared-prefix groups
    /// ([`crate::PrefixGroups`]). The workspace then also holds, per
    /// prefix split and KV head, a state for every sequence's rows (a
    /// group's tile takes its members' slots), and each worker's scratch
    /// is sized for a tile of all `B · r · q_len` rows.
    pub cascade: bool,
}

impl Options {
    /// Default options with the given scale.
    pub fn with_scale(mut self, scale: f32) -> Options {
        self.scale = Some(scale);
        self
    }
    /// Default options forcing `tier`.
    pub fn with_tier(mut self, tier: Tier) -> Options {
        self.tier = Some(tier);
        self
    }
    /// Default options with `threads` workers.
    pub fn with_threads(mut self, threads: usize) -> Options {
        self.threads = threads;
        self
    }
    /// Default options forcing `unit`.
    pub fn with_unit(mut self, unit: Unit) -> Options {
        self.unit = Some(unit);
        self
    }
    /// Default options with precision class `p`.
    pub fn with_precision(mut self, p: Precision) -> Options {
        self.precision = p;
        self
    }
    /// Default options with a logit softcap `c`.
    pub fn with_softcap(mut self, c: f32) -> Options {
        self.softcap = Some(c);
        self
    }
    /// Default options that take shared-prefix groups.
    pub fn with_cascade(mut self) -> Options {
        self.cascade = true;
        self
    }
    /// Default options with a sliding window of `w` positions.
    pub fn with_window(mut self, w: usize) -> Options {
        self.window = Some(w);
        self
    }
}

/// Work items the split rule aims for: enough to keep 32 or more cores busy
/// on one sequence. Fixed, so the splits (and the results) do not depend on
/// the thread count.
const TARGET_ITEMS: usize = 64;

/// Shortest KV split: long enough that the per-split costs (query tile,
/// state, merge) stay below 1% of the split's work.
const MIN_SPLIT: usize = 512;

/// Bytes of K and V rows a worker stages for one kernel call over the
/// scattered positions of a sparse list ([`Plan::stage_rows`]): about half
/// of a 32 KiB L1 data cache, beside the kernel's own scratch.
const STAGE_BYTES: usize = 16 << 10;

/// The most positions one staged call covers.
const STAGE_MAX: usize = 64;

/// A validated decode step: shape, scale, tier, kernel instances, work
/// items and KV splits fixed. Reusable for every layer and step of the same
/// shape.
pub struct Plan {
    pub(crate) shape: Shape,
    pub(crate) scale: f32,
    pub(crate) tier: Tier,
    /// `kernels[t - 1]` runs tiles of `t` query tokens (`r * t` rows).
    pub(crate) kernels: Vec<&'static KernelEntry>,
    pub(crate) threads: usize,
    /// Positions per KV split (a multiple of [`CHUNK`]; `usize::MAX` for
    /// one split per sequence).
    pub(crate) split_len: usize,
    /// Splits per sequence.
    pub(crate) splits: usize,
    /// Whether the plan takes prefix groups ([`Options::cascade`]).
    pub(crate) cascade: bool,
    /// Positions per split of a shared prefix (absolute positions, a
    /// multiple of [`CHUNK`]; `usize::MAX` for one), and the splits.
    pub(crate) prefix_split_len: usize,
    pub(crate) prefix_splits: usize,
    /// Sliding window (`usize::MAX`: none).
    pub(crate) window: usize,
    /// Logit softcap (0: none).
    pub(crate) softcap: f32,
    /// Attention-sink logit per query head (natural-log units), if any.
    pub(crate) sinks: Option<Vec<f32>>,
    /// ALiBi slope per query head (natural-log units), if any.
    pub(crate) alibi: Option<Vec<f32>>,
    /// The workers of a plan with `threads > 1`.
    pub(crate) pool: Option<super::pool::Pool>,
    /// Software prefetch distance of the kernels, in rows (0: none).
    pub(crate) prefetch: usize,
    /// Software prefetch distance of head-major streams, in rows (0: none).
    pub(crate) stream_prefetch: usize,
    /// Whether the kernels hint each block's V rows into L1 while they
    /// score it: on the head-major walk, and on the window walk.
    pub(crate) v_prefetch: [bool; 2],
    /// Positions per window of the token-major walk (at least 1).
    pub(crate) token_window: usize,
    /// The multiply-add unit of the kernels.
    pub(crate) unit: Unit,
    /// Their precision class.
    pub(crate) precision: Precision,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("shape", &self.shape)
            .field("scale", &self.scale)
            .field("tier", &self.tier)
            .field("kernel", &self.kernel_name())
            .field("threads", &self.threads)
            .field("split_len", &self.split_len)
            .field("splits", &self.splits)
            .field("window", &self.window())
            .field("softcap", &self.softcap())
            .field("alibi", &self.alibi)
            .field("sinks", &self.sinks)
            .field("prefetch", &self.prefetch)
            .field("stream_prefetch", &self.stream_prefetch)
            .field("v_prefetch", &self.v_prefetch)
            .field("token_window", &self.token_window)
            .finish()
    }
}

/// The split rule: from the shape only (`B`, `G`, `max_kv_len`, and with a
/// sliding window the longest range a sequence can see, `W + q_len - 1`;
/// the work per position scales with `r` like the per-split costs, so `r`
/// cancels). Returns (split length, splits per sequence).
fn plan_splits(s: &Shape, window: usize) -> (usize, usize) {
    if s.max_kv_len == 0 {
        return (usize::MAX, 1);
    }
    let visible = s.max_kv_len.min(window.saturating_add(s.q_len - 1));
    let bg = (s.batch * s.kv_heads).max(1);
    let splits = TARGET_ITEMS
        .div_ceil(bg)
        .min(visible.div_ceil(MIN_SPLIT))
        .max(1);
    let split_len = visible.div_ceil(splits).div_ceil(CHUNK) * CHUNK;
    (split_len, visible.div_ceil(split_len))
}

impl Plan {
    /// Validates `shape` and `options` and fixes the tier, the kernels, the
    /// KV splits and (with more than one thread) the plan's own worker
    /// threads.
    pub fn new(shape: &Shape, options: &Options) -> Result<Plan> {
        shape.validate()?;
        let scale = match options.scale {
            None => 1.0 / (shape.head_dim_k as f32).sqrt(),
            Some(s) if s.is_finite() && s > 0.0 => s,
            Some(s) => return Err(Error::InvalidScale { value: s }),
        };
        let tier = match options.tier {
            Some(t) => t.require()?,
            None => active_tier()?,
        };
        let unit = choose_unit(shape, options, tier)?;
        let precision = options.precision;
        let kernels = (1..=shape.q_len)
            .map(|t| {
                if let Some(e) =
                    dispatch::unit_entry(unit, precision, tier, shape.k_dtype, shape.v_dtype)
                {
                    return e;
                }
                dispatch::select(
                    tier,
                    shape.k_dtype,
                    shape.v_dtype,
                    shape.head_dim_k,
                    shape.head_dim_v,
                    shape.group_size() * t,
                )
            })
            .collect();
        let window =
            match options.window {
                None => usize::MAX,
                Some(0) => return Err(Error::InvalidDim {
                    arg: "window",
                    value: 0,
                    reason:
                        "a window holds at least the query's own position; use None for no window",
                }),
                Some(w) => w,
            };
        let (split_len, splits) = plan_splits(shape, window);
        // A shared prefix is one long range whose tile is all its members'
        // rows: split as one sequence without a window would be.
        let (prefix_split_len, prefix_splits) =
            plan_splits(&Shape { batch: 1, ..*shape }, usize::MAX);
        let softcap = match options.softcap {
            None => 0.0,
            Some(c) if c.is_finite() && c > 0.0 => c,
            Some(c) => {
                return Err(Error::InvalidParam {
                    arg: "softcap",
                    value: c,
                    reason: "must be finite and > 0",
                })
            }
        };
        let threads = options.threads.max(1);
        // The workspace must be addressable.
        let plan = Plan {
            shape: *shape,
            scale,
            tier,
            kernels,
            threads,
            split_len,
            splits,
            cascade: options.cascade,
            prefix_split_len,
            prefix_splits,
            window,
            softcap,
            sinks: None,
            alibi: None,
            prefetch: default_prefetch(tier),
            stream_prefetch: default_stream_prefetch(tier, shape),
            v_prefetch: default_v_prefetch(tier),
            token_window: default_token_window(shape),
            unit,
            precision,
            pool: None,
        };
        plan.checked_workspace_len()?;
        let plan = {
            let mut plan = plan;
            if threads > 1 {
                plan.pool =
                    Some(
                        super::pool::Pool::new(threads).map_err(|_| Error::InvalidDim {
                            arg: "threads",
                            value: threads,
                            reason: "the worker threads could not be started",
                        })?,
                    );
            }
            plan
        };
        Ok(plan)
    }

    /// The same plan with attention sinks (gpt-oss style): one logit per
    /// query head, in the units of the scaled scores, that joins every
    /// row's softmax denominator and contributes nothing to the output.
    /// It is counted exactly once per row, whatever the KV splits; `lse`
    /// includes it, and a row that sees no position gets zeros and
    /// `lse = sink`.
    pub fn with_sinks(mut self, sinks: &[f32]) -> Result<Plan> {
        self.set_sinks(sinks)?;
        Ok(self)
    }

    /// [`Plan::with_sinks`] in place (the plan is unchanged on error).
    pub fn set_sinks(&mut self, sinks: &[f32]) -> Result<()> {
        self.sinks = Some(self.per_head("sinks", sinks)?);
        Ok(())
    }

    /// Checks a per-query-head parameter array (one finite value per head)
    /// and copies it.
    fn per_head(&self, arg: &'static str, values: &[f32]) -> Result<Vec<f32>> {
        if values.len() != self.shape.heads {
            return Err(Error::LengthMismatch {
                arg,
                expected: self.shape.heads,
                actual: values.len(),
            });
        }
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(Error::NonFinite { arg, index, value });
        }
        Ok(values.to_vec())
    }

    /// The same plan with ALiBi (BLOOM, MPT): `slope_h · (j − p)` is added
    /// to the scaled score of query head `h` at position `p` for KV position
    /// `j` (after any softcap). One slope per query head.
    pub fn with_alibi(mut self, slopes: &[f32]) -> Result<Plan> {
        self.set_alibi(slopes)?;
        Ok(self)
    }

    /// [`Plan::with_alibi`] in place (the plan is unchanged on error).
    pub fn set_alibi(&mut self, slopes: &[f32]) -> Result<()> {
        self.alibi = Some(self.per_head("alibi_slopes", slopes)?);
        Ok(())
    }

    /// The same plan with ALiBi slopes derived from `max_bias` by the
    /// standard formula (see [`alibi_slopes`]).
    pub fn with_alibi_max_bias(self, max_bias: f32) -> Result<Plan> {
        let slopes = alibi_slopes(self.shape.heads, max_bias)?;
        self.with_alibi(&slopes)
    }

    /// The ALiBi slopes, if any.
    pub fn alibi(&self) -> Option<&[f32]> {
        self.alibi.as_deref()
    }

    /// The shape planned for.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The sliding window, if any.
    pub fn window(&self) -> Option<usize> {
        (self.window != usize::MAX).then_some(self.window)
    }
    /// The logit softcap, if any.
    pub fn softcap(&self) -> Option<f32> {
        (self.softcap > 0.0).then_some(self.softcap)
    }
    /// The attention-sink logits, if any.
    pub fn sinks(&self) -> Option<&[f32]> {
        self.sinks.as_deref()
    }
    /// The score scale in use.
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// The tier the plan runs on.
    pub fn tier(&self) -> Tier {
        self.tier
    }
    /// The multiply-add unit the plan's kernels run on.
    pub fn unit(&self) -> Unit {
        self.unit
    }
    /// The precision class of the plan's kernels.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// The kernel instance that runs full tiles (`r * q_len` rows), e.g.
    /// `decode_f16_d128_r4__avx512`.
    pub fn kernel_name(&self) -> &'static str {
        self.kernels[self.shape.q_len - 1].name
    }
    /// Every kernel instance the plan may run: `kernels()[t - 1]` serves
    /// tiles of `t` query tokens (causal tails and ragged batches).
    pub fn kernel_names(&self) -> Vec<&'static str> {
        self.kernels.iter().map(|k| k.name).collect()
    }
    /// How many positions ahead of the window it computes the driver
    /// prefetches K and V into L2 (0: no software prefetch), chosen when
    /// the plan is made from the tier (see [`Plan::with_prefetch`]). It
    /// applies where the hardware prefetcher cannot follow the reads:
    /// token-major caches (`[B, L, G, D]`-like strides, strided, ring or
    /// paged) and pages whose piece of a head is under 16 KiB. There the
    /// driver walks the KV heads of a sequence window by window (16
    /// to 32 positions of a token-major cache, a page of a paged one), and each
    /// head's pass hints its share of the window this far ahead (rounded
    /// up to whole windows), as contiguous spans. Head-major rows and large
    /// pages are streams of one head: see [`Plan::stream_prefetch`].
    pub fn prefetch(&self) -> usize {
        self.prefetch
    }
    /// The same plan with a software prefetch distance of `rows` positions
    /// (0 turns it off), for experiments and for hosts that know their
    /// memory system better; results are bitwise the same at any distance.
    pub fn with_prefetch(mut self, rows: usize) -> Plan {
        self.prefetch = rows;
        self
    }
    /// How many positions ahead each head-major stream (a KV head's rows
    /// read in position order: `[B, G, L, D]` caches) hints its own K and V
    /// rows into L2 while the kernel reads the current ones (0: left to the
    /// hardware prefetcher). Chosen from the CPU when the plan is made.
    /// Pages whose piece of a head is at least 16 KiB, where it is not 0,
    /// hint instead the rows of the call that follows (the next head's
    /// piece of the page, or the first head's of the next page): on an
    /// Intel core that took pages of 256 from 1.25x to 1.02x the step time
    /// of `[B, G, L, D]`.
    pub fn stream_prefetch(&self) -> usize {
        self.stream_prefetch
    }
    /// The same plan with a head-major stream prefetch distance of `rows`
    /// positions (0 turns it off); results are bitwise the same at any
    /// distance.
    pub fn with_stream_prefetch(mut self, rows: usize) -> Plan {
        self.stream_prefetch = rows;
        self
    }
    /// Whether the kernels hint each 16-position block's V rows into L1,
    /// a row per position, while they score the block's K rows (rows read
    /// straight from the cache: groups up to the tier's register tile), on
    /// head-major caches. Chosen from the CPU when the plan is made (on
    /// where P·V reads wide rows column tile by column tile and that read
    /// DRAM slower: AMD Zen 3, Intel).
    pub fn v_prefetch(&self) -> bool {
        self.v_prefetch[0]
    }
    /// The same as [`Plan::v_prefetch`] for the window walk (token-major
    /// caches and pages, see [`Plan::token_window`]): chosen apart, as it
    /// measured otherwise there (off on Intel, on on AMD Zen 3).
    pub fn v_prefetch_windows(&self) -> bool {
        self.v_prefetch[1]
    }
    /// The same plan with the V-block hint of [`Plan::v_prefetch`] on or
    /// off on both walks; results are bitwise the same either way.
    pub fn with_v_prefetch(mut self, on: bool) -> Plan {
        self.v_prefetch = [on; 2];
        self
    }
    /// Positions per window where the driver walks the KV heads of a
    /// token-major cache together (`[B, L, G, D]`-like strides, strided,
    /// ring or `[page, G, D]` pages; see [`Plan::prefetch`]): each window
    /// is one kernel call per head. Chosen when the plan is made from the
    /// CPU and the shape: 64 KiB of K for all heads (32 KiB on AMD Zen 3),
    /// 16 to 32 positions; `GQA_KERNELS_TOKEN_WINDOW=n` sets it for every
    /// plan of the process. Unlike the prefetch distances it decides where
    /// kernel calls are cut, so two windows may differ in the last bits
    /// (each within the tolerance); a plan's results stay bitwise the same
    /// for any thread count.
    pub fn token_window(&self) -> usize {
        self.token_window
    }
    /// The same plan with token-major windows of `positions` positions,
    /// for experiments and for hosts that know their memory system better.
    /// 0 is an error naming `token_window`.
    pub fn with_token_window(mut self, positions: usize) -> Result<Plan> {
        if positions == 0 {
            return Err(Error::InvalidDim {
                arg: "token_window",
                value: 0,
                reason: "a window holds at least one position",
            });
        }
        self.token_window = positions;
        Ok(self)
    }
    /// Worker threads used by [`Plan::run`].
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Positions per KV split, or `None` when each sequence is one split.
    pub fn split_len(&self) -> Option<usize> {
        (self.split_len != usize::MAX).then_some(self.split_len)
    }
    /// Independent work items of a step: one per (sequence, KV split, KV
    /// head), in that order; then, with [`Options::cascade`], one slot per
    /// (prefix split, KV head, sequence), of which a prefix group's item
    /// takes its members' consecutive slots (and runs in the part that
    /// holds its first slot; [`crate::Step::parts`] never cuts a group).
    pub fn work_items(&self) -> usize {
        self.seq_items() + self.prefix_slots()
    }

    /// Items of the sequences' own positions: (sequence, KV split, KV head).
    pub(crate) fn seq_items(&self) -> usize {
        self.shape.batch * self.splits * self.shape.kv_heads
    }

    /// Slots of the prefix groups' items (0 without cascade).
    pub(crate) fn prefix_slots(&self) -> usize {
        if self.cascade {
            self.prefix_splits * self.shape.kv_heads * self.shape.batch
        } else {
            0
        }
    }

    /// Query rows of the largest tile a step runs: one sequence's, or with
    /// cascade every sequence's.
    pub(crate) fn max_tile_rows(&self) -> usize {
        let rows = self.shape.rows();
        if self.cascade {
            rows * self.shape.batch
        } else {
            rows
        }
    }

    /// The kernel for a tile of `rows` query rows (a prefix group's).
    pub(crate) fn tile_kernel(&self, rows: usize) -> &'static KernelEntry {
        let s = &self.shape;
        dispatch::unit_entry(self.unit, self.precision, self.tier, s.k_dtype, s.v_dtype)
            .unwrap_or_else(|| {
                dispatch::select(
                    self.tier,
                    s.k_dtype,
                    s.v_dtype,
                    s.head_dim_k,
                    s.head_dim_v,
                    rows,
                )
            })
    }

    /// f32 of one item's state: `m` and `l` (padded), `acc`, then the
    /// item's prescaled query tile.
    pub(crate) fn state_len(&self) -> usize {
        let s = &self.shape;
        let rows = s.rows();
        2 * pad(rows) + rows * pad(s.head_dim_v) + rows * pad(s.head_dim_k)
    }

    /// f32 of one worker's scratch: the kernel scratch, two rows' worth of
    /// ALiBi terms, then the staging rows of sparse lists
    /// ([`Plan::stage_len`]).
    pub(crate) fn worker_len(&self) -> usize {
        let s = &self.shape;
        let rows = self.max_tile_rows();
        let kernel = scratch_len(rows, s.head_dim_k, s.head_dim_v).max(
            crate::arch::unit_scratch_len(self.unit, rows, s.head_dim_k, s.head_dim_v),
        );
        pad(kernel) + 2 * pad(rows) + self.stage_len()
    }

    /// Positions of one staged kernel call over a sparse list's scattered
    /// rows: the rows are copied (in the cache's own type) into the worker
    /// scratch and one call covers them all, where a call per run of
    /// positions made the step pay a call's fixed cost per listed position.
    /// A whole number of blocks, at least one, so that a staged call
    /// leaves no block lanes idle.
    pub(crate) fn stage_rows(&self) -> usize {
        let s = &self.shape;
        let bytes = s.k_dtype.row_bytes(s.head_dim_k) + s.v_dtype.row_bytes(s.head_dim_v);
        (STAGE_BYTES / bytes / BLOCK * BLOCK).clamp(BLOCK, STAGE_MAX)
    }

    /// f32 of the staging rows: the K and V row areas of
    /// [`Plan::stage_areas`], then a K and a V row scale per position
    /// (`pad(stage_rows)` floats each).
    pub(crate) fn stage_len(&self) -> usize {
        let [k, v] = self.stage_areas();
        k + v + 2 * pad(self.stage_rows())
    }

    /// f32 of the staging rows' K area and V area: `stage_rows` rows of
    /// the type's full row bytes each, rounded up to whole 64-byte lines.
    pub(crate) fn stage_areas(&self) -> [usize; 2] {
        let s = &self.shape;
        let n = self.stage_rows();
        let lines = |bytes: usize| bytes.div_ceil(64) * 16;
        [
            lines(n * s.k_dtype.row_bytes(s.head_dim_k)),
            lines(n * s.v_dtype.row_bytes(s.head_dim_v)),
        ]
    }

    fn checked_workspace_len(&self) -> Result<usize> {
        let states = self
            .work_items()
            .checked_mul(self.state_len())
            .ok_or(Error::Overflow {
                arg: "workspace",
                seq: 0,
            })?;
        self.threads
            .checked_mul(self.worker_len())
            .and_then(|w| w.checked_add(states))
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(ALIGN))
            .ok_or(Error::Overflow {
                arg: "workspace",
                seq: 0,
            })
    }

    /// Bytes of workspace [`Plan::run`] needs: the states of every work
    /// item and one scratch area per thread, plus 64 bytes of alignment
    /// slack (any byte buffer will do; its contents are ignored).
    pub fn workspace_bytes(&self) -> usize {
        ALIGN + 4 * (self.work_items() * self.state_len() + self.threads * self.worker_len())
    }

    /// Bytes of the states buffer [`Plan::begin`] needs (host-driven
    /// threading), alignment slack included.
    pub fn state_bytes(&self) -> usize {
        ALIGN + 4 * self.work_items() * self.state_len()
    }

    /// Bytes of scratch each worker passes to [`crate::Part::run`]
    /// (the microkernel's block buffers, and the rows a sparse list's
    /// scattered positions are staged in), alignment slack included.
    pub fn scratch_bytes(&self) -> usize {
        ALIGN + 4 * self.worker_len()
    }

    /// A zeroed workspace of [`Plan::workspace_bytes`] bytes.
    pub fn alloc_workspace(&self) -> Vec<u8> {
        vec![0; self.workspace_bytes()]
    }

    /// Tokens of sequence `b`, and its first token's index in `q`/`out`.
    pub(crate) fn tokens(&self, batch: &Batch<'_>, b: usize) -> (usize, usize) {
        match batch.q_offsets {
            Some(o) => (o[b + 1] - o[b], o[b]),
            None => (self.shape.q_len, b * self.shape.q_len),
        }
    }
}

/// ALiBi slopes for `heads` query heads from `max_bias` (Press et al.; the
/// form llama.cpp and BLOOM use, for any head count): with
/// `n = 2^floor(log2 heads)`, head `h < n` gets `2^(-max_bias (h + 1) / n)`
/// and head `h >= n` gets `2^(-max_bias (2 (h - n) + 1) / (2 n))`. The
/// classic `max_bias = 8` gives `2^-1, 2^-2, …, 2^-8` for 8 heads.
pub fn alibi_slopes(heads: usize, max_bias: f32) -> Result<Vec<f32>> {
    if !(max_bias.is_finite() && max_bias > 0.0) {
        return Err(Error::InvalidParam {
            arg: "max_bias",
            value: max_bias,
            reason: "must be finite and > 0",
        });
    }
    if heads == 0 {
        return Err(Error::InvalidDim {
            arg: "heads",
            value: 0,
            reason: "must be at least 1",
        });
    }
    let n = 1usize << heads.ilog2();
    let m0 = (-f64::from(max_bias) / n as f64).exp2();
    let m1 = (-f64::from(max_bias) / 2.0 / n as f64).exp2();
    Ok((0..heads)
        .map(|h| {
            if h < n {
                m0.powi(h as i32 + 1) as f32
            } else {
                m1.powi(2 * (h - n) as i32 + 1) as f32
            }
        })
        .collect())
}

/// Alignment of the f32 regions carved out of caller byte buffers.
pub(crate) const ALIGN: usize = 64;
