//! `fp8_ds_mla`: DeepSeek-V3.2's FP8 latent row (FlashMLA's FP8 KV cache,
//! `fp8_ds_mla` in vLLM and SGLang) as a cache type. The row's bytes as
//! FlashMLA lays them out, the literal decoder against hand-decoded bytes,
//! the encoder's bound, the owned buffer, `append_latent`'s
//! quantize-on-write, the C ABI, and what is refused (a pairing with
//! another type, head dims past the row, strides that cut rows, partial
//! rows written). Decode on every tier, unit and layout against the f64
//! reference runs in `latent.rs` (and the sweeps of `proptest_tiers`,
//! `edges`, `sparse`, `cascade`...).

mod common;

use common::{capi_batch, capi_run, capi_strided_cache, capi_workspace, check_all, Layout, Spec};
use gqa_kernels::quant::{
    self, BlockFormat, BlockFp8DsMla, DS_MLA_DIM, DS_MLA_LATENT, DS_MLA_TILE,
};
use gqa_kernels::{
    append_latent, Batch, Blocks, Dtype, Error, KvBuffer, KvCache, KvData, KvTensor, KvTensorMut,
    LatentCacheMut, NewKv, Options, Plan, Shape,
};

/// Deterministic values in `[-range, range)`, tile `t` scaled by `4^t`.
fn row_values(seed: usize, range: f32) -> Vec<f32> {
    (0..DS_MLA_DIM)
        .map(|i| {
            let u = ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0;
            u * range * 4f32.powi((i / DS_MLA_TILE) as i32)
        })
        .collect()
}

#[test]
fn the_row_is_flashmla_s_656_bytes() {
    assert_eq!(size_of::<BlockFp8DsMla>(), 656);
    let dt = Dtype::Fp8DsMla;
    assert_eq!((dt.name(), dt.abi_code()), ("fp8_ds_mla", 13));
    assert_eq!(Dtype::from_name("fp8_ds_mla"), Some(dt));
    assert_eq!(dt.block_len(), 576);
    // A head reads the leading values of each row; the row is read whole.
    assert_eq!((dt.row_bytes(576), dt.row_bytes(512)), (656, 656));
    assert!(dt.fits_head_dim(576) && dt.fits_head_dim(512) && dt.fits_head_dim(1));
    assert!(!dt.fits_head_dim(577) && !dt.fits_head_dim(1152));
    // FlashMLA's byte offsets: 512 E4M3 codes, 4 f32 scales, 64 bf16.
    let mut row = BlockFp8DsMla::default();
    row.codes[3] = 0xAB;
    row.scales[2] = 1.5;
    row.rope[1] = 0x1234;
    let bytes = bytemuck::bytes_of(&row);
    assert_eq!(bytes[3], 0xAB);
    assert_eq!(bytes[512 + 8..512 + 12], 1.5f32.to_le_bytes());
    assert_eq!(bytes[528 + 2..528 + 4], 0x1234u16.to_le_bytes());
}

#[test]
fn the_decoder_reads_each_field_by_its_definition() {
    let mut row = BlockFp8DsMla {
        scales: [0.5, 2.0, -1.0, 1e-3],
        ..Default::default()
    };
    // E4M3FN: 0x38 = 1.0 (exponent 7), 0x7E = 448, 0x01 = 2^-9
    // (subnormal), 0xB8 = -1.0, 0x7F = NaN.
    row.codes[0] = 0x38;
    row.codes[127] = 0x7E;
    row.codes[128] = 0x01;
    row.codes[300] = 0xB8;
    row.codes[400] = 0x38;
    row.codes[511] = 0x7F;
    row.rope[0] = 0x3FC0; // bf16 1.5
    row.rope[63] = 0xC040; // bf16 -3.0
    let b = Blocks::new(Dtype::Fp8DsMla, bytemuck::bytes_of(&row)).unwrap();
    assert_eq!(b.len(), 576);
    assert_eq!(b.value(0), 0.5);
    assert_eq!(b.value(127), 224.0);
    assert_eq!(b.value(128), 2.0 * 2f64.powi(-9));
    assert_eq!(b.value(300), 1.0);
    assert_eq!(b.value(400), f64::from(1e-3f32));
    assert!(b.value(511).is_nan());
    assert_eq!(b.value(1), 0.0);
    assert_eq!(b.value(512), 1.5);
    assert_eq!(b.value(575), -3.0);
    // A buffer of whole rows only.
    let two = [row, row];
    let bytes: &[u8] = bytemuck::cast_slice(&two);
    assert_eq!(Blocks::new(Dtype::Fp8DsMla, bytes).unwrap().len(), 1152);
    assert!(matches!(
        Blocks::new(Dtype::Fp8DsMla, &bytes[..655]),
        Err(Error::InvalidDim { arg: "bytes", .. })
    ));
}

