//! The dot-product units of the `neon` tier ([`DotUnit`]): `bf16-dot`,
//! Armv8.6 BF16 `bfdot` on bf16 K rows, for CPUs with FEAT_BF16 (Neoverse
//! V1/V2/N2, Apple M2 and later, Graviton 3 and 4); and `int8-dot`, Armv8.2
//! `sdot` (FEAT_DotProd: Neoverse N1 and later, Apple M1 and later) on
//! int8 K rows against the query quantized to int8 parts.
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
//!
//! **int8.** `sdot` adds the four products of signed bytes `4l..4l + 4`
//! of its operands into i32 lane `l`, so the tile is the same as bf16's:
//! up to 4 rows by 4 positions of 16-byte steps. The query is quantized
//! per row as on x86-64 (`q ≈ s · (c₀ + c₁/128 + c₂/128²)`, `s =
//! max|q|/127`; `Fast` two parts, `Exact` three), each part with its own
//! integer accumulators (so a tile holds fewer rows: 4 / parts, at least
//! 1), converted to f32 and scaled by the part's step at the end. Integer
//! sums are exact; the K row scale is applied per position afterwards, as
//! on the f32 path. Signed × signed needs no offset, unlike `vpdpbusd`.

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

/// Whether the CPU has FEAT_DotProd (`sdot`).
pub(crate) fn has_int8_dot() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// `acc[l] += Σ_{t<4} a[4l+t]·b[4l+t]` on signed bytes.
///
/// # Safety
/// The CPU has FEAT_DotProd (the caller runs under a `dotprod` target
/// feature).
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only instruction of FEAT_DotProd, which the caller
    // guarantees; no memory, stack or flags touched.
    unsafe {
        asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
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
            // The assembler takes the instruction in any function this
            // inlines into (the features are checked at run time).
            ".arch_extension bf16",
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
        let q = qp.cast::<u16>();
        // SAFETY: K rows `j < nb` hold `dk` values; `work` holds BLOCK
        // pieces of 8 bf16 (`work_len`); the packed query as `pack_q`
        // wrote it; `sbuf` rows hold BLOCK f32 and `j0 + COLS <= BLOCK`.
        unsafe {
            let tail = work.cast::<u16>();
            let k = k.cast::<u16>();
            for (i0, nr, j0, at, tails) in tiles(k, stride, nb, dk, 8, tail, rows, ROWS) {
                let qt = q.add(i0 * Self::PARTS * n8);
                let out = sbuf.add(i0 * BLOCK + j0);
                macro_rules! tile {
                    ($($n:literal)*) => {
                        match nr {
                            $($n => score_tile::<$n, EXACT>(qt, n8, full, at, tails, out),)*
                            _ => unreachable!(),
                        }
                    };
                }
                tile!(1 2 3 4);
            }
        }
    }
}

/// The score tiles of a block of `nb` K rows (`stride` elements apart),
/// in order: `(i0, nr, j0, at, tails)` for `nr <= rt` query rows from
/// `i0` by `COLS` positions from `j0`, `at[x]` the K row of position
/// `j0 + x` and `tails[x]` its last piece (see [`tiles`]). Positions past
/// `nb` repeat the last one (their scores are not read).
struct Tiles<E> {
    k: *const E,
    stride: usize,
    nb: usize,
    w: usize,
    tail: *const E,
    rows: usize,
    rt: usize,
    i0: usize,
    j0: usize,
}

impl<E> Iterator for Tiles<E> {
    type Item = (usize, usize, usize, [*const E; COLS], [*const E; COLS]);

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.j0 >= self.nb || self.rows == 0 {
            return None;
        }
        let j = |x: usize| (self.j0 + x).min(self.nb - 1);
        let at = [0, 1, 2, 3].map(|x| self.k.wrapping_add(j(x) * self.stride));
        let tails = [0, 1, 2, 3].map(|x| self.tail.wrapping_add(j(x) * self.w));
        let nr = (self.rows - self.i0).min(self.rt);
        let item = (self.i0, nr, self.j0, at, tails);
        self.i0 += nr;
        if self.i0 == self.rows {
            self.i0 = 0;
            self.j0 += COLS;
        }
        Some(item)
    }
}

