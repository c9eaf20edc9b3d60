//! Criterion benches of the decode step: one group per model shape, every
//! tier this machine has, throughput in KV bytes read per step. Bench IDs
//! carry the kernel instance name (e.g. `decode_f16_d128_r4__avx512`).
//!
//! `cargo bench --bench decode` (set `GQA_BENCH_L` to change the KV length).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gqa_kernels::{f16, Dtype, KvTensor, Options, Plan, Shape, Tier};

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

fn decode(c: &mut Criterion) {
    let l: usize = std::env::var("GQA_BENCH_L")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8192);
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
            group.bench_function(BenchmarkId::from_parameter(plan.kernel_name()), |b| {
                b.iter(|| {
                    plan.decode(&q, &kt, &vt, &[l], &mut out, None)
                        .expect("run")
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, decode);
criterion_main!(benches);
