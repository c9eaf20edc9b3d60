//! The workloads section: each decode workload of issue 18 against the
//! plain step it stands beside, in one run, runs interleaved: the
//! draft-tree mask (`Batch::tree_mask`, q_len 8 with a branching tree
//! against q_len 8 causal) and the latent cache (`KvCache::latent`, an MLA
//! step reading one row per position against the same shape given as
//! separate K and V buffers) and sparse position lists
//! (`Batch::positions`, a sixteenth of the positions, scattered or as pages
//! of 16, against the full step, beside the floor of the scattered rows
//! read with no compute).

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

/// Workloads against their plain step: all run on one plan, interleaved
/// round by round, each run on the next of the layer caches.
struct Pair<'a> {
    /// The runs' names in the report, the plain step's first (`causal`,
    /// `tree`; `separate`, `latent`; `full`, `sparse`, …).
    names: &'static [&'static str],
    model: &'static str,
    shape: Shape,
    l: usize,
    /// The batch of run `i` (0 the plain step) over layer cache `layer`.
    batch: Box<dyn Fn(usize, usize) -> Batch<'a> + 'a>,
    layers: usize,
    /// Threads of the pair's plan.
    threads: usize,
    /// Whether the plan takes prefix groups.
    cascade: bool,
    /// A floor beside the pair, timed in each round after its runs on the
    /// next layer cache: what its first workload (`names[1]`) reads, with
    /// none of its compute (the sparse pair: [`gather_probe`]).
    probe: Option<Box<dyn Fn(usize) -> u64 + 'a>>,
}

/// Reads every 64-byte line of the K and V rows that `list` names in a
/// head-major (`[G, L, D]`) f16 cache, KV head by KV head in list order as
/// the sparse walk does, with no compute: how long the rows' misses take
/// when nothing else runs beside them (a loop this small lets the core
/// run ahead over many rows). Returns a sum of what it read.
fn gather_probe(k: &[f16], v: &[f16], l: usize, g: usize, d: usize, list: &[u32]) -> u64 {
    let mut sum = 0u64;
    for h in 0..g {
        for &p in list {
            let row = (h * l + p as usize) * d;
            for x in (row..row + d).step_by(32) {
                sum = sum.wrapping_add(u64::from(k[x].to_bits()) + u64::from(v[x].to_bits()));
            }
        }
    }
    std::hint::black_box(sum)
}

/// Layer caches that fill at least 1 GiB together (2 to 32 of them).
fn layer_count(bytes: usize) -> usize {
    ((1usize << 30) / bytes.max(1)).clamp(2, 32)
}