/// The score tiles ([`Tiles`]) of a block of `nb` K rows (`dk` valid
/// elements each) for `rows` query rows in tiles of `rt`, vectors of `w`
/// elements: where `dk` is not a multiple of `w`, first copies the last
/// piece of each K row into `tail` (`w` elements per row, zero past `dk`).
///
/// # Safety
/// K rows `j < nb` hold `dk` elements; `tail` holds `nb · w` elements.
#[inline(always)]
unsafe fn tiles<E: Copy + Default>(
    k: *const E,
    stride: usize,
    nb: usize,
    dk: usize,
    w: usize,
    tail: *mut E,
    rows: usize,
    rt: usize,
) -> Tiles<E> {
    let full = dk / w;
    if !dk.is_multiple_of(w) {
        for j in 0..nb {
            // SAFETY: reads of the first `dk` elements of row `j < nb`,
            // writes of `w` elements of piece `j` of `tail`.
            unsafe {
                let src = k.add(j * stride + full * w);
                let dst = tail.add(j * w);
                for d in 0..w {
                    *dst.add(d) = if d < dk - full * w {
                        *src.add(d)
                    } else {
                        E::default()
                    };
                }
            }
        }
    }
    Tiles {
        k,
        stride,
        nb,
        w,
        tail,
        rows,
        rt,
        i0: 0,
        j0: 0,
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
        // One 8-value step of every row and position (a macro, not a
        // closure: it must inline into the kernel's loop).
        macro_rules! step {
            ($kv:expr, $c:expr) => {{
                let (kv, c): ([uint16x8_t; COLS], usize) = ($kv, $c);
                for (r, ar) in acc.iter_mut().enumerate() {
                    for p in 0..parts {
                        let qv = vld1q_u16(q.add((r * parts + p) * n8 + c * 8));
                        for (a, kx) in ar.iter_mut().zip(kv) {
                            *a = bfdot(*a, qv, kx);
                        }
                    }
                }
            }};
        }
        for c in 0..full {
            step!(k.map(|p| vld1q_u16(p.add(c * 8))), c);
        }
        if n8 > full * 8 {
            step!(tails.map(|p| vld1q_u16(p)), full);
        }
        for (r, a) in acc.iter().enumerate() {
            let s = vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3]));
            vst1q_f32(out.add(r * BLOCK), s);
        }
    }
}

/// `sdot` on int8 K; `EXACT` selects the precision class.
#[derive(Clone, Copy)]
pub(crate) struct Int8Dot<const EXACT: bool>;

impl<const EXACT: bool> Int8Dot<EXACT> {
    /// int8 parts of each q value, as on x86-64: two hold it to
    /// `2⁻¹⁵·max|q|`, three to `2⁻²²·max|q|`.
    const PARTS: usize = if EXACT { 3 } else { 2 };
    /// Ratio of consecutive parts' steps.
    const STEP: f32 = 128.0;
}

/// `dk` rounded up to whole 16-byte vectors.
const fn dk16(dk: usize) -> usize {
    dk.div_ceil(16) * 16
}

impl<const EXACT: bool> DotUnit<Neon> for Int8Dot<EXACT> {
    type K = i8;

    fn q_len(rows: usize, dk: usize) -> usize {
        // The codes (four per f32), then the steps of each row's parts.
        rows * Self::PARTS * dk16(dk) / 4 + rows * Self::PARTS
    }

    fn work_len(_dk: usize, _dv: usize) -> usize {
        // The last piece of each of a block's K rows, 16 bytes each.
        BLOCK * 16 / 4
    }

