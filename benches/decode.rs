//! Criterion benches of the decode step: one group per model shape, every
//! tier this machine has, throughput in KV bytes read per step; then every
//! KV element type on Llama-3-8B; then MLA latent rows (bf16, fp8 per
//! row, fp8_ds_mla); then the
//! serving surface (layouts, query tokens, threads); then KV append (one
//! token into each of 32 layer caches, throughput in bytes written). Bench
//! IDs carry the
//! kernel instance name (e.g. `decode_f16_d128_r4__avx512`).
//!
//! `cargo bench --bench decode` (set `GQA_BENCH_L` to change the KV length).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gqa_kernels::{
    append, f16, Batch, Dtype, KvBuffer, KvCache, KvCacheMut, KvData, KvPages, KvPagesMut,
    KvTensor, KvTensorMut, NewKv, Options, PagedKv, Plan, RingKv, Shape, Tier,
};

struct Model {
    name: &'static str,
    h: usize,
    g: usize,
    d: usize,
}

const MODELS: [Model; 5] = [
    Model {
        name: "Llama-3-8B",
        h: 32,
        g: 8,
        d: 128,
    },
    Model {
        name: "Qwen2.5-7B",
        h: 28,
        g: 4,
        d: 128,
    },
    Model {
        name: "Phi-3-mini",
        h: 32,
        g: 32,
        d: 96,
    },
    Model {
        name: "Falcon-7B",
        h: 71,
        g: 1,
        d: 64,
    },
    Model {
        name: "Gemma-2-9B",
        h: 16,
        g: 8,
        d: 256,
    },
];

/// The KV length of the benches: `GQA_BENCH_L`, or 8192.
fn bench_len() -> usize {
    std::env::var("GQA_BENCH_L")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8192)
}

fn decode(c: &mut Criterion) {
    let l = bench_len();
    for m in &MODELS {
        let shape = Shape::new(1, m.h, m.g, m.d, Dtype::F16);
        let n = m.g * l * m.d;
        let k: Vec<f16> = (0..n)
            .map(|i| f16::from_f32(((i * 7919) % 2001) as f32 / 1000.0 - 1.0))
            .collect();
        let v: Vec<f16> = (0..n)
            .map(|i| f16::from_f32(((i * 104729) % 2001) as f32 / 1000.0 - 1.0))
            .collect();
        let kt = KvTensor::bgld(&k[..], l, m.g, m.d);
        let vt = KvTensor::bgld(&v[..], l, m.g, m.d);
        let q = vec![0.01f32; shape.q_elems()];
        let mut out = vec![0f32; shape.out_elems()];
        let mut group = c.benchmark_group(format!("{}/f16/L{l}", m.name));
        group.throughput(Throughput::Bytes(shape.kv_bytes(&[l]) as u64));
        group.sample_size(20);
        for tier in Tier::available() {
            let plan = Plan::new(&shape, &Options::default().with_tier(tier)).expect("plan");
            let lens = [l];
            let batch = Batch::strided(&q, kt, vt, &lens);
            let mut ws = plan.alloc_workspace();
            group.bench_function(BenchmarkId::from_parameter(plan.kernel_name()), |b| {
                b.iter(|| plan.run(&batch, &mut out, None, &mut ws).expect("run"))
            });
        }
        group.finish();
    }
}

/// Every KV element type (and an int8 or fp8 K with an f16 V) on
/// Llama-3-8B, best tier, one thread; throughput in the bytes each type
/// reads (values and scales).
fn kv_types(c: &mut Criterion) {
    let l = bench_len();
    let (h, g, d) = (32, 8, 128);
    let n = g * l * d;
    let pairs = [
        (Dtype::F16, Dtype::F16),
        (Dtype::F32, Dtype::F32),
        (Dtype::Bf16, Dtype::Bf16),
        (Dtype::Int8, Dtype::Int8),
        (Dtype::Q8_0, Dtype::Q8_0),
        (Dtype::Fp8E4M3, Dtype::Fp8E4M3),
        (Dtype::Fp8E5M2, Dtype::Fp8E5M2),
        (Dtype::Int8, Dtype::F16),
        (Dtype::Fp8E4M3, Dtype::F16),
    ];
    let lens = [l];
    let mut group = c.benchmark_group(format!("kv_types/Llama-3-8B/L{l}"));
    group.sample_size(20);
    for (kd, vd) in pairs {
        let (k, v) = (owned(kd, n, d, g), owned(vd, n, d, g));
        let shape = Shape::new(1, h, g, d, kd).with_dtypes(kd, vd);
        let q = vec![0.01f32; shape.q_elems()];
        let mut out = vec![0f32; shape.out_elems()];
        let plan = Plan::new(&shape, &Options::default()).expect("plan");
        let batch = Batch::strided(
            &q,
            KvTensor::bgld(k.data(), l, g, d),
            KvTensor::bgld(v.data(), l, g, d),
            &lens,
        );
        let mut ws = plan.alloc_workspace();
        group.throughput(Throughput::Bytes(shape.kv_bytes(&lens) as u64));
        group.bench_function(BenchmarkId::from_parameter(plan.kernel_name()), |b| {
            b.iter(|| plan.run(&batch, &mut out, None, &mut ws).expect("run"))
        });
    }
    group.finish();
}

