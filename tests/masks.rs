//! Masks written as additive biases, the way hosts pass them: `-inf`
//! (ggml, ONNX Runtime), `finfo(float32).min = -f32::MAX` (Hugging Face)
//! and large finite negatives, in every pattern a host produces — prefixes
//! and suffixes, whole 16-position blocks, whole KV splits, alternating
//! positions, everything, left padding, a sliding window written as a mask,
//! random runs — on every tier, on strided, paged and ring caches, with and
//! without KV splits and sinks, one and several query tokens, against the
//! f64 reference. Plus the ALiBi rows whose lse sits near 0, where the bias
//! terms' rounding shows, and the bias values the contract rejects.

mod common;

use common::{check_all, check_thread_invariance, tiers, Layout, Mask, MaskKind, Spec};
use gqa_kernels::{Bias, Dtype, Error, Options, Plan, Shape};

/// The values a masked position's bias holds in the tests: what ggml and
/// ONNX Runtime write, what Hugging Face writes, a finite value whose
/// product with `log2 e` still fits f32, and the f16 minimum (a mask
/// converted from a half-precision host buffer).
const MASK_VALUES: [f32; 4] = [f32::NEG_INFINITY, -f32::MAX, -1e30, -65504.0];

/// Whether some query row of the batch sees only masked positions.
///
/// Such a row, masked by a large *finite* value `b`, averages its positions
/// with weights that still depend on the scores, and a score `s + b` in
/// f32 keeps `s` only to `ulp(b · log2 e)`: `2^-7` log2 units at
/// `b = -65504`, so the weights move by about 0.5 % there, as in any f32
/// implementation (f64 keeps them). That is outside the tolerance's logit
/// domain, and such rows are checked on their own
/// (`fully_masked_rows`); from about `-1e20` down f64 loses the scores
/// too and both give the uniform average, which the full check covers.
fn some_row_fully_masked(kind: &MaskKind, lens: &[usize], q_len: usize, heads: usize) -> bool {
    lens.iter().enumerate().any(|(b, &len)| {
        (0..q_len.min(len)).any(|t| {
            let p = len - q_len + t;
            (0..heads).any(|h| (0..=p).all(|j| kind.covers(b, h, p, len, j)))
        })
    })
}

fn layouts() -> [Layout; 4] {
    [
        Layout::Bgld,
        Layout::Blgd,
        Layout::Paged {
            page: 16,
            head_major: false,
        },
        Layout::Ring { extra: 5 },
    ]
}

/// Every pattern over a 2-sequence batch of lengths 1100 and 517: with
/// `max_kv_len = 2048` the plan cuts splits of 512 positions, so the
/// patterns mask whole blocks, whole splits and the first block of a split.
#[test]
fn every_mask_pattern_on_every_tier_and_layout() {
    let lens = vec![1100, 517];
    let patterns = [
        MaskKind::Prefix(15),
        MaskKind::Prefix(16),
        MaskKind::Prefix(17),
        MaskKind::Prefix(32),
        MaskKind::Prefix(512),
        MaskKind::Prefix(600),
        MaskKind::Suffix(16),
        MaskKind::Suffix(40),
        MaskKind::Range(512, 528),
        MaskKind::Range(496, 1040),
        MaskKind::Range(0, 1024),
        MaskKind::Alternating,
        MaskKind::All,
        MaskKind::LeftPad(vec![300, 17]),
        MaskKind::Window(100),
        MaskKind::Runs {
            seed: 7,
            run: 16,
            density: 160,
        },
        MaskKind::Runs {
            seed: 9,
            run: 5,
            density: 200,
        },
    ];
    let mut n = 0usize;
    for kind in &patterns {
        for &value in &MASK_VALUES {
            for (li, layout) in layouts().into_iter().enumerate() {
                // One and three query tokens, with and without splits and
                // sinks, spread over the layouts.
                let q_len = if (n + li).is_multiple_of(2) { 1 } else { 3 };
                let max_kv_len = if n % 3 == 2 { 0 } else { 2048 };
                let shape = Shape::new(2, 8, 2, 64, Dtype::F16)
                    .with_q_len(q_len)
                    .with_max_kv_len(max_kv_len);
                if value > -1e20 && some_row_fully_masked(kind, &lens, q_len, 8) {
                    continue;
                }
                let mut s = Spec::new(shape, lens.clone());
                s.layout = layout;
                s.seed = n as u64;
                s.mask = Some(Mask {
                    kind: kind.clone(),
                    value,
                });
                if n % 4 == 1 {
                    s.sinks = Some((0..8).map(|h| 0.25 * h as f32 - 1.0).collect());
                }
                eprintln!("case {n}: {kind:?} = {value}, {layout:?}, q_len {q_len}, max_kv_len {max_kv_len}");
                check_all(&s.build());
                n += 1;
            }
        }
    }
}

