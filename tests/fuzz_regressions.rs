//! The fuzz harnesses (`fuzz/harness/*.rs`, also the cargo-fuzz targets)
//! on stable `cargo test`: every input that ever failed, kept under
//! `fuzz/regressions/<target>/`, and a fixed set of pseudo-random inputs,
//! so a regression of a fuzz finding fails the ordinary test run.

mod common;

#[path = "../fuzz/harness/append.rs"]
mod append_harness;
#[path = "../fuzz/harness/capi.rs"]
mod capi_harness;
#[path = "../fuzz/harness/decode.rs"]
mod decode_harness;

fn replay(target: &str, run: fn(&[u8]), checked: &std::sync::atomic::AtomicUsize, random: usize) {
    let dir = format!("{}/fuzz/regressions/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let data = std::fs::read(&p).unwrap();
            eprintln!("{target}: {}", p.display());
            run(&data);
            n += 1;
        }
    }
    // Pseudo-random inputs of a few lengths (SplitMix64).
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ target.len() as u64;
    for i in 0..random {
        let len = [16usize, 64, 256, 1024][i % 4];
        let data: Vec<u8> = (0..len)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) as u8
            })
            .collect();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            // Keep the input for `fuzz/regressions/` (and for cargo fuzz).
            let path = std::env::temp_dir().join(format!("gqa-fuzz-{target}-{i}"));
            std::fs::write(&path, &data).unwrap();
            panic!(
                "{target}: random input {i} failed (saved to {})",
                path.display()
            );
        }
    }
    let c = checked.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{target}: {n} regression inputs, {random} random inputs, {c} fully checked");
    // The harness must not reject almost everything before its checks.
    assert!(
        c * 10 >= random,
        "{target}: only {c} of {random} random inputs were fully checked"
    );
}

#[test]
fn decode_harness() {
    replay("decode", decode_harness::run, &decode_harness::CHECKED, 300);
}

#[test]
fn capi_harness() {
    replay("capi", capi_harness::run, &capi_harness::CHECKED, 300);
}

#[test]
fn append_harness() {
    replay("append", append_harness::run, &append_harness::CHECKED, 300);
}
