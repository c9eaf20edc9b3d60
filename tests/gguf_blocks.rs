//! The GGUF block formats llama.cpp's caches use (q4_0, q4_1, q5_0, q5_1,
//! iq4_nl): llama.cpp's byte layouts, the literal decoders against ggml's
//! dequantization written out here, the encoders' scale rules and nearest
//! levels, the errors, and a cache handed over as raw bytes at any address.
//! (Every tier's kernels against the reference over these formats: the
//! `Dtype::ALL` sweeps of `edges`, `proptest_tiers`, `quant_cache`,
//! `instances` and `tier_coverage`.)

mod common;

use common::{capi_batch, capi_run, capi_strided_cache, capi_workspace, check_all, Layout, Spec};
use gqa_kernels::quant::{
    self, BlockIq4Nl, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, IQ4_NL_LEVELS,
};
use gqa_kernels::{
    f16, Batch, Blocks, Dtype, Error, KvBuffer, KvData, KvTensor, Options, Plan, Shape,
};
use proptest::prelude::*;
use std::mem::{align_of, offset_of, size_of};

const NEW: [Dtype; 5] = [
    Dtype::Q4_0,
    Dtype::Q4_1,
    Dtype::Q5_0,
    Dtype::Q5_1,
    Dtype::Iq4Nl,
];