/// Group sizes 5, 7 and 71 (more rows than a register tile: the scratch
/// path), odd head dims, f32 and bf16 caches, a broadcast bias (one row
/// for every head) and a ragged batch.
#[test]
fn masks_on_odd_groups_dims_and_ragged_batches() {
    let configs = [
        (5usize, 1usize, 37usize, Dtype::F32),
        (7, 2, 128, Dtype::Bf16),
        (71, 1, 19, Dtype::F16),
    ];
    for (ci, &(r, g, d, dt)) in configs.iter().enumerate() {
        for (vi, &value) in MASK_VALUES.iter().enumerate() {
            for per_head in [false, true] {
                let shape = Shape::new(3, g * r, g, d, dt)
                    .with_q_len(2)
                    .with_max_kv_len(1600);
                let mut s = Spec::new(shape, vec![700, 1, 260]);
                s.layout = layouts()[(ci + vi) % 4];
                s.q_tokens = Some(vec![2, 1, 0]);
                s.bias = Some(per_head);
                s.seed = (ci * 10 + vi) as u64;
                s.mask = Some(Mask {
                    kind: if per_head {
                        MaskKind::Runs {
                            seed: vi as u64,
                            run: 16,
                            density: 128,
                        }
                    } else {
                        MaskKind::LeftPad(vec![512, 0, 256])
                    },
                    value,
                });
                check_all(&s.build());
            }
        }
    }
}

/// The two inputs of the outside report, as regressions: `-inf` on
/// positions `[0, 32)` at `L = 517` (relative error 9.7 before the fix),
/// and a masked block `[512, 528)` at a split start at `L = 1100` (0.87),
/// each on one thread and bitwise the same on several.
#[test]
fn reported_masked_prefix_and_split_start() {
    for (len, kind) in [
        (517, MaskKind::Prefix(32)),
        (1100, MaskKind::Range(512, 528)),
    ] {
        for value in [f32::NEG_INFINITY, -f32::MAX] {
            let shape = Shape::new(1, 32, 8, 128, Dtype::F16).with_max_kv_len(4096);
            let mut s = Spec::new(shape, vec![len]);
            s.layout = Layout::Bgld;
            s.mask = Some(Mask {
                kind: kind.clone(),
                value,
            });
            check_thread_invariance(&s.build(), &[2]);
        }
    }
}

/// A row whose every visible position is masked: `-inf` gives zeros and
/// `lse = -inf` (or the sink's logit); a finite mask leaves the positions
/// weighted by their scores as in f64, and from about `-1e20` down equally
/// (every score is then the same value; the uniform average, as the same
/// mask gives in PyTorch). At `-65504` (the f16 minimum, Hugging Face's
/// mask in half precision) the f32 score keeps the query-key product only
/// to 2^-7 log2 units: the output is a convex combination of the visible V
/// rows within 1 % of max|V| of the reference, and the lse within bound.
#[test]
fn fully_masked_rows() {
    let shape = Shape::new(2, 4, 1, 16, Dtype::F32).with_max_kv_len(1024);
    for value in MASK_VALUES {
        for sinks in [false, true] {
            let mut s = Spec::new(shape, vec![600, 5]);
            s.mask = Some(Mask {
                kind: MaskKind::All,
                value,
            });
            if sinks {
                s.sinks = Some(vec![0.5, -1.0, 2.0, 0.0]);
            }
            let c = s.build();
            if value < -1e20 {
                check_all(&c);
            }
            let want = c.reference();
            for t in tiers() {
                let (out, lse, name) = c.run(t, 1).unwrap();
                if value == f32::NEG_INFINITY {
                    assert!(out.iter().all(|&x| x == 0.0), "{name}: {value}");
                    for (h, &l) in lse.iter().enumerate() {
                        let sink = c.sinks.as_ref().map_or(f32::NEG_INFINITY, |z| z[h % 4]);
                        assert!(l == sink, "{name}: lse {l}, sink {sink}");
                    }
                    continue;
                }
                // Without a sink the masked positions share the weight;
                // next to a sink of ordinary size they weigh 0.
                assert_eq!(out.iter().any(|&x| x != 0.0), !sinks, "{name}: {value}");
                if value > -1e20 {
                    let vmax = c.v_max();
                    for (i, (&g, &w)) in out.iter().zip(&want.out).enumerate() {
                        // Between the smallest and largest V element the
                        // row sees (tokens are sequence-major, one each).
                        let (b, d) = (i / (4 * 16), i % 16);
                        let col: Vec<f64> = (0..c.seq_lens[b])
                            .map(|j| {
                                c.v.data(c.v_off)
                                    .value_f64(c.row_index(true, b, 0, j) + d, 0, 16)
                            })
                            .collect();
                        let lo = col.iter().cloned().fold(f64::INFINITY, f64::min);
                        let hi = col.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let g = f64::from(g);
                        let wiggle = 1e-6 * vmax;
                        assert!(
                            sinks || (g >= lo - wiggle && g <= hi + wiggle),
                            "{name}: out[{i}] = {g} outside [{lo}, {hi}]"
                        );
                        assert!(
                            (g - w).abs() <= 1e-2 * vmax,
                            "{name}: out[{i}] = {g}, reference {w}"
                        );
                    }
                    let (_, tol) = gqa_kernels::reference::tolerance(Dtype::F32, Dtype::F32);
                    for (&g, &w) in lse.iter().zip(&want.lse) {
                        assert!(
                            tol.accepts(f64::from(g), w, 1.0),
                            "{name}: lse {g}, reference {w}"
                        );
                    }
                }
            }
        }
    }
}

