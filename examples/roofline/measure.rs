//! Measuring jobs: their caches (store sets rotated layer by layer), plans, interleaved timed runs, and the rows they give.

use super::*;

/// `n` elements uniform in [-1, 1) (rows of `d`) stored as `dtype`: a
/// random block of 512 rows repeated (the values do not change the speed;
/// generating 1 GB of them would), quantized by the crate's encoders (fp8
/// with one scale of 4 over the format's largest value).
pub(crate) fn store(dtype: Dtype, n: usize, d: usize, seed: u64) -> KvBuffer {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let block: Vec<f32> = (0..512 * d)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let block = match fp8_format(dtype) {
        Some(f) => KvBuffer::fp8_from_f32(f, &block, vec![4.0 / f.max()], |_| 0),
        None => KvBuffer::from_f32(dtype, &block, d),
    };
    block
        .and_then(|b| b.repeat_to(n))
        .expect("whole rows of finite values")
}

/// `n` zeros of `dtype` (rows of `d`; allocated zeroed, so the pages are
/// mapped when written; fp8 with the scale of [`store`]).
pub(crate) fn zeroed(dtype: Dtype, n: usize, d: usize) -> KvBuffer {
    let z = KvBuffer::zeros(dtype, n, d).expect("whole rows");
    match fp8_format(dtype) {
        Some(f) => z.with_scales(vec![4.0 / f.max()]).expect("a valid scale"),
        None => z,
    }
}

pub(crate) fn fp8_format(dtype: Dtype) -> Option<Fp8> {
    match dtype {
        Dtype::Fp8E4M3 => Some(Fp8::E4M3),
        Dtype::Fp8E5M2 => Some(Fp8::E5M2),
        _ => None,
    }
}

pub(crate) struct Row {
    pub(crate) section: &'static str,
    pub(crate) model: String,
    pub(crate) b: usize,
    pub(crate) h: usize,
    pub(crate) g: usize,
    pub(crate) dk: usize,
    pub(crate) dv: usize,
    pub(crate) l: usize,
    pub(crate) q_len: usize,
    pub(crate) layout: String,
    pub(crate) variant: String,
    /// K and V element types.
    pub(crate) dtype: Dtype,
    pub(crate) v_dtype: Dtype,
    pub(crate) tier: Tier,
    pub(crate) kernel: &'static str,
    pub(crate) threads: usize,
    pub(crate) seconds: f64,
    pub(crate) median: f64,
    pub(crate) kv_bytes: usize,
    /// The read roof: the best probe pass of the same minutes.
    pub(crate) probe_bps: f64,
    /// The opening probe of the run.
    pub(crate) run_probe_bps: f64,
    pub(crate) fraction: f64,
    /// The memory term alone over `seconds`.
    pub(crate) bytes_fraction: f64,
    /// The binding roof: `mem`, `fma` or `widen`.
    pub(crate) roof: &'static str,
    /// `cold` (a rotation of layer caches far larger than the last-level
    /// cache) or `hot` (one layer's cache, run after run).
    pub(crate) residency: &'static str,
    /// Layer caches the runs rotated over.
    pub(crate) layers: usize,
}

/// Bytes a cold job's rotation of layer caches spans at least (also at
/// least four times the last-level cache): a model's decode step reads every
/// layer's cache once, so no layer's rows are still cached when its next
/// step comes unless the whole model's cache fits.
pub(crate) const ROTATION_BYTES: usize = 1 << 30;

/// Layers of a model the cold measurements rotate over, at most.
pub(crate) const MODEL_LAYERS: usize = 32;

/// K and V stores of `layers` layers that the jobs of one measurement with
/// the same types and sizes share: each layout reads the same memory, so a
/// ratio between layouts does not depend on where the allocator placed
/// each one's buffers (on the Intel development VM two 1 GiB sets of the
/// same `[B, G, L, D]` caches, allocated one after the other, read 6-10 %
/// apart in 4 runs of 5).
pub(crate) struct StoreSet {
    pub(crate) key: (Dtype, Dtype, usize, usize, usize),
    pub(crate) k: Rc<Vec<KvBuffer>>,
    pub(crate) v: Rc<Vec<KvBuffer>>,
}

/// One job's caches: `layers` K and V stores of one layer each, the block
/// table of a paged layout and the ring's first positions.
pub(crate) struct Rig {
    pub(crate) k: Rc<Vec<KvBuffer>>,
    pub(crate) v: Rc<Vec<KvBuffer>>,
    /// Which of the measurement's store sets `k` and `v` are (jobs whose
    /// caches take the same memory read the same stores).
    pub(crate) set: usize,
    pub(crate) table: Vec<u32>,
    pub(crate) first_pos: Vec<usize>,
}

