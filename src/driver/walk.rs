//! Layer 2: walking work items into microkernel calls. [`Job`] turns one
//! item (sequence, KV split, KV head) into the kernel calls over its
//! visible rows: the prescaled query tile, windows of positions cut at
//! multiples of `CHUNK`, runs of equally spaced rows from the layout, the
//! prefetch hints of the next window, and the one place that builds a
//! [`ChunkArgs`].

use std::ops::Range;

use super::hints::Pieces;
use super::layout::{for_runs, head_strides, token_strides, walk, Walk, CHUNK};
use super::plan::Plan;
use crate::arch::{pad, ChunkArgs, Span, State, Transforms, BLOCK};
use crate::views::Batch;

/// How far ahead in a sparse list ([`crate::Positions`]) the walk hints
/// rows into L2: the run starting this many listed positions on.
const LIST_AHEAD: usize = 32;

/// `log2(e)`: scores are computed in the log2 domain so the kernels use `2^x`.
pub(super) const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// A validated plan and batch: what every worker shares.
#[derive(Clone, Copy)]
pub(super) struct Job<'p, 'a> {
    pub(super) plan: &'p Plan,
    pub(super) batch: Batch<'a>,
    /// Whether the batch's cache is latent ([`crate::KvCache::is_latent`]),
    /// found once: V rows are then K's (int8 scales per K row, no V hints).
    pub(super) latent: bool,
}

impl<'p, 'a> Job<'p, 'a> {
    /// The job of `plan` over a validated `batch`.
    pub(super) fn new(plan: &'p Plan, batch: Batch<'a>) -> Self {
        Job {
            plan,
            batch,
            latent: batch.cache.is_latent(),
        }
    }
}

impl Job<'_, '_> {
    /// Runs items `first..` (one per `state_len` floats of `states`), in
    /// reverse order when `reverse`, walking them as [`walk_window`] says.
    /// Kernel calls are cut at the same positions whatever the order of the
    /// walk and the split of items across parts.
    pub(super) fn run_items(
        &self,
        first: usize,
        states: &mut [f32],
        reverse: bool,
        scratch: &mut [f32],
    ) {
        let slen = self.plan.state_len();
        // The worker scratch ends with the staging rows of sparse lists.
        let (scratch, stage) = scratch.split_at_mut(scratch.len() - self.plan.stage_len());
        // Prefix group items (cascade) follow the sequences' own items.
        let own = self
            .plan
            .seq_items()
            .saturating_sub(first)
            .min(states.len() / slen);
        let (states, prefix) = states.split_at_mut(own * slen);
        if !prefix.is_empty() {
            self.run_prefix(first + own, prefix, scratch);
        }
        if states.is_empty() {
            return;
        }
        for (i, st) in states.chunks_mut(slen).enumerate() {
            self.prep_q(first + i, st);
        }
        match walk(
            &self.batch.cache,
            self.plan.token_window,
            self.plan.shape.head_dim_k,
        ) {
            // Sparse lists are walked item by item, list by list.
            Some(walk) if self.batch.positions.is_none() => {
                self.walk_windows(&walk, first, states, scratch)
            }
            _ => self.walk_items(first, states, reverse, scratch, stage),
        }
    }

