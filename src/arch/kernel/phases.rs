//! The kernel's phases as `SimdOp`s (so each may run inlined or as its own
//! target-feature function), and the widening of K/V rows into scratch.

use super::*;

/// Runs one phase of the block loop inline (`inline`: one fused loop), or
/// out of line through the tier's never-inlined `with`. A phase depends on
/// one element type at most (scores on K, accumulate on V), so out of line
/// it is compiled once per type and tier instead of once per (K, V) pair.
/// The generic kernels of pairs with a quantized type run out of line:
/// with seven types, inlining all 49 generic kernels of a tier made the
/// crate build 2.5x slower, and the call per phase per 16-position block
/// costs about 5 % (measured on the float types' generic kernels, which
/// stay inline, like every specialised instance).
///
/// # Safety
/// The phase's own preconditions (stated on each struct).
#[inline(always)]
pub(super) unsafe fn phase<S: Simd, O: SimdOp<Out = ()>>(inline: bool, op: O) {
    // SAFETY: forwarded preconditions; `out_of_line` runs under the same
    // tier's features.
    unsafe {
        if inline {
            op.run::<S>()
        } else {
            S::out_of_line(op)
        }
    }
}

/// [`scores`] as a phase (its preconditions).
pub(super) struct Scores<'h, R> {
    pub(super) q: *const f32,
    pub(super) rows: usize,
    pub(super) dkp: usize,
    pub(super) kc: usize,
    pub(super) krows: R,
    pub(super) nb: usize,
    pub(super) part: *mut f32,
    pub(super) sbuf: *mut f32,
    pub(super) ahead: &'h Ahead,
    pub(super) touch: Touch,
}

impl<R: RowSource> SimdOp for Scores<'_, R> {
    type Out = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        let Scores {
            q,
            rows,
            dkp,
            kc,
            krows,
            nb,
            part,
            sbuf,
            ahead,
            touch,
        } = self;
        // SAFETY: forwarded preconditions of `scores`.
        unsafe { scores::<S, R>(q, rows, dkp, kc, krows, nb, part, sbuf, ahead, touch) }
    }
}

/// [`softmax_update`] as a phase, on the state of `a` (its preconditions).
pub(super) struct Softmax<'a> {
    pub(super) a: &'a ChunkArgs,
    pub(super) rows: usize,
    pub(super) nb: usize,
    pub(super) sbuf: *mut f32,
    pub(super) lsum: *mut f32,
    pub(super) dvp: usize,
    pub(super) vc: usize,
}

impl SimdOp for Softmax<'_> {
    type Out = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        let Softmax {
            a,
            rows,
            nb,
            sbuf,
            lsum,
            dvp,
            vc,
        } = self;
        // SAFETY: forwarded preconditions of `softmax_update`.
        unsafe {
            softmax_update::<S>(
                rows,
                nb,
                sbuf,
                a.state.m,
                a.state.l,
                lsum,
                a.state.acc,
                dvp,
                vc,
            )
        }
    }
}

/// [`accumulate`] as a phase (its preconditions).
pub(super) struct Accumulate<'h, R> {
    pub(super) rows: usize,
    pub(super) nb: usize,
    pub(super) pbuf: *const f32,
    pub(super) vrows: R,
    pub(super) dvp: usize,
    pub(super) vc: usize,
    pub(super) acc: *mut f32,
    pub(super) ahead: &'h Ahead,
}

impl<R: RowSource> SimdOp for Accumulate<'_, R> {
    type Out = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        let Accumulate {
            rows,
            nb,
            pbuf,
            vrows,
            dvp,
            vc,
            acc,
            ahead,
        } = self;
        // SAFETY: forwarded preconditions of `accumulate`.
        unsafe { accumulate::<S, R>(rows, nb, pbuf, vrows, dvp, vc, acc, ahead) }
    }
}

/// [`convert_rows`] as a phase (its preconditions).
pub(super) struct Convert<E> {
    pub(super) src: CacheRows<E>,
    pub(super) nb: usize,
    pub(super) chunks: usize,
    pub(super) dst: *mut f32,
    pub(super) dp: usize,
}

impl<E: Elem> SimdOp for Convert<E> {
    type Out = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        // SAFETY: forwarded preconditions of `convert_rows`.
        unsafe { convert_rows::<S, E>(self.src, self.nb, self.chunks, self.dst, self.dp) }
    }
}

/// Multiplies entry `j < nb` of every row of `sbuf` by the row scale of
/// the block's position `j` (at `scale + (start + j) * stride`): int8's
/// per-row scales, applied to the scores (K) or to the softmax weights
/// after their sums (V), once per position instead of once per vector.
/// Entries `j >= nb` are multiplied by 0 (they are masked or zero anyway).
#[inline(always)]
pub(super) unsafe fn scale_positions<S: Simd>(
    rows: usize,
    nb: usize,
    sbuf: *mut f32,
    scale: *const f32,
    stride: usize,
    start: usize,
) {
    let lanes = S::LANES;
    let used = nb.div_ceil(lanes) * lanes;
    // Contiguous scales (head-major caches) are loaded as vectors; others
    // are gathered into a stack block first (its scalar stores then stall
    // the vector loads that read them back, once per block).
    let mut sc = [0f32; BLOCK];
    let (src, contiguous) = if stride == 1 {
        // SAFETY: positions `start..start + nb` have scales.
        (unsafe { scale.add(start) }, true)
    } else {
        for (j, x) in sc.iter_mut().enumerate().take(nb) {
            // SAFETY: per `ChunkArgs`, positions `start + j < n` have a scale.
            *x = unsafe { *scale.add((start + j) * stride) };
        }
        (sc.as_ptr(), false)
    };
    let mut s = 0;
    while s < used {
        // SAFETY: `src` holds `nb` readable scales (a partial load reads
        // `nb - s` of them) or is the stack block; rows of `sbuf` hold
        // BLOCK >= used floats.
        unsafe {
            let f = if contiguous {
                S::load_f32(src.add(s), nb - s)
            } else {
                S::load(src.add(s))
            };
            for i in 0..rows {
                let p = sbuf.add(i * BLOCK + s);
                S::store(p, S::mul(S::load(p), f));
            }
        }
        s += lanes;
    }
}

/// Widens the block's `nb` rows into `dst` (row stride `dp`), `chunks`
/// vectors per row.
#[inline(always)]
pub(super) unsafe fn convert_rows<S: Simd, E: Elem>(
    src: CacheRows<E>,
    nb: usize,
    chunks: usize,
    dst: *mut f32,
    dp: usize,
) {
    for j in 0..nb {
        for c in 0..chunks {
            // SAFETY: row `j < nb` of the block, vector `c < chunks`; `dst`
            // has `BLOCK * dp` floats and `(c + 1) * LANES <= dp`.
            unsafe { S::store(dst.add(j * dp + c * S::LANES), src.load::<S>(j, c)) };
        }
    }
}
