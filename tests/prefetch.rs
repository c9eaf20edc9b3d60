//! The software prefetch distances (the windowed walk's and the head-major
//! streams') and the V-block hint change no result: every tier, a
//! token-major, a head-major, a padded, paged (token-major pages, and
//! head-major pages short enough to be prefetched and long enough not to
//! be) and a ring cache, rows narrow enough to be scored several positions
//! at a time and wide ones scored one at a time, distances 0, 1, 16, 64 and
//! 300 (past every window and chunk), the V hint on and off, bitwise the
//! same output and lse, and equal to the reference.

mod common;

use common::{tiers, Case, Layout, Spec};
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
        for shape in [
            Shape::new(2, 12, 3, 72, Dtype::Bf16)
                .with_q_len(2)
                .with_max_kv_len(1500),
            // 512-byte rows: scored a position at a time.
            Shape::new(2, 6, 3, 128, Dtype::F32).with_max_kv_len(1500),
        ] {
            let mut s = Spec::new(shape, vec![1300, 257]);
            s.layout = layout;
            let c = s.build();
            let want = c.reference();
            for tier in tiers() {
                let mut base: Option<(Vec<f32>, Vec<f32>)> = None;
                for (pf, spf, v) in [
                    (0usize, 0usize, false),
                    (1, 1, true),
                    (16, 64, false),
                    (300, 300, true),
                    (16, 0, true),
                    (0, 3, false),
                ] {
                    let opts = Options {
                        tier: Some(tier),
                        ..Options::default()
                    };
                    let plan = Plan::new(&shape, &opts).unwrap();
                    if tier == gqa_kernels::Tier::Scalar {
                        // The portable tier has no prefetch instruction.
                        assert_eq!((plan.prefetch(), plan.stream_prefetch()), (0, 0));
                        assert!(!plan.v_prefetch() && !plan.v_prefetch_windows());
                    }
                    assert!(plan.stream_prefetch() <= 256, "{}", plan.stream_prefetch());
                    let plan = plan
                        .with_prefetch(pf)
                        .with_stream_prefetch(spf)
                        .with_v_prefetch(v);
                    assert_eq!(
                        (plan.prefetch(), plan.stream_prefetch(), plan.v_prefetch()),
                        (pf, spf, v)
                    );
                    assert_eq!(plan.v_prefetch_windows(), v);
                    let (out, lse) = run_checked(&plan, &c, &want, &format!("prefetch {pf}"));
                    match &base {
                        None => base = Some((out, lse)),
                        Some((o, l)) => assert!(
                            o.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits())
                                && l.iter().zip(&lse).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{tier}, {layout:?}: prefetch {pf}/{spf}/{v} differs from 0/0/false"
                        ),
                    }
                }
            }
        }
    }
}

/// The token-major window (positions per kernel call of each head in the
/// windowed walk) may cut calls anywhere: every window from 1 position to
/// past every chunk, on every tier, token-major strided, paged and ring
/// caches with lengths that end mid-window, agrees with the reference, and
/// a plan's result is bitwise the same on 1 and 3 threads. The default is
/// 16 to 32 positions, and 0 is a typed error.
#[test]
fn token_window_any_size() {
    for layout in [
        Layout::Blgd,
        Layout::Paged {
            page: 16,
            head_major: false,
        },
        Layout::Ring { extra: 7 },
    ] {
        let shape = Shape::new(2, 10, 2, 40, Dtype::F16)
            .with_q_len(2)
            .with_max_kv_len(700);
        let mut s = Spec::new(shape, vec![613, 37]);
        s.layout = layout;
        let c = s.build();
        let want = c.reference();
        for tier in tiers() {
            let plan = |threads: usize| {
                let opts = Options {
                    tier: Some(tier),
                    threads,
                    ..Options::default()
                };
                Plan::new(&shape, &opts).unwrap()
            };
            let default = plan(1).token_window();
            assert!((16..=32).contains(&default), "default window {default}");
            let err = plan(1).with_token_window(0).unwrap_err().to_string();
            assert!(err.contains("token_window"), "{err}");
            for w in [1usize, 5, 16, 17, 32, 300] {
                let mut runs = Vec::new();
                for threads in [1usize, 3] {
                    let plan = plan(threads).with_token_window(w).unwrap();
                    assert_eq!(plan.token_window(), w);
                    runs.push(run_checked(
                        &plan,
                        &c,
                        &want,
                        &format!("{layout:?}, window {w}"),
                    ));
                }
                let bits = |(o, l): &(Vec<f32>, Vec<f32>)| {
                    o.iter().chain(l).map(|x| x.to_bits()).collect::<Vec<_>>()
                };
                assert_eq!(
                    bits(&runs[0]),
                    bits(&runs[1]),
                    "{tier}, {layout:?}, window {w}: 3 threads differ from 1"
                );
            }
        }
    }
}

/// `plan` on case `c`: its output and lse, checked against the reference
/// `want` (`what` names the run in a failure).
fn run_checked(
    plan: &Plan,
    c: &Case,
    want: &gqa_kernels::reference::Reference,
    what: &str,
) -> (Vec<f32>, Vec<f32>) {
    let rows = c.tokens() * plan.shape().heads;
    let mut out = vec![f32::NAN; rows * plan.shape().head_dim_v];
    let mut lse = vec![f32::NAN; rows];
    plan.run(
        &c.batch(),
        &mut out,
        Some(&mut lse),
        &mut plan.alloc_workspace(),
    )
    .unwrap();
    c.compare(plan.kernel_name(), &out, &lse, want)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    (out, lse)
}
