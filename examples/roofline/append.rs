//! The append section: writing one token into every layer's cache.

use super::*;

/// KV append against the decode step it belongs to: one new token (f16
/// source) written into each of Llama-3-8B's 32 layer caches at L = 8192,
/// for each target type, next to one decode step over all 32 layers (one
/// layer's step measured, times 32) in the same run.
pub(crate) fn append_report(tier: Tier, json: bool, min_secs: f64) {
    const LAYERS: usize = 32;
    let (m, l) = (LLAMA3_8B, 8192);
    let row = m.g * m.d;
    // One decode step of one layer.
    let step = measure(
        &[Job {
            section: "append",
            m,
            b: 1,
            l,
            dtype: Dtype::F16,
            v_dtype: Dtype::F16,
            tier,
            threads: 1,
            layout: Layout::Bgld,
            q_len: 1,
            variant: Variant::None,
            hot: false,
        }],
        &Probes {
            at: vec![(1, 1.0, 1.0)],
            reads: Vec::new(),
            widen: Vec::new(),
            units: Vec::new(),
            live: Vec::new(),
            paged: f64::NAN,
        },
        min_secs,
    )[0]
    .seconds;
    let src: Vec<f16> = (0..row)
        .map(|i| f16::from_f32((i % 17) as f32 * 0.01))
        .collect();
    let offsets = [0usize, 1];
    let new = NewKv {
        k: KvData::F16(&src),
        v: KvData::F16(&src),
        offsets: &offsets,
        kv_heads: m.g,
        head_dim_k: m.d,
        head_dim_v: m.d,
    };
    if !json {
        println!();
        println!(
            "## KV append: one token (f16 source) into each of {LAYERS} Llama-3-8B layer caches ([B, G, L, D], L = {l}) vs one decode step over the {LAYERS} layers (f16, 1 thread: {:.3} ms)",
            step * LAYERS as f64 * 1e3
        );
        println!(
            "{:<8} {:>12} {:>14} {:>12} {:>16}",
            "target", "seconds", "tokens/s", "GB/s written", "append / step"
        );
    }
    // fp8_ds_mla is a latent (MLA) row, not a Llama cache type.
    for dtype in Dtype::ALL.into_iter().filter(|d| !d.is_row_format()) {
        let best = append_time(dtype, &new, l, LAYERS, min_secs);
        let tokens = 1.0 / best; // every layer's K and V for one token
        let bytes = (LAYERS * 2 * m.g * dtype.row_bytes(m.d)) as f64;
        let ratio = best / (step * LAYERS as f64);
        if json {
            println!(
                "{{\"section\":\"append\",\"model\":\"{}\",\"layers\":{LAYERS},\"l\":{l},\"src_dtype\":\"f16\",\"kv_dtype\":\"{dtype}\",\"seconds\":{best:.6e},\"tokens_per_s\":{tokens:.1},\"bytes_per_s\":{:.4e},\"decode_step_seconds\":{:.6e},\"append_over_step\":{ratio:.5}}}",
                m.name,
                bytes / best,
                step * LAYERS as f64
            );
        } else {
            println!(
                "{:<8} {:>12.3e} {:>14.0} {:>12.2} {:>16.5}",
                dtype.name(),
                best,
                tokens,
                bytes / best / 1e9,
                ratio
            );
        }
    }
}

/// The best time to append `new` (one token) at position `l` of each of
/// `layers` zeroed `[B, G, L, D]` caches of `dtype` with room for `l + 1`
/// positions (zeroed allocations are mapped lazily, so only the rows
/// written are ever touched): at least 100 runs and `min_secs`, the first
/// untimed.
fn append_time(dtype: Dtype, new: &NewKv<'_>, l: usize, layers: usize, min_secs: f64) -> f64 {
    let (g, d) = (new.kv_heads, new.head_dim_k);
    let n = (l + 1) * g * d;
    let mut caches: Vec<(KvBuffer, KvBuffer)> = (0..layers)
        .map(|_| (zeroed(dtype, n, d), zeroed(dtype, n, d)))
        .collect();
    let mut best = f64::INFINITY;
    let started = Instant::now();
    for rep in 0.. {
        let t = Instant::now();
        for (k, v) in caches.iter_mut() {
            let mut cache = KvCacheMut::Strided {
                k: KvTensorMut::bgld(k.data_mut(), l + 1, g, d),
                v: KvTensorMut::bgld(v.data_mut(), l + 1, g, d),
                capacity: l + 1,
            };
            append(&mut cache, new, &[l]).expect("append");
        }
        let dt = t.elapsed().as_secs_f64();
        if rep > 0 {
            best = best.min(dt);
        }
        if rep >= 100 && started.elapsed().as_secs_f64() >= min_secs {
            break;
        }
    }
    best
}
