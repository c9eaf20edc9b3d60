/*
 * gqa_kernels.h: the C ABI of gqa-kernels, CPU kernels for the decode step
 * of grouped-query attention (AVX-512, AVX2, NEON, scalar; chosen at run
 * time). C99 and C++.
 *
 * Conventions
 * - Every function that can fail returns an int32_t status: GQA_OK (0) or a
 *   GQA_ERR_ code; gqa_last_error() then holds a message for the calling
 *   thread naming the argument. No call aborts or unwinds into the host.
 * - Structs that may grow start with `struct_size`: set it to sizeof(the
 *   struct). A size smaller than the library's is rejected
 *   (GQA_ERR_STRUCT_SIZE), except the size of an earlier version of a
 *   struct that grew (gqa_options before `unit` and `precision`), whose
 *   missing fields read as 0; a larger one is read up to the fields the
 *   library knows.
 * - The caller owns every buffer. Lengths are in elements (values for KV
 *   buffers, 32 per q8_0 block); strides of KV views are in values too.
 * - Layouts: `outer_stride` is the stride between sequences (strided and
 *   ring caches) or pages (paged caches). `[B, G, L, D]` is
 *   (G*L*D, D, L*D); `[B, L, G, D]` is (L*G*D, G*D, D); pages
 *   `[G, page, D]` are (G*page*D, D, page*D).
 * - Results are bitwise identical for any thread count.
 *
 * The Rust documentation of each item (the crate's `capi` module and the
 * types it mirrors: Shape, Options, KvTensor, KvPages, Batch, NewKv) is
 * the reference for the semantics.
 */
#ifndef GQA_KERNELS_H
#define GQA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
#define GQA_OK 0
#define GQA_ERR_NULL 1             /* a required pointer was NULL */
#define GQA_ERR_INVALID_ARGUMENT 2 /* a value outside its domain */
#define GQA_ERR_LENGTH 3           /* an array of the wrong length */
#define GQA_ERR_OUT_OF_BOUNDS 4    /* a view, page or bias outside its buffer */
#define GQA_ERR_TYPE 5             /* a type the call does not take, or not the plan's */
#define GQA_ERR_TIER_UNAVAILABLE 6 /* the CPU lacks the tier */
#define GQA_ERR_BUFFER_TOO_SMALL 7 /* workspace smaller than the plan needs */
#define GQA_ERR_CAPACITY 8         /* append past a sequence's capacity */
#define GQA_ERR_STRUCT_SIZE 9      /* struct_size smaller than the library's */
#define GQA_ERR_ALIGNMENT 10       /* a buffer misaligned for its type */
#define GQA_ERR_PANIC 11           /* a library bug, reported instead of aborting */

/* KV element types. */
#define GQA_DTYPE_F32 0
#define GQA_DTYPE_F16 1
#define GQA_DTYPE_BF16 2
#define GQA_DTYPE_INT8 3     /* int8_t values, one float scale per row of head_dim */
#define GQA_DTYPE_Q8_0 4     /* llama.cpp block_q8_0: fp16 d + 32 int8 (34 bytes) */
#define GQA_DTYPE_FP8_E4M3 5 /* OCP E4M3FN bytes, one float scale per KV head (or 1) */
#define GQA_DTYPE_FP8_E5M2 6 /* OCP E5M2 bytes, one float scale per KV head (or 1) */
/* GGUF block formats, bit-compatible with llama.cpp's blocks of 32 values
 * (a gqa_kv's len counts values, 32 per block; any alignment): */
#define GQA_DTYPE_Q4_0 7     /* block_q4_0: fp16 d + 16 bytes of 4-bit codes (18 bytes) */
#define GQA_DTYPE_Q4_1 8     /* block_q4_1: fp16 d, fp16 m + 4-bit codes (20 bytes) */
#define GQA_DTYPE_Q5_0 9     /* block_q5_0: fp16 d + 32 fifth bits + 4-bit codes (22 bytes) */
#define GQA_DTYPE_Q5_1 10    /* block_q5_1: fp16 d, fp16 m + fifth bits + codes (24 bytes) */
#define GQA_DTYPE_IQ4_NL 11  /* block_iq4_nl: fp16 d + 4-bit codes into a fixed table (18 bytes) */
#define GQA_DTYPE_FP8_E4M3_ROW 12 /* OCP E4M3FN bytes, one float scale per row of head_dim (as INT8) */
#define GQA_DTYPE_FP8_DS_MLA 13 /* DeepSeek-V3.2 / FlashMLA FP8 latent row: 576 values in 656 bytes
                                   (512 E4M3FN, 4 float scales per 128, 64 bf16); len counts values
                                   (576 a row); K and V both, a latent cache (latent = 1) */

