//! Layer 2, part 2: walking a batch into microkernel calls.
//!
//! A step is a list of independent work items, one per (sequence, KV head):
//! each builds the prescaled query tile of the group, runs the kernel over
//! the sequence's visible K/V rows, and leaves an online-softmax state
//! `(m, l, acc)`; a final pass turns the states into `out` and `lse`. Items
//! share nothing, so any split across threads gives bitwise the same result.

use crate::arch::{pad, scratch_len, ChunkArgs, BLOCK, PAD};
use crate::dispatch::count_run;
use crate::error::Result;
use crate::plan::{check_run_args, Plan};
use crate::types::KvTensor;

const _: () = assert!(CHUNK.is_multiple_of(BLOCK));

/// `log2(e)`: scores are computed in the log2 domain so the kernels use `2^x`.
const LOG2_E: f32 = std::f32::consts::LOG2_E;

impl Plan {
    /// Runs one decode step.
    ///
    /// - `q`: `[B, q_len, H, Dk]` f32, contiguous;
    /// - `k`, `v`: strided cache views (see [`KvTensor`]) of the plan's dtypes;
    /// - `seq_lens`: `L_b` per sequence (0 allowed: that sequence's output
    ///   is zeros and its `lse` is `-inf`);
    /// - `out`: `[B, q_len, H, Dv]` f32, overwritten;
    /// - `lse`: optional `[B, q_len, H]` f32, the natural-log log-sum-exp of
    ///   each row's scaled scores.
    ///
    /// Every argument is checked against the plan before any memory is read.
    /// Scratch is `O(B·H·Dv)` floats, independent of `L`.
    pub fn run(
        &self,
        q: &[f32],
        k: &KvTensor<'_>,
        v: &KvTensor<'_>,
        seq_lens: &[usize],
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<()> {
        let s = &self.shape;
        check_run_args(
            s,
            q,
            k,
            v,
            seq_lens,
            out.len(),
            lse.as_ref().map(|l| l.len()),
        )?;
        count_run(self.tier);
        let items = s.batch * s.kv_heads;
        if items == 0 {
            return Ok(());
        }
        let slen = self.state_len();
        let mut states = vec![0f32; items * slen + PAD];
        let off = states.as_ptr().align_offset(64).min(PAD);
        let states = &mut states[off..off + items * slen];

        let threads = self.threads.min(items);
        let inputs = Inputs { q, k, v, seq_lens };
        if threads <= 1 {
            self.run_items(0, states, false, &inputs, &mut Workspace::new(self));
        } else {
            // Contiguous ranges of items per thread; each item writes only
            // its own state, so the split cannot change any result. Odd
            // threads walk their range backwards: with head-major caches,
            // threads walking forwards in lockstep read streams a power of
            // two apart, which measured slower than one thread (DRAM bank
            // conflicts); walking in opposite directions avoids that.
            let per = items.div_ceil(threads);
            let inputs = &inputs;
            std::thread::scope(|scope| {
                for (t, chunk) in states.chunks_mut(per * slen).enumerate() {
                    scope.spawn(move || {
                        let mut ws = Workspace::new(self);
                        self.run_items(t * per, chunk, t % 2 == 1, inputs, &mut ws);
                    });
                }
            });
        }
        self.finalize(states, out, lse);
        Ok(())
    }

    /// f32 of one item's state: `m` and `l` (padded), then `acc`.
    fn state_len(&self) -> usize {
        let rows = self.shape.rows();
        2 * pad(rows) + rows * pad(self.shape.head_dim_v)
    }

    /// Runs the items `first..` whose states are `states` (one per `slen`
    /// floats), in reverse item order when `reverse`.
    ///
    /// Head-major caches (each head's rows apart from the other heads') run
    /// item by item, one kernel call over the whole sequence. Token-major
    /// caches (`head_stride < token_stride`: the heads of a position share
    /// DRAM pages) run chunk-major: [`CHUNK`] positions of every item of the
    /// range, then the next chunk, so each page is fetched once for all
    /// heads instead of once per head. Chunks are a multiple of the kernel's
    /// block, so both walks give bitwise the same result.
    fn run_items(
        &self,
        first: usize,
        states: &mut [f32],
        reverse: bool,
        x: &Inputs<'_>,
        ws: &mut Workspace,
    ) {
        let slen = self.state_len();
        let rows = self.shape.rows();
        let n_items = states.len() / slen;
        let order = |i: usize| if reverse { n_items - 1 - i } else { i };
        for st in states.chunks_mut(slen) {
            let (m, rest) = st.split_at_mut(pad(rows));
            let (l, acc) = rest.split_at_mut(pad(rows));
            m.fill(f32::NEG_INFINITY);
            l.fill(0.0);
            acc.fill(0.0);
        }
        let token_major = x.k.head_stride < x.k.token_stride || x.v.head_stride < x.v.token_stride;
        if !token_major || n_items == 1 {
            for i in 0..n_items {
                let i = order(i);
                let item = first + i;
                let len = x.seq_lens[item / self.shape.kv_heads];
                self.run_chunk(item, 0, len, &mut states[i * slen..][..slen], x, ws);
            }
        } else {
            let max_len = (first..first + n_items)
                .map(|item| x.seq_lens[item / self.shape.kv_heads])
                .max()
                .unwrap_or(0);
            for start in (0..max_len).step_by(CHUNK) {
                for i in 0..n_items {
                    let i = order(i);
                    let item = first + i;
                    let len = x.seq_lens[item / self.shape.kv_heads];
                    if start < len {
                        let n = CHUNK.min(len - start);
                        self.run_chunk(item, start, n, &mut states[i * slen..][..slen], x, ws);
                    }
                }
            }
        }
    }

    /// One kernel call: positions `start..start + n` of `item`, folded into
    /// its state.
    fn run_chunk(
        &self,
        item: usize,
        start: usize,
        n: usize,
        state: &mut [f32],
        x: &Inputs<'_>,
        ws: &mut Workspace,
    ) {
        if n == 0 {
            return;
        }
        let s = &self.shape;
        let (k, v) = (x.k, x.v);
        let (b, g) = (item / s.kv_heads, item % s.kv_heads);
        let (r, rows) = (s.group_size(), s.rows());
        let (dk, dkp) = (s.head_dim_k, pad(s.head_dim_k));
        let (mrows, rest) = state.split_at_mut(pad(rows));
        let (lrows, acc) = rest.split_at_mut(pad(rows));
        // Query tile: row t*r + i is token t, head g*r + i, times scale*log2(e).
        let qs = self.scale * LOG2_E;
        let (qtile, scratch) = ws.split(rows * dkp);
        for t in 0..s.q_len {
            for i in 0..r {
                let h = g * r + i;
                let src = &x.q[((b * s.q_len + t) * s.heads + h) * dk..][..dk];
                let dst = &mut qtile[(t * r + i) * dkp..][..dkp];
                for (d, q) in dst
                    .iter_mut()
                    .zip(src.iter().chain(std::iter::repeat(&0.0)))
                {
                    *d = q * qs;
                }
            }
        }
        let (kesz, vesz) = (s.k_dtype.size(), s.v_dtype.size());
        let args = ChunkArgs {
            q: qtile.as_ptr(),
            // Byte offsets of (b, g, start); `check_run_args` proved the whole
            // extent up to the sequence's length lies inside each buffer, so
            // these stay in bounds.
            k: k.data.as_ptr().wrapping_add(
                (b * k.seq_stride + g * k.head_stride + start * k.token_stride) * kesz,
            ),
            k_stride: k.token_stride,
            v: v.data.as_ptr().wrapping_add(
                (b * v.seq_stride + g * v.head_stride + start * v.token_stride) * vesz,
            ),
            v_stride: v.token_stride,
            n,
            rows,
            dk,
            dv: s.head_dim_v,
            m: mrows.as_mut_ptr(),
            l: lrows.as_mut_ptr(),
            acc: acc.as_mut_ptr(),
            scratch: scratch.as_mut_ptr(),
        };
        // SAFETY: `check_run_args` verified that for every position
        // j < seq_lens[b] (and `start + n <= seq_lens[b]` here) the K row at
        // `k + j*token_stride` holds `dk` elements (and V `dv`) inside their
        // buffers, of the kernel's dtypes (the plan selected the kernel for
        // these dtypes and the views were checked against them); `qtile`
        // holds rows*pad(dk) floats, the state rows, rows and rows*pad(dv)
        // floats, `scratch` scratch_len(rows, dk, dv) floats aligned to 64
        // bytes, all disjoint; the tier was checked available when the plan
        // was made.
        unsafe { (self.kernel.f)(&args) };
    }

    /// Turns item states into `out` rows (`acc / l`) and `lse`.
    fn finalize(&self, states: &[f32], out: &mut [f32], mut lse: Option<&mut [f32]>) {
        let s = &self.shape;
        let (r, rows, dv, dvp) = (s.group_size(), s.rows(), s.head_dim_v, pad(s.head_dim_v));
        for (item, st) in states.chunks(self.state_len()).enumerate() {
            let (b, g) = (item / s.kv_heads, item % s.kv_heads);
            let (m, rest) = st.split_at(pad(rows));
            let (l, acc) = rest.split_at(pad(rows));
            for t in 0..s.q_len {
                for i in 0..r {
                    let row = t * r + i;
                    let o = (b * s.q_len + t) * s.heads + g * r + i;
                    let dst = &mut out[o * dv..][..dv];
                    if l[row] > 0.0 {
                        let inv = 1.0 / l[row];
                        for (d, a) in dst.iter_mut().zip(&acc[row * dvp..][..dv]) {
                            *d = a * inv;
                        }
                    } else {
                        dst.fill(0.0);
                    }
                    if let Some(lse) = lse.as_deref_mut() {
                        lse[o] = if l[row] > 0.0 {
                            (m[row] + l[row].log2()) * std::f32::consts::LN_2
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                }
            }
        }
    }
}

/// The run's inputs, shared by every worker.
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a KvTensor<'a>,
    v: &'a KvTensor<'a>,
    seq_lens: &'a [usize],
}

/// Positions per kernel call in the chunk-major walk (a multiple of the
/// kernel block; 256 positions of K and V for all heads of a Llama-3-8B
/// layer is 1 MiB, which stays in L2/L3 until each head has used it).
const CHUNK: usize = 256;

/// Per-thread scratch: the query tile and the kernel's scratch, 64-byte
/// aligned, zero-initialised once.
struct Workspace {
    buf: Vec<f32>,
    off: usize,
}

impl Workspace {
    fn new(plan: &Plan) -> Workspace {
        let s = &plan.shape;
        let rows = s.rows();
        let n = rows * pad(s.head_dim_k) + scratch_len(rows, s.head_dim_k, s.head_dim_v);
        let buf = vec![0f32; n + PAD];
        let off = buf.as_ptr().align_offset(64).min(PAD);
        Workspace { buf, off }
    }

    /// The query tile (`qlen` floats) and the rest, both 64-byte aligned
    /// (`qlen` is a multiple of 16 floats).
    fn split(&mut self, qlen: usize) -> (&mut [f32], &mut [f32]) {
        self.buf[self.off..].split_at_mut(qlen)
    }
}
