//! `append` (and `append_latent`, one pool of rows): new K/V rows land
//! exactly where each layout's definition puts their positions, converted
//! exactly as `half` converts, and nowhere else; bad input is rejected
//! before anything is written (`tests/append_errors.rs`).

use gqa_kernels::quant::{self, BlockQ8_0, Fp8, Quants, QK8_0};
use gqa_kernels::{
    append, append_latent, bf16, f16, reference, Batch, Blocks, BlocksMut, Dtype, KvCache,
    KvCacheMut, KvData, KvDataMut, KvPagesMut, KvTensor, KvTensorMut, LatentCacheMut, NewKv,
    Options, Plan, Shape,
};
use proptest::prelude::*;

/// A small xorshift generator: the cases are drawn from proptest's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn value(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 22) as f32 - 2.0
    }
}

/// An owned buffer of one dtype, filled with NaN (the "never written" mark;
/// quantized buffers: [`SENTINEL`] values and NaN scales).
#[derive(Clone, Debug, PartialEq)]
enum Buf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    /// Values, one scale per row of `d`.
    Int8(Vec<i8>, Vec<f32>, usize),
    Q8(Vec<BlockQ8_0>),
    /// The bytes of blocks of another block format.
    Blocks(Dtype, Vec<u8>),
    /// Values, one scale per KV head.
    Fp8(Fp8, Vec<u8>, Vec<f32>),
    /// fp8 E4M3 values, one scale per row of `d`.
    Fp8Row(Vec<u8>, Vec<f32>, usize),
}

/// The byte a quantized buffer holds where nothing was written.
const SENTINEL: u8 = 0x55;

/// fp8 scales per KV head: the last head's is small enough that values
/// near 2 saturate E4M3 (2 / 0.002 = 1000 > 448).
const FP8_SCALES: [f32; 3] = [0.01, 0.03, 0.002];

