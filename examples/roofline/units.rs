//! The units section: one row per multiply-add unit and precision on the shapes issue 17 names.

use super::*;

/// One shape of the units section.
pub(crate) struct UnitShape {
    pub(crate) model: &'static str,
    pub(crate) h: usize,
    pub(crate) g: usize,
    pub(crate) dk: usize,
    pub(crate) dv: usize,
    pub(crate) dtype: Dtype,
    pub(crate) q_len: usize,
    pub(crate) l: usize,
}

/// One row of the section: a shape, the plan of one unit and precision on
/// it, and its best time.
struct Cfg {
    shape_i: usize,
    shape: Shape,
    plan: Plan,
    best: f64,
}

/// A shape's inputs: q, and K and V in the shape's type, `[G, L, D]`.
struct Data {
    q: Vec<f32>,
    k: KvBuffer,
    v: KvBuffer,
    l: usize,
}

/// The section's shapes, at a quarter of their lengths with `--quick`.
fn unit_shapes() -> [UnitShape; 7] {
    // (model, H, G, Dk, Dv, K and V type, q_len, L)
    [
        ("Falcon-7B", 71, 1, 64, 64, Dtype::Bf16, 1, 32768),
        ("Falcon-7B", 71, 1, 64, 64, Dtype::F16, 1, 32768),
        ("Falcon-7B", 71, 1, 64, 64, Dtype::Int8, 1, 32768),
        ("Llama-3-8B", 32, 8, 128, 128, Dtype::Int8, 4, 32768),
        ("Llama-3-8B", 32, 8, 128, 128, Dtype::Bf16, 1, 32768),
        ("Llama-3-8B", 32, 8, 128, 128, Dtype::Bf16, 4, 32768),
        ("MLA-size", 128, 1, 576, 512, Dtype::Bf16, 1, 8192),
    ]
    .map(|(model, h, g, dk, dv, dtype, q_len, l)| UnitShape {
        model,
        h,
        g,
        dk,
        dv,
        dtype,
        q_len,
        l,
    })
}

/// The "Units" section: compute-bound shapes (multi-query, several query
/// tokens, an MLA-size head) on each multiply-add unit that has kernels
/// for their types, and each precision class, one thread, runs
/// interleaved round by round; each row's time over the f32-FMA `Exact`
/// row of its shape.
pub(crate) fn units_report(tier: Tier, args: &Args, probes: &Probes) {
    let shapes = unit_shapes();
    let div = if args.quick { 4 } else { 1 };
    let (data, mut cfgs) = unit_rows(tier, &shapes, div);
    let rounds = if args.quick { 3 } else { 7 };
    eprintln!("units: {} rows, {rounds} interleaved rounds", cfgs.len());
    for _ in 0..rounds {
        for c in cfgs.iter_mut() {
            let (d, u) = (&data[c.shape_i], &shapes[c.shape_i]);
            let kt = KvTensor::bgld(d.k.data(), d.l, u.g, u.dk);
            let vt = KvTensor::bgld(d.v.data(), d.l, u.g, u.dv);
            let mut out = vec![0f32; c.shape.out_elems()];
            let t = Instant::now();
            c.plan
                .decode(&d.q, &kt, &vt, &[d.l], &mut out, None)
                .unwrap_or_else(|e| panic!("units run: {e}"));
            c.best = c.best.min(t.elapsed().as_secs_f64());
        }
    }
    print_units(&shapes, &data, &cfgs, probes, args.json);
}

