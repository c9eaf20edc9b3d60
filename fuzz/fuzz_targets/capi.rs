//! cargo-fuzz target `capi`: see `fuzz/harness/capi.rs`.
#![no_main]

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../harness/capi.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
