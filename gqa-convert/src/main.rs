//! `gqa-convert`: converts a multi-head (or GQA) safetensors checkpoint to
//! `G` KV heads per layer by mean-pooling the K and V projection heads of
//! each group (Ainslie et al., 2023), with [`gqa_convert::pool_heads`].
//!
//! ```text
//! gqa-convert <INPUT> -o <OUTPUT> -g <GROUPS> [--preset llama|t5] [--pattern P]...
//!             [--heads H] [--pooling mean|first] [--force] [--quiet]
//! ```
//!
//! `INPUT` is a `.safetensors` file, a sharded checkpoint's index JSON, or
//! a directory holding `model.safetensors` or `model.safetensors.index.json`.
//! A file input writes the file `OUTPUT`; a sharded or directory input
//! writes the directory `OUTPUT` (the same shard names and an updated
//! index). A `config.json` beside the input is written beside the output
//! with `num_key_value_heads = G`. Every other tensor is copied byte for
//! byte. Inputs are memory-mapped and each output file is streamed to a
//! temporary file renamed into place only when everything succeeded;
//! after a failure nothing of the output is left. A tensor is pooled when
//! the writer reaches it and its source pages are released once written,
//! so resident memory stays near the largest tensor, not the checkpoint.
//!
//! Exit status: 0 on success, 1 on a conversion error (message on stderr),
//! 2 on a usage error.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use gqa_convert::{Pooling, ProjShape};
use gqa_kernels::Dtype;
use indicatif::{ProgressBar, ProgressStyle};
use safetensors::tensor::SafeTensors;

