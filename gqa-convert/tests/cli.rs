//! The `gqa-convert` binary on synthetic checkpoints written here by hand
//! (the safetensors format is 8 bytes of header length, a JSON header and
//! the data): Llama-style and T5-style names, f32/f16/bf16, with and
//! without biases, single-file and sharded. Pooled tensors must equal a
//! literal mean rounded once, every other tensor must be byte-identical,
//! `config.json` and the index must be updated, and every bad input must
//! exit non-zero with a message and leave no output behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gqa_kernels::{bf16, f16};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    F32,
    F16,
    Bf16,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::F32 => "F32",
            Ty::F16 => "F16",
            Ty::Bf16 => "BF16",
        }
    }
    fn encode(self, x: f64) -> Vec<u8> {
        match self {
            Ty::F32 => (x as f32).to_le_bytes().to_vec(),
            Ty::F16 => f16::from_f64(x).to_le_bytes().to_vec(),
            Ty::Bf16 => bf16::from_f64(x).to_le_bytes().to_vec(),
        }
    }
    fn size(self) -> usize {
        if self == Ty::F32 {
            4
        } else {
            2
        }
    }
    fn decode(self, b: &[u8]) -> f64 {
        match self {
            Ty::F32 => f64::from(f32::from_le_bytes(b.try_into().unwrap())),
            Ty::F16 => f64::from(f16::from_le_bytes(b.try_into().unwrap())),
            Ty::Bf16 => f64::from(bf16::from_le_bytes(b.try_into().unwrap())),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Tensor {
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// A tensor of `shape` whose values come from a seeded generator.
fn tensor(ty: Ty, shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..n)
        .flat_map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ty.encode((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        })
        .collect();
    Tensor {
        dtype: ty.name().into(),
        shape: shape.to_vec(),
        data,
    }
}

fn write_st(path: &Path, tensors: &BTreeMap<String, Tensor>, meta: Option<Value>) {
    let mut header = serde_json::Map::new();
    if let Some(m) = meta {
        header.insert("__metadata__".into(), m);
    }
    let mut off = 0;
    let mut data = Vec::new();
    for (name, t) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [off, off + t.data.len()]}),
        );
        off += t.data.len();
        data.extend_from_slice(&t.data);
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h);
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

fn read_st(path: &Path) -> (BTreeMap<String, Tensor>, Option<Value>) {
    let file = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    let data = &file[8 + n..];
    let mut out = BTreeMap::new();
    let mut meta = None;
    for (name, v) in header.as_object().unwrap() {
        if name == "__metadata__" {
            meta = Some(v.clone());
            continue;
        }
        let offs: Vec<usize> = serde_json::from_value(v["data_offsets"].clone()).unwrap();
        out.insert(
            name.clone(),
            Tensor {
                dtype: v["dtype"].as_str().unwrap().into(),
                shape: serde_json::from_value(v["shape"].clone()).unwrap(),
                data: data[offs[0]..offs[1]].to_vec(),
            },
        );
    }
    (out, meta)
}

/// The literal pooled tensor: mean over each group's rows, in f64, rounded
/// once.
fn literal_mean(ty: Ty, t: &Tensor, heads: usize, groups: usize) -> Tensor {
    let rows = t.shape[0];
    let cols: usize = t.shape[1..].iter().product();
    let (d, r) = (rows / heads, heads / groups);
    let at = |row: usize, c: usize| {
        let i = (row * cols + c) * ty.size();
        ty.decode(&t.data[i..i + ty.size()])
    };
    let mut data = Vec::new();
    for g in 0..groups {
        for dd in 0..d {
            for c in 0..cols {
                let sum: f64 = (0..r).map(|j| at((g * r + j) * d + dd, c)).sum();
                data.extend(ty.encode(sum / r as f64));
            }
        }
    }
    let mut shape = t.shape.clone();
    shape[0] = groups * d;
    Tensor {
        dtype: t.dtype.clone(),
        shape,
        data,
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gqa-convert-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gqa-convert"));
    for a in args {
        c.arg(a);
    }
    c.arg("--quiet");
    c.output().unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "gqa-convert failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Fails with exit code 1, a message containing `what`, and leaves `dir`
/// exactly as it was.
fn fails(o: &Output, what: &str, dir: &Path, before: &[PathBuf]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, stderr: {err}");
    assert!(err.contains(what), "message should mention `{what}`: {err}");
    assert_eq!(
        listing(dir),
        before,
        "a failed conversion left files behind"
    );
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        }
        v.push(p);
    }
    v
}

