/*
 * A C consumer of gqa_kernels.h, compiled by capi-test/build.rs with the
 * platform's C compiler (C99, warnings as errors) and run by
 * capi-test/tests/consumer.rs, which checks the outputs below against the
 * crate's f64 reference.
 *
 * Scenario: a paged cache (int8 K, fp8 E5M2 V, pages of 16 positions in a
 * shuffled pool) written token by token with gqa_append from f32 rows,
 * decoded with gqa_run; a strided f32 cache decoded whole and as two
 * ranges merged with gqa_merge_states; one and two threads; the paged step
 * again host-driven, item by item (gqa_begin, gqa_run_items, gqa_finish);
 * a latent (MLA) cache against a separate copy of its K rows; and the
 * error paths (NULL pointers, bad enums, short structs and buffers).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gqa_kernels.h"

/* The scenario's dimensions; the Rust test uses the same. */
#define B 2
#define H 8
#define G 2
#define D 64
#define PAGE 16
#define MAXLEN 40
static const size_t LENS[B] = {37, 9};

/* The generator the Rust test replays. */
static uint64_t rng_state;
static float next_value(void) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)(rng_state >> 40) / 8388608.0f - 1.0f;
}

static char *log_buf;
static size_t log_len;
static void note(const char *msg, const char *detail) {
    size_t used = strlen(log_buf);
    if (used + 1 < log_len) {
        snprintf(log_buf + used, log_len - used, "%s%s%s\n", msg, detail ? ": " : "",
                 detail ? detail : "");
    }
}

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            note("check failed: " #cond, gqa_last_error());                           \
            return __LINE__;                                                          \
        }                                                                             \
    } while (0)

static gqa_shape make_shape(int32_t k, int32_t v) {
    gqa_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    s.batch = B;
    s.heads = H;
    s.kv_heads = G;
    s.head_dim_k = D;
    s.head_dim_v = D;
    s.q_len = 1;
    s.max_kv_len = MAXLEN;
    s.k_dtype = k;
    s.v_dtype = v;
    return s;
}

/* A strided f32 cache, rows D values apart: K at `k` and V at `v` (NULL:
 * no V) with the same `len` and strides; the other fields 0. */
static gqa_cache strided_f32_cache(float *k, float *v, size_t len, size_t outer_stride,
                                   size_t head_stride) {
    gqa_cache c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    c.layout = GQA_LAYOUT_STRIDED;
    c.k.dtype = GQA_DTYPE_F32;
    c.k.data = k;
    c.k.len = len;
    c.k.outer_stride = outer_stride;
    c.k.token_stride = D;
    c.k.head_stride = head_stride;
    if (v != NULL) {
        c.v = c.k;
        c.v.data = v;
    }
    return c;
}

/* A batch of `n_seqs` sequences of lengths `lens` over `c`; every optional
 * field NULL or 0. */
static gqa_batch make_batch(const float *q, size_t q_elems, const gqa_cache *c,
                            const size_t *lens, size_t n_seqs) {
    gqa_batch bt;
    memset(&bt, 0, sizeof bt);
    bt.struct_size = sizeof bt;
    bt.q = q;
    bt.q_elems = q_elems;
    bt.cache = c;
    bt.seq_lens = lens;
    bt.n_seqs = n_seqs;
    return bt;
}

