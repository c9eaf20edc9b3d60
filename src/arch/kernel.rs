//! The decode microkernel, written once for every tier.
//!
//! One call consumes `n` K/V rows of one KV head for a tile of `rows` query
//! rows (the `r` query heads of the group, times the query tokens), in blocks
//! of [`BLOCK`] positions:
//!
//! 1. **Widen** K and V to f32 exactly once per call. With at most
//!    `S::ROW_TILE` rows (every group size up to 8 on AVX-512 and NEON, 4 on
//!    AVX2) all rows share one register tile, and each K/V vector is widened
//!    straight from the cache into a register and used by every row. With
//!    more rows, the block's K and V rows are widened once into scratch (both
//!    before the first read, so no load waits on a just-issued store) and
//!    every row tile reads the f32 copy from L1.
//! 2. **Scores** `S = Q · Kᵀ` in register tiles of `S::ROW_TILE` rows × up
//!    to 4 positions (one position when cache rows are 512 bytes or wider
//!    and the tile has at most 4 rows, so that rows stream in order; see
//!    [`WIDE_ROW_BYTES`]; that loop holds the tile's q vectors in
//!    registers across the block, see [`score_rows_hoisted`]); the
//!    unreduced per-position vectors of a row are reduced
//!    [`Simd::LANES`] at a time by a transpose-and-add tree
//!    ([`Simd::transpose_sum`]) instead of one horizontal sum each, in
//!    registers as soon as a tile holds `LANES` dot products.
//!    With a logit softcap, each score becomes `cap · tanh(s / cap)` here,
//!    before any masking.
//! 3. **Online softmax** per row (log2 domain: Q was pre-multiplied by
//!    `scale·log2 e`): block max, rescale the state only when the max grew,
//!    `p = 2^(s - m)` with the vectorised [`exp2`].
//! 4. **Accumulate** `acc += P · V` in register tiles of `S::ROW_TILE` rows
//!    × up to 4 vectors of `Dv`.
//!
//! Tails never read past a row: the conversion loads mask (or copy) the last
//! partial vector of a row, and positions past `n` in the last block are
//! masked to `-inf` before the softmax and skipped in `P · V`.

// Register tiles are indexed by (row, column) loops over const bounds that
// the compiler unrolls; iterator chains would only obscure them. The phases
// take the kernel's raw pointers and sizes explicitly, hence the arity.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use super::{
    exp2, pad, tanh, Ahead, ChunkArgs, Dims, Elem, Simd, SimdOp, BLOCK, MAX_ROW_TILE, PAD, SKEW,
};
use crate::shape::LOGIT_FLOOR;

/// Vectors of `Dv` in a P·V register tile of `rt` rows when `acc`
/// accumulators are available: as many as fit, up to 16. Every column tile is one pass over the block's V rows;
/// with wide heads (`Dv = 256` is 16 AVX-512 vectors) and few rows, capping
/// it at 4 made four strided passes over each V row, and the later passes
/// waited on memory the first had not brought in (a 256-wide head ran at
/// a third of the bandwidth of a 128-wide one).
const fn acc_cols(acc: usize, rt: usize) -> usize {
    let c = acc / rt;
    if c >= 16 {
        16
    } else if c >= 8 {
        8
    } else if c >= 4 {
        4
    } else if c < 1 {
        1
    } else {
        c
    }
}

/// Positions in a score register tile of `rt` rows when `acc` accumulators
/// are available (at most 4).
const fn tile_cols(acc: usize, rt: usize) -> usize {
    let c = acc / rt;
    if c > 4 {
        4
    } else if c < 1 {
        1
    } else {
        c
    }
}

/// Where a microkernel phase reads K or V rows from: the cache itself
/// (widening on the fly, masked on the last vector of a row) or the f32
/// scratch copy made once per block.
trait RowSource: Copy {
    /// Whether the score tile should read one position at a time (see
    /// [`WIDE_ROW_BYTES`]).
    fn row_at_a_time(self) -> bool {
        self.row_bytes() >= WIDE_ROW_BYTES
    }
    /// Bytes of a row in memory where the rows are the cache's, else 0
    /// (f32 scratch copies are read from L1 in any order).
    fn row_bytes(self) -> usize {
        0
    }
    /// Vector `c` of row `j` of the current block, as f32.
    unsafe fn load<S: Simd>(self, j: usize, c: usize) -> S::V;
}

/// Cache rows of at least this many bytes are scored one position at a
/// time with up to four query rows. A score tile of several positions
/// reads its rows column by column, so each step touches one line of
/// each of its rows; with 512-byte rows (`D = 256` f16, `D = 128` f32) that
/// interleaving read DRAM at a third to a half of the sequential rate on an
/// AMD Zen 4 core, cold (Gemma-2-9B shape, `D = 256` f16, r = 2, L = 32768,
/// 1 thread: 10 GB/s with 4 positions per tile, 20 with 1; f32 `D = 128`
/// r = 1: 14 and 23), while a shorter row (256 bytes) or more rows per
/// tile, which make the tile bound by its multiply-adds, gain from several.
const WIDE_ROW_BYTES: usize = 512;