/// A Llama-style checkpoint: `layers` layers of `h` KV heads of `d` over
/// `dm`, the projections of type `ty`, norms in f32.
fn llama(
    ty: Ty,
    layers: usize,
    h: usize,
    d: usize,
    dm: usize,
    bias: bool,
) -> BTreeMap<String, Tensor> {
    let mut m = BTreeMap::new();
    let mut seed = 1;
    let mut add = |m: &mut BTreeMap<String, Tensor>, name: String, ty: Ty, shape: &[usize]| {
        seed += 1;
        m.insert(name, tensor(ty, shape, seed));
    };
    add(&mut m, "model.embed_tokens.weight".into(), ty, &[11, dm]);
    for i in 0..layers {
        let p = format!("model.layers.{i}.self_attn");
        add(&mut m, format!("{p}.q_proj.weight"), ty, &[2 * h * d, dm]);
        add(&mut m, format!("{p}.k_proj.weight"), ty, &[h * d, dm]);
        add(&mut m, format!("{p}.v_proj.weight"), ty, &[h * d, dm]);
        add(&mut m, format!("{p}.o_proj.weight"), ty, &[dm, 2 * h * d]);
        if bias {
            add(&mut m, format!("{p}.q_proj.bias"), ty, &[2 * h * d]);
            add(&mut m, format!("{p}.k_proj.bias"), ty, &[h * d]);
            add(&mut m, format!("{p}.v_proj.bias"), ty, &[h * d]);
        }
        add(
            &mut m,
            format!("model.layers.{i}.input_layernorm.weight"),
            Ty::F32,
            &[dm],
        );
    }
    m
}

fn is_kv(name: &str) -> bool {
    name.contains("k_proj") || name.contains("v_proj")
}

