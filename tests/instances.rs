//! Every instance listed in `kernels/` is in the generated table, is the one
//! a plan of its shape selects, and matches the reference. (Not in
//! `generic-only` builds, which have no specialised instances.)
#![cfg(not(feature = "generic-only"))]

mod common;

use common::{tiers, Spec};
use gqa_kernels::{kernel_instances, Dtype, Options, Plan, Shape, Tier, Unit};

#[test]
fn every_listed_instance_is_selected_and_correct() {
    let mut checked = 0;
    for tier in tiers() {
        let instances = kernel_instances(tier);
        // A generic kernel for every dtype pair.
        for k in Dtype::ALL {
            for v in Dtype::ALL.into_iter().filter(|&v| k.pairs_with(v)) {
                assert!(
                    instances
                        .iter()
                        .any(|i| i.specialised.is_none() && i.k_dtype == k && i.v_dtype == v),
                    "{tier}: no generic kernel for k={k} v={v}"
                );
            }
        }
        for inst in instances {
            let Some((dk, dv, rows)) = inst.specialised else {
                continue;
            };
            // rows = r * q_len with q_len = 1: one KV head of `rows` query heads.
            let shape = Shape::new(1, rows, 1, dk, inst.k_dtype)
                .with_head_dims(dk, dv)
                .with_dtypes(inst.k_dtype, inst.v_dtype);
            // The listed instances are the f32-FMA kernels (left to itself,
            // a bf16 plan may pick the tile unit).
            let opts = Options::default().with_tier(tier).with_unit(Unit::F32Fma);
            let plan = Plan::new(&shape, &opts).unwrap();
            assert_eq!(
                plan.kernel_name(),
                inst.name,
                "plan for {shape:?} on {tier}"
            );
            let mut s = Spec::new(shape, vec![19 + rows % 13]);
            s.seed = checked;
            if let Err(e) = s.build().check(tier) {
                panic!("instance {}: {e}", inst.name);
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no specialised instance was checked");
}

#[test]
fn unlisted_shapes_use_the_generic_kernel_of_the_tier() {
    for tier in tiers() {
        let shape = Shape::new(1, 3 * 11, 3, 50, Dtype::Bf16).with_dtypes(Dtype::Bf16, Dtype::F16);
        let plan = Plan::new(&shape, &Options::default().with_tier(tier)).unwrap();
        assert_eq!(
            plan.kernel_name(),
            format!("decode_kbf16_vf16_generic__{tier}")
        );
    }
}

#[test]
fn avx512_and_neon_specialise_the_required_matrix() {
    for tier in [Tier::Avx512, Tier::Neon] {
        let instances = kernel_instances(tier);
        if instances.is_empty() {
            continue; // the other architecture
        }
        for dt in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            for d in [64, 80, 96, 128, 192, 256] {
                for r in [1, 2, 4, 5, 6, 7, 8, 16] {
                    let name = format!("decode_{dt}_d{d}_r{r}__{tier}");
                    assert!(instances.iter().any(|i| i.name == name), "missing {name}");
                }
            }
        }
        let gguf4 = [
            Dtype::Q4_0,
            Dtype::Q4_1,
            Dtype::Q5_0,
            Dtype::Q5_1,
            Dtype::Iq4Nl,
        ];
        // fp8_ds_mla runs MLA shapes (576-value rows, 16 to 128 heads a
        // row): compute-bound, on the generic kernel.
        for dt in Dtype::ALL
            .into_iter()
            .filter(|&d| d.is_quantized() && d != Dtype::Fp8DsMla)
        {
            // The 4- and 5-bit GGUF formats: the common head dim only.
            let (dims, rows) = if gguf4.contains(&dt) {
                (&[128][..], &[1, 4, 8][..])
            } else {
                (&[64, 128, 256][..], &[1, 2, 4, 8][..])
            };
            for d in dims {
                for r in rows {
                    let name = format!("decode_{dt}_d{d}_r{r}__{tier}");
                    assert!(instances.iter().any(|i| i.name == name), "missing {name}");
                }
            }
        }
    }
}
