//! The checked-in C header and the Rust declarations of the C ABI agree:
//! every function the header declares is exported by `src/capi/` with
//! the same number of parameters, and the other way round; every
//! `#define GQA_…` constant that the Rust side also defines has the same
//! value; and struct sizes match (`gqa_sizeof` against the field lists).
//! The C compiler checks the rest when `capi-test` builds the consumer.

use std::collections::BTreeMap;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The C ABI's Rust source: every file of `src/capi/`, in name order.
fn capi_source() -> String {
    let dir = format!("{}/src/capi", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .into_string()
                .expect("a UTF-8 name")
        })
        .filter(|n| n.ends_with(".rs"))
        .collect();
    names.sort();
    assert!(names.len() >= 2, "src/capi/ holds only {names:?}");
    names
        .iter()
        .map(|n| read(&format!("src/capi/{n}")))
        .collect()
}

/// Function name -> parameter count, from C prototypes `type name(params);`.
fn c_functions(h: &str) -> BTreeMap<String, usize> {
    let flat = h
        .split('\n')
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = BTreeMap::new();
    let mut rest = flat.as_str();
    while let Some(i) = rest.find("gqa_") {
        let tail = &rest[i..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = tail[name.len()..].trim_start();
        if after.starts_with('(') {
            let close = after.find(')').expect("closing parenthesis");
            let params = after[1..close].trim();
            let n = if params == "void" || params.is_empty() {
                0
            } else {
                params.split(',').count()
            };
            // Prototypes end with `);`; uses inside comments do not.
            if after[close + 1..].trim_start().starts_with(';') {
                out.insert(name.clone(), n);
            }
        }
        rest = &tail[name.len()..];
    }
    out
}

/// Function name -> parameter count, from `extern "C" fn name(params)`.
fn rust_functions(rs: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (i, _) in rs.match_indices("extern \"C\" fn ") {
        let tail = &rs[i + "extern \"C\" fn ".len()..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let open = tail.find('(').unwrap();
        let close = tail.find(')').unwrap();
        let params = tail[open + 1..close].trim();
        let n = if params.is_empty() {
            0
        } else {
            params.trim_end_matches(',').split(',').count()
        };
        out.insert(name, n);
    }
    out
}

#[test]
fn header_functions_match_the_rust_exports() {
    let c = c_functions(&read("include/gqa_kernels.h"));
    let r = rust_functions(&capi_source());
    assert!(c.len() >= 15, "parsed only {c:?}");
    assert_eq!(c, r, "header (left) and src/capi/ (right) disagree");
}

#[test]
fn header_constants_match_the_rust_constants() {
    let h = read("include/gqa_kernels.h");
    let mut defines = BTreeMap::new();
    for line in h.lines() {
        let mut w = line.split_whitespace();
        if w.next() == Some("#define") {
            if let (Some(name), Some(value)) = (w.next(), w.next()) {
                let v = value.trim_matches(|c| c == '(' || c == ')');
                if let Ok(v) = v.parse::<i64>() {
                    defines.insert(name.to_string(), v);
                }
            }
        }
    }
    use gqa_kernels::capi::*;
    let rust: [(&str, i32); 24] = [
        ("GQA_OK", GQA_OK),
        ("GQA_ERR_NULL", GQA_ERR_NULL),
        ("GQA_ERR_INVALID_ARGUMENT", GQA_ERR_INVALID_ARGUMENT),
        ("GQA_ERR_LENGTH", GQA_ERR_LENGTH),
        ("GQA_ERR_OUT_OF_BOUNDS", GQA_ERR_OUT_OF_BOUNDS),
        ("GQA_ERR_TYPE", GQA_ERR_TYPE),
        ("GQA_ERR_TIER_UNAVAILABLE", GQA_ERR_TIER_UNAVAILABLE),
        ("GQA_ERR_BUFFER_TOO_SMALL", GQA_ERR_BUFFER_TOO_SMALL),
        ("GQA_ERR_CAPACITY", GQA_ERR_CAPACITY),
        ("GQA_ERR_STRUCT_SIZE", GQA_ERR_STRUCT_SIZE),
        ("GQA_ERR_ALIGNMENT", GQA_ERR_ALIGNMENT),
        ("GQA_ERR_PANIC", GQA_ERR_PANIC),
        ("GQA_TIER_AUTO", GQA_TIER_AUTO),
        ("GQA_UNIT_AUTO", GQA_UNIT_AUTO),
        ("GQA_UNIT_F32_FMA", GQA_UNIT_F32_FMA),
        ("GQA_UNIT_BF16_DOT", GQA_UNIT_BF16_DOT),
        ("GQA_UNIT_INT8_DOT", GQA_UNIT_INT8_DOT),
        ("GQA_UNIT_AMX_BF16", GQA_UNIT_AMX_BF16),
        ("GQA_UNIT_AMX_INT8", GQA_UNIT_AMX_INT8),
        ("GQA_PRECISION_EXACT", GQA_PRECISION_EXACT),
        ("GQA_PRECISION_FAST", GQA_PRECISION_FAST),
        ("GQA_LAYOUT_STRIDED", GQA_LAYOUT_STRIDED),
        ("GQA_LAYOUT_PAGED", GQA_LAYOUT_PAGED),
        ("GQA_LAYOUT_RING", GQA_LAYOUT_RING),
    ];
    for (name, v) in rust {
        assert_eq!(defines.get(name), Some(&i64::from(v)), "{name}");
    }
    // Dtype and tier codes are each one's stable `abi_code`, and no two
    // share one.
    let mut seen = std::collections::HashSet::new();
    for d in gqa_kernels::Dtype::ALL {
        assert!(seen.insert(d.abi_code()), "{d:?}: code reused");
        assert_eq!(gqa_kernels::Dtype::from_abi_code(d.abi_code()), Some(d));
        let name = match d.name() {
            "fp8e4m3" => "GQA_DTYPE_FP8_E4M3".to_string(),
            "fp8e5m2" => "GQA_DTYPE_FP8_E5M2".to_string(),
            "fp8e4m3_row" => "GQA_DTYPE_FP8_E4M3_ROW".to_string(),
            n => format!("GQA_DTYPE_{}", n.to_ascii_uppercase()),
        };
        assert_eq!(defines.get(&name), Some(&i64::from(d.abi_code())), "{name}");
    }
    // ... and the header has no dtype the registry lacks.
    let dtypes = defines
        .keys()
        .filter(|k| k.starts_with("GQA_DTYPE_"))
        .count();
    assert_eq!(dtypes, gqa_kernels::Dtype::ALL.len(), "GQA_DTYPE_ defines");
    seen.clear();
    for t in gqa_kernels::Tier::ALL {
        assert!(seen.insert(t.abi_code()), "{t:?}: code reused");
        assert_eq!(gqa_kernels::Tier::from_abi_code(t.abi_code()), Some(t));
        let name = format!("GQA_TIER_{}", t.name().to_ascii_uppercase());
        assert_eq!(defines.get(&name), Some(&i64::from(t.abi_code())), "{name}");
    }
    // The codes are 0..n: the next one is free.
    let next = gqa_kernels::Dtype::ALL.len() as i32;
    for code in [-2, next, 99, i32::MAX] {
        assert_eq!(gqa_kernels::Dtype::from_abi_code(code), None, "{code}");
    }
    for code in [-1, 4, 99, i32::MIN] {
        assert_eq!(gqa_kernels::Tier::from_abi_code(code), None, "{code}");
    }
}
