//! Generates the kernel dispatch table from `kernels/decode.kernels`, with
//! the tiers of the tier table (the `tier_table!` rows of `src/tier.rs`:
//! variant, name, cfg, module) and the dtypes of the format registry (the
//! `formats!` lines of `src/formats/mod.rs`: name, element type, kind).
//!
//! The output (`$OUT_DIR/kernels.rs`) is deterministic, starts with a line
//! naming its source, is rewritten only when its content changes, and is
//! never committed. A malformed spec line fails the build with `file:line`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

const SPEC: &str = "kernels/decode.kernels";
const TIER_TABLE: &str = "src/tier.rs";
const REGISTRY: &str = "src/formats/mod.rs";

fn leak(s: &str) -> &'static str {
    Box::leak(s.trim().to_string().into_boxed_str())
}

/// The lines of the table in `path` between `open` and the next `close`,
/// trimmed, without blank lines and comments (the rows' doc comments).
fn table_lines(path: &str, open: &str, close: &str) -> Vec<&'static str> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let body = text
        .split_once(open)
        .and_then(|(_, rest)| rest.split_once(close))
        .unwrap_or_else(|| panic!("{path}: no table opened by `{}`", open.trim()))
        .0;
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(leak)
        .collect()
}

/// A tier of the tier table.
struct TierRow {
    /// `Tier` variant.
    variant: &'static str,
    /// Name in the kernel list and kernel names.
    name: &'static str,
    /// What its code is compiled under, as in `#[cfg(...)]`.
    cfg: &'static str,
    /// Its module under `crate::arch`.
    module: &'static str,
}

/// The tier table's rows: `Variant code "name" [cfg] module [features];`
/// inside `$then! { ... }` of `tier_table!` (doc comments skipped; a row
/// may span lines).
fn tier_table() -> Vec<TierRow> {
    let rows = table_lines(TIER_TABLE, "$then! {\n", "\n        }").join(" ");
    let tiers: Vec<TierRow> = rows
        .split(';')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            let bad = || -> ! { panic!("{TIER_TABLE}: malformed tier row `{r}`") };
            let (head, rest) = r.split_once('[').unwrap_or_else(|| bad());
            let (cfg, rest) = rest.split_once(']').unwrap_or_else(|| bad());
            let (module, _features) = rest.split_once('[').unwrap_or_else(|| bad());
            match head.split_whitespace().collect::<Vec<_>>()[..] {
                [variant, _code, name] => TierRow {
                    variant: leak(variant),
                    name: leak(name.trim_matches('"')),
                    cfg: leak(cfg),
                    module: leak(module),
                },
                _ => bad(),
            }
        })
        .collect();
    assert!(!tiers.is_empty(), "{TIER_TABLE}: empty tier table");
    tiers
}

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
    /// Whether it is a row format (K and V in one latent row): it pairs
    /// only with itself.
    row: bool,
}

