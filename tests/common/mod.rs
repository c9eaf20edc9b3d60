//! Shared test helpers: deterministic case generation and the comparison of
//! a tier's output with the f64 reference under the documented tolerance.
#![allow(dead_code)]

mod capi;
mod case;
mod run;
mod store;

// Only the binaries with a C ABI test use these.
#[allow(unused_imports)]
pub use capi::*;
pub use case::*;
pub use store::*;

use gqa_kernels::quant::{self, BlockQ8_0, Fp8, Quants, QK8_0};
use gqa_kernels::reference::{self, tolerance, Reference, Tolerance};
use gqa_kernels::{
    bf16, f16, Batch, Bias, Blocks, Dtype, KvBuffer, KvCache, KvData, KvPages, KvTensor, Options,
    PagedKv, Plan, Positions, Precision, PrefixGroups, RingKv, Shape, Tier, Unit,
};

/// SplitMix64: a tiny deterministic generator for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The tiers every test covers: all this CPU supports. Fails (panics) when
/// `GQA_KERNELS_REQUIRE` names a tier that is not among them.
pub fn tiers() -> Vec<Tier> {
    let have = Tier::available();
    if let Ok(req) = std::env::var("GQA_KERNELS_REQUIRE") {
        for name in req.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let t: Tier = name
                .parse()
                .unwrap_or_else(|e| panic!("GQA_KERNELS_REQUIRE: {e}"));
            assert!(
                have.contains(&t),
                "GQA_KERNELS_REQUIRE names {t}, which this CPU lacks (have {have:?})"
            );
        }
    }
    have
}

/// Every (tier, unit) with kernels other than f32 FMA.
pub const UNIT_KERNELS: [(Tier, Unit); 6] = [
    (Tier::Avx512, Unit::AmxBf16),
    (Tier::Avx512, Unit::Bf16Dot),
    (Tier::Avx512, Unit::Int8Dot),
    (Tier::Avx2, Unit::Int8Dot),
    (Tier::Neon, Unit::Bf16Dot),
    (Tier::Neon, Unit::Int8Dot),
];

/// The kernels on other units than f32 FMA that this CPU and process can
/// run, with each precision class: the tile kernels where AMX is usable,
/// the dot-product kernels where the CPU has the instructions. Prints,
/// once per test binary, which were skipped and why.
pub fn units() -> Vec<(Tier, Unit, Precision)> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let mut v = Vec::new();
    let mut skipped = Vec::new();
    for (tier, unit) in UNIT_KERNELS {
        match unit.unavailable_on(tier) {
            None if tier.is_available() => {
                v.extend([Precision::Exact, Precision::Fast].map(|p| (tier, unit, p)));
            }
            why => skipped.push(format!(
                "{} on {}: {}",
                unit.name(),
                tier.name(),
                why.unwrap_or("the tier is not available")
            )),
        }
    }
    if !skipped.is_empty() {
        SAID.call_once(|| eprintln!("note: unit kernels skipped: {}", skipped.join("; ")));
    }
    v
}

/// The usable units other than f32 FMA ([`units`]) that have kernels for
/// the case's K and V types.
fn units_for(case: &Case) -> Vec<(Tier, Unit, Precision)> {
    let (k, v) = (case.shape.k_dtype, case.shape.v_dtype);
    units()
        .into_iter()
        .filter(|&(t, u, _)| u.runs(t, k, v))
        .collect()
}

