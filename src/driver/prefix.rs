//! Layer 2: shared-prefix (cascade) groups ([`crate::PrefixGroups`]).
//!
//! A group's prefix is read once per step: for each (prefix split, KV
//! head) one item runs a tile of the `r · q_len` rows of every member,
//! member after member, over the first member's rows. With many members
//! the tile is wide, so the cost per cached row is the multiply-adds of
//! all members' rows, not a load per member.
//!
//! The item's state takes its members' consecutive slots of the prefix
//! region (slot `(split · G + g) · B + c` for member `c` of
//! `PrefixGroups::members`; the group's `n` slots hold `m` and `l` of
//! `n · pad(rows)` floats each, then `acc`, then the query tile, exactly
//! `n · state_len` floats), so member `k`'s rows are tile rows
//! `k · rows ..`. Each member's own items walk its positions outside the
//! shared range ([`Job::own_pieces`]), and the merge takes the member's
//! prefix states, in split order, before its own splits.

use std::ops::Range;

use super::layout::{for_runs, CHUNK};
use super::plan::Plan;
use super::walk::{Job, LOG2_E};
use crate::arch::{pad, Span, State};
use crate::views::{Batch, PrefixGroups};

impl Plan {
    /// The group of sequence `b`: (group, index of `b` in `members`).
    pub(crate) fn group_of(&self, pg: &PrefixGroups<'_>, b: usize) -> Option<(usize, usize)> {
        let c = pg.members.iter().position(|&m| m == b)?;
        Some((pg.offsets.partition_point(|&o| o <= c) - 1, c))
    }

    /// The positions group `grp` reads once for all its members: its
    /// prefix, less what a window hides from some member's last token
    /// (those are walked by the members that see them).
    pub(crate) fn shared_range(
        &self,
        batch: &Batch<'_>,
        pg: &PrefixGroups<'_>,
        grp: usize,
    ) -> Range<usize> {
        let lo = pg
            .group(grp)
            .iter()
            .map(|&m| batch.seq_lens[m].saturating_sub(self.window))
            .max()
            .unwrap_or(0);
        let len = pg.lens[grp];
        lo.min(len)..len
    }

    /// The first slot at or after `slot` where a part may start: not inside
    /// a prefix group's slots (see [`Plan::work_items`]).
    pub(crate) fn part_start(&self, batch: &Batch<'_>, slot: usize) -> usize {
        let (base, nb) = (self.seq_items(), self.shape.batch);
        match &batch.prefix {
            Some(pg) if slot > base && slot < self.work_items() => {
                let c = (slot - base) % nb;
                if c >= pg.members.len() {
                    return slot;
                }
                let grp = pg.offsets.partition_point(|&o| o <= c) - 1;
                if c == pg.offsets[grp] {
                    slot
                } else {
                    slot + pg.offsets[grp + 1] - c
                }
            }
            _ => slot,
        }
    }

    /// The states of sequence `b`'s rows in the prefix split `sp` of KV
    /// head `g` (it being member `c` of group `grp`), as (offset of `m`,
    /// offset of `l`, offset of `acc`) in the step's states.
    pub(crate) fn prefix_state(
        &self,
        pg: &PrefixGroups<'_>,
        (grp, c): (usize, usize),
        sp: usize,
        g: usize,
    ) -> (usize, usize, usize) {
        let s = &self.shape;
        let (rows, slen) = (s.rows(), self.state_len());
        let (c0, n) = (pg.offsets[grp], pg.group(grp).len());
        let block = (self.seq_items() + (sp * s.kv_heads + g) * s.batch + c0) * slen;
        let (k, mp) = (c - c0, n * pad(rows));
        (
            block + k * rows,
            block + mp + k * rows,
            block + 2 * mp + k * rows * pad(s.head_dim_v),
        )
    }
}

impl Job<'_, '_> {
    /// Sequence `b`'s positions in `range` that its own items walk: all of
    /// them, or with a group, those outside the group's shared range (two
    /// pieces, either possibly empty).
    pub(super) fn own_pieces(&self, b: usize, range: Range<usize>) -> [Range<usize>; 2] {
        let shared = self.batch.prefix.as_ref().and_then(|pg| {
            let (grp, _) = self.plan.group_of(pg, b)?;
            Some(self.plan.shared_range(&self.batch, pg, grp))
        });
        match shared {
            Some(sh) => [
                range.start..range.end.min(sh.start),
                range.start.max(sh.end)..range.end,
            ],
            None => [range, 0..0],
        }
    }

    /// The sequence whose rows hold sequence `b`'s positions from `a` on
    /// (up to the next piece's end): the group's first member below its
    /// prefix length (a member walks such positions itself where a window
    /// hides them from another member), else `b`.
    #[inline]
    pub(super) fn row_seq(&self, b: usize, a: usize) -> usize {
        let Some(pg) = &self.batch.prefix else {
            return b;
        };
        match self.plan.group_of(pg, b) {
            Some((grp, _)) if a < pg.lens[grp] => pg.members[pg.offsets[grp]],
            _ => b,
        }
    }

    /// Runs the prefix slots `first..` (`states` holding their states):
    /// every group item whose first slot is among them.
    pub(super) fn run_prefix(&self, first: usize, states: &mut [f32], scratch: &mut [f32]) {
        let Some(pg) = self.batch.prefix else {
            return;
        };
        let slen = self.plan.state_len();
        let (nb, heads) = (self.plan.shape.batch, self.plan.shape.kv_heads);
        let base = self.plan.seq_items();
        let n = states.len() / slen;
        let mut i = 0;
        while i < n {
            let x = first + i - base;
            let (sg, c) = (x / nb, x % nb);
            if c >= pg.members.len() {
                // The rest of this (split, head)'s slots are nobody's.
                i += nb - c;
                continue;
            }
            let grp = pg.offsets.partition_point(|&o| o <= c) - 1;
            let (c0, c1) = (pg.offsets[grp], pg.offsets[grp + 1]);
            if c != c0 || i + (c1 - c0) > n {
                // Another part's group (parts never cut one).
                i += c1 - c;
                continue;
            }
            let block = &mut states[i * slen..(i + c1 - c0) * slen];
            self.prefix_item(&pg, grp, sg / heads, sg % heads, block, scratch);
            i += c1 - c0;
        }
    }

