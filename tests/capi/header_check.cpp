// The header compiled as C++ (extern "C" linkage, no C-only constructs):
// a function that uses every declaration's type, linked into the C-ABI
// test so it is built on every run.
#include "gqa_kernels.h"

extern "C" size_t gqa_capi_header_cpp(void) {
    gqa_shape s = gqa_shape();
    gqa_options o = gqa_options();
    gqa_kv kv = gqa_kv();
    gqa_cache c = gqa_cache();
    gqa_batch b = gqa_batch();
    gqa_new_kv n = gqa_new_kv();
    gqa_plan *p = 0;
    (void)p;
    int32_t (*run)(const gqa_plan *, const gqa_batch *, float *, size_t, float *, size_t, void *,
                   size_t) = gqa_run;
    int32_t (*app)(const gqa_cache *, const gqa_new_kv *, const size_t *, size_t) = gqa_append;
    (void)run;
    (void)app;
    return sizeof s + sizeof o + sizeof kv + sizeof c + sizeof b + sizeof n;
}
