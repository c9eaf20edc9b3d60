//! Printing rows and the summaries of a section (ratios between variants, KV types, layouts, thread counts).

use super::*;

pub(crate) fn print_header(json: bool) {
    if !json {
        println!(
            "{:<15} {:>2} {:>3} {:>3} {:>4} {:>4} {:>6} {:>2} {:<8} {:<10} {:>5} {:>7} {:>3} {:>4} {:>10} {:>10} {:>8} {:>8} {:>8} {:>5}",
            "model",
            "B",
            "H",
            "G",
            "Dk",
            "Dv",
            "L",
            "q",
            "layout",
            "variant",
            "kv",
            "tier",
            "thr",
            "res",
            "seconds",
            "median s",
            "KV GB/s",
            "probe",
            "roofline",
            "roof"
        );
    }
}

/// The `kv_dtype` of a row: the type, or `k<K>_v<V>` when K and V differ.
pub(crate) fn kv_name(k: Dtype, v: Dtype) -> String {
    if k == v {
        k.name().to_string()
    } else {
        format!("k{k}_v{v}")
    }
}

pub(crate) fn print_row(r: &Row, json: bool) {
    let gbps = r.kv_bytes as f64 / r.seconds / 1e9;
    let kv = kv_name(r.dtype, r.v_dtype);
    if json {
        println!(
            "{{\"section\":\"{}\",\"model\":\"{}\",\"b\":{},\"h\":{},\"g\":{},\"dk\":{},\"dv\":{},\"l\":{},\"q_len\":{},\"layout\":\"{}\",\"variant\":\"{}\",\"kv_dtype\":\"{}\",\"k_dtype\":\"{}\",\"v_dtype\":\"{}\",\"tier\":\"{}\",\"kernel\":\"{}\",\"threads\":{},\"seconds\":{:.6e},\"seconds_median\":{:.6e},\"kv_bytes\":{},\"gbps\":{:.3},\"probe_gbps\":{:.3},\"run_probe_gbps\":{:.3},\"roofline_fraction\":{:.4},\"bytes_fraction\":{:.4},\"roof\":\"{}\",\"residency\":\"{}\",\"layers\":{}}}",
            r.section, r.model, r.b, r.h, r.g, r.dk, r.dv, r.l, r.q_len, r.layout, r.variant, kv, r.dtype, r.v_dtype, r.tier, r.kernel, r.threads, r.seconds, r.median, r.kv_bytes, gbps, r.probe_bps / 1e9, r.run_probe_bps / 1e9, r.fraction, r.bytes_fraction, r.roof, r.residency, r.layers
        );
    } else {
        println!(
            "{:<15} {:>2} {:>3} {:>3} {:>4} {:>4} {:>6} {:>2} {:<8} {:<10} {:>5} {:>7} {:>3} {:>4} {:>10.6} {:>10.6} {:>8.2} {:>8.2} {:>8.3} {:>5}",
            r.model,
            r.b,
            r.h,
            r.g,
            r.dk,
            r.dv,
            r.l,
            r.q_len,
            r.layout,
            r.variant,
            kv,
            r.tier.name(),
            r.threads,
            r.residency,
            r.seconds,
            r.median,
            gbps,
            r.probe_bps / 1e9,
            r.fraction,
            r.roof
        );
    }
}

/// Prints the summary tables (text) or ratio lines (JSON) of `rows`.
pub(crate) fn print_summaries(rows: &[Row], json: bool) {
    let mut sweep: Vec<&Row> = Vec::new();
    for r in rows.iter().filter(|r| r.section == "g_sweep") {
        match sweep.iter_mut().find(|s| s.g == r.g) {
            Some(best) if r.seconds < best.seconds => *best = r,
            Some(_) => {}
            None => sweep.push(r),
        }
    }
    let t32 = sweep
        .iter()
        .find(|r| r.g == 32)
        .map(|r| r.seconds)
        .unwrap_or(f64::NAN);
    if json {
        print_ratio_lines(rows, &sweep, t32);
    } else {
        print_sweep_variant_type_tables(rows, &sweep, t32);
        print_layout_thread_tables(rows);
    }
}

