//! Layer 2: running a step, on the plan's threads ([`Plan::run`]) or the
//! host's ([`Plan::begin`], [`Step`], [`Part`]), and finishing it.
//!
//! A step is a fixed list of independent work items, one per (sequence,
//! KV split, KV head). Each item builds the prescaled query tile of its
//! group (`r × q_len_b` rows), runs the kernel over the split's visible K/V
//! rows and leaves an online-softmax state `(m, l, acc)` in its own slice of
//! the workspace. [`Step::finish`] then merges the splits of each sequence
//! in split order and writes `out` and `lse`.
//!
//! Items share nothing, every kernel call is cut at the same positions
//! whatever the walk order, and the merge order is fixed, so any assignment
//! of items to threads gives bitwise the same result.
//!
//! Causal multi-token decode: token `t` of `q_len_b` sees positions
//! `j <= L_b - q_len_b + t`. Positions below `L_b - q_len_b + 1` are seen by
//! every token and run as one tile; each later position is seen by a suffix
//! of the tokens, which are the last rows of the tile (rows are ordered
//! token-major), and runs as a smaller tile over the same state rows.

use std::ops::Range;

use super::plan::{Plan, ALIGN};
use super::validate::check_batch;
use super::walk::{Job, LOG2_E};
use crate::arch::pad;
use crate::dispatch::count_run;
use crate::error::{Error, Result};
use crate::shape::LOGIT_FLOOR;
use crate::views::{Batch, KvTensor};

/// The 64-byte-aligned f32 view of `len` floats at the start of a caller
/// byte buffer (`arg` names it in errors).
fn carve<'w>(arg: &'static str, buf: &'w mut [u8], len: usize) -> Result<&'w mut [f32]> {
    let needed = ALIGN + 4 * len;
    if buf.len() < needed {
        return Err(Error::BufferTooSmall {
            arg,
            needed,
            len: buf.len(),
        });
    }
    let off = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
    Ok(bytemuck::cast_slice_mut(&mut buf[off..off + 4 * len]))
}

impl Plan {
    /// [`check_batch`], and that the plan takes the batch's prefix groups.
    fn check(&self, batch: &Batch<'_>, out: Option<usize>, lse: Option<usize>) -> Result<usize> {
        let tokens = check_batch(&self.shape, batch, out, lse)?;
        if batch.prefix.is_some() && !self.cascade {
            return Err(Error::InvalidPrefixGroups {
                arg: "prefix",
                index: 0,
                value: 0,
                reason: "the plan was made without `Options::cascade`",
            });
        }
        Ok(tokens)
    }

    /// Runs one step with the plan's threads, in the caller's workspace.
    ///
    /// - `batch`: queries `[T, H, Dk]`, the cache, `L_b` per sequence and
    ///   optional ragged query offsets (see [`Batch`]);
    /// - `out`: `[T, H, Dv]` f32, overwritten;
    /// - `lse`: optional `[T, H]` f32, the natural-log log-sum-exp of each
    ///   row's scaled visible scores (`-inf` when it sees no position);
    /// - `workspace`: at least [`Plan::workspace_bytes`] bytes, any contents.
    ///
    /// Every argument is checked against the plan before any memory is read,
    /// and nothing is allocated.
    pub fn run(
        &self,
        batch: &Batch<'_>,
        out: &mut [f32],
        lse: Option<&mut [f32]>,
        workspace: &mut [u8],
    ) -> Result<()> {
        self.check(batch, Some(out.len()), lse.as_ref().map(|l| l.len()))?;
        let n_states = self.work_items() * self.state_len();
        let wl = self.worker_len();
        let ws = carve("workspace", workspace, n_states + self.threads * wl)?;
        let (states, scratch) = ws.split_at_mut(n_states);
        count_run(self.tier);
        self.init_states(states);
        let parts = self.threads.min(self.work_items()).max(1);
        let per = self.work_items().div_ceil(parts);
        // Part `i` starts at slot `i · per`, or after the prefix group
        // that slot falls in.
        let cut = |i: usize| self.part_start(batch, (i * per).min(self.work_items()));
        let job = Job::new(self, *batch);
        match &self.pool {
            Some(pool) if parts > 1 => {
                let (n_items, slen) = (self.work_items(), self.state_len());
                let (states, scratch) = (Base(states.as_mut_ptr()), Base(scratch.as_mut_ptr()));
                pool.run(&|i| {
                    let items = cut(i).min(n_items)..cut(i + 1).min(n_items);
                    if items.is_empty() {
                        return;
                    }
                    // SAFETY: part `i` takes the states of its own items
                    // (the cuts never decrease: `part_start` moves a cut
                    // at most to the next group start, which a later cut
                    // does not precede) and
                    // the `i`-th worker scratch (the pool has `threads`
                    // parts, and `parts <= threads` scratch slices were
                    // carved), so no two parts' slices overlap; each part
                    // runs once, and `pool.run` returns only after all have
                    // ended, while `states` and `scratch` are still borrowed.
                    let (st, sc) = unsafe {
                        (
                            std::slice::from_raw_parts_mut(
                                states.at(items.start * slen),
                                items.len() * slen,
                            ),
                            std::slice::from_raw_parts_mut(scratch.at(i * wl), wl),
                        )
                    };
                    // Odd parts walk backwards: with head-major caches,
                    // threads walking forwards in lockstep read streams a
                    // power of two apart, which measured slower than one
                    // thread (DRAM bank conflicts).
                    job.run_items(items.start, st, i % 2 == 1, sc);
                });
            }
            _ => job.run_items(0, states, false, &mut scratch[..wl]),
        }
        self.finish_states(batch, states, out, lse);
        Ok(())
    }