/// Query rows per P·V pass over wide rows ([`WIDE_ROW_BYTES`]): as many as
/// let one pass cover whole V rows (`vc` vectors of `acc` accumulators),
/// at least one. With the full row tile, `acc_cols` splits each row into
/// column tiles, one pass each, so each pass reads a slice of every row of
/// the block (four 128-byte slices for f32 `D = 128` and 8 rows on
/// AVX-512); that column order read DRAM slower than whole rows, the later
/// passes reading from L1. On an AMD Zen 4 core, 1 thread, cold, old and
/// new builds alternately: f32 `D = 128` r = 8 16.0-17.5 -> 12.3-12.8 ms
/// (L 16384), r = 4 18.5-19.1 -> 17.7-18.6 (L 32768), f16 `D = 256` r = 4
/// 13.5-13.9 -> 11.3-11.8 (L 16384); on the AVX2 tier f32 r = 4 25-38 ->
/// 19-21 and Gemma-2-9B 27-28 -> 21-22. The multiply-adds are the same,
/// each accumulator's in the same order, so the bits are too.
const fn wide_pv_rows(acc: usize, vc: usize, row_tile: usize) -> usize {
    let rt = acc / vc;
    if rt < 1 {
        1
    } else if rt > row_tile {
        row_tile
    } else {
        rt
    }
}

/// Query rows up to which a tile over wide rows reads one position at a
/// time. With more rows the tile is bound by its multiply-adds (r = 8 f32
/// `D = 128`: 2 positions 10 % faster cold than 1).
const WIDE_ROW_TILE: usize = 4;

/// Cache rows of at least this many bytes (`D = 128` f16/bf16) are scored
/// one position at a time when one or two query rows share them: then the
/// tile is far from its multiply-add roof, and the column order of a
/// 4-position tile cost the DRAM stream. On an AMD Zen 4 core, 1 thread,
/// cold, G 8, D 128 f16, L 32768, old and new builds alternately: r = 1
/// 5.6-6.5 -> 4.8-5.6 ms, r = 2 5.6-6.0 -> 5.4-5.5 (r = 4, FMA-bound,
/// keeps 4 positions); the AVX2 tier r = 1 5.8-10.8 -> 4.6-5.6, r = 2
/// 6.4-6.9 -> 5.5-5.7. Each dot product's multiply-adds are the same;
/// where a tier reduces several positions' sums in registers the final
/// reduction may take the other path (same bound, see `score_positions`).
const MID_ROW_BYTES: usize = 256;

/// Query rows up to which a tile over [`MID_ROW_BYTES`] rows reads one
/// position at a time.
const MID_ROW_TILE: usize = 2;

/// Rows read straight from the cache: `d` values of type `E` per row.
#[derive(Clone, Copy)]
struct CacheRows<E> {
    base: *const E,
    stride: usize,
    d: usize,
}

