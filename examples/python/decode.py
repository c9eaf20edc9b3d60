"""A Python host of gqa-kernels through its C ABI (ctypes + numpy).

Loads the cdylib (`cargo build --release` makes target/release/
libgqa_kernels.so), decodes one GQA step over a strided f16 cache of
numpy arrays, verifies a 4-token draft tree over it (a tree mask), runs it
over sparse position lists (a top-k selection per sequence), runs an
MLA-style step over a latent cache (V = the leading values of K, rows
appended once with gqa_append), a
shared-prefix (cascade) step, fills
an int8 and an fp8 E4M3 cache with a scale per row token by token with
gqa_append and decodes them, and checks
each against a numpy float64 reference. Exits
non-zero on any mismatch.

    cargo build --release && python3 examples/python/decode.py [path/to/libgqa_kernels.so]
"""

import ctypes as C
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_LIB = HERE.parent.parent / "target" / "release" / "libgqa_kernels.so"

GQA_OK = 0
GQA_DTYPE_F32, GQA_DTYPE_F16, GQA_DTYPE_INT8 = 0, 1, 3
GQA_DTYPE_FP8_E4M3_ROW = 12
GQA_TIER_AUTO = -1
GQA_LAYOUT_STRIDED = 0


class Shape(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t),
        ("batch", C.c_size_t),
        ("heads", C.c_size_t),
        ("kv_heads", C.c_size_t),
        ("head_dim_k", C.c_size_t),
        ("head_dim_v", C.c_size_t),
        ("q_len", C.c_size_t),
        ("max_kv_len", C.c_size_t),
        ("k_dtype", C.c_int32),
        ("v_dtype", C.c_int32),
    ]


class Options(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t),
        ("scale", C.c_float),
        ("tier", C.c_int32),
        ("threads", C.c_size_t),
        ("window", C.c_size_t),
        ("softcap", C.c_float),
        ("unit", C.c_int32),
        ("precision", C.c_int32),
        ("cascade", C.c_int32),
    ]


class Kv(C.Structure):
    _fields_ = [
        ("dtype", C.c_int32),
        ("data", C.c_void_p),
        ("len", C.c_size_t),
        ("scales", C.POINTER(C.c_float)),
        ("scales_len", C.c_size_t),
        ("outer_stride", C.c_size_t),
        ("token_stride", C.c_size_t),
        ("head_stride", C.c_size_t),
    ]


class Cache(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t),
        ("layout", C.c_int32),
        ("k", Kv),
        ("v", Kv),
        ("page_size", C.c_size_t),
        ("block_table", C.POINTER(C.c_uint32)),
        ("block_table_len", C.c_size_t),
        ("blocks_per_seq", C.c_size_t),
        ("capacity", C.c_size_t),
        ("first_pos", C.POINTER(C.c_size_t)),
        ("latent", C.c_int32),
    ]


class BatchS(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t),
        ("q", C.POINTER(C.c_float)),
        ("q_elems", C.c_size_t),
        ("cache", C.POINTER(Cache)),
        ("seq_lens", C.POINTER(C.c_size_t)),
        ("n_seqs", C.c_size_t),
        ("q_offsets", C.POINTER(C.c_size_t)),
        ("bias", C.POINTER(C.c_float)),
        ("bias_len", C.c_size_t),
        ("bias_seq_stride", C.c_size_t),
        ("bias_token_stride", C.c_size_t),
        ("bias_head_stride", C.c_size_t),
        ("tree_mask", C.POINTER(C.c_uint64)),
        ("tree_mask_len", C.c_size_t),
        ("positions", C.POINTER(C.c_uint32)),
        ("positions_len", C.c_size_t),
        ("position_offsets", C.POINTER(C.c_size_t)),
        ("position_offsets_len", C.c_size_t),
        ("positions_per_kv_head", C.c_int32),
        ("prefix_lens", C.POINTER(C.c_size_t)),
        ("n_prefix_groups", C.c_size_t),
        ("prefix_offsets", C.POINTER(C.c_size_t)),
        ("prefix_members", C.POINTER(C.c_size_t)),
        ("prefix_members_len", C.c_size_t),
    ]


class NewKv(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t),
        ("dtype", C.c_int32),
        ("k", C.c_void_p),
        ("k_len", C.c_size_t),
        ("v", C.c_void_p),
        ("v_len", C.c_size_t),
        ("offsets", C.POINTER(C.c_size_t)),
        ("offsets_len", C.c_size_t),
        ("kv_heads", C.c_size_t),
        ("head_dim_k", C.c_size_t),
        ("head_dim_v", C.c_size_t),
    ]