    /// Row `i`, part `p`: `dk16` codes from byte `(i · PARTS + p) · dk16`;
    /// its step is the f32 at `rows · PARTS · dk16 / 4 + i · PARTS + p`.
    #[inline(always)]
    unsafe fn pack_q(q: *const f32, rows: usize, dk: usize, out: *mut f32) {
        let (dkp, n16) = (super::super::pad(dk), dk16(dk));
        let codes = out.cast::<i8>();
        // SAFETY: q rows hold `dkp >= dk` f32; `out` holds `q_len(rows,
        // dk)` f32: the codes, then the steps.
        unsafe {
            let steps = out.add(rows * Self::PARTS * n16 / 4);
            for i in 0..rows {
                let row = core::slice::from_raw_parts(q.add(i * dkp), dk);
                let m = row.iter().fold(0f32, |a, x| a.max(x.abs()));
                let s0 = if m > 0.0 { m / 127.0 } else { 1.0 };
                for p in 0..Self::PARTS {
                    *steps.add(i * Self::PARTS + p) = s0 / Self::STEP.powi(p as i32);
                }
                for d in 0..n16 {
                    // The remainder after the earlier parts' codes.
                    let mut x = row.get(d).copied().unwrap_or(0.0);
                    for p in 0..Self::PARTS {
                        let s = *steps.add(i * Self::PARTS + p);
                        // |code| <= 127 (part 0) or 64 (the rest); clamp
                        // against rounding at the edge.
                        let c = (x / s).round_ties_even().clamp(-127.0, 127.0);
                        *codes.add((i * Self::PARTS + p) * n16 + d) = c as i8;
                        x -= c * s;
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
        k: *const i8,
        stride: usize,
        nb: usize,
        sbuf: *mut f32,
        work: *mut f32,
    ) {
        let (n16, full) = (dk16(dk), dk / 16);
        let codes = qp.cast::<i8>();
        let rt = (ROWS / Self::PARTS).max(1);
        // SAFETY: K rows `j < nb` hold `dk` bytes; `work` holds BLOCK
        // pieces of 16 bytes (`work_len`); the packed query as `pack_q`
        // wrote it; `sbuf` rows hold BLOCK f32 and `j0 + COLS <= BLOCK`.
        unsafe {
            let steps = qp.add(rows * Self::PARTS * n16 / 4);
            let tail = work.cast::<i8>();
            for (i0, nr, j0, at, tails) in tiles(k, stride, nb, dk, 16, tail, rows, rt) {
                let qt = codes.add(i0 * Self::PARTS * n16);
                let st = steps.add(i0 * Self::PARTS);
                let out = sbuf.add(i0 * BLOCK + j0);
                macro_rules! tile {
                    ($($n:literal)*) => {
                        match nr {
                            $($n => int8_tile::<$n, EXACT>(qt, st, n16, full, at, tails, out),)*
                            _ => unreachable!(),
                        }
                    };
                }
                tile!(1 2);
            }
        }
    }
}

/// The scores of `NR` query rows (`q`: `PARTS` parts of `n16` codes per
/// row; their steps at `st`) against `COLS` K rows (`full` whole 16-byte
/// vectors at `k[x]`, then, where `n16 > 16 · full`, the zero-padded last
/// piece at `tails[x]`), written to `out` (rows BLOCK f32 apart, `COLS`
/// each). `NR · PARTS <= 4`: 16 integer accumulators at most.
///
/// # Safety
/// As [`DotUnit::scores`]; the CPU has FEAT_DotProd.
#[inline(always)]
unsafe fn int8_tile<const NR: usize, const EXACT: bool>(
    q: *const i8,
    st: *const f32,
    n16: usize,
    full: usize,
    k: [*const i8; COLS],
    tails: [*const i8; COLS],
    out: *mut f32,
) {
    let parts = Int8Dot::<EXACT>::PARTS;
    // SAFETY: loads inside the rows and pieces the caller describes;
    // register arithmetic under neon and dotprod.
    unsafe {
        let mut acc = [[[vdupq_n_s32(0); COLS]; 3]; NR];
        // One 16-byte step of every row, part and position.
        macro_rules! step {
            ($kv:expr, $c:expr) => {{
                let (kv, c): ([int8x16_t; COLS], usize) = ($kv, $c);
                for (r, ar) in acc.iter_mut().enumerate() {
                    for (p, ap) in ar.iter_mut().enumerate().take(parts) {
                        let qv = vld1q_s8(q.add((r * parts + p) * n16 + c * 16));
                        for (a, kx) in ap.iter_mut().zip(kv) {
                            *a = sdot(*a, qv, kx);
                        }
                    }
                }
            }};
        }
        for c in 0..full {
            step!(k.map(|p| vld1q_s8(p.add(c * 16))), c);
        }
        if n16 > full * 16 {
            step!(tails.map(|p| vld1q_s8(p)), full);
        }
        for (r, ar) in acc.iter().enumerate() {
            let mut s = vdupq_n_f32(0.0);
            for (p, a) in ar.iter().enumerate().take(parts) {
                let sums = vpaddq_s32(vpaddq_s32(a[0], a[1]), vpaddq_s32(a[2], a[3]));
                s = vfmaq_n_f32(s, vcvtq_f32_s32(sums), *st.add(r * parts + p));
            }
            vst1q_f32(out.add(r * BLOCK), s);
        }
    }
}

/// The `int8-dot` kernel of the `neon` tier, int8 K, V of type `V`.
///
/// # Safety
/// The CPU has FEAT_DotProd; the preconditions of [`ChunkArgs`] hold,
/// with `scratch` at least [`unit_scratch_len`] f32.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn int8_entry<V: Elem, const EXACT: bool>(a: &ChunkArgs) {
    // SAFETY: features enabled on this function; forwarded preconditions.
    unsafe { decode_unit::<Neon, Int8Dot<EXACT>, V>(a) }
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

/// f32 of scratch the kernels of the `bf16-dot` (`bf16`) or `int8-dot`
/// unit need.
pub(crate) fn unit_scratch_len(bf16: bool, rows: usize, dk: usize, dv: usize) -> usize {
    if bf16 {
        scratch_len_unit::<Neon, Bf16Dot<true>>(rows, dk, dv)
    } else {
        scratch_len_unit::<Neon, Int8Dot<true>>(rows, dk, dv)
    }
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

/// Integer operations per second of `sdot` on one thread (a multiply and
/// an add counted as two: 32 per instruction), from eight independent
/// accumulators; `None` without FEAT_DotProd.
pub(crate) fn int8_dot_ops(iters: usize) -> Option<f64> {
    if !has_int8_dot() {
        return None;
    }
    // SAFETY: FEAT_DotProd was detected above.
    Some(unsafe { int8_dot_loop(iters) })
}

/// The loop of [`int8_dot_ops`].
///
/// # Safety
/// The CPU has FEAT_DotProd.
#[target_feature(enable = "neon,dotprod")]
unsafe fn int8_dot_loop(iters: usize) -> f64 {
    // SAFETY: register arithmetic under neon and dotprod.
    unsafe {
        let a = vdupq_n_s8(3);
        let b = vdupq_n_s8(-2);
        let mut acc = [vdupq_n_s32(0); 8];
        let t = std::time::Instant::now();
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = sdot(*x, a, b);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let mut sum = vdupq_n_s32(0);
        for x in acc {
            sum = vaddq_s32(sum, x);
        }
        core::hint::black_box(vaddvq_s32(sum));
        (iters * 8 * 32) as f64 / secs.max(1e-9)
    }
}