#[test]
fn llama_single_file_every_dtype_with_and_without_bias() {
    for ty in [Ty::F32, Ty::F16, Ty::Bf16] {
        for bias in [false, true] {
            let dir = tmpdir(&format!("llama-{}-{bias}", ty.name()));
            let (h, g, d, dm) = (8, 2, 4, 6);
            let src = llama(ty, 2, h, d, dm, bias);
            let meta = json!({"format": "pt"});
            write_st(&dir.join("in.safetensors"), &src, Some(meta.clone()));
            let config = json!({"num_attention_heads": 16, "num_key_value_heads": h,
                "hidden_size": dm, "architectures": ["LlamaForCausalLM"]});
            std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
            let out_dir = dir.join("out");
            std::fs::create_dir(&out_dir).unwrap();
            let out = out_dir.join("model.safetensors");
            ok(&run(&[
                &dir.join("in.safetensors"),
                &"-o",
                &out,
                &"-g",
                &"2",
            ]));

            let (got, got_meta) = read_st(&out);
            assert_eq!(got_meta, Some(meta));
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                src.keys().collect::<Vec<_>>()
            );
            for (name, t) in &src {
                if is_kv(name) {
                    assert_eq!(got[name], literal_mean(ty, t, h, g), "{name} ({ty:?})");
                } else {
                    assert_eq!(&got[name], t, "{name} must be copied unchanged");
                }
            }
            let c: Value = serde_json::from_str(
                &std::fs::read_to_string(out_dir.join("config.json")).unwrap(),
            )
            .unwrap();
            let mut want = config.clone();
            want["num_key_value_heads"] = json!(g);
            assert_eq!(c, want);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn g_equal_h_is_the_identity_and_first_head_pooling() {
    let dir = tmpdir("identity");
    let src = llama(Ty::Bf16, 1, 4, 8, 16, true);
    write_st(&dir.join("m.safetensors"), &src, None);
    let out = dir.join("same.safetensors");
    ok(&run(&[
        &dir.join("m.safetensors"),
        &"-o",
        &out,
        &"-g",
        &"4",
        &"--heads",
        &"4",
    ]));
    assert_eq!(read_st(&out).0, src);

    // --pooling first keeps head g·r of each group.
    let out = dir.join("first.safetensors");
    ok(&run(&[
        &dir.join("m.safetensors"),
        &"-o",
        &out,
        &"-g",
        &"2",
        &"--heads",
        &"4",
        &"--pooling",
        &"first",
    ]));
    let got = read_st(&out).0;
    let k = &src["model.layers.0.self_attn.k_proj.weight"];
    let row = 16 * 2; // bytes of one row of 16 bf16
    let want: Vec<u8> = [0usize, 2]
        .iter()
        .flat_map(|&head| k.data[head * 8 * row..(head + 1) * 8 * row].to_vec())
        .collect();
    assert_eq!(got["model.layers.0.self_attn.k_proj.weight"].data, want);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gqa_source_to_fewer_groups_and_custom_pattern() {
    let dir = tmpdir("gqa-source");
    // Already GQA: 4 KV heads (num_key_value_heads) for 12 query heads; to 1
    // (MQA). BERT-like names through a custom pattern.
    let (h, d, dm) = (4, 3, 5);
    let mut src = BTreeMap::new();
    for i in 0..3 {
        for (j, kv) in ["key", "value", "query"].iter().enumerate() {
            let rows = if *kv == "query" { 3 * h * d } else { h * d };
            src.insert(
                format!("encoder.layer.{i}.attention.self.{kv}.weight"),
                tensor(Ty::F32, &[rows, dm], (10 * i + j) as u64),
            );
        }
    }
    write_st(&dir.join("b.safetensors"), &src, None);
    std::fs::write(
        dir.join("config.json"),
        json!({"num_attention_heads": 12, "num_key_value_heads": h}).to_string(),
    )
    .unwrap();
    let out = dir.join("out").join("b.safetensors");
    std::fs::create_dir(dir.join("out")).unwrap();
    let pat = "encoder.layer.{i}.attention.self.{kv:key,value}.weight";
    ok(&run(&[
        &dir.join("b.safetensors"),
        &"-o",
        &out,
        &"-g",
        &"1",
        &"--pattern",
        &pat,
    ]));
    let got = read_st(&out).0;
    for (name, t) in &src {
        if name.contains("query") {
            assert_eq!(&got[name], t);
        } else {
            assert_eq!(got[name], literal_mean(Ty::F32, t, h, 1), "{name}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn t5_sharded_with_index() {
    let dir = tmpdir("t5");
    let input = dir.join("in");
    std::fs::create_dir(&input).unwrap();
    let (h, g, d, dm) = (6, 3, 4, 8);
    let mut shards = [BTreeMap::new(), BTreeMap::new()];
    let mut weight_map = serde_json::Map::new();
    let mut seed = 100;
    let mut names = vec!["shared.weight".to_string()];
    for i in 0..2 {
        for kv in ["q", "k", "v", "o"] {
            names.push(format!(
                "encoder.block.{i}.layer.0.SelfAttention.{kv}.weight"
            ));
            names.push(format!(
                "decoder.block.{i}.layer.0.SelfAttention.{kv}.weight"
            ));
            names.push(format!(
                "decoder.block.{i}.layer.1.EncDecAttention.{kv}.weight"
            ));
        }
    }
    for (n, name) in names.iter().enumerate() {
        seed += 1;
        let shape = if name.starts_with("shared") {
            [10, dm]
        } else {
            [h * d, dm]
        };
        // Layer 1's K and V land in different shards on purpose.
        let s = n % 2;
        shards[s].insert(name.clone(), tensor(Ty::F16, &shape, seed));
        weight_map.insert(
            name.clone(),
            json!(format!("model-0000{}-of-00002.safetensors", s + 1)),
        );
    }
    for (s, m) in shards.iter().enumerate() {
        write_st(
            &input.join(format!("model-0000{}-of-00002.safetensors", s + 1)),
            m,
            Some(json!({"format": "pt"})),
        );
    }
    let total: usize = shards
        .iter()
        .flat_map(|m| m.values())
        .map(|t| t.data.len())
        .sum();
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        input.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::write(
        input.join("config.json"),
        json!({"num_heads": h, "d_kv": d}).to_string(),
    )
    .unwrap();

    let out = dir.join("out");
    ok(&run(&[
        &input,
        &"-o",
        &out,
        &"-g",
        &g.to_string(),
        &"--preset",
        &"t5",
    ]));
    let mut pooled_bytes = 0;
    for (s, m) in shards.iter().enumerate() {
        let got = read_st(&out.join(format!("model-0000{}-of-00002.safetensors", s + 1))).0;
        assert_eq!(got.keys().collect::<Vec<_>>(), m.keys().collect::<Vec<_>>());
        for (name, t) in m {
            let converted = name.starts_with("decoder")
                && (name.ends_with(".k.weight") || name.ends_with(".v.weight"));
            if converted {
                assert_eq!(got[name], literal_mean(Ty::F16, t, h, g), "{name}");
            } else {
                // Encoder self-attention stays MHA, as in the paper.
                assert_eq!(&got[name], t, "{name}");
            }
            pooled_bytes += got[name].data.len();
        }
    }
    let new_index: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(new_index["weight_map"], index["weight_map"]);
    assert_eq!(new_index["metadata"]["total_size"], json!(pooled_bytes));
    let c: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["num_key_value_heads"], json!(g));
    assert_eq!(c["num_heads"], json!(h));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every bad input exits non-zero with a message and leaves the directory
/// as it was.
///
/// Long on purpose: a list of cases, not a procedure. Each bad input is
/// a few lines (the call, the error it must give, and that nothing was
/// written), so the function is as long as the list.
#[test]
fn bad_input_exits_non_zero_and_leaves_nothing() {
    let dir = tmpdir("errors");
    let src = llama(Ty::F16, 1, 6, 4, 8, false);
    let input = dir.join("m.safetensors");
    write_st(&input, &src, None);
    let out = dir.join("o.safetensors");
    let before = listing(&dir);

    // Each with the input and output above and these flags.
    let cases: [(&[&str], &str); 6] = [
        // H % G != 0.
        (&["-g", "4", "--heads", "6"], "groups"),
        // G = 0.
        (&["-g", "0", "--heads", "6"], "groups"),
        // No config and no --heads.
        (&["-g", "2"], "--heads"),
        // A pattern matching nothing (the T5 preset on Llama names).
        (
            &["-g", "2", "--heads", "6", "--preset", "t5"],
            "no tensor matches",
        ),
        // A pattern without {kv}.
        (&["-g", "2", "--heads", "6", "--pattern", "model.*"], "{kv}"),
        // Rows not a multiple of H.
        (&["-g", "1", "--heads", "5"], "not H·D"),
    ];
    for (flags, what) in cases {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&input, &"-o", &out];
        args.extend(flags.iter().map(|f| f as &dyn AsRef<std::ffi::OsStr>));
        fails(&run(&args), what, &dir, &before);
    }
    // K and V of different shapes.
    let mut odd = src.clone();
    odd.insert(
        "model.layers.0.self_attn.v_proj.weight".into(),
        tensor(Ty::F16, &[24, 7], 9),
    );
    let odd_in = dir.join("odd.safetensors");
    write_st(&odd_in, &odd, None);
    let before = listing(&dir);
    fails(
        &run(&[&odd_in, &"-o", &out, &"-g", &"2", &"--heads", &"6"]),
        "K and V differ",
        &dir,
        &before,
    );
    // Not a safetensors file.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"this is not a checkpoint at all").unwrap();
    let before = listing(&dir);
    fails(
        &run(&[&junk, &"-o", &out, &"-g", &"2", &"--heads", &"6"]),
        "not a safetensors file",
        &dir,
        &before,
    );
    // A missing input.
    fails(
        &run(&[
            &dir.join("nope.safetensors"),
            &"-o",
            &out,
            &"-g",
            &"2",
            &"--heads",
            &"6",
        ]),
        "no such file",
        &dir,
        &before,
    );
    // An existing output is refused without --force, and left untouched.
    std::fs::write(&out, b"keep me").unwrap();
    let before = listing(&dir);
    fails(
        &run(&[&input, &"-o", &out, &"-g", &"2", &"--heads", &"6"]),
        "--force",
        &dir,
        &before,
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // Overwriting an input is refused even with --force.
    fails(
        &run(&[
            &input, &"-o", &input, &"-g", &"2", &"--heads", &"6", &"--force",
        ]),
        "overwrite an input",
        &dir,
        &before,
    );
    // A file output beside the input's config.json would overwrite it.
    std::fs::write(dir.join("config.json"), r#"{"num_key_value_heads": 6}"#).unwrap();
    let fresh = dir.join("fresh.safetensors");
    let before = listing(&dir);
    fails(
        &run(&[&input, &"-o", &fresh, &"-g", &"2"]),
        "overwrite an input",
        &dir,
        &before,
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    // A directory output for a sharded input that already exists.
    let existing = dir.join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::create_dir(dir.join("srcdir")).unwrap();
    write_st(&dir.join("srcdir").join("model.safetensors"), &src, None);
    let before = listing(&dir);
    fails(
        &run(&[
            &dir.join("srcdir"),
            &"-o",
            &existing,
            &"-g",
            &"2",
            &"--heads",
            &"6",
        ]),
        "--force",
        &dir,
        &before,
    );
    // A projection of a type that cannot be pooled.
    let mut bad = src.clone();
    bad.insert(
        "model.layers.0.self_attn.k_proj.weight".into(),
        Tensor {
            dtype: "I32".into(),
            shape: vec![24, 4],
            data: vec![0; 24 * 4 * 4],
        },
    );
    bad.insert(
        "model.layers.0.self_attn.v_proj.weight".into(),
        Tensor {
            dtype: "I32".into(),
            shape: vec![24, 4],
            data: vec![0; 24 * 4 * 4],
        },
    );
    write_st(&dir.join("srcdir").join("model.safetensors"), &bad, None);
    let before = listing(&dir);
    fails(
        &run(&[
            &dir.join("srcdir"),
            &"-o",
            &dir.join("fresh"),
            &"-g",
            &"2",
            &"--heads",
            &"6",
        ]),
        "F32, F16 or BF16",
        &dir,
        &before,
    );

    // --force overwrites.
    ok(&run(&[
        &input, &"-o", &out, &"-g", &"2", &"--heads", &"6", &"--force",
    ]));
    assert_eq!(read_st(&out).0.len(), src.len());
    // A usage error (no --groups) is exit code 2.
    assert_eq!(run(&[&input, &"-o", &out]).status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
