//! KV append: arbitrary layouts (strided, paged, ring; strides sometimes
//! wrong; latent caches, one pool written by `append_latent`), target types, head dims, new-row types and values (NaN and
//! infinities included), offsets, positions and block tables. A rejected
//! call leaves every buffer as it was; an accepted one writes exactly the
//! rows of the new positions, each holding what the crate's converters or
//! encoders make of its source row, and nothing else.
//!
//! Shared by the cargo-fuzz target and `tests/fuzz_regressions.rs`.

use arbitrary::{Result, Unstructured};
use gqa_kernels::quant::{self, BlockQ8_0, Fp8, QK8_0};
use gqa_kernels::{
    append, append_latent, bf16, f16, Dtype, KvBuffer, KvCacheMut, KvData, KvPagesMut, KvTensorMut,
    LatentCacheMut, NewKv,
};

/// Inputs that got past validation to the full check (a coverage signal
/// for the regression test).
pub static CHECKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs one input.
pub fn run(data: &[u8]) {
    let _ = go(&mut Unstructured::new(data));
}

/// `n` values of type `t` (rows of `d`) holding a sentinel: -7 for the
/// float types, 77 with scales of -7 for int8, 0x55 with scales of -7 for
/// fp8e4m3_row, zero blocks for the block formats, 0x55
/// with the cache's `scales` for fp8.
fn sentinel(t: Dtype, n: usize, d: usize, scales: &[f32]) -> KvBuffer {
    match t {
        Dtype::Int8 => KvBuffer::int8(&vec![77; n], &vec![-7.0; n / d.max(1)]),
        Dtype::Fp8E4M3 => KvBuffer::fp8(Fp8::E4M3, &vec![0x55; n], scales),
        Dtype::Fp8E5M2 => KvBuffer::fp8(Fp8::E5M2, &vec![0x55; n], scales),
        Dtype::Fp8E4M3Row => KvBuffer::fp8_row(&vec![0x55; n], &vec![-7.0; n / d.max(1)]),
        _ if t.block().is_some() => KvBuffer::zeros(t, n, d).expect("whole blocks"),
        _ => KvBuffer::from_f32(t, &vec![-7.0; n], 1).expect("a float type"),
    }
}

