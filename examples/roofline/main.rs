//! The bandwidth (roofline) report: the main job of this repository.
//!
//! Measures this machine's streaming read bandwidth, f32 FMA rate and, per
//! KV element type, the rate at which a core widens values to f32 with the
//! crate's own probes, then runs decode steps of real model shapes and
//! prints how close each comes to the machine's limit:
//!
//! ```text
//! roofline fraction = max(kv_bytes / probe_bandwidth,
//!                         flops / probe_fma_rate,
//!                         kv_values / probe_widen_rate) / seconds
//! ```
//!
//! with the probes taken at the same thread count. `probe_bandwidth` is the
//! best of the DRAM read probes: one stream, and two streams read side by
//! side in 4 KiB pieces (K and V as the kernels read them); both are also
//! printed for a cache-resident buffer. The report opens with these probes,
//! and then takes a pass of both DRAM probes after every burst of runs:
//! each row's `probe_bandwidth` (the `probe` column, `probe_gbps` in JSON)
//! is the best of the passes taken in the same minutes as its own runs, as
//! the DRAM rate of a shared machine drifts by tens of percent between
//! minutes (`run_probe_gbps` is the opening one). `roof` names the term that binds
//! (`mem`, `fma` or `widen`), and `bytes_fraction` is the memory term alone
//! over `seconds`.
//!
//! Steps are measured cold, as a model's decode step reads: each run takes
//! the next of several layers' caches (up to 32, spanning at least 1 GiB and
//! four times the last-level cache), so no row is cached from the previous
//! run. Rows marked `hot` (`residency` in JSON) run one layer's cache over
//! and over; a fraction above 1 there means the cache fit in the last-level
//! cache. Rows marked `llc` rotate over 32 layers' caches that fit in the
//! last-level cache together. The layouts section measures each shape's layouts together (runs
//! interleaved) and its summary divides every step time by the
//! `[B, G, L, D]` one (`layout_ratio` in JSON), and every 2-thread time by
//! the 1-thread one (`thread_ratio`). `seconds` is the best of at
//! least fifteen timed runs, in at least five rounds, each round followed
//! by a pass of both DRAM read probes (which keep their best pass too, so
//! the ratio compares like with like on a shared machine); the median is printed
//! beside it.
//!
//! ```text
//! cargo run --release --example roofline                 # full report
//! cargo run --release --example roofline -- --quick      # subset, about 3 minutes
//! cargo run --release --example roofline -- --json       # one JSON object per row
//! cargo run --release --example roofline -- --tier avx2  # force a tier
//! cargo run --release --example roofline -- --section layouts,tiers  # only these sections
//! ```
//!
//! `GQA_KERNELS_PREFETCH=N` sets the kernels' software prefetch distance
//! (rows; 0 = off) of every plan, for comparing distances.

use std::rc::Rc;
use std::time::Instant;

use gqa_kernels::probe::{StreamProbe, Unit};
use gqa_kernels::quant::Fp8;
use gqa_kernels::{
    append, probe, Batch, Bias, Dtype, KvBuffer, KvCache, KvCacheMut, KvData, KvPages, KvTensor,
    KvTensorMut, NewKv, Options, PagedKv, Plan, Positions, PrefixGroups, RingKv, Shape, Tier,
};
use half::f16;

mod append;
mod jobs;
mod measure;
mod probes;
mod report;
mod units;
mod workloads;

use append::*;
use jobs::*;
use measure::*;
use probes::*;
use report::*;
use units::*;
use workloads::*;

