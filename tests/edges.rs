//! The named edge matrix: every clause runs on every tier this CPU has.

mod common;

use common::{check_all, fit, tiers, Layout, Spec};
use gqa_kernels::{f16, reference, Dtype, KvDataMut, KvTensor, Options, Plan, Shape};

fn shape(b: usize, h: usize, g: usize, d: usize, dt: Dtype) -> Shape {
    Shape::new(b, h, g, fit(dt, d), dt)
}

#[test]
fn empty_and_single_position_caches() {
    for dt in Dtype::ALL {
        for lens in [vec![0], vec![1], vec![0, 1, 0], vec![1, 0, 2]] {
            let s = Spec::new(shape(lens.len(), 8, 2, 64, dt), lens);
            check_all(&s.build());
        }
    }
}

#[test]
fn empty_cache_gives_zeros_and_neg_inf_lse() {
    for t in tiers() {
        let c = Spec::new(shape(2, 4, 1, 16, Dtype::F16), vec![0, 3]).build();
        let (out, lse, name) = c.run(t, 1).unwrap();
        assert!(
            out[..4 * 16].iter().all(|x| *x == 0.0),
            "{name}: output of L=0 must be zeros"
        );
        assert!(
            lse[..4].iter().all(|x| *x == f32::NEG_INFINITY),
            "{name}: lse of L=0 must be -inf"
        );
        assert!(
            out.iter().chain(&lse[4..]).all(|x| !x.is_nan()),
            "{name}: NaN in output"
        );
    }
}

#[test]
fn lengths_around_every_vector_width_and_tile() {
    // Lanes are 1, 4, 8, 16; blocks 16; score tiles up to 4 positions.
    let lens = [
        1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65,
    ];
    for dt in Dtype::ALL {
        let s = Spec::new(shape(lens.len(), 4, 1, 24, dt), lens.to_vec());
        check_all(&s.build());
    }
}

#[test]
fn head_dims_not_multiples_of_any_width() {
    for dk in [1, 3, 17, 80, 96, 130] {
        for dv in [1, 3, 17, 80, 96, 130] {
            let dt = [Dtype::F32, Dtype::F16, Dtype::Bf16][(dk + dv) % 3];
            let sh = shape(2, 4, 2, dk, dt).with_head_dims(dk, dv);
            check_all(&Spec::new(sh, vec![37, 19]).build());
        }
    }
}

#[test]
fn large_head_dims() {
    for d in [256, 512, 513] {
        check_all(&Spec::new(shape(1, 4, 2, d, Dtype::F16), vec![21]).build());
    }
}

#[test]
fn group_sizes_mha_and_mqa() {
    for (h, g) in [
        (1, 1),
        (8, 8),
        (5, 1),
        (7, 1),
        (10, 2),
        (14, 2),
        (71, 1),
        (128, 1),
        (9, 3),
    ] {
        for dt in Dtype::ALL {
            let mut s = Spec::new(shape(2, h, g, 64, dt), vec![33, 18]);
            s.seed = (h * 31 + g) as u64;
            check_all(&s.build());
        }
    }
}

#[test]
fn mixed_k_and_v_dtypes() {
    for k in Dtype::ALL {
        // fp8_ds_mla pairs only with itself (a refused pair: `errors.rs`).
        for v in Dtype::ALL.into_iter().filter(|&v| k.pairs_with(v)) {
            let sh = shape(2, 6, 2, 40, k)
                .with_dtypes(k, v)
                .with_head_dims(fit(k, 40), fit(v, 24));
            check_all(&Spec::new(sh, vec![29, 50]).build());
        }
    }
}

#[test]
fn every_layout_and_misaligned_bases() {
    for layout in [Layout::Blgd, Layout::Bgld, Layout::Padded] {
        for offset in [0, 1, 3] {
            for dt in Dtype::ALL {
                let mut s = Spec::new(shape(3, 8, 2, 72, dt), vec![40, 0, 17]);
                s.layout = layout;
                s.offset = offset;
                check_all(&s.build());
            }
        }
    }
}