impl<E: Elem> RowSource for CacheRows<E> {
    #[inline(always)]
    fn row_bytes(self) -> usize {
        // A quantized value takes about a byte (its scales aside).
        if E::QUANTIZED {
            self.d
        } else {
            self.d * core::mem::size_of::<E>()
        }
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(self, j: usize, c: usize) -> S::V {
        // SAFETY: the caller only asks for rows `j < nb` of the block (valid
        // for `d` values) and vectors `c < d.div_ceil(LANES)`, so the load
        // reads only inside the row.
        unsafe { E::load::<S>(self.base.add(j * self.stride), c, self.d) }
    }
}

/// Rows of the f32 scratch copy, `stride` floats apart.
#[derive(Clone, Copy)]
struct ScratchRows {
    base: *const f32,
    stride: usize,
}

impl RowSource for ScratchRows {
    #[inline(always)]
    unsafe fn load<S: Simd>(self, j: usize, c: usize) -> S::V {
        // SAFETY: rows `j < BLOCK` and vectors `c < pad(d) / LANES` lie in
        // the scratch block.
        unsafe { S::load(self.base.add(j * self.stride + c * S::LANES)) }
    }
}

/// Runs one chunk. See [`ChunkArgs`] for the preconditions.
#[inline(always)]
pub(crate) unsafe fn decode_chunk<S: Simd, K: Elem, V: Elem, D: Dims>(a: &ChunkArgs) {
    let rows = D::rows(a);
    let dk = D::dk(a);
    let dv = D::dv(a);
    let (dkp, dvp) = (pad(dk), pad(dv));
    let kc = dk.div_ceil(S::LANES);
    let vc = dv.div_ceil(S::LANES);
    // Scratch: the block's widened K rows, its widened V rows, the scores
    // and the unreduced partial dot products of one row tile.
    let kbuf = a.scratch;
    // SAFETY: all offsets stay inside the `scratch_len(rows, dk, dv)` floats
    // the driver provides (the layout below is exactly `scratch_len`).
    let (vbuf, sbuf, part) = unsafe {
        let vbuf = kbuf.add(BLOCK * dkp + SKEW);
        let sbuf = vbuf.add(BLOCK * dvp + SKEW);
        (vbuf, sbuf, sbuf.add(rows * BLOCK + SKEW))
    };
    // SAFETY: the lane-wise sums follow the partial-product area
    // (`MAX_ROW_TILE * BLOCK * PAD` floats), inside `scratch_len`.
    let lsum = unsafe { part.add(MAX_ROW_TILE * BLOCK * PAD) };
    for i in 0..rows * PAD {
        // SAFETY: `rows * PAD` floats of `lsum` are inside scratch.
        unsafe { *lsum.add(i) = 0.0 };
    }
    let k = a.k.cast::<K>();
    let v = a.v.cast::<V>();
    // With a single row tile every K/V vector is used by exactly one tile, so
    // the kernel widens straight from the cache into registers. With more
    // rows it widens each block once into scratch, K and then V, before the
    // first read of either: reading a vector right after storing it would
    // stall on store-to-load forwarding (a 512-bit load is not forwarded
    // from two 256-bit halves on some cores).
    let direct = rows <= S::ROW_TILE;
    // The score transforms run out of line (`Simd::out_of_line`): the
    // plain loop keeps the code and register allocation it has without
    // them, and a transformed call pays one call per block.
    let transformed = a.softcap > 0.0 || !a.alibi_slope.is_null() || !a.bias.is_null();
    // Phases run inline in the specialised instances and in the generic
    // kernels of the float types, out of line in the generic kernels of
    // pairs with a quantized type (see `phase`). Instrumented builds
    // (feature `generic-only`: fuzzing, sanitizers, Miri) run every generic
    // kernel's phases out of line: fused, the nine float pairs of a tier
    // took LLVM 15-23 s each under AddressSanitizer, in one codegen unit.
    let inline = D::FIXED || !(K::QUANTIZED || V::QUANTIZED || cfg!(feature = "generic-only"));

    let mut start = 0;
    while start < a.n {
        let nb = BLOCK.min(a.n - start);
        // SAFETY: rows `start..start + nb` are `< n`, so each K/V row read is
        // inside the range the driver validated; every scratch/state offset
        // is inside the buffers described in `ChunkArgs`.
        unsafe {
            let kc_rows = CacheRows {
                base: k.add(start * a.k_stride),
                stride: a.k_stride,
                d: dk,
            };
            let vc_rows = CacheRows {
                base: v.add(start * a.v_stride),
                stride: a.v_stride,
                d: dv,
            };
            let step = BlockStep {
                a,
                inline,
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
            if direct {
                step.run::<S, K, V, _, _>(kc_rows, vc_rows);
            } else {
                phase::<S, _>(
                    inline,
                    Convert {
                        src: kc_rows,
                        nb,
                        chunks: kc,
                        dst: kbuf,
                        dp: dkp,
                    },
                );
                phase::<S, _>(
                    inline,
                    Convert {
                        src: vc_rows,
                        nb,
                        chunks: vc,
                        dst: vbuf,
                        dp: dvp,
                    },
                );
                let ks = ScratchRows {
                    base: kbuf,
                    stride: dkp,
                };
                let vs = ScratchRows {
                    base: vbuf,
                    stride: dvp,
                };
                step.run::<S, K, V, _, _>(ks, vs);
            }
        }
        start += nb;
    }
    // SAFETY: `a.l` has `rows` floats; `lsum` was set up above.
    unsafe { fold_sums::<S>(rows, a.l, lsum) };
}

/// The phases of one block once its K and V row sources are fixed (the
/// cache itself, or the block's f32 scratch copy): scores, int8 K row
/// scales, score transforms, softmax, int8 V row scales, P·V.
/// Preconditions: those of the phases, as set up by [`decode_chunk`].
struct BlockStep<'a> {
    a: &'a ChunkArgs,
    inline: bool,
    transformed: bool,
    rows: usize,
    nb: usize,
    start: usize,
    dkp: usize,
    dvp: usize,
    kc: usize,
    vc: usize,
    part: *mut f32,
    sbuf: *mut f32,
    lsum: *mut f32,
}

impl BlockStep<'_> {
    #[inline(always)]
    unsafe fn run<S: Simd, K: Elem, V: Elem, KR: RowSource, VR: RowSource>(
        &self,
        krows: KR,
        vrows: VR,
    ) {
        let &BlockStep {
            a,
            inline,
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
        } = self;
        // This block's share of the spans to hint, spread over the
        // positions of the phase that reads the same kind of rows.
        let (i, n) = (start / BLOCK, a.n.div_ceil(BLOCK));
        let ahead_k = Ahead::new(a.ahead_k.share(i, n), nb);
        // SAFETY: the struct's precondition, forwarded from the kernel.
        unsafe {
            phase::<S, _>(
                inline,
                Scores {
                    q: a.q,
                    rows,
                    dkp,
                    kc,
                    krows,
                    nb,
                    part,
                    sbuf,
                    ahead: &ahead_k,
                },
            );
            ahead_k.finish();
            if K::ROW_SCALE {
                scale_positions::<S>(rows, nb, sbuf, a.k_scale, a.k_scale_stride, start);
            }
            if transformed {
                S::out_of_line(Transform {
                    a,
                    rows,
                    nb,
                    sbuf,
                    start,
                });
            }
            phase::<S, _>(
                inline,
                Softmax {
                    a,
                    rows,
                    nb,
                    sbuf,
                    lsum,
                    dvp,
                    vc,
                },
            );
            if V::ROW_SCALE {
                scale_positions::<S>(rows, nb, sbuf, a.v_scale, a.v_scale_stride, start);
            }
            let ahead_v = Ahead::new(a.ahead_v.share(i, n), nb);
            phase::<S, _>(
                inline,
                Accumulate {
                    rows,
                    nb,
                    pbuf: sbuf,
                    vrows,
                    dvp,
                    vc,
                    acc: a.acc,
                    ahead: &ahead_v,
                },
            );
            ahead_v.finish();
        }
    }
}

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
unsafe fn phase<S: Simd, O: SimdOp<Out = ()>>(inline: bool, op: O) {
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
struct Scores<'h, R> {
    q: *const f32,
    rows: usize,
    dkp: usize,
    kc: usize,
    krows: R,
    nb: usize,
    part: *mut f32,
    sbuf: *mut f32,
    ahead: &'h Ahead,
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
        } = self;
        // SAFETY: forwarded preconditions of `scores`.
        unsafe { scores::<S, R>(q, rows, dkp, kc, krows, nb, part, sbuf, ahead) }
    }
}