    /// The items one by one, each over its windows of CHUNK positions.
    fn walk_items(
        &self,
        first: usize,
        states: &mut [f32],
        reverse: bool,
        scratch: &mut [f32],
        stage: &mut [f32],
    ) {
        let slen = self.plan.state_len();
        let n_items = states.len() / slen;
        // Items are numbered (sequence, split, head); walk them as
        // (sequence, head, split), so that the splits of one head,
        // which are consecutive in memory, read as one stream.
        let (heads, splits) = (self.plan.shape.kv_heads, self.plan.splits);
        let per_seq = heads * splits;
        // The sequences this part touches, walked whole; items of
        // other parts are skipped.
        let seq0 = first / per_seq;
        let span = (first + n_items).div_ceil(per_seq) * per_seq - seq0 * per_seq;
        for k in 0..span {
            let k = if reverse { span - 1 - k } else { k };
            let (b, rest) = (seq0 + k / per_seq, k % per_seq);
            let (g, sp) = (rest / splits, rest % splits);
            let item = (b * splits + sp) * heads + g;
            if item < first || item >= first + n_items {
                continue;
            }
            let i = item - first;
            if let Some(range) = self.item_range(item) {
                let st = &mut states[i * slen..][..slen];
                if let Some(p) = &self.batch.positions {
                    let list = p.list(b, g, heads);
                    self.walk_list(b, g, list, range, st, scratch, stage);
                    continue;
                }
                let ahead = self.plan.stream_prefetch;
                let len = self.batch.seq_lens[b];
                // Without a shared prefix the first piece is the range.
                for piece in self.own_pieces(b, range) {
                    let mut w = piece.start;
                    while w < piece.end {
                        let we = ((w / CHUNK + 1) * CHUNK).min(piece.end);
                        let hints = &mut if ahead > 0 {
                            self.stream_hints(b, g, (w + ahead).min(len)..(we + ahead).min(len))
                        } else {
                            [Span::default(); 2]
                        };
                        self.run_window(b, g, w..we, st, scratch, hints);
                        w = we;
                    }
                }
            }
        }
    }

    /// The positions of a sparse `list` inside `range`, as runs of
    /// consecutive positions cut where the dense walk of this cache cuts
    /// its calls (multiples of `CHUNK`, and the window walk's windows from
    /// `range.start`). A run that covers its whole piece of the dense walk,
    /// or is a block long or longer, or holds a position some token does
    /// not see, or meets ALiBi or a bias, is read in place, so a list of
    /// every position makes the dense step's calls, bit for bit; the other
    /// runs are staged ([`super::stage`]), several per kernel call.
    #[allow(clippy::too_many_arguments)]
    fn walk_list(
        &self,
        b: usize,
        g: usize,
        list: &[u32],
        range: Range<usize>,
        st: &mut [f32],
        scratch: &mut [f32],
        stage: &mut [f32],
    ) {
        let at = |i: usize| list[i] as usize;
        let window = walk(
            &self.batch.cache,
            self.plan.token_window,
            self.plan.shape.head_dim_k,
        )
        .map_or(usize::MAX, |w| w.window);
        let (len, (tq, _)) = (self.batch.seq_lens[b], self.plan.tokens(&self.batch, b));
        // Staged rows lose their positions: none with ALiBi or a bias.
        let stageable = self.plan.alibi.is_none() && self.batch.bias.is_none();
        let mut stage = self.stage(stage);
        let mut i = list.partition_point(|&p| (p as usize) < range.start);
        let end = list.partition_point(|&p| (p as usize) < range.end);
        while i < end {
            let (a, i0) = (at(i), i);
            let windows = (a - range.start) / window;
            let cut = ((a / CHUNK + 1) * CHUNK).min(
                range
                    .start
                    .saturating_add(windows.saturating_add(1).saturating_mul(window)),
            );
            let mut e = a + 1;
            i += 1;
            while i < end && at(i) == e && e < cut {
                e += 1;
                i += 1;
            }
            // The dense walk's piece holding `a`: from the later of its
            // window's and its chunk's starts to `cut` (or the range's end).
            let piece0 = (a / CHUNK * CHUNK).max(range.start + windows * window);
            let whole = a == piece0 && e == cut.min(range.end);
            // Every token sees `a..e` (before token 0's own position, and
            // inside the last token's window: `seen_by` grows with `p`).
            let all_see = e + tq <= len && self.seen_by(a, len, tq) == (0, tq);
            if stageable && all_see && !whole && e - a < BLOCK {
                let ahead = list.get(i0 + super::stage::STAGE_AHEAD..).unwrap_or(&[]);
                self.stage_run(&mut stage, b, g, a, e, ahead, st, scratch);
                continue;
            }
            self.flush_stage(&mut stage, b, g, st, scratch);
            // The rows `LIST_AHEAD` listed positions on (a run of them),
            // hinted into L2 while this run is computed: a list's rows are
            // not a stream the hardware prefetcher follows.
            let mut hints = [Span::default(); 2];
            let j = i + LIST_AHEAD;
            if self.plan.stream_prefetch > 0 && j < list.len() {
                let pa = at(j);
                let run = list[j..]
                    .iter()
                    .zip(pa..pa + BLOCK)
                    .take_while(|(&p, x)| p as usize == *x);
                let pe = pa + run.count();
                hints = self.stream_hints(b, g, pa..pe.min(self.batch.seq_lens[b]));
            }
            self.run_window(b, g, a..e, st, scratch, &mut hints);
        }
        self.flush_stage(&mut stage, b, g, st, scratch);
    }