/// Multi-head latent attention (DeepSeek-V2/V3 absorbed decode: H 128, one
/// latent row of Dk 576 per position, V its leading 512), 1 thread, over
/// the cache types MLA caches use: bf16, fp8 E4M3 with a scale per row,
/// and DeepSeek-V3.2's FP8 rows (`fp8_ds_mla`, a scale per 128 values).
/// Throughput in latent-row bytes read per step.
fn mla(c: &mut Criterion) {
    let l = bench_len();
    let (h, dk, dv) = (128, 576, 512);
    let lens = [l];
    let x: Vec<f32> = (0..512 * dk)
        .map(|i| ((i * 7919) % 1999) as f32 / 1000.0 - 1.0)
        .collect();
    let mut group = c.benchmark_group(format!("mla/H128-Dk576-Dv512/L{l}"));
    group.sample_size(10);
    for dt in [Dtype::Bf16, Dtype::Fp8E4M3Row, Dtype::Fp8DsMla] {
        let kv = KvBuffer::from_f32(dt, &x, dk)
            .and_then(|b| b.repeat_to(l * dk))
            .expect("a latent cache");
        let shape = Shape::new(1, h, 1, dk, dt)
            .with_head_dims(dk, dv)
            .with_max_kv_len(l);
        let q = vec![0.01f32; shape.q_elems()];
        let mut out = vec![0f32; shape.out_elems()];
        let plan = Plan::new(&shape, &Options::default().with_threads(1)).expect("plan");
        let cache = KvCache::latent(KvTensor::bgld(kv.data(), l, 1, dk));
        group.throughput(Throughput::Bytes(cache.kv_bytes(&shape, &lens) as u64));
        let batch = Batch::new(&q, cache, &lens);
        let mut ws = plan.alloc_workspace();
        group.bench_function(BenchmarkId::from_parameter(plan.kernel_name()), |b| {
            b.iter(|| plan.run(&batch, &mut out, None, &mut ws).expect("run"))
        });
    }
    group.finish();
}

/// The serving surface on Llama-3-8B, f16, best tier: strided vs paged
/// (pages of 16 and 256, `[G, page, D]`, shuffled) vs ring, `q_len` 1 and
/// 4, 1 thread and all cores.
fn serving(c: &mut Criterion) {
    let l = bench_len();
    let (h, g, d) = (32, 8, 128);
    let n = g * l * d;
    let data: Vec<f16> = (0..n)
        .map(|i| f16::from_f32(((i * 7919) % 2001) as f32 / 1000.0 - 1.0))
        .collect();
    let max_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = vec![1];
    if max_threads > 1 {
        threads.push(max_threads);
    }
    for page in [16usize, 256] {
        assert_eq!(l % page, 0, "GQA_BENCH_L must be a multiple of 256");
    }
    // Shuffled block tables (deterministic).
    let table = |page: usize| {
        let mut t: Vec<u32> = (0..(l / page) as u32).collect();
        let mut s = 0x9E37_79B9u64;
        for i in (1..t.len()).rev() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t.swap(i, ((s >> 33) % (i as u64 + 1)) as usize);
        }
        t
    };
    let (t16, t256) = (table(16), table(256));
    let first_pos = [l / 2];
    let lens = [l];
    let strided = KvTensor::bgld(&data[..], l, g, d);
    fn paged<'a>(data: &'a [f16], t: &'a [u32], page: usize, g: usize, d: usize) -> KvCache<'a> {
        KvCache::Paged(PagedKv {
            k: KvPages::gpd(data, page, g, d),
            v: KvPages::gpd(data, page, g, d),
            page_size: page,
            block_table: t,
            blocks_per_seq: t.len(),
        })
    }
    let layouts = [
        ("strided", KvCache::strided(strided, strided)),
        ("paged16", paged(&data, &t16, 16, g, d)),
        ("paged256", paged(&data, &t256, 256, g, d)),
        (
            "ring",
            KvCache::Ring(RingKv {
                k: strided,
                v: strided,
                capacity: l,
                first_pos: &first_pos,
            }),
        ),
    ];
    for q_len in [1, 4] {
        let shape = Shape::new(1, h, g, d, Dtype::F16)
            .with_q_len(q_len)
            .with_max_kv_len(l);
        let q = vec![0.01f32; shape.q_elems()];
        let mut out = vec![0f32; shape.out_elems()];
        let mut group = c.benchmark_group(format!("serving/Llama-3-8B/f16/L{l}/q{q_len}"));
        group.throughput(Throughput::Bytes(shape.kv_bytes(&lens) as u64));
        group.sample_size(20);
        for &t in &threads {
            let plan = Plan::new(&shape, &Options::default().with_threads(t)).expect("plan");
            let mut ws = plan.alloc_workspace();
            for (name, cache) in &layouts {
                let batch = Batch::new(&q, *cache, &lens);
                let id = BenchmarkId::new(format!("{name}/t{t}"), plan.kernel_name());
                group.bench_function(id, |b| {
                    b.iter(|| plan.run(&batch, &mut out, None, &mut ws).expect("run"))
                });
            }
        }
        group.finish();
    }
}