static int error_paths(void) {
    gqa_plan *p = NULL;
    gqa_shape s = make_shape(GQA_DTYPE_F32, GQA_DTYPE_F32);
    gqa_shape bad;

    CHECK(gqa_plan_create(NULL, NULL, &p) == GQA_ERR_NULL);
    CHECK(strstr(gqa_last_error(), "shape") != NULL);
    CHECK(gqa_plan_create(&s, NULL, NULL) == GQA_ERR_NULL);
    bad = s;
    bad.struct_size = 8;
    CHECK(gqa_plan_create(&bad, NULL, &p) == GQA_ERR_STRUCT_SIZE);
    bad = s;
    bad.k_dtype = 99;
    CHECK(gqa_plan_create(&bad, NULL, &p) == GQA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(gqa_last_error(), "k_dtype") != NULL);
    bad = s;
    bad.heads = 7;
    CHECK(gqa_plan_create(&bad, NULL, &p) == GQA_ERR_INVALID_ARGUMENT);
    bad = s;
    bad.k_dtype = GQA_DTYPE_Q8_0;
    bad.head_dim_k = 40;
    CHECK(gqa_plan_create(&bad, NULL, &p) == GQA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(gqa_last_error(), "multiple of 32") != NULL);
    {
        gqa_options o;
        memset(&o, 0, sizeof o);
        o.struct_size = sizeof o;
        o.tier = 42;
        CHECK(gqa_plan_create(&s, &o, &p) == GQA_ERR_INVALID_ARGUMENT);
        o.tier = GQA_TIER_AUTO;
        o.softcap = -1.0f;
        CHECK(gqa_plan_create(&s, &o, &p) == GQA_ERR_INVALID_ARGUMENT);
        o.softcap = 0.0f;
        o.unit = 77;
        CHECK(gqa_plan_create(&s, &o, &p) == GQA_ERR_INVALID_ARGUMENT);
        CHECK(strstr(gqa_last_error(), "options.unit") != NULL);
        o.unit = GQA_UNIT_AUTO;
        o.precision = 5;
        CHECK(gqa_plan_create(&s, &o, &p) == GQA_ERR_INVALID_ARGUMENT);
        CHECK(strstr(gqa_last_error(), "options.precision") != NULL);
        /* A caller compiled before `unit` and `precision` existed. */
        o.precision = GQA_PRECISION_EXACT;
        o.struct_size = offsetof(gqa_options, unit);
        CHECK(gqa_plan_create(&s, &o, &p) == GQA_OK);
        gqa_plan_destroy(p);
        o.struct_size = offsetof(gqa_options, unit) - 1;
        CHECK(gqa_plan_create(&s, &o, &p) == GQA_ERR_STRUCT_SIZE);
        /* f32 FMA forced; a unit without kernels for f32 K is refused. */
        o.struct_size = sizeof o;
        o.unit = GQA_UNIT_F32_FMA;
        CHECK(gqa_plan_create(&s, &o, &p) == GQA_OK);
        {
            int32_t u = 0;
            CHECK(gqa_plan_unit(p, &u) == GQA_OK && u == GQA_UNIT_F32_FMA);
            CHECK(strcmp(gqa_unit_name(u), "f32-fma") == 0);
        }
        gqa_plan_destroy(p);
        o.unit = GQA_UNIT_BF16_DOT;
        CHECK(gqa_plan_create(&s, &o, &p) == GQA_ERR_TYPE);
        CHECK(gqa_unit_name(GQA_UNIT_AUTO) == NULL);
    }
    CHECK(gqa_plan_workspace_bytes(NULL, NULL) == GQA_ERR_NULL);
    CHECK(gqa_run(NULL, NULL, NULL, 0, NULL, 0, NULL, 0) == GQA_ERR_NULL);
    CHECK(gqa_plan_kernel_name(NULL) == NULL);
    CHECK(gqa_tier_name(17) == NULL);
    CHECK(gqa_tier_available(-5) == 0);
    CHECK(gqa_sizeof(99) == 0);
    gqa_plan_destroy(NULL);
    return 0;
}