def load(path):
    lib = C.CDLL(str(path))
    lib.gqa_last_error.restype = C.c_char_p
    lib.gqa_version.restype = C.c_char_p
    lib.gqa_sizeof.restype = C.c_size_t
    lib.gqa_sizeof.argtypes = [C.c_int32]
    lib.gqa_plan_kernel_name.restype = C.c_char_p
    lib.gqa_plan_kernel_name.argtypes = [C.c_void_p]
    lib.gqa_plan_create.argtypes = [C.POINTER(Shape), C.POINTER(Options), C.POINTER(C.c_void_p)]
    lib.gqa_plan_destroy.argtypes = [C.c_void_p]
    lib.gqa_plan_workspace_bytes.argtypes = [C.c_void_p, C.POINTER(C.c_size_t)]
    lib.gqa_run.argtypes = [
        C.c_void_p, C.POINTER(BatchS), C.POINTER(C.c_float), C.c_size_t,
        C.POINTER(C.c_float), C.c_size_t, C.c_void_p, C.c_size_t,
    ]
    lib.gqa_append.argtypes = [C.POINTER(Cache), C.POINTER(NewKv), C.POINTER(C.c_size_t), C.c_size_t]
    for i, s in enumerate([Shape, Options, Kv, Cache, BatchS, NewKv]):
        if lib.gqa_sizeof(i) != C.sizeof(s):
            sys.exit(f"struct {s.__name__}: library {lib.gqa_sizeof(i)} bytes, ctypes {C.sizeof(s)}")
    return lib


def check(lib, status, what):
    if status != GQA_OK:
        sys.exit(f"{what}: status {status}: {lib.gqa_last_error().decode()}")


def fptr(a):
    return a.ctypes.data_as(C.POINTER(C.c_float))