/// One token (f16 source) appended to each of Llama-3-8B's 32 layer caches
/// of 8192 + 1 positions, per target type, strided and paged (pages of 16).
fn append_kv(c: &mut Criterion) {
    const LAYERS: usize = 32;
    let (g, d, l, page) = (8usize, 128usize, 8192usize, 16usize);
    let row = g * d;
    let src: Vec<f16> = (0..row).map(|i| f16::from_f32(i as f32 * 1e-3)).collect();
    let offsets = [0usize, 1];
    let new = NewKv {
        k: KvData::F16(&src),
        v: KvData::F16(&src),
        offsets: &offsets,
        kv_heads: g,
        head_dim_k: d,
        head_dim_v: d,
    };
    let table: Vec<u32> = (0..(l + 1).div_ceil(page) as u32).rev().collect();
    let mut group = c.benchmark_group(format!("append/Llama-3-8B/{LAYERS}-layers/L{l}"));
    // fp8_ds_mla is a latent (MLA) row, not a Llama cache type.
    for dtype in Dtype::ALL.into_iter().filter(|d| !d.is_row_format()) {
        group.throughput(criterion::Throughput::Bytes(
            (LAYERS * 2 * g * dtype.row_bytes(d)) as u64,
        ));
        let n = table.len() * page * row;
        let mut layers: Vec<(KvBuffer, KvBuffer)> = (0..LAYERS)
            .map(|_| (owned(dtype, n, d, g), owned(dtype, n, d, g)))
            .collect();
        for paged in [false, true] {
            let name = if paged { "paged16" } else { "strided" };
            group.bench_function(BenchmarkId::new(name, dtype), |b| {
                b.iter(|| {
                    for (k, v) in layers.iter_mut() {
                        let mut cache = if paged {
                            KvCacheMut::Paged {
                                k: KvPagesMut::gpd(k.data_mut(), page, g, d),
                                v: KvPagesMut::gpd(v.data_mut(), page, g, d),
                                page_size: page,
                                block_table: &table,
                                blocks_per_seq: table.len(),
                            }
                        } else {
                            KvCacheMut::Strided {
                                k: KvTensorMut::bgld(k.data_mut(), l + 1, g, d),
                                v: KvTensorMut::bgld(v.data_mut(), l + 1, g, d),
                                capacity: l + 1,
                            }
                        };
                        append(&mut cache, &new, &[l]).expect("append");
                    }
                })
            });
        }
    }
    group.finish();
}

/// A zero-filled cache of `n` values of `dtype` (fp8: a scale of 0.01
/// per KV head).
fn owned(dtype: Dtype, n: usize, d: usize, g: usize) -> KvBuffer {
    let buf = KvBuffer::zeros(dtype, n, d).expect("a cache buffer");
    match dtype {
        Dtype::Fp8E4M3 | Dtype::Fp8E5M2 => buf.with_scales(vec![0.01; g]).expect("scales"),
        _ => buf,
    }
}

criterion_group!(benches, decode, kv_types, mla, serving, append_kv);
criterion_main!(benches);