/// Checks a case on every tier, and on every other unit that has kernels
/// for its types; panics with every failure.
pub fn check_all(case: &Case) {
    let want = case.reference();
    let errs: Vec<String> = tiers()
        .into_iter()
        .filter_map(|t| case.check_against(t, &want).err())
        .chain(
            units_for(case)
                .into_iter()
                .filter_map(|(t, u, p)| case.check_unit(t, u, p, &want).err()),
        )
        .collect();
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// Checks a case on every unit other than f32 FMA that has kernels for
/// its types ([`units`]); panics with every failure.
pub fn check_units(case: &Case) {
    check_units_threads(case, &[]);
}

/// [`check_units`], and that each of those units gives bitwise the same
/// result for each of `threads` as for one thread.
pub fn check_units_threads(case: &Case, threads: &[usize]) {
    let run = units_for(case);
    if !run.is_empty() {
        units_against(case, &case.reference(), &run, threads);
    }
}

/// The checks of [`check_units_threads`] on units `run`, against `want`.
fn units_against(
    case: &Case,
    want: &Reference,
    run: &[(Tier, Unit, Precision)],
    threads: &[usize],
) {
    let mut errs = Vec::new();
    for &(t, u, p) in run {
        let (base, base_lse, name) = case.run_on(t, u, p, 1).unwrap();
        let tol = case.unit_tolerance(u, p);
        if let Err(e) = case.compare_within(name, &base, &base_lse, want, tol) {
            errs.push(e);
        }
        for &n in threads {
            let (o, l, _) = case.run_on(t, u, p, n).unwrap();
            let same = o
                .iter()
                .chain(&l)
                .zip(base.iter().chain(&base_lse))
                .all(|(a, b)| a.to_bits() == b.to_bits());
            if !same {
                errs.push(format!(
                    "{name}: {n} threads differ from 1 (layout {:?}, shape {:?}, lens {:?})",
                    case.layout, case.shape, case.seq_lens
                ));
            }
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// Checks that every tier gives bitwise the same result for each thread
/// count as for one thread, and that the one-thread result matches the
/// reference; then the same on every other unit ([`check_units_threads`]).
pub fn check_thread_invariance(case: &Case, threads: &[usize]) {
    let want = case.reference();
    for t in tiers() {
        let (base, base_lse, name) = case.run(t, 1).unwrap();
        case.compare(name, &base, &base_lse, &want)
            .unwrap_or_else(|e| panic!("{e}"));
        for &n in threads {
            let (o, l, _) = case.run(t, n).unwrap();
            let same = o.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits())
                && l.iter()
                    .zip(&base_lse)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{name}: {n} threads differ from 1 (layout {:?}, shape {:?}, lens {:?})",
                case.layout, case.shape, case.seq_lens
            );
        }
    }
    units_against(case, &want, &units_for(case), threads);
}

/// Asserts that `a` and `b` give bitwise the same output and lse on every
/// tier (f32 FMA) and every other unit with kernels for their types, with
/// one and two threads; `what` names the pair in a failure.
pub fn assert_same_bits(a: &Case, b: &Case, what: &str) {
    let (k, v) = (a.shape.k_dtype, a.shape.v_dtype);
    let mut runs: Vec<(Tier, Unit, Precision)> = tiers()
        .into_iter()
        .map(|t| (t, Unit::F32Fma, Precision::Exact))
        .collect();
    runs.extend(units().into_iter().filter(|&(t, u, _)| u.runs(t, k, v)));
    for (t, u, p) in runs {
        for threads in [1, 2] {
            let x = a.run_on(t, u, p, threads).unwrap();
            let y = b.run_on(t, u, p, threads).unwrap();
            let same =
                x.0.iter()
                    .chain(&x.1)
                    .zip(y.0.iter().chain(&y.1))
                    .all(|(m, n)| m.to_bits() == n.to_bits());
            assert!(
                same,
                "{}: {what}, {:?}, {threads} threads: the two differ",
                x.2, a.layout
            );
        }
    }
}

/// Six layouts the workload suites run: head- and token-major, padded,
/// pages of 16 (`[page, G, D]`) and of 5 (`[G, page, D]`), a ring.
pub fn six_layouts() -> [Layout; 6] {
    [
        Layout::Bgld,
        Layout::Blgd,
        Layout::Padded,
        Layout::Paged {
            page: 16,
            head_major: false,
        },
        Layout::Paged {
            page: 5,
            head_major: true,
        },
        Layout::Ring { extra: 5 },
    ]
}

/// Sparse position lists of runs with gaps: `lists` lists (one per
/// sequence, or per (sequence, KV head) when `lists` is a multiple of the
/// sequences), list `i` over sequence `i * lens.len() / lists`, starting
/// at `i * start_step` with a run of `1 + i * run_step` positions; runs
/// then grow by one up to `max_run` and start over at 1, each followed by
/// one position left out. The lists and their offsets.
pub fn gapped_runs(
    lens: &[usize],
    lists: usize,
    start_step: u32,
    run_step: u32,
    max_run: u32,
) -> (Vec<u32>, Vec<usize>) {
    let (mut pos, mut off) = (Vec::new(), vec![0]);
    for list in 0..lists {
        let len = lens[list * lens.len() / lists] as u32;
        let (mut p, mut run) = (list as u32 * start_step, 1 + list as u32 * run_step);
        while p < len {
            let e = (p + run).min(len);
            pos.extend(p..e);
            p = e + 1;
            run = run % max_run + 1;
        }
        off.push(pos.len());
    }
    (pos, off)
}