    /// Window by window across the KV heads of each (sequence, split) of
    /// the items, as `walk` says (token-major caches, small pages).
    fn walk_windows(&self, walk: &Walk, first: usize, states: &mut [f32], scratch: &mut [f32]) {
        let slen = self.plan.state_len();
        let n_items = states.len() / slen;
        // Window by window across the KV heads of one (sequence,
        // split): those share memory pages. Different splits are
        // different streams and run one after the other.
        let heads = self.plan.shape.kv_heads;
        let window = walk.window;
        // The prefetch distance in whole windows: a window is
        // hinted once, as a whole (a distance below the window
        // would hint positions the walk is about to read).
        let ahead = if walk.prefetch {
            self.plan.prefetch.div_ceil(window) * window
        } else {
            0
        };
        // Pages long enough for the hardware prefetcher, where
        // [`Plan::stream_prefetch`] is on: each call hints the rows
        // of the call that follows it (the next head's piece of the
        // window, or the first head's piece of the next window), so
        // a hint is read one call later, whatever the page order.
        let stream = !walk.prefetch && self.plan.stream_prefetch > 0;
        let latent = self.latent;
        let mut i0 = 0;
        while i0 < n_items {
            let i1 = ((first + i0) / heads + 1) * heads - first;
            let group = i0..i1.min(n_items);
            i0 = group.end;
            // The items of a group share their sequence and split,
            // hence their range and each window's pieces.
            let (b, _, g0) = self.coords(first + group.start);
            let Some(whole) = self.item_range(first + group.start) else {
                continue;
            };
            let (len, tq) = (self.batch.seq_lens[b], self.plan.tokens(&self.batch, b).0);
            // Without a shared prefix the first piece is the whole range.
            for range in self.own_pieces(b, whole) {
                let mut a = range.start;
                while a < range.end {
                    let e = (a + window).min(range.end);
                    let pieces = if ahead > 0 {
                        let pa = (a + ahead).min(range.end);
                        let pe = (e + ahead).min(range.end);
                        self.window_pieces(b, pa..pe)
                    } else {
                        None
                    };
                    let hint = |i: usize| {
                        let part = (i - group.start, group.len());
                        if let Some([k, v]) = pieces {
                            if latent {
                                [k.share(part.0, part.1), Span::default()]
                            } else {
                                Pieces::kv_share(k, v, part.0, part.1)
                            }
                        } else if ahead > 0 {
                            let pa = (a + ahead).min(range.end);
                            let pe = (e + ahead).min(range.end);
                            let g = g0 + part.0;
                            self.prefetch_window(b, g, pa..pe, part.0, part.1)
                        } else if stream && part.0 + 1 < part.1 {
                            self.stream_hints(b, g0 + part.0 + 1, a..e)
                        } else if stream {
                            let next = e..(e + window).min(range.end);
                            self.stream_hints(b, g0, next)
                        } else {
                            [Span::default(); 2]
                        }
                    };
                    // Cut at CHUNK boundaries too, as the item-by-item
                    // walk does.
                    let cut = (a / CHUNK + 1) * CHUNK;
                    let seen = |p| self.seen_by(p, len, tq) == (0, tq);
                    // A tree mask may hide the first draft position from some
                    // tokens (the later ones are not seen by all anyway).
                    let drafts = e + tq > len && self.root_hidden(b);
                    if e <= cut && self.plan.alibi.is_none() && !drafts && seen(a) && seen(e - 1) {
                        // Every token sees the whole window (the
                        // tokens that see a position move with it
                        // only one way).
                        let items = group.clone();
                        self.call_heads(b, g0, a, e, items, states, scratch, hint);
                    } else {
                        for i in group.clone() {
                            let mut hints = hint(i);
                            let st = &mut states[i * slen..][..slen];
                            let mut x = a;
                            while x < e {
                                let xe = ((x / CHUNK + 1) * CHUNK).min(e);
                                let g = g0 + (i - group.start);
                                self.run_window(b, g, x..xe, st, scratch, &mut hints);
                                x = xe;
                            }
                        }
                    }
                    a = e;
                }
            }
        }
    }

