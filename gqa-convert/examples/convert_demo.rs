//! What converting an MHA layer to GQA does to its attention output, before
//! any uptraining: the paper's mean-pooling against its two alternatives
//! (keep each group's first head; a random initialisation).
//!
//! A random MHA attention layer (H = 32 heads of D = 128 over
//! d_model = 4096; K/V projection weights N(0, 1/d_model), so keys and
//! values have unit variance) reads L random context tokens; one random
//! query per head attends to them. The K and V projections are converted
//! to G ∈ {16, 8, 4, 2, 1} KV heads with `gqa_convert`, the
//! context's keys and values are recomputed from the converted weights,
//! and this crate's decode kernels run both the MHA step (G = 32) and each
//! GQA step on the same queries. The table gives the relative error
//! ‖O_GQA − O_MHA‖ / ‖O_MHA‖ over all heads.
//!
//! Two layers are measured: one whose heads are independent (nothing is
//! shared, so no initialisation can keep much of the layer), and one whose
//! heads share most of their projection (each head's weight is
//! √ρ · W_shared + √(1−ρ) · W_own with ρ = 0.9, a stand-in for the
//! redundancy across heads that makes GQA work on trained models).
//!
//! `cargo run --release -p gqa-convert --example convert_demo [-- --tokens L]`

use gqa_convert::{pool_heads, Pooling, ProjShape};
use gqa_kernels::{Dtype, KvTensor, Options, Plan, Shape};

const H: usize = 32;
const D: usize = 128;
const DM: usize = 4096;

/// xorshift + Box-Muller: reproducible normal samples.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
    fn normals(&mut self, n: usize, sd: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * sd).collect()
    }
}

/// A projection of `H·D` rows of `DM`: each head `√ρ W_shared + √(1−ρ) W_own`.
fn projection(rng: &mut Rng, rho: f32) -> Vec<f32> {
    let sd = 1.0 / (DM as f32).sqrt();
    let shared = rng.normals(D * DM, sd);
    let mut w = rng.normals(H * D * DM, sd);
    let (a, b) = (rho.sqrt(), (1.0 - rho).sqrt());
    for (i, x) in w.iter_mut().enumerate() {
        *x = a * shared[i % (D * DM)] + b * *x;
    }
    w
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum()
}

/// Keys or values of the context under weight `w` (`heads·D` rows):
/// `[G, L, D]` (the `bgld` layout with B = 1).
fn project(w: &[f32], heads: usize, x: &[f32], l: usize) -> Vec<f32> {
    let mut out = vec![0f32; heads * l * D];
    for h in 0..heads {
        for j in 0..l {
            let xj = &x[j * DM..(j + 1) * DM];
            for d in 0..D {
                out[(h * l + j) * D + d] = dot(&w[(h * D + d) * DM..][..DM], xj);
            }
        }
    }
    out
}

fn attend(q: &[f32], k: &[f32], v: &[f32], groups: usize, l: usize) -> Vec<f32> {
    let shape = Shape::new(1, H, groups, D, Dtype::F32);
    let plan = Plan::new(&shape, &Options::default()).expect("plan");
    let mut out = vec![0f32; shape.out_elems()];
    plan.decode(
        q,
        &KvTensor::bgld(k, l, groups, D),
        &KvTensor::bgld(v, l, groups, D),
        &[l],
        &mut out,
        None,
    )
    .expect("decode");
    out
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

fn main() {
    let mut l = 128;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tokens" => {
                l = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--tokens L")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    println!(
        "# MHA -> GQA conversion before uptraining: relative error of the attention output\n\
         # H = {H}, D = {D}, d_model = {DM}, L = {l} context tokens, one query per head;\n\
         # ||O_GQA - O_MHA|| / ||O_MHA||, decoded with this crate's kernels"
    );
    for (label, rho) in [
        ("independent heads (rho = 0)", 0.0f32),
        ("heads sharing most of their projection (rho = 0.9)", 0.9),
    ] {
        let mut rng = Rng(0x5EED_0000 + (rho * 10.0) as u64);
        let wk = projection(&mut rng, rho);
        let wv = projection(&mut rng, rho);
        let x = rng.normals(l * DM, 1.0);
        let q = rng.normals(H * D, 1.0);
        let mha = attend(&q, &project(&wk, H, &x, l), &project(&wv, H, &x, l), H, l);
        println!("\n## {label}\n");
        println!("| G | r = H/G | mean-pool | first head | random init |");
        println!("|---|---|---|---|---|");
        for g in [16, 8, 4, 2, 1] {
            let shape = ProjShape {
                heads: H,
                head_dim: D,
                cols: DM,
            };
            let mut row = format!("| {g} | {} |", H / g);
            for how in [Some(Pooling::Mean), Some(Pooling::First), None] {
                let (k, v) = match how {
                    Some(p) => (
                        pool_heads(&wk, shape, g, p).expect("pool K"),
                        pool_heads(&wv, shape, g, p).expect("pool V"),
                    ),
                    None => {
                        let sd = 1.0 / (DM as f32).sqrt();
                        (rng.normals(g * D * DM, sd), rng.normals(g * D * DM, sd))
                    }
                };
                let out = attend(&q, &project(&k, g, &x, l), &project(&v, g, &x, l), g, l);
                row += &format!(" {:.3} |", rel_err(&out, &mha));
            }
            println!("{row}");
        }
    }
}
