//! Generates the kernel dispatch table from `kernels/decode.kernels`, with
//! the dtypes of the format registry (the `formats!` lines of
//! `src/formats/mod.rs`: name, element type, kind).
//!
//! The output (`$OUT_DIR/kernels.rs`) is deterministic, starts with a line
//! naming its source, is rewritten only when its content changes, and is
//! never committed. A malformed spec line fails the build with `file:line`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

const SPEC: &str = "kernels/decode.kernels";
const TIERS: [&str; 4] = ["avx512", "avx2", "neon", "scalar"];
const REGISTRY: &str = "src/formats/mod.rs";

/// A format of the registry.
struct Format {
    /// `Dtype` variant.
    variant: &'static str,
    /// Name in the kernel list and kernel names.
    name: &'static str,
    /// The element type the kernels read.
    elem: &'static str,
    /// Whether it is a block format (head dims multiples of 32).
    block: bool,
}

/// The registry's lines: `Variant code "name" elem, Kind;` inside
/// `formats! { ... }` (doc comments skipped).
fn registry() -> Vec<Format> {
    let text = std::fs::read_to_string(REGISTRY).unwrap_or_else(|e| panic!("{REGISTRY}: {e}"));
    let body = text
        .split_once("\nformats! {\n")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .unwrap_or_else(|| panic!("{REGISTRY}: no `formats! {{ ... }}` table"))
        .0;
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    let formats: Vec<Format> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [variant, _code, name, elem, kind]
                    if elem.ends_with(',') && kind.ends_with(';') =>
                {
                    Format {
                        variant: leak(variant),
                        name: leak(name.trim_matches('"')),
                        elem: leak(elem.trim_end_matches(',')),
                        block: kind == "Block;",
                    }
                }
                _ => panic!("{REGISTRY}: malformed registry line `{l}`"),
            }
        })
        .collect();
    assert!(!formats.is_empty(), "{REGISTRY}: empty registry");
    formats
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Instance {
    tier: &'static str,
    k: &'static str,
    v: &'static str,
    dk: usize,
    dv: usize,
    rows: usize,
}

fn fail(line: usize, msg: impl std::fmt::Display) -> ! {
    panic!("{SPEC}:{line}: {msg}");
}