/// The registry's lines: `Variant code "name" elem, Kind;` inside
/// `formats! { ... }` (doc comments skipped).
fn registry() -> Vec<Format> {
    let formats: Vec<Format> = table_lines(REGISTRY, "\nformats! {\n", "\n}")
        .into_iter()
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
                        row: kind == "Row;",
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

fn parse(text: &str, tiers: &[TierRow], formats: &[Format]) -> Vec<Instance> {
    let tier_names: Vec<&'static str> = tiers.iter().map(|t| t.name).collect();
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
            .map(|w| pick(line, "tier", w, &tier_names))
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
                                let row = |t: &str| formats.iter().any(|f| f.name == t && f.row);
                                if k != v && (row(k) || row(v)) {
                                    fail(
                                        line,
                                        format!(
                                            "{k} with {v}: a row format pairs only with itself"
                                        ),
                                    );
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

fn entry(
    out: &mut String,
    formats: &[Format],
    tier: &TierRow,
    k: &'static str,
    v: &'static str,
    dims: Option<(usize, usize, usize)>,
) {
    let path = format!("crate::arch::{}::entry", tier.module);
    let (kt, kd) = rust_dtype(formats, k);
    let (vt, vd) = rust_dtype(formats, v);
    let (nm, d, shape) = match dims {
        Some((dk, dv, rows)) => (
            name(&Instance {
                tier: tier.name,
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
            format!("decode_{}_generic__{}", dtype_part(k, v), tier.name),
            "Dynamic".to_string(),
            "dk: 0, dv: 0, rows: 0".to_string(),
        ),
    };
    // The kernels stay out of the library's unit-test build (`cfg(test)`):
    // its tests exercise the tiers' primitives, not the table, and
    // compiling the kernels a second time for it took a third of the
    // README test's build on two cores. The integration tests link the
    // library as users do, with every kernel.
    writeln!(
        out,
        "    #[cfg(not(test))] KernelEntry {{ name: \"{nm}\", tier: Tier::{}, k: {kd}, v: {vd}, {shape}, f: {path}::<{kt}, {vt}, {d}> }},",
        tier.variant
    )
    .unwrap();
}

fn generate(
    instances: &[Instance],
    tiers: &[TierRow],
    built: &[bool],
    formats: &[Format],
) -> String {
    let mut out = String::new();
    out.push_str("// @generated by build.rs from kernels/decode.kernels. Do not edit.\n");
    out.push_str("// One static table per tier: the generic kernel of every (K, V) dtype pair\n");
    out.push_str("// (a row format only with itself),\n");
    out.push_str("// then the specialised instances in spec order; `table` picks one.\n\n");
    let flags: Vec<&str> = built
        .iter()
        .map(|&b| if b { "true" } else { "false" })
        .collect();
    out.push_str("/// Whether each tier (in `Tier::ALL` order) has kernels in this build.\n");
    writeln!(
        out,
        "pub(crate) const BUILT: [bool; {}] = [{}];\n",
        built.len(),
        flags.join(", ")
    )
    .unwrap();
    for (tier, &built) in tiers.iter().zip(built) {
        writeln!(out, "#[cfg({})]", tier.cfg).unwrap();
        let stat = tier.variant.to_uppercase();
        writeln!(out, "pub(crate) static {stat}: &[KernelEntry] = &[").unwrap();
        if !built {
            out.push_str("];\n\n");
            continue;
        }
        for k in formats {
            for v in formats
                .iter()
                .filter(|v| v.name == k.name || !(k.row || v.row))
            {
                entry(&mut out, formats, tier, k.name, v.name, None);
            }
        }
        for i in instances.iter().filter(|i| i.tier == tier.name) {
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
    out.push_str("/// The kernels of `tier` (none for a tier of another target).\n");
    out.push_str("pub(crate) fn table(tier: Tier) -> &'static [KernelEntry] {\n    match tier {\n");
    for tier in tiers {
        writeln!(
            out,
            "        #[cfg({})]\n        Tier::{} => {},",
            tier.cfg,
            tier.variant,
            tier.variant.to_uppercase()
        )
        .unwrap();
    }
    out.push_str("        #[allow(unreachable_patterns)]\n        _ => &[],\n    }\n}\n");
    out
}

/// `GQA_KERNELS_TIERS` (a comma-separated list of tier names; unset: every
/// tier): the tiers whose kernels this build compiles. The portable tier is
/// always built. A tier left out is never available (`Tier::is_available`),
/// as on a CPU without it. For instrumented test builds on a CPU that
/// cannot run a tier anyway (CI's sanitizer stage, a fuzzing build): its
/// kernels would be compiled and never run.
fn built_tiers(tiers: &[TierRow]) -> Vec<bool> {
    println!("cargo:rerun-if-env-changed=GQA_KERNELS_TIERS");
    println!("cargo:rustc-check-cfg=cfg(gqa_kernels_some_tiers)");
    let Ok(list) = std::env::var("GQA_KERNELS_TIERS") else {
        return vec![true; tiers.len()];
    };
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    for n in &names {
        assert!(
            tiers.iter().any(|t| t.name == *n),
            "GQA_KERNELS_TIERS: unknown tier `{n}`"
        );
    }
    let built: Vec<bool> = tiers
        .iter()
        .map(|t| t.variant == "Scalar" || names.contains(&t.name))
        .collect();
    if built.contains(&false) {
        // The left-out tiers' kernel bodies are unreferenced.
        println!("cargo:rustc-cfg=gqa_kernels_some_tiers");
    }
    built
}

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={REGISTRY}");
    println!("cargo:rerun-if-changed={TIER_TABLE}");
    let tiers = tier_table();
    let built = built_tiers(&tiers);
    let formats = registry();
    let text = std::fs::read_to_string(SPEC).unwrap_or_else(|e| panic!("{SPEC}: {e}"));
    let mut instances = parse(&text, &tiers, &formats);
    // Feature `generic-only`: the generic kernel of each tier and type pair
    // only (the spec is still parsed and checked). Instrumented builds
    // (cargo-fuzz, Miri, sanitizers) take minutes instead of tens of them;
    // the specialised instances run the same kernel body with constant
    // dims.
    if std::env::var_os("CARGO_FEATURE_GENERIC_ONLY").is_some() {
        instances.clear();
    }
    let code = generate(&instances, &tiers, &built, &formats);
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("kernels.rs");
    if std::fs::read_to_string(&dest).ok().as_deref() != Some(code.as_str()) {
        std::fs::write(&dest, code).unwrap();
    }
}
