//! Helpers shared by the converter's CLI suites: synthetic safetensors
//! checkpoints written and read here by hand (8 bytes of header length, a
//! JSON header, the data), a literal mean of head groups, and running the
//! binary in a temporary directory.
#![allow(dead_code)]

pub use std::collections::BTreeMap;
pub use std::path::{Path, PathBuf};
pub use std::process::{Command, Output};

pub use gqa_kernels::{bf16, f16};
pub use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ty {
    F32,
    F16,
    Bf16,
}

impl Ty {
    pub fn name(self) -> &'static str {
        match self {
            Ty::F32 => "F32",
            Ty::F16 => "F16",
            Ty::Bf16 => "BF16",
        }
    }
    pub fn encode(self, x: f64) -> Vec<u8> {
        match self {
            Ty::F32 => (x as f32).to_le_bytes().to_vec(),
            Ty::F16 => f16::from_f64(x).to_le_bytes().to_vec(),
            Ty::Bf16 => bf16::from_f64(x).to_le_bytes().to_vec(),
        }
    }
    pub fn size(self) -> usize {
        if self == Ty::F32 {
            4
        } else {
            2
        }
    }
    pub fn decode(self, b: &[u8]) -> f64 {
        match self {
            Ty::F32 => f64::from(f32::from_le_bytes(b.try_into().unwrap())),
            Ty::F16 => f64::from(f16::from_le_bytes(b.try_into().unwrap())),
            Ty::Bf16 => f64::from(bf16::from_le_bytes(b.try_into().unwrap())),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A tensor of `shape` whose values come from a seeded generator.
pub fn tensor(ty: Ty, shape: &[usize], seed: u64) -> Tensor {
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

pub fn write_st(path: &Path, tensors: &BTreeMap<String, Tensor>, meta: Option<Value>) {
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

pub fn read_st(path: &Path) -> (BTreeMap<String, Tensor>, Option<Value>) {
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
pub fn literal_mean(ty: Ty, t: &Tensor, heads: usize, groups: usize) -> Tensor {
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

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gqa-convert-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gqa-convert"));
    for a in args {
        c.arg(a);
    }
    c.arg("--quiet");
    c.output().unwrap()
}

pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "gqa-convert failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Fails with exit code 1, a message containing `what`, and leaves `dir`
/// exactly as it was.
pub fn fails(o: &Output, what: &str, dir: &Path, before: &[PathBuf]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, stderr: {err}");
    assert!(err.contains(what), "message should mention `{what}`: {err}");
    assert_eq!(
        listing(dir),
        before,
        "a failed conversion left files behind"
    );
}

pub fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walk(dir);
    v.sort();
    v
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
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
pub fn llama(
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

pub fn is_kv(name: &str) -> bool {
    name.contains("k_proj") || name.contains("v_proj")
}