    /// Whether a tree mask hides sequence `b`'s first draft token (the
    /// last position the causal rule shows every token) from some of its
    /// tokens; then the calls cut before it.
    fn root_hidden(&self, b: usize) -> bool {
        self.batch.tree_mask.is_some_and(|tree| {
            let (tq, tok0) = self.plan.tokens(&self.batch, b);
            tree[tok0..tok0 + tq].iter().any(|w| w & 1 == 0)
        })
    }

    /// Whether this batch's cache is walked window by window
    /// ([`Job::walk_windows`]) rather than item by item.
    fn windowed(&self) -> bool {
        walk(
            &self.batch.cache,
            self.plan.token_window,
            self.plan.shape.head_dim_k,
        )
        .is_some()
    }

    /// (sequence, split, KV head) of an item.
    fn coords(&self, item: usize) -> (usize, usize, usize) {
        let g = self.plan.shape.kv_heads;
        (
            item / g / self.plan.splits,
            item / g % self.plan.splits,
            item % g,
        )
    }

    /// Positions of the item's split, `None` when it has none or its
    /// sequence has no query token.
    fn item_range(&self, item: usize) -> Option<Range<usize>> {
        let (b, sp, _) = self.coords(item);
        let len = self.batch.seq_lens[b];
        let (tq, _) = self.plan.tokens(&self.batch, b);
        // Nothing before the first token's window is visible to any token;
        // splits cut the visible range from there.
        let lo = (len + 1)
            .saturating_sub(tq)
            .saturating_sub(self.plan.window);
        let a = sp
            .saturating_mul(self.plan.split_len)
            .saturating_add(lo)
            .min(len);
        let e = a.saturating_add(self.plan.split_len).min(len);
        (tq > 0 && a < e).then_some(a..e)
    }

    /// Tokens `t0..t1` of a sequence with `tq` tokens and `len` positions
    /// that see position `p`: token `t`, at position `len - tq + t`, sees
    /// `p` when `p <= len - tq + t` and (with a window `W`)
    /// `p >= len - tq + t - W + 1`. Empty when `t0 >= t1`.
    fn seen_by(&self, p: usize, len: usize, tq: usize) -> (usize, usize) {
        let first = len - tq; // position of token 0
        let t0 = p.saturating_sub(first);
        // t <= p - first + W - 1, i.e. t < p + W - first.
        let t1 = p
            .saturating_add(self.plan.window)
            .saturating_sub(first)
            .min(tq);
        (t0, t1)
    }

    /// Writes the item's query tile into its state: row `t * r + i` is
    /// token `t`, head `g*r + i`, times `scale * log2(e)`, zero-padded to
    /// `pad(Dk)`.
    fn prep_q(&self, item: usize, state: &mut [f32]) {
        let s = &self.plan.shape;
        let rows = s.rows();
        let qtile = &mut state[2 * pad(rows) + rows * pad(s.head_dim_v)..];
        let (b, _, g) = self.coords(item);
        let (tq, tok0) = self.plan.tokens(&self.batch, b);
        let (r, dk, dkp) = (s.group_size(), s.head_dim_k, pad(s.head_dim_k));
        // fp8 K: the per-head scale is folded into the query here.
        let qs = self.plan.scale * LOG2_E * self.batch.cache.data().0.head_factor(g);
        for t in 0..tq {
            for i in 0..r {
                let h = g * r + i;
                let src = &self.batch.q[((tok0 + t) * s.heads + h) * dk..][..dk];
                let dst = &mut qtile[(t * r + i) * dkp..][..dkp];
                let (head, tail) = dst.split_at_mut(dk);
                for (d, q) in head.iter_mut().zip(src) {
                    *d = q * qs;
                }
                tail.fill(0.0);
            }
        }
    }