#[test]
fn blocks_have_ggml_s_sizes_and_field_offsets() {
    assert_eq!((size_of::<BlockQ8_0>(), align_of::<BlockQ8_0>()), (34, 2));
    assert_eq!((size_of::<BlockQ4_0>(), align_of::<BlockQ4_0>()), (18, 2));
    assert_eq!((size_of::<BlockQ4_1>(), align_of::<BlockQ4_1>()), (20, 2));
    assert_eq!((size_of::<BlockQ5_0>(), align_of::<BlockQ5_0>()), (22, 2));
    assert_eq!((size_of::<BlockQ5_1>(), align_of::<BlockQ5_1>()), (24, 2));
    assert_eq!((size_of::<BlockIq4Nl>(), align_of::<BlockIq4Nl>()), (18, 2));
    assert_eq!(
        (offset_of!(BlockQ4_1, m), offset_of!(BlockQ4_1, qs)),
        (2, 4)
    );
    assert_eq!(
        (offset_of!(BlockQ5_0, qh), offset_of!(BlockQ5_0, qs)),
        (2, 6)
    );
    assert_eq!(
        (
            offset_of!(BlockQ5_1, m),
            offset_of!(BlockQ5_1, qh),
            offset_of!(BlockQ5_1, qs)
        ),
        (2, 4, 8)
    );
    // The registry agrees, and a row of 128 values is 4 blocks.
    for (dt, bytes) in [
        (Dtype::Q8_0, 34),
        (Dtype::Q4_0, 18),
        (Dtype::Q4_1, 20),
        (Dtype::Q5_0, 22),
        (Dtype::Q5_1, 24),
        (Dtype::Iq4Nl, 18),
    ] {
        assert_eq!(dt.block().map(|b| b.bytes), Some(bytes), "{dt}");
        assert_eq!(dt.row_bytes(128), 4 * bytes, "{dt}");
        assert_eq!(Dtype::from_name(dt.name()), Some(dt));
    }
    assert!(Dtype::F16.block().is_none() && Dtype::Int8.block().is_none());
    assert_eq!(
        IQ4_NL_LEVELS,
        [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
    );
}

/// ggml's `dequantize_row_*` for one block, written out from its C source
/// (pairs `j`, `j + 16` from byte `j`; the fifth bits of q5 read as
/// `((qh >> j) << 4) & 0x10` and `(qh >> (j + 12)) & 0x10`).
fn ggml_dequantize(dt: Dtype, b: &[u8]) -> [f32; 32] {
    let h = |o: usize| f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32();
    let mut y = [0f32; 32];
    match dt {
        Dtype::Q4_0 | Dtype::Iq4Nl => {
            let d = h(0);
            for j in 0..16 {
                let (lo, hi) = (b[2 + j] & 0x0F, b[2 + j] >> 4);
                if dt == Dtype::Q4_0 {
                    y[j] = (i32::from(lo) - 8) as f32 * d;
                    y[j + 16] = (i32::from(hi) - 8) as f32 * d;
                } else {
                    y[j] = d * f32::from(IQ4_NL_LEVELS[usize::from(lo)]);
                    y[j + 16] = d * f32::from(IQ4_NL_LEVELS[usize::from(hi)]);
                }
            }
        }
        Dtype::Q4_1 => {
            let (d, m) = (h(0), h(2));
            for j in 0..16 {
                y[j] = f32::from(b[4 + j] & 0x0F) * d + m;
                y[j + 16] = f32::from(b[4 + j] >> 4) * d + m;
            }
        }
        Dtype::Q5_0 | Dtype::Q5_1 => {
            let one = dt == Dtype::Q5_1;
            let d = h(0);
            let m = if one { h(2) } else { 0.0 };
            let (qh_at, qs_at) = if one { (4, 8) } else { (2, 6) };
            let qh = u32::from_le_bytes(b[qh_at..qh_at + 4].try_into().unwrap());
            for j in 0..16 {
                let xh0 = (((qh >> j) << 4) & 0x10) as i32;
                let xh1 = ((qh >> (j + 12)) & 0x10) as i32;
                let q = b[qs_at + j];
                let off = if one { 0 } else { 16 };
                let x0 = (i32::from(q & 0x0F) | xh0) - off;
                let x1 = (i32::from(q >> 4) | xh1) - off;
                y[j] = x0 as f32 * d + m;
                y[j + 16] = x1 as f32 * d + m;
            }
        }
        _ => unreachable!(),
    }
    y
}

fn decoded(dt: Dtype, bytes: &[u8]) -> Vec<f64> {
    let blocks = Blocks::new(dt, bytes).unwrap();
    (0..32).map(|i| blocks.value(i)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any bytes with a finite scale (and offset): the format's literal
    /// decoder, the views' `value_f64` and `dequantize_blocks` read what
    /// ggml's dequantization reads.
    #[test]
    fn literal_decoders_read_what_ggml_reads(
        raw in proptest::collection::vec(any::<u8>(), 24),
        d in -4.0f32..4.0,
        m in -4.0f32..4.0,
    ) {
        for dt in NEW {
            let n = dt.block().unwrap().bytes;
            let mut b = raw[..n].to_vec();
            b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            if matches!(dt, Dtype::Q4_1 | Dtype::Q5_1) {
                b[2..4].copy_from_slice(&f16::from_f32(m).to_le_bytes());
            }
            let want = ggml_dequantize(dt, &b);
            let got = decoded(dt, &b);
            let data = KvData::Blocks(Blocks::new(dt, &b).unwrap());
            let mut deq = [0f32; 32];
            match dt {
                Dtype::Q4_0 => quant::dequantize_blocks(&[bytemuck::pod_read_unaligned::<BlockQ4_0>(&b)], &mut deq),
                Dtype::Q4_1 => quant::dequantize_blocks(&[bytemuck::pod_read_unaligned::<BlockQ4_1>(&b)], &mut deq),
                Dtype::Q5_0 => quant::dequantize_blocks(&[bytemuck::pod_read_unaligned::<BlockQ5_0>(&b)], &mut deq),
                Dtype::Q5_1 => quant::dequantize_blocks(&[bytemuck::pod_read_unaligned::<BlockQ5_1>(&b)], &mut deq),
                _ => quant::dequantize_blocks(&[bytemuck::pod_read_unaligned::<BlockIq4Nl>(&b)], &mut deq),
            }
            .unwrap();
            for i in 0..32 {
                // ggml computes in f32: one rounding of the exact value.
                prop_assert_eq!(got[i] as f32, want[i], "{} value {}", dt, i);
                prop_assert_eq!(data.value_f64(i, 0, 32), got[i]);
                prop_assert_eq!(deq[i], want[i]);
            }
        }
    }

    /// The encoders: the scale (and offset) by the stated rule, rounded to
    /// f16, and every value on the level nearest to it among the block's
    /// levels.
    #[test]
    fn encoders_keep_the_scale_rule_and_pick_the_nearest_level(
        x in proptest::collection::vec(-3.0f32..3.0, 32),
        exp in -6i32..6,
    ) {
        let x: Vec<f32> = x.iter().map(|v| v * 2f32.powi(exp)).collect();
        let absmax = x.iter().fold(0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
        let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
        for dt in NEW {
            let n = dt.block().unwrap().bytes;
            let mut b = vec![0u8; n];
            quant::quantize_block_bytes(dt, &x, &mut b).unwrap();
            let h = |o: usize| f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]]));
            let d = f64::from(h(0));
            // The levels of the block: d · k + m over its codes.
            let levels: Vec<f64> = match dt {
                Dtype::Q4_0 => {
                    prop_assert_eq!(h(0), f16::from_f32(absmax / -8.0));
                    (-8..8).map(|k| d * f64::from(k)).collect()
                }
                Dtype::Q5_0 => {
                    prop_assert_eq!(h(0), f16::from_f32(absmax / -16.0));
                    (-16..16).map(|k| d * f64::from(k)).collect()
                }
                Dtype::Q4_1 | Dtype::Q5_1 => {
                    let top = if dt == Dtype::Q4_1 { 15.0 } else { 31.0 };
                    prop_assert_eq!(h(0), f16::from_f32((hi - lo) / top));
                    prop_assert_eq!(h(2), f16::from_f32(lo));
                    let m = f64::from(h(2));
                    (0..=top as i32).map(|k| d * f64::from(k) + m).collect()
                }
                _ => {
                    // iq4_nl: the first candidate scale, or the least-squares
                    // one when it is better.
                    IQ4_NL_LEVELS.iter().map(|&l| d * f64::from(l)).collect()
                }
            };
            let got = decoded(dt, &b);
            for (i, (&xi, &yi)) in x.iter().zip(&got).enumerate() {
                let xi = f64::from(xi);
                let best = levels.iter().map(|l| (xi - l).abs()).fold(f64::INFINITY, f64::min);
                // The encoder divides in f32: a value within a hair of a
                // midpoint may take the other level.
                let slack = d.abs() * 1e-5 + 1e-30;
                prop_assert!((xi - yi).abs() <= best + slack,
                    "{} value {}: {} -> {} (nearest level is {} away)", dt, i, xi, yi, best);
            }
            if dt == Dtype::Iq4Nl {
                // Never worse than the first candidate, d = x_max / -127.
                let d0 = f64::from(f16::from_f32(absmax / -127.0));
                let first: f64 = x.iter().map(|&v| {
                    let v = f64::from(v);
                    IQ4_NL_LEVELS.iter().map(|&l| (v - d0 * f64::from(l)).abs()).fold(f64::INFINITY, f64::min).powi(2)
                }).sum();
                let ours: f64 = x.iter().zip(&got).map(|(&v, y)| (f64::from(v) - y).powi(2)).sum();
                prop_assert!(ours <= first * (1.0 + 1e-9) + 1e-30, "{} > {}", ours, first);
            }
        }
    }
}

