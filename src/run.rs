//! Layer 2, part 2: walking a batch into microkernel calls.
//!
//! A step is a list of independent work items, one per (sequence, KV head):
//! each builds the prescaled query tile of the group, runs the kernel over
//! the sequence's visible K/V rows, and leaves an online-softmax state
//! `(m, l, acc)`; a final pass turns the states into `out` and `lse`. Items
//! share nothing, so any split across threads gives bitwise the same result.

use crate::arch::{pad, scratch_len, ChunkArgs, PAD};
use crate::dispatch::count_run;
use crate::error::Result;
use crate::plan::{check_run_args, Plan};
use crate::types::KvTensor;

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
        if threads <= 1 {
            let mut ws = Workspace::new(self);
            for (item, st) in states.chunks_mut(slen).enumerate() {
                self.run_item(item, q, k, v, seq_lens, st, &mut ws);
            }
        } else {
            // Contiguous ranges of items per thread; each item writes only
            // its own state, so the split cannot change any result.
            let per = items.div_ceil(threads);
            std::thread::scope(|scope| {
                for (t, chunk) in states.chunks_mut(per * slen).enumerate() {
                    scope.spawn(move || {
                        let mut ws = Workspace::new(self);
                        for (i, st) in chunk.chunks_mut(slen).enumerate() {
                            self.run_item(t * per + i, q, k, v, seq_lens, st, &mut ws);
                        }
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

    #[allow(clippy::too_many_arguments)]
    fn run_item(
        &self,
        item: usize,
        q: &[f32],
        k: &KvTensor<'_>,
        v: &KvTensor<'_>,
        seq_lens: &[usize],
        state: &mut [f32],
        ws: &mut Workspace,
    ) {
        let s = &self.shape;
        let (b, g) = (item / s.kv_heads, item % s.kv_heads);
        let (r, rows) = (s.group_size(), s.rows());
        let (dk, dkp) = (s.head_dim_k, pad(s.head_dim_k));
        let (mrows, rest) = state.split_at_mut(pad(rows));
        let (lrows, acc) = rest.split_at_mut(pad(rows));
        mrows.fill(f32::NEG_INFINITY);
        lrows.fill(0.0);
        acc.fill(0.0);
        let len = seq_lens[b];
        if len == 0 {
            return;
        }
        // Query tile: row t*r + i is token t, head g*r + i, times scale*log2(e).
        let qs = self.scale * LOG2_E;
        let (qtile, scratch) = ws.split(rows * dkp);
        for t in 0..s.q_len {
            for i in 0..r {
                let h = g * r + i;
                let src = &q[((b * s.q_len + t) * s.heads + h) * dk..][..dk];
                let dst = &mut qtile[(t * r + i) * dkp..][..dkp];
                for (d, x) in dst
                    .iter_mut()
                    .zip(src.iter().chain(std::iter::repeat(&0.0)))
                {
                    *d = x * qs;
                }
            }
        }
        let kesz = s.k_dtype.size();
        let vesz = s.v_dtype.size();
        let args = ChunkArgs {
            q: qtile.as_ptr(),
            // Byte offsets of (b, g, position 0); `check_run_args` proved the
            // whole extent lies inside each buffer, so these cannot overflow.
            k: k.data
                .as_ptr()
                .wrapping_add((b * k.seq_stride + g * k.head_stride) * kesz),
            k_stride: k.token_stride,
            v: v.data
                .as_ptr()
                .wrapping_add((b * v.seq_stride + g * v.head_stride) * vesz),
            v_stride: v.token_stride,
            n: len,
            rows,
            dk,
            dv: s.head_dim_v,
            m: mrows.as_mut_ptr(),
            l: lrows.as_mut_ptr(),
            acc: acc.as_mut_ptr(),
            scratch: scratch.as_mut_ptr(),
        };
        // SAFETY: `check_run_args` verified that for every position j < len
        // the K row at `k + j*token_stride` holds `dk` elements (and V `dv`)
        // inside their buffers, of the kernel's dtypes (the plan selected
        // the kernel for these dtypes and the views were checked against
        // them); `qtile` holds rows*pad(dk) floats, the state rows, rows and
        // rows*pad(dv) floats, `scratch` scratch_len(rows, dk, dv) floats
        // aligned to 64 bytes, all disjoint; the tier was checked available
        // when the plan was made.
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
