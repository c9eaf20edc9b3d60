//! Unit tests of every tier's SIMD primitives against plain scalar code.

use super::{exp2, tanh, Simd, SimdOp};
use crate::dispatch::Tier;

/// Runs `f::<S>()` on every available tier.
fn each_tier<O: SimdOp + Clone>(op: O) -> Vec<(Tier, O::Out)> {
    let mut res = Vec::new();
    for t in Tier::available() {
        let o = op.clone();
        // SAFETY: `t` is available on this CPU.
        let out = unsafe {
            match t {
                #[cfg(target_arch = "x86_64")]
                Tier::Avx512 => super::x86_64::avx512::with(o),
                #[cfg(target_arch = "x86_64")]
                Tier::Avx2 => super::x86_64::avx2::with(o),
                #[cfg(target_arch = "aarch64")]
                Tier::Neon => super::aarch64::neon::with(o),
                _ => super::scalar::with(o),
            }
        };
        res.push((t, out));
    }
    res
}

fn ulp_diff(a: f32, b: f64) -> f64 {
    let b32 = b as f32;
    let ulp = (f32::from_bits(b32.to_bits() + 1) - b32).abs() as f64;
    (a as f64 - b).abs() / ulp
}

/// A vector function under test.
#[derive(Clone, Copy)]
enum Func {
    Exp2,
    Tanh,
}

/// Applies `Func` to every input, `LANES` at a time.
#[derive(Clone)]
struct Sweep(Func, Vec<f32>);
impl SimdOp for Sweep {
    type Out = Vec<f32>;
    unsafe fn run<S: Simd>(self) -> Vec<f32> {
        let mut out = vec![0f32; self.1.len()];
        for (i, chunk) in self.1.chunks(S::LANES).enumerate() {
            let mut tmp = vec![0f32; S::LANES];
            tmp[..chunk.len()].copy_from_slice(chunk);
            let mut res = vec![0f32; S::LANES];
            // SAFETY: `tmp` and `res` hold LANES floats.
            unsafe {
                let x = S::load(tmp.as_ptr());
                let y = match self.0 {
                    Func::Exp2 => exp2::<S>(x),
                    Func::Tanh => tanh::<S>(x),
                };
                S::store(res.as_mut_ptr(), y);
            }
            out[i * S::LANES..i * S::LANES + chunk.len()].copy_from_slice(&res[..chunk.len()]);
        }
        out
    }
}

#[test]
fn exp2_error_bound_on_every_tier() {
    let mut xs: Vec<f32> = (0..=200_000)
        .map(|i| -126.0 + 253.0 * i as f32 / 200_000.0)
        .collect();
    xs.extend([0.0, -0.5, 0.5, -1.0, 1.0, -126.0, 127.0, -1e-9, 1e-9]);
    for (tier, got) in each_tier(Sweep(Func::Exp2, xs.clone())) {
        for (x, y) in xs.iter().zip(&got) {
            let want = (*x as f64).exp2();
            let e = ulp_diff(*y, want);
            assert!(e <= 2.0, "{tier}: exp2({x}) = {y}, want {want} ({e} ulp)");
        }
    }
}

#[test]
fn exp2_special_inputs() {
    let xs = vec![f32::NEG_INFINITY, -127.0, -1000.0, -1e30, f32::NAN, 200.0];
    for (tier, got) in each_tier(Sweep(Func::Exp2, xs.clone())) {
        assert_eq!(got[0], 0.0, "{tier}: exp2(-inf)");
        assert_eq!(got[1], 0.0, "{tier}: exp2(-127)");
        assert_eq!(got[2], 0.0, "{tier}: exp2(-1000)");
        assert_eq!(got[3], 0.0, "{tier}: exp2(-1e30)");
        assert!(got[4].is_nan(), "{tier}: exp2(NaN) = {}", got[4]);
        assert!(
            got[5].is_finite() && got[5] > 1e38,
            "{tier}: exp2(200) saturates, got {}",
            got[5]
        );
    }
}

#[derive(Clone)]
struct TransposeSum(Vec<f32>);
impl SimdOp for TransposeSum {
    type Out = (usize, Vec<f32>);
    unsafe fn run<S: Simd>(self) -> (usize, Vec<f32>) {
        let mut res = vec![0f32; S::LANES];
        // SAFETY: the input holds 16*16 >= LANES*LANES floats.
        unsafe {
            let mut v = [S::zero(); 16];
            for (i, x) in v.iter_mut().enumerate().take(S::LANES) {
                *x = S::load(self.0.as_ptr().add(i * S::LANES));
            }
            S::store(res.as_mut_ptr(), S::transpose_sum(&v));
        }
        (S::LANES, res)
    }
}