impl Rig {
    /// The job's rig over `layers` layer caches, reusing a store set of
    /// `sets` that has the same types and sizes, else adding one.
    pub(crate) fn new(job: &Job, layers: usize, sets: &mut Vec<StoreSet>) -> Rig {
        let Job {
            m, b, l, layout, ..
        } = *job;
        let elems = match layout {
            Layout::Paged(p) => b * l.div_ceil(p) * m.g * p * m.d,
            Layout::BlgdPad => b * l * (m.g * m.d + pad_elems(job.dtype, m.d)),
            _ => b * m.g * l * m.d,
        };
        let pages = match layout {
            Layout::Paged(p) => b * l.div_ceil(p),
            _ => 0,
        };
        // A shuffled block table: consecutive blocks of a sequence are not
        // neighbours in the pool.
        let mut table: Vec<u32> = (0..pages as u32).collect();
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        for i in (1..table.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            table.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let key = (job.dtype, job.v_dtype, elems, m.d, layers);
        let set = match sets.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                sets.push(StoreSet {
                    key,
                    k: Rc::new(
                        (0..layers)
                            .map(|i| store(job.dtype, elems, m.d, 1 + 2 * i as u64))
                            .collect(),
                    ),
                    v: Rc::new(
                        (0..layers)
                            .map(|i| store(job.v_dtype, elems, m.d, 2 + 2 * i as u64))
                            .collect(),
                    ),
                });
                sets.len() - 1
            }
        };
        Rig {
            k: sets[set].k.clone(),
            v: sets[set].v.clone(),
            set,
            table,
            first_pos: vec![l / 2; b],
        }
    }

    /// Layer `i`'s cache as `job` lays it out.
    pub(crate) fn cache(&self, job: &Job, i: usize) -> KvCache<'_> {
        let Job { m, l, layout, .. } = *job;
        let (k, v) = (self.k[i].data(), self.v[i].data());
        match layout {
            Layout::Bgld | Layout::BgldHwPrefetch => KvCache::strided(
                KvTensor::bgld(k, l, m.g, m.d),
                KvTensor::bgld(v, l, m.g, m.d),
            ),
            Layout::Blgd => KvCache::strided(
                KvTensor::blgd(k, l, m.g, m.d),
                KvTensor::blgd(v, l, m.g, m.d),
            ),
            Layout::BlgdPad => {
                let token = m.g * m.d + pad_elems(job.dtype, m.d);
                let t = |x| KvTensor::new(x, l * token, token, m.d);
                KvCache::strided(t(k), t(v))
            }
            Layout::Paged(p) => KvCache::Paged(PagedKv {
                k: KvPages::gpd(k, p, m.g, m.d),
                v: KvPages::gpd(v, p, m.g, m.d),
                page_size: p,
                block_table: &self.table,
                blocks_per_seq: l.div_ceil(p),
            }),
            Layout::Ring => KvCache::Ring(RingKv {
                k: KvTensor::bgld(k, l, m.g, m.d),
                v: KvTensor::bgld(v, l, m.g, m.d),
                capacity: l,
                first_pos: &self.first_pos,
            }),
        }
    }
}

/// Elements of 64 bytes of `dtype` (the padded token-major layout's pad).
pub(crate) fn pad_elems(dtype: Dtype, d: usize) -> usize {
    let e = 64 * d / dtype.row_bytes(d);
    assert_eq!(
        e * dtype.row_bytes(d),
        64 * d,
        "64 bytes of {dtype} are whole elements"
    );
    e
}

