//! Layer 2, the driver: everything between the public API and the
//! microkernels.
//!
//! - [`plan`]: [`Options`](plan::Options), the [`Plan`](plan::Plan) (kernel,
//!   unit, splits, prefetch distances, workspace sizes);
//! - `choose`: what the plan picks for this CPU (unit, prefetch distances);
//! - [`validate`]: the checks every unsafe kernel call relies on;
//! - [`layout`]: the walk geometry of each cache layout (runs, windows, pages);
//! - [`walk`]: work items into kernel calls (the one place that builds a
//!   `ChunkArgs`), and `hints`: the L2 hints the calls issue;
//! - [`step`]: running a step on the plan's pool or the host's threads, and
//!   finishing it;
//! - `prefix`: shared-prefix (cascade) groups: the group items and the
//!   member pieces around them;
//! - [`merge`]: merging partial softmax states;
//! - [`pool`]: the plan-owned thread pool;
//! - [`append`]: writing new tokens into a cache.

pub(crate) mod append;
mod choose;
mod hints;
pub(crate) mod layout;
pub(crate) mod merge;
pub(crate) mod plan;
pub(crate) mod pool;
mod prefix;
mod stage;
pub(crate) mod step;
pub(crate) mod validate;
pub(crate) mod walk;