/* The strided f32 part: whole cache vs two ranges merged, 1 vs 2 threads. */
static int strided_and_merge(void) {
    enum { L = 33, SPLIT = 20 };
    static float k[G * L * D], v[G * L * D], q[H * D];
    static float out[H * D], out2[H * D], part[H * D];
    float lse[H], lse2[H], plse[H];
    size_t i, ws_len = 0;
    void *ws;
    gqa_plan *p = NULL, *p2 = NULL;
    gqa_shape s = make_shape(GQA_DTYPE_F32, GQA_DTYPE_F32);
    gqa_options o;
    gqa_cache c;
    gqa_batch bt;
    size_t len = L;

    s.batch = 1;
    s.max_kv_len = 0;
    for (i = 0; i < G * L * D; i++) {
        k[i] = next_value();
        v[i] = next_value();
    }
    for (i = 0; i < H * D; i++) q[i] = next_value();
    CHECK(gqa_plan_create(&s, NULL, &p) == GQA_OK);
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.tier = GQA_TIER_AUTO;
    o.threads = 2;
    CHECK(gqa_plan_create(&s, &o, &p2) == GQA_OK);
    CHECK(gqa_plan_workspace_bytes(p2, &ws_len) == GQA_OK);
    {
        size_t w1 = 0;
        CHECK(gqa_plan_workspace_bytes(p, &w1) == GQA_OK);
        if (w1 > ws_len) ws_len = w1;
    }
    ws = malloc(ws_len);
    CHECK(ws != NULL);

    /* [B, G, L, D] */
    c = strided_f32_cache(k, v, G * L * D, G * L * D, L * D);
    bt = make_batch(q, H * D, &c, &len, 1);

    CHECK(gqa_run(p, &bt, out, H * D, lse, H, ws, ws_len) == GQA_OK);
    CHECK(gqa_run(p2, &bt, out2, H * D, lse2, H, ws, ws_len) == GQA_OK);
    CHECK(memcmp(out, out2, sizeof out) == 0 && memcmp(lse, lse2, sizeof lse) == 0);
    /* Errors on a real plan: short output, short workspace, wrong type. */
    CHECK(gqa_run(p, &bt, out2, H * D - 1, lse2, H, ws, ws_len) == GQA_ERR_LENGTH);
    CHECK(strstr(gqa_last_error(), "out") != NULL);
    CHECK(gqa_run(p, &bt, out2, H * D, lse2, H, ws, 16) == GQA_ERR_BUFFER_TOO_SMALL);
    c.k.dtype = GQA_DTYPE_F16;
    CHECK(gqa_run(p, &bt, out2, H * D, lse2, H, ws, ws_len) == GQA_ERR_TYPE);
    c.k.dtype = GQA_DTYPE_F32;
    c.k.len = G * L * D - 1;
    CHECK(gqa_run(p, &bt, out2, H * D, lse2, H, ws, ws_len) == GQA_ERR_OUT_OF_BOUNDS);
    c.k.len = G * L * D;
    c.layout = 7;
    CHECK(gqa_run(p, &bt, out2, H * D, lse2, H, ws, ws_len) == GQA_ERR_INVALID_ARGUMENT);
    c.layout = GQA_LAYOUT_STRIDED;

    /* Positions [0, SPLIT) and [SPLIT, L) as two runs, merged. */
    len = SPLIT;
    CHECK(gqa_run(p, &bt, out2, H * D, lse2, H, ws, ws_len) == GQA_OK);
    c.k.data = k + SPLIT * D;
    c.v.data = v + SPLIT * D;
    c.k.len = c.v.len = G * L * D - SPLIT * D;
    len = L - SPLIT;
    CHECK(gqa_run(p, &bt, part, H * D, plse, H, ws, ws_len) == GQA_OK);
    CHECK(gqa_merge_states(out2, lse2, part, plse, H, D) == GQA_OK);
    for (i = 0; i < H * D; i++) CHECK(fabsf(out2[i] - out[i]) <= 1e-5f);
    for (i = 0; i < H; i++) CHECK(fabsf(lse2[i] - lse[i]) <= 1e-5f);
    CHECK(gqa_merge_states(out2, lse2, part, NULL, H, D) == GQA_ERR_NULL);

    free(ws);
    gqa_plan_destroy(p);
    gqa_plan_destroy(p2);
    note("strided + merge: ok", NULL);
    return 0;
}

/* A latent (MLA) cache: one KV head whose rows of D values are K and,
 * by their leading DV values, V (cache.latent = 1, v not read); bitwise
 * the step with V given as a separate copy of K; DV > D refused;
 * gqa_append writes a new token's row once into k (V rows refused). */