fn pick(line: usize, what: &str, word: &str, allowed: &[&'static str]) -> &'static str {
    allowed
        .iter()
        .copied()
        .find(|a| *a == word)
        .unwrap_or_else(|| {
            fail(
                line,
                format!("unknown {what} `{word}` (expected one of {allowed:?})"),
            )
        })
}

fn numbers(line: usize, what: &str, field: &str, max: usize) -> Vec<usize> {
    field
        .split(',')
        .map(|w| match w.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => fail(line, format!("{what} `{w}` is not an integer in 1..={max}")),
        })
        .collect()
}

fn parse(text: &str, formats: &[Format]) -> Vec<Instance> {
    let dtypes: Vec<&'static str> = formats.iter().map(|f| f.name).collect();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let body = raw.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let f: Vec<&str> = body.split_whitespace().collect();
        if f.len() != 6 {
            fail(
                line,
                format!("expected 6 fields (tier k v dk dv rows), found {}", f.len()),
            );
        }
        let tiers: Vec<_> = f[0]
            .split(',')
            .map(|w| pick(line, "tier", w, &TIERS))
            .collect();
        let ks: Vec<_> = f[1]
            .split(',')
            .map(|w| pick(line, "dtype", w, &dtypes))
            .collect();
        let vs: Option<Vec<_>> = (f[2] != "=").then(|| {
            f[2].split(',')
                .map(|w| pick(line, "dtype", w, &dtypes))
                .collect()
        });
        let dks = numbers(line, "dk", f[3], 4096);
        let dvs = (f[4] != "=").then(|| numbers(line, "dv", f[4], 4096));
        let rows = numbers(line, "rows", f[5], 1024);
        for &tier in &tiers {
            for &k in &ks {
                for &v in vs.as_deref().unwrap_or(&[k]) {
                    for &dk in &dks {
                        for &dv in dvs.as_deref().unwrap_or(&[dk]) {
                            for &r in &rows {
                                for (t, d) in [(k, dk), (v, dv)] {
                                    let block = formats.iter().any(|f| f.name == t && f.block);
                                    if block && d % 32 != 0 {
                                        fail(
                                            line,
                                            format!("{t} head dim {d} is not a multiple of 32"),
                                        );
                                    }
                                }
                                let inst = Instance {
                                    tier,
                                    k,
                                    v,
                                    dk,
                                    dv,
                                    rows: r,
                                };
                                if !seen.insert(inst.clone()) {
                                    fail(line, format!("duplicate instance {}", name(&inst)));
                                }
                                out.push(inst);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn dtype_part(k: &str, v: &str) -> String {
    if k == v {
        k.to_string()
    } else {
        format!("k{k}_v{v}")
    }
}

fn name(i: &Instance) -> String {
    let dims = if i.dk == i.dv {
        format!("d{}", i.dk)
    } else {
        format!("dk{}_dv{}", i.dk, i.dv)
    };
    format!(
        "decode_{}_{}_r{}__{}",
        dtype_part(i.k, i.v),
        dims,
        i.rows,
        i.tier
    )
}

/// The element type and `Dtype` path of the format named `d`.
fn rust_dtype(formats: &[Format], d: &str) -> (&'static str, String) {
    let f = formats
        .iter()
        .find(|f| f.name == d)
        .expect("a registry name");
    (f.elem, format!("Dtype::{}", f.variant))
}

fn tier_info(tier: &str) -> (&'static str, &'static str, Option<&'static str>) {
    match tier {
        "avx512" => (
            "AVX512",
            "crate::arch::x86_64::avx512::entry",
            Some("x86_64"),
        ),
        "avx2" => ("AVX2", "crate::arch::x86_64::avx2::entry", Some("x86_64")),
        "neon" => ("NEON", "crate::arch::aarch64::neon::entry", Some("aarch64")),
        _ => ("SCALAR", "crate::arch::scalar::entry", None),
    }
}

fn tier_variant(tier: &str) -> &'static str {
    match tier {
        "avx512" => "Tier::Avx512",
        "avx2" => "Tier::Avx2",
        "neon" => "Tier::Neon",
        _ => "Tier::Scalar",
    }
}

fn entry(
    out: &mut String,
    formats: &[Format],
    tier: &'static str,
    k: &'static str,
    v: &'static str,
    dims: Option<(usize, usize, usize)>,
) {
    let (_, path, _) = tier_info(tier);
    let (kt, kd) = rust_dtype(formats, k);
    let (vt, vd) = rust_dtype(formats, v);
    let (nm, d, shape) = match dims {
        Some((dk, dv, rows)) => (
            name(&Instance {
                tier,
                k,
                v,
                dk,
                dv,
                rows,
            }),
            format!("Fixed<{rows}, {dk}, {dv}>"),
            format!("dk: {dk}, dv: {dv}, rows: {rows}"),
        ),
        None => (
            format!("decode_{}_generic__{tier}", dtype_part(k, v)),
            "Dynamic".to_string(),
            "dk: 0, dv: 0, rows: 0".to_string(),
        ),
    };
    // The specialised instances stay out of the library's unit-test build
    // (`cfg(test)`): its tests exercise the tiers' primitives, not the
    // table, and compiling every instance a second time for it doubled
    // the README test's build on two cores. The integration tests link the
    // library as users do, with every instance.
    let only = if dims.is_some() {
        "#[cfg(not(test))] "
    } else {
        ""
    };
    writeln!(
        out,
        "    {only}KernelEntry {{ name: \"{nm}\", tier: {}, k: {kd}, v: {vd}, {shape}, f: {path}::<{kt}, {vt}, {d}> }},",
        tier_variant(tier)
    )
    .unwrap();
}

fn generate(instances: &[Instance], formats: &[Format]) -> String {
    let mut out = String::new();
    out.push_str("// @generated by build.rs from kernels/decode.kernels. Do not edit.\n");
    out.push_str("// One static table per tier: the generic kernel of every (K, V) dtype pair,\n");
    out.push_str("// then the specialised instances in spec order.\n\n");
    for tier in TIERS {
        let (stat, _, arch) = tier_info(tier);
        if let Some(a) = arch {
            writeln!(out, "#[cfg(target_arch = \"{a}\")]").unwrap();
        }
        writeln!(out, "pub(crate) static {stat}: &[KernelEntry] = &[").unwrap();
        for k in formats {
            for v in formats {
                entry(&mut out, formats, tier, k.name, v.name, None);
            }
        }
        for i in instances.iter().filter(|i| i.tier == tier) {
            entry(
                &mut out,
                formats,
                tier,
                i.k,
                i.v,
                Some((i.dk, i.dv, i.rows)),
            );
        }
        out.push_str("];\n\n");
    }
    out
}

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={REGISTRY}");
    let formats = registry();
    let text = std::fs::read_to_string(SPEC).unwrap_or_else(|e| panic!("{SPEC}: {e}"));
    let mut instances = parse(&text, &formats);
    // Feature `generic-only`: the generic kernel of each tier and type pair
    // only (the spec is still parsed and checked). Instrumented builds
    // (cargo-fuzz, Miri, sanitizers) take minutes instead of tens of them;
    // the specialised instances run the same kernel body with constant
    // dims.
    if std::env::var_os("CARGO_FEATURE_GENERIC_ONLY").is_some() {
        instances.clear();
    }
    let code = generate(&instances, &formats);
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("kernels.rs");
    if std::fs::read_to_string(&dest).ok().as_deref() != Some(code.as_str()) {
        std::fs::write(&dest, code).unwrap();
    }
}