#[test]
fn all_zero_and_constant_blocks_decode_exactly() {
    for dt in NEW {
        let n = dt.block().unwrap().bytes;
        let mut b = vec![0u8; n];
        quant::quantize_block_bytes(dt, &[0.0; 32], &mut b).unwrap();
        assert!(decoded(dt, &b).iter().all(|&y| y == 0.0), "{dt}");
    }
    // The offset formats hold a constant block exactly (d = 0, m = x).
    for dt in [Dtype::Q4_1, Dtype::Q5_1] {
        let mut b = vec![0u8; dt.block().unwrap().bytes];
        quant::quantize_block_bytes(dt, &[0.75; 32], &mut b).unwrap();
        assert!(decoded(dt, &b).iter().all(|&y| y == 0.75), "{dt}");
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    for dt in NEW {
        // Head dims that are not whole blocks.
        for (dk, dv, arg) in [(40, 64, "head_dim_k"), (64, 48, "head_dim_v")] {
            let shape = Shape::new(1, 4, 1, dk, dt)
                .with_head_dims(dk, dv)
                .with_dtypes(dt, dt);
            let e = Plan::new(&shape, &Options::default()).unwrap_err();
            assert!(
                matches!(e, Error::InvalidDim { arg: a, .. } if a == arg),
                "{dt}: {e:?}"
            );
        }
        let n = dt.block().unwrap().bytes;
        let e = Blocks::new(dt, &vec![0u8; 2 * n + 1]).unwrap_err();
        assert!(matches!(e, Error::InvalidDim { arg: "bytes", .. }), "{e:?}");
        let mut x = vec![0.5f32; 64];
        x[40] = f32::INFINITY;
        let e = quant::quantize_block_bytes(dt, &x, &mut vec![0u8; 2 * n]).unwrap_err();
        assert!(matches!(e, Error::NonFinite { index: 40, .. }), "{e:?}");
        let e = quant::quantize_block_bytes(dt, &x[..48], &mut vec![0u8; 2 * n]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidDim {
                    arg: "head_dim",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = quant::quantize_block_bytes(dt, &x[..32], &mut vec![0u8; 2 * n]).unwrap_err();
        assert!(
            matches!(e, Error::LengthMismatch { arg: "dst", .. }),
            "{e:?}"
        );
        // Strides of half a block.
        let (d, l) = (64usize, 4usize);
        let bytes = vec![0u8; (l * (d + 16) / 32 + 1) * n];
        let shape = Shape::new(1, 2, 1, d, dt);
        let plan = Plan::new(&shape, &Options::default()).unwrap();
        let k = KvTensor::new(
            KvData::Blocks(Blocks::new(dt, &bytes).unwrap()),
            0,
            d + 16,
            d + 16,
        );
        let q = vec![0f32; 2 * d];
        let mut out = vec![0f32; 2 * d];
        let e = plan
            .run(
                &Batch::strided(&q, k, k, &[l]),
                &mut out,
                None,
                &mut plan.alloc_workspace(),
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidDim {
                    arg: "k.token_stride",
                    ..
                }
            ),
            "{dt}: {e:?}"
        );
    }
    let e = Blocks::new(Dtype::F16, &[0u8; 36]).unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedDtype { arg: "dtype", .. }),
        "{e:?}"
    );
    let e = quant::quantize_block_bytes(Dtype::Int8, &[0.0; 32], &mut [0u8; 32]).unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedDtype { arg: "dtype", .. }),
        "{e:?}"
    );
}

