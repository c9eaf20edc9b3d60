//! The decode kernel on a dot-product unit: the block loop of
//! [`decode_chunk`](super::decode_chunk), with the scores `S = Q·Kᵀ` (and,
//! for the V types the unit takes, `P·V`) computed by the unit's
//! instructions instead of f32 FMAs, and every other phase (row scales,
//! transforms, the online softmax, P·V on f32 FMA for other V types, the
//! final fold) the shared code of the tier. So a unit brings its packing
//! and its dot products, and inherits variants, masks, splits and
//! layouts.
//!
//! A unit reads K rows in place from the cache; the query rows are packed
//! once per call into the unit's operand type (split into parts for the
//! `Exact` class, see the units' own modules).

use super::super::scratch_len;
use super::*;

/// What a dot-product unit computes in the block loop of [`decode_unit`].
///
/// # Safety
/// Implementations are called only under the target features of the
/// unit's kernel entry, with the preconditions stated on each method.
pub(crate) trait DotUnit<S: Simd> {
    /// The K element type the unit reads.
    type K: Elem;
    /// f32 of scratch the packed query of `rows` rows of `dk` values takes.
    fn q_len(rows: usize, dk: usize) -> usize;
    /// f32 of per-block work scratch (corrections, V rearranged).
    fn work_len(dk: usize, dv: usize) -> usize;
    /// Packs the call's query rows (`rows` rows of `pad(dk)` f32, zero
    /// past `dk`) into `out` (`q_len(rows, dk)` f32, 64-byte aligned).
    unsafe fn pack_q(q: *const f32, rows: usize, dk: usize, out: *mut f32);
    /// Writes the block's scores: row `i < rows` of `sbuf` (`BLOCK` f32)
    /// gets `<q_i, k_j>` for positions `j < nb` (any value past `nb`);
    /// `k` is the block's first row, rows `stride` elements apart, each
    /// valid for `dk` values; `work` holds `work_len` f32.
    unsafe fn scores(
        qp: *const f32,
        rows: usize,
        dk: usize,
        k: *const Self::K,
        stride: usize,
        nb: usize,
        sbuf: *mut f32,
        work: *mut f32,
    );
    /// Whether the unit computes P·V for V elements of type `V`.
    fn takes_v<V: Elem>() -> bool {
        false
    }
    /// `acc_i += Σ_j p_ij v_j` for rows `i < rows`, positions `j < nb`
    /// (weights in `pbuf`, `BLOCK` f32 per row, zero past `nb`); `v` the
    /// block's first V row (bytes), rows `stride` elements apart, valid
    /// for `dv` values; `acc` `dvp` f32 per row. Only called when
    /// [`DotUnit::takes_v`] holds for the kernel's V type.
    unsafe fn accumulate(
        rows: usize,
        nb: usize,
        pbuf: *const f32,
        v: *const u8,
        stride: usize,
        dv: usize,
        acc: *mut f32,
        dvp: usize,
        work: *mut f32,
    ) {
        let _ = (rows, nb, pbuf, v, stride, dv, acc, dvp, work);
        unreachable!("accumulate called on a unit that takes no V type")
    }
}

/// f32 of scratch a call of [`decode_unit`] needs: the f32 kernel's
/// regions, then the packed query and the unit's work area, each on a
/// cache line.
pub(crate) fn scratch_len_unit<S: Simd, U: DotUnit<S>>(rows: usize, dk: usize, dv: usize) -> usize {
    pad(scratch_len(rows, dk, dv)) + pad(U::q_len(rows, dk)) + pad(U::work_len(dk, dv))
}

