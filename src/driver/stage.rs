//! Layer 2: a sparse list's scattered rows, staged for one kernel call.
//!
//! A sparse list ([`crate::Positions`]) that picks positions here and there
//! (top-k selection) gives runs of one or a few rows. One kernel call per
//! run paid a call's fixed cost (the query tile and state in and out, the
//! softmax bookkeeping of a mostly empty block, the final fold) per listed
//! position. Instead the walk copies runs shorter than a block, K and V rows
//! in the cache's own type, into the worker's staging rows
//! ([`crate::Plan::stage_len`]) and runs one call over up to
//! [`crate::Plan::stage_rows`] of them; each copied row hints the rows
//! [`STAGE_AHEAD`] listed positions on into L2, since no hardware
//! prefetcher follows a list. On the AMD Zen 3 host (Llama-3-8B f16,
//! `[B, G, L, D]`, L 32768, 2048 scattered positions, 1 thread, cold) the
//! step went from 0.44x to 0.23-0.29x of the full step; the hint distance
//! (2 to 256 positions) and the staged call's size (16 or 32 rows) were
//! flat within the noise. Runs of a block or more gained nothing from the
//! copy (pages of 16: 0.14x in place, 0.16x staged) and are read in place.
//! Hinting the next staged call's rows from inside the current call
//! instead (the kernels' `Ahead`, handed a list of rows, spread over the
//! call's positions) was slower cold, 3.1 against 2.7 ms: the prefetches
//! stall wherever they are issued. What they wait for there is the page
//! walk: each listed row lies on its own 4 KiB page, and on that host a
//! prefetch whose translation misses the TLB holds the core as a load
//! does. The roofline's `gather` row (the list's rows read with no
//! compute) takes 0.10-0.12x of the full step by itself.
//!
//! Only positions that every query token of the sequence sees are staged,
//! and only without ALiBi or a bias (both depend on each row's position,
//! which a staged call no longer has as `pos0 + j`); every other position
//! runs in place as before. A run that covers the whole piece the dense walk
//! would call (its window, cut at multiples of `CHUNK`) also runs in place,
//! so a list of every position still makes the dense step's calls, bit for
//! bit.

use super::layout::{for_runs, token_strides};
use super::walk::Job;
use crate::arch::{pad, prefetch_span, KvRows};
use crate::formats::Dtype;

/// How far ahead in the list a staged row hints its successor's rows into
/// L2, in listed positions.
pub(super) const STAGE_AHEAD: usize = 16;

/// Stored bytes of one staged row of `d` values of `dtype`: the row as
/// stored, without an int8 or fp8e4m3_row row's scale (staged beside it).
pub(crate) fn staged_row_bytes(dtype: Dtype, d: usize) -> usize {
    dtype.row_bytes(d) - if dtype.has_row_scales() { 4 } else { 0 }
}

/// The staging rows of one worker ([`crate::Plan::stage_len`] floats), and
/// how many rows of the current call they hold.
pub(super) struct Stage<'s> {
    k: &'s mut [u8],
    v: &'s mut [u8],
    k_scales: &'s mut [f32],
    v_scales: &'s mut [f32],
    /// Staged bytes per K row and per V row (0: a latent cache's V rows
    /// are its K rows, not staged twice).
    k_row: usize,
    v_row: usize,
    /// Rows staged, and the most one call takes.
    n: usize,
    cap: usize,
}

