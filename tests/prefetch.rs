//! The software prefetch distances (the windowed walk's and the head-major
//! streams') change no result: every tier, a token-major, a head-major, a
//! padded, paged (token-major pages, and head-major pages short enough to
//! be prefetched and long enough not to be) and a ring cache, distances 0,
//! 1, 16, 64 and 300 (past every window and chunk), bitwise the same output
//! and lse, and equal to the reference.

mod common;

use common::{tiers, Layout, Spec};
use gqa_kernels::{Dtype, Options, Plan, Shape};

#[test]
fn prefetch_distance_changes_no_bit() {
    for layout in [
        Layout::Blgd,
        Layout::Bgld,
        Layout::Padded,
        Layout::Paged {
            page: 16,
            head_major: false,
        },
        Layout::Paged {
            page: 16,
            head_major: true,
        },
        Layout::Paged {
            page: 256,
            head_major: true,
        },
        Layout::Ring { extra: 7 },
    ] {
        let shape = Shape::new(2, 12, 3, 72, Dtype::Bf16)
            .with_q_len(2)
            .with_max_kv_len(1500);
        let mut s = Spec::new(shape, vec![1300, 257]);
        s.layout = layout;
        let c = s.build();
        let want = c.reference();
        for tier in tiers() {
            let mut base: Option<(Vec<f32>, Vec<f32>)> = None;
            for (pf, spf) in [(0usize, 0usize), (1, 1), (16, 64), (300, 300), (16, 0)] {
                let opts = Options {
                    tier: Some(tier),
                    ..Options::default()
                };
                let plan = Plan::new(&shape, &opts).unwrap();
                if tier == gqa_kernels::Tier::Scalar {
                    // The portable tier has no prefetch instruction.
                    assert_eq!((plan.prefetch(), plan.stream_prefetch()), (0, 0));
                }
                assert!(plan.stream_prefetch() <= 256, "{}", plan.stream_prefetch());
                let plan = plan.with_prefetch(pf).with_stream_prefetch(spf);
                assert_eq!((plan.prefetch(), plan.stream_prefetch()), (pf, spf));
                let rows = c.tokens() * shape.heads;
                let mut out = vec![f32::NAN; rows * shape.head_dim_v];
                let mut lse = vec![f32::NAN; rows];
                plan.run(
                    &c.batch(),
                    &mut out,
                    Some(&mut lse),
                    &mut plan.alloc_workspace(),
                )
                .unwrap();
                c.compare(plan.kernel_name(), &out, &lse, &want)
                    .unwrap_or_else(|e| panic!("prefetch {pf}: {e}"));
                match &base {
                    None => base = Some((out, lse)),
                    Some((o, l)) => assert!(
                        o.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits())
                            && l.iter().zip(&lse).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{tier}, {layout:?}: prefetch {pf}/{spf} differs from 0/0"
                    ),
                }
            }
        }
    }
}
