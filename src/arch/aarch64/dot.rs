//! `bf16-dot` on the `neon` tier: Armv8.6 BF16 `bfdot` ([`DotUnit`]) on
//! bf16 K rows, for CPUs with FEAT_BF16 (Neoverse V1/V2/N2, Apple M2 and
//! later, Graviton 3 and 4).
//!
//! **Scores.** `bfdot` multiplies pairs of bf16 values and adds each
//! pair's two products into one f32 lane, so a K row and a query row
//! packed as bf16 give 4 lanes of partial sums per 8 values. The tile is
//! up to 4 query rows by 4 positions (16 accumulators): each K vector is
//! loaded once for the rows of the tile, each query vector once for its 4
//! positions, and the 4 accumulators of a row fold into its 4 scores with
//! two rounds of pairwise adds (`faddp`), no scalar reduction. A head
//! dimension that is not a multiple of 8 reads its last piece of each K
//! row through a zero-padded copy in the unit's work area.
//!
//! **Precision classes.** `Fast` rounds q to bf16 (2⁻⁹ relative); `Exact`
//! splits each f32 q value into bf16 `hi + mid + lo` (all 24 significant
//! bits), three exact products per K value accumulated in f32. `bfdot`
//! itself flushes subnormal inputs and outputs to zero and rounds its
//! intermediate sums to odd (FEAT_EBF16 CPUs may round to nearest), a
//! rounding error of the same order as the f32 kernels' FMAs; the property
//! tests hold it to their tolerance. P·V stays on f32 FMA with exact
//! weights in both classes.

// The unit's helpers take the kernel's raw pointers and sizes explicitly.
#![allow(clippy::too_many_arguments)]

use core::arch::aarch64::*;
use core::arch::asm;

use super::super::kernel::unit::{decode_unit, scratch_len_unit, DotUnit};
use super::super::{ChunkArgs, Elem, BLOCK};
use super::neon::Neon;

/// Query rows of a score tile.
const ROWS: usize = 4;
/// Positions of a score tile.
const COLS: usize = 4;

/// Whether the CPU has FEAT_BF16 (`bfdot`).
pub(crate) fn has_bf16_dot() -> bool {
    std::arch::is_aarch64_feature_detected!("bf16")
}