    /// Convenience for a strided cache and `q_len` tokens per sequence:
    /// [`Plan::run`] with a workspace allocated for this call.
    pub fn decode(
        &self,
        q: &[f32],
        k: &KvTensor<'_>,
        v: &KvTensor<'_>,
        seq_lens: &[usize],
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<()> {
        let batch = Batch::strided(q, *k, *v, seq_lens);
        self.run(&batch, out, lse, &mut self.alloc_workspace())
    }

    /// Starts a host-driven step: validates `batch` against the plan, lays
    /// the item states out in `states` ([`Plan::state_bytes`] bytes, any
    /// contents) and returns the [`Step`] whose [`Step::parts`] any threads
    /// may run before [`Step::finish`] writes the output.
    pub fn begin<'s, 'a>(
        &'s self,
        batch: &Batch<'a>,
        states: &'s mut [u8],
    ) -> Result<Step<'s, 'a>> {
        self.check(batch, None, None)?;
        let states = carve("states", states, self.work_items() * self.state_len())?;
        count_run(self.tier);
        self.init_states(states);
        Ok(Step {
            job: Job::new(self, *batch),
            states,
        })
    }

    /// Initialises the states of the sequences' own items (a prefix
    /// group's item lays out its own).
    fn init_states(&self, states: &mut [f32]) {
        let rows = self.shape.rows();
        let own = self.seq_items() * self.state_len();
        for st in states[..own].chunks_mut(self.state_len()) {
            let (m, rest) = st.split_at_mut(pad(rows));
            m.fill(f32::NEG_INFINITY);
            rest.fill(0.0);
        }
    }

    /// Merges the split states of every (sequence, KV head) in split order
    /// and writes `out` and `lse` (lengths checked by the caller).
    ///
    /// Rows go in chunks of [`MERGE_ROWS`] and, within a chunk, the splits
    /// in the outer loop: each split's accumulator rows are read once, in
    /// address order. Row by row with the splits inside, every read jumped
    /// a whole state ahead (18 KiB for Falcon-7B's 71 rows), missed the
    /// caches' prefetchers and took 4-5 % of a 64-split step. The sums run
    /// in split order either way, so the result is bitwise the same.
    fn finish_states(
        &self,
        batch: &Batch<'_>,
        states: &[f32],
        out: &mut [f32],
        mut lse: Option<&mut [f32]>,
    ) {
        let s = &self.shape;
        let (r, rows, dv, dvp) = (s.group_size(), s.rows(), s.head_dim_v, pad(s.head_dim_v));
        let (nh, slen) = (s.kv_heads, self.state_len());
        let vdata = batch.cache.data().1;
        for b in 0..s.batch {
            let (tq, tok0) = self.tokens(batch, b);
            // A member of a prefix group merges its prefix splits first.
            let member = batch
                .prefix
                .as_ref()
                .and_then(|pg| Some((pg, self.group_of(pg, b)?)));
            let pre = if member.is_some() {
                self.prefix_splits
            } else {
                0
            };
            for g in 0..nh {
                // fp8 V: the per-head scale is applied to the output here.
                let vf = vdata.head_factor(g);
                let state = |sp: usize| match member {
                    Some((pg, at)) if sp < pre => {
                        let (m, l, acc) = self.prefix_state(pg, at, sp, g);
                        (
                            &states[m..][..rows],
                            &states[l..][..rows],
                            &states[acc..][..rows * dvp],
                        )
                    }
                    _ => {
                        let sp = sp - pre;
                        let st = &states[((b * self.splits + sp) * nh + g) * slen..][..slen];
                        let (m, rest) = st.split_at(pad(rows));
                        let (l, acc) = rest.split_at(pad(rows));
                        (m, l, &acc[..rows * dvp])
                    }
                };
                let n_states = pre + self.splits;
                // Output row of state row `row` (token-major rows).
                let orow = |row: usize| (tok0 + row / r) * s.heads + g * r + row % r;
                let used = tq * r;
                let mut c0 = 0;
                while c0 < used {
                    let n = (used - c0).min(MERGE_ROWS);
                    // Per row of the chunk: the largest running max of the
                    // splits that saw a position (log2 domain), and the
                    // softmax denominator.
                    let mut mx = [f32::NEG_INFINITY; MERGE_ROWS];
                    let mut total = [0f32; MERGE_ROWS];
                    for (c, mxc) in mx[..n].iter_mut().enumerate() {
                        let row = c0 + c;
                        // An attention sink joins once, as a state of
                        // weight 1 at its logit and no value. Below the
                        // logit floor a sink counts as the floor (its
                        // product with log2 e would overflow).
                        if let Some(sk) = &self.sinks {
                            *mxc = sk[g * r + row % r].max(LOGIT_FLOOR) * LOG2_E;
                        }
                        for sp in 0..n_states {
                            let (m, l, _) = state(sp);
                            if l[row] > 0.0 {
                                *mxc = mxc.max(m[row]);
                            }
                        }
                    }
                    for c in 0..n {
                        let row = c0 + c;
                        total[c] = self.sinks.as_ref().map_or(0.0, |sk| {
                            (sk[g * r + row % r].max(LOGIT_FLOOR) * LOG2_E - mx[c]).exp2()
                        });
                        out[orow(row) * dv..][..dv].fill(0.0);
                    }
                    for sp in 0..n_states {
                        let (m, l, acc) = state(sp);
                        for c in 0..n {
                            let row = c0 + c;
                            if mx[c] > f32::NEG_INFINITY && l[row] > 0.0 {
                                let w = (m[row] - mx[c]).exp2();
                                total[c] += l[row] * w;
                                let dst = &mut out[orow(row) * dv..][..dv];
                                for (d, a) in dst.iter_mut().zip(&acc[row * dvp..][..dv]) {
                                    *d += a * w;
                                }
                            }
                        }
                    }
                    for c in 0..n {
                        let o = orow(c0 + c);
                        if mx[c] > f32::NEG_INFINITY {
                            let inv = vf / total[c];
                            for d in out[o * dv..][..dv].iter_mut() {
                                *d *= inv;
                            }
                        }
                        if let Some(lse) = lse.as_deref_mut() {
                            lse[o] = if total[c] > 0.0 {
                                (mx[c] + total[c].log2()) * std::f32::consts::LN_2
                            } else {
                                f32::NEG_INFINITY
                            };
                        }
                    }
                    c0 += n;
                }
            }
        }
    }
}

/// State rows [`Plan::finish_states`] merges together (two f32 arrays of
/// this length on the stack).
const MERGE_ROWS: usize = 128;

/// A host-driven step: the item states of one batch, to be filled by
/// [`Part::run`] on any threads and merged by [`Step::finish`].
pub struct Step<'s, 'a> {
    job: Job<'s, 'a>,
    states: &'s mut [f32],
}

impl<'s, 'a> Step<'s, 'a> {
    /// Cuts the work items into `n` contiguous parts (fewer when there are
    /// fewer items), each runnable on its own thread with its own scratch.
    /// Every part must run once before [`Step::finish`]; a part that does
    /// not run contributes nothing to the output.
    pub fn parts(&mut self, n: usize) -> impl Iterator<Item = Part<'_, 'a>> + '_ {
        let items = self.job.plan.work_items();
        let per = items.div_ceil(n.max(1)).max(1);
        let slen = self.job.plan.state_len();
        let job = self.job;
        let mut rest: &mut [f32] = &mut self.states[..];
        // Cut `k` is at item `k · per`, or after the prefix group that
        // item falls in; a part that would be empty is skipped.
        let (mut at, mut k, mut made) = (0, 0, 0);
        std::iter::from_fn(move || {
            if at >= items {
                return None;
            }
            let mut end = at;
            while end <= at {
                k += 1;
                end = job.plan.part_start(&job.batch, (k * per).min(items));
            }
            let (states, tail) = std::mem::take(&mut rest).split_at_mut((end - at) * slen);
            rest = tail;
            let part = Part {
                job,
                first: at,
                states,
                reverse: made % 2 == 1,
            };
            (at, made) = (end, made + 1);
            Some(part)
        })
    }