    /// Folds positions `w` of KV head `g` of sequence `b` into its state
    /// (`state`), one kernel tile per
    /// run of positions seen by the same tokens: without a window, the
    /// positions every token sees form one run and each causal-tail
    /// position its own; a window adds runs at its left edge. The tokens
    /// that see a position are consecutive, hence consecutive tile rows;
    /// under a tree mask a draft position is called once per run of
    /// consecutive tokens that see it.
    /// `hints` go to the first kernel call (see [`ChunkArgs::ahead_k`]).
    fn run_window(
        &self,
        b: usize,
        g: usize,
        w: Range<usize>,
        state: &mut [f32],
        scratch: &mut [f32],
        hints: &mut [Span; 2],
    ) {
        let len = self.batch.seq_lens[b];
        let (tq, _) = self.plan.tokens(&self.batch, b);
        let mut p = w.start;
        while p < w.end {
            let tokens = self.seen_by(p, len, tq);
            // Only positions seen by every token share their tokens with a
            // neighbour (both bounds move with `p` elsewhere); they end at
            // token 0's own position, or before it where a tree mask hides
            // that first draft from some tokens.
            let e = if tokens == (0, tq) {
                let cut = p + tq < len && self.root_hidden(b);
                w.end.min(len - tq + usize::from(!cut))
            } else {
                p + 1
            };
            match self.batch.tree_mask {
                // A draft position (`e == p + 1` there): the tokens that
                // see it by the causal rule and whose tree row has its
                // bit, in runs of consecutive tokens (tile rows).
                Some(tree) if p + tq >= len => {
                    let (_, tok0) = self.plan.tokens(&self.batch, b);
                    let j = p + tq - len;
                    let sees = |t: usize| tree[tok0 + t] >> j & 1 != 0;
                    let mut t = tokens.0;
                    while t < tokens.1 {
                        let t1 = (t..tokens.1).find(|&u| !sees(u)).unwrap_or(tokens.1);
                        if t < t1 {
                            self.call(b, g, p, e, t, t1, state, scratch, hints);
                        }
                        t = t1 + 1;
                    }
                }
                _ if tokens.0 < tokens.1 => {
                    self.call(b, g, p, e, tokens.0, tokens.1, state, scratch, hints);
                }
                _ => {}
            }
            p = e;
        }
    }

