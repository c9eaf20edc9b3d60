// scratch: not committed
use gqa_kernels::*;
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (h, g, d, q_len, l) = (
        a[1].parse::<usize>().unwrap(),
        a[2].parse::<usize>().unwrap(),
        a[3].parse::<usize>().unwrap(),
        a[4].parse::<usize>().unwrap(),
        a[5].parse::<usize>().unwrap(),
    );
    let unit = match a[6].as_str() {
        "f32" => Unit::F32Fma,
        "bf16" => Unit::Bf16Dot,
        "int8" => Unit::Int8Dot,
        _ => panic!(),
    };
    let prec = if a[7] == "fast" {
        Precision::Fast
    } else {
        Precision::Exact
    };
    let dtype = match a[8].as_str() {
        "bf16" => Dtype::Bf16,
        "f16" => Dtype::F16,
        "int8" => Dtype::Int8,
        "f32" => Dtype::F32,
        _ => panic!(),
    };
    let iters: usize = a[9].parse().unwrap();
    let shape = Shape::new(1, h, g, d, dtype)
        .with_q_len(q_len)
        .with_max_kv_len(l);
    let mut s = 1u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let q: Vec<f32> = (0..shape.q_elems()).map(|_| next()).collect();
    let kf: Vec<f32> = (0..l * g * d).map(|_| next()).collect();
    let vf: Vec<f32> = (0..l * g * d).map(|_| next()).collect();
    let k = KvBuffer::from_f32(dtype, &kf, d).unwrap();
    let v = KvBuffer::from_f32(dtype, &vf, d).unwrap();
    let opts = Options::default().with_unit(unit).with_precision(prec);
    let mut plan = Plan::new(&shape, &opts).unwrap();
    if let Some(x) = a.get(10) {
        plan = plan.with_stream_prefetch(x.parse().unwrap());
    }
    let kt = KvTensor::bgld(k.data(), l, g, d);
    let vt = KvTensor::bgld(v.data(), l, g, d);
    let mut out = vec![0f32; shape.out_elems()];
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let t = Instant::now();
        plan.decode(&q, &kt, &vt, &[l], &mut out, None).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{} best {:.3} ms", plan.kernel_name(), best * 1e3);
}