/// Runs one chunk on unit `U` of tier `S`, V elements of type `V`. See
/// [`ChunkArgs`] for the preconditions, with `scratch` at least
/// [`scratch_len_unit`] f32 and the CPU supporting the unit's features.
///
/// About 100 lines for the reason [`decode_chunk`](super::decode_chunk)
/// gives: the block loop and the scratch layout its phases share.
#[inline(always)]
pub(crate) unsafe fn decode_unit<S: Simd, U: DotUnit<S>, V: Elem>(a: &ChunkArgs) {
    let (rows, dk, dv) = (a.rows, a.dk, a.dv);
    let (dkp, dvp) = (pad(dk), pad(dv));
    let kc = dk.div_ceil(S::LANES);
    let vc = dv.div_ceil(S::LANES);
    // The f32 kernel's scratch layout (the K region stays unused: the
    // unit reads K in place), then the packed query and the work area.
    let kbuf = a.scratch;
    // SAFETY: every offset stays inside `scratch_len_unit` f32.
    let (vbuf, sbuf, part, lsum, qp, work) = unsafe {
        let vbuf = kbuf.add(BLOCK * dkp + SKEW);
        let sbuf = vbuf.add(BLOCK * dvp + SKEW);
        let part = sbuf.add(rows * BLOCK + SKEW);
        let lsum = part.add(MAX_ROW_TILE * BLOCK * PAD);
        let qp = kbuf.add(pad(scratch_len(rows, dk, dv)));
        let work = qp.add(pad(U::q_len(rows, dk)));
        (vbuf, sbuf, part, lsum, qp, work)
    };
    // SAFETY: `rows * PAD` floats of `lsum` are inside scratch; the query
    // and its packed copy as the unit's preconditions state.
    unsafe {
        for i in 0..rows * PAD {
            *lsum.add(i) = 0.0;
        }
        U::pack_q(a.q, rows, dk, qp);
    }
    let k = a.k.ptr.cast::<U::K>();
    let v = a.v.ptr.cast::<V>();
    let unit_pv = U::takes_v::<V>();
    let direct = rows <= S::ROW_TILE;
    let transformed = a.transforms.any();
    let mut start = 0;
    while start < a.n {
        let nb = BLOCK.min(a.n - start);
        let (i, n) = (start / BLOCK, a.n.div_ceil(BLOCK));
        // SAFETY: rows `start..start + nb < n` are inside the validated
        // range; scratch and state offsets as in `decode_chunk`; the
        // phases run out of line (their instances are the generic
        // kernels', compiled once per tier and type).
        unsafe {
            let step = BlockStep {
                a,
                inline: false,
                transformed,
                rows,
                nb,
                start,
                dkp,
                dvp,
                kc,
                vc,
                part,
                sbuf,
                lsum,
            };
            U::scores(
                qp,
                rows,
                dk,
                k.add(start * a.k.stride),
                a.k.stride,
                nb,
                sbuf,
                work,
            );
            Ahead::new(a.ahead[0].share(i, n), 1).finish();
            let vc_rows = CacheRows {
                base: v.add(start * a.v.stride),
                stride: a.v.stride,
                d: dv,
            };
            if unit_pv {
                step.after_scores::<S, U::K, V, _>(vc_rows, false);
                let vb = a.v.ptr.add(start * a.v.stride * core::mem::size_of::<V>());
                U::accumulate(rows, nb, sbuf, vb, a.v.stride, dv, a.state.acc, dvp, work);
                Ahead::new(a.ahead[1].share(i, n), 1).finish();
            } else if direct {
                step.after_scores::<S, U::K, V, _>(vc_rows, true);
            } else {
                phase::<S, _>(
                    false,
                    Convert {
                        src: vc_rows,
                        nb,
                        chunks: vc,
                        dst: vbuf,
                        dp: dvp,
                    },
                );
                let vs = ScratchRows {
                    base: vbuf,
                    stride: dvp,
                };
                step.after_scores::<S, U::K, V, _>(vs, true);
            }
        }
        start += nb;
    }
    // SAFETY: `a.state.l` has `rows` floats; `lsum` was set up above.
    unsafe { fold_sums::<S>(rows, a.state.l, lsum) };
}