def reference(q, k, v, lens, g):
    """float64 GQA decode: q [B, H, D], k/v [B, G, L, D] (already dequantized)."""
    b_count, h_count, d = q.shape
    r = h_count // g
    out = np.zeros((b_count, h_count, v.shape[-1]))
    for b in range(b_count):
        for h in range(h_count):
            kk = k[b, h // r, : lens[b]].astype(np.float64)
            vv = v[b, h // r, : lens[b]].astype(np.float64)
            s = kk @ q[b, h].astype(np.float64) / np.sqrt(d)
            w = np.exp(s - s.max())
            out[b, h] = (w / w.sum()) @ vv
    return out


def tree_reference(q, k, v, lens, g, q_len, tree):
    """float64 decode of q_len draft tokens per sequence under a tree mask:
    q [B * q_len, H, D]; token t of sequence b sees the positions before
    its draft and draft token j where bit j of tree[b * q_len + t] is set."""
    tokens, h_count, d = q.shape
    r = h_count // g
    out = np.zeros((tokens, h_count, v.shape[-1]))
    for b in range(len(lens)):
        first = lens[b] - q_len
        for t in range(q_len):
            word = int(tree[b * q_len + t])
            seen = list(range(first)) + [first + j for j in range(q_len) if word >> j & 1]
            for h in range(h_count):
                kk = k[b, h // r, seen].astype(np.float64)
                vv = v[b, h // r, seen].astype(np.float64)
                s = kk @ q[b * q_len + t, h].astype(np.float64) / np.sqrt(d)
                w = np.exp(s - s.max())
                out[b * q_len + t, h] = (w / w.sum()) @ vv
    return out


def decode(lib, shape, cache, q, lens, tree=None, lists=None, groups=None):
    plan = C.c_void_p()
    opts = Options(C.sizeof(Options), 0.0, GQA_TIER_AUTO, 1, 0, 0.0)
    opts.cascade = 1 if groups is not None else 0
    check(lib, lib.gqa_plan_create(C.byref(shape), C.byref(opts), C.byref(plan)), "plan")
    ws_len = C.c_size_t()
    check(lib, lib.gqa_plan_workspace_bytes(plan, C.byref(ws_len)), "workspace")
    ws = np.empty(ws_len.value, dtype=np.uint8)
    out = np.full(q.shape[0] * q.shape[1] * shape.head_dim_v, np.nan, dtype=np.float32)
    seq = (C.c_size_t * len(lens))(*lens)
    batch = BatchS(C.sizeof(BatchS), fptr(q), q.size, C.pointer(cache), seq, len(lens))
    if tree is not None:
        batch.tree_mask = tree.ctypes.data_as(C.POINTER(C.c_uint64))
        batch.tree_mask_len = tree.size
    if lists is not None:
        positions, offsets = lists
        batch.positions = positions.ctypes.data_as(C.POINTER(C.c_uint32))
        batch.positions_len = positions.size
        batch.position_offsets = offsets.ctypes.data_as(C.POINTER(C.c_size_t))
        batch.position_offsets_len = offsets.size
    if groups is not None:
        glens, goffsets, gmembers = groups
        batch.prefix_lens = glens.ctypes.data_as(C.POINTER(C.c_size_t))
        batch.n_prefix_groups = glens.size
        batch.prefix_offsets = goffsets.ctypes.data_as(C.POINTER(C.c_size_t))
        batch.prefix_members = gmembers.ctypes.data_as(C.POINTER(C.c_size_t))
        batch.prefix_members_len = gmembers.size
    check(lib, lib.gqa_run(plan, C.byref(batch), fptr(out), out.size, None, 0,
                           ws.ctypes.data_as(C.c_void_p), ws.size), "run")
    name = lib.gqa_plan_kernel_name(plan).decode()
    lib.gqa_plan_destroy(plan)
    return out.reshape(q.shape[0], q.shape[1], -1), name


def kv(dtype, array, scales=None, outer=0, token=0, head=0):
    s = scales.ctypes.data_as(C.POINTER(C.c_float)) if scales is not None else None
    return Kv(dtype, array.ctypes.data_as(C.c_void_p), array.size, s,
              0 if scales is None else scales.size, outer, token, head)


def e4m3(b):
    """OCP fp8 E4M3FN bytes as float64 (bias 7, subnormals at exponent 0;
    the encoder never writes the NaN bytes)."""
    b = b.astype(np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e, m = (b >> 3) & 15, (b & 7).astype(np.float64)
    return sign * np.where(e == 0, m / 8 * 2.0 ** -6, (1 + m / 8) * 2.0 ** (e - 7))


def append_and_decode(lib, code, vt, deq, qbound, label, rng, q, lens, strides,
                      b_count, h_count, g, d, max_len):
    """A cache of type `code` (values `vt`, one scale per row, read back by
    `deq`) written token by token with gqa_append, decoded, and checked
    against numpy on the dequantized cache and, within `qbound`, on the
    unquantized source."""
    kq = np.zeros((b_count, g, max_len, d), dtype=vt)
    vq = np.zeros_like(kq)
    ks = np.zeros((b_count, g, max_len), dtype=np.float32)
    vs = np.zeros_like(ks)
    icache = Cache(C.sizeof(Cache), GQA_LAYOUT_STRIDED,
                   kv(code, kq, ks, *strides), kv(code, vq, vs, *strides))
    icache.capacity = max_len
    src_k = rng.uniform(-1, 1, (b_count, g, max_len, d)).astype(np.float32)
    src_v = rng.uniform(-1, 1, (b_count, g, max_len, d)).astype(np.float32)
    for pos in range(max(lens)):
        rows = [b for b in range(b_count) if pos < lens[b]]
        nk = np.ascontiguousarray(src_k[rows, :, pos])  # [T, G, D]
        nv = np.ascontiguousarray(src_v[rows, :, pos])
        offsets = [0]
        for b in range(b_count):
            offsets.append(offsets[-1] + (1 if pos < lens[b] else 0))
        off = (C.c_size_t * len(offsets))(*offsets)
        new = NewKv(C.sizeof(NewKv), GQA_DTYPE_F32, nk.ctypes.data_as(C.c_void_p), nk.size,
                    nv.ctypes.data_as(C.c_void_p), nv.size, off, len(offsets), g, d, d)
        positions = (C.c_size_t * b_count)(*([pos] * b_count))
        check(lib, lib.gqa_append(C.byref(icache), C.byref(new), positions, b_count), "append")
    shape8 = Shape(C.sizeof(Shape), b_count, h_count, g, d, d, 1, 0, code, code)
    got8, name8 = decode(lib, shape8, icache, q, lens)
    deq_k = deq(kq) * ks[..., None]
    deq_v = deq(vq) * vs[..., None]
    want8 = reference(q, deq_k, deq_v, lens, g)
    err8 = np.abs(got8 - want8).max()
    # And the quantization error itself, against the f32 source rows.
    qerr = np.abs(got8 - reference(q, src_k, src_v, lens, g)).max()
    print(f"{label} cache via gqa_append, {name8}: max |out - numpy| = {err8:.2e} "
          f"(vs the unquantized source: {qerr:.2e})")
    if not err8 < 1e-4 or not qerr < qbound:
        sys.exit(f"{label} decode disagrees with the numpy reference")


def main():
    lib = load(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_LIB)
    rng = np.random.default_rng(7)
    b_count, h_count, g, d, max_len = 2, 8, 2, 64, 48
    lens = [45, 11]
    # f16 cache [B, G, L, D] as numpy arrays, decoded in place.
    k = rng.uniform(-1, 1, (b_count, g, max_len, d)).astype(np.float16)
    v = rng.uniform(-1, 1, (b_count, g, max_len, d)).astype(np.float16)
    q = rng.uniform(-1, 1, (b_count, h_count, d)).astype(np.float32)
    strides = (g * max_len * d, d, max_len * d)
    cache = Cache(C.sizeof(Cache), GQA_LAYOUT_STRIDED,
                  kv(GQA_DTYPE_F16, k, None, *strides), kv(GQA_DTYPE_F16, v, None, *strides))
    shape = Shape(C.sizeof(Shape), b_count, h_count, g, d, d, 1, 0, GQA_DTYPE_F16, GQA_DTYPE_F16)
    got, name = decode(lib, shape, cache, q, lens)
    want = reference(q, k, v, lens, g)
    err = np.abs(got - want).max()
    print(f"gqa-kernels {lib.gqa_version().decode()}: f16 cache, {name}: max |out - numpy| = {err:.2e}")
    if not err < 1e-4:
        sys.exit("f16 decode disagrees with the numpy reference")

    # Speculative verification: 4 draft tokens per sequence (the last 4
    # positions of the cache) forming a tree, token 0 the root, tokens 1
    # and 2 its children, token 3 a child of 1; each token sees the
    # prefix, its ancestors and itself.
    q_len = 4
    tree = np.array([0b0001, 0b0011, 0b0101, 0b1011] * b_count, dtype=np.uint64)
    qd = rng.uniform(-1, 1, (b_count * q_len, h_count, d)).astype(np.float32)
    shape_t = Shape(C.sizeof(Shape), b_count, h_count, g, d, d, q_len, 0,
                    GQA_DTYPE_F16, GQA_DTYPE_F16)
    got_t, name_t = decode(lib, shape_t, cache, qd, lens, tree)
    err_t = np.abs(got_t - tree_reference(qd, k, v, lens, g, q_len, tree)).max()
    print(f"f16 cache, 4-token draft tree, {name_t}: max |out - numpy| = {err_t:.2e}")
    if not err_t < 1e-4:
        sys.exit("tree-masked decode disagrees with the numpy reference")

    # Sparse attention: each sequence attends only to the positions its
    # list names (a top-k selection), read in place from the cache.
    sel = [np.sort(rng.choice(n, size=max(1, n // 3), replace=False)) for n in lens]
    positions = np.concatenate(sel).astype(np.uint32)
    offsets = np.cumsum([0] + [len(x) for x in sel]).astype(np.uintp)
    got_s, name_s = decode(lib, shape, cache, q, lens, lists=(positions, offsets))
    want_s = np.stack([reference(q[b:b + 1], k[b:b + 1][:, :, sel[b]], v[b:b + 1][:, :, sel[b]],
                                 [len(sel[b])], g)[0] for b in range(b_count)])
    err_s = np.abs(got_s - want_s).max()
    print(f"f16 cache, sparse lists ({positions.size} of {sum(lens)} positions), {name_s}: "
          f"max |out - numpy| = {err_s:.2e}")
    if not err_s < 1e-4:
        sys.exit("sparse decode disagrees with the numpy reference")

    # Shared-prefix (cascade) decode: three sequences share a 25-token
    # prompt stored once, in sequence 1's rows (the group's first member);
    # the others' rows below 25 are never read. The prefix is read once
    # for all three, as one tile of their query rows.
    lens_c = [40, 45, 30]
    kc = rng.uniform(-1, 1, (3, g, max_len, d)).astype(np.float16)
    vc = rng.uniform(-1, 1, (3, g, max_len, d)).astype(np.float16)
    qc = rng.uniform(-1, 1, (3, h_count, d)).astype(np.float32)
    ccache = Cache(C.sizeof(Cache), GQA_LAYOUT_STRIDED,
                   kv(GQA_DTYPE_F16, kc, None, *strides), kv(GQA_DTYPE_F16, vc, None, *strides))
    shape_c = Shape(C.sizeof(Shape), 3, h_count, g, d, d, 1, 0, GQA_DTYPE_F16, GQA_DTYPE_F16)
    groups = (np.array([25], dtype=np.uintp), np.array([0, 3], dtype=np.uintp),
              np.array([1, 0, 2], dtype=np.uintp))
    got_c, name_c = decode(lib, shape_c, ccache, qc, lens_c, groups=groups)
    ks_, vs_ = kc.copy(), vc.copy()
    ks_[:, :, :25], vs_[:, :, :25] = kc[1, :, :25], vc[1, :, :25]
    err_c = np.abs(got_c - reference(qc, ks_, vs_, lens_c, g)).max()
    print(f"f16 cache, 3 sequences sharing a 25-token prefix, {name_c}: "
          f"max |out - numpy| = {err_c:.2e}")
    if not err_c < 1e-4:
        sys.exit("cascade decode disagrees with the numpy reference")

    # Multi-head latent attention (absorbed decode): one cached latent row
    # per position, 16 query heads on one KV head; K is the whole row (a
    # 64-value latent + 16 rotary values here), V its leading 64 values.
    # cache.latent = 1 declares it: v is not read.
    hm, dk_m, dv_m = 16, 80, 64
    lat = rng.uniform(-1, 1, (b_count, 1, max_len, dk_m)).astype(np.float16)
    qm = rng.uniform(-1, 1, (b_count, hm, dk_m)).astype(np.float32)
    lstrides = (max_len * dk_m, dk_m, max_len * dk_m)
    lcache = Cache(C.sizeof(Cache), GQA_LAYOUT_STRIDED, kv(GQA_DTYPE_F16, lat, None, *lstrides))
    lcache.latent = 1
    shape_m = Shape(C.sizeof(Shape), b_count, hm, 1, dk_m, dv_m, 1, 0,
                    GQA_DTYPE_F16, GQA_DTYPE_F16)
    got_m, name_m = decode(lib, shape_m, lcache, qm, lens)
    err_m = np.abs(got_m - reference(qm, lat, lat[..., :dv_m], lens, 1)).max()
    print(f"latent (MLA) f16 cache, H {hm}, Dk {dk_m}, Dv {dv_m}, {name_m}: "
          f"max |out - numpy| = {err_m:.2e}")
    if not err_m < 1e-4:
        sys.exit("latent decode disagrees with the numpy reference")
    # gqa_append into the latent cache: each new token's row comes from
    # new.k alone (new.v empty) and lands once; rewrite the last position
    # of every sequence from f32 rows and decode again.
    last = [n - 1 for n in lens]
    new_rows = rng.uniform(-1, 1, (b_count, 1, dk_m)).astype(np.float32)  # [T, G, Dk]
    off = (C.c_size_t * (b_count + 1))(*range(b_count + 1))
    new = NewKv(C.sizeof(NewKv), GQA_DTYPE_F32, new_rows.ctypes.data_as(C.c_void_p),
                new_rows.size, None, 0, off, b_count + 1, 1, dk_m, dv_m)
    lcache.capacity = max_len
    positions = (C.c_size_t * b_count)(*last)
    check(lib, lib.gqa_append(C.byref(lcache), C.byref(new), positions, b_count), "latent append")
    for b, j in enumerate(last):
        if not np.array_equal(lat[b, 0, j], new_rows[b, 0].astype(np.float16)):
            sys.exit("gqa_append did not write the latent row")
    got_a, _ = decode(lib, shape_m, lcache, qm, lens)
    err_a = np.abs(got_a - reference(qm, lat, lat[..., :dv_m], lens, 1)).max()
    print(f"latent cache after gqa_append: max |out - numpy| = {err_a:.2e}")
    if not err_a < 1e-4:
        sys.exit("latent decode after append disagrees with the numpy reference")

    # An int8 cache and an fp8 E4M3 cache with a scale per row, each written
    # token by token with gqa_append (quantized on write), then decoded; the
    # reference reads the dequantized cache.
    for code, vt, deq, qbound, label in [
        (GQA_DTYPE_INT8, np.int8, lambda x: x.astype(np.float64), 2e-2, "int8"),
        (GQA_DTYPE_FP8_E4M3_ROW, np.uint8, e4m3, 5e-2, "fp8e4m3_row"),
    ]:
        append_and_decode(lib, code, vt, deq, qbound, label, rng, q, lens, strides,
                          b_count, h_count, g, d, max_len)

    # A bad call returns a status and a message, never a crash.
    bad = Shape(C.sizeof(Shape), b_count, 7, g, d, d, 1, 0, GQA_DTYPE_F16, GQA_DTYPE_F16)
    plan = C.c_void_p()
    status = lib.gqa_plan_create(C.byref(bad), None, C.byref(plan))
    print(f"bad shape: status {status}: {lib.gqa_last_error().decode()}")
    if status == GQA_OK:
        sys.exit("a bad shape was accepted")


if __name__ == "__main__":
    main()