/// The summaries as JSON lines: each variant, KV type, layout and thread
/// count over its baseline, and the G sweep.
pub(crate) fn print_ratio_lines(rows: &[Row], sweep: &[&Row], t32: f64) {
    for (r, ratio) in variant_summary(rows) {
        println!(
            "{{\"section\":\"variant_ratio\",\"variant\":\"{}\",\"threads\":{},\"seconds\":{:.6e},\"t_over_t_none\":{:.3}}}",
            r.variant, r.threads, r.seconds, ratio
        );
    }
    for (r, ratio) in kv_type_summary(rows) {
        println!(
            "{{\"section\":\"kv_type_ratio\",\"kv_dtype\":\"{}\",\"k_dtype\":\"{}\",\"v_dtype\":\"{}\",\"threads\":{},\"seconds\":{:.6e},\"t_over_t_f16\":{:.3},\"roofline_fraction\":{:.4},\"bytes_fraction\":{:.4},\"roof\":\"{}\"}}",
            kv_name(r.dtype, r.v_dtype), r.dtype, r.v_dtype, r.threads, r.seconds, ratio, r.fraction, r.bytes_fraction, r.roof
        );
    }
    for (r, ratio) in layout_summary(rows) {
        println!(
            "{{\"section\":\"layout_ratio\",\"model\":\"{}\",\"b\":{},\"l\":{},\"q_len\":{},\"layout\":\"{}\",\"residency\":\"{}\",\"threads\":{},\"seconds\":{:.6e},\"t_over_t_bgld\":{:.3},\"roofline_fraction\":{:.4},\"bytes_fraction\":{:.4}}}",
            r.model, r.b, r.l, r.q_len, r.layout, r.residency, r.threads, r.seconds, ratio, r.fraction, r.bytes_fraction
        );
    }
    for (r, ratio) in thread_summary(rows) {
        println!(
            "{{\"section\":\"thread_ratio\",\"model\":\"{}\",\"b\":{},\"l\":{},\"q_len\":{},\"layout\":\"{}\",\"residency\":\"{}\",\"threads\":{},\"seconds\":{:.6e},\"t_over_t_1thread\":{:.3}}}",
            r.model, r.b, r.l, r.q_len, r.layout, r.residency, r.threads, r.seconds, ratio
        );
    }
    for r in sweep {
        println!("{{\"section\":\"g_sweep_ratio\",\"g\":{},\"seconds\":{:.6e},\"t_g32_over_t_g\":{:.3}}}", r.g, r.seconds, t32 / r.seconds);
    }
}

/// The G sweep, the variants over plain decode and the KV types over f16.
pub(crate) fn print_sweep_variant_type_tables(rows: &[Row], sweep: &[&Row], t32: f64) {
    // No heading without rows (a report of other sections only).
    if !sweep.is_empty() {
        println!();
        println!("## G sweep: step time relative to MHA (G = 32), best of {SWEEP_ROUNDS} rounds");
        println!(
            "{:>3} {:>10} {:>12} {:>12}",
            "G", "seconds", "t(G)/t(32)", "t(32)/t(G)"
        );
    }
    for r in sweep {
        println!(
            "{:>3} {:>10.6} {:>12.3} {:>12.2}",
            r.g,
            r.seconds,
            r.seconds / t32,
            t32 / r.seconds
        );
    }
    let variants = variant_summary(rows);
    if !variants.is_empty() {
        println!();
        println!(
            "## Attention variants: step time over plain decode, Llama-3-8B, best runs, runs interleaved"
        );
        println!(
            "{:<12} {:>3} {:>10} {:>10}",
            "variant", "thr", "seconds", "/ none"
        );
        for (r, ratio) in &variants {
            println!(
                "{:<12} {:>3} {:>10.6} {:>10.3}",
                r.variant, r.threads, r.seconds, ratio
            );
        }
    }
    let kv_types = kv_type_summary(rows);
    if !kv_types.is_empty() {
        println!();
        println!(
            "## KV types: step time over f16, Llama-3-8B, L = 32768, best runs, runs interleaved"
        );
        println!(
            "{:<15} {:>3} {:>10} {:>8} {:>8} {:>9} {:>9} {:>5}",
            "kv", "thr", "seconds", "KV GB/s", "/ f16", "bytes", "roofline", "roof"
        );
        for (r, ratio) in &kv_types {
            println!(
                "{:<15} {:>3} {:>10.6} {:>8.2} {:>8.3} {:>9.3} {:>9.3} {:>5}",
                kv_name(r.dtype, r.v_dtype),
                r.threads,
                r.seconds,
                r.kv_bytes as f64 / r.seconds / 1e9,
                ratio,
                r.bytes_fraction,
                r.fraction,
                r.roof
            );
        }
    }
}