/// The logit floor: bias values below `-2^127` act as `-2^127` (their
/// product with `log2 e` would overflow f32), `-inf` stays a mask. Rows
/// that see only floored positions average them uniformly, next to any
/// ordinary position they weigh 0.
#[test]
fn biases_below_the_floor_act_as_the_floor() {
    let shape = Shape::new(1, 2, 1, 8, Dtype::F32);
    let floor = -(2f32.powi(127));
    for value in [-f32::MAX, -3e38, -2.4e38, floor, -1.5e38] {
        let mut s = Spec::new(shape, vec![40]);
        s.mask = Some(Mask {
            kind: MaskKind::Runs {
                seed: 3,
                run: 1,
                density: 240,
            },
            value,
        });
        check_all(&s.build());
        // Mixed below-floor values on an otherwise masked row: the same
        // result as the floor itself.
        let mut c = s.build();
        let (data, _) = c.bias.as_mut().unwrap();
        for (i, x) in data.iter_mut().enumerate() {
            if *x < -1e38 {
                *x = if i % 2 == 0 { -f32::MAX } else { -2.5e38 };
            }
        }
        check_all(&c);
    }
}

/// `+inf` and NaN in the bias are rejected before anything is read, naming
/// the first offending element; `-inf` is a mask.
#[test]
fn positive_infinity_and_nan_biases_are_typed_errors() {
    let shape = Shape::new(2, 4, 2, 8, Dtype::F32).with_q_len(2);
    let c = Spec::new(shape, vec![6, 3]).build();
    let plan = Plan::new(&shape, &Options::default()).unwrap();
    let mut out = vec![0f32; shape.out_elems()];
    let mut ws = plan.alloc_workspace();
    // Per head, 6 positions; token stride 4 * 6, sequence stride 2 * 24.
    let (hs, ts, ss) = (6, 24, 48);
    // One step over `data` laid out with those strides.
    let mut run = |data: &[f32]| {
        let bias = Bias {
            data,
            seq_stride: ss,
            token_stride: ts,
            head_stride: hs,
        };
        plan.run(&c.batch().with_bias(bias), &mut out, None, &mut ws)
    };
    for bad in [f32::INFINITY, f32::NAN] {
        // Sequence 1, token 1, head 3, position 2.
        let at = ss + ts + 3 * hs + 2;
        let mut data = vec![0.5f32; 2 * ss];
        data[at] = bad;
        let e = run(&data).unwrap_err();
        match e {
            Error::NonFinite {
                arg: "bias",
                index,
                value,
            } => {
                assert_eq!(index, at, "{e}");
                assert!(value.is_nan() == bad.is_nan(), "{e}");
            }
            e => panic!("{bad}: {e:?}"),
        }
        assert!(e.to_string().contains("bias"), "{e}");
        // A bad value past what the step reads (position 3 of sequence 1,
        // whose length is 3) is not looked at.
        data[at] = 0.5;
        data[ss + 3] = bad;
        run(&data).unwrap();
        // -inf everywhere is a mask, not an error.
        run(&vec![f32::NEG_INFINITY; 2 * ss]).unwrap();
    }
}

/// ALiBi rows whose lse is near 0 (q = 0 and a per-head bias of minus the
/// log of the ALiBi weights' sum), where the absolute lse bound is all the
/// tolerance there is: the ALiBi term must be one rounded product of the
/// slope and the integer distance. The reported case (H = 160, G = 8,
/// `max_bias = 2.5`, the query at the last position of a 256-position
/// block; avx512 was 1.025x the bound on head 148) and a sweep of head
/// counts and steep slopes.
#[test]
fn alibi_lse_near_zero_stays_in_bound() {
    let run = |heads: usize, kv_heads: usize, max_bias: f32, len: usize| {
        let slopes = gqa_kernels::alibi_slopes(heads, max_bias).unwrap();
        let shape = Shape::new(1, heads, kv_heads, 4, Dtype::F32);
        let mut s = Spec::new(shape, vec![len]);
        s.alibi = Some(slopes.clone());
        s.bias = Some(true);
        let mut c = s.build();
        c.q.fill(0.0);
        let (data, (_, _, hs)) = c.bias.as_mut().unwrap();
        for (h, &m) in slopes.iter().enumerate() {
            let m = f64::from(m);
            let lse: f64 = (0..len).map(|d| (-m * d as f64).exp()).sum::<f64>().ln();
            data[h * *hs..h * *hs + len].fill(-lse as f32);
        }
        check_all(&c);
    };
    run(160, 8, 2.5, 256);
    for heads in (1..=256).step_by(3) {
        for max_bias in [0.5f32, 1.0, 2.0, 2.5, 4.0, 8.0, 16.0] {
            run(heads, 1, max_bias, 256);
        }
    }
}