/// One input, drawn and checked in order: the layout, the new rows, the call, then the check of every row. Long on purpose: every
/// draw depends on the ones before it, and the input's bytes are consumed
/// in this order, so the regression files replay only if it stays one
/// straight sequence.
fn go(u: &mut Unstructured<'_>) -> Result<()> {
    let b = u.int_in_range(0..=3usize)?;
    let g = u.int_in_range(1..=3usize)?;
    let t = *u.choose(&Dtype::ALL)?;
    // Block formats write whole blocks (fp8_ds_mla: whole 576-value rows).
    let d = match t.block() {
        Some(b) if t.is_row_format() => b.len,
        Some(_) => 32 * u.int_in_range(1..=2usize)?,
        None => u.int_in_range(1..=40usize)?,
    };
    let cap = u.int_in_range(1..=12usize)?;
    let page = u.int_in_range(1..=5usize)?;
    let layout = u.int_in_range(0..=3u8)?;
    let pages = b * cap.div_ceil(page) + 1;
    let n = match layout {
        2 => pages * page * g * d,
        _ => b.max(1) * cap * g * d,
    };
    let scales: Vec<f32> = (0..g).map(|h| 0.01 * (h + 1) as f32).collect();
    let mut k = sentinel(t, n, d, &scales);
    let mut v = sentinel(t, n, d, &scales);
    // A shuffled pool, sometimes with one entry replaced by any index (out
    // of the pool, or a page another block already uses).
    let mut table: Vec<u32> = (0..(b * cap.div_ceil(page)) as u32).collect();
    for i in (1..table.len()).rev() {
        let j = u.int_in_range(0..=i)?;
        table.swap(i, j);
    }
    if !table.is_empty() && u.ratio(1, 5)? {
        let i = u.choose_index(table.len())?;
        table[i] = u.int_in_range(0..=(pages as u32))?;
    }
    let mut sorted = table.clone();
    sorted.sort_unstable();
    let aliased = sorted.windows(2).any(|w| w[0] == w[1]);
    // Strides: the layout's, or (sometimes) one off.
    let skew = if u.ratio(1, 6)? { 1 } else { 0 };
    // New rows: T tokens, f32 / f16 / bf16, sometimes NaN or huge.
    let counts: Vec<usize> = (0..b)
        .map(|_| u.int_in_range(0..=3usize))
        .collect::<Result<_>>()?;
    let mut offsets = vec![0usize];
    for c in &counts {
        offsets.push(offsets.last().unwrap() + c);
    }
    let tokens = *offsets.last().unwrap();
    let mut vals = vec![0f32; 2 * tokens * g * d];
    for x in vals.iter_mut() {
        *x = match u.int_in_range(0..=40u8)? {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => 1e30,
            3 => -70000.0,
            _ => u.int_in_range(-2000..=2000i32)? as f32 / 1000.0,
        };
    }
    let (kr, vr) = vals.split_at(tokens * g * d);
    let src = *u.choose(&[Dtype::F32, Dtype::F16, Dtype::Bf16])?;
    let kh: Vec<f16> = kr.iter().map(|&x| f16::from_f32(x)).collect();
    let vh: Vec<f16> = vr.iter().map(|&x| f16::from_f32(x)).collect();
    let kb: Vec<bf16> = kr.iter().map(|&x| bf16::from_f32(x)).collect();
    let vb: Vec<bf16> = vr.iter().map(|&x| bf16::from_f32(x)).collect();
    let (nk, nv) = match src {
        Dtype::F32 => (KvData::F32(kr), KvData::F32(vr)),
        Dtype::F16 => (KvData::F16(&kh), KvData::F16(&vh)),
        _ => (KvData::Bf16(&kb), KvData::Bf16(&vb)),
    };
    let new = NewKv {
        k: nk,
        v: nv,
        offsets: &offsets,
        kv_heads: g,
        head_dim_k: d,
        head_dim_v: d,
    };
    let positions: Vec<usize> = (0..b)
        .map(|_| u.int_in_range(0..=14usize))
        .collect::<Result<_>>()?;
    // Drawn last, so that older inputs replay as they did: a latent cache
    // (K's pool only; V's stays as it was).
    let latent = u.ratio(1, 4)?;
    let (k0, v0) = (k.clone(), v.clone());
    // Where the K (`v = false`) or V row of (sequence, position, head)
    // starts, by the layouts' definitions (with the skewed strides);
    // None when the layout cannot place it.
    let place = |v: bool, s: usize, j: usize, h: usize| -> Option<usize> {
        let ks = if v { 0 } else { skew };
        let vs = if v { skew } else { 0 };
        match layout {
            0 => (j < cap).then(|| s * cap * g * d + h * cap * d + j * (d + ks)),
            1 => (j < cap).then(|| ((s * cap + j) * g + h) * d),
            2 => {
                let p = *table.get(s * cap.div_ceil(page) + j / page)? as usize;
                ((j / page) < cap.div_ceil(page) && p < pages)
                    .then(|| p * g * page * d + h * (page * d + vs) + (j % page) * d)
            }
            _ => Some(((s * g + h) * cap + j % cap) * d),
        }
    };
    let res = if latent {
        let kv = k.data_mut();
        let strided = |x, skew| KvTensorMut::new(x, cap * g * d, d + skew, cap * d);
        let mut cache = match layout {
            0 => LatentCacheMut::Strided {
                kv: strided(kv, skew),
                capacity: cap,
            },
            1 => LatentCacheMut::Strided {
                kv: KvTensorMut::blgd(kv, cap, g, d),
                capacity: cap,
            },
            2 => LatentCacheMut::Paged {
                kv: KvPagesMut::gpd(kv, page, g, d),
                page_size: page,
                block_table: &table,
                blocks_per_seq: cap.div_ceil(page),
            },
            _ => LatentCacheMut::Ring {
                kv: strided(kv, 0),
                capacity: cap,
            },
        };
        let rows = NewKv {
            v: KvData::F32(&[]),
            ..new
        };
        append_latent(&mut cache, &rows, &positions)
    } else {
        let (kv, vv) = (k.data_mut(), v.data_mut());
        let strided = |x, skew| KvTensorMut::new(x, cap * g * d, d + skew, cap * d);
        let mut cache = match layout {
            0 => KvCacheMut::Strided {
                k: strided(kv, skew),
                v: strided(vv, 0),
                capacity: cap,
            },
            1 => KvCacheMut::Strided {
                k: KvTensorMut::blgd(kv, cap, g, d),
                v: KvTensorMut::blgd(vv, cap, g, d),
                capacity: cap,
            },
            2 => KvCacheMut::Paged {
                k: KvPagesMut::gpd(kv, page, g, d),
                v: KvPagesMut::new(vv, g * page * d, d, page * d + skew),
                page_size: page,
                block_table: &table,
                blocks_per_seq: cap.div_ceil(page),
            },
            _ => KvCacheMut::Ring {
                k: strided(kv, 0),
                v: strided(vv, 0),
                capacity: cap,
            },
        };
        append(&mut cache, &new, &positions)
    };
    if res.is_err() {
        assert!(k == k0 && v == v0, "a rejected append ({res:?}) wrote");
        return Ok(());
    }
    if skew != 0 || aliased {
        // A one-off stride is a valid view of a plain type, and two blocks
        // may share a page, but then rows may overlap one another; only
        // the rejection path is checked.
        return Ok(());
    }
    CHECKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Accepted: every new row holds its source, converted or encoded, and
    // nothing else changed.
    let mut written = [vec![false; n], vec![false; n]];
    for s in 0..b {
        for (i, tok) in (offsets[s]..offsets[s + 1]).enumerate() {
            for h in 0..g {
                let pools = [(&k, &new.k), (&v, &new.v)].into_iter().enumerate();
                for (vi, (buf, rows)) in pools.take(if latent { 1 } else { 2 }) {
                    let at = place(vi == 1, s, positions[s] + i, h)
                        .expect("an accepted row has a place");
                    let row: Vec<f32> = (0..d)
                        .map(|e| match rows {
                            KvData::F32(x) => x[(tok * g + h) * d + e],
                            KvData::F16(x) => x[(tok * g + h) * d + e].to_f32(),
                            KvData::Bf16(x) => x[(tok * g + h) * d + e].to_f32(),
                            _ => unreachable!(),
                        })
                        .collect();
                    check_row(buf, at, h, &row);
                    written[vi][at..at + d].fill(true);
                }
            }
        }
    }
    for (i, (wk, wv)) in written[0].iter().zip(&written[1]).enumerate() {
        assert!(*wk || same_value(&k, &k0, i), "stray K write at {i}");
        assert!(*wv || same_value(&v, &v0, i), "stray V write at {i}");
    }
    Ok(())
}