impl Buf {
    fn nan(dtype: Dtype, n: usize) -> Buf {
        Buf::sentinel(dtype, n, 1, 1)
    }
    /// `n` never-written values of `dtype` (rows of `d`, `g` KV heads).
    fn sentinel(dtype: Dtype, n: usize, d: usize, g: usize) -> Buf {
        match dtype {
            Dtype::F32 => Buf::F32(vec![f32::NAN; n]),
            Dtype::F16 => Buf::F16(vec![f16::NAN; n]),
            Dtype::Bf16 => Buf::Bf16(vec![bf16::NAN; n]),
            Dtype::Int8 => Buf::Int8(vec![SENTINEL as i8; n], vec![f32::NAN; n / d], d),
            Dtype::Q8_0 => Buf::Q8(vec![
                BlockQ8_0 {
                    d: f16::NAN,
                    qs: [SENTINEL as i8; QK8_0]
                };
                n / QK8_0
            ]),
            Dtype::Fp8E4M3 => Buf::Fp8(Fp8::E4M3, vec![SENTINEL; n], FP8_SCALES[..g].to_vec()),
            Dtype::Fp8E5M2 => Buf::Fp8(Fp8::E5M2, vec![SENTINEL; n], FP8_SCALES[..g].to_vec()),
            Dtype::Fp8E4M3Row => Buf::Fp8Row(vec![SENTINEL; n], vec![f32::NAN; n / d], d),
            t => Buf::Blocks(t, sentinel_block(t).repeat(n / t.block_len())),
        }
    }
    fn from_f32(dtype: Dtype, x: &[f32]) -> Buf {
        match dtype {
            Dtype::F32 => Buf::F32(x.to_vec()),
            Dtype::F16 => Buf::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
            Dtype::Bf16 => Buf::Bf16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
            _ => unreachable!("plain types only"),
        }
    }
    fn data(&self) -> KvData<'_> {
        match self {
            Buf::F32(v) => KvData::F32(v),
            Buf::F16(v) => KvData::F16(v),
            Buf::Bf16(v) => KvData::Bf16(v),
            Buf::Int8(v, s, _) => KvData::int8(v, s),
            Buf::Q8(b) => KvData::Q8_0(b),
            Buf::Blocks(t, b) => KvData::Blocks(Blocks::new(*t, b).unwrap()),
            Buf::Fp8(f, v, s) => KvData::fp8(*f, v, s),
            Buf::Fp8Row(v, s, _) => KvData::fp8_row(v, s),
        }
    }
    fn data_mut(&mut self) -> KvDataMut<'_> {
        match self {
            Buf::F32(v) => KvDataMut::F32(v),
            Buf::F16(v) => KvDataMut::F16(v),
            Buf::Bf16(v) => KvDataMut::Bf16(v),
            Buf::Int8(v, s, _) => KvDataMut::int8(v, s),
            Buf::Q8(b) => KvDataMut::Q8_0(b),
            Buf::Blocks(t, b) => KvDataMut::Blocks(BlocksMut::new(*t, b).unwrap()),
            Buf::Fp8(f, v, s) => KvDataMut::fp8(*f, v, s),
            Buf::Fp8Row(v, s, _) => KvDataMut::fp8_row(v, s),
        }
    }
    fn get(&self, i: usize) -> f32 {
        match self {
            Buf::F32(v) => v[i],
            Buf::F16(v) => v[i].to_f32(),
            Buf::Bf16(v) => v[i].to_f32(),
            _ => unreachable!("plain types only"),
        }
    }
    /// Checks that the row of `d` values at `at` (KV head `h`) holds `row`
    /// as the crate's encoders quantize it, bit for bit, and marks it
    /// written.
    fn check_quantized(&self, at: usize, h: usize, row: &[f32], written: &mut [bool], what: &str) {
        let d = row.len();
        match self {
            Buf::Int8(v, s, _) => {
                let mut q = vec![0i8; d];
                let scale = quant::quantize_int8_row(row, &mut q).unwrap();
                assert_eq!(&v[at..at + d], &q[..], "{what}: int8 values");
                assert_eq!(s[at / d].to_bits(), scale.to_bits(), "{what}: int8 scale");
            }
            Buf::Q8(b) => {
                let mut q = vec![BlockQ8_0::default(); d / QK8_0];
                quant::quantize_q8_0(row, &mut q).unwrap();
                assert_eq!(
                    &b[at / QK8_0..(at + d) / QK8_0],
                    &q[..],
                    "{what}: q8_0 blocks"
                );
            }
            Buf::Fp8(f, v, s) => {
                let mut q = vec![0u8; d];
                quant::quantize_fp8(row, s[h], *f, &mut q).unwrap();
                assert_eq!(&v[at..at + d], &q[..], "{what}: fp8 bytes");
            }
            Buf::Fp8Row(v, s, _) => {
                let mut q = vec![0u8; d];
                let scale = quant::quantize_fp8_row(row, &mut q).unwrap();
                assert_eq!(&v[at..at + d], &q[..], "{what}: fp8 row bytes");
                assert_eq!(
                    s[at / d].to_bits(),
                    scale.to_bits(),
                    "{what}: fp8 row scale"
                );
            }
            Buf::Blocks(t, b) => {
                let (len, n) = (t.block_len(), t.block().unwrap().bytes);
                let mut q = vec![0u8; d / len * n];
                quant::quantize_block_bytes(*t, row, &mut q).unwrap();
                let got = &b[at / len * n..(at + d) / len * n];
                assert_eq!(got, &q[..], "{what}: {t} blocks");
            }
            _ => unreachable!("quantized types only"),
        }
        written[at..at + d].fill(true);
    }
    /// Checks that every value not marked written still holds the
    /// sentinel (and its row or block scale is still NaN).
    fn check_untouched(&self, written: &[bool], what: &str) {
        for (i, _) in written.iter().enumerate().filter(|(_, w)| !**w) {
            let ok = match self {
                Buf::Int8(v, s, d) => {
                    v[i] == SENTINEL as i8 && (written[i / d * d] || s[i / d].is_nan())
                }
                Buf::Q8(b) => {
                    let blk = &b[i / QK8_0];
                    blk.qs[i % QK8_0] == SENTINEL as i8
                        && (written[i / QK8_0 * QK8_0] || blk.d.is_nan())
                }
                Buf::Fp8(_, v, _) => v[i] == SENTINEL,
                Buf::Fp8Row(v, s, d) => {
                    v[i] == SENTINEL && (written[i / d * d] || s[i / d].is_nan())
                }
                Buf::Blocks(t, b) => {
                    let n = t.block().unwrap().bytes;
                    b[i / t.block_len() * n..][..n] == sentinel_block(*t)[..]
                }
                _ => unreachable!("quantized types only"),
            };
            assert!(ok, "{what}: stray write at {i}");
        }
    }
    fn len(&self) -> usize {
        self.data().len()
    }
}