    /// Kernel calls over positions `a..e` for tokens `t0..t1` of the tile,
    /// one per run of equally spaced rows.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        b: usize,
        g: usize,
        a: usize,
        e: usize,
        t0: usize,
        t1: usize,
        state: &mut [f32],
        scratch: &mut [f32],
        hints: &mut [Span; 2],
    ) {
        let s = &self.plan.shape;
        let kernel = self.plan.kernels[t1 - t0 - 1];
        let r = s.group_size();
        let all_rows = s.rows();
        // The worker scratch ends with two rows' worth of ALiBi terms.
        let split = scratch.len() - 2 * pad(all_rows);
        let (scratch, alibi_buf) = scratch.split_at_mut(split);
        let (slope, off) = alibi_buf.split_at_mut(pad(all_rows));
        let first = self.batch.seq_lens[b] - self.plan.tokens(&self.batch, b).0;
        if let Some(al) = &self.plan.alibi {
            for t in t0..t1 {
                for i in 0..r {
                    slope[(t - t0) * r + i] = al[g * r + i] * LOG2_E;
                }
            }
        }
        let alibi = self.plan.alibi.is_some();
        for_runs(&self.batch.cache, self.row_seq(b, a), g, a, e, |run| {
            if alibi {
                // Row (t, i) sits at position `first + t`.
                for t in t0..t1 {
                    for i in 0..r {
                        let row = (t - t0) * r + i;
                        // The integer distance, exact below 2^24; the
                        // kernel multiplies it by the slope once.
                        off[row] = (run.pos as f64 - (first + t) as f64) as f32;
                    }
                }
            }
            let mut args = self.args(b, g, t0, t1, &run, state.as_mut_ptr(), scratch.as_mut_ptr());
            if alibi {
                args.transforms.alibi_slope = slope.as_ptr();
                args.transforms.alibi_off = off.as_ptr();
            }
            args.ahead = std::mem::take(hints);
            // SAFETY: `args` satisfies `ChunkArgs`' contract, as
            // [`Job::args`] says, with `state` the item's own state and
            // `scratch` the worker scratch less its ALiBi terms; `slope`
            // and `off` hold a term per row of the tile. The tier was
            // checked available when the plan was made.
            unsafe { (kernel.f)(&args) };
        });
    }

    /// Kernel calls over positions `a..e` of sequence `b`, which every token
    /// of the sequence sees, for each KV head of items `items` of this part
    /// (`g0` the first), without ALiBi: what [`Job::run_window`] does head
    /// by head, with the window's runs and the tile worked out once for all
    /// heads (in the token-major walk a call covers 16-32 positions, and this
    /// work was ~10 % of a step). Each head's first call gets `hint(i)`.
    /// The calls of each head, hence its bits, are the same.
    #[allow(clippy::too_many_arguments)]
    fn call_heads(
        &self,
        b: usize,
        g0: usize,
        a: usize,
        e: usize,
        items: Range<usize>,
        states: &mut [f32],
        scratch: &mut [f32],
        mut hint: impl FnMut(usize) -> [Span; 2],
    ) {
        let tq = self.plan.tokens(&self.batch, b).0;
        let kernel = self.plan.kernels[tq - 1];
        let slen = self.plan.state_len();
        let (kh, vh) = head_strides(&self.batch.cache);
        let states = states.as_mut_ptr();
        let scratch = scratch.as_mut_ptr();
        for_runs(&self.batch.cache, self.row_seq(b, a), g0, a, e, |run| {
            // Head g0 + dg lies `dg` head strides further on.
            let head = |dg: usize| super::layout::Run {
                k: run.k + dg * kh,
                v: run.v + dg * vh,
                ..run
            };
            let state = |i: usize| states.wrapping_add(i * slen);
            // The arguments of head g0 + dg differ from head g0's by `dg`
            // times a fixed step in each pointer: states are `slen` floats
            // apart, and head strides are whole rows (whole blocks, whole
            // int8 rows: `check_cache`), so each pointer `args` computes
            // is linear in the head. Worked out once per run, not per head
            // (this was ~2 % of a token-major step).
            let first = self.args(b, g0, 0, tq, &head(0), state(items.start), scratch);
            let next = (items.len() > 1)
                .then(|| self.args(b, g0 + 1, 0, tq, &head(1), state(items.start + 1), scratch));
            for i in items.clone() {
                let dg = i - items.start;
                let mut args = match &next {
                    Some(next) if dg > 0 => stepped(&first, next, dg),
                    _ => first,
                };
                if run.pos == a {
                    args.ahead = hint(i);
                }
                // SAFETY: as in [`Job::call`]: item `i`'s state is the
                // `slen` floats at `state`, inside `states`, and no
                // reference to them is alive while the kernel runs.
                unsafe { (kernel.f)(&args) };
            }
        });
    }

    /// The kernel's arguments for tokens `t0..t1` of KV head `g` of
    /// sequence `b` over `run`, with the item's state at `state`
    /// (`state_len` floats, laid out as [`Job::prep_q`] and `init_states`
    /// say) and the worker scratch at `scratch`; no ALiBi and no hints.
    ///
    /// `check_batch` verified (with checked arithmetic) that for every
    /// position j < seq_lens[b] the K row `for_runs` maps it to holds `dk`
    /// elements (V: `dv`) inside its buffer, of the kernel's dtypes (the
    /// plan selected the kernel for these dtypes and the cache was checked
    /// against them); a run's `n` positions are below `seq_lens[b]`. `q`
    /// holds `rows * pad(dk)` floats of this tile's rows, `m`/`l` at least
    /// `rows` and `acc` `rows * pad(dv)` floats of the item's own state,
    /// and `scratch` `scratch_len(all_rows, dk, dv)` floats (at least what
    /// `rows` needs), 64-byte aligned: all disjoint. With a bias,
    /// `check_batch` proved that every (token, head, position <
    /// seq_lens[b]) of this sequence is inside the bias buffer, which covers
    /// the rows and `run.n` positions the kernel reads.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn args(
        &self,
        b: usize,
        g: usize,
        t0: usize,
        t1: usize,
        run: &super::layout::Run,
        state: *mut f32,
        scratch: *mut f32,
    ) -> ChunkArgs {
        let s = &self.plan.shape;
        let r = s.group_size();
        let (rows, row0) = ((t1 - t0) * r, t0 * r);
        let all_rows = s.rows();
        let (dkp, dvp) = (pad(s.head_dim_k), pad(s.head_dim_v));
        // The state: m, l (`pad(all_rows)` each), acc, the query tile.
        let m = state.wrapping_add(row0);
        let l = state.wrapping_add(pad(all_rows) + row0);
        let acc = state.wrapping_add(2 * pad(all_rows) + row0 * dvp);
        let q = state.wrapping_add(2 * pad(all_rows) + all_rows * dvp + row0 * dkp);
        let (kdata, vdata) = self.batch.cache.data();
        let (k_stride, v_stride) = token_strides(&self.batch.cache);
        // A latent cache's V rows are the leading values of its K rows:
        // int8 scales are one per K row, and the V-block hint would fetch
        // the lines the K rows just brought.
        let latent = self.latent;
        let v_row = if latent { s.head_dim_k } else { s.head_dim_v };
        let bias = self.batch.bias;
        ChunkArgs {
            q,
            rows,
            k: kdata.kernel_rows(run.k, k_stride, s.head_dim_k),
            v: vdata.kernel_rows(run.v, v_stride, v_row),
            n: run.n,
            dk: s.head_dim_k,
            dv: s.head_dim_v,
            state: State { m, l, acc },
            scratch,
            transforms: Transforms {
                softcap: self.plan.softcap * LOG2_E,
                alibi_slope: std::ptr::null(),
                alibi_off: std::ptr::null(),
                // Row 0 of the tile is token t0, head g*r, at run.pos.
                bias: bias.map_or(std::ptr::null(), |bi| {
                    bi.data.as_ptr().wrapping_add(
                        b * bi.seq_stride + t0 * bi.token_stride + g * r * bi.head_stride + run.pos,
                    )
                }),
                bias_r: r,
                bias_token_stride: bias.map_or(0, |bi| bi.token_stride),
                bias_head_stride: bias.map_or(0, |bi| bi.head_stride),
            },
            ahead: [Span::default(); 2],
            touch_v: self.plan.v_prefetch[usize::from(self.windowed())] && !latent,
        }
    }
}

/// `first` moved `i` times the step from `first` to `next` in each pointer
/// (the arguments of the head `i` heads on, where `next` are those of the
/// head after `first`'s; see [`Job::call_heads`]).
fn stepped(first: &ChunkArgs, next: &ChunkArgs, i: usize) -> ChunkArgs {
    fn on<T>(p0: *const T, p1: *const T, i: usize) -> *const T {
        p0.wrapping_byte_add((p1 as usize).wrapping_sub(p0 as usize).wrapping_mul(i))
    }
    let mut a = *first;
    a.q = on(first.q, next.q, i);
    a.k.ptr = on(first.k.ptr, next.k.ptr, i);
    a.k.scale = on(first.k.scale, next.k.scale, i);
    a.v.ptr = on(first.v.ptr, next.v.ptr, i);
    a.v.scale = on(first.v.scale, next.v.scale, i);
    a.state.m = on(first.state.m, next.state.m, i).cast_mut();
    a.state.l = on(first.state.l, next.state.l, i).cast_mut();
    a.state.acc = on(first.state.acc, next.state.acc, i).cast_mut();
    a.transforms.bias = on(first.transforms.bias, next.transforms.bias, i);
    a
}
