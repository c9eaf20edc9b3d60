//! cargo-fuzz target `append`: see `fuzz/harness/append.rs`.
#![no_main]

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../harness/append.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