/// A never-written block of block format `t`: sentinel bytes, NaN scale.
fn sentinel_block(t: Dtype) -> Vec<u8> {
    let info = t.block().unwrap();
    let mut b = vec![SENTINEL; info.bytes];
    match info.layout.quants {
        // fp8_ds_mla: NaN tile scales.
        Quants::E4M3Tiles {
            codes,
            scales,
            tile,
            ..
        } => {
            for t in 0..codes / tile {
                b[scales + 4 * t..][..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }
        }
        _ => b[info.layout.d..][..2].copy_from_slice(&f16::NAN.to_le_bytes()),
    }
    b
}

/// What `append` must store for source value `x` (already of the source
/// type, given as f32): IEEE round-to-nearest-even into the target type.
fn convert(x: f32, to: Dtype) -> f32 {
    match to {
        Dtype::F32 => x,
        Dtype::F16 => f16::from_f32(x).to_f32(),
        Dtype::Bf16 => bf16::from_f32(x).to_f32(),
        _ => unreachable!("plain types only"),
    }
}

const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

#[derive(Clone, Copy, Debug)]
enum Layout {
    Bgld,
    Blgd,
    /// Paged, `[page, G, D]` pages when `token_major`, else `[G, page, D]`.
    Paged {
        page: usize,
        token_major: bool,
    },
    Ring {
        capacity: usize,
    },
}

/// The layouts' definitions, written out here independently of the
/// library: element 0 of the row of (sequence, position, head).
#[allow(clippy::too_many_arguments)]
fn index(
    layout: Layout,
    table: &[u32],
    bps: usize,
    cap: usize,
    g_count: usize,
    d: usize,
    b: usize,
    j: usize,
    g: usize,
) -> usize {
    match layout {
        Layout::Bgld => ((b * g_count + g) * cap + j) * d,
        Layout::Blgd => ((b * cap + j) * g_count + g) * d,
        Layout::Paged { page, token_major } => {
            let p = table[b * bps + j / page] as usize;
            let s = j % page;
            if token_major {
                ((p * page + s) * g_count + g) * d
            } else {
                ((p * g_count + g) * page + s) * d
            }
        }
        Layout::Ring { capacity } => ((b * g_count + g) * capacity + j % capacity) * d,
    }
}

#[allow(clippy::too_many_arguments)]
fn target<'a>(
    layout: Layout,
    k: &'a mut Buf,
    v: &'a mut Buf,
    table: &'a [u32],
    bps: usize,
    cap: usize,
    g: usize,
    dk: usize,
    dv: usize,
) -> KvCacheMut<'a> {
    match layout {
        Layout::Bgld => KvCacheMut::Strided {
            k: KvTensorMut::bgld(k.data_mut(), cap, g, dk),
            v: KvTensorMut::bgld(v.data_mut(), cap, g, dv),
            capacity: cap,
        },
        Layout::Blgd => KvCacheMut::Strided {
            k: KvTensorMut::blgd(k.data_mut(), cap, g, dk),
            v: KvTensorMut::blgd(v.data_mut(), cap, g, dv),
            capacity: cap,
        },
        Layout::Paged { page, token_major } => {
            let pool = |data, d| {
                if token_major {
                    KvPagesMut::pgd(data, page, g, d)
                } else {
                    KvPagesMut::gpd(data, page, g, d)
                }
            };
            KvCacheMut::Paged {
                k: pool(k.data_mut(), dk),
                v: pool(v.data_mut(), dv),
                page_size: page,
                block_table: table,
                blocks_per_seq: bps,
            }
        }
        Layout::Ring { capacity } => KvCacheMut::Ring {
            k: KvTensorMut::bgld(k.data_mut(), capacity, g, dk),
            v: KvTensorMut::bgld(v.data_mut(), capacity, g, dv),
            capacity,
        },
    }
}