/// [`softmax_update`] as a phase, on the state of `a` (its preconditions).
struct Softmax<'a> {
    a: &'a ChunkArgs,
    rows: usize,
    nb: usize,
    sbuf: *mut f32,
    lsum: *mut f32,
    dvp: usize,
    vc: usize,
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
        unsafe { softmax_update::<S>(rows, nb, sbuf, a.m, a.l, lsum, a.acc, dvp, vc) }
    }
}

/// [`accumulate`] as a phase (its preconditions).
struct Accumulate<'h, R> {
    rows: usize,
    nb: usize,
    pbuf: *const f32,
    vrows: R,
    dvp: usize,
    vc: usize,
    acc: *mut f32,
    ahead: &'h Ahead,
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
struct Convert<E> {
    src: CacheRows<E>,
    nb: usize,
    chunks: usize,
    dst: *mut f32,
    dp: usize,
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
unsafe fn scale_positions<S: Simd>(
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
unsafe fn convert_rows<S: Simd, E: Elem>(
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

/// Raw scores (log2 domain) of every row against the `nb` K rows of the
/// block, written to `sbuf[row * BLOCK + j]`; entries `j >= nb` are
/// unspecified.
#[inline(always)]
unsafe fn scores<S: Simd, R: RowSource>(
    q: *const f32,
    rows: usize,
    dkp: usize,
    kc: usize,
    krows: R,
    nb: usize,
    part: *mut f32,
    sbuf: *mut f32,
    ahead: &Ahead,
) {
    let mut i0 = 0;
    while i0 < rows {
        let rt = S::ROW_TILE.min(rows - i0);
        // SAFETY: rows `i0..i0 + rt` exist in `q` and `sbuf`.
        unsafe {
            let qt = q.add(i0 * dkp);
            let st = sbuf.add(i0 * BLOCK);
            match rt {
                8 => score_tile::<S, R, 8>(qt, dkp, kc, krows, nb, part, st, ahead),
                7 => score_tile::<S, R, 7>(qt, dkp, kc, krows, nb, part, st, ahead),
                6 => score_tile::<S, R, 6>(qt, dkp, kc, krows, nb, part, st, ahead),
                5 => score_tile::<S, R, 5>(qt, dkp, kc, krows, nb, part, st, ahead),
                4 => score_tile::<S, R, 4>(qt, dkp, kc, krows, nb, part, st, ahead),
                3 => score_tile::<S, R, 3>(qt, dkp, kc, krows, nb, part, st, ahead),
                2 => score_tile::<S, R, 2>(qt, dkp, kc, krows, nb, part, st, ahead),
                _ => score_tile::<S, R, 1>(qt, dkp, kc, krows, nb, part, st, ahead),
            }
        }
        i0 += rt;
    }
}

#[inline(always)]
unsafe fn score_tile<S: Simd, R: RowSource, const RT: usize>(
    q: *const f32,
    dkp: usize,
    kc: usize,
    krows: R,
    nb: usize,
    part: *mut f32,
    sbuf: *mut f32,
    ahead: &Ahead,
) {
    // Two call sites, each with a constant `np`, so that the group's
    // register arrays stay in registers.
    // SAFETY: `score_positions` has `score_tile`'s preconditions, which the
    // caller upholds; `np` is 1 or `tile_cols`, both at most 4.
    unsafe {
        let bytes = krows.row_bytes();
        if RT <= WIDE_ROW_TILE && bytes >= WIDE_ROW_BYTES
            || RT <= MID_ROW_TILE && bytes >= MID_ROW_BYTES
        {
            score_positions::<S, R, RT>(q, dkp, kc, krows, nb, part, sbuf, 1, ahead);
        } else {
            let np = tile_cols(S::ACC, RT);
            score_positions::<S, R, RT>(q, dkp, kc, krows, nb, part, sbuf, np, ahead);
        }
    }
}

/// [`score_tile`] with `np` positions per step.
#[inline(always)]
unsafe fn score_positions<S: Simd, R: RowSource, const RT: usize>(
    q: *const f32,
    dkp: usize,
    kc: usize,
    krows: R,
    nb: usize,
    part: *mut f32,
    sbuf: *mut f32,
    np: usize,
    ahead: &Ahead,
) {
    let l = S::LANES;
    // `np` positions per step, so each loaded q vector feeds that many
    // FMAs; a last partial group runs position by position. When a group
    // fills more than half a vector of dot products they are reduced in
    // registers right away (padding the rest); smaller tiles park them in
    // `part` and reduce LANES positions of a row at a time afterwards.
    let in_regs = 2 * RT * np > l;
    let mut j = 0;
    if np == 1 && !in_regs && RT * kc <= HOISTED_Q_VECS.min(2 * S::ACC) {
        // SAFETY: as below, for every position `j < nb`.
        unsafe { score_rows_hoisted::<S, R, RT>(q, dkp, kc, krows, nb, part) };
        j = nb;
    }
    while j + np <= nb {
        // SAFETY: positions `j..j + np` are `< nb`; q rows `0..RT` of the
        // tile exist; `part` holds `MAX_ROW_TILE * BLOCK` vectors and `sbuf`
        // RT rows of BLOCK floats.
        unsafe { score_group::<S, R, RT>(q, dkp, kc, krows, j, np, part, sbuf, in_regs) };
        // Hints ride along the multi-position groups only: in the
        // one-position loop of wide rows a tick per position made the
        // Gemma-2-9B step (D = 256, r = 2, [B, G, L, D], nothing to hint)
        // 18.5-20.1 ms against 14.8-16.3 without it (AMD Zen 4, 1 thread,
        // cold); there the block's K hints go out at the phase's end.
        if np > 1 {
            ahead.tick(np);
        }
        j += np;
    }
    while j < nb {
        // SAFETY: as above, one position.
        unsafe { score_group::<S, R, RT>(q, dkp, kc, krows, j, 1, part, sbuf, in_regs) };
        j += 1;
    }
    if in_regs {
        return;
    }
    for i in 0..RT {
        let mut s = 0;
        while s < nb {
            // SAFETY: vectors `s..s + LANES` of row `i` are inside `part`
            // (BLOCK is a multiple of LANES; entries `>= nb` are stale but
            // initialised and masked later); `sbuf` row `i` has BLOCK floats.
            unsafe {
                let mut v = [S::zero(); 16];
                for (e, x) in v.iter_mut().enumerate().take(l) {
                    *x = S::load(part.add((i * BLOCK + s + e) * l));
                }
                S::store(sbuf.add(i * BLOCK + s), S::transpose_sum(&v));
            }
            s += l;
        }
    }
}

/// Most q vectors [`score_rows_hoisted`] holds (`RT * kc`): the AVX-512
/// register file; the tiers' `2 * ACC` bounds it too.
const HOISTED_Q_VECS: usize = 32;

/// The one-position score loop with the tile's q vectors loaded once per
/// block and held ([`Simd::pin`]) instead of reloaded per position, and
/// each K row's vectors (up to 8) loaded before its multiply-adds:
/// unreduced dot products of `RT` rows with every position `j < nb`,
/// stored as vectors `part[i * BLOCK + j]`.
///
/// With q reloaded, an f32 `D = 128` row with r = 4 took 40 loads (8 of
/// K, 32 of q), the core kept fewer K rows in flight, and cold the step
/// took about its cache-resident time plus its DRAM time. A plain C loop
/// with q in registers, on the same buffers in the same process, was
/// 1.3-1.4x faster. Holding q (24 of the 32 in registers, the rest
/// spilled once per block) closed that gap. On an AMD Zen 4 core, 1
/// thread, cold, L 32768, G 8, old and new builds alternately: f32
/// `D = 128` r = 4 15.9-17.3 -> 13.0-14.2 ms, r = 2 13.8-14.6 ->
/// 13.1-14.4; f16 `D = 128` r = 2 5.0-5.4 -> 4.5-4.7, r = 1 4.6-5.2 ->
/// 4.6; Gemma-2-9B (`D = 256` f16, r = 2) 11.7-12.2 -> 10.9-11.7. The
/// multiply-adds, and their order, are those of [`score_group`], so the
/// bits are too.
///
/// Rows of up to 8 vectors load all of them before the multiply-adds;
/// longer rows load each vector next to its own. The one-branch form
/// (each vector loaded next to its multiply-adds at any `kc`) was slower
/// where it matters: same core, cold, L 32768, G 8, f32 `D = 128`, builds
/// alternately, best of 3: r = 4 11.2 ms with K loaded first, 13.2 with
/// per-vector loads; r = 2 13.8 and 13.3; r = 1 12.4 and 12.7.
#[inline(always)]
unsafe fn score_rows_hoisted<S: Simd, R: RowSource, const RT: usize>(
    q: *const f32,
    dkp: usize,
    kc: usize,
    krows: R,
    nb: usize,
    part: *mut f32,
) {
    let l = S::LANES;
    // SAFETY: q rows `0..RT` hold `kc` vectors each; positions `j < nb` are
    // in the block, `c < kc` vectors per row; `part` holds `MAX_ROW_TILE *
    // BLOCK` vectors.
    unsafe {
        let mut qr = [S::zero(); HOISTED_Q_VECS];
        for i in 0..RT {
            for c in 0..kc {
                qr[i * kc + c] = S::pin(S::load(q.add(i * dkp + c * l)));
            }
        }
        for j in 0..nb {
            let mut acc = [S::zero(); RT];
            if kc <= 8 {
                let mut kv = [S::zero(); 8];
                for c in 0..kc {
                    kv[c] = krows.load::<S>(j, c);
                }
                for i in 0..RT {
                    acc[i] = S::mul(kv[0], qr[i * kc]);
                }
                for c in 1..kc {
                    for i in 0..RT {
                        acc[i] = S::fma(kv[c], qr[i * kc + c], acc[i]);
                    }
                }
            } else {
                let k0 = krows.load::<S>(j, 0);
                for i in 0..RT {
                    acc[i] = S::mul(k0, qr[i * kc]);
                }
                for c in 1..kc {
                    let kv = krows.load::<S>(j, c);
                    for i in 0..RT {
                        acc[i] = S::fma(kv, qr[i * kc + c], acc[i]);
                    }
                }
            }
            for i in 0..RT {
                S::store(part.add((i * BLOCK + j) * l), acc[i]);
            }
        }
    }
}

/// Dot products of `RT` query rows with `np <= 4` positions from `j`:
/// reduced in registers and written to `sbuf[i * BLOCK + j + p]` when
/// `in_regs`, else stored unreduced as vectors `part[i * BLOCK + j + p]`.
#[inline(always)]
unsafe fn score_group<S: Simd, R: RowSource, const RT: usize>(
    q: *const f32,
    dkp: usize,
    kc: usize,
    krows: R,
    j: usize,
    np: usize,
    part: *mut f32,
    sbuf: *mut f32,
    in_regs: bool,
) {
    let l = S::LANES;
    // SAFETY: forwarded from `score_tile`: positions `j..j + np` are in the
    // block, `c < kc` vectors per row, rows `0..RT` of q, `part` and `sbuf`.
    unsafe {
        // The first vector initialises the accumulators (kc >= 1 since
        // dk >= 1): a multiply, not an FMA into a zeroed register.
        let mut acc = [[S::zero(); RT]; 4];
        let mut kv = [S::zero(); 4];
        for p in 0..np {
            kv[p] = krows.load::<S>(j + p, 0);
        }
        for i in 0..RT {
            let qv = S::load(q.add(i * dkp));
            for p in 0..np {
                acc[p][i] = S::mul(kv[p], qv);
            }
        }
        for c in 1..kc {
            for p in 0..np {
                kv[p] = krows.load::<S>(j + p, c);
            }
            for i in 0..RT {
                let qv = S::load(q.add(i * dkp + c * l));
                for p in 0..np {
                    acc[p][i] = S::fma(kv[p], qv, acc[p][i]);
                }
            }
        }
        if in_regs {
            // Dot product e = i * np + p, LANES of them per reduction.
            let total = RT * np;
            let mut e0 = 0;
            while e0 < total {
                let mut v = [S::zero(); 16];
                for (e, x) in v.iter_mut().enumerate().take(l.min(total - e0)) {
                    let idx = e0 + e;
                    *x = acc[idx % np][idx / np];
                }
                let mut sums = [0f32; 16];
                S::store(sums.as_mut_ptr(), S::transpose_sum(&v));
                // The `np` dot products of a row are adjacent in `sums` and
                // in `sbuf`: copy them a row at a time.
                let n = l.min(total - e0);
                let mut e = 0;
                while e < n {
                    let idx = e0 + e;
                    let run = (np - idx % np).min(n - e);
                    core::ptr::copy_nonoverlapping(
                        sums.as_ptr().add(e),
                        sbuf.add((idx / np) * BLOCK + j + idx % np),
                        run,
                    );
                    e += run;
                }
                e0 += l;
            }
        } else {
            for i in 0..RT {
                for p in 0..np {
                    S::store(part.add((i * BLOCK + j + p) * l), acc[p][i]);
                }
            }
        }
    }
}

/// Replaces each score `s` of the block by `cap · tanh(s / cap)` (before the
/// softmax masks positions `>= nb`, so padding stays `-inf`).
#[inline(always)]
unsafe fn softcap<S: Simd>(rows: usize, nb: usize, sbuf: *mut f32, cap: f32) {
    let lanes = S::LANES;
    let used = nb.div_ceil(lanes) * lanes;
    // SAFETY: register arithmetic under the tier's features.
    let (c, inv) = unsafe { (S::splat(cap), S::splat(1.0 / cap)) };
    for i in 0..rows {
        let mut s = 0;
        while s < used {
            // SAFETY: row `i < rows` of `sbuf` holds BLOCK >= used floats.
            unsafe {
                let p = sbuf.add(i * BLOCK + s);
                S::store(p, S::mul(c, tanh::<S>(S::mul(S::load(p), inv))));
            }
            s += lanes;
        }
    }
}

/// `0, 1, 2, …` as f32, for position offsets inside a vector.
static IOTA: [f32; 16] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
];

/// Adds the ALiBi bias `slope[row] · d` to score `j` of each row of the
/// block, `d = off[row] + start + j` the integer distance of the position
/// from the row's query (`start`: the block's offset in the call).
///
/// The distance is formed first, exactly (integers below 2^24 are exact in
/// f32), and multiplied once, fused with the add: forming the term as
/// `slope · (pos0 − p) + slope · j` instead rounds two products of up to
/// `slope · L` that cancel near the query, where the weights are largest
/// (1.025x the lse bound at `slope · 255 ≈ 193`).
#[inline(always)]
unsafe fn alibi<S: Simd>(
    rows: usize,
    nb: usize,
    sbuf: *mut f32,
    slope: *const f32,
    off: *const f32,
    start: usize,
) {
    let lanes = S::LANES;
    let used = nb.div_ceil(lanes) * lanes;
    for i in 0..rows {
        // SAFETY: `slope` and `off` hold `rows` floats; row `i` of `sbuf`
        // holds BLOCK >= used floats; IOTA holds 16 >= LANES floats.
        unsafe {
            let kv = S::splat(*slope.add(i));
            let iota = S::load(IOTA.as_ptr());
            let mut s = 0;
            while s < used {
                let p = sbuf.add(i * BLOCK + s);
                let d = S::add(S::splat(*off.add(i) + (start + s) as f32), iota);
                S::store(p, S::fma(kv, d, S::load(p)));
                s += lanes;
            }
        }
    }
}

/// The score transforms of a block, in the contract's order: softcap,
/// then ALiBi, then the additive bias; run out of line through
/// [`Simd::out_of_line`].
///
/// Precondition of `run`: `sbuf` holds `rows` rows of BLOCK floats,
/// `start + nb <= a.n`, and `a`'s ALiBi / bias pointers are valid as
/// `ChunkArgs` states.
struct Transform<'a> {
    a: &'a ChunkArgs,
    rows: usize,
    nb: usize,
    sbuf: *mut f32,
    start: usize,
}

impl SimdOp for Transform<'_> {
    type Out = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        let Transform {
            a,
            rows,
            nb,
            sbuf,
            start,
        } = self;
        // SAFETY: the struct's precondition, forwarded from the kernel.
        unsafe {
            if a.softcap > 0.0 {
                softcap::<S>(rows, nb, sbuf, a.softcap);
            }
            if !a.alibi_slope.is_null() {
                alibi::<S>(rows, nb, sbuf, a.alibi_slope, a.alibi_off, start);
            }
            if !a.bias.is_null() {
                add_bias::<S>(a, nb, sbuf, start);
            }
        }
    }
}