#[test]
fn transpose_sum_on_every_tier() {
    let data: Vec<f32> = (0..256)
        .map(|i| ((i * 37 % 101) as f32) - 50.0 + (i as f32) * 0.25)
        .collect();
    for (tier, (lanes, got)) in each_tier(TransposeSum(data.clone())) {
        for (v, g) in got.iter().enumerate() {
            let want: f32 = data[v * lanes..(v + 1) * lanes].iter().sum();
            assert!(
                (g - want).abs() <= 1e-3,
                "{tier}: vector {v}: {g} vs {want}"
            );
        }
    }
}

#[derive(Clone)]
struct Loads {
    f: Vec<f32>,
    h: Vec<u16>,
    b: Vec<u16>,
}
impl SimdOp for Loads {
    type Out = Vec<(usize, Vec<f32>, Vec<f32>, Vec<f32>)>;
    unsafe fn run<S: Simd>(self) -> Self::Out {
        let mut res = Vec::new();
        for valid in 0..=S::LANES + 1 {
            // Exactly `valid` elements, at the end of their allocation, so a
            // read past them would be caught by Miri / ASan.
            let n = valid.min(S::LANES);
            let f: Vec<f32> = self.f[..n].to_vec();
            let h: Vec<u16> = self.h[..n].to_vec();
            let b: Vec<u16> = self.b[..n].to_vec();
            let mut of = vec![0f32; S::LANES];
            let mut oh = vec![0f32; S::LANES];
            let mut ob = vec![0f32; S::LANES];
            // SAFETY: each source holds `n = min(valid, LANES)` elements.
            unsafe {
                S::store(of.as_mut_ptr(), S::load_f32(f.as_ptr(), valid));
                S::store(oh.as_mut_ptr(), S::load_f16(h.as_ptr(), valid));
                S::store(ob.as_mut_ptr(), S::load_bf16(b.as_ptr(), valid));
            }
            res.push((valid, of, oh, ob));
        }
        res
    }
}

#[test]
fn converting_loads_on_every_tier() {
    let f: Vec<f32> = (0..16).map(|i| i as f32 * 1.5 - 7.0).collect();
    let h: Vec<u16> = f
        .iter()
        .map(|x| half::f16::from_f32(*x).to_bits())
        .collect();
    let b: Vec<u16> = f
        .iter()
        .map(|x| half::bf16::from_f32(*x).to_bits())
        .collect();
    // An f16 subnormal and bf16 extremes widen exactly too.
    let mut h2 = h.clone();
    h2[1] = 0x0001; // smallest f16 subnormal
    let mut b2 = b.clone();
    b2[2] = half::bf16::MAX.to_bits();
    for (tier, rows) in each_tier(Loads {
        f: f.clone(),
        h: h2.clone(),
        b: b2.clone(),
    }) {
        for (valid, of, oh, ob) in rows {
            for i in 0..of.len() {
                let (wf, wh, wb) = if i < valid {
                    (
                        f[i],
                        half::f16::from_bits(h2[i]).to_f32(),
                        half::bf16::from_bits(b2[i]).to_f32(),
                    )
                } else {
                    (0.0, 0.0, 0.0)
                };
                assert_eq!(of[i], wf, "{tier} f32 lane {i} valid {valid}");
                assert_eq!(oh[i], wh, "{tier} f16 lane {i} valid {valid}");
                assert_eq!(ob[i], wb, "{tier} bf16 lane {i} valid {valid}");
            }
        }
    }
}

#[test]
fn tanh_error_bound_on_every_tier() {
    let mut xs: Vec<f32> = (0..=200_000)
        .map(|i| -25.0 + 50.0 * i as f32 / 200_000.0)
        .collect();
    xs.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-8,
        -1e-8,
        1e-4,
        0.3,
        -0.7,
        44.0,
        -44.0,
        100.0,
        1e30,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    for (tier, got) in each_tier(Sweep(Func::Tanh, xs.clone())) {
        for (x, y) in xs.iter().zip(&got) {
            let want = (*x as f64).tanh();
            let e = (*y as f64 - want).abs();
            assert!(
                e <= 3e-7,
                "{tier}: tanh({x}) = {y}, want {want} (error {e:e})"
            );
            // Odd, and never above 1 in magnitude.
            assert!(y.abs() <= 1.0 && (y.signum() == x.signum() || *y == 0.0));
        }
    }
}