/// The latent cache of `layout` over `kv` (rows of `d`), as [`target`]
/// builds K's pool.
fn target_latent<'a>(
    layout: Layout,
    kv: &'a mut Buf,
    table: &'a [u32],
    bps: usize,
    cap: usize,
    g: usize,
    d: usize,
) -> LatentCacheMut<'a> {
    match layout {
        Layout::Bgld => LatentCacheMut::Strided {
            kv: KvTensorMut::bgld(kv.data_mut(), cap, g, d),
            capacity: cap,
        },
        Layout::Blgd => LatentCacheMut::Strided {
            kv: KvTensorMut::blgd(kv.data_mut(), cap, g, d),
            capacity: cap,
        },
        Layout::Paged { page, token_major } => LatentCacheMut::Paged {
            kv: if token_major {
                KvPagesMut::pgd(kv.data_mut(), page, g, d)
            } else {
                KvPagesMut::gpd(kv.data_mut(), page, g, d)
            },
            page_size: page,
            block_table: table,
            blocks_per_seq: bps,
        },
        Layout::Ring { capacity } => LatentCacheMut::Ring {
            kv: KvTensorMut::bgld(kv.data_mut(), capacity, g, d),
            capacity,
        },
    }
}

/// Appends random ragged chunks until every sequence reaches its length,
/// then checks every resident row bit for bit and that nothing else was
/// written. `latent`: into a latent cache ([`append_latent`]: K rows only,
/// the V pool stays unwritten and no V rows are given).
///
/// Long on purpose: the draws (shape, layout, capacities, chunks) and the
/// checks use the same seeded sequence and the same locals; split, each
/// part would take a dozen arguments and the order of draws would be
/// harder to see.
fn roundtrip(seed: u64, layout: Layout, src: Dtype, dst: Dtype, latent: bool) {
    let mut rng = Rng(seed | 1);
    let b = 1 + rng.below(3);
    let g = 1 + rng.below(3);
    // Block-format rows are whole blocks (an fp8_ds_mla row: 576 values).
    let mut dim = || match dst.block() {
        Some(b) if dst.is_row_format() => b.len,
        Some(_) => QK8_0 * (1 + rng.below(2)),
        None => 1 + rng.below(9),
    };
    let (dk, dv) = (dim(), dim());
    let cap = 12;
    let lens: Vec<usize> = (0..b)
        .map(|_| match layout {
            Layout::Ring { .. } => rng.below(30),
            _ => rng.below(cap + 1),
        })
        .collect();
    // Block tables: a shuffled pool with a spare page nobody owns.
    let (bps, pages) = match layout {
        Layout::Paged { page, .. } => (cap.div_ceil(page), b * cap.div_ceil(page) + 1),
        _ => (0, 0),
    };
    let mut table: Vec<u32> = (0..pages as u32).collect();
    for i in (1..table.len()).rev() {
        let j = rng.below(i + 1);
        table.swap(i, j);
    }
    let (k_len, v_len) = match layout {
        Layout::Paged { page, .. } => (pages * page * g * dk, pages * page * g * dv),
        Layout::Ring { capacity } => (b * capacity * g * dk, b * capacity * g * dv),
        _ => (b * cap * g * dk, b * cap * g * dv),
    };
    let mut kc = Buf::sentinel(dst, k_len, dk, g);
    let mut vc = Buf::sentinel(dst, v_len, dv, g);
    // Source values per (b, position, g, d), as the source type holds them.
    let mut truth_k = vec![vec![0f32; 30 * g * dk]; b];
    let mut truth_v = vec![vec![0f32; 30 * g * dv]; b];
    let mut done = vec![0usize; b];
    while done != lens {
        let counts: Vec<usize> = (0..b)
            .map(|s| rng.below(4).min(lens[s] - done[s]))
            .collect();
        let mut offsets = vec![0usize];
        for c in &counts {
            offsets.push(offsets.last().unwrap() + c);
        }
        let t = *offsets.last().unwrap();
        let mut nk = vec![0f32; t * g * dk];
        let mut nv = vec![0f32; t * g * dv];
        for x in nk.iter_mut().chain(nv.iter_mut()) {
            *x = convert(rng.value(), src);
        }
        for s in 0..b {
            for i in 0..counts[s] {
                let tok = offsets[s] + i;
                let pos = done[s] + i;
                truth_k[s][pos * g * dk..(pos + 1) * g * dk]
                    .copy_from_slice(&nk[tok * g * dk..(tok + 1) * g * dk]);
                truth_v[s][pos * g * dv..(pos + 1) * g * dv]
                    .copy_from_slice(&nv[tok * g * dv..(tok + 1) * g * dv]);
            }
        }
        let (sk, sv) = (Buf::from_f32(src, &nk), Buf::from_f32(src, &nv));
        let new = NewKv {
            k: sk.data(),
            v: sv.data(),
            offsets: &offsets,
            kv_heads: g,
            head_dim_k: dk,
            head_dim_v: dv,
        };
        if latent {
            let none = Buf::from_f32(src, &[]);
            let new = NewKv {
                v: none.data(),
                ..new
            };
            let mut cache = target_latent(layout, &mut kc, &table, bps, cap, g, dk);
            append_latent(&mut cache, &new, &done).unwrap();
        } else {
            let mut cache = target(layout, &mut kc, &mut vc, &table, bps, cap, g, dk, dv);
            append(&mut cache, &new, &done).unwrap();
        }
        for s in 0..b {
            done[s] += counts[s];
        }
    }
    if dst.is_quantized() {
        // Every resident row holds its source quantized by the crate's
        // encoders; nothing else was written.
        let mut wk = vec![false; k_len];
        let mut wv = vec![false; v_len];
        for s in 0..b {
            let first = match layout {
                Layout::Ring { capacity } => lens[s].saturating_sub(capacity),
                _ => 0,
            };
            for j in first..lens[s] {
                for h in 0..g {
                    let pools = [
                        (&kc, &truth_k[s], dk, &mut wk),
                        (&vc, &truth_v[s], dv, &mut wv),
                    ];
                    for (buf, truth, d, w) in pools.into_iter().take(2 - latent as usize) {
                        let at = index(layout, &table, bps, cap, g, d, s, j, h);
                        let row = &truth[(j * g + h) * d..][..d];
                        let what = format!("{layout:?} {src}->{dst} seq {s} pos {j} head {h}");
                        buf.check_quantized(at, h, row, w, &what);
                    }
                }
            }
        }
        kc.check_untouched(&wk, &format!("{layout:?} {src}->{dst} K"));
        vc.check_untouched(&wv, &format!("{layout:?} {src}->{dst} V"));
        return;
    }
    // Every resident row holds the converted source; count the rest.
    let mut written_k = 0;
    let mut written_v = 0;
    for s in 0..b {
        let first = match layout {
            Layout::Ring { capacity } => lens[s].saturating_sub(capacity),
            _ => 0,
        };
        for j in first..lens[s] {
            for h in 0..g {
                let pools = [
                    (&kc, &truth_k[s], dk, &mut written_k),
                    (&vc, &truth_v[s], dv, &mut written_v),
                ];
                for (buf, truth, d, count) in pools.into_iter().take(2 - latent as usize) {
                    let at = index(layout, &table, bps, cap, g, d, s, j, h);
                    for e in 0..d {
                        let want = convert(truth[(j * g + h) * d + e], dst);
                        let got = buf.get(at + e);
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{layout:?} {src}->{dst} seq {s} pos {j} head {h} elem {e}"
                        );
                    }
                    *count += d;
                }
            }
        }
    }
    let non_nan = |buf: &Buf| (0..buf.len()).filter(|&i| !buf.get(i).is_nan()).count();
    assert_eq!(non_nan(&kc), written_k, "{layout:?}: stray K writes");
    assert_eq!(non_nan(&vc), written_v, "{layout:?}: stray V writes");
}

