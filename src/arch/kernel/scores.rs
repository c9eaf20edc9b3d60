//! Phase 2: scores `S = Q · Kᵀ` in register tiles.

use super::*;

/// Raw scores (log2 domain) of every row against the `nb` K rows of the
/// block, written to `sbuf[row * BLOCK + j]`; entries `j >= nb` are
/// unspecified.
#[inline(always)]
pub(super) unsafe fn scores<S: Simd, R: RowSource>(
    q: *const f32,
    rows: usize,
    dkp: usize,
    kc: usize,
    krows: R,
    nb: usize,
    part: *mut f32,
    sbuf: *mut f32,
    ahead: &Ahead,
    touch: Touch,
) {
    let mut i0 = 0;
    while i0 < rows {
        let rt = S::ROW_TILE.min(rows - i0);
        // The V rows are hinted once, along the first row tile.
        let touch = if i0 == 0 { touch } else { Touch::NONE };
        // SAFETY: rows `i0..i0 + rt` exist in `q` and `sbuf`.
        unsafe {
            let qt = q.add(i0 * dkp);
            let st = sbuf.add(i0 * BLOCK);
            match rt {
                8 => score_tile::<S, R, 8>(qt, dkp, kc, krows, nb, part, st, ahead, touch),
                7 => score_tile::<S, R, 7>(qt, dkp, kc, krows, nb, part, st, ahead, touch),
                6 => score_tile::<S, R, 6>(qt, dkp, kc, krows, nb, part, st, ahead, touch),
                5 => score_tile::<S, R, 5>(qt, dkp, kc, krows, nb, part, st, ahead, touch),
                4 => score_tile::<S, R, 4>(qt, dkp, kc, krows, nb, part, st, ahead, touch),
                3 => score_tile::<S, R, 3>(qt, dkp, kc, krows, nb, part, st, ahead, touch),
                2 => score_tile::<S, R, 2>(qt, dkp, kc, krows, nb, part, st, ahead, touch),
                _ => score_tile::<S, R, 1>(qt, dkp, kc, krows, nb, part, st, ahead, touch),
            }
        }
        i0 += rt;
    }
}

#[inline(always)]
pub(super) unsafe fn score_tile<S: Simd, R: RowSource, const RT: usize>(
    q: *const f32,
    dkp: usize,
    kc: usize,
    krows: R,
    nb: usize,
    part: *mut f32,
    sbuf: *mut f32,
    ahead: &Ahead,
    touch: Touch,
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
            score_positions::<S, R, RT>(q, dkp, kc, krows, nb, part, sbuf, 1, ahead, touch);
        } else {
            let np = tile_cols(S::ACC, RT);
            score_positions::<S, R, RT>(q, dkp, kc, krows, nb, part, sbuf, np, ahead, touch);
        }
    }
}

/// [`score_tile`] with `np` positions per step.
#[inline(always)]
pub(super) unsafe fn score_positions<S: Simd, R: RowSource, const RT: usize>(
    q: *const f32,
    dkp: usize,
    kc: usize,
    krows: R,
    nb: usize,
    part: *mut f32,
    sbuf: *mut f32,
    np: usize,
    ahead: &Ahead,
    touch: Touch,
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
        touch.rows(0, nb);
        // SAFETY: as below, for every position `j < nb`.
        unsafe { score_rows_hoisted::<S, R, RT>(q, dkp, kc, krows, nb, part) };
        j = nb;
    }
    // With hints to spread (the block's later K and V rows into L2,
    // `ahead`, and its own V rows into L1, `touch`), a step's worth goes
    // out per step. One loop with a loop-invariant branch: a second copy of
    // the loop for the hinted case made every kernel instance's score code
    // twice as large, and release builds 60-80 % slower.
    let hint = touch.on() || np == 1 && ahead.pending();
    while j + np <= nb {
        // SAFETY: positions `j..j + np` are `< nb`; q rows `0..RT` of the
        // tile exist; `part` holds `MAX_ROW_TILE * BLOCK` vectors and `sbuf`
        // RT rows of BLOCK floats.
        unsafe { score_group::<S, R, RT>(q, dkp, kc, krows, j, np, part, sbuf, in_regs) };
        // Without anything to hint, the one-position loop of wide rows
        // checks nothing more: a tick per position there made the
        // Gemma-2-9B step (D = 256, r = 2, [B, G, L, D], nothing to hint)
        // 18.5-20.1 ms against 14.8-16.3 without it (AMD Zen 4, 1 thread,
        // cold).
        if hint {
            ahead.tick(np);
            touch.rows(j, np);
        } else if np > 1 {
            ahead.tick(np);
        }
        j += np;
    }
    if hint {
        touch.rows(j, nb - j);
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
pub(super) const HOISTED_Q_VECS: usize = 32;

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
pub(super) unsafe fn score_rows_hoisted<S: Simd, R: RowSource, const RT: usize>(
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
pub(super) unsafe fn score_group<S: Simd, R: RowSource, const RT: usize>(
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
