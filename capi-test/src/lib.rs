//! The C consumer of `include/gqa_kernels.h` (compiled by `build.rs`) and
//! its entry points; the test in `tests/consumer.rs` runs it.

use std::ffi::c_char;

// Keep the library linked: the C objects call its `gqa_*` symbols.
pub use gqa_kernels;

extern "C" {
    /// Runs the C scenario (see `tests/capi/consumer.c`): 0 or the line of
    /// the first failed check, with messages in `log`.
    pub fn gqa_capi_consumer(
        seed: u64,
        out: *mut f32,
        out_len: usize,
        lse: *mut f32,
        lse_len: usize,
        log: *mut c_char,
        log_cap: usize,
    ) -> i32;
    /// The header compiled as C++: the sum of the structs' sizes.
    pub fn gqa_capi_header_cpp() -> usize;
}