const LAYOUTS: [Layout; 7] = [
    Layout::Bgld,
    Layout::Blgd,
    Layout::Paged {
        page: 1,
        token_major: true,
    },
    Layout::Paged {
        page: 3,
        token_major: false,
    },
    Layout::Paged {
        page: 5,
        token_major: true,
    },
    Layout::Ring { capacity: 7 },
    Layout::Ring { capacity: 12 },
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    // Two tests over the layouts, so that the harness runs them side by
    // side (under qemu-user each takes about half a minute).
    #[test]
    fn appended_rows_land_where_the_layout_says(seed in any::<u64>()) {
        roundtrips(seed, &LAYOUTS[..3]);
    }

    #[test]
    fn appended_rows_land_where_the_paged_and_ring_layouts_say(seed in any::<u64>()) {
        roundtrips(seed, &LAYOUTS[3..]);
    }
}

fn roundtrips(seed: u64, layouts: &[Layout]) {
    for &layout in layouts {
        for src in DTYPES {
            for dst in Dtype::ALL {
                roundtrip(seed, layout, src, dst, false);
                // Latent caches share the conversion: one source type per
                // seed keeps the test's time.
                if src == DTYPES[(seed % 3) as usize] {
                    roundtrip(seed, layout, src, dst, true);
                }
            }
        }
    }
}