/// The "Workloads" section: B 1, 1 thread, cold (the runs rotate over
/// layer caches of at least 1 GiB together), each workload and its plain
/// step interleaved round by round:
/// - Llama-3-8B f16, `[B, G, L, D]`, L 32768 (a quarter with `--quick`):
///   q_len 8 under [`TREE8`] against q_len 8 causal;
/// - an MLA step (H 128, G 1, Dk 576, Dv 512, bf16, L 8192, a quarter with
///   `--quick`): one latent row per position against separate K and V
///   buffers (V a copy of K's leading 512 values);
/// - Llama-3-8B f16 q_len 1, L 32768 (a quarter with `--quick`): a
///   sixteenth of the positions listed, scattered one by one or as pages
///   of 16, against the full step, and the scattered rows read with no
///   compute ([`gather_probe`]);
/// - Llama-3-8B f16 q_len 1, B 16 sequences of an 8192-position prefix (a
///   quarter with `--quick`) and 256 positions of their own each, pages of
///   16 (`[G, page, D]`, vLLM's CPU layout) whose block tables share the
///   prefix's pages: the prefix declared as one group against the same
///   batch undeclared, 1 and 2 threads.
pub(crate) fn workloads_report(tier: Tier, args: &Args, probes: &Probes) {
    let div = if args.quick { 4 } else { 1 };
    let mut next = uniform_values(0x2545_F491_4F6C_DD1D);
    // The tree pair's caches.
    let (h, g, d) = (32usize, 8usize, 128usize);
    let lt = 32768 / div;
    let tree_shape = Shape::new(1, h, g, d, Dtype::F16)
        .with_q_len(TREE8.len())
        .with_max_kv_len(lt);
    let caches: Vec<(KvBuffer, KvBuffer)> = (0..layer_count(tree_shape.kv_bytes(&[lt])))
        .map(|_| {
            let k: Vec<f32> = (0..g * lt * d).map(|_| next()).collect();
            let v: Vec<f32> = (0..g * lt * d).map(|_| next()).collect();
            (
                KvBuffer::from_f32(Dtype::F16, &k, d).expect("workloads: K buffer"),
                KvBuffer::from_f32(Dtype::F16, &v, d).expect("workloads: V buffer"),
            )
        })
        .collect();
    // The MLA pair's caches: a latent buffer per layer, and a V copy of its
    // leading values for the separate step.
    let (hm, dk, dv) = (128usize, 576usize, 512usize);
    let lm = 8192 / div;
    let mla_shape = Shape::new(1, hm, 1, dk, Dtype::Bf16)
        .with_head_dims(dk, dv)
        .with_max_kv_len(lm);
    let mla: Vec<(KvBuffer, KvBuffer)> = (0..layer_count(mla_shape.kv_bytes(&[lm])))
        .map(|_| {
            let k: Vec<f32> = (0..lm * dk).map(|_| next()).collect();
            let v: Vec<f32> = k.chunks(dk).flat_map(|r| r[..dv].to_vec()).collect();
            (
                KvBuffer::from_f32(Dtype::Bf16, &k, dk).expect("workloads: latent buffer"),
                KvBuffer::from_f32(Dtype::Bf16, &v, dv).expect("workloads: V buffer"),
            )
        })
        .collect();
    // The sparse pair: 2048 of 32768 positions (a sixteenth), scattered
    // (a stride-16 lattice jittered per position) or as 128 pages of 16.
    let k_sel = lt / 16;
    let scattered: Vec<u32> = (0..k_sel)
        .map(|i| (16 * i + (i * 7 + i / 3) % 16) as u32)
        .collect();
    let paged: Vec<u32> = (0..k_sel / 16)
        .flat_map(|p| {
            let start = 16 * (16 * p + (p * 5) % 16);
            (start..start + 16).map(|x| x as u32)
        })
        .collect();
    let (sel_off, one_shape) = ([0, k_sel], tree_shape.with_q_len(1));
    let (lens_t, lens_m) = ([lt], [lm]);
    let q_t: Vec<f32> = (0..tree_shape.q_elems()).map(|_| next()).collect();
    let q_m: Vec<f32> = (0..mla_shape.q_elems()).map(|_| next()).collect();
    let q_1: Vec<f32> = (0..one_shape.q_elems()).map(|_| next()).collect();
    // The tree and sparse pairs' step: queries `q` over layer cache `layer`.
    let strided = |q, layer: usize| {
        let (k, v) = &caches[layer];
        let kt = KvTensor::bgld(k.data(), lt, g, d);
        let vt = KvTensor::bgld(v.data(), lt, g, d);
        Batch::strided(q, kt, vt, &lens_t)
    };
    let pairs = [
        Pair {
            names: &["causal", "tree"],
            model: "Llama-3-8B",
            shape: tree_shape,
            l: lt,
            layers: caches.len(),
            batch: Box::new(|i, layer| {
                let b = strided(&q_t, layer);
                if i == 1 {
                    b.with_tree_mask(&TREE8)
                } else {
                    b
                }
            }),
            threads: 1,
            cascade: false,
            probe: None,
        },
        Pair {
            names: &["separate", "latent"],
            model: "MLA-size",
            shape: mla_shape,
            l: lm,
            layers: mla.len(),
            batch: Box::new(|i, layer| {
                let (k, v) = &mla[layer];
                let kt = KvTensor::bgld(k.data(), lm, 1, dk);
                let cache = if i == 1 {
                    KvCache::latent(kt)
                } else {
                    KvCache::strided(kt, KvTensor::bgld(v.data(), lm, 1, dv))
                };
                Batch::new(&q_m, cache, &lens_m)
            }),
            threads: 1,
            cascade: false,
            probe: None,
        },
        Pair {
            names: &["full", "sparse-1", "sparse-16"],
            model: "Llama-3-8B",
            shape: one_shape,
            l: lt,
            layers: caches.len(),
            batch: Box::new(|i, layer| {
                let b = strided(&q_1, layer);
                match i {
                    1 => b.with_positions(Positions::per_sequence(&scattered, &sel_off)),
                    2 => b.with_positions(Positions::per_sequence(&paged, &sel_off)),
                    _ => b,
                }
            }),
            threads: 1,
            cascade: false,
            probe: Some(Box::new(|layer| {
                let (k, v) = &caches[layer];
                match (k.data(), v.data()) {
                    (KvData::F16(k), KvData::F16(v)) => gather_probe(k, v, lt, g, d, &scattered),
                    _ => unreachable!("the sparse pair's caches are f16"),
                }
            })),
        },
    ];
    // The cascade pair: a pool per layer of the prefix's pages, then each
    // sequence's own pages; sequence b's table is the prefix's pages, then
    // its own.
    let (nb, page, lp, ls) = (16usize, 16usize, 8192 / div, 256usize);
    let lc = lp + ls;
    let bps = lc / page;
    let pages = (lp + nb * ls) / page;
    let cascade_shape = Shape::new(nb, h, g, d, Dtype::F16).with_max_kv_len(lc);
    let pools: Vec<(KvBuffer, KvBuffer)> =
        (0..layer_count(Shape::new(1, h, g, d, Dtype::F16).kv_bytes(&[pages * page])))
            .map(|_| {
                let k: Vec<f32> = (0..pages * page * g * d).map(|_| next()).collect();
                let v: Vec<f32> = (0..pages * page * g * d).map(|_| next()).collect();
                (
                    KvBuffer::from_f32(Dtype::F16, &k, d).expect("workloads: K pool"),
                    KvBuffer::from_f32(Dtype::F16, &v, d).expect("workloads: V pool"),
                )
            })
            .collect();
    let table: Vec<u32> = (0..nb)
        .flat_map(|b| {
            (0..bps).map(move |blk| {
                if blk < lp / page {
                    blk as u32
                } else {
                    (lp / page + b * (ls / page) + blk - lp / page) as u32
                }
            })
        })
        .collect();
    let lens_c = vec![lc; nb];
    let (pre_lens, pre_off, pre_members) = ([lp], [0, nb], (0..nb).collect::<Vec<_>>());
    let q_c: Vec<f32> = (0..cascade_shape.q_elems()).map(|_| next()).collect();
    let cascade_batch = |i: usize, layer: usize| {
        let (k, v) = &pools[layer];
        let cache = KvCache::Paged(PagedKv {
            k: KvPages::gpd(k.data(), page, g, d),
            v: KvPages::gpd(v.data(), page, g, d),
            page_size: page,
            block_table: &table,
            blocks_per_seq: bps,
        });
        let b = Batch::new(&q_c, cache, &lens_c);
        if i == 1 {
            b.with_prefix_groups(PrefixGroups::new(&pre_lens, &pre_off, &pre_members))
        } else {
            b
        }
    };
    let cascade_pair = |threads: usize| Pair {
        names: &["shared", "cascade"],
        model: "Llama-3-8B",
        shape: cascade_shape,
        l: lc,
        layers: pools.len(),
        batch: Box::new(cascade_batch),
        threads,
        cascade: true,
        probe: None,
    };
    let mut pairs = pairs.into_iter().collect::<Vec<_>>();
    pairs.push(cascade_pair(1));
    if args.threads.contains(&2) {
        pairs.push(cascade_pair(2));
    }
    let rounds = if args.quick { 5 } else { 15 };
    if !args.json {
        println!();
        println!("## Workloads (cold; ratio: time over the plain step in the same run)");
        println!(
            "{:<10} {:<11} {:>2} {:>4} {:>2} {:>4} {:>4} {:>6} {:>2} {:>5} {:>3} {:>9} {:>10} {:>10} {:>10} {:>8} {:>6}",
            "workload", "model", "B", "H", "G", "Dk", "Dv", "L", "q", "kv", "thr", "unit", "kv bytes", "seconds", "median s", "roofline", "ratio"
        );
    }
    for p in &pairs {
        run_pair(tier, args, probes, p, rounds);
    }
}

