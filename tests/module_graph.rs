//! The crate's top-level modules import each other without circles: the
//! layers of ARCHITECTURE.md §2 hold in the code, not only in the document.
//!
//! Reads `src/`: each top-level module (a file `src/x.rs`, or a folder
//! `src/x/` counted as one module: the microkernels of `src/arch/` are one
//! layer) names another when its code (comments left out) mentions
//! `crate::other` in a path or `use crate::{other, …}`, or an item the
//! crate root re-exports from `other` (`crate::Plan` is `driver`'s). Those
//! edges must form no cycle; a failure prints the modules of each cycle
//! and the edges between them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The code of `text` without `//` comments (doc comments included).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `.rs` file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level names inside the braces that start `s` (`{a, b::{c}, D}`
/// gives `a`, `b`, `D`).
fn group(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0usize, 1usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                out.push(ident(s[start..i].trim_start()));
                start = i + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    out
}

/// The edges between top-level modules form no cycle.
///
/// Long on purpose: read the modules, collect the edges, search the
/// cycles, print them; each step is a few loops over the previous step's
/// maps, and kept in one place the check reads top to bottom.
#[test]
fn top_level_modules_import_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    files(&src, &mut paths);
    // Module name -> its code.
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for p in &paths {
        let rel = p.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let name = Path::new(first.as_os_str())
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let text = code(&fs::read_to_string(p).expect("read a source file"));
        modules.entry(name).or_default().push_str(&text);
    }
    let root = modules.remove("lib").expect("src/lib.rs");
    modules.remove("bin");
    // Items the root re-exports: `pub use module::{A, B};` or `pub use module::A;`.
    let mut reexport: BTreeMap<String, String> = BTreeMap::new();
    for part in root.split("pub use ").skip(1) {
        let m = ident(part);
        if !modules.contains_key(m) {
            continue;
        }
        let mut rest = &part[m.len()..];
        // Down the path to its last segment: `driver::plan::{Options, Plan}`.
        while let Some(r) = rest.strip_prefix("::") {
            rest = r;
            let seg = ident(rest);
            if seg.is_empty() || !rest[seg.len()..].starts_with("::") {
                break;
            }
            rest = &rest[seg.len()..];
        }
        if rest.len() == part.len() - m.len() {
            continue;
        }
        let items = if rest.starts_with('{') {
            group(rest)
        } else {
            vec![ident(rest)]
        };
        for it in items {
            reexport.insert(it.to_string(), m.to_string());
        }
    }
    assert!(
        reexport.contains_key("Plan") && reexport.contains_key("Dtype"),
        "the root's re-exports were not read: {reexport:?}"
    );
    // Edges: module -> the modules it names.
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (name, text) in &modules {
        let mut to = BTreeSet::new();
        for part in text.split("crate::").skip(1) {
            let names = if part.starts_with('{') {
                group(part)
            } else {
                vec![ident(part)]
            };
            for n in names {
                let target = if modules.contains_key(n) {
                    Some(n.to_string())
                } else {
                    reexport.get(n).cloned()
                };
                if let Some(t) = target.filter(|t| t != name) {
                    to.insert(t);
                }
            }
        }
        edges.insert(name, to);
    }
    assert!(
        edges["driver"].contains("arch") && edges["capi"].contains("driver"),
        "the import scan found too little: {edges:?}"
    );
    // Cycles: the strongly connected sets of more than one module (each
    // module's reach, by depth-first search; the graph has ~20 nodes).
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for t in &edges[m.as_str()] {
                if seen.insert(t.clone()) {
                    stack.push(t.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&str, BTreeSet<String>> = edges.keys().map(|&m| (m, reach(m))).collect();
    let mut cycles: BTreeSet<Vec<&str>> = BTreeSet::new();
    for &m in edges.keys() {
        let set: Vec<&str> = edges
            .keys()
            .copied()
            .filter(|&o| reaches[m].contains(o) && reaches[o].contains(m))
            .collect();
        if set.len() > 1 {
            cycles.insert(set);
        }
    }
    let report: Vec<String> = cycles
        .iter()
        .map(|set| {
            let inner: Vec<String> = set
                .iter()
                .flat_map(|&a| {
                    edges[a]
                        .iter()
                        .filter(|b| set.contains(&b.as_str()))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            format!("{set:?}: {}", inner.join(", "))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "import circles between top-level modules:\n{}",
        report.join("\n")
    );
}
