//! Phase 3: the online softmax over a block of scores.

use super::*;

/// How far (log2 units) a score may rise above a row's reference max `m`
/// before the row is rescaled: weights `p = 2^(s - m)` stay below `2^8`,
/// far from overflow, and rows whose max creeps up block after block (ALiBi
/// scores rise towards the query) rescale a few times per call instead of
/// every block. `m` is then a reference point, not always the exact max;
/// `m + log2 l` (the lse) and the merges are the same either way.
pub(super) const RESCALE_SLACK: f32 = 8.0;

/// Folds the block's scores into each row's running reference max and sum,
/// rescales the row's accumulator when a score exceeds the reference by more
/// than [`RESCALE_SLACK`], and replaces the scores in `sbuf` by the weights
/// `p = 2^(s - m)` (0 for positions `>= nb`).
///
/// The running sum of the call is kept lane-wise in `lsum` (`PAD` floats per
/// row) and reduced once by [`fold_sums`]; the block max is reduced to a
/// scalar only when some lane exceeds the running max, which after the
/// first blocks is rare. Both keep horizontal reductions off the per-block
/// path.
#[inline(always)]
pub(super) unsafe fn softmax_update<S: Simd>(
    rows: usize,
    nb: usize,
    sbuf: *mut f32,
    m: *mut f32,
    l: *mut f32,
    lsum: *mut f32,
    acc: *mut f32,
    dvp: usize,
    vc: usize,
) {
    let lanes = S::LANES;
    let used = nb.div_ceil(lanes) * lanes;
    for i in 0..rows {
        // SAFETY: row `i < rows` of `sbuf` (BLOCK floats), `m`, `l`, `lsum`
        // (PAD floats) and `acc` (`dvp` floats) exist; `used <= BLOCK`.
        unsafe {
            let row = sbuf.add(i * BLOCK);
            let ls = lsum.add(i * PAD);
            let mut mx = S::splat(f32::NEG_INFINITY);
            let mut s = 0;
            while s < used {
                let mut x = S::load(row.add(s));
                if nb - s < lanes {
                    x = S::mask_tail(x, nb - s, f32::NEG_INFINITY);
                    S::store(row.add(s), x);
                }
                mx = S::max(mx, x);
                s += lanes;
            }
            let m_old = *m.add(i);
            if S::any_gt(mx, m_old + RESCALE_SLACK) {
                let m_new = S::reduce_max(mx);
                // First block: m_old = -inf, alpha = 0 and the state is zero.
                // The vector exp2, not libm's: a call here would clobber
                // every vector register of the block loop, and with ALiBi
                // (scores rising towards the query) the max grows in
                // almost every block.
                let av = exp2::<S>(S::splat(m_old - m_new));
                let alpha = S::reduce_max(av);
                *l.add(i) *= alpha;
                S::store(ls, S::mul(S::load(ls), av));
                let ar = acc.add(i * dvp);
                for c in 0..vc {
                    let p = ar.add(c * lanes);
                    S::store(p, S::mul(S::load(p), av));
                }
                *m.add(i) = m_new;
            }
            // A row that has seen only `-inf` scores (a block or a whole
            // split masked by the bias) still has `m = -inf`, and every score
            // of this block is `-inf` too (a finite one would have set `m`
            // above): subtract 0, so its weights are `2^-inf = 0`, not
            // `2^(-inf + inf) = NaN` (which dropped the whole split).
            let mr = *m.add(i);
            let mv = S::splat(if mr == f32::NEG_INFINITY { 0.0 } else { mr });
            let mut sum = S::load(ls);
            let mut s = 0;
            while s < used {
                let p = exp2::<S>(S::sub(S::load(row.add(s)), mv));
                S::store(row.add(s), p);
                sum = S::add(sum, p);
                s += lanes;
            }
            S::store(ls, sum);
        }
    }
}

/// The part of a block between its scores and its P·V, for kernels that
/// compute those two themselves (the tile unit): the score transforms
/// (`transformed`: softcap, ALiBi or bias present), then
/// [`softmax_update`] with the accumulator at `acc` (`dvp` f32 per row).
///
/// # Safety
/// Those of [`Transform`] and [`softmax_update`]: `sbuf` holds `rows` rows
/// of `BLOCK` scores of positions `start..start + nb` of the call,
/// `lsum` `rows * PAD` f32, `acc` `rows * dvp`.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) unsafe fn block_softmax<S: Simd>(
    a: &ChunkArgs,
    rows: usize,
    nb: usize,
    start: usize,
    sbuf: *mut f32,
    lsum: *mut f32,
    acc: *mut f32,
    dvp: usize,
    transformed: bool,
) {
    // SAFETY: forwarded preconditions.
    unsafe {
        if transformed {
            S::out_of_line(Transform {
                a,
                rows,
                nb,
                sbuf,
                start,
            });
        }
        softmax_update::<S>(
            rows,
            nb,
            sbuf,
            a.state.m,
            a.state.l,
            lsum,
            acc,
            dvp,
            dvp.div_ceil(S::LANES),
        );
    }
}

/// Adds each row's lane-wise sum of the call to its running sum `l`.
#[inline(always)]
pub(crate) unsafe fn fold_sums<S: Simd>(rows: usize, l: *mut f32, lsum: *const f32) {
    for i in 0..rows {
        // SAFETY: `l` has `rows` floats, `lsum` `rows * PAD`.
        unsafe { *l.add(i) += S::reduce_add(S::load(lsum.add(i * PAD))) };
    }
}