struct Args {
    json: bool,
    quick: bool,
    tier: Option<Tier>,
    threads: Vec<usize>,
    /// Sections to run (all when empty): table, serving, tiers, layouts,
    /// variants, kv_types, g_sweep, append, units, workloads.
    sections: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let max_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut a = Args {
        json: false,
        quick: false,
        tier: None,
        threads: vec![1],
        sections: Vec::new(),
    };
    // 1, 2 and all cores (deduplicated).
    for t in [2, max_threads] {
        if t <= max_threads && !a.threads.contains(&t) {
            a.threads.push(t);
        }
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--quick" => a.quick = true,
            "--tier" => {
                let name = it.next().ok_or("--tier needs a name")?;
                let t: Tier = name.parse().map_err(|e| format!("{e}"))?;
                a.tier = Some(t.require().map_err(|e| format!("{e}"))?);
            }
            "--threads" => {
                let v = it.next().ok_or("--threads needs a comma-separated list")?;
                a.threads = v
                    .split(',')
                    .map(|x| {
                        x.parse::<usize>()
                            .map_err(|e| format!("--threads {x}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--section" => {
                let v = it.next().ok_or("--section needs a comma-separated list")?;
                a.sections = v.split(',').map(|s| s.trim().to_string()).collect();
            }
            "-h" | "--help" => {
                println!(
                    "usage: roofline [--quick] [--json] [--tier NAME] [--threads 1,2] [--section a,b]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(a)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("roofline: {e}");
        std::process::exit(2);
    });
    let tier = args.tier.unwrap_or_else(|| {
        gqa_kernels::active_tier().unwrap_or_else(|e| {
            eprintln!("roofline: {e}");
            std::process::exit(2);
        })
    });
    let probes = probe_machine(&args);
    print_probes(&probes, tier, args.json);
    let wanted = |s: &str| args.sections.is_empty() || args.sections.iter().any(|x| x == s);
    let mut jobs = jobs(&args, tier);
    jobs.retain(|j| wanted(j.section));
    let min_secs = if args.quick { 0.15 } else { 0.4 };
    let rows = run_jobs(&jobs, &probes, tier, &args, min_secs);
    if wanted("append") {
        append_report(tier, args.json, min_secs);
    }
    if wanted("units") {
        units_report(tier, &args, &probes);
    }
    if wanted("workloads") {
        workloads_report(tier, &args, &probes);
    }
    print_summaries(&rows, args.json);
}

/// Runs the jobs, groups of interleaved ones together (see `measure`),
/// printing each row as it comes, under its section's heading.
fn run_jobs(jobs: &[Job], probes: &Probes, tier: Tier, args: &Args, min_secs: f64) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut section = "";
    let mut i = 0;
    while i < jobs.len() {
        let job = jobs[i];
        // A variants job takes the following jobs that differ from it in
        // the variant only into one interleaved measurement.
        let mut end = i + 1;
        while end < jobs.len()
            && (job.section == "variants" && same_but_variant(&job, &jobs[end])
                || job.section == "kv_types" && same_but_dtype(&job, &jobs[end])
                || job.section == "layouts" && same_but_layout(&job, &jobs[end]))
        {
            end += 1;
        }
        eprintln!(
            "[{}/{}] {}: {} B={} L={} {} {} threads={}",
            end,
            jobs.len(),
            job.section,
            job.m.name,
            job.b,
            job.l,
            job.dtype,
            job.tier,
            job.threads
        );
        let group = measure(&jobs[i..end], probes, min_secs);
        i = end;
        for row in group {
            let sec = row.section;
            if sec != section {
                section = sec;
                if !args.json {
                    println!();
                    println!("{}", section_title(sec, tier));
                    print_header(false);
                }
            }
            print_row(&row, args.json);
            rows.push(row);
        }
    }
    rows
}

/// The text report's heading of a section.
fn section_title(sec: &str, tier: Tier) -> String {
    let title = match sec {
        "table" => return format!("## Model shapes ([B, G, L, D] cache, tier {tier})"),
        "serving" => "## Serving batch: Llama-3-8B, f16, B = 16, L = 2048",
        "tiers" => "## Tiers on Llama-3-8B, f16, L = 32768, B = 1, 1 thread",
        "layouts" => {
            "## Layouts and query tokens, f16 (bgld [B, G, L, D]; bgld-hwpf the same \
             without the stream prefetch (hardware prefetcher only); blgd [B, L, G, D]; \
             blgd+64B the same with 64 bytes after each position; paged [G, page, D] \
             pages in shuffled order; ring read in two pieces; res: cold = rotating \
             over layer caches, llc = the same but they fit in the last-level cache, \
             hot = one layer's cache)"
        }
        "variants" => {
            "## Attention variants, f16, L = 32768, B = 1 \
             (window4096: sliding window of 4096 positions; softcap: cap 50; alibi: \
             max_bias 8; bias: one f32 per position, broadcast over heads; sinks: a sink \
             logit per head)"
        }
        "kv_types" => {
            "## KV element types, Llama-3-8B, L = 32768, B = 1 \
             (KV bytes: values and their scales; kint8_vf16: int8 K, f16 V)"
        }
        _ => "## G sweep: H = 32, D = 128, L = 16384, f16, B = 1, 1 thread",
    };
    title.to_string()
}
