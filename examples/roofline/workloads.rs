//! The workloads section: each decode workload of issue 18 against the
//! plain step it stands beside, in one run, runs interleaved. So far the
//! draft-tree mask (`Batch::tree_mask`): q_len 8 with a branching tree
//! against q_len 8 causal.

use super::*;

/// A draft tree of 8 tokens in topological order: 0 the root, 1 and 2 its
/// children, 3 and 4 children of 1, 5 of 2, 6 of 3, 7 of 5. Token t's word
/// holds its ancestors' bits and its own.
pub(crate) const TREE8: [u64; 8] = [
    0b0000_0001,
    0b0000_0011,
    0b0000_0101,
    0b0000_1011,
    0b0001_0011,
    0b0010_0101,
    0b0100_1011,
    0b1010_0101,
];

/// The "Workloads" section: Llama-3-8B f16, `[B, G, L, D]`, L 32768 (a
/// quarter with `--quick`), B 1, 1 thread, cold (the runs rotate over
/// layer caches of at least 1 GiB together): q_len 8 under [`TREE8`]
/// against q_len 8 causal, interleaved round by round.
pub(crate) fn workloads_report(tier: Tier, args: &Args, probes: &Probes) {
    let (h, g, d, q_len) = (32usize, 8usize, 128usize, 8usize);
    let l = if args.quick { 8192 } else { 32768 };
    let shape = Shape::new(1, h, g, d, Dtype::F16)
        .with_q_len(q_len)
        .with_max_kv_len(l);
    let layer_bytes = shape.kv_bytes(&[l]);
    let layers = ((1usize << 30) / layer_bytes).clamp(2, 32);
    let mut next = uniform_values(0x2545_F491_4F6C_DD1D);
    let caches: Vec<(KvBuffer, KvBuffer)> = (0..layers)
        .map(|_| {
            let k: Vec<f32> = (0..g * l * d).map(|_| next()).collect();
            let v: Vec<f32> = (0..g * l * d).map(|_| next()).collect();
            (
                KvBuffer::from_f32(Dtype::F16, &k, d).expect("workloads: K buffer"),
                KvBuffer::from_f32(Dtype::F16, &v, d).expect("workloads: V buffer"),
            )
        })
        .collect();
    let q: Vec<f32> = (0..shape.q_elems()).map(|_| next()).collect();
    let plan = Plan::new(&shape, &Options::default().with_tier(tier))
        .unwrap_or_else(|e| panic!("workloads plan: {e}"));
    let mut ws = plan.alloc_workspace();
    let mut out = vec![0f32; shape.out_elems()];
    let rounds = if args.quick { 5 } else { 15 };
    eprintln!("workloads: tree vs causal, {layers} layer caches, {rounds} rounds");
    // [causal, tree]: every time, for the best and the median.
    let mut times = [Vec::new(), Vec::new()];
    let lens = [l];
    let mut layer = 0;
    for round in 0..rounds + 1 {
        for (i, t) in times.iter_mut().enumerate() {
            let (k, v) = &caches[layer % layers];
            layer += 1;
            let kt = KvTensor::bgld(k.data(), l, g, d);
            let vt = KvTensor::bgld(v.data(), l, g, d);
            let mut batch = Batch::strided(&q, kt, vt, &lens);
            if i == 1 {
                batch = batch.with_tree_mask(&TREE8);
            }
            let start = Instant::now();
            plan.run(&batch, &mut out, None, &mut ws)
                .unwrap_or_else(|e| panic!("workloads run: {e}"));
            // The first round warms the pages and the plan's threads.
            if round > 0 {
                t.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let stat = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        (t[0], t[t.len() / 2])
    };
    let (causal, causal_med) = stat(&mut times[0]);
    let (tree, tree_med) = stat(&mut times[1]);
    // The binding roof: reading the cache, or its multiply-adds at the f32
    // FMA rate (q_len 8 gives 32 rows a head: compute-bound on most cores).
    let (bw, fma) = probes.get(1);
    let roof = (shape.kv_bytes(&[l]) as f64 / bw).max(shape.flops(&[l]) / fma);
    let ratio = tree / causal;
    if args.json {
        for (name, best, med) in [("causal", causal, causal_med), ("tree", tree, tree_med)] {
            println!(
                "{{\"section\":\"workloads\",\"workload\":\"{name}\",\"model\":\"Llama-3-8B\",\"h\":{h},\"g\":{g},\"dk\":{d},\"dv\":{d},\"l\":{l},\"kv_dtype\":\"f16\",\"q_len\":{q_len},\"threads\":1,\"kernel\":\"{}\",\"seconds\":{best:.6e},\"median_seconds\":{med:.6e},\"roofline_fraction\":{:.4}}}",
                plan.kernel_name(),
                roof / best
            );
        }
        println!(
            "{{\"section\":\"workload_ratio\",\"workload\":\"tree\",\"model\":\"Llama-3-8B\",\"l\":{l},\"q_len\":{q_len},\"threads\":1,\"t_over_t_plain\":{ratio:.3}}}"
        );
    } else {
        println!();
        println!(
            "## Workloads (Llama-3-8B f16, [B, G, L, D], B 1, 1 thread, cold; ratio: time over the plain step in the same run)"
        );
        println!(
            "{:<8} {:>6} {:>2} {:>10} {:>10} {:>8} {:>6}",
            "workload", "L", "q", "seconds", "median s", "roofline", "ratio"
        );
        for (name, best, med) in [("causal", causal, causal_med), ("tree", tree, tree_med)] {
            println!(
                "{name:<8} {l:>6} {q_len:>2} {best:>10.6} {med:>10.6} {:>8.3} {:>6.3}",
                roof / best,
                best / causal
            );
        }
    }
}
