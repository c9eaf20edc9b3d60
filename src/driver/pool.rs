//! The worker pool a plan with `threads > 1` owns: `threads - 1` workers
//! that run parts of a step beside the calling thread.
//!
//! A model's decode step calls the library once per layer (32 to 80 calls
//! per token), and at a few thousand positions a call takes 0.1 to 0.3 ms.
//! Handing out its parts must then cost far less than a wake-up: the caller
//! publishes the step and runs part 0 itself, and a worker that finished a
//! step watches for the next one for [`SPIN`] before it parks (one futex
//! wake-up then reaches every parked worker at once). A fork-join pool whose
//! idle workers sleep after a few microseconds (rayon's) put two wake-ups
//! in series on every call: 2 threads took 0.60-0.70x the 1-thread time of
//! a 0.24 ms call, where this pool takes 0.52x (Llama-3-8B f16, L 1024,
//! `[B, G, L, D]`, calls back to back, on a 2-core Intel VM).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker watches for the next step before it parks: long
/// enough to span the host's work between two layers' calls, short enough
/// not to hold a core the host needs once the model step is over.
const SPIN: Duration = Duration::from_micros(200);

/// A task with its lifetime erased (see [`Pool::run`]).
#[derive(Clone, Copy)]
struct TaskPtr(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the pointee is `Sync`, and it is only called while the `run` that
// published it is still waiting for the workers (see `Pool::run`).
unsafe impl Send for TaskPtr {}

struct Shared {
    /// Bumped once per step; a worker runs the task of each new value.
    epoch: AtomicU64,
    task: Mutex<Option<TaskPtr>>,
    /// Workers that have not finished the current step.
    pending: AtomicUsize,
    /// A worker's task panicked during the current step.
    panicked: AtomicBool,
    /// Workers parked on `wake` (counted under `parked_lock`).
    parked: AtomicUsize,
    parked_lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// The first epoch other than `seen` (`None`: the pool is closing).
    fn next_epoch(&self, seen: u64) -> Option<u64> {
        let mut since = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = self.epoch.load(Ordering::SeqCst);
            if e != seen {
                return Some(e);
            }
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && since.elapsed() > SPIN {
                let mut guard = self.parked_lock.lock().unwrap_or_else(|p| p.into_inner());
                self.parked.fetch_add(1, Ordering::SeqCst);
                // `run` bumps the epoch before it reads `parked`, and
                // notifies under the lock: either it sees this worker
                // parked, or this check sees the new epoch.
                while self.epoch.load(Ordering::SeqCst) == seen && !self.stop.load(Ordering::SeqCst)
                {
                    guard = self.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                self.parked.fetch_sub(1, Ordering::SeqCst);
                drop(guard);
                since = Instant::now();
            }
        }
    }

    /// Wakes every parked worker.
    fn wake_all(&self) {
        if self.parked.load(Ordering::SeqCst) > 0 {
            let _guard = self.parked_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_all();
        }
    }
}

/// `threads - 1` spinning-then-parking workers (see the module docs).
pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held by the thread whose step the workers are running.
    busy: Mutex<()>,
}

impl Pool {
    /// A pool that runs steps on `threads` threads: the caller and
    /// `threads - 1` workers.
    pub(crate) fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            task: Mutex::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            parked_lock: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut pool = Pool {
            shared,
            workers: Vec::with_capacity(threads.saturating_sub(1)),
            busy: Mutex::new(()),
        };
        for index in 1..threads {
            let shared = Arc::clone(&pool.shared);
            let worker = std::thread::Builder::new()
                .name(format!("gqa-kernels-{index}"))
                .spawn(move || work(&shared, index))?;
            // On an error, dropping `pool` stops the workers started so far.
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Threads a step runs on.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` once for each `i` in `0..self.threads()`: `f(0)` on the
    /// calling thread, the others on the workers, and returns when all have
    /// returned. While another thread's step holds the workers, every call
    /// runs on the calling thread instead, in index order. A panic in any
    /// call is raised again here once all have ended.
    pub(crate) fn run<'f>(&self, f: &'f (dyn Fn(usize) + Sync + 'f)) {
        let _busy = match self.busy.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                (0..self.threads()).for_each(f);
                return;
            }
        };
        let shared = &*self.shared;
        // SAFETY: only the lifetime bound changes (same fat pointer). The
        // workers call the task only between the epoch bump below and
        // their decrement of `pending`, and this function does not return
        // (or unwind) before `pending` is 0, so `f` outlives every call.
        let task = unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + 'f),
                *const (dyn Fn(usize) + Sync + 'static),
            >(f)
        };
        *shared.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(TaskPtr(task));
        shared.pending.store(self.workers.len(), Ordering::SeqCst);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        shared.wake_all();
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let mut spins = 0u32;
        while shared.pending.load(Ordering::Acquire) > 0 {
            if spins < 1 << 14 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if shared.panicked.swap(false, Ordering::SeqCst) {
            panic!("a gqa-kernels worker thread panicked");
        }
    }
}

/// A worker's life: run the task of each new epoch, until the pool closes.
fn work(shared: &Shared, index: usize) {
    let mut seen = 0;
    while let Some(epoch) = shared.next_epoch(seen) {
        seen = epoch;
        let task = *shared.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(TaskPtr(task)) = task {
            // SAFETY: `run` published `task` before this epoch and waits,
            // without returning, until this worker decrements `pending`.
            let call = catch_unwind(AssertUnwindSafe(|| unsafe { (*task)(index) }));
            if call.is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // As with the epoch in `run`: a worker that parks after this store
        // sees `stop` in its check under the lock.
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake_all();
        for worker in self.workers.drain(..) {
            // A worker's panics are caught, so it ends normally.
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pool;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every index runs exactly once per step, over many steps, from
    /// several threads sharing the pool (the ones that find it busy run
    /// their steps themselves).
    #[test]
    fn each_index_once_per_step() {
        let pool = Pool::new(3).unwrap();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..300 {
                        let hits: [AtomicUsize; 3] = Default::default();
                        pool.run(&|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    /// Workers parked after their spin wake for the next step.
    #[test]
    fn parked_workers_wake() {
        let pool = Pool::new(2).unwrap();
        for _ in 0..3 {
            std::thread::sleep(super::SPIN * 3);
            let hits = AtomicUsize::new(0);
            pool.run(&|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.into_inner(), 2);
        }
    }

    /// A panic in a worker's part reaches the caller, and the pool still
    /// runs the next step.
    #[test]
    fn a_worker_panic_is_raised_by_run() {
        let pool = Pool::new(2).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|i| assert!(i == 0, "part {i}"))
        }));
        assert!(r.is_err());
        let hits = AtomicUsize::new(0);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.into_inner(), 2);
    }
}
