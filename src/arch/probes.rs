//! Bodies of the machine probes (bandwidth and FMA rate), written once over
//! [`Simd`] like the kernel and run on a tier through its `with` entry.

use super::{Elem, Simd, SimdOp};
use crate::tier::Tier;

struct Sum<'a>(&'a [f32]);

impl SimdOp for Sum<'_> {
    type Out = f32;
    #[inline(always)]
    unsafe fn run<S: Simd>(self) -> f32 {
        let x = self.0;
        let l = S::LANES;
        let step = 4 * l;
        let whole = x.len() / step * step;
        let p = x.as_ptr();
        // SAFETY: every load reads `LANES` floats at an offset `< whole`
        // (a multiple of `4 * LANES` within the slice).
        unsafe {
            let mut acc = [S::zero(); 4];
            let mut i = 0;
            while i < whole {
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = S::add(*a, S::load(p.add(i + u * l)));
                }
                i += step;
            }
            let v = S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3]));
            S::reduce_add(v) + x[whole..].iter().sum::<f32>()
        }
    }
}

struct Fma(usize);

const CHAINS: usize = 12;

impl SimdOp for Fma {
    type Out = f64;
    #[inline(always)]
    unsafe fn run<S: Simd>(self) -> f64 {
        // SAFETY: register arithmetic only.
        unsafe {
            let mut acc = [S::splat(1.0); CHAINS];
            let a = S::splat(std::hint::black_box(0.999_999));
            let b = S::splat(std::hint::black_box(1e-7));
            for _ in 0..self.0 {
                for x in acc.iter_mut() {
                    *x = S::fma(*x, a, b);
                }
            }
            let mut s = S::zero();
            for x in acc {
                s = S::add(s, x);
            }
            std::hint::black_box(S::reduce_add(s));
        }
        (self.0 * CHAINS * S::LANES * 2) as f64
    }
}

/// Widens `passes` times the `d` values at `row` (L1-resident), one FMA
/// per vector into 8 independent accumulators: the least work a kernel
/// does per value it reads.
struct Widen<E> {
    row: *const E,
    d: usize,
    passes: usize,
}

impl<E: Elem> SimdOp for Widen<E> {
    type Out = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        let vecs = self.d / S::LANES;
        // SAFETY: vectors `c < d / LANES` lie inside the row of `d` values
        // (`d` is a multiple of 8 vectors and of 32 for q8_0 rows).
        unsafe {
            let q = S::splat(std::hint::black_box(0.5));
            let mut acc = [S::zero(); 8];
            for _ in 0..self.passes {
                let mut c = 0;
                while c + 8 <= vecs {
                    for (u, a) in acc.iter_mut().enumerate() {
                        // A row that ends with this vector: the load's
                        // `valid` folds to `LANES`, so it compiles to the
                        // full-vector load of a kernel instance (whose `d`
                        // is a constant) instead of carrying the tail check
                        // of a run-time `d` (on `avx2` that kept the
                        // accumulators on the stack: 5 G values/s of f32
                        // on a Zen 3 core, a sixth of its FMA rate).
                        let v = E::load::<S>(self.row, c + u, (c + u + 1) * S::LANES);
                        *a = S::fma(v, q, *a);
                    }
                    c += 8;
                }
            }
            let mut s = S::zero();
            for x in acc {
                s = S::add(s, x);
            }
            std::hint::black_box(S::reduce_add(s));
        }
    }
}

fn on_tier<O: SimdOp>(tier: Tier, op: O) -> O::Out {
    let tier = if tier.is_available() {
        tier
    } else {
        Tier::Scalar
    };
    // SAFETY: `tier` is available on this CPU (checked above).
    unsafe { super::with_tier(tier, op) }
}

/// Sum of `x`, vectorised on `tier` (the bandwidth probe's body).
pub(crate) fn sum(tier: Tier, x: &[f32]) -> f32 {
    on_tier(tier, Sum(x))
}

/// Runs `iters` rounds of independent FMA chains on `tier`; returns FLOPs done.
pub(crate) fn fma(tier: Tier, iters: usize) -> f64 {
    on_tier(tier, Fma(iters))
}

/// Widens `passes` times the row `x` (a multiple of 128 values) on `tier`.
pub(crate) fn widen<E: Elem>(tier: Tier, x: &[E], values: usize, passes: usize) {
    on_tier(
        tier,
        Widen {
            row: x.as_ptr(),
            d: values,
            passes,
        },
    )
}