/* Tiers. */
#define GQA_TIER_AUTO (-1) /* GQA_KERNELS_ISA, else the best available */
#define GQA_TIER_SCALAR 0
#define GQA_TIER_AVX2 1
#define GQA_TIER_AVX512 2
#define GQA_TIER_NEON 3

/* Multiply-add units (gqa_options.unit, gqa_plan_unit). */
#define GQA_UNIT_AUTO 0      /* the plan chooses */
#define GQA_UNIT_F32_FMA 1   /* f32 FMA, every tier and dtype pair */
#define GQA_UNIT_BF16_DOT 2  /* AVX512-BF16 vdpbf16ps or Arm BF16 bfdot: bf16 K */
#define GQA_UNIT_INT8_DOT 3  /* vpdpbusd (AVX512-VNNI, AVX-VNNI): int8 K */
#define GQA_UNIT_AMX_BF16 4  /* AMX tdpbf16ps: bf16 K and V */
#define GQA_UNIT_AMX_INT8 5  /* AMX tdpbssd (probed only) */
/* Precision classes (gqa_options.precision). */
#define GQA_PRECISION_EXACT 0 /* the f32 kernels' tolerance (default) */
#define GQA_PRECISION_FAST 1  /* q (and P) rounded to the unit's type */

/* Cache layouts. */
#define GQA_LAYOUT_STRIDED 0
#define GQA_LAYOUT_PAGED 1
#define GQA_LAYOUT_RING 2

/* Struct ids for gqa_sizeof. */
#define GQA_STRUCT_SHAPE 0
#define GQA_STRUCT_OPTIONS 1
#define GQA_STRUCT_KV 2
#define GQA_STRUCT_CACHE 3
#define GQA_STRUCT_BATCH 4
#define GQA_STRUCT_NEW_KV 5

/* The problem shape. */
typedef struct gqa_shape {
    size_t struct_size;
    size_t batch;      /* sequences B */
    size_t heads;      /* query heads H */
    size_t kv_heads;   /* KV heads G (divides H) */
    size_t head_dim_k; /* head dim of Q and K */
    size_t head_dim_v; /* head dim of V and the output */
    size_t q_len;      /* query tokens per sequence (0 is read as 1) */
    size_t max_kv_len; /* longest L_b a run passes; 0 = unbounded (no KV splits) */
    int32_t k_dtype;   /* GQA_DTYPE_ */
    int32_t v_dtype;
} gqa_shape;

/* Plan options; 0 means "default" for every field. */
typedef struct gqa_options {
    size_t struct_size;
    float scale;    /* score scale; 0 = 1/sqrt(head_dim_k) */
    int32_t tier;   /* GQA_TIER_AUTO or a GQA_TIER_ code */
    size_t threads; /* worker threads of gqa_run (0 or 1: the caller's thread) */
    size_t window;  /* sliding window; 0 = none */
    float softcap;  /* logit softcap; 0 = none */
    int32_t unit;      /* GQA_UNIT_AUTO or a GQA_UNIT_ code (added later: see struct_size) */
    int32_t precision; /* a GQA_PRECISION_ code (added with unit) */
    int32_t cascade;   /* 1: the plan takes shared-prefix groups (added
                          after precision: see struct_size) */
} gqa_options;

/* One K or V buffer. gqa_run reads `data`; gqa_append writes `data` and,
 * for int8 and fp8_e4m3_row, `scales`. */
typedef struct gqa_kv {
    int32_t dtype;  /* GQA_DTYPE_ */
    void *data;     /* the values (q8_0: blocks) */
    size_t len;     /* values in data (q8_0: 32 per block) */
    float *scales;  /* int8, fp8_e4m3_row: one per row of head_dim values
                       (the row at value offset o has scales[o / head_dim]);
                       fp8: one per KV head, or one; other types: NULL */
    size_t scales_len;
    size_t outer_stride; /* values between sequences (strided, ring) or pages (paged) */
    size_t token_stride; /* values between positions (slots) */
    size_t head_stride;  /* values between KV heads */
} gqa_kv;

