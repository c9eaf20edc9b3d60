//! The `Fast` precision class on model-like data (q, K and V ~ N(0, 1) per
//! element, scale 1/√Dk, long caches), against the f64 reference and
//! against llama.cpp's CPU attention path on the same inputs (q rounded to
//! f16 for the K·q dot product, the V sum kept in an f16 accumulator, as
//! its flash-attention kernel does for f16 V): `Fast` must never be less
//! accurate than that path. `Exact` is checked on the same data against
//! the documented tolerance. Units this CPU lacks are skipped, with a note.

mod common;

use common::{Rng, UNIT_KERNELS};
use gqa_kernels::reference::tolerance;
use gqa_kernels::{bf16, f16, Dtype, KvBuffer, KvTensor, Options, Plan, Precision, Shape};

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut Rng) -> f32 {
    let u1 = f64::from(rng.uniform(0.0, 1.0)).max(1e-12);
    let u2 = f64::from(rng.uniform(0.0, 1.0));
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// A cache of `rows` rows of `d` values of type `t` and the values it
/// holds (what the kernels and both comparisons read).
fn cache(t: Dtype, x: &[f32], d: usize) -> (KvBuffer, Vec<f32>) {
    match t {
        Dtype::Int8 => {
            let mut vals = Vec::with_capacity(x.len());
            let mut scales = Vec::new();
            let mut held = Vec::with_capacity(x.len());
            for row in x.chunks(d) {
                let m = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                let s = if m > 0.0 { m / 127.0 } else { 1.0 };
                scales.push(s);
                for v in row {
                    let c = (v / s).round().clamp(-127.0, 127.0) as i8;
                    vals.push(c);
                    held.push(f32::from(c) * s);
                }
            }
            (KvBuffer::int8(&vals, &scales), held)
        }
        Dtype::F16 => (
            KvBuffer::from_f32(t, x, d).unwrap(),
            x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        ),
        Dtype::Bf16 => (
            KvBuffer::from_f32(t, x, d).unwrap(),
            x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        ),
        _ => unreachable!("the units' types"),
    }
}

/// The f64 reference of one query row over `l` positions.
fn reference(q: &[f32], k: &[f32], v: &[f32], l: usize, scale: f64) -> Vec<f64> {
    let (dk, dv) = (q.len(), v.len() / l);
    let s: Vec<f64> = (0..l)
        .map(|j| {
            scale
                * (0..dk)
                    .map(|d| f64::from(q[d]) * f64::from(k[j * dk + d]))
                    .sum::<f64>()
        })
        .collect();
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
    let sum: f64 = w.iter().sum();
    (0..dv)
        .map(|d| (0..l).map(|j| w[j] * f64::from(v[j * dv + d])).sum::<f64>() / sum)
        .collect()
}

/// llama.cpp's CPU path for one query row: q rounded to f16, each score
/// an f32 dot product, the online softmax in f32, and the V sum in f16
/// (every update rounded to f16).
fn llama_path(q: &[f32], k: &[f32], v: &[f32], l: usize, scale: f32) -> Vec<f64> {
    let (dk, dv) = (q.len(), v.len() / l);
    let q16: Vec<f32> = q.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    let mut acc = vec![f16::ZERO; dv];
    let (mut m, mut sum) = (f32::NEG_INFINITY, 0f32);
    for j in 0..l {
        let s = scale * (0..dk).map(|d| q16[d] * k[j * dk + d]).sum::<f32>();
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > m {
            ms = (m - s).exp();
            m = s;
            for a in acc.iter_mut() {
                *a = f16::from_f32(a.to_f32() * ms);
            }
        } else {
            vs = (s - m).exp();
        }
        sum = sum * ms + vs;
        for (d, a) in acc.iter_mut().enumerate() {
            *a = f16::from_f32(a.to_f32() + v[j * dv + d] * vs);
        }
    }
    acc.iter().map(|a| f64::from(a.to_f32() / sum)).collect()
}

fn max_err(a: impl IntoIterator<Item = f64>, b: &[f64]) -> f64 {
    a.into_iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn fast_is_never_less_accurate_than_llama_cpp_bf16_k() {
    against_llama_cpp(&[(Dtype::Bf16, Dtype::Bf16), (Dtype::Bf16, Dtype::F16)]);
}

/// Two tests, so that the harness runs them side by side (under qemu-user
/// the L = 32768 cases take most of a minute).
#[test]
fn fast_is_never_less_accurate_than_llama_cpp_int8_k() {
    against_llama_cpp(&[(Dtype::Int8, Dtype::F16), (Dtype::Int8, Dtype::Bf16)]);
}

/// Each unit on the (K, V) type `pairs` it takes, at L 512, 4096 and 32768.
fn against_llama_cpp(pairs: &[(Dtype, Dtype)]) {
    let (h, dk, dv) = (4, 128, 128);
    let scale = 1.0 / (dk as f32).sqrt();
    let mut ran = 0;
    for (tier, unit) in UNIT_KERNELS {
        if let Some(why) = unit
            .unavailable_on(tier)
            .or((!tier.is_available()).then_some("no tier"))
        {
            eprintln!("note: {} on {tier} skipped: {why}", unit.name());
            continue;
        }
        for &(kt, vt) in pairs {
            if !unit.runs(tier, kt, vt) {
                continue;
            }
            for (l, seed) in [(512, 1u64), (4096, 2), (32768, 3)] {
                let mut rng = Rng(seed);
                let q: Vec<f32> = (0..h * dk).map(|_| normal(&mut rng)).collect();
                let kx: Vec<f32> = (0..l * dk).map(|_| normal(&mut rng)).collect();
                let vx: Vec<f32> = (0..l * dv).map(|_| normal(&mut rng)).collect();
                let (kb, kh) = cache(kt, &kx, dk);
                let (vb, vh) = cache(vt, &vx, dv);
                let shape = Shape::new(1, h, 1, dk, kt)
                    .with_dtypes(kt, vt)
                    .with_max_kv_len(l);
                let ktv = KvTensor::bgld(kb.data(), l, 1, dk);
                let vtv = KvTensor::bgld(vb.data(), l, 1, dv);
                let mut want = Vec::new();
                let mut llama = Vec::new();
                for r in 0..h {
                    let qr = &q[r * dk..(r + 1) * dk];
                    want.extend(reference(qr, &kh, &vh, l, f64::from(scale)));
                    llama.extend(llama_path(qr, &kh, &vh, l, scale));
                }
                let llama_err = max_err(llama, &want);
                for precision in [Precision::Exact, Precision::Fast] {
                    let opts = Options::default()
                        .with_tier(tier)
                        .with_unit(unit)
                        .with_precision(precision);
                    let plan = Plan::new(&shape, &opts).unwrap();
                    let mut out = vec![0f32; h * dv];
                    plan.decode(&q, &ktv, &vtv, &[l], &mut out, None).unwrap();
                    let err = max_err(out.iter().map(|&x| f64::from(x)), &want);
                    let name = plan.kernel_name();
                    eprintln!(
                        "{name}: L {l}: max |out - ref| {err:.3e} ({}), llama.cpp's path {llama_err:.3e}",
                        precision.name()
                    );
                    match precision {
                        Precision::Fast => assert!(
                            err <= llama_err,
                            "{name}, L {l}: error {err:e} above llama.cpp's path {llama_err:e}"
                        ),
                        Precision::Exact => {
                            let (tol, _) = tolerance(kt, vt);
                            let vmax = vh.iter().fold(0f64, |a, x| a.max(f64::from(x.abs())));
                            for (g, w) in out.iter().zip(&want) {
                                assert!(
                                    tol.accepts(f64::from(*g), *w, vmax),
                                    "{name}, L {l}: {g} vs reference {w}"
                                );
                            }
                        }
                    }
                    ran += 1;
                }
            }
        }
    }
    eprintln!("{ran} unit runs checked");
}