/// Measures `jobs` (same model, batch, lengths and thread count; they may
/// differ in variant, KV types and layout): caches of their own, one plan
/// per job, and the jobs' runs interleaved burst by burst, so a disturbed
/// stretch of a shared machine falls on all of them alike. A cold job
/// rotates over several layers' caches, one per run, as a model's decode
/// step does; a hot one runs on one layer's cache.
pub(crate) fn measure(jobs: &[Job], probes: &Probes, min_secs: f64) -> Vec<Row> {
    let Job { m, b, l, q_len, .. } = jobs[0];
    let shape_of = |j: &Job| {
        Shape::new(b, m.h, m.g, m.d, j.dtype)
            .with_dtypes(j.dtype, j.v_dtype)
            .with_q_len(q_len)
            .with_max_kv_len(l)
    };
    let shape = shape_of(&jobs[0]);
    let (rigs, n_sets, residency) = rig_jobs(jobs, &shape_of);
    let set_of: Vec<usize> = rigs.iter().map(|r| r.set).collect();
    let q: Vec<f32> = (0..shape.q_elems())
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let lens = vec![l; b];
    let bias_data: Vec<f32> = if jobs.iter().any(|j| j.variant == Variant::Bias) {
        (0..b * q_len * l).map(|i| (i % 7) as f32 * 0.1).collect()
    } else {
        Vec::new()
    };
    let bias = Bias {
        data: &bias_data,
        seq_stride: q_len * l,
        token_stride: l,
        head_stride: 0,
    };
    // batches[job][layer]
    let batches: Vec<Vec<Batch<'_>>> = jobs
        .iter()
        .zip(&rigs)
        .map(|(j, rig)| {
            (0..rig.k.len())
                .map(|i| {
                    let batch = Batch::new(&q, rig.cache(j, i), &lens);
                    if j.variant == Variant::Bias {
                        batch.with_bias(bias)
                    } else {
                        batch
                    }
                })
                .collect()
        })
        .collect();
    let mut out = vec![0f32; shape.out_elems()];
    let mut lse = vec![0f32; shape.lse_elems()];
    let shapes: Vec<Shape> = jobs.iter().map(shape_of).collect();
    let plans: Vec<Plan> = jobs
        .iter()
        .zip(&shapes)
        .map(|(j, sh)| make_plan(j, sh))
        .collect();
    let mut ws: Vec<Vec<u8>> = plans.iter().map(|p| p.alloc_workspace()).collect();
    let (mut times, live_bps) = timed_runs(
        jobs, &batches, &plans, &mut ws, &set_of, n_sets, probes, min_secs, &mut out, &mut lse,
    );
    jobs.iter()
        .zip(&plans)
        .zip(&mut times)
        .zip(&shapes)
        .zip(&residency)
        .map(|((((job, plan), times), shape), res)| {
            row(job, shape, plan, times, &lens, probes, live_bps, *res)
        })
        .collect()
}