/// The encoder: each tile's scale is its `absmax / 448`, each latent value
/// within E4M3's half step of it (`2^-4 |x|`, or `2^-10` of the scale
/// below E4M3's normal range), the rotary values rounded to bf16; an
/// all-zero tile stores scale 0 and zeros.
#[test]
fn the_encoder_keeps_each_tile_within_e4m3_s_bound() {
    for seed in 0..20 {
        let mut x = row_values(seed, 1.0 + seed as f32);
        if seed % 5 == 0 {
            x[DS_MLA_TILE..2 * DS_MLA_TILE].fill(0.0);
        }
        let mut row = [BlockFp8DsMla::default()];
        quant::quantize_blocks(&x, &mut row).unwrap();
        let row = &row[0];
        for t in 0..DS_MLA_LATENT / DS_MLA_TILE {
            let tile = &x[t * DS_MLA_TILE..(t + 1) * DS_MLA_TILE];
            let absmax = tile.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(row.scales[t], absmax / 448.0, "seed {seed} tile {t}");
        }
        for (i, &v) in x.iter().enumerate() {
            let got = row.value(i);
            let err = (got - f64::from(v)).abs();
            let bound = if i < DS_MLA_LATENT {
                let s = f64::from(row.scales[i / DS_MLA_TILE]);
                (2f64.powi(-4) * f64::from(v).abs()).max(2f64.powi(-10) * s)
            } else {
                2f64.powi(-8) * f64::from(v).abs()
            };
            assert!(err <= bound, "seed {seed} value {i}: {v} read {got}");
        }
        if seed % 5 == 0 {
            assert_eq!(row.scales[1], 0.0);
            assert!((DS_MLA_TILE..2 * DS_MLA_TILE).all(|i| row.value(i) == 0.0));
        }
    }
    // Whole rows only, finite values only.
    let x = row_values(1, 1.0);
    let mut row = [BlockFp8DsMla::default()];
    assert!(matches!(
        quant::quantize_blocks(&x[..512], &mut row),
        Err(Error::InvalidDim { .. })
    ));
    let mut bad = x.clone();
    bad[520] = f32::INFINITY;
    assert!(matches!(
        quant::quantize_blocks(&bad, &mut row),
        Err(Error::NonFinite { index: 520, .. })
    ));
}

#[test]
fn the_owned_buffer_holds_whole_rows() {
    let x: Vec<f32> = (0..3).flat_map(|s| row_values(s, 2.0)).collect();
    let b = KvBuffer::from_f32(Dtype::Fp8DsMla, &x, DS_MLA_DIM).unwrap();
    assert_eq!((b.dtype(), b.len()), (Dtype::Fp8DsMla, x.len()));
    let mut want = vec![BlockFp8DsMla::default(); 3];
    quant::quantize_blocks(&x, &mut want).unwrap();
    let KvData::Blocks(got) = b.data() else {
        panic!("fp8_ds_mla is stored as blocks")
    };
    assert_eq!(got.bytes(), bytemuck::cast_slice::<_, u8>(&want));
    let r = b.repeat_to(5 * DS_MLA_DIM).unwrap();
    let KvData::Blocks(rep) = r.data() else {
        panic!("blocks")
    };
    assert_eq!(rep.bytes()[4 * 656..], got.bytes()[656..2 * 656]);
    assert!(KvBuffer::zeros(Dtype::Fp8DsMla, 2 * DS_MLA_DIM, DS_MLA_DIM).is_ok());
    assert!(matches!(
        KvBuffer::from_f32(Dtype::Fp8DsMla, &x[..1000], DS_MLA_DIM),
        Err(Error::InvalidDim { arg: "len", .. })
    ));
}

