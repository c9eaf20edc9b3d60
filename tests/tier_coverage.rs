//! Fails when a tier this machine supports, or one named in
//! `GQA_KERNELS_REQUIRE` (e.g. `avx512,avx2`), was not exercised through
//! the public API: no silent skips.

mod common;

use common::{tiers, Layout, Spec};
use gqa_kernels::{active_tier, Dtype, Shape, Tier};

#[test]
fn every_supported_and_required_tier_runs() {
    let want = tiers(); // panics if GQA_KERNELS_REQUIRE names a missing tier
    assert!(want.contains(&Tier::Scalar));
    #[cfg(target_arch = "aarch64")]
    assert!(want.contains(&Tier::Neon), "NEON is baseline on aarch64");
    let before: Vec<u64> = want.iter().map(|t| t.runs()).collect();
    // A small sweep through the same entry point the other tests use.
    for (i, dt) in Dtype::ALL.into_iter().enumerate() {
        let d = if dt.block().is_some() { 96 } else { 80 };
        let mut s = Spec::new(Shape::new(2, 8, 2, d, dt), vec![33, 5]);
        s.layout = [Layout::Blgd, Layout::Bgld, Layout::Padded][i % 3];
        let c = s.build();
        for &t in &want {
            c.check(t).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    for (t, b) in want.iter().zip(&before) {
        assert!(
            t.runs() >= b + Dtype::ALL.len() as u64,
            "tier {t} was not exercised ({} runs)",
            t.runs() - b
        );
    }
    eprintln!(
        "tiers exercised: {:?}; active (default) tier: {:?}",
        want.iter()
            .map(|t| (t.name(), t.runs()))
            .collect::<Vec<_>>(),
        active_tier()
    );
}

#[test]
fn best_tier_is_the_expected_one_when_asked() {
    // CI sets GQA_KERNELS_EXPECT_BEST to the best tier the CPU it runs
    // on should get (avx2 on a CPU without AVX-512, real or emulated), to
    // prove the dispatcher picks it.
    if let Ok(name) = std::env::var("GQA_KERNELS_EXPECT_BEST") {
        let want: Tier = name.parse().unwrap();
        assert_eq!(Tier::best(), want);
    }
}

/// `GQA_KERNELS_ISA` is read once per process, so it is tested in child
/// processes of this test binary.
#[cfg(target_arch = "x86_64")]
#[test]
fn isa_environment_variable_forces_or_fails() {
    if std::env::var("GQA_KERNELS_CHILD").is_ok() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let run = |isa: &str| {
        std::process::Command::new(&exe)
            .args([
                "--exact",
                "child_reports_active_tier",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("GQA_KERNELS_ISA", isa)
            .env("GQA_KERNELS_CHILD", "1")
            .output()
            .unwrap()
    };
    let out = run("scalar");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("ACTIVE=Ok(Scalar)"), "{text}");
    let out = run("sse9");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("UnknownTier"), "{text}");
    let out = run("neon");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("TierUnavailable"), "{text}");
}

#[test]
fn child_reports_active_tier() {
    if std::env::var("GQA_KERNELS_CHILD").is_ok() {
        println!("ACTIVE={:?}", active_tier());
        // A plan without an explicit tier follows the variable.
        let p = gqa_kernels::Plan::new(&Shape::new(1, 2, 1, 8, Dtype::F32), &Default::default());
        println!("PLAN={:?}", p.map(|p| p.kernel_name()));
    }
}