/// The jobs' rigs over `layers` layer caches each (one layer for a hot
/// job, enough to pass the last-level cache for a cold one), jobs with
/// equal caches sharing one store set; the number of store sets; and each
/// job's residency (`hot`, `llc` or `cold`) with its layer count.
#[allow(clippy::type_complexity)]
fn rig_jobs(
    jobs: &[Job],
    shape_of: &dyn Fn(&Job) -> Shape,
) -> (Vec<Rig>, usize, Vec<(&'static str, usize)>) {
    let Job { b, l, .. } = jobs[0];
    let llc = llc_bytes();
    let mut sets = Vec::new();
    let rigs: Vec<Rig> = jobs
        .iter()
        .map(|j| {
            let sh = shape_of(j);
            let layer_bytes = sh.kv_bytes(&vec![l; b]).max(1);
            let layers = if j.hot {
                1
            } else {
                ROTATION_BYTES
                    .max(4 * llc)
                    .div_ceil(layer_bytes)
                    .clamp(1, MODEL_LAYERS)
            };
            Rig::new(j, layers, &mut sets)
        })
        .collect();
    let residency = jobs
        .iter()
        .zip(&rigs)
        .map(|(j, rig)| {
            let bytes = shape_of(j).kv_bytes(&vec![l; b]) * rig.k.len();
            // A rotation that fits in the last-level cache (32 layers of a
            // short cache on a big-L3 host) is neither one hot layer nor a
            // DRAM read: `llc`.
            let res = if j.hot {
                "hot"
            } else if bytes >= 2 * llc {
                "cold"
            } else {
                "llc"
            };
            (res, rig.k.len())
        })
        .collect();
    (rigs, sets.len(), residency)
}

/// Runs every job's batches in bursts, job after job, until each had
/// `min_secs` (and at least five rounds): one rotation per store set,
/// shared by its jobs, so every run reads the layer after the one the
/// previous run of that set read and no job finds rows another job left in
/// the cache. The live read probes run between rounds. Returns each job's
/// timed runs and the probes' best rate.
#[allow(clippy::too_many_arguments)]
fn timed_runs(
    jobs: &[Job],
    batches: &[Vec<Batch<'_>>],
    plans: &[Plan],
    ws: &mut [Vec<u8>],
    set_of: &[usize],
    n_sets: usize,
    probes: &Probes,
    min_secs: f64,
    out: &mut [f32],
    lse: &mut [f32],
) -> (Vec<Vec<f64>>, f64) {
    let mut times = vec![Vec::new(); jobs.len()];
    let mut next = vec![0usize; n_sets];
    let live = probes.live(jobs[0].threads);
    // The read probes' best pass in these minutes, and the time they took
    // (not counted in `min_secs`).
    let (mut live_bps, mut probe_secs) = (0.0f64, 0.0f64);
    let started = Instant::now();
    // Bursts of runs, job after job: the first runs of a burst are untimed
    // (they wake the plan's thread pool while the previous job's pool goes
    // to sleep); `min_secs` per job in all.
    let (burst, untimed) = if jobs[0].threads > 1 { (8, 2) } else { (4, 1) };
    for round in 0.. {
        for (i, layers) in batches.iter().enumerate() {
            for rep in 0..burst {
                let batch = &layers[next[set_of[i]] % layers.len()];
                next[set_of[i]] += 1;
                let t = Instant::now();
                plans[i]
                    .run(batch, out, Some(&mut *lse), &mut ws[i])
                    .expect("run");
                let dt = t.elapsed().as_secs_f64();
                if rep >= untimed {
                    times[i].push(dt);
                }
            }
            assert!(out.iter().all(|x| x.is_finite()), "non-finite output");
        }
        if let Some((one, two)) = live {
            let t = Instant::now();
            live_bps = live_bps.max(one.pass()).max(two.pass());
            probe_secs += t.elapsed().as_secs_f64();
        }
        // At least five rounds: five passes of each read probe.
        if round >= 4
            && started.elapsed().as_secs_f64() - probe_secs >= min_secs * jobs.len() as f64
        {
            break;
        }
    }
    (times, live_bps)
}

/// The plan of `job`'s variant.
pub(crate) fn make_plan(job: &Job, shape: &Shape) -> Plan {
    let (m, tier, threads, variant) = (job.m, job.tier, job.threads, job.variant);
    Plan::new(
        shape,
        &Options {
            scale: None,
            tier: Some(tier),
            threads,
            window: match variant {
                Variant::Window(w) => Some(w),
                Variant::SoftcapWindow => Some(4096),
                _ => None,
            },
            softcap: matches!(variant, Variant::Softcap | Variant::SoftcapWindow).then_some(50.0),
            ..Options::default()
        },
    )
    .and_then(|p| match variant {
        Variant::Sinks => {
            let sinks: Vec<f32> = (0..m.h).map(|h| 0.5 + 0.1 * (h % 4) as f32).collect();
            p.with_sinks(&sinks)
        }
        Variant::Alibi => p.with_alibi_max_bias(8.0),
        _ => Ok(p),
    })
    .map(|p| {
        if job.layout == Layout::BgldHwPrefetch {
            p.with_stream_prefetch(0)
        } else {
            p
        }
    })
    .unwrap_or_else(|e| panic!("plan {}: {e}", m.name))
}

/// The report row of `job` from its run times, `live_bps` the best read
/// probe pass taken between them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row(
    job: &Job,
    shape: &Shape,
    plan: &Plan,
    times: &mut [f64],
    lens: &[usize],
    probes: &Probes,
    live_bps: f64,
    (residency, layers): (&'static str, usize),
) -> Row {
    let Job {
        section,
        m,
        b,
        l,
        dtype,
        v_dtype,
        tier,
        threads,
        layout,
        q_len,
        variant,
        ..
    } = *job;
    times.sort_by(f64::total_cmp);
    // Best run, as the probes keep their best pass: on a shared machine the
    // fastest run is the one least disturbed. The median is reported too.
    let seconds = times[0];
    let median = times[times.len() / 2];
    // What the step must read: with a window, the last W + q_len - 1
    // positions of each sequence.
    let visible: Vec<usize> = match variant {
        Variant::Window(w) => lens.iter().map(|&l| l.min(w + q_len - 1)).collect(),
        Variant::SoftcapWindow => lens.iter().map(|&l| l.min(4096 + q_len - 1)).collect(),
        _ => lens.to_vec(),
    };
    let kv_bytes = shape.kv_bytes(&visible);
    let (run_bw, fma) = probes.get(threads);
    // The read roof of the same minutes as the runs; the run's opening
    // probe where none was taken.
    let bw = if live_bps > 0.0 { live_bps } else { run_bw };
    let positions: usize = visible.iter().sum();
    let t_mem = kv_bytes as f64 / bw;
    let t_fma = shape.flops(&visible) / fma;
    let t_widen = (positions * m.g) as f64
        * (m.d as f64 / probes.widen(threads, dtype) + m.d as f64 / probes.widen(threads, v_dtype));
    let bound = t_mem.max(t_fma).max(t_widen);
    let roof = if bound == t_mem {
        "mem"
    } else if bound == t_fma {
        "fma"
    } else {
        "widen"
    };
    Row {
        section,
        model: m.name.to_string(),
        b,
        h: m.h,
        g: m.g,
        dk: m.d,
        dv: m.d,
        l,
        q_len,
        layout: layout.key(),
        variant: variant.key(),
        dtype,
        v_dtype,
        tier,
        kernel: plan.kernel_name(),
        threads,
        seconds,
        median,
        kv_bytes,
        probe_bps: bw,
        run_probe_bps: run_bw,
        fraction: bound / seconds,
        bytes_fraction: t_mem / seconds,
        roof,
        residency,
        layers,
    }
}
