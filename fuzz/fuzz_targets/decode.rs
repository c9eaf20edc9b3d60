//! cargo-fuzz target `decode`: see `fuzz/harness/decode.rs`.
#![no_main]

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../harness/decode.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