#[test]
fn logits_of_magnitude_1e4_do_not_overflow() {
    // |q|, |k| up to 100 and Dk = 1 with scale 1: scores up to ±1e4.
    for dt in [Dtype::F32, Dtype::Bf16] {
        let mut s = Spec::new(shape(1, 4, 1, 1, dt), vec![50]);
        s.qk_range = 100.0;
        s.scale = Some(1.0);
        let c = s.build();
        check_all(&c);
        for t in tiers() {
            let (out, lse, name) = c.run(t, 1).unwrap();
            assert!(
                out.iter().chain(&lse).all(|x| x.is_finite()),
                "{name}: non-finite"
            );
        }
    }
    // Dk = 64 with a large scale: scores around ±1e4 as well.
    let mut s = Spec::new(shape(2, 8, 2, 64, Dtype::F32), vec![45, 9]);
    s.scale = Some(300.0);
    check_all(&s.build());
}

#[test]
fn all_equal_logits_average_v_exactly() {
    // Identical K rows: every score equal (huge, too), weights uniform.
    let (l, d) = (37, 16);
    let k: Vec<f16> = (0..l * d)
        .map(|i| f16::from_f32(if i % d == 0 { 64.0 } else { 0.0 }))
        .collect();
    let v: Vec<f32> = (0..l * d).map(|i| (i / d) as f32).collect();
    let q = vec![150.0f32; 2 * d]; // score = 150*64 = 9600 for every position
    let sh = shape(1, 2, 1, d, Dtype::F16).with_dtypes(Dtype::F16, Dtype::F32);
    let kt = KvTensor::bgld(&k[..], l, 1, d);
    let vt = KvTensor::bgld(&v[..], l, 1, d);
    let want_mean = (l - 1) as f32 / 2.0;
    for t in tiers() {
        let plan = Plan::new(&sh, &Options::default().with_scale(1.0).with_tier(t)).unwrap();
        let mut out = vec![0f32; sh.out_elems()];
        let mut lse = vec![0f32; 2];
        plan.decode(&q, &kt, &vt, &[l], &mut out, Some(&mut lse))
            .unwrap();
        for x in &out {
            assert!(
                (x - want_mean).abs() <= 1e-4 * want_mean,
                "{}: {x} vs {want_mean}",
                plan.kernel_name()
            );
        }
        let want_lse = 9600.0 + (l as f32).ln();
        assert!(
            (lse[0] - want_lse).abs() <= 2e-5 * want_lse,
            "{}: lse {}",
            plan.kernel_name(),
            lse[0]
        );
    }
}

#[test]
fn f16_subnormals_are_widened_exactly() {
    let mut s = Spec::new(shape(1, 4, 1, 20, Dtype::F16), vec![25]);
    s.seed = 99;
    let mut c = s.build();
    if let KvDataMut::F16(k) = c.k.buf.data_mut() {
        for (i, x) in k.iter_mut().enumerate() {
            if i % 3 == 0 && x.is_finite() {
                *x = f16::from_bits(1 + (i % 1000) as u16); // subnormal
            }
        }
    }
    if let KvDataMut::F16(v) = c.v.buf.data_mut() {
        for (i, x) in v.iter_mut().enumerate() {
            if i % 2 == 0 && x.is_finite() {
                *x = f16::from_bits(0x8000 | (3 + (i % 500) as u16)); // negative subnormal
            }
        }
    }
    // Subnormal products are tiny; scale the scores up so they matter.
    c.scale = Some(1e6);
    check_all(&c);
}

#[test]
fn zero_strides_alias_rows_as_documented() {
    // token_stride = 0: every position reads row 0 (reads only; allowed).
    let d = 8;
    let k: Vec<f32> = (0..2 * d).map(|i| i as f32 * 0.1).collect();
    let v: Vec<f32> = (0..2 * d).map(|i| i as f32).collect();
    let sh = shape(1, 2, 2, d, Dtype::F32);
    let kt = KvTensor::new(&k[..], 0, 0, d);
    let vt = KvTensor::new(&v[..], 0, 0, d);
    let q = vec![0.5f32; sh.q_elems()];
    let want = reference::decode(&sh, None, &q, &kt, &vt, &[9]).unwrap();
    for t in tiers() {
        let plan = Plan::new(&sh, &Options::default().with_tier(t)).unwrap();
        let mut out = vec![0f32; sh.out_elems()];
        plan.decode(&q, &kt, &vt, &[9], &mut out, None).unwrap();
        for (g, w) in out.iter().zip(&want.out) {
            assert!(
                (f64::from(*g) - w).abs() < 1e-5,
                "{}: {g} vs {w}",
                plan.kernel_name()
            );
        }
        // Head h reads V row of its KV head: the output is that row exactly.
        assert_eq!(&out[..d], &v[..d], "{}", plan.kernel_name());
    }
}

