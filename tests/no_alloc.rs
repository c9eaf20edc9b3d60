//! `Plan::run` and the host-driven parts never allocate: a counting global
//! allocator watches a warmed-up run on every tier, layout and thread count.

mod common;

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{tiers, Layout, Spec};
use gqa_kernels::{Dtype, Options, Plan, Shape};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; the
// counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        if COUNTING.load(Ordering::SeqCst) {
            ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::SeqCst) {
            ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` (on any thread).
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCS.load(Ordering::SeqCst)
}

#[test]
fn run_and_parts_never_allocate() {
    let shape = Shape::new(2, 8, 2, 64, Dtype::F16)
        .with_q_len(2)
        .with_max_kv_len(1200);
    let cases: Vec<_> = [
        Layout::Bgld,
        Layout::Blgd,
        Layout::Paged {
            page: 16,
            head_major: false,
        },
        Layout::Ring { extra: 5 },
    ]
    .into_iter()
    .map(|layout| {
        let mut s = Spec::new(shape, vec![1200, 40]);
        s.layout = layout;
        s.build()
    })
    .collect();
    // Every plan (and its worker pool) exists before counting starts and
    // lives until it ends, so no thread starts or exits while counting.
    let plans: Vec<Plan> = tiers()
        .into_iter()
        .flat_map(|t| {
            [1, 2, 3].map(|threads| {
                Plan::new(
                    &shape,
                    &Options::default().with_tier(t).with_threads(threads),
                )
                .unwrap()
            })
        })
        .collect();
    let rows = cases[0].tokens() * shape.heads;
    let mut out = vec![0f32; rows * 64];
    let mut lse = vec![0f32; rows];
    let mut ws: Vec<Vec<u8>> = plans.iter().map(|p| p.alloc_workspace()).collect();
    let mut states = vec![0u8; plans[0].state_bytes()];
    let mut scratch = vec![0u8; plans[0].scratch_bytes()];
    // Warm up every plan first: worker threads start and settle their own
    // state.
    for (plan, ws) in plans.iter().zip(&mut ws) {
        for c in &cases {
            plan.run(&c.batch(), &mut out, Some(&mut lse), ws).unwrap();
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    for c in &cases {
        let batch = c.batch();
        for (plan, ws) in plans.iter().zip(&mut ws) {
            let n = allocations(|| {
                for _ in 0..3 {
                    plan.run(&batch, &mut out, Some(&mut lse), ws).unwrap();
                }
            });
            assert_eq!(
                n,
                0,
                "{} {:?} {} threads: Plan::run allocated",
                plan.tier(),
                c.layout,
                plan.threads()
            );
            if plan.threads() == 1 {
                let n = allocations(|| {
                    let mut step = plan.begin(&batch, &mut states).unwrap();
                    for part in step.parts(3) {
                        part.run(&mut scratch).unwrap();
                    }
                    step.finish(&mut out, Some(&mut lse)).unwrap();
                });
                assert_eq!(
                    n,
                    0,
                    "{} {:?}: host-driven parts allocated",
                    plan.tier(),
                    c.layout
                );
            }
        }
    }
}