/// The runtime's loop: append each step's token into a paged f16 cache and
/// decode; the output matches the reference over a dense cache of the same
/// values.
#[test]
fn append_then_decode_matches_a_dense_cache() {
    let (b, h, g, d, page, steps) = (2usize, 8, 2, 64, 16usize, 40usize);
    let bps = steps.div_ceil(page);
    let pages = b * bps;
    let mut table: Vec<u32> = (0..pages as u32).rev().collect();
    table.swap(0, 3);
    let mut kc = Buf::nan(Dtype::F16, pages * page * g * d);
    let mut vc = Buf::nan(Dtype::F16, pages * page * g * d);
    let mut dense_k = vec![0f32; b * g * steps * d];
    let mut dense_v = vec![0f32; b * g * steps * d];
    let mut rng = Rng(7);
    let shape = Shape::new(b, h, g, d, Dtype::F16);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let mut ws = plan.alloc_workspace();
    for step in 0..steps {
        let nk: Vec<f32> = (0..b * g * d).map(|_| rng.value()).collect();
        let nv: Vec<f32> = (0..b * g * d).map(|_| rng.value()).collect();
        for s in 0..b {
            for kh in 0..g {
                let at = ((s * g + kh) * steps + step) * d;
                let from = (s * g + kh) * d;
                dense_k[at..at + d].copy_from_slice(&nk[from..from + d]);
                dense_v[at..at + d].copy_from_slice(&nv[from..from + d]);
            }
        }
        let offsets: Vec<usize> = (0..=b).collect();
        let positions = vec![step; b];
        let mut cache = KvCacheMut::Paged {
            k: KvPagesMut::gpd(kc.data_mut(), page, g, d),
            v: KvPagesMut::gpd(vc.data_mut(), page, g, d),
            page_size: page,
            block_table: &table,
            blocks_per_seq: bps,
        };
        let new = NewKv {
            k: KvData::F32(&nk),
            v: KvData::F32(&nv),
            offsets: &offsets,
            kv_heads: g,
            head_dim_k: d,
            head_dim_v: d,
        };
        append(&mut cache, &new, &positions).unwrap();
        let lens = vec![step + 1; b];
        let q: Vec<f32> = (0..b * h * d).map(|_| rng.value()).collect();
        let mut out = vec![0f32; b * h * d];
        let batch = Batch::new(&q, cache.as_cache(&[]), &lens);
        plan.run(&batch, &mut out, None, &mut ws).unwrap();
        // The dense cache holds the same values rounded to f16.
        let dk16: Vec<f16> = dense_k.iter().map(|&x| f16::from_f32(x)).collect();
        let dv16: Vec<f16> = dense_v.iter().map(|&x| f16::from_f32(x)).collect();
        let want = reference::decode(
            &shape,
            None,
            &q,
            &KvTensor::bgld(&dk16[..], steps, g, d),
            &KvTensor::bgld(&dv16[..], steps, g, d),
            &lens,
        )
        .unwrap();
        let (tol, _) = reference::tolerance(Dtype::F16, Dtype::F16);
        for (i, (&got, &w)) in out.iter().zip(&want.out).enumerate() {
            assert!(
                tol.accepts(f64::from(got), w, 2.0),
                "step {step} elem {i}: {got} vs {w}"
            );
        }
    }
}

