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

mod accumulate;
mod phases;
mod scores;
mod softmax;
mod transform;
// The dot-product units' block loop (x86-64 and aarch64 units).
pub(crate) mod unit;

use accumulate::*;
use phases::*;
use scores::*;
use softmax::*;
// The AMX unit (x86_64) reuses the softmax phase and the final fold.
#[cfg(target_arch = "x86_64")]
pub(crate) use softmax::block_softmax;
pub(crate) use softmax::fold_sums;
use transform::*;

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
    /// Where the block's rows lie in memory, to hint into L1 ([`Touch`]);
    /// nothing for scratch copies.
    fn touch(self) -> Touch {
        Touch::NONE
    }
    /// Vector `c` of row `j` of the current block, as f32.
    unsafe fn load<S: Simd>(self, j: usize, c: usize) -> S::V;
}

/// A block's V rows in the cache, hinted into L1 a row at a time while the
/// block's K rows are scored ([`ChunkArgs::touch_v`]): `bytes` from row
/// `j`'s address `base + j * stride`. Hints only: any address is allowed.
#[derive(Clone, Copy)]
pub(super) struct Touch {
    base: *const u8,
    stride: usize,
    bytes: usize,
}

impl Touch {
    const NONE: Touch = Touch {
        base: std::ptr::null(),
        stride: 0,
        bytes: 0,
    };

    /// Whether there is anything to hint.
    #[inline(always)]
    fn on(self) -> bool {
        self.bytes > 0
    }

    /// Hints rows `j..j + n`.
    #[inline(always)]
    fn rows(self, j: usize, n: usize) {
        for i in j..j + n {
            crate::arch::prefetch_span_l1(self.base.wrapping_add(i * self.stride), self.bytes);
        }
    }
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
    fn touch(self) -> Touch {
        Touch {
            base: self.base.cast(),
            stride: self.stride * core::mem::size_of::<E>(),
            bytes: self.row_bytes(),
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
///
/// Longer than 100 lines on purpose: it is the block loop and the scratch
/// layout every phase shares (each block's work is `BlockStep::run`), and
/// half of it is the comments that say why the loop is shaped as it is;
/// split, the layout would be computed in one function and trusted in
/// another.
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
    let k = a.k.ptr.cast::<K>();
    let v = a.v.ptr.cast::<V>();
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
    let transformed = a.transforms.any();
    // Phases run inline in the specialised instances and in the generic
    // kernels of the float types, out of line in the generic kernels of
    // pairs with a quantized type (see `phase`). Instrumented builds
    // (feature `generic-only`: fuzzing, sanitizers, Miri) run every generic
    // kernel's phases out of line: fused, the nine float pairs of a tier
    // took LLVM 15-23 s each under AddressSanitizer, in one codegen unit.
    // So does the library's unit-test build, which has no instances either.
    let inline =
        D::FIXED || !(K::QUANTIZED || V::QUANTIZED || cfg!(any(test, feature = "generic-only")));

    let mut start = 0;
    while start < a.n {
        let nb = BLOCK.min(a.n - start);
        // SAFETY: rows `start..start + nb` are `< n`, so each K/V row read is
        // inside the range the driver validated; every scratch/state offset
        // is inside the buffers described in `ChunkArgs`.
        unsafe {
            let kc_rows = CacheRows {
                base: k.add(start * a.k.stride),
                stride: a.k.stride,
                d: dk,
            };
            let vc_rows = CacheRows {
                base: v.add(start * a.v.stride),
                stride: a.v.stride,
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
    // SAFETY: `a.state.l` has `rows` floats; `lsum` was set up above.
    unsafe { fold_sums::<S>(rows, a.state.l, lsum) };
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
            rows,
            nb,
            start,
            dkp,
            kc,
            part,
            sbuf,
            ..
        } = self;
        // This block's share of the spans to hint, spread over the
        // positions of the phase that reads the same kind of rows.
        let (i, n) = (start / BLOCK, a.n.div_ceil(BLOCK));
        let ahead_k = Ahead::new(a.ahead[0].share(i, n), nb);
        // The block's own V rows, into L1 while its K rows are scored.
        let touch = if a.touch_v {
            vrows.touch()
        } else {
            Touch::NONE
        };
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
                    touch,
                },
            );
            ahead_k.finish();
            self.after_scores::<S, K, V, VR>(vrows, true);
        }
    }

    /// The phases after the scores: int8 K row scales, score transforms,
    /// softmax, and (`pv`) int8 V row scales and P·V on f32 FMA. A
    /// dot-product unit ([`unit`]) computes the scores itself and, for
    /// the V types it takes, P·V too (`pv` false).
    ///
    /// # Safety
    /// As [`BlockStep::run`], with the block's scores in `sbuf`.
    #[inline(always)]
    unsafe fn after_scores<S: Simd, K: Elem, V: Elem, VR: RowSource>(&self, vrows: VR, pv: bool) {
        let &BlockStep {
            a,
            inline,
            transformed,
            rows,
            nb,
            start,
            dvp,
            vc,
            sbuf,
            lsum,
            ..
        } = self;
        let (i, n) = (start / BLOCK, a.n.div_ceil(BLOCK));
        // SAFETY: the struct's precondition, forwarded from the kernel.
        unsafe {
            if K::ROW_SCALE {
                scale_positions::<S>(rows, nb, sbuf, a.k.scale, a.k.scale_stride, start);
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
            if !pv {
                return;
            }
            if V::ROW_SCALE {
                scale_positions::<S>(rows, nb, sbuf, a.v.scale, a.v.scale_stride, start);
            }
            let ahead_v = Ahead::new(a.ahead[1].share(i, n), nb);
            phase::<S, _>(
                inline,
                Accumulate {
                    rows,
                    nb,
                    pbuf: sbuf,
                    vrows,
                    dvp,
                    vc,
                    acc: a.state.acc,
                    ahead: &ahead_v,
                },
            );
            ahead_v.finish();
        }
    }
}
