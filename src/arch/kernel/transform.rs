//! Score transforms between the scores and the softmax: softcap, ALiBi,
//! an additive bias.

use super::*;

/// Replaces each score `s` of the block by `cap · tanh(s / cap)` (before the
/// softmax masks positions `>= nb`, so padding stays `-inf`).
#[inline(always)]
pub(super) unsafe fn softcap<S: Simd>(rows: usize, nb: usize, sbuf: *mut f32, cap: f32) {
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
pub(super) static IOTA: [f32; 16] = [
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
pub(super) unsafe fn alibi<S: Simd>(
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
pub(super) struct Transform<'a> {
    pub(super) a: &'a ChunkArgs,
    pub(super) rows: usize,
    pub(super) nb: usize,
    pub(super) sbuf: *mut f32,
    pub(super) start: usize,
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
            if a.transforms.softcap > 0.0 {
                softcap::<S>(rows, nb, sbuf, a.transforms.softcap);
            }
            if !a.transforms.alibi_slope.is_null() {
                alibi::<S>(
                    rows,
                    nb,
                    sbuf,
                    a.transforms.alibi_slope,
                    a.transforms.alibi_off,
                    start,
                );
            }
            if !a.transforms.bias.is_null() {
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
pub(super) unsafe fn add_bias<S: Simd>(a: &ChunkArgs, nb: usize, sbuf: *mut f32, start: usize) {
    let lanes = S::LANES;
    // SAFETY: register arithmetic under the tier's features.
    let (l2e, floor, tiny) = unsafe {
        (
            S::splat(std::f32::consts::LOG2_E),
            S::splat(LOGIT_FLOOR),
            S::splat(2f32.powi(-40)),
        )
    };
    let t = &a.transforms;
    for i in 0..a.rows {
        // SAFETY: per `ChunkArgs`, row `i`'s bias is valid for positions
        // `start..start + nb` (< n); the partial load reads `nb - s` of
        // them at most; row `i` of `sbuf` holds BLOCK floats.
        unsafe {
            let row = t.bias.add(
                (i / t.bias_r) * t.bias_token_stride + (i % t.bias_r) * t.bias_head_stride + start,
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