/// A xorshift stream of values uniform in `[-1, 1)` from `seed`: the
/// inputs of the sections that make their own caches.
pub(crate) fn uniform_values(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// The inputs of every shape, and a row for each unit and precision that
/// runs it on `tier` (f32-FMA `Exact` first; AMX skipped, with its reason
/// printed once, where the process may not use it).
fn unit_rows(tier: Tier, shapes: &[UnitShape], div: usize) -> (Vec<Data>, Vec<Cfg>) {
    use gqa_kernels::Precision;
    let mut next = uniform_values(0x9E37_79B9_7F4A_7C15);
    let mut data = Vec::new();
    let mut cfgs: Vec<Cfg> = Vec::new();
    for (i, u) in shapes.iter().enumerate() {
        let l = u.l / div;
        let shape = Shape::new(1, u.h, u.g, u.dk, u.dtype)
            .with_head_dims(u.dk, u.dv)
            .with_q_len(u.q_len)
            .with_max_kv_len(l);
        let q: Vec<f32> = (0..shape.q_elems()).map(|_| next()).collect();
        let k: Vec<f32> = (0..l * u.g * u.dk).map(|_| next()).collect();
        let v: Vec<f32> = (0..l * u.g * u.dv).map(|_| next()).collect();
        data.push(Data {
            q,
            k: KvBuffer::from_f32(u.dtype, &k, u.dk).expect("units: K buffer"),
            v: KvBuffer::from_f32(u.dtype, &v, u.dv).expect("units: V buffer"),
            l,
        });
        let mut kinds = vec![(Unit::F32Fma, Precision::Exact)];
        for unit in [Unit::AmxBf16, Unit::Bf16Dot, Unit::Int8Dot] {
            if !unit.runs(tier, u.dtype, u.dtype) {
                continue;
            }
            match unit.unavailable_on(tier) {
                None => kinds.extend([(unit, Precision::Exact), (unit, Precision::Fast)]),
                Some(why) => eprintln!("units: {} skipped on {}: {why}", unit.name(), u.model),
            }
        }
        for (unit, precision) in kinds {
            let opts = Options::default()
                .with_tier(tier)
                .with_unit(unit)
                .with_precision(precision);
            let plan = Plan::new(&shape, &opts).unwrap_or_else(|e| panic!("units plan: {e}"));
            cfgs.push(Cfg {
                shape_i: i,
                shape,
                plan,
                best: f64::INFINITY,
            });
        }
    }
    (data, cfgs)
}

/// Prints the section: a table, or with `json` a `units` line and a
/// `unit_ratio` line per row.
fn print_units(shapes: &[UnitShape], data: &[Data], cfgs: &[Cfg], probes: &Probes, json: bool) {
    let (bw, fma) = probes.get(1);
    let rate = |u: Unit| {
        if u == Unit::F32Fma {
            fma
        } else {
            probes
                .units
                .iter()
                .find(|x| x.0 == 1 && x.1 == u)
                .map_or(f64::NAN, |x| x.2)
        }
    };
    println!();
    println!(
        "## Units (1 thread, [B, G, L, D], B 1; time over the f32-fma exact row of the shape)"
    );
    println!(
        "{:<11} {:>4} {:>2} {:>4} {:>4} {:>5} {:>2} {:>6} {:>9} {:>6} {:>10} {:>8} {:>8} {:>6}",
        "model",
        "H",
        "G",
        "Dk",
        "Dv",
        "L",
        "q",
        "kv",
        "unit",
        "prec",
        "seconds",
        "GFLOP/s",
        "roofline",
        "ratio"
    );
    for c in cfgs {
        let u = &shapes[c.shape_i];
        let d = &data[c.shape_i];
        let base = cfgs
            .iter()
            .find(|x| x.shape_i == c.shape_i && x.plan.unit() == Unit::F32Fma)
            .map_or(f64::NAN, |x| x.best);
        let flops = c.shape.flops(&[d.l]);
        let t_roof = (c.shape.kv_bytes(&[d.l]) as f64 / bw).max(flops / rate(c.plan.unit()));
        let (unit, prec) = (c.plan.unit().name(), c.plan.precision().name());
        let ratio = c.best / base;
        if json {
            println!(
                "{{\"section\":\"units\",\"model\":\"{}\",\"h\":{},\"g\":{},\"dk\":{},\"dv\":{},\"l\":{},\"kv_dtype\":\"{}\",\"q_len\":{},\"threads\":1,\"unit\":\"{unit}\",\"precision\":\"{prec}\",\"kernel\":\"{}\",\"seconds\":{:.6e},\"gflops\":{:.3},\"roofline_fraction\":{:.4}}}",
                u.model, u.h, u.g, u.dk, u.dv, d.l, u.dtype, u.q_len, c.plan.kernel_name(), c.best, flops / c.best / 1e9, t_roof / c.best
            );
            println!(
                "{{\"section\":\"unit_ratio\",\"model\":\"{}\",\"h\":{},\"g\":{},\"dk\":{},\"dv\":{},\"kv_dtype\":\"{}\",\"q_len\":{},\"threads\":1,\"unit\":\"{unit}\",\"precision\":\"{prec}\",\"t_over_t_f32_exact\":{ratio:.3}}}",
                u.model, u.h, u.g, u.dk, u.dv, u.dtype, u.q_len
            );
        } else {
            println!(
                "{:<11} {:>4} {:>2} {:>4} {:>4} {:>5} {:>2} {:>6} {:>9} {:>6} {:>10.6} {:>8.1} {:>8.3} {:>6.3}",
                u.model, u.h, u.g, u.dk, u.dv, d.l, u.q_len, u.dtype, unit, prec, c.best, flops / c.best / 1e9, t_roof / c.best, ratio
            );
        }
    }
}