/// The runtime's loop for multi-head latent attention: append each step's
/// latent row into a paged bf16 latent cache (one row per token, written
/// once) and decode; the output matches the reference over a dense latent
/// cache of the same values.
#[test]
fn append_latent_then_decode_matches_a_dense_cache() {
    let (b, h, dk, dv, page, steps) = (2usize, 16, 576, 512, 16usize, 37usize);
    let bps = steps.div_ceil(page);
    let pages = b * bps + 1;
    let mut table: Vec<u32> = (0..pages as u32).rev().collect();
    table.swap(0, 3);
    let mut kv = Buf::nan(Dtype::Bf16, pages * page * dk);
    let mut dense = vec![bf16::ZERO; b * steps * dk];
    let mut rng = Rng(11);
    let shape = Shape::new(b, h, 1, dk, Dtype::Bf16)
        .with_head_dims(dk, dv)
        .with_max_kv_len(steps);
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let mut ws = plan.alloc_workspace();
    for step in 0..steps {
        let new: Vec<f32> = (0..b * dk).map(|_| rng.value()).collect();
        for s in 0..b {
            for (e, &x) in new[s * dk..(s + 1) * dk].iter().enumerate() {
                dense[(s * steps + step) * dk + e] = bf16::from_f32(x);
            }
        }
        let offsets: Vec<usize> = (0..=b).collect();
        let mut cache = LatentCacheMut::Paged {
            kv: KvPagesMut::gpd(kv.data_mut(), page, 1, dk),
            page_size: page,
            block_table: &table,
            blocks_per_seq: bps,
        };
        let rows = NewKv {
            k: KvData::F32(&new),
            v: KvData::F32(&[]),
            offsets: &offsets,
            kv_heads: 1,
            head_dim_k: dk,
            head_dim_v: dv,
        };
        append_latent(&mut cache, &rows, &vec![step; b]).unwrap();
        let lens = vec![step + 1; b];
        let q: Vec<f32> = (0..b * h * dk).map(|_| rng.value()).collect();
        let mut out = vec![0f32; b * h * dv];
        let batch = Batch::new(&q, cache.as_cache(&[]), &lens);
        assert!(batch.cache.is_latent());
        plan.run(&batch, &mut out, None, &mut ws).unwrap();
        let dense_cache = KvCache::latent(KvTensor::bgld(&dense[..], steps, 1, dk));
        let want =
            reference::decode_batch(&shape, None, &Batch::new(&q, dense_cache, &lens)).unwrap();
        let (tol, _) = reference::tolerance(Dtype::Bf16, Dtype::Bf16);
        for (i, (&got, &w)) in out.iter().zip(&want.out).enumerate() {
            assert!(
                tol.accepts(f64::from(got), w, 2.0),
                "step {step} elem {i}: {got} vs {w}"
            );
        }
    }
    // Nothing but the sequences' rows was written: the spare page (and
    // the tail of each sequence's last page) still holds NaN.
    let written = (0..kv.len()).filter(|&i| !kv.get(i).is_nan()).count();
    assert_eq!(written, b * steps * dk);
}