#[test]
fn nan_outside_the_visible_range_never_leaks() {
    // Spec fills every slot no sequence may read with NaN by default; here
    // additionally sequences of very different lengths share one buffer.
    for dt in Dtype::ALL {
        let mut s = Spec::new(shape(4, 8, 2, 33, dt), vec![1, 64, 0, 17]);
        s.layout = Layout::Padded;
        let c = s.build();
        check_all(&c);
        for t in tiers() {
            let (out, lse, name) = c.run(t, 1).unwrap();
            assert!(
                out.iter().all(|x| x.is_finite()),
                "{name}: NaN leaked into out"
            );
            assert!(
                lse.iter().all(|x| !x.is_nan()),
                "{name}: NaN leaked into lse"
            );
        }
    }
}

#[test]
fn bitwise_identical_for_any_thread_count() {
    let mut s = Spec::new(shape(3, 16, 4, 64, Dtype::F16), vec![100, 3, 57]);
    s.seed = 7;
    let c = s.build();
    for t in tiers() {
        let (base, base_lse, name) = c.run(t, 1).unwrap();
        for threads in [2, 3, 8, 64] {
            let (o, l, _) = c.run(t, threads).unwrap();
            assert!(
                o.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits())
                    && l.iter()
                        .zip(&base_lse)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: {threads} threads differ from 1"
            );
        }
    }
}

#[test]
fn long_sequences_stay_within_tolerance() {
    for (dt, layout) in [(Dtype::F16, Layout::Bgld), (Dtype::Bf16, Layout::Blgd)] {
        let mut s = Spec::new(shape(1, 8, 2, 128, dt), vec![3000]);
        s.layout = layout;
        check_all(&s.build());
    }
}

#[test]
fn token_major_caches_walk_chunk_major_with_identical_results() {
    // Token-major layouts are walked chunk by chunk across heads; lengths
    // straddle several chunks and differ per sequence.
    for layout in [Layout::Blgd, Layout::Padded] {
        let mut s = Spec::new(shape(3, 12, 4, 48, Dtype::F16), vec![700, 255, 513]);
        s.layout = layout;
        let c = s.build();
        check_all(&c);
        for t in tiers() {
            let (base, _, name) = c.run(t, 1).unwrap();
            for threads in [2, 3, 5] {
                let (o, _, _) = c.run(t, threads).unwrap();
                assert!(
                    o.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{name}: {threads} threads differ from 1 ({layout:?})"
                );
            }
        }
    }
}

/// The tile kernels' own edges: rows that fill no whole tile (groups 5, 7,
/// 71; several query tokens), head dims that are not multiples of 32,
/// lengths around the 16-position block and the split, every layout, and
/// bitwise-equal results at any thread count. Skipped (with a note) where
/// no unit other than f32 FMA is usable. Two tests, so that the harness
/// runs them side by side (under qemu-user they are the suite's longest).
#[test]
fn tile_unit_edges_groups() {
    tile_unit_edges(&[(5, 64, 1), (7, 33, 2), (71, 64, 1), (16, 128, 1)]);
}

#[test]
fn tile_unit_edges_tokens_and_wide_rows() {
    tile_unit_edges(&[(8, 96, 3), (3, 576, 1)]);
}

/// The cases above for each `(group size, head dim, query tokens)` shape.
fn tile_unit_edges(shapes: &[(usize, usize, usize)]) {
    use common::{check_units_threads, units};
    if units().is_empty() {
        return;
    }
    for &(r, d, q_len) in shapes {
        for lens in [vec![0], vec![1], vec![15, 16, 17], vec![513, 300]] {
            for layout in [
                Layout::Bgld,
                Layout::Blgd,
                Layout::Paged {
                    page: 16,
                    head_major: false,
                },
            ] {
                let lens: Vec<usize> = lens
                    .iter()
                    .map(|&l| if l == 0 { 0 } else { l.max(q_len) })
                    .collect();
                for (k, v) in [
                    (Dtype::Bf16, Dtype::Bf16),
                    (Dtype::Int8, Dtype::F16),
                    (Dtype::Bf16, Dtype::Int8),
                ] {
                    let sh = Shape::new(lens.len(), 2 * r, 2, d, k)
                        .with_dtypes(k, v)
                        .with_q_len(q_len)
                        .with_max_kv_len(600);
                    let mut s = Spec::new(sh, lens.clone());
                    s.layout = layout;
                    let c = s.build();
                    check_units_threads(&c, &[2, 3]);
                }
            }
        }
    }
}