/// `acc[l] += a[2l]·b[2l] + a[2l+1]·b[2l+1]` on bf16 pairs.
///
/// # Safety
/// The CPU has FEAT_BF16 (the caller runs under a `bf16` target feature).
#[inline(always)]
unsafe fn bfdot(acc: float32x4_t, a: uint16x8_t, b: uint16x8_t) -> float32x4_t {
    let mut acc = acc;
    // SAFETY: register-only instruction of FEAT_BF16, which the caller
    // guarantees; no memory, stack or flags touched.
    unsafe {
        asm!(
            "bfdot {acc:v}.4s, {a:v}.8h, {b:v}.8h",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `bfdot` on bf16 K; `EXACT` selects the precision class.
#[derive(Clone, Copy)]
pub(crate) struct Bf16Dot<const EXACT: bool>;

impl<const EXACT: bool> Bf16Dot<EXACT> {
    /// bf16 parts of each q value.
    const PARTS: usize = if EXACT { 3 } else { 1 };
}

/// `dk` rounded up to whole 8-value vectors.
const fn dk8(dk: usize) -> usize {
    dk.div_ceil(8) * 8
}

impl<const EXACT: bool> DotUnit<Neon> for Bf16Dot<EXACT> {
    type K = half::bf16;

    fn q_len(rows: usize, dk: usize) -> usize {
        // bf16 values, two per f32.
        (rows * Self::PARTS * dk8(dk)).div_ceil(2)
    }

    fn work_len(_dk: usize, _dv: usize) -> usize {
        // The last piece of each of a block's K rows, 8 bf16 each.
        BLOCK * 8 / 2
    }

    /// Row `i`, part `p`: `dk8` bf16 from bf16 index `(i · PARTS + p) ·
    /// dk8`, value `d` the `p`-th bf16 part of `q[d]` (zero past `dk`).
    #[inline(always)]
    unsafe fn pack_q(q: *const f32, rows: usize, dk: usize, out: *mut f32) {
        let (dkp, n8) = (super::super::pad(dk), dk8(dk));
        let out = out.cast::<u16>();
        for i in 0..rows {
            for d in 0..n8 {
                // SAFETY: q rows hold `dkp >= dk` f32; `out` holds
                // `q_len(rows, dk)` f32, i.e. `rows · PARTS · dk8` bf16.
                unsafe {
                    let mut x = if d < dk { *q.add(i * dkp + d) } else { 0.0 };
                    for p in 0..Self::PARTS {
                        let h = half::bf16::from_f32(x);
                        *out.add((i * Self::PARTS + p) * n8 + d) = h.to_bits();
                        // The remainder, exact in f32.
                        x -= h.to_f32();
                    }
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn scores(
        qp: *const f32,
        rows: usize,
        dk: usize,
        k: *const half::bf16,
        stride: usize,
        nb: usize,
        sbuf: *mut f32,
        work: *mut f32,
    ) {
        let (n8, full) = (dk8(dk), dk / 8);
        let k = k.cast::<u16>();
        let q = qp.cast::<u16>();
        let tail = work.cast::<u16>();
        // SAFETY: K rows `j < nb` hold `dk` values; `work` holds BLOCK
        // pieces of 8 bf16 (`work_len`); the packed query as `pack_q`
        // wrote it; `sbuf` rows hold BLOCK f32 and `j0 + COLS <= BLOCK`.
        unsafe {
            if full < n8 / 8 {
                for j in 0..nb {
                    let src = k.add(j * stride + full * 8);
                    let dst = tail.add(j * 8);
                    for d in 0..8 {
                        *dst.add(d) = if d < dk - full * 8 { *src.add(d) } else { 0 };
                    }
                }
            }
            let mut j0 = 0;
            while j0 < nb {
                // Positions past `nb` repeat the last one (their scores
                // are not read).
                let j = |x: usize| (j0 + x).min(nb - 1);
                let rows_at = [0, 1, 2, 3].map(|x| k.add(j(x) * stride));
                let tails = [0, 1, 2, 3].map(|x| tail.add(j(x) * 8).cast_const());
                let mut i0 = 0;
                while i0 < rows {
                    let nr = (rows - i0).min(ROWS);
                    let qt = q.add(i0 * Self::PARTS * n8);
                    let out = sbuf.add(i0 * BLOCK + j0);
                    macro_rules! tile {
                        ($($n:literal)*) => {
                            match nr {
                                $($n => score_tile::<$n, EXACT>(qt, n8, full, rows_at, tails, out),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    tile!(1 2 3 4);
                    i0 += nr;
                }
                j0 += COLS;
            }
        }
    }
}

/// The scores of `NR` query rows (`q`, `PARTS` parts of `n8` bf16 each
/// per row) against `COLS` K rows (`full` whole 8-value vectors at
/// `k[x]`, then, where `n8 > 8 · full`, the zero-padded last piece at
/// `tails[x]`), written to `out` (rows BLOCK f32 apart, `COLS` each).
///
/// # Safety
/// As [`DotUnit::scores`]; the CPU has FEAT_BF16.
#[inline(always)]
unsafe fn score_tile<const NR: usize, const EXACT: bool>(
    q: *const u16,
    n8: usize,
    full: usize,
    k: [*const u16; COLS],
    tails: [*const u16; COLS],
    out: *mut f32,
) {
    let parts = Bf16Dot::<EXACT>::PARTS;
    // SAFETY: loads inside the rows and pieces the caller describes;
    // register arithmetic under neon and bf16.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); COLS]; NR];
        let mut step = |kv: [uint16x8_t; COLS], c: usize| {
            for (r, ar) in acc.iter_mut().enumerate() {
                for p in 0..parts {
                    let qv = vld1q_u16(q.add((r * parts + p) * n8 + c * 8));
                    for (a, kx) in ar.iter_mut().zip(kv) {
                        *a = bfdot(*a, qv, kx);
                    }
                }
            }
        };
        for c in 0..full {
            step(k.map(|p| vld1q_u16(p.add(c * 8))), c);
        }
        if n8 > full * 8 {
            step(tails.map(|p| vld1q_u16(p)), full);
        }
        for (r, a) in acc.iter().enumerate() {
            let s = vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3]));
            vst1q_f32(out.add(r * BLOCK), s);
        }
    }
}

/// The `bf16-dot` kernel of the `neon` tier, bf16 K, V of type `V`.
///
/// # Safety
/// The CPU has FEAT_BF16; the preconditions of [`ChunkArgs`] hold, with
/// `scratch` at least [`unit_scratch_len`] f32.
#[target_feature(enable = "neon,bf16")]
pub(crate) unsafe fn bf16_entry<V: Elem, const EXACT: bool>(a: &ChunkArgs) {
    // SAFETY: features enabled on this function; forwarded preconditions.
    unsafe { decode_unit::<Neon, Bf16Dot<EXACT>, V>(a) }
}

/// f32 of scratch the `bf16-dot` kernels need.
pub(crate) fn unit_scratch_len(rows: usize, dk: usize, dv: usize) -> usize {
    scratch_len_unit::<Neon, Bf16Dot<true>>(rows, dk, dv)
}

/// Multiply-adds per second of `bfdot` on one thread (a multiply and an
/// add counted as two: 16 per instruction), from eight independent
/// accumulators; `None` without FEAT_BF16.
pub(crate) fn bf16_dot_ops(iters: usize) -> Option<f64> {
    if !has_bf16_dot() {
        return None;
    }
    // SAFETY: FEAT_BF16 was detected above.
    Some(unsafe { bf16_dot_loop(iters) })
}

/// The loop of [`bf16_dot_ops`].
///
/// # Safety
/// The CPU has FEAT_BF16.
#[target_feature(enable = "neon,bf16")]
unsafe fn bf16_dot_loop(iters: usize) -> f64 {
    // SAFETY: register arithmetic under neon and bf16.
    unsafe {
        let a = vreinterpretq_u16_f32(vdupq_n_f32(1.0));
        let b = vreinterpretq_u16_f32(vdupq_n_f32(0.5));
        let mut acc = [vdupq_n_f32(0.0); 8];
        let t = std::time::Instant::now();
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = bfdot(*x, a, b);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let mut sum = vdupq_n_f32(0.0);
        for x in acc {
            sum = vaddq_f32(sum, x);
        }
        core::hint::black_box(vaddvq_f32(sum));
        (iters * 8 * 16) as f64 / secs.max(1e-9)
    }
}
