//! Runs the C consumer (`tests/capi/consumer.c`, built by `build.rs` with
//! the platform's C compiler against `include/gqa_kernels.h`) and checks
//! what it computed through the C ABI against the crate's f64 reference on
//! the same inputs (the test replays the consumer's generator and builds
//! the same quantized cache with the Rust API).

use std::ffi::CStr;

use gqa_kernels::quant::Fp8;
use gqa_kernels::{
    append, reference, Batch, Dtype, KvCache, KvCacheMut, KvData, KvDataMut, KvPages, KvPagesMut,
    NewKv, PagedKv, Shape,
};
use gqa_kernels_capi_test::{gqa_capi_consumer, gqa_capi_header_cpp};

const B: usize = 2;
const H: usize = 8;
const G: usize = 2;
const D: usize = 64;
const PAGE: usize = 16;
const PAGES: usize = 8;
const LENS: [usize; B] = [37, 9];
const TABLE: [u32; B * 3] = [5, 2, 7, 0, 3, 3];
const V_SCALES: [f32; G] = [0.004, 0.006];
const SEED: u64 = 0x0005_EED0_F6A5;

/// The consumer's generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / 8_388_608.0 - 1.0
    }
}

#[test]
fn the_c_consumer_agrees_with_the_reference() {
    let mut out = vec![f32::NAN; B * H * D];
    let mut lse = vec![f32::NAN; B * H];
    let mut log = vec![0 as std::ffi::c_char; 4096];
    // SAFETY: the buffers hold the lengths passed.
    let line = unsafe {
        gqa_capi_consumer(
            SEED,
            out.as_mut_ptr(),
            out.len(),
            lse.as_mut_ptr(),
            lse.len(),
            log.as_mut_ptr(),
            log.len(),
        )
    };
    // SAFETY: the consumer NUL-terminates `log` within its capacity.
    let text = unsafe { CStr::from_ptr(log.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    eprintln!("{text}");
    assert_eq!(
        line, 0,
        "the C consumer failed at consumer.c:{line}: {text}"
    );
    assert!(text.contains("latent cache: ok"), "{text}");

    // Replay: the strided part drew 2·G·L·D cache values and H·D queries.
    let mut rng = Rng(SEED);
    for _ in 0..(2 * G * 33 * D + H * D) {
        rng.next();
    }
    // The paged part, through the Rust API.
    let n = PAGES * G * PAGE * D;
    let (mut kq, mut ks, mut vq) = (vec![0i8; n], vec![0f32; n / D], vec![0u8; n]);
    for pos in 0..LENS[0] {
        let t = LENS.iter().filter(|&&l| pos < l).count();
        let mut offsets = vec![0usize];
        for l in LENS {
            offsets.push(offsets.last().unwrap() + usize::from(pos < l));
        }
        let (mut rk, mut rv) = (vec![0f32; t * G * D], vec![0f32; t * G * D]);
        for (a, b) in rk.iter_mut().zip(rv.iter_mut()) {
            *a = rng.next();
            *b = rng.next();
        }
        let mut cache = KvCacheMut::Paged {
            k: KvPagesMut::gpd(KvDataMut::int8(&mut kq, &mut ks), PAGE, G, D),
            v: KvPagesMut::gpd(KvDataMut::fp8(Fp8::E5M2, &mut vq, &V_SCALES), PAGE, G, D),
            page_size: PAGE,
            block_table: &TABLE,
            blocks_per_seq: 3,
        };
        let new = NewKv {
            k: KvData::F32(&rk),
            v: KvData::F32(&rv),
            offsets: &offsets,
            kv_heads: G,
            head_dim_k: D,
            head_dim_v: D,
        };
        append(&mut cache, &new, &[pos; B]).unwrap();
    }
    let q: Vec<f32> = (0..B * H * D).map(|_| rng.next()).collect();
    let shape = Shape::new(B, H, G, D, Dtype::Int8).with_dtypes(Dtype::Int8, Dtype::Fp8E5M2);
    let cache = KvCache::Paged(PagedKv {
        k: KvPages::gpd(KvData::int8(&kq, &ks), PAGE, G, D),
        v: KvPages::gpd(KvData::fp8(Fp8::E5M2, &vq, &V_SCALES), PAGE, G, D),
        page_size: PAGE,
        block_table: &TABLE,
        blocks_per_seq: 3,
    });
    let want = reference::decode_batch(&shape, None, &Batch::new(&q, cache, &LENS)).unwrap();
    let (to, tl) = reference::tolerance(Dtype::Int8, Dtype::Fp8E5M2);
    let vmax = (0..n)
        .map(|i| f64::from(Fp8::E5M2.decode(vq[i])).abs() * 0.006)
        .fold(0.0f64, f64::max);
    for (i, (g, w)) in out.iter().zip(&want.out).enumerate() {
        assert!(
            to.accepts(f64::from(*g), *w, vmax),
            "out[{i}] = {g}, reference {w}"
        );
    }
    for (i, (g, w)) in lse.iter().zip(&want.lse).enumerate() {
        assert!(
            tl.accepts(f64::from(*g), *w, 1.0),
            "lse[{i}] = {g}, reference {w}"
        );
    }
    eprintln!(
        "C consumer: out[0..4] = {:?}, reference {:?}",
        &out[..4],
        &want.out[..4]
    );
}

#[test]
fn the_header_compiles_as_cpp_with_the_same_struct_sizes() {
    // SAFETY: a plain function of the C++ object.
    let cpp = unsafe { gqa_capi_header_cpp() };
    let rust: usize = (0..6).map(|i| gqa_kernels::capi::gqa_sizeof(i)).sum();
    assert_eq!(cpp, rust);
}