impl Job<'_, '_> {
    /// The staging rows in `buf` (the tail of the worker scratch), empty.
    pub(super) fn stage<'s>(&self, buf: &'s mut [f32]) -> Stage<'s> {
        let s = &self.plan.shape;
        let cap = self.plan.stage_rows();
        let k_row = staged_row_bytes(s.k_dtype, s.head_dim_k);
        let v_row = if self.latent {
            0
        } else {
            staged_row_bytes(s.v_dtype, s.head_dim_v)
        };
        // The layout of `Plan::stage_len`: K rows, V rows, K scales, V
        // scales.
        let [kl, vl] = self.plan.stage_areas();
        let (k, rest) = buf.split_at_mut(kl);
        let (v, rest) = rest.split_at_mut(vl);
        let (k_scales, rest) = rest.split_at_mut(pad(cap));
        Stage {
            k: bytemuck::cast_slice_mut(k),
            v: bytemuck::cast_slice_mut(v),
            k_scales,
            v_scales: &mut rest[..pad(cap)],
            k_row,
            v_row,
            n: 0,
            cap,
        }
    }

    /// Copies the rows of positions `a..e` of sequence `b`, KV head `g` (at
    /// most `stage.cap` of them) into the stage, running the staged call
    /// first if they do not fit. `ahead` are the list's positions from
    /// `STAGE_AHEAD` on past the run's first: each copied row hints one of
    /// them into L2.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage_run(
        &self,
        stage: &mut Stage<'_>,
        b: usize,
        g: usize,
        a: usize,
        e: usize,
        ahead: &[u32],
        state: &mut [f32],
        scratch: &mut [f32],
    ) {
        if stage.n + (e - a) > stage.cap {
            self.flush_stage(stage, b, g, state, scratch);
        }
        let s = &self.plan.shape;
        let cache = &self.batch.cache;
        let ((kdata, vdata), (kt, vt)) = (cache.data(), token_strides(cache));
        for &p in ahead.iter().take(e - a) {
            self.hint_row(b, g, p as usize);
        }
        for_runs(cache, b, g, a, e, |run| {
            for j in 0..run.n {
                let n = stage.n;
                let (row, scale) = kdata.row_at(run.k + j * kt, s.head_dim_k);
                stage.k[n * stage.k_row..][..stage.k_row].copy_from_slice(row);
                stage.k_scales[n] = scale;
                if stage.v_row > 0 {
                    let (row, scale) = vdata.row_at(run.v + j * vt, s.head_dim_v);
                    stage.v[n * stage.v_row..][..stage.v_row].copy_from_slice(row);
                    stage.v_scales[n] = scale;
                }
                stage.n += 1;
            }
        });
    }

    /// Hints the K and V rows of position `p` of sequence `b`, KV head `g`
    /// into L2.
    fn hint_row(&self, b: usize, g: usize, p: usize) {
        let s = &self.plan.shape;
        let cache = &self.batch.cache;
        let ((kdata, vdata), (kt, vt)) = (cache.data(), token_strides(cache));
        for_runs(cache, b, g, p, p + 1, |run| {
            let k = kdata.kernel_rows(run.k, kt, s.head_dim_k);
            prefetch_span(k.ptr, staged_row_bytes(s.k_dtype, s.head_dim_k));
            if !self.latent {
                let v = vdata.kernel_rows(run.v, vt, s.head_dim_v);
                prefetch_span(v.ptr, staged_row_bytes(s.v_dtype, s.head_dim_v));
            }
        });
    }

    /// Runs the kernel over the staged rows for every token of sequence
    /// `b`, KV head `g`, into the item's `state`, and empties the stage.
    pub(super) fn flush_stage(
        &self,
        stage: &mut Stage<'_>,
        b: usize,
        g: usize,
        state: &mut [f32],
        scratch: &mut [f32],
    ) {
        let n = std::mem::take(&mut stage.n);
        if n == 0 {
            return;
        }
        let s = &self.plan.shape;
        let (kdata, vdata) = self.batch.cache.data();
        let tq = self.plan.tokens(&self.batch, b).0;
        let kernel = self.plan.kernels[tq - 1];
        // The staged rows stand for no run of the cache: no bias or ALiBi
        // reads the run's position (staging is off with either).
        let run = super::layout::Run {
            pos: 0,
            n,
            k: 0,
            v: 0,
        };
        let mut args = self.args(b, g, 0, tq, &run, state.as_mut_ptr(), scratch.as_mut_ptr());
        let k: KvRows = kdata.staged_rows(stage.k.as_ptr(), s.head_dim_k, stage.k_scales.as_ptr());
        args.k = k;
        // A latent cache's V rows are the leading values of its K rows.
        args.v = if self.latent {
            k
        } else {
            vdata.staged_rows(stage.v.as_ptr(), s.head_dim_v, stage.v_scales.as_ptr())
        };
        args.touch_v = false;
        // SAFETY: as in [`Job::call`] for tokens `0..tq`, with the K and V
        // rows the `n` rows just copied into the stage: each `head_dim`
        // values of the cache's own type (whole blocks for block types),
        // stored one after the other from the area's start, which is what
        // `staged_rows`' stride says, with their row scales one after the
        // other; the stage is disjoint from the state and the kernel
        // scratch, and only read during the call. There is no bias or
        // ALiBi (the walk stages nothing with either).
        unsafe { (kernel.f)(&args) };
    }
}