/// Adds the caller's bias (times `log2 e`) to the block's scores; reads
/// only the `nb` valid positions of each row.
///
/// A bias below [`LOGIT_FLOOR`] (`-2^127`) counts as the floor: its
/// product with `log2 e` would overflow to `-inf` (`finfo(float32).min`,
/// Hugging Face's mask value, is `-f32::MAX`), and a row whose positions
/// all carry it must average them, as in f64, not see nothing. `-inf`
/// itself stays `-inf`: `max` lifts it to the floor and the term
/// `(b - max(b, floor)) · 2^-40` puts it back (that term is `-inf` for
/// `-inf`, 0 for a bias above the floor, and for a finite bias below it
/// at most `1.6e26`, under half an ulp of the floored score `≈ -2.45e38`).
/// The caller rejects `+inf` and NaN before the step.
#[inline(always)]
unsafe fn add_bias<S: Simd>(a: &ChunkArgs, nb: usize, sbuf: *mut f32, start: usize) {
    let lanes = S::LANES;
    // SAFETY: register arithmetic under the tier's features.
    let (l2e, floor, tiny) = unsafe {
        (
            S::splat(std::f32::consts::LOG2_E),
            S::splat(LOGIT_FLOOR),
            S::splat(2f32.powi(-40)),
        )
    };
    for i in 0..a.rows {
        // SAFETY: per `ChunkArgs`, row `i`'s bias is valid for positions
        // `start..start + nb` (< n); the partial load reads `nb - s` of
        // them at most; row `i` of `sbuf` holds BLOCK floats.
        unsafe {
            let row = a.bias.add(
                (i / a.bias_r) * a.bias_token_stride + (i % a.bias_r) * a.bias_head_stride + start,
            );
            let mut s = 0;
            while s < nb {
                let p = sbuf.add(i * BLOCK + s);
                let b = S::load_f32(row.add(s), nb - s);
                let lo = S::max(b, floor);
                let x = S::fma(lo, l2e, S::load(p));
                S::store(p, S::fma(S::sub(b, lo), tiny, x));
                s += lanes;
            }
        }
    }
}