    /// Group `grp`'s item for prefix split `sp` of KV head `g`: lays out
    /// its state and query tile in `block` (its members' slots) and folds
    /// the split's shared positions into it, one kernel call per run of
    /// the first member's rows, cut at multiples of `CHUNK`.
    fn prefix_item(
        &self,
        pg: &PrefixGroups<'_>,
        grp: usize,
        sp: usize,
        g: usize,
        block: &mut [f32],
        scratch: &mut [f32],
    ) {
        let s = &self.plan.shape;
        let members = pg.group(grp);
        let (r, rows) = (s.group_size(), s.rows());
        let (dk, dkp, dvp) = (s.head_dim_k, pad(s.head_dim_k), pad(s.head_dim_v));
        let (n, tile) = (members.len(), members.len() * rows);
        let mp = n * pad(rows);
        let (ml, rest) = block.split_at_mut(2 * mp);
        ml[..mp].fill(f32::NEG_INFINITY);
        ml[mp..].fill(0.0);
        let (acc, qtile) = rest.split_at_mut(tile * dvp);
        acc.fill(0.0);
        // fp8 K: the per-head scale is folded into the query here.
        let qs = self.plan.scale * LOG2_E * self.batch.cache.data().0.head_factor(g);
        for (k, &b) in members.iter().enumerate() {
            let (tq, tok0) = self.plan.tokens(&self.batch, b);
            for t in 0..s.q_len {
                for i in 0..r {
                    let dst = &mut qtile[(k * rows + t * r + i) * dkp..][..dkp];
                    dst.fill(0.0);
                    if t < tq {
                        let src = &self.batch.q[((tok0 + t) * s.heads + g * r + i) * dk..][..dk];
                        for (d, q) in dst.iter_mut().zip(src) {
                            *d = q * qs;
                        }
                    }
                }
            }
        }
        let shared = self.plan.shared_range(&self.batch, pg, grp);
        let split = self.plan.prefix_split_len;
        let a = shared.start.max(sp.saturating_mul(split));
        let e = shared.end.min((sp + 1).saturating_mul(split));
        if a >= e {
            return;
        }
        let leader = members[0];
        let kernel = self.plan.tile_kernel(tile);
        // The worker scratch ends with two tiles' worth of ALiBi terms.
        let max_rows = self.plan.max_tile_rows();
        let cut = scratch.len() - 2 * pad(max_rows);
        let (kscratch, alibi_buf) = scratch.split_at_mut(cut);
        let (slope, off) = alibi_buf.split_at_mut(pad(max_rows));
        let alibi = self.plan.alibi.as_deref();
        if let Some(al) = alibi {
            for row in 0..tile {
                slope[row] = al[g * r + row % r] * LOG2_E;
            }
        }
        let ptr = block.as_mut_ptr();
        let state = State {
            m: ptr,
            l: ptr.wrapping_add(mp),
            acc: ptr.wrapping_add(2 * mp),
        };
        let q = ptr.wrapping_add(2 * mp + tile * dvp);
        let (ahead, len) = (self.plan.stream_prefetch, self.batch.seq_lens[leader]);
        let mut w = a;
        while w < e {
            let we = ((w / CHUNK + 1) * CHUNK).min(e);
            let mut hints = if ahead > 0 {
                self.stream_hints(leader, g, (w + ahead).min(len)..(we + ahead).min(len))
            } else {
                [Span::default(); 2]
            };
            for_runs(&self.batch.cache, leader, g, w, we, |run| {
                if alibi.is_some() {
                    for (k, &b) in members.iter().enumerate() {
                        let (tq, _) = self.plan.tokens(&self.batch, b);
                        let first = self.batch.seq_lens[b] - tq;
                        for t in 0..s.q_len {
                            // Row (k, t, i) sits at position `first + t`
                            // (rows of absent tokens are never read).
                            let d = if t < tq {
                                (run.pos as f64 - (first + t) as f64) as f32
                            } else {
                                0.0
                            };
                            off[(k * rows + t * r)..][..r].fill(d);
                        }
                    }
                }
                let mut args = self.args(leader, g, 0, 1, &run, ptr, kscratch.as_mut_ptr());
                args.q = q;
                args.rows = tile;
                args.state = state;
                if alibi.is_some() {
                    args.transforms.alibi_slope = slope.as_ptr();
                    args.transforms.alibi_off = off.as_ptr();
                }
                args.ahead = std::mem::take(&mut hints);
                // SAFETY: `args` holds `ChunkArgs`' contract: the K/V rows
                // are the first member's run (validated like every row of
                // it, `check_batch`), no bias (refused with prefix groups);
                // `q`, `m`, `l`, `acc` are the tile's `tile` rows inside
                // `block` (`n · state_len` floats: `2 · n · pad(rows)`,
                // `tile · pad(dv)`, `tile · pad(dk)`), this item's own;
                // `kscratch` is the worker scratch less its ALiBi terms,
                // `scratch_len(max_tile_rows)` floats, 64-byte aligned;
                // `slope` and `off` hold a term per tile row. The tier was
                // checked available when the plan was made.
                unsafe { (kernel.f)(&args) };
            });
            w = we;
        }
    }
}