/// `append_latent` quantizes each token's row on write exactly as the
/// encoder does (the steps over such rows: below and `latent.rs`).
#[test]
fn append_latent_writes_what_the_encoder_makes() {
    let l = 40usize;
    let x: Vec<f32> = (0..l).flat_map(|s| row_values(s, 3.0)).collect();
    let mut cache = KvBuffer::zeros(Dtype::Fp8DsMla, l * DS_MLA_DIM, DS_MLA_DIM).unwrap();
    let offsets = [0, l];
    let new = NewKv {
        k: KvData::F32(&x),
        v: KvData::F32(&[]),
        offsets: &offsets,
        kv_heads: 1,
        head_dim_k: DS_MLA_DIM,
        head_dim_v: 0,
    };
    let mut lc = LatentCacheMut::Strided {
        kv: KvTensorMut::bgld(cache.data_mut(), l, 1, DS_MLA_DIM),
        capacity: l,
    };
    append_latent(&mut lc, &new, &[0]).unwrap();
    let want = KvBuffer::from_f32(Dtype::Fp8DsMla, &x, DS_MLA_DIM).unwrap();
    let (KvData::Blocks(a), KvData::Blocks(b)) = (cache.data(), want.data()) else {
        panic!("blocks")
    };
    assert_eq!(a.bytes(), b.bytes());
    // Rows are written whole: a 512-value row of this format is refused,
    // naming the head dim.
    let short = NewKv {
        k: KvData::F32(&x[..l * 512]),
        head_dim_k: 512,
        ..new
    };
    let mut lc = LatentCacheMut::Strided {
        kv: KvTensorMut::new(cache.data_mut(), l * DS_MLA_DIM, DS_MLA_DIM, l * DS_MLA_DIM),
        capacity: l,
    };
    let e = append_latent(&mut lc, &short, &[0]).unwrap_err();
    assert!(matches!(e, Error::InvalidDim { value: 512, .. }), "{e:?}");
}

/// Latent MLA steps over fp8_ds_mla rows, non-latent K and V rows of the
/// format and head dims that read part of each row: every tier and unit,
/// head-major, token-major and paged, against the reference.
#[test]
fn steps_over_whole_and_partial_rows() {
    let cases = [
        (16usize, 576usize, 512usize, true, Layout::Bgld),
        (
            16,
            576,
            512,
            true,
            Layout::Paged {
                page: 64,
                head_major: false,
            },
        ),
        (5, 576, 576, false, Layout::Blgd),
        (7, 200, 64, false, Layout::Padded),
        (3, 100, 100, true, Layout::Ring { extra: 2 }),
    ];
    for (i, (h, dk, dv, latent, layout)) in cases.into_iter().enumerate() {
        let shape = Shape::new(2, h, 1, dk, Dtype::Fp8DsMla)
            .with_head_dims(dk, dv)
            .with_max_kv_len(600);
        let mut s = Spec::new(shape, vec![530, 17]);
        s.layout = layout;
        s.latent = latent;
        s.seed = 90 + i as u64;
        check_all(&s.build());
    }
}

#[test]
fn refused_before_any_load() {
    // K and V in one row: no pairing with another type, either way.
    for (k, v) in [
        (Dtype::Fp8DsMla, Dtype::Bf16),
        (Dtype::F16, Dtype::Fp8DsMla),
    ] {
        let shape = Shape::new(1, 16, 1, 576, k)
            .with_dtypes(k, v)
            .with_head_dims(576, 512);
        let e = Plan::new(&shape, &Options::default()).unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedDtype { arg: "v_dtype", .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("fp8_ds_mla"), "{e}");
    }
    // A head dim past the row.
    let shape = Shape::new(1, 16, 1, 577, Dtype::Fp8DsMla);
    let e = Plan::new(&shape, &Options::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidDim {
                arg: "head_dim_k",
                value: 577,
                ..
            }
        ),
        "{e:?}"
    );
    // Strides that cut rows (a head dim of 512 with rows 512 apart).
    let shape = Shape::new(1, 4, 1, 512, Dtype::Fp8DsMla).with_max_kv_len(4);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let buf = KvBuffer::zeros(Dtype::Fp8DsMla, 4 * DS_MLA_DIM, DS_MLA_DIM).unwrap();
    let q = vec![0f32; 4 * 512];
    let lens = [3];
    let view = KvTensor::new(buf.data(), 4 * DS_MLA_DIM, 512, 4 * DS_MLA_DIM);
    let batch = Batch::new(&q, KvCache::latent(view), &lens);
    let mut out = vec![0f32; 4 * 512];
    let e = plan
        .run(&batch, &mut out, None, &mut plan.alloc_workspace())
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidDim {
                arg: "k.token_stride",
                value: 512,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(out.iter().all(|&x| x == 0.0), "nothing written");
}