/// A host hands over llama.cpp's cache blocks as bytes at whatever address
/// they sit (here one byte past an even one): the step reads them in place
/// and gives, bit for bit, what it gives on an aligned copy.
#[test]
fn raw_bytes_at_any_address_read_in_place() {
    let (g, h, d, l) = (2usize, 8usize, 128usize, 45usize);
    let x: Vec<f32> = (0..l * g * d)
        .map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0)
        .collect();
    let q: Vec<f32> = (0..h * d)
        .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
        .collect();
    for dt in NEW {
        let aligned = KvBuffer::from_f32(dt, &x, d).unwrap();
        let KvData::Blocks(b) = aligned.data() else {
            panic!("{dt}: not blocks")
        };
        let mut shifted = vec![0u8; b.bytes().len() + 1];
        shifted[1..].copy_from_slice(b.bytes());
        let odd = Blocks::new(dt, &shifted[1..]).unwrap();
        let shape = Shape::new(1, h, g, d, dt);
        let plan = Plan::new(&shape, &Options::default()).unwrap();
        let mut outs = Vec::new();
        for data in [aligned.data(), KvData::Blocks(odd)] {
            let k = KvTensor::blgd(data, l, g, d);
            let mut out = vec![0f32; h * d];
            plan.run(
                &Batch::strided(&q, k, k, &[l]),
                &mut out,
                None,
                &mut plan.alloc_workspace(),
            )
            .unwrap();
            outs.push(out);
        }
        assert!(
            outs[0]
                .iter()
                .zip(&outs[1])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{dt}"
        );
    }
}

/// Every tier against the reference over each new format on the layouts
/// hosts use (llama.cpp's token-major cache, pages of 16, Hugging Face's
/// head-major), group sizes 1, 5 and 8, lengths across a split boundary.
#[test]
fn every_tier_matches_the_reference_on_each_layout() {
    let layouts = [
        Layout::Blgd,
        Layout::Bgld,
        Layout::Paged {
            page: 16,
            head_major: false,
        },
    ];
    let mut seed = 11;
    for dt in NEW {
        for (i, layout) in layouts.into_iter().enumerate() {
            let (h, g, d) = [(8, 8, 64), (10, 2, 128), (8, 1, 96)][i];
            let shape = Shape::new(2, h, g, d, dt).with_dtypes(dt, dt);
            let mut s = Spec::new(shape, vec![300, 1]);
            s.layout = layout;
            s.seed = seed;
            seed += 1;
            check_all(&s.build());
        }
    }
}