#[derive(Parser, Debug)]
#[command(
    name = "gqa-convert",
    version,
    about = "Convert an MHA (or GQA) safetensors checkpoint to fewer KV heads by mean-pooling each group's K/V projection heads"
)]
struct Args {
    /// A .safetensors file, an index JSON of a sharded checkpoint, or a
    /// directory holding model.safetensors or model.safetensors.index.json.
    input: PathBuf,
    /// Output file (for a file input) or directory (for a sharded or
    /// directory input).
    #[arg(short, long)]
    output: PathBuf,
    /// KV heads (groups) G of the converted checkpoint; 1 is MQA.
    #[arg(short, long)]
    groups: usize,
    /// KV heads H of the source (default: from config.json,
    /// `num_key_value_heads`, else `num_attention_heads`, else `num_heads`).
    #[arg(long)]
    heads: Option<usize>,
    /// Tensor-name preset: Llama-style `model.layers.{i}.self_attn.{kv}_proj`
    /// weights and biases, or T5-style decoder self- and cross-attention.
    #[arg(long, value_enum, default_value_t = Preset::Llama)]
    preset: Preset,
    /// A tensor-name pattern (repeatable; replaces the preset): `{kv}`
    /// stands for `k` and `v` (or `{kv:key,value}` for other names), `{i}`
    /// for a layer number, `*` for any text. Example:
    /// `model.layers.{i}.attn.{kv}_proj.weight`.
    #[arg(long)]
    pattern: Vec<String>,
    /// How a group's heads become one.
    #[arg(long, value_enum, default_value_t = Method::Mean)]
    pooling: Method,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Preset {
    /// model.layers.{i}.self_attn.{k,v}_proj.{weight,bias}
    Llama,
    /// decoder.block.{i}.layer.0.SelfAttention.{k,v}.weight and
    /// decoder.block.{i}.layer.1.EncDecAttention.{k,v}.weight (the paper
    /// converts decoder self- and cross-attention, not the encoder)
    T5,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Method {
    /// Mean of the group's heads (the paper's method).
    Mean,
    /// The group's first head.
    First,
}

impl Preset {
    fn patterns(self) -> Vec<String> {
        let p: &[&str] = match self {
            Preset::Llama => &[
                "model.layers.{i}.self_attn.{kv}_proj.weight",
                "model.layers.{i}.self_attn.{kv}_proj.bias",
            ],
            Preset::T5 => &[
                "decoder.block.{i}.layer.0.SelfAttention.{kv}.weight",
                "decoder.block.{i}.layer.1.EncDecAttention.{kv}.weight",
            ],
        };
        p.iter().map(|s| s.to_string()).collect()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match convert(&args) {
        Ok(summary) => {
            if !args.quiet {
                eprintln!("{summary}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gqa-convert: error: {e}");
            ExitCode::from(1)
        }
    }
}

mod pattern;
mod source;
mod write;

use pattern::Pattern;
use source::{check_outputs, locate, map_shards, Source};
use write::{OutTensor, Pool, Staged, WriteCtx};

/// A conversion error: the message printed on stderr.
pub(crate) type Res<T> = Result<T, String>;

fn weight_dtype(d: safetensors::Dtype, name: &str) -> Res<Dtype> {
    match d {
        safetensors::Dtype::F32 => Ok(Dtype::F32),
        safetensors::Dtype::F16 => Ok(Dtype::F16),
        safetensors::Dtype::BF16 => Ok(Dtype::Bf16),
        other => Err(format!(
            "`{name}` is {other:?}; K/V projections must be F32, F16 or BF16"
        )),
    }
}

fn source_heads(args: &Args, config: Option<&serde_json::Value>) -> Res<usize> {
    if let Some(h) = args.heads {
        return Ok(h);
    }
    let c = config.ok_or(
        "the source's KV head count is unknown: pass --heads (no config.json beside the input)",
    )?;
    ["num_key_value_heads", "num_attention_heads", "num_heads"]
        .iter()
        .find_map(|k| c.get(*k).and_then(|v| v.as_u64()))
        .map(|h| h as usize)
        .ok_or_else(|| {
            "config.json has no num_key_value_heads, num_attention_heads or num_heads: pass --heads"
                .to_string()
        })
}

/// The K/V tensors the patterns find among `all` and their pooled
/// replacements: name -> (new shape, pooling; `None` when G = H and the
/// tensor is copied); and the number of K/V pairs.
#[allow(clippy::type_complexity)]
fn pool_plan(
    patterns: &[Pattern],
    all: &HashMap<String, (usize, safetensors::tensor::TensorView<'_>)>,
    heads: usize,
    groups: usize,
) -> Res<(BTreeMap<String, (Vec<usize>, Option<Pool>)>, usize)> {
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    // name -> (new shape, layout, type); `None` layout when G = H (copied).
    let mut pooled: BTreeMap<String, (Vec<usize>, Option<Pool>)> = BTreeMap::new();
    let mut layers = 0usize;
    for pat in patterns {
        for k_name in &names {
            let Some(v_name) = pat.v_partner(k_name) else {
                continue;
            };
            let (_, kview) = &all[*k_name];
            let (_, vview) = all.get(&v_name).ok_or_else(|| {
                format!(
                    "`{k_name}` matches pattern `{}` but its V tensor `{v_name}` is missing",
                    pat.text
                )
            })?;
            if kview.shape() != vview.shape() || kview.dtype() != vview.dtype() {
                return Err(format!(
                    "K and V differ: `{k_name}` is {:?} {:?}, `{v_name}` is {:?} {:?}",
                    kview.dtype(),
                    kview.shape(),
                    vview.dtype(),
                    vview.shape()
                ));
            }
            for (name, view) in [(k_name.as_str(), kview), (v_name.as_str(), vview)] {
                if pooled.contains_key(name) {
                    continue;
                }
                let dtype = weight_dtype(view.dtype(), name)?;
                let shape = view.shape();
                let rows = shape.first().copied().unwrap_or(0);
                if rows == 0 || !rows.is_multiple_of(heads) {
                    return Err(format!(
                        "`{name}` has {rows} rows (shape {shape:?}), not H·D for H = {heads} KV heads"
                    ));
                }
                let cols: usize = shape[1..].iter().product();
                let ps = ProjShape {
                    heads,
                    head_dim: rows / heads,
                    cols,
                };
                let mut new_shape = shape.to_vec();
                new_shape[0] = groups * ps.head_dim;
                let pool = (groups != heads).then_some((ps, dtype));
                pooled.insert(name.to_string(), (new_shape, pool));
            }
            layers += 1;
        }
    }
    if pooled.is_empty() {
        let list: Vec<&str> = patterns.iter().map(|p| p.text.as_str()).collect();
        return Err(format!(
            "no tensor matches the K/V pattern(s) {list:?} (try --preset or --pattern)"
        ));
    }

    Ok((pooled, layers))
}

/// Where the converted checkpoint goes: the directory, and the config
/// with its destination (when the source has one).
struct Outputs<'a> {
    dir: &'a Path,
    config: Option<(serde_json::Value, PathBuf)>,
}

/// Stages the source's index (with the new `total_size`) and its config
/// (with `num_key_value_heads` set to the groups), where it has them.
fn write_json_files(
    staged: &mut Staged,
    src: &Source,
    out: &Outputs<'_>,
    new_sizes: u64,
    groups: usize,
) -> Res<()> {
    let out_dir = out.dir;
    let write_json = |staged: &mut Staged, dest: &Path, v: &serde_json::Value| -> Res<()> {
        let tmp = staged.tmp_for(dest);
        let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())? + "\n";
        std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", dest.display()))
    };
    if let Some((name, index)) = &src.index {
        let mut index = index.clone();
        if let Some(m) = index.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            if m.contains_key("total_size") {
                m.insert("total_size".into(), new_sizes.into());
            }
        }
        write_json(staged, &out_dir.join(name), &index)?;
    }
    if let Some((mut c, dest)) = out.config.clone() {
        if let Some(obj) = c.as_object_mut() {
            obj.insert("num_key_value_heads".into(), groups.into());
        }
        write_json(staged, &dest, &c)?;
    }
    Ok(())
}

/// Writes every shard (pooling the tensors of `pooled` into `groups`
/// heads by `how`, copying the rest) to a temporary file, then the index
/// and the config, then renames all of them; on an error nothing is left
/// behind.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn write_outputs(
    args: &Args,
    src: &Source,
    out: &Outputs<'_>,
    parsed: &[(SafeTensors<'_>, Option<HashMap<String, String>>)],
    maps: &[memmap2::Mmap],
    pooled: &BTreeMap<String, (Vec<usize>, Option<Pool>)>,
    all: &HashMap<String, (usize, safetensors::tensor::TensorView<'_>)>,
    (groups, how): (usize, Pooling),
) -> Res<()> {
    let out_dir = out.dir;
    let mut staged = Staged {
        files: Vec::new(),
        created_dir: None,
        committed: false,
    };
    if src.output_is_dir && !args.output.exists() {
        std::fs::create_dir_all(&args.output)
            .map_err(|e| format!("{}: {e}", args.output.display()))?;
        staged.created_dir = Some(args.output.clone());
    }
    let elem = |d: safetensors::Dtype| d.bitsize() / 8;
    let out_len = |name: &str, view: &safetensors::tensor::TensorView<'_>| match pooled.get(name) {
        Some((shape, _)) => shape.iter().product::<usize>() * elem(view.dtype()),
        None => view.data().len(),
    };
    let total: u64 = all.iter().map(|(n, (_, v))| out_len(n, v) as u64).sum();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                .map_err(|e| e.to_string())?,
        );
        b
    };
    let mut new_sizes = 0u64;
    for (i, (st, meta)) in parsed.iter().enumerate() {
        let dest = if src.output_is_dir {
            out_dir.join(&src.shards[i])
        } else {
            args.output.clone()
        };
        let ctx = WriteCtx {
            bar: &bar,
            map: &maps[i],
            groups,
            how,
            last: Cell::new(None),
            error: RefCell::new(None),
        };
        let tensors: Vec<(String, OutTensor)> = st
            .iter()
            .map(|(name, view)| {
                let len = out_len(name, &view);
                new_sizes += len as u64;
                let (shape, pool) = match pooled.get(name) {
                    Some((s, p)) => (s.clone(), *p),
                    None => (view.shape().to_vec(), None),
                };
                (
                    name.to_string(),
                    OutTensor {
                        dtype: view.dtype(),
                        shape,
                        src: view.data(),
                        pool,
                        len,
                        ctx: &ctx,
                    },
                )
            })
            .collect();
        let tmp = staged.tmp_for(&dest);
        bar.set_message(src.shards[i].clone());
        safetensors::tensor::serialize_to_file(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            meta.clone(),
            &tmp,
        )
        .map_err(|e| format!("writing {}: {e:?}", dest.display()))?;
        ctx.release_last();
        if let Some(e) = ctx.error.take() {
            return Err(format!("pooling for {}: {e}", dest.display()));
        }
    }
    bar.finish_and_clear();
    write_json_files(&mut staged, src, out, new_sizes, groups)?;
    staged.commit()?;
    Ok(())
}

fn convert(args: &Args) -> Res<String> {
    let src = locate(&args.input)?;
    let config: Option<serde_json::Value> = match &src.config {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Some(
                serde_json::from_str(&t)
                    .map_err(|e| format!("{}: invalid JSON: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let heads = source_heads(args, config.as_ref())?;
    let groups = args.groups;
    if groups == 0 || heads == 0 || !heads.is_multiple_of(groups) {
        return Err(format!(
            "the source's {heads} KV heads cannot form {groups} groups (H % G must be 0, G >= 1)"
        ));
    }
    let patterns = if args.pattern.is_empty() {
        args.preset.patterns()
    } else {
        args.pattern.clone()
    };
    let patterns: Vec<Pattern> = patterns
        .iter()
        .map(|p| Pattern::parse(p))
        .collect::<Res<_>>()?;

    // Output paths, all checked before anything is written.
    let (out_dir, config_dest) = check_outputs(args, &src)?;
    let maps = map_shards(&src)?;
    let mut parsed = Vec::new();
    for (s, m) in src.shards.iter().zip(&maps) {
        let st = SafeTensors::deserialize(m).map_err(|e| {
            format!(
                "{}: not a safetensors file: {e:?}",
                src.dir.join(s).display()
            )
        })?;
        let (_, meta) = SafeTensors::read_metadata(m).map_err(|e| {
            format!(
                "{}: not a safetensors file: {e:?}",
                src.dir.join(s).display()
            )
        })?;
        parsed.push((st, meta.metadata().clone()));
    }
    // Every tensor by name: (shard, view).
    let mut all = HashMap::new();
    for (i, (st, _)) in parsed.iter().enumerate() {
        for (name, view) in st.iter() {
            if all.insert(name.to_string(), (i, view)).is_some() {
                return Err(format!("tensor `{name}` appears in two shards"));
            }
        }
    }

    // The K/V pairs and their pooled replacements.
    let how = match args.pooling {
        Method::Mean => Pooling::Mean,
        Method::First => Pooling::First,
    };
    let (pooled, layers) = pool_plan(&patterns, &all, heads, groups)?;
    // Write: every shard to a temporary file, then the index and config,
    // then rename all of them.
    let out = Outputs {
        dir: &out_dir,
        config: config.zip(config_dest),
    };
    write_outputs(
        args,
        &src,
        &out,
        &parsed,
        &maps,
        &pooled,
        &all,
        (groups, how),
    )?;
    Ok(format!(
        "gqa-convert: {layers} K/V pairs ({} tensors) pooled from {heads} to {groups} KV heads; {} tensors copied; wrote {}",
        pooled.len(),
        all.len() - pooled.len(),
        args.output.display()
    ))
}