/// Runs one pair and prints its two rows.
fn run_pair(tier: Tier, args: &Args, probes: &Probes, p: &Pair<'_>, rounds: usize) {
    let mut options = Options::default().with_tier(tier).with_threads(p.threads);
    options.cascade = p.cascade;
    let plan = Plan::new(&p.shape, &options).unwrap_or_else(|e| panic!("workloads plan: {e}"));
    let mut ws = plan.alloc_workspace();
    let mut out = vec![0f32; p.shape.out_elems()];
    eprintln!(
        "workloads: {}, {} layer caches, {rounds} rounds",
        p.names.join(" vs "),
        p.layers
    );
    // Every time of each run, for the best and the median.
    let mut times = vec![Vec::new(); p.names.len()];
    let mut probe_times = Vec::new();
    let mut layer = 0;
    for round in 0..rounds + 1 {
        for (i, t) in times.iter_mut().enumerate() {
            let batch = (p.batch)(i, layer % p.layers);
            layer += 1;
            let start = Instant::now();
            plan.run(&batch, &mut out, None, &mut ws)
                .unwrap_or_else(|e| panic!("workloads run: {e}"));
            // The first round warms the pages and the plan's threads.
            if round > 0 {
                t.push(start.elapsed().as_secs_f64());
            }
        }
        if let Some(probe) = &p.probe {
            let start = Instant::now();
            probe(layer % p.layers);
            layer += 1;
            if round > 0 {
                probe_times.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let stats: Vec<(f64, f64)> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            (t[0], t[t.len() / 2])
        })
        .collect();
    let base = stats[0].0;
    // The binding roof of each run: reading what it reads, or its
    // multiply-adds at the rate of the unit its plan runs on.
    let (bw, fma) = probes.get(p.threads);
    let unit = plan.unit();
    let rate = if unit == Unit::F32Fma {
        fma
    } else {
        probes
            .units
            .iter()
            .find(|x| x.0 == 1 && x.1 == unit)
            .map_or(f64::NAN, |x| x.2)
    };
    let s = &p.shape;
    for (i, (name, &(best, med))) in p.names.iter().zip(&stats).enumerate() {
        // A sparse run reads and computes its listed positions only.
        let batch = (p.batch)(i, 0);
        let read = batch.positions.map_or(p.l, |ps| {
            ps.positions.len() / ps.offsets.len().saturating_sub(1).max(1)
        });
        // Every sequence computes all its positions; with prefix groups
        // each group's prefix is read once.
        let rows = if s.batch > 1 {
            let shared: usize = batch.prefix.map_or(0, |pg| {
                (0..pg.len())
                    .map(|i| pg.lens[i] * (pg.offsets[i + 1] - pg.offsets[i] - 1))
                    .sum()
            });
            batch.seq_lens.iter().sum::<usize>() - shared
        } else {
            read
        };
        let flops = if s.batch > 1 {
            s.flops(batch.seq_lens)
        } else {
            s.flops(&[read])
        };
        let bytes = batch.cache.kv_bytes(s, &[rows]);
        let roof = (bytes as f64 / bw).max(flops / rate);
        let ratio = best / base;
        if args.json {
            println!(
                "{{\"section\":\"workloads\",\"workload\":\"{name}\",\"model\":\"{}\",\"h\":{},\"g\":{},\"dk\":{},\"dv\":{},\"l\":{},\"kv_dtype\":\"{}\",\"q_len\":{},\"threads\":{},\"unit\":\"{}\",\"kernel\":\"{}\",\"kv_bytes\":{bytes},\"seconds\":{best:.6e},\"median_seconds\":{med:.6e},\"roofline_fraction\":{:.4}}}",
                p.model, s.heads, s.kv_heads, s.head_dim_k, s.head_dim_v, p.l, s.k_dtype, s.q_len, p.threads, unit.name(), plan.kernel_name(), roof / best
            );
            if i > 0 {
                println!(
                    "{{\"section\":\"workload_ratio\",\"workload\":\"{name}\",\"model\":\"{}\",\"l\":{},\"q_len\":{},\"threads\":{},\"t_over_t_plain\":{ratio:.3}}}",
                    p.model, p.l, s.q_len, p.threads
                );
            }
        } else {
            println!(
                "{name:<10} {:<11} {:>2} {:>4} {:>2} {:>4} {:>4} {:>6} {:>2} {:>5} {:>3} {:>9} {bytes:>10} {best:>10.6} {med:>10.6} {:>8.3} {ratio:>6.3}",
                p.model, s.batch, s.heads, s.kv_heads, s.head_dim_k, s.head_dim_v, p.l, s.q_len, s.k_dtype.to_string(), p.threads, unit.name(), roof / best
            );
        }
    }
    // The floor: the first workload's rows read with none of its compute.
    if !probe_times.is_empty() {
        probe_times.sort_by(f64::total_cmp);
        let (best, med) = (probe_times[0], probe_times[probe_times.len() / 2]);
        let name = p.names[1];
        let ratio = best / base;
        if args.json {
            println!(
                "{{\"section\":\"workload_probe\",\"workload\":\"{name}\",\"probe\":\"gather\",\"model\":\"{}\",\"l\":{},\"threads\":{},\"seconds\":{best:.6e},\"median_seconds\":{med:.6e},\"t_over_t_plain\":{ratio:.3}}}",
                p.model, p.l, p.threads
            );
        } else {
            println!(
                "{:<10} {:<11} {:<61} {best:>10.6} {med:>10.6} {:>8} {ratio:>6.3}",
                "gather",
                p.model,
                format!("(the {name} rows read, no compute)"),
                ""
            );
        }
    }
}