/* A KV cache. */
typedef struct gqa_cache {
    size_t struct_size;
    int32_t layout;              /* GQA_LAYOUT_ */
    gqa_kv k;
    gqa_kv v;
    size_t page_size;            /* paged: positions per page */
    const uint32_t *block_table; /* paged: B rows of blocks_per_seq page indices */
    size_t block_table_len;
    size_t blocks_per_seq;
    size_t capacity;             /* ring: slots per sequence; strided: positions (append) */
    const size_t *first_pos;     /* ring (gqa_run): B absolute first positions */
    /* Added after the first version (a smaller struct_size passes 0): */
    int32_t latent;              /* 1: a latent (MLA) cache: V is the leading
                                    head_dim_v values of each K row (v is not
                                    read; head_dim_v <= head_dim_k), each row
                                    read once; gqa_append writes each new
                                    row once, from new_kv->k) */
} gqa_cache;

/* The inputs of one step. */
typedef struct gqa_batch {
    size_t struct_size;
    const float *q;          /* [T, H, head_dim_k] */
    size_t q_elems;
    const gqa_cache *cache;
    const size_t *seq_lens;  /* L_b, B entries */
    size_t n_seqs;           /* B (must equal the plan's batch) */
    const size_t *q_offsets; /* NULL, or B + 1 ragged token offsets */
    const float *bias;       /* NULL, or an additive bias: element
                                [b*seq + t*token + h*head + j]; -inf
                                masks, values below -2^127 count as
                                -2^127, +inf or NaN at a position the
                                step reads is GQA_ERR_INVALID_ARGUMENT */
    size_t bias_len;
    size_t bias_seq_stride;
    size_t bias_token_stride;
    size_t bias_head_stride; /* 0: one bias for every head */
    /* Added after the first version (a smaller struct_size passes none): */
    const uint64_t *tree_mask; /* NULL, or a draft-tree mask, a word per
                                  query token: bit j of token t's word set
                                  when t sees draft token j of its own
                                  sequence (the token at L_b - q_len_b + j);
                                  bit t set, no bit above t, at most 64
                                  tokens a sequence. The cached positions
                                  before the draft follow the causal rule. */
    size_t tree_mask_len;
    /* Added after the tree mask (a smaller struct_size passes none): */
    const uint32_t *positions;       /* NULL, or sparse position lists: each
                                        row sees only the positions its list
                                        names (strictly increasing, below
                                        L_b), lists one after another */
    size_t positions_len;
    const size_t *position_offsets;  /* n_seqs + 1 offsets (or
                                        n_seqs * kv_heads + 1 with
                                        positions_per_kv_head) from 0 */
    size_t position_offsets_len;
    int32_t positions_per_kv_head;   /* 1: a list per (sequence, KV head) */
    /* NULL, or shared-prefix groups (added after the lists): group p is
     * prefix_members[prefix_offsets[p] .. prefix_offsets[p + 1]] (at least
     * one, each sequence in one group at most), sharing positions
     * 0 .. prefix_lens[p] read from its first member's rows, which end
     * before every member's new tokens. Needs a plan with `cascade`; not
     * with a bias or position lists. */
    const size_t *prefix_lens;       /* one per group */
    size_t n_prefix_groups;
    const size_t *prefix_offsets;    /* n_prefix_groups + 1 offsets from 0 */
    const size_t *prefix_members;    /* sequence indices */
    size_t prefix_members_len;
} gqa_batch;

/* New K/V rows for gqa_append: [T, G, D] of f32, f16 or bf16. */
typedef struct gqa_new_kv {
    size_t struct_size;
    int32_t dtype;          /* GQA_DTYPE_F32, _F16 or _BF16 */
    const void *k;
    size_t k_len;
    const void *v;
    size_t v_len;
    const size_t *offsets;  /* B + 1 token offsets from 0 */
    size_t offsets_len;
    size_t kv_heads;
    size_t head_dim_k;
    size_t head_dim_v;
} gqa_new_kv;

/* An opaque plan. */
typedef struct gqa_plan gqa_plan;

/* The message of the last failed call on this thread ("" after a success);
 * valid until the next call on this thread. */
const char *gqa_last_error(void);
/* The library version, e.g. "0.1.0". */
const char *gqa_version(void);
/* sizeof of the library's struct GQA_STRUCT_<id>, or 0 for an unknown id. */
size_t gqa_sizeof(int32_t id);
/* "scalar", "avx2", "avx512", "neon", or NULL for an unknown code. */
const char *gqa_tier_name(int32_t tier);
/* 1 if this CPU runs the tier, else 0. */
int32_t gqa_tier_available(int32_t tier);
/* The tier plans use by default. */
int32_t gqa_active_tier(int32_t *out);

