//! Many threads share one plan (with and without its own worker pool) and
//! run steps on disjoint buffers at the same time: every result is bitwise
//! the one a lone thread gets, on every tier.

mod common;

use common::{tiers, Layout, Spec};
use gqa_kernels::{Dtype, Options, Plan, Shape};

#[test]
fn threads_sharing_one_plan_get_the_lone_result() {
    let shape = Shape::new(2, 12, 3, 64, Dtype::F16).with_max_kv_len(300);
    // Eight different batches of one shape (different values, lengths and
    // layouts), one per host thread.
    let cases: Vec<_> = (0..8)
        .map(|i| {
            let mut s = Spec::new(shape, vec![300 - 17 * i, 1 + 31 * i]);
            s.seed = 100 + i as u64;
            s.layout = [Layout::Bgld, Layout::Blgd][i % 2];
            s.build()
        })
        .collect();
    for tier in tiers() {
        for threads in [1, 2] {
            let plan = Plan::new(
                &shape,
                &Options::default().with_tier(tier).with_threads(threads),
            )
            .unwrap();
            let lone: Vec<Vec<f32>> = cases
                .iter()
                .map(|c| {
                    let mut out = vec![0f32; shape.out_elems()];
                    plan.run(&c.batch(), &mut out, None, &mut plan.alloc_workspace())
                        .unwrap();
                    out
                })
                .collect();
            std::thread::scope(|s| {
                for (c, want) in cases.iter().zip(&lone) {
                    let plan = &plan;
                    s.spawn(move || {
                        let mut ws = plan.alloc_workspace();
                        let mut out = vec![0f32; shape.out_elems()];
                        for rep in 0..25 {
                            out.fill(f32::NAN);
                            plan.run(&c.batch(), &mut out, None, &mut ws).unwrap();
                            assert!(
                                out.iter()
                                    .zip(want)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{tier}, {threads} threads, rep {rep}: differs from a lone run"
                            );
                        }
                    });
                }
            });
        }
    }
}