/// The C ABI: `GQA_DTYPE_FP8_DS_MLA` rows as bytes of a `gqa_kv` (`len` in
/// values), declared latent: the same bits as the Rust step.
#[test]
fn c_abi_reads_fp8_ds_mla_rows() {
    use gqa_kernels::capi::*;
    let (h, l) = (16usize, 70usize);
    let dt = Dtype::Fp8DsMla;
    let x: Vec<f32> = (0..l).flat_map(|s| row_values(s, 1.0)).collect();
    let mut buf = KvBuffer::from_f32(dt, &x, DS_MLA_DIM).unwrap();
    let q: Vec<f32> = (0..h * DS_MLA_DIM)
        .map(|i| ((i * 13) % 11) as f32 / 6.0 - 0.8)
        .collect();
    let lens = [l];
    let rs_shape = Shape::new(1, h, 1, DS_MLA_DIM, dt)
        .with_head_dims(DS_MLA_DIM, DS_MLA_LATENT)
        .with_max_kv_len(l);
    let rs_plan = Plan::new(&rs_shape, &Options::default()).unwrap();
    let mut want = vec![0f32; h * DS_MLA_LATENT];
    let kv = KvCache::latent(KvTensor::bgld(buf.data(), l, 1, DS_MLA_DIM));
    rs_plan
        .run(
            &Batch::new(&q, kv, &lens),
            &mut want,
            None,
            &mut rs_plan.alloc_workspace(),
        )
        .unwrap();
    let shape = gqa_shape {
        struct_size: size_of::<gqa_shape>(),
        batch: 1,
        heads: h,
        kv_heads: 1,
        head_dim_k: DS_MLA_DIM,
        head_dim_v: DS_MLA_LATENT,
        q_len: 1,
        max_kv_len: l,
        k_dtype: dt.abi_code(),
        v_dtype: dt.abi_code(),
    };
    let mut plan: *mut gqa_plan = std::ptr::null_mut();
    // SAFETY: a valid shape and out-pointer (NULL options: defaults).
    assert_eq!(
        unsafe { gqa_plan_create(&shape, std::ptr::null(), &mut plan) },
        GQA_OK
    );
    let KvData::Blocks(b) = buf.data() else {
        panic!("blocks")
    };
    let bytes = b.bytes().as_ptr().cast_mut();
    let kv = |len: usize| gqa_kv {
        dtype: dt.abi_code(),
        data: bytes.cast(),
        len,
        scales: std::ptr::null_mut(),
        scales_len: 0,
        outer_stride: l * DS_MLA_DIM,
        token_stride: DS_MLA_DIM,
        head_stride: l * DS_MLA_DIM,
    };
    let none = gqa_kv {
        len: 0,
        data: std::ptr::null_mut(),
        ..kv(0)
    };
    let mut ws = capi_workspace(plan);
    let mut run = |len: usize| {
        let cache = gqa_cache {
            latent: 1,
            ..capi_strided_cache(kv(len), none, l)
        };
        let batch = capi_batch(&q, &cache, &lens);
        capi_run(plan, &batch, h * DS_MLA_LATENT, &mut ws)
    };
    let (st, out) = run(l * DS_MLA_DIM);
    assert_eq!(st, GQA_OK);
    assert!(out
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // A length that is not whole rows: refused, naming the field.
    assert_eq!(run(l * DS_MLA_DIM - 64).0, GQA_ERR_INVALID_ARGUMENT);
    // SAFETY: the message is a NUL-terminated string of this thread.
    let msg = unsafe { std::ffi::CStr::from_ptr(gqa_last_error()) };
    assert!(msg.to_string_lossy().contains("k.len"), "{msg:?}");
    // SAFETY: a live plan, freed once.
    unsafe { gqa_plan_destroy(plan) };
    let _ = buf.data_mut();
}