/* Makes a plan (options may be NULL); free it with gqa_plan_destroy. */
int32_t gqa_plan_create(const gqa_shape *shape, const gqa_options *options, gqa_plan **out);
void gqa_plan_destroy(gqa_plan *plan);
/* One attention-sink logit per query head (n == heads). */
int32_t gqa_plan_set_sinks(gqa_plan *plan, const float *sinks, size_t n);
/* One ALiBi slope per query head (n == heads), or slopes from max_bias. */
int32_t gqa_plan_set_alibi(gqa_plan *plan, const float *slopes, size_t n);
int32_t gqa_plan_set_alibi_max_bias(gqa_plan *plan, float max_bias);
/* Exact workspace size gqa_run needs, in bytes (any alignment). */
int32_t gqa_plan_workspace_bytes(const gqa_plan *plan, size_t *out);
int32_t gqa_plan_tier(const gqa_plan *plan, int32_t *out);
/* The plan's multiply-add unit (a GQA_UNIT_ code, never AUTO). */
int32_t gqa_plan_unit(const gqa_plan *plan, int32_t *out);
/* "f32-fma", "bf16-dot", "int8-dot", "amx-bf16", "amx-int8"; NULL otherwise. */
const char *gqa_unit_name(int32_t unit);
/* The kernel instance of one query token, e.g. "decode_f16_d128_r4__avx512". */
const char *gqa_plan_kernel_name(const gqa_plan *plan);

/* Runs one step: out [T, H, head_dim_v]; lse [T, H] (natural log; may be
 * NULL). Every argument is checked before any buffer is read; nothing is
 * allocated. A plan may be shared by threads running on disjoint out,
 * lse and workspace buffers. */
int32_t gqa_run(const gqa_plan *plan, const gqa_batch *batch, float *out, size_t out_len,
                float *lse, size_t lse_len, void *workspace, size_t workspace_len);

/* Host-driven threading: a step is gqa_plan_work_items independent items
 * (one per sequence, KV split and KV head). gqa_begin checks the batch and
 * resets the states buffer (gqa_plan_state_bytes, any alignment and
 * contents); gqa_run_items runs items [first, first + count) into their
 * states, with its own scratch (gqa_plan_scratch_bytes) -- calls on
 * disjoint ranges may run at the same time on any threads; once every
 * item has run, gqa_finish merges the states into out and lse (an item
 * that did not run contributes nothing). Pass the same batch to all
 * four calls. With a cascade plan the items are followed by prefix slots,
 * one per (prefix split s, KV head g, sequence): group p's item for (s, g)
 * takes the slots from B*S*G + (s*G + g)*B + prefix_offsets[p] on, one per
 * member, and a range that cuts a group's slots is refused. */
int32_t gqa_plan_work_items(const gqa_plan *plan, size_t *out);
int32_t gqa_plan_state_bytes(const gqa_plan *plan, size_t *out);
int32_t gqa_plan_scratch_bytes(const gqa_plan *plan, size_t *out);
int32_t gqa_begin(const gqa_plan *plan, const gqa_batch *batch, void *states, size_t states_len);
int32_t gqa_run_items(const gqa_plan *plan, const gqa_batch *batch, size_t first, size_t count,
                      void *states, size_t states_len, void *scratch, size_t scratch_len);
int32_t gqa_finish(const gqa_plan *plan, const gqa_batch *batch, const void *states,
                   size_t states_len, float *out, size_t out_len, float *lse, size_t lse_len);

/* Merges (other_out, other_lse) into (out, lse): rows x head_dim_v states
 * over disjoint KV ranges. */
int32_t gqa_merge_states(float *out, float *lse, const float *other_out, const float *other_lse,
                         size_t rows, size_t head_dim_v);

/* Writes new tokens into the cache in place (quantizing for int8, q8_0 and
 * fp8 caches): token i of sequence b at position positions[b] + i.
 * Into a latent cache (cache->latent = 1) each token's rows come from
 * new_kv->k alone and land in cache->k once; new_kv->v must be empty
 * (v_len 0). Everything is checked before the first write. */
int32_t gqa_append(const gqa_cache *cache, const gqa_new_kv *new_kv, const size_t *positions,
                   size_t n_seqs);

#ifdef __cplusplus
}
#endif

#endif /* GQA_KERNELS_H */