/// The layouts over `[B, G, L, D]`, thread counts over one thread, and
/// the tier ratio.
pub(crate) fn print_layout_thread_tables(rows: &[Row]) {
    let layouts = layout_summary(rows);
    if !layouts.is_empty() {
        println!();
        println!(
            "## Layouts: step time over [B, G, L, D], f16, best runs, runs interleaved (fraction: of the roof; bytes: KV bytes / best read probe)"
        );
        println!(
            "{:<11} {:>2} {:>6} {:>2} {:<5} {:<9} {:>3} {:>10} {:>8} {:>8} {:>8}",
            "model",
            "B",
            "L",
            "q",
            "res",
            "layout",
            "thr",
            "seconds",
            "/ bgld",
            "bytes",
            "roofline"
        );
        for (r, ratio) in &layouts {
            println!(
                "{:<11} {:>2} {:>6} {:>2} {:<5} {:<9} {:>3} {:>10.6} {:>8.3} {:>8.3} {:>8.3}",
                r.model,
                r.b,
                r.l,
                r.q_len,
                r.residency,
                r.layout,
                r.threads,
                r.seconds,
                ratio,
                r.bytes_fraction,
                r.fraction
            );
        }
    }
    let threads = thread_summary(rows);
    if !threads.is_empty() {
        println!();
        println!("## Threads: step time over the 1-thread step, f16, best runs");
        println!(
            "{:<11} {:>2} {:>6} {:>2} {:<5} {:<9} {:>3} {:>10} {:>9}",
            "model", "B", "L", "q", "res", "layout", "thr", "seconds", "/ 1 thr"
        );
        for (r, ratio) in &threads {
            println!(
                "{:<11} {:>2} {:>6} {:>2} {:<5} {:<9} {:>3} {:>10.6} {:>9.3}",
                r.model, r.b, r.l, r.q_len, r.residency, r.layout, r.threads, r.seconds, ratio
            );
        }
    }
    let tiers: Vec<&Row> = rows.iter().filter(|r| r.section == "tiers").collect();
    if let (Some(a), Some(b)) = (
        tiers.iter().find(|r| r.tier == Tier::Avx512),
        tiers.iter().find(|r| r.tier == Tier::Avx2),
    ) {
        println!();
        println!(
            "# avx2 / avx512 step time on the memory-bound shape: {:.3}",
            b.seconds / a.seconds
        );
    }
}

/// The best Llama-3-8B variant row per (variant, threads), with its time
/// over the best plain row of the same thread count.
pub(crate) fn variant_summary(rows: &[Row]) -> Vec<(&Row, f64)> {
    let mut best: Vec<&Row> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.section == "variants" && r.model == LLAMA3_8B.name)
    {
        match best
            .iter_mut()
            .find(|b| b.variant == r.variant && b.threads == r.threads)
        {
            Some(b) if r.seconds < b.seconds => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    best.iter()
        .map(|r| {
            let none = best
                .iter()
                .find(|b| b.variant == "none" && b.threads == r.threads)
                .map_or(f64::NAN, |b| b.seconds);
            (*r, r.seconds / none)
        })
        .collect()
}

/// The KV-type rows, each with its time over the f16 row of the same
/// thread count.
pub(crate) fn kv_type_summary(rows: &[Row]) -> Vec<(&Row, f64)> {
    let kv: Vec<&Row> = rows.iter().filter(|r| r.section == "kv_types").collect();
    kv.iter()
        .map(|r| {
            let f16 = kv
                .iter()
                .find(|b| {
                    b.dtype == Dtype::F16 && b.v_dtype == Dtype::F16 && b.threads == r.threads
                })
                .map_or(f64::NAN, |b| b.seconds);
            (*r, r.seconds / f16)
        })
        .collect()
}

/// Every layouts row with its step time over the [B, G, L, D] row of the
/// same measurement (model, B, L, q_len, residency, threads).
pub(crate) fn layout_summary(rows: &[Row]) -> Vec<(&Row, f64)> {
    let lay: Vec<&Row> = rows.iter().filter(|r| r.section == "layouts").collect();
    lay.iter()
        .filter_map(|r| {
            let base = lay.iter().find(|x| {
                x.layout == "bgld"
                    && x.model == r.model
                    && (x.b, x.l, x.q_len, x.threads) == (r.b, r.l, r.q_len, r.threads)
                    && x.residency == r.residency
            })?;
            Some((*r, r.seconds / base.seconds))
        })
        .collect()
}

/// Layouts rows at more than one thread with their step time over the
/// 1-thread row of the same shape, layout and residency.
pub(crate) fn thread_summary(rows: &[Row]) -> Vec<(&Row, f64)> {
    let lay: Vec<&Row> = rows.iter().filter(|r| r.section == "layouts").collect();
    lay.iter()
        .filter(|r| r.threads > 1)
        .filter_map(|r| {
            let one = lay.iter().find(|x| {
                x.threads == 1
                    && x.model == r.model
                    && x.layout == r.layout
                    && (x.b, x.l, x.q_len) == (r.b, r.l, r.q_len)
                    && x.residency == r.residency
            })?;
            Some((*r, r.seconds / one.seconds))
        })
        .collect()
}