/// Value `i` of `a` and `b` is bitwise equal (block formats: its block).
fn same_value(a: &KvBuffer, b: &KvBuffer, i: usize) -> bool {
    match (a.data(), b.data()) {
        (KvData::F32(x), KvData::F32(y)) => x[i].to_bits() == y[i].to_bits(),
        (KvData::F16(x), KvData::F16(y)) => x[i].to_bits() == y[i].to_bits(),
        (KvData::Bf16(x), KvData::Bf16(y)) => x[i].to_bits() == y[i].to_bits(),
        (KvData::Int8 { values: x, .. }, KvData::Int8 { values: y, .. }) => x[i] == y[i],
        (KvData::Q8_0(x), KvData::Q8_0(y)) => x[i / QK8_0] == y[i / QK8_0],
        (KvData::Blocks(x), KvData::Blocks(y)) => {
            let b = x.dtype().block().expect("a block format");
            let at = i / b.len * b.bytes;
            x.bytes()[at..][..b.bytes] == y.bytes()[at..][..b.bytes]
        }
        (KvData::Fp8E4M3 { values: x, .. }, KvData::Fp8E4M3 { values: y, .. })
        | (KvData::Fp8E5M2 { values: x, .. }, KvData::Fp8E5M2 { values: y, .. })
        | (KvData::Fp8E4M3Row { values: x, .. }, KvData::Fp8E4M3Row { values: y, .. }) => {
            x[i] == y[i]
        }
        _ => false,
    }
}

/// The row at `at` holds `row` as the crate converts or encodes it.
fn check_row(buf: &KvBuffer, at: usize, h: usize, row: &[f32]) {
    let d = row.len();
    let fp8 = if buf.dtype() == Dtype::Fp8E4M3 {
        Fp8::E4M3
    } else {
        Fp8::E5M2
    };
    match buf.data() {
        // NaN stays NaN (its payload may differ between converters).
        KvData::F32(x) => assert!(x[at..at + d]
            .iter()
            .zip(row)
            .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()))),
        KvData::F16(x) => assert!(x[at..at + d].iter().zip(row).all(|(a, b)| {
            let w = f16::from_f32(*b);
            a.to_bits() == w.to_bits() || (a.is_nan() && w.is_nan())
        })),
        KvData::Bf16(x) => assert!(x[at..at + d].iter().zip(row).all(|(a, b)| {
            let w = bf16::from_f32(*b);
            a.to_bits() == w.to_bits() || (a.is_nan() && w.is_nan())
        })),
        KvData::Int8 {
            values: x,
            scales: s,
        } => {
            let mut q = vec![0i8; d];
            let sc = quant::quantize_int8_row(row, &mut q).expect("an accepted row is finite");
            assert!(x[at..at + d] == q[..] && s[at / d].to_bits() == sc.to_bits());
        }
        KvData::Q8_0(blocks) => {
            let mut q = vec![BlockQ8_0::default(); d / QK8_0];
            quant::quantize_q8_0(row, &mut q).expect("an accepted row is finite");
            assert!(blocks[at / QK8_0..(at + d) / QK8_0] == q[..]);
        }
        KvData::Blocks(blocks) => {
            let b = blocks.dtype().block().expect("a block format");
            let mut q = vec![0u8; d / b.len * b.bytes];
            quant::quantize_block_bytes(blocks.dtype(), row, &mut q)
                .expect("an accepted row is finite");
            assert!(blocks.bytes()[at / b.len * b.bytes..(at + d) / b.len * b.bytes] == q[..]);
        }
        KvData::Fp8E4M3 {
            values: x,
            scales: s,
        }
        | KvData::Fp8E5M2 {
            values: x,
            scales: s,
        } => {
            let mut q = vec![0u8; d];
            quant::quantize_fp8(row, s[h], fp8, &mut q).expect("an accepted row is finite");
            assert!(x[at..at + d] == q[..]);
        }
        KvData::Fp8E4M3Row {
            values: x,
            scales: s,
        } => {
            let mut q = vec![0u8; d];
            let sc = quant::quantize_fp8_row(row, &mut q).expect("an accepted row is finite");
            assert!(x[at..at + d] == q[..] && s[at / d].to_bits() == sc.to_bits());
        }
    }
}