    /// Merges the item states into `out` (`[T, H, Dv]`) and `lse` (`[T, H]`).
    pub fn finish(self, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let plan = self.job.plan;
        plan.check(
            &self.job.batch,
            Some(out.len()),
            lse.as_ref().map(|l| l.len()),
        )?;
        plan.finish_states(&self.job.batch, self.states, out, lse);
        Ok(())
    }
}

/// A contiguous range of work items with their states.
pub struct Part<'p, 'a> {
    job: Job<'p, 'a>,
    first: usize,
    states: &'p mut [f32],
    reverse: bool,
}

impl Part<'_, '_> {
    /// The work items of this part.
    pub fn items(&self) -> Range<usize> {
        self.first..self.first + self.states.len() / self.job.plan.state_len()
    }

    /// Runs the part's items using `scratch` ([`Plan::scratch_bytes`]
    /// bytes, any contents) as the worker's scratch.
    pub fn run(self, scratch: &mut [u8]) -> Result<()> {
        let scratch = carve("scratch", scratch, self.job.plan.worker_len())?;
        self.run_in(scratch);
        Ok(())
    }

    fn run_in(self, scratch: &mut [f32]) {
        // The sequences' own items; a prefix group's item lays out its own.
        let own = self.job.plan.seq_items().saturating_sub(self.first);
        self.states
            .chunks_mut(self.job.plan.state_len())
            .take(own)
            .for_each(|st| {
                let rows = self.job.plan.shape.rows();
                let (m, rest) = st.split_at_mut(pad(rows));
                m.fill(f32::NEG_INFINITY);
                rest.fill(0.0);
            });
        self.job
            .run_items(self.first, self.states, self.reverse, scratch);
    }
}