/// Through the C ABI: a q4_1 K and an iq4_nl V cache as raw bytes (at an
/// odd address) give what the Rust API gives, bit for bit; a `len` that
/// is not whole blocks is an invalid argument.
///
/// Long on purpose: the C structs are filled field by field, as a C host
/// writes them, before the calls; the batch and the strided cache start
/// from `common::capi_batch` and `common::capi_strided_cache` (every
/// optional field NULL or 0).
#[test]
fn the_c_abi_reads_block_formats_as_bytes() {
    use gqa_kernels::capi::*;
    let (h, g, d, l) = (8usize, 2usize, 64usize, 37usize);
    let (kt, vt) = (Dtype::Q4_1, Dtype::Iq4Nl);
    let x: Vec<f32> = (0..l * g * d)
        .map(|i| ((i * 7919) % 211) as f32 / 60.0 - 1.5)
        .collect();
    let q: Vec<f32> = (0..h * d)
        .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let (kb, vb) = (
        KvBuffer::from_f32(kt, &x, d).unwrap(),
        KvBuffer::from_f32(vt, &x, d).unwrap(),
    );
    // The Rust API, [B, L, G, D].
    let shape = Shape::new(1, h, g, d, kt).with_dtypes(kt, vt);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let (k, v) = (
        KvTensor::blgd(kb.data(), l, g, d),
        KvTensor::blgd(vb.data(), l, g, d),
    );
    let mut want = vec![0f32; h * d];
    plan.run(
        &Batch::strided(&q, k, v, &[l]),
        &mut want,
        None,
        &mut plan.alloc_workspace(),
    )
    .unwrap();
    // The same bytes, one byte off an even address, through the C ABI.
    let shifted = |b: &KvBuffer| {
        let KvData::Blocks(b) = b.data() else {
            panic!("blocks")
        };
        let mut s = vec![0u8; b.bytes().len() + 1];
        s[1..].copy_from_slice(b.bytes());
        s
    };
    let (mut ks, mut vs) = (shifted(&kb), shifted(&vb));
    let kv = |t: Dtype, p: &mut Vec<u8>, len: usize| gqa_kv {
        dtype: t.abi_code(),
        data: p[1..].as_mut_ptr().cast(),
        len,
        scales: std::ptr::null_mut(),
        scales_len: 0,
        outer_stride: l * g * d,
        token_stride: g * d,
        head_stride: d,
    };
    let cshape = gqa_shape {
        struct_size: size_of::<gqa_shape>(),
        batch: 1,
        heads: h,
        kv_heads: g,
        head_dim_k: d,
        head_dim_v: d,
        q_len: 1,
        max_kv_len: 0,
        k_dtype: kt.abi_code(),
        v_dtype: vt.abi_code(),
    };
    let options = gqa_options {
        struct_size: size_of::<gqa_options>(),
        scale: 0.0,
        tier: GQA_TIER_AUTO,
        threads: 1,
        window: 0,
        softcap: 0.0,
        unit: GQA_UNIT_AUTO,
        precision: GQA_PRECISION_EXACT,
        cascade: 0,
    };
    let mut cplan: *mut gqa_plan = std::ptr::null_mut();
    // SAFETY: valid structs and out-pointer.
    assert_eq!(
        unsafe { gqa_plan_create(&cshape, &options, &mut cplan) },
        GQA_OK
    );
    let mut ws = capi_workspace(cplan);
    let lens = [l];
    for (len, status) in [
        (l * g * d, GQA_OK),
        (l * g * d - 16, GQA_ERR_INVALID_ARGUMENT),
    ] {
        // Every pointer is valid for its length: the short `len` describes
        // a prefix of the K bytes.
        let cache = capi_strided_cache(kv(kt, &mut ks, len), kv(vt, &mut vs, l * g * d), l);
        let batch = capi_batch(&q, &cache, &lens);
        let (st, out) = capi_run(cplan, &batch, h * d, &mut ws);
        assert_eq!(st, status, "len {len}");
        if st == GQA_OK {
            assert!(out
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
    // SAFETY: a live plan, destroyed once.
    unsafe { gqa_plan_destroy(cplan) };
}