static int latent_cache(void) {
    enum { L = 29, DV = 48 };
    static float k[L * D], kcopy[L * D], q[B * H * D];
    static float out[B * H * DV], out2[B * H * DV], wide[B * H * (D + 1)];
    static float row[D];
    static const size_t lens[B] = {29, 5};
    static const size_t one[2] = {0, 1}, last = L - 1;
    size_t i, ws_len = 0;
    void *ws;
    gqa_plan *p = NULL;
    gqa_shape s = make_shape(GQA_DTYPE_F32, GQA_DTYPE_F32);
    gqa_cache c;
    gqa_batch bt;
    gqa_new_kv nk;

    s.kv_heads = 1;
    s.head_dim_v = DV;
    s.max_kv_len = 0;
    /* Values of their own (the shared generator feeds the Rust replay). */
    for (i = 0; i < L * D; i++) kcopy[i] = k[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    for (i = 0; i < B * H * D; i++) q[i] = (float)((i * 31) % 17) / 8.0f - 1.0f;
    CHECK(gqa_plan_create(&s, NULL, &p) == GQA_OK);
    CHECK(gqa_plan_workspace_bytes(p, &ws_len) == GQA_OK);
    ws = malloc(ws_len);
    CHECK(ws != NULL);
    /* Both sequences read the same rows (outer stride 0). */
    c = strided_f32_cache(k, NULL, L * D, 0, 0);
    c.latent = 1;
    bt = make_batch(q, B * H * D, &c, lens, B);
    CHECK(gqa_run(p, &bt, out, B * H * DV, NULL, 0, ws, ws_len) == GQA_OK);
    /* The same step over a separate copy with K's strides. */
    c.latent = 0;
    c.v = c.k;
    c.v.data = kcopy;
    CHECK(gqa_run(p, &bt, out2, B * H * DV, NULL, 0, ws, ws_len) == GQA_OK);
    CHECK(memcmp(out, out2, sizeof out) == 0);
    c.latent = 3;
    CHECK(gqa_run(p, &bt, out2, B * H * DV, NULL, 0, ws, ws_len) == GQA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(gqa_last_error(), "cache.latent") != NULL);
    c.latent = 1;
    c.capacity = L;
    for (i = 0; i < D; i++) row[i] = (float)i / 16.0f - 2.0f;
    memset(&nk, 0, sizeof nk);
    nk.struct_size = sizeof nk;
    nk.dtype = GQA_DTYPE_F32;
    nk.k = row;
    nk.k_len = D;
    nk.v = row; /* V rows for a latent cache: refused, naming new.v */
    nk.v_len = D;
    nk.offsets = one;
    nk.offsets_len = 2;
    nk.kv_heads = 1;
    nk.head_dim_k = D;
    nk.head_dim_v = DV;
    CHECK(gqa_append(&c, &nk, &last, 1) == GQA_ERR_LENGTH);
    CHECK(strstr(gqa_last_error(), "new.v") != NULL);
    CHECK(memcmp(k, kcopy, sizeof k) == 0);
    nk.v = NULL;
    nk.v_len = 0;
    CHECK(gqa_append(&c, &nk, &last, 1) == GQA_OK);
    CHECK(memcmp(k + (L - 1) * D, row, sizeof row) == 0);
    CHECK(memcmp(k, kcopy, (L - 1) * D * sizeof(float)) == 0);
    gqa_plan_destroy(p);
    /* V wider than the K rows cannot be their leading values. */
    s.head_dim_v = D + 1;
    free(ws);
    CHECK(gqa_plan_create(&s, NULL, &p) == GQA_OK);
    CHECK(gqa_plan_workspace_bytes(p, &ws_len) == GQA_OK);
    ws = malloc(ws_len);
    CHECK(ws != NULL);
    CHECK(gqa_run(p, &bt, wide, B * H * (D + 1), NULL, 0, ws, ws_len) ==
          GQA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(gqa_last_error(), "head_dim_v") != NULL);
    gqa_plan_destroy(p);
    free(ws);
    note("latent cache: ok", NULL);
    return 0;
}

/* Shared-prefix groups: sequence 0 reads positions below 20 from sequence
 * 1's rows (its own hold other values); the same step undeclared over a
 * copy where sequence 0's rows below 20 are sequence 1's agrees. */
static int prefix_groups(void) {
    enum { L = 40, P = 20 };
    static float k[B * L * D], v[B * L * D], kc[B * L * D], vc[B * L * D], q[B * H * D];
    static float out[B * H * D], out2[B * H * D];
    static const size_t lens[B] = {33, 40}, pl[1] = {P}, po[2] = {0, 2};
    static size_t pm[2] = {1, 0};
    size_t i, ws_len = 0;
    void *ws;
    gqa_plan *p = NULL, *plain = NULL;
    gqa_shape s = make_shape(GQA_DTYPE_F32, GQA_DTYPE_F32);
    gqa_options o;
    gqa_cache c;
    gqa_batch bt;

    s.kv_heads = 1;
    s.max_kv_len = 0;
    for (i = 0; i < B * L * D; i++) {
        kc[i] = k[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
        vc[i] = v[i] = (float)((i * 104729) % 1000) / 500.0f - 1.0f;
    }
    memcpy(kc, k + L * D, P * D * sizeof(float));
    memcpy(vc, v + L * D, P * D * sizeof(float));
    for (i = 0; i < B * H * D; i++) q[i] = (float)((i * 31) % 17) / 8.0f - 1.0f;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.tier = GQA_TIER_AUTO;
    o.cascade = 2;
    CHECK(gqa_plan_create(&s, &o, &p) == GQA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(gqa_last_error(), "options.cascade") != NULL);
    o.cascade = 1;
    CHECK(gqa_plan_create(&s, &o, &p) == GQA_OK);
    CHECK(gqa_plan_create(&s, NULL, &plain) == GQA_OK);
    CHECK(gqa_plan_workspace_bytes(p, &ws_len) == GQA_OK);
    ws = malloc(ws_len);
    CHECK(ws != NULL);
    c = strided_f32_cache(k, v, B * L * D, L * D, 0);
    bt = make_batch(q, B * H * D, &c, lens, B);
    bt.prefix_lens = pl;
    bt.n_prefix_groups = 1;
    bt.prefix_offsets = po;
    bt.prefix_members = pm;
    bt.prefix_members_len = 2;
    CHECK(gqa_run(p, &bt, out, B * H * D, NULL, 0, ws, ws_len) == GQA_OK);
    /* A plan made without cascade refuses groups. */
    CHECK(gqa_run(plain, &bt, out2, B * H * D, NULL, 0, ws, ws_len) ==
          GQA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(gqa_last_error(), "cascade") != NULL);
    /* A sequence named twice. */
    pm[1] = 1;
    CHECK(gqa_run(p, &bt, out2, B * H * D, NULL, 0, ws, ws_len) == GQA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(gqa_last_error(), "prefix.members") != NULL);
    pm[1] = 0;
    bt.prefix_lens = NULL;
    c.k.data = kc;
    c.v.data = vc;
    CHECK(gqa_run(p, &bt, out2, B * H * D, NULL, 0, ws, ws_len) == GQA_OK);
    for (i = 0; i < B * H * D; i++) CHECK(fabsf(out[i] - out2[i]) <= 1e-5f);
    gqa_plan_destroy(p);
    gqa_plan_destroy(plain);
    free(ws);
    note("prefix groups: ok", NULL);
    return 0;
}

/* The paged quantized part; its output goes back to the Rust test. */
static int paged_quantized(float *out, size_t out_len, float *lse, size_t lse_len) {
    enum { PAGES = 8 };
    static int8_t kq[PAGES * G * PAGE * D];
    static float ks[PAGES * G * PAGE];
    static uint8_t vq[PAGES * G * PAGE * D];
    static float rows_k[B * G * D], rows_v[B * G * D], q[B * H * D];
    static const float v_scales[G] = {0.004f, 0.006f};
    /* A shuffled pool: sequence 0 owns pages 5, 2, 7; sequence 1 owns 0. */
    static const uint32_t table[B * 3] = {5, 2, 7, 0, 3, 3};
    gqa_shape s = make_shape(GQA_DTYPE_INT8, GQA_DTYPE_FP8_E5M2);
    gqa_plan *p = NULL;
    gqa_cache c;
    gqa_new_kv nk;
    gqa_batch bt;
    size_t pos, i, ws_len = 0;
    void *ws;
    int32_t tier = -1;

    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    c.layout = GQA_LAYOUT_PAGED;
    c.k.dtype = GQA_DTYPE_INT8;
    c.k.data = kq;
    c.k.len = PAGES * G * PAGE * D;
    c.k.scales = ks;
    c.k.scales_len = PAGES * G * PAGE;
    c.k.outer_stride = G * PAGE * D; /* [G, page, D] pages */
    c.k.token_stride = D;
    c.k.head_stride = PAGE * D;
    c.v = c.k;
    c.v.dtype = GQA_DTYPE_FP8_E5M2;
    c.v.data = vq;
    c.v.scales = (float *)v_scales;
    c.v.scales_len = G;
    c.page_size = PAGE;
    c.block_table = table;
    c.block_table_len = B * 3;
    c.blocks_per_seq = 3;

    /* One token per sequence per step, f32 rows, until each reaches its
     * length (sequence 1 stops early: its offsets give it no token). */
    for (pos = 0; pos < LENS[0]; pos++) {
        size_t offsets[B + 1], positions[B], t = 0, b;
        offsets[0] = 0;
        for (b = 0; b < B; b++) {
            positions[b] = pos;
            if (pos < LENS[b]) t++;
            offsets[b + 1] = t;
        }
        for (i = 0; i < t * G * D; i++) {
            rows_k[i] = next_value();
            rows_v[i] = next_value();
        }
        memset(&nk, 0, sizeof nk);
        nk.struct_size = sizeof nk;
        nk.dtype = GQA_DTYPE_F32;
        nk.k = rows_k;
        nk.k_len = t * G * D;
        nk.v = rows_v;
        nk.v_len = t * G * D;
        nk.offsets = offsets;
        nk.offsets_len = B + 1;
        nk.kv_heads = G;
        nk.head_dim_k = D;
        nk.head_dim_v = D;
        CHECK(gqa_append(&c, &nk, positions, B) == GQA_OK);
    }
    /* Append errors: past the block table's capacity, and a NaN row. */
    {
        size_t offsets[B + 1] = {0, 1, 1}, positions[B] = {3 * PAGE, 0};
        nk.k_len = nk.v_len = G * D;
        nk.offsets = offsets;
        CHECK(gqa_append(&c, &nk, positions, B) == GQA_ERR_CAPACITY);
        positions[0] = 0;
        rows_k[5] = NAN;
        CHECK(gqa_append(&c, &nk, positions, B) == GQA_ERR_INVALID_ARGUMENT);
        CHECK(strstr(gqa_last_error(), "new.k") != NULL);
    }

    for (i = 0; i < B * H * D; i++) q[i] = next_value();
    CHECK(gqa_plan_create(&s, NULL, &p) == GQA_OK);
    CHECK(gqa_plan_tier(p, &tier) == GQA_OK);
    CHECK(gqa_tier_available(tier) == 1);
    note("kernel", gqa_plan_kernel_name(p));
    note("tier", gqa_tier_name(tier));
    CHECK(gqa_plan_workspace_bytes(p, &ws_len) == GQA_OK);
    ws = malloc(ws_len);
    CHECK(ws != NULL);
    bt = make_batch(q, B * H * D, &c, LENS, B);
    CHECK(gqa_run(p, &bt, out, out_len, lse, lse_len, ws, ws_len) == GQA_OK);
    for (i = 0; i < out_len; i++) CHECK(isfinite(out[i]));
    free(ws);

    /* The same step host-driven: every work item run on its own, last
     * first; the result is bit for bit gqa_run's. */
    {
        size_t items = 0, st_len = 0, sc_len = 0, it;
        void *states, *scratch;
        float *out3 = malloc(out_len * sizeof *out3), *lse3 = malloc(lse_len * sizeof *lse3);
        CHECK(out3 != NULL && lse3 != NULL);
        CHECK(gqa_plan_work_items(p, &items) == GQA_OK);
        CHECK(items >= (size_t)B * G);
        CHECK(gqa_plan_state_bytes(p, &st_len) == GQA_OK);
        CHECK(gqa_plan_scratch_bytes(p, &sc_len) == GQA_OK);
        states = malloc(st_len);
        scratch = malloc(sc_len);
        CHECK(states != NULL && scratch != NULL);
        CHECK(gqa_begin(p, &bt, states, st_len) == GQA_OK);
        for (it = items; it-- > 0;) {
            CHECK(gqa_run_items(p, &bt, it, 1, states, st_len, scratch, sc_len) == GQA_OK);
        }
        CHECK(gqa_finish(p, &bt, states, st_len, out3, out_len, lse3, lse_len) == GQA_OK);
        CHECK(memcmp(out, out3, out_len * sizeof *out) == 0);
        CHECK(memcmp(lse, lse3, lse_len * sizeof *lse) == 0);
        CHECK(gqa_run_items(p, &bt, items, 1, states, st_len, scratch, sc_len) ==
              GQA_ERR_OUT_OF_BOUNDS);
        CHECK(strstr(gqa_last_error(), "first") != NULL);
        CHECK(gqa_run_items(p, &bt, 0, 1, states, st_len - 1, scratch, sc_len) ==
              GQA_ERR_BUFFER_TOO_SMALL);
        CHECK(gqa_run_items(p, &bt, 0, 1, states, st_len, NULL, sc_len) == GQA_ERR_NULL);
        CHECK(gqa_finish(p, &bt, states, st_len, out3, out_len - 1, lse3, lse_len) ==
              GQA_ERR_LENGTH);
        free(states);
        free(scratch);
        free(out3);
        free(lse3);
        note("host-driven items: ok", NULL);
    }
    gqa_plan_destroy(p);
    note("paged int8/e5m2 append + run: ok", NULL);
    return 0;
}

/* Runs the scenario: returns 0, or the line of the first failed check
 * (its message is in `log`). `out` gets [B, H, D] and `lse` [B, H] of the
 * paged quantized decode. */
int gqa_capi_consumer(uint64_t seed, float *out, size_t out_len, float *lse, size_t lse_len,
                      char *log, size_t log_cap) {
    int line;
    int32_t active = -1;
    log_buf = log;
    log_len = log_cap;
    log_buf[0] = '\0';
    rng_state = seed;

    CHECK(gqa_sizeof(GQA_STRUCT_SHAPE) == sizeof(gqa_shape));
    CHECK(gqa_sizeof(GQA_STRUCT_OPTIONS) == sizeof(gqa_options));
    CHECK(gqa_sizeof(GQA_STRUCT_KV) == sizeof(gqa_kv));
    CHECK(gqa_sizeof(GQA_STRUCT_CACHE) == sizeof(gqa_cache));
    CHECK(gqa_sizeof(GQA_STRUCT_BATCH) == sizeof(gqa_batch));
    CHECK(gqa_sizeof(GQA_STRUCT_NEW_KV) == sizeof(gqa_new_kv));
    CHECK(strlen(gqa_version()) > 0);
    CHECK(gqa_active_tier(&active) == GQA_OK && gqa_tier_available(active) == 1);
    CHECK(gqa_tier_available(GQA_TIER_SCALAR) == 1);
    note("version", gqa_version());

    if ((line = error_paths()) != 0) return line;
    if ((line = strided_and_merge()) != 0) return line;
    if ((line = latent_cache()) != 0) return line;
    if ((line = prefix_groups()) != 0) return line;
    return paged_quantized(out, out_len, lse, lse_len);
}
