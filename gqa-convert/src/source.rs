//! Where the checkpoint is (a file, a sharded index, a directory) and where
//! its conversion goes, with every output path checked before anything is
//! written.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Args, Res};

/// Where the checkpoint is: its shard files (name relative to the
/// checkpoint's directory), the index JSON if sharded, and `config.json`
/// if there is one.
pub(crate) struct Source {
    pub(crate) dir: PathBuf,
    pub(crate) shards: Vec<String>,
    pub(crate) index: Option<(String, serde_json::Value)>,
    pub(crate) config: Option<PathBuf>,
    /// A directory or an index (output is a directory).
    pub(crate) output_is_dir: bool,
}

pub(crate) fn locate(input: &Path) -> Res<Source> {
    let read_index = |p: &Path| -> Res<(String, serde_json::Value, Vec<String>)> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not an index JSON: {e}", p.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| format!("{}: no `weight_map` object", p.display()))?;
        let mut shards = Vec::new();
        for f in map.values() {
            let f = f.as_str().ok_or_else(|| {
                format!("{}: a `weight_map` entry is not a file name", p.display())
            })?;
            if Path::new(f).components().count() != 1 || f.starts_with('.') {
                return Err(format!(
                    "{}: shard name `{f}` is not a plain file name",
                    p.display()
                ));
            }
            if !shards.iter().any(|s| s == f) {
                shards.push(f.to_string());
            }
        }
        shards.sort();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        Ok((name, v, shards))
    };
    let config_in = |dir: &Path| {
        let c = dir.join("config.json");
        c.is_file().then_some(c)
    };
    if input.is_dir() {
        let index = input.join("model.safetensors.index.json");
        let (index, shards) = if index.is_file() {
            let (name, v, shards) = read_index(&index)?;
            (Some((name, v)), shards)
        } else if input.join("model.safetensors").is_file() {
            (None, vec!["model.safetensors".to_string()])
        } else {
            return Err(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                input.display()
            ));
        };
        return Ok(Source {
            dir: input.to_path_buf(),
            shards,
            index,
            config: config_in(input),
            output_is_dir: true,
        });
    }
    if !input.is_file() {
        return Err(format!("{}: no such file or directory", input.display()));
    }
    let dir = input.parent().unwrap_or(Path::new(".")).to_path_buf();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let name = input
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if name.ends_with(".json") {
        let (iname, v, shards) = read_index(input)?;
        return Ok(Source {
            config: config_in(&dir),
            dir,
            shards,
            index: Some((iname, v)),
            output_is_dir: true,
        });
    }
    Ok(Source {
        config: config_in(&dir),
        dir,
        shards: vec![name],
        index: None,
        output_is_dir: false,
    })
}

/// The output directory and the config's destination, once every output
/// path is checked before anything is written: no output overwrites an
/// input, and none exists unless `--force`.
pub(crate) fn check_outputs(args: &Args, src: &Source) -> Res<(PathBuf, Option<PathBuf>)> {
    let out_dir = if src.output_is_dir {
        args.output.clone()
    } else {
        let p = args.output.parent().unwrap_or(Path::new("")).to_path_buf();
        if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p
        }
    };
    let mut dests: Vec<PathBuf> = if src.output_is_dir {
        src.shards.iter().map(|s| out_dir.join(s)).collect()
    } else {
        vec![args.output.clone()]
    };
    if let Some((name, _)) = &src.index {
        dests.push(out_dir.join(name));
    }
    let config_dest = src.config.as_ref().map(|_| out_dir.join("config.json"));
    dests.extend(config_dest.clone());
    if src.output_is_dir && args.output.exists() && !args.output.is_dir() {
        return Err(format!(
            "{}: exists and is not a directory",
            args.output.display()
        ));
    }
    if !src.output_is_dir && args.output.is_dir() {
        return Err(format!(
            "{}: is a directory; give an output file",
            args.output.display()
        ));
    }
    for d in &dests {
        let same = std::fs::canonicalize(d).ok();
        let inputs = src.shards.iter().map(|s| src.dir.join(s));
        let inputs = inputs.chain(src.config.clone());
        if same.is_some()
            && inputs
                .filter_map(|i| std::fs::canonicalize(i).ok())
                .any(|i| Some(i) == same)
        {
            return Err(format!(
                "{}: output would overwrite an input (write the converted checkpoint into another directory)",
                d.display()
            ));
        }
    }

    if !args.force {
        if src.output_is_dir && args.output.exists() {
            return Err(format!(
                "{}: output exists (pass --force to write into it)",
                args.output.display()
            ));
        }
        if let Some(d) = dests.iter().find(|d| d.exists()) {
            return Err(format!(
                "{}: output exists (pass --force to overwrite)",
                d.display()
            ));
        }
    }
    Ok((out_dir, config_dest))
}

/// Every shard of the source, memory-mapped.
pub(crate) fn map_shards(src: &Source) -> Res<Vec<memmap2::Mmap>> {
    let mut maps = Vec::new();
    for s in &src.shards {
        let p = src.dir.join(s);
        let f = File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        // SAFETY: the file is opened read-only and only read through this
        // map; like every memory-mapped loader, the conversion assumes no
        // other process truncates or rewrites the checkpoint while it runs
        // (the map is dropped before the tool exits).
        let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("{}: {e}", p.display()))?;
        maps.push(m);
    }
    Ok(maps)
}
