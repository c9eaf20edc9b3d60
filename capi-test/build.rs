//! Compiles the C consumer (`tests/capi/consumer.c`, C99, warnings as
//! errors) against `include/gqa_kernels.h`, and the header alone as C++,
//! so every build of the tests proves that a C and a C++ compiler accept
//! the header and that the consumer links against the library's symbols.

fn main() {
    let include = "../include";
    println!("cargo:rerun-if-changed=../include/gqa_kernels.h");
    println!("cargo:rerun-if-changed=../tests/capi/consumer.c");
    println!("cargo:rerun-if-changed=../tests/capi/header_check.cpp");
    cc::Build::new()
        .file("../tests/capi/consumer.c")
        .include(include)
        .std("c99")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-pedantic")
        .warnings_into_errors(true)
        .compile("gqa_capi_consumer");
    cc::Build::new()
        .cpp(true)
        .cpp_link_stdlib(None)
        .file("../tests/capi/header_check.cpp")
        .include(include)
        .std("c++11")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-pedantic")
        .warnings_into_errors(true)
        .compile("gqa_capi_header_cpp");
    // The consumer uses libm (fabsf).
    println!("cargo:rustc-link-lib=m");
}