/// How far (log2 units) a score may rise above a row's reference max `m`
/// before the row is rescaled: weights `p = 2^(s - m)` stay below `2^8`,
/// far from overflow, and rows whose max creeps up block after block (ALiBi
/// scores rise towards the query) rescale a few times per call instead of
/// every block. `m` is then a reference point, not always the exact max;
/// `m + log2 l` (the lse) and the merges are the same either way.
const RESCALE_SLACK: f32 = 8.0;

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
unsafe fn softmax_update<S: Simd>(
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
            a.m,
            a.l,
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

/// `acc[row] += sum_j p[row][j] * V[j]` for `j < nb`.
#[inline(always)]
unsafe fn accumulate<S: Simd, R: RowSource>(
    rows: usize,
    nb: usize,
    pbuf: *const f32,
    vrows: R,
    dvp: usize,
    vc: usize,
    acc: *mut f32,
    ahead: &Ahead,
) {
    let mut i0 = 0;
    while i0 < rows {
        let rt = if vrows.row_at_a_time() {
            wide_pv_rows(S::ACC, vc, S::ROW_TILE)
        } else {
            S::ROW_TILE
        }
        .min(rows - i0);
        // SAFETY: rows `i0..i0 + rt` exist in `pbuf` and `acc`.
        unsafe {
            let pt = pbuf.add(i0 * BLOCK);
            let at = acc.add(i0 * dvp);
            match rt {
                8 => accumulate_rows::<S, R, 8>(nb, pt, vrows, dvp, vc, at, ahead),
                7 => accumulate_rows::<S, R, 7>(nb, pt, vrows, dvp, vc, at, ahead),
                6 => accumulate_rows::<S, R, 6>(nb, pt, vrows, dvp, vc, at, ahead),
                5 => accumulate_rows::<S, R, 5>(nb, pt, vrows, dvp, vc, at, ahead),
                4 => accumulate_rows::<S, R, 4>(nb, pt, vrows, dvp, vc, at, ahead),
                3 => accumulate_rows::<S, R, 3>(nb, pt, vrows, dvp, vc, at, ahead),
                2 => accumulate_rows::<S, R, 2>(nb, pt, vrows, dvp, vc, at, ahead),
                _ => accumulate_rows::<S, R, 1>(nb, pt, vrows, dvp, vc, at, ahead),
            }
        }
        i0 += rt;
    }
}

#[inline(always)]
unsafe fn accumulate_rows<S: Simd, R: RowSource, const RT: usize>(
    nb: usize,
    pbuf: *const f32,
    vrows: R,
    dvp: usize,
    vc: usize,
    acc: *mut f32,
    ahead: &Ahead,
) {
    let ct = acc_cols(S::ACC, RT);
    let mut c0 = 0;
    if ct > 4 {
        // Few rows: the widest column tile that fits the registers and what
        // is left of the row (`Dv = 256` on AVX-512 with one row: one
        // 16-wide pass; `Dv = 128` with two rows: one 8-wide pass).
        while c0 < vc {
            let rem = vc - c0;
            let w = if ct >= 16 && rem >= 16 {
                16
            } else if ct >= 8 && rem >= 8 {
                8
            } else if rem >= 4 {
                4
            } else {
                1
            };
            // SAFETY: vectors `c0..c0 + w` lie inside each row (`w <= rem`).
            unsafe {
                match w {
                    16 => accumulate_tile::<S, R, RT, 16>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                    8 => accumulate_tile::<S, R, RT, 8>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                    4 => accumulate_tile::<S, R, RT, 4>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                    _ => accumulate_tile::<S, R, RT, 1>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                }
            }
            c0 += w;
        }
        return;
    }
    while c0 + ct <= vc {
        // SAFETY: vectors `c0..c0 + ct` lie inside each row.
        unsafe {
            match ct {
                4 => accumulate_tile::<S, R, RT, 4>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                3 => accumulate_tile::<S, R, RT, 3>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                2 => accumulate_tile::<S, R, RT, 2>(nb, pbuf, vrows, dvp, c0, acc, ahead),
                _ => accumulate_tile::<S, R, RT, 1>(nb, pbuf, vrows, dvp, c0, acc, ahead),
            }
        }
        c0 += ct;
    }
    while c0 < vc {
        // SAFETY: as above, one vector.
        unsafe { accumulate_tile::<S, R, RT, 1>(nb, pbuf, vrows, dvp, c0, acc, ahead) };
        c0 += 1;
    }
}

#[inline(always)]
unsafe fn accumulate_tile<S: Simd, R: RowSource, const RT: usize, const CT: usize>(
    nb: usize,
    pbuf: *const f32,
    vrows: R,
    dvp: usize,
    c0: usize,
    acc: *mut f32,
    ahead: &Ahead,
) {
    let l = S::LANES;
    // SAFETY: the caller checked that vectors `c0..c0 + CT` are inside each
    // row; rows `0..RT` of `pbuf` (BLOCK floats) and `acc` (`dvp`) exist;
    // V rows `j < nb` are inside the block.
    unsafe {
        let mut t = [[S::zero(); CT]; RT];
        for i in 0..RT {
            for c in 0..CT {
                t[i][c] = S::load(acc.add(i * dvp + (c0 + c) * l));
            }
        }
        for j in 0..nb {
            ahead.tick(1);
            let mut vv = [S::zero(); CT];
            for c in 0..CT {
                vv[c] = vrows.load::<S>(j, c0 + c);
            }
            for i in 0..RT {
                let p = S::splat(*pbuf.add(i * BLOCK + j));
                for c in 0..CT {
                    t[i][c] = S::fma(p, vv[c], t[i][c]);
                }
            }
        }
        for i in 0..RT {
            for c in 0..CT {
                S::store(acc.add(i * dvp + (c0 + c) * l), t[i][c]);
            }
        }
    }
}