/// Item-level entry points of the C ABI, where the host owns the states
/// buffer and runs any item range on any thread (`gqa_begin`,
/// `gqa_run_items`, `gqa_finish`). Each call validates the batch again: the
/// host could pass a different one.
impl Plan {
    /// Runs items `first..first + states.len() / state_len` into `states`,
    /// which holds exactly their states.
    pub(crate) fn run_item_range(
        &self,
        batch: &Batch<'_>,
        first: usize,
        states: &mut [f32],
        scratch: &mut [u8],
    ) -> Result<()> {
        self.check(batch, None, None)?;
        let scratch = carve("scratch", scratch, self.worker_len())?;
        debug_assert!(
            first * self.state_len() + states.len() <= self.work_items() * self.state_len()
        );
        let end = first + states.len() / self.state_len();
        if self.part_start(batch, first) != first || self.part_start(batch, end) != end {
            return Err(Error::InvalidPrefixGroups {
                arg: "prefix",
                index: 0,
                value: 0,
                reason:
                    "an item range must not cut a prefix group's slots (cut where Step::parts cuts)",
            });
        }
        Part {
            job: Job::new(self, *batch),
            first,
            states,
            reverse: false,
        }
        .run_in(scratch);
        Ok(())
    }

    /// Merges the states of every item (the whole buffer) into `out`/`lse`.
    pub(crate) fn finish_items(
        &self,
        batch: &Batch<'_>,
        states: &[f32],
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<()> {
        self.check(batch, Some(out.len()), lse.as_ref().map(|l| l.len()))?;
        debug_assert_eq!(states.len(), self.work_items() * self.state_len());
        self.finish_states(batch, states, out, lse);
        Ok(())
    }
}

/// The start of the states or scratch of a step, from which each part of
/// [`Plan::run`] takes its own slice.
#[derive(Clone, Copy)]
struct Base(*mut f32);

// SAFETY: the parts that share a `Base` take disjoint slices of it, and the
// buffer outlives them (see [`Plan::run`]).
unsafe impl Sync for Base {}

impl Base {
    /// `n` floats on (a method, so that closures capture the whole `Base`).
    fn at(self, n: usize) -> *mut f32 {
        self.0.wrapping_add(n)
    }
}
