"""Decode steps on every layout and cache type against the float64
reference of reference.py."""

import numpy as np
import pytest

import gqa_kernels as gk
from reference import (
    assert_close,
    attention,
    bf16_bits,
    blocks_decode,
    blocks_random,
    bf16_decode,
    e4m3_decode,
    e5m2_decode,
    finite_fp8,
    q8_0_decode,
    q8_0_encode_random,
)

B, H, G, D = 3, 8, 2, 64
L = 50
SEQ = [50, 17, 1]


def rng(seed=0):
    return np.random.default_rng(seed)


def logical_to(layout, x):
    """A [B, G, L, D] logical array in the requested storage layout."""
    return x if layout == "bgld" else np.ascontiguousarray(x.swapaxes(1, 2))


@pytest.mark.parametrize("layout", ["bgld", "blgd"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_float_caches(layout, dtype):
    r = rng(1)
    k64 = r.standard_normal((B, G, L, D))
    v64 = r.standard_normal((B, G, L, D))
    if dtype == "f32":
        k, v = k64.astype(np.float32), v64.astype(np.float32)
        kl, vl = k.astype(np.float64), v.astype(np.float64)
    elif dtype == "f16":
        k, v = k64.astype(np.float16), v64.astype(np.float16)
        kl, vl = k.astype(np.float64), v.astype(np.float64)
    else:
        k, v = bf16_bits(k64), bf16_bits(v64)
        kl, vl = bf16_decode(k), bf16_decode(v)
    q = r.standard_normal((B, H, D)).astype(np.float32)
    plan = gk.Plan(B, H, G, D, dtype=dtype, max_kv_len=L)
    out, lse = plan.run(q, logical_to(layout, k), logical_to(layout, v), SEQ, lse=True, layout=layout)
    want, want_lse = attention(q, kl, vl, SEQ)
    assert out.shape == (B, H, D) and out.dtype == np.float32
    assert_close(out, want, np.abs(vl).max(), lse, want_lse)


def test_strided_view_without_copy():
    """A slice of a bigger cache (non-contiguous) is read in place."""
    r = rng(2)
    big_k = r.standard_normal((B, G, 2 * L, D)).astype(np.float16)
    big_v = r.standard_normal((B, G, 2 * L, D)).astype(np.float16)
    k, v = big_k[:, :, 10 : 10 + L], big_v[:, :, 10 : 10 + L]
    assert not k.flags.c_contiguous
    q = r.standard_normal((B, H, D)).astype(np.float32)
    out = gk.Plan(B, H, G, D, dtype="f16").run(q, k, v, SEQ)
    want, _ = attention(q, k.astype(np.float64), v.astype(np.float64), SEQ)
    assert_close(out, want, np.abs(v).max())


def test_no_copy_changes_are_seen():
    """The same buffers, changed in place, give the next run's result."""
    r = rng(3)
    k = r.standard_normal((B, G, L, D)).astype(np.float16)
    v = r.standard_normal((B, G, L, D)).astype(np.float16)
    q = r.standard_normal((B, H, D)).astype(np.float32)
    plan = gk.Plan(B, H, G, D, dtype="f16")
    out = np.empty((B, H, D), np.float32)
    first = plan.run(q, k, v, SEQ, out=out)
    assert first is out
    before = out.copy()
    v[0, 1, 3] += 4.0
    k[1, 0, 5] -= 2.0
    plan.run(q, k, v, SEQ, out=out)
    assert not np.array_equal(before, out)
    want, _ = attention(q, k.astype(np.float64), v.astype(np.float64), SEQ)
    assert_close(out, want, np.abs(v).max())


def _int8_values(r, shape):
    return r.integers(-127, 128, size=shape).astype(np.int8)


def _int8_decode(x):
    return x.astype(np.float64)


@pytest.mark.parametrize("layout", ["bgld", "blgd"])
@pytest.mark.parametrize(
    "dtype,values,decode,scale_range,q_scale",
    [
        # int8: one scale per row.
        ("int8", _int8_values, _int8_decode, (0.001, 0.02), 1.0),
        # fp8 E4M3 with a scale per row, rows of very different magnitudes.
        (
            "fp8e4m3_row",
            lambda r, shape: finite_fp8(r, shape, "fp8e4m3"),
            e4m3_decode,
            None,
            0.01,
        ),
    ],
)
def test_row_scaled(layout, dtype, values, decode, scale_range, q_scale):
    """int8 and fp8e4m3_row: values and one float32 scale per (token, KV
    head) row, the scales in the cache's layout without its last axis."""
    r = rng(4)
    vals_k = values(r, (B, G, L, D))
    vals_v = values(r, (B, G, L, D))

    def scales():
        if scale_range is None:
            return (10.0 ** r.uniform(-3, 1, size=(B, G, L))).astype(np.float32)
        return r.uniform(*scale_range, size=(B, G, L)).astype(np.float32)

    sk, sv = scales(), scales()
    kl = decode(vals_k) * sk[..., None].astype(np.float64)
    vl = decode(vals_v) * sv[..., None].astype(np.float64)
    q = (q_scale * r.standard_normal((B, H, D))).astype(np.float32)
    plan = gk.Plan(B, H, G, D, dtype=dtype)

    def in_layout(sc):
        return sc if layout == "bgld" else np.ascontiguousarray(sc.swapaxes(1, 2))

    k, v = logical_to(layout, vals_k), logical_to(layout, vals_v)
    out, lse = plan.run(
        q, k, v, SEQ, lse=True, layout=layout, k_scales=in_layout(sk), v_scales=in_layout(sv)
    )
    want, want_lse = attention(q, kl, vl, SEQ)
    assert_close(out, want, np.abs(vl).max(), lse, want_lse)
    # Without its row scales the cache is refused, naming them.
    with pytest.raises(ValueError, match="k_scales"):
        plan.run(q, k, v, SEQ, layout=layout, v_scales=in_layout(sv))


@pytest.mark.parametrize("fmt,decode", [("fp8e4m3", e4m3_decode), ("fp8e5m2", e5m2_decode)])
def test_fp8(fmt, decode):
    r = rng(5)
    kb = finite_fp8(r, (B, G, L, D), fmt)
    vb = finite_fp8(r, (B, G, L, D), fmt)
    sk = np.array([0.5, 0.25], np.float32)
    sv = np.array([0.125], np.float32)
    kl = decode(kb) * sk[None, :, None, None].astype(np.float64)
    vl = decode(vb) * float(sv[0])
    q = (0.1 * r.standard_normal((B, H, D))).astype(np.float32)
    out, lse = gk.Plan(B, H, G, D, dtype=fmt).run(q, kb, vb, SEQ, lse=True, k_scales=sk, v_scales=sv)
    want, want_lse = attention(q, kl, vl, SEQ)
    assert_close(out, want, np.abs(vl).max(), lse, want_lse)


@pytest.mark.parametrize("layout", ["bgld", "blgd"])
def test_q8_0(layout):
    r = rng(6)
    kb = q8_0_encode_random(r, B * G * L, D)
    vb = q8_0_encode_random(r, B * G * L, D)
    kl = q8_0_decode(kb, D).reshape(B, G, L, D)
    vl = q8_0_decode(vb, D).reshape(B, G, L, D)
    row = D // 32 * 34
    k = logical_to(layout, kb.reshape(B, G, L, row))
    v = logical_to(layout, vb.reshape(B, G, L, row))
    q = r.standard_normal((B, H, D)).astype(np.float32)
    out = gk.Plan(B, H, G, D, dtype="q8_0").run(q, k, v, SEQ, layout=layout)
    want, _ = attention(q, kl, vl, SEQ)
    assert_close(out, want, np.abs(vl).max())


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"])
def test_gguf_blocks(fmt):
    """The other block formats, as uint8 bytes of their blocks (the last
    axis one row of blocks), in both layouts."""
    r = rng(8)
    size = D // 32 * blocks_random(r, fmt, 1, 32).shape[1]
    kb = blocks_random(r, fmt, B * G * L, D).reshape(B, G, L, size)
    vb = blocks_random(r, fmt, B * G * L, D).reshape(B, G, L, size)
    kl = blocks_decode(kb.reshape(-1, size), fmt, D).reshape(B, G, L, D)
    vl = blocks_decode(vb.reshape(-1, size), fmt, D).reshape(B, G, L, D)
    q = r.standard_normal((B, H, D)).astype(np.float32)
    plan = gk.Plan(B, H, G, D, dtype=fmt)
    want, want_lse = attention(q, kl, vl, SEQ)
    for layout in ("bgld", "blgd"):
        k, v = logical_to(layout, kb), logical_to(layout, vb)
        out, lse = plan.run(q, k, v, SEQ, lse=True, layout=layout)
        assert_close(out, want, np.abs(vl).max(), lse, want_lse)


def test_mixed_types_and_head_dims():
    """K f16 with Dk = 128, V int8 with Dv = 64."""
    r = rng(7)
    dk, dv = 128, 64
    k = r.standard_normal((B, G, L, dk)).astype(np.float16)
    vq = r.integers(-127, 128, size=(B, G, L, dv)).astype(np.int8)
    sv = r.uniform(0.001, 0.02, size=(B, G, L)).astype(np.float32)
    vl = vq.astype(np.float64) * sv[..., None]
    q = r.standard_normal((B, H, dk)).astype(np.float32)
    plan = gk.Plan(B, H, G, dk, dtype="f16", head_dim_v=dv, v_dtype="int8")
    out = plan.run(q, k, vq, SEQ, v_scales=sv)
    assert out.shape == (B, H, dv)
    want, _ = attention(q, k.astype(np.float64), vl, SEQ)
    assert_close(out, want, np.abs(vl).max())


def paged_from(r, logical, page, layout):
    """Scatter a [B, G, L, D] cache into a shuffled page pool."""
    b_all, g_all, length, d = logical.shape
    per = -(-length // page)
    n_pages = b_all * per + 3
    order = r.permutation(n_pages)[: b_all * per].reshape(b_all, per)
    pool = np.zeros((n_pages, page, g_all, d), logical.dtype)
    for b in range(b_all):
        for j in range(length):
            pool[order[b, j // page], j % page] = logical[b, :, j]
    if layout == "gpd":
        pool = np.ascontiguousarray(pool.swapaxes(1, 2))
    return pool, order.astype(np.uint32)


@pytest.mark.parametrize("page_layout", ["pgd", "gpd"])
def test_paged(page_layout):
    r = rng(8)
    k = r.standard_normal((B, G, L, D)).astype(np.float16)
    v = r.standard_normal((B, G, L, D)).astype(np.float16)
    kp, table = paged_from(r, k, 16, page_layout)
    # V in the same pages as K (one block table for both).
    vp = np.zeros_like(kp)
    for b in range(B):
        for j in range(L):
            if page_layout == "pgd":
                vp[table[b, j // 16], j % 16] = v[b, :, j]
            else:
                vp[table[b, j // 16], :, j % 16] = v[b, :, j]
    q = r.standard_normal((B, H, D)).astype(np.float32)
    plan = gk.Plan(B, H, G, D, dtype="f16", max_kv_len=L)
    out, lse = plan.run_paged(q, kp, vp, table, SEQ, lse=True, page_layout=page_layout)
    want, want_lse = attention(q, k.astype(np.float64), v.astype(np.float64), SEQ)
    assert_close(out, want, np.abs(v).max(), lse, want_lse)


@pytest.mark.parametrize("layout", ["bgld", "blgd"])
def test_ring(layout):
    r = rng(9)
    cap = 32
    lens = [32, 20, 5]
    first = [100, 7, 0]
    logical_k = r.standard_normal((B, G, cap, D)).astype(np.float32)
    logical_v = r.standard_normal((B, G, cap, D)).astype(np.float32)
    # Absolute position p of sequence b lives in slot p % cap.
    ring_k = np.zeros_like(logical_k)
    ring_v = np.zeros_like(logical_v)
    for b in range(B):
        for i in range(lens[b]):
            slot = (first[b] + i) % cap
            ring_k[b, :, slot] = logical_k[b, :, i]
            ring_v[b, :, slot] = logical_v[b, :, i]
    q = r.standard_normal((B, H, D)).astype(np.float32)
    plan = gk.Plan(B, H, G, D, dtype="f32", window=cap)
    out = plan.run_ring(q, logical_to(layout, ring_k), logical_to(layout, ring_v), lens, first, layout=layout)
    want, _ = attention(q, logical_k.astype(np.float64), logical_v.astype(np.float64), lens)
    assert_close(out, want, np.abs(logical_v).max())


def test_latent():
    """V is the leading head_dim_v values of each K row."""
    r = rng(10)
    dk, dv = 128, 64
    kv = r.standard_normal((B, 1, L, dk)).astype(np.float16)
    q = r.standard_normal((B, H, dk)).astype(np.float32)
    plan = gk.Plan(B, H, 1, dk, dtype="f16", head_dim_v=dv)
    out = plan.run(q, kv, None, SEQ, latent=True)
    kl = kv.astype(np.float64)
    want, _ = attention(q, kl, kl[..., :dv], SEQ)
    assert_close(out, want, np.abs(kl[..., :dv]).max())
    # Paged latent: the same rows in a pool.
    pool, table = paged_from(r, kv, 16, "pgd")
    out_p = plan.run_paged(q, pool, None, table, SEQ, latent=True)
    assert_close(out_p, want, np.abs(kl[..., :dv]).max())


def test_fp8_ds_mla_latent_rows():
    """DeepSeek-V3.2's FP8 latent rows (FlashMLA's 656 bytes: 512 E4M3
    bytes, 4 float32 scales, 64 bfloat16), read as K (576 values) and V
    (the leading 512), contiguous and paged."""
    r = rng(12)
    dk, dv, h, lat = 576, 512, 16, 512
    rows = B * L
    codes = finite_fp8(r, (rows, lat), "fp8e4m3")
    scales = r.uniform(0.01, 0.1, (rows, 4)).astype(np.float32)
    rope = bf16_bits(r.standard_normal((rows, dk - lat)).astype(np.float32))
    raw = np.concatenate(
        [codes, scales.view(np.uint8).reshape(rows, 16), rope.view(np.uint8).reshape(rows, 128)],
        axis=1,
    )
    assert raw.shape[1] == 656
    kv = np.ascontiguousarray(raw.reshape(B, 1, L, 656))
    logical = np.concatenate(
        [e4m3_decode(codes) * np.repeat(scales, 128, axis=1).astype(np.float64), bf16_decode(rope)],
        axis=1,
    ).reshape(B, 1, L, dk)
    q = r.standard_normal((B, h, dk)).astype(np.float32)
    plan = gk.Plan(B, h, 1, dk, dtype="fp8_ds_mla", head_dim_v=dv)
    want, _ = attention(q, logical, logical[..., :dv], SEQ)
    out = plan.run(q, kv, None, SEQ, latent=True)
    assert_close(out, want, np.abs(logical[..., :dv]).max())
    pool, table = paged_from(r, kv, 16, "pgd")
    out_p = plan.run_paged(q, pool, None, table, SEQ, latent=True)
    assert_close(out_p, want, np.abs(logical[..., :dv]).max())
    # K and V in one row: no other type beside it.
    with pytest.raises(TypeError, match="fp8_ds_mla"):
        gk.Plan(B, h, 1, dk, dtype="fp8_ds_mla", v_dtype="bf16", head_dim_v=dv)


def test_multi_token_and_ragged():
    r = rng(11)
    k = r.standard_normal((B, G, L, D)).astype(np.float32)
    v = r.standard_normal((B, G, L, D)).astype(np.float32)
    kl, vl = k.astype(np.float64), v.astype(np.float64)
    # Every sequence 3 tokens.
    q = r.standard_normal((B * 3, H, D)).astype(np.float32)
    lens = [50, 17, 3]
    plan = gk.Plan(B, H, G, D, dtype="f32", q_len=3)
    out = plan.run(q, k, v, lens)
    want, _ = attention(q, kl, vl, lens, q_counts=[3, 3, 3])
    assert_close(out, want, np.abs(vl).max())
    # Ragged: 2, 0 and 3 tokens.
    counts = [2, 0, 3]
    offsets = np.cumsum([0] + counts)
    qr = q[: offsets[-1]]
    out_r, lse_r = plan.run(qr, k, v, lens, q_offsets=offsets, lse=True)
    want, want_lse = attention(qr, kl, vl, lens, q_counts=counts)
    assert out_r.shape == (5, H, D)
    assert_close(out_r, want, np.abs(vl).max(), lse_r, want_lse)


def test_options_window_softcap_scale():
    r = rng(12)
    k = r.standard_normal((B, G, L, D)).astype(np.float32)
    v = r.standard_normal((B, G, L, D)).astype(np.float32)
    q = (3 * r.standard_normal((B, H, D))).astype(np.float32)
    plan = gk.Plan(B, H, G, D, dtype="f32", window=8, softcap=5.0, scale=0.3)
    out = plan.run(q, k, v, SEQ)
    want, _ = attention(q, k.astype(np.float64), v.astype(np.float64), SEQ, window=8, softcap=5.0, scale=0.3)
    assert_close(out, want, np.abs(v).max())


def test_alibi_and_sinks():
    r = rng(19)
    k = r.standard_normal((B, G, L, D)).astype(np.float32)
    v = r.standard_normal((B, G, L, D)).astype(np.float32)
    q = r.standard_normal((B, H, D)).astype(np.float32)
    slopes = np.array([2.0 ** -(i + 1) for i in range(H)], np.float32)
    sinks = r.standard_normal(H).astype(np.float32)
    kl, vl = k.astype(np.float64), v.astype(np.float64)
    for alibi, want_slopes in ((slopes, slopes), (8.0, slopes)):
        plan = gk.Plan(B, H, G, D, dtype="f32", alibi=alibi, sinks=sinks)
        out, lse = plan.run(q, k, v, SEQ, lse=True)
        want, want_lse = attention(q, kl, vl, SEQ, alibi=want_slopes, sinks=sinks)
        assert_close(out, want, np.abs(vl).max(), lse, want_lse)


@pytest.mark.parametrize("per_kv_head", [False, True])
def test_sparse_positions(per_kv_head):
    r = rng(13)
    k = r.standard_normal((B, G, L, D)).astype(np.float16)
    v = r.standard_normal((B, G, L, D)).astype(np.float16)
    q = r.standard_normal((B, H, D)).astype(np.float32)
    n_lists = B * G if per_kv_head else B
    lists = []
    for i in range(n_lists):
        length = SEQ[i // G if per_kv_head else i]
        n = min(length, 1 + int(r.integers(0, 12)))
        lists.append(np.sort(r.choice(length, size=n, replace=False)))
    offsets = np.cumsum([0] + [len(x) for x in lists])
    flat = np.concatenate(lists).astype(np.uint32)
    plan = gk.Plan(B, H, G, D, dtype="f16")
    out = plan.run(q, k, v, SEQ, positions=(flat, offsets, per_kv_head))
    want, _ = attention(q, k.astype(np.float64), v.astype(np.float64), SEQ, lists=lists, per_kv_head=per_kv_head)
    assert_close(out, want, np.abs(v).max())


def test_tree_mask():
    """A 4-token draft tree: 0 -> {1, 2}, 1 -> 3."""
    r = rng(14)
    k = r.standard_normal((B, G, L, D)).astype(np.float32)
    v = r.standard_normal((B, G, L, D)).astype(np.float32)
    q = r.standard_normal((B * 4, H, D)).astype(np.float32)
    lens = [50, 17, 4]
    words = [0b0001, 0b0011, 0b0101, 0b1011]
    mask = np.array(words * B, np.uint64)
    plan = gk.Plan(B, H, G, D, dtype="f32", q_len=4)
    out = plan.run(q, k, v, lens, tree_mask=mask)
    want, _ = attention(q, k.astype(np.float64), v.astype(np.float64), lens, q_counts=[4] * B, tree=mask)
    assert_close(out, want, np.abs(v).max())


@pytest.mark.parametrize("per_head", [True, False])
def test_bias(per_head):
    """An additive bias, per head or one row for all heads, read with its
    strides (a slice of a wider array)."""
    r = rng(18)
    k = r.standard_normal((B, G, L, D)).astype(np.float32)
    v = r.standard_normal((B, G, L, D)).astype(np.float32)
    q = r.standard_normal((B * 2, H, D)).astype(np.float32)
    lens = [50, 17, 2]
    wide = r.standard_normal((B, 2, H if per_head else 1, L + 7)).astype(np.float32)
    bias4 = wide[..., 3 : 3 + L]
    arg = bias4 if per_head else bias4[:, :, 0, :]
    plan = gk.Plan(B, H, G, D, dtype="f32", q_len=2)
    out = plan.run(q, k, v, lens, bias=arg)
    full = np.broadcast_to(bias4, (B, 2, H, L))
    want, _ = attention(q, k.astype(np.float64), v.astype(np.float64), lens, q_counts=[2] * B, bias=full)
    assert_close(out, want, np.abs(v).max())


def test_merge_states_splits_a_cache():
    r = rng(15)
    k = r.standard_normal((1, G, L, D)).astype(np.float32)
    v = r.standard_normal((1, G, L, D)).astype(np.float32)
    q = r.standard_normal((1, H, D)).astype(np.float32)
    plan = gk.Plan(1, H, G, D, dtype="f32")
    out1, lse1 = plan.run(q, k[:, :, :20], v[:, :, :20], [20], lse=True)
    out2, lse2 = plan.run(q, k[:, :, 20:], v[:, :, 20:], [L - 20], lse=True)
    gk.merge_states(out1, lse1, out2, lse2)
    want, want_lse = attention(q, k.astype(np.float64), v.astype(np.float64), [L])
    assert_close(out1, want, np.abs(v).max(), lse1, want_lse)


def test_prefix_groups():
    """Sequences 0 and 2 share their first 30 positions, stored once (in 0)."""
    r = rng(16)
    k = r.standard_normal((B, G, L, D)).astype(np.float32)
    v = r.standard_normal((B, G, L, D)).astype(np.float32)
    lens = [40, 17, 45]
    q = r.standard_normal((B, H, D)).astype(np.float32)
    # The logical cache of sequence 2 has sequence 0's first 30 rows.
    kl, vl = k.astype(np.float64), v.astype(np.float64)
    kl[2, :, :30], vl[2, :, :30] = kl[0, :, :30], vl[0, :, :30]
    plan = gk.Plan(B, H, G, D, dtype="f32", cascade=True)
    out = plan.run(q, k, v, lens, prefix=([30], [0, 2], [0, 2]))
    want, _ = attention(q, kl, vl, lens)
    assert_close(out, want, np.abs(vl).max())


def test_plan_properties():
    plan = gk.Plan(1, 32, 8, 128, dtype="f16", max_kv_len=4096, threads=2)
    assert plan.tier in ("avx512", "avx2", "neon", "scalar")
    assert plan.threads == 2
    assert "f16" in plan.kernel_name
    assert abs(plan.scale - 1 / np.sqrt(128)) < 1e-7
    assert plan.tier == gk.active_tier()
    assert "f16" in repr(plan)


def test_ml_dtypes_arrays():
    """ml_dtypes' bfloat16 and float8 arrays are read as their bits (no copy)."""
    ml = pytest.importorskip("ml_dtypes")
    r = rng(17)
    k = r.standard_normal((B, G, L, D)).astype(ml.bfloat16)
    v = r.standard_normal((B, G, L, D)).astype(ml.bfloat16)
    q = r.standard_normal((B, H, D)).astype(np.float32)
    out = gk.Plan(B, H, G, D, dtype="bf16").run(q, k, v, SEQ)
    want, _ = attention(q, bf16_decode(k.view(np.uint16)), bf16_decode(v.view(np.uint16)), SEQ)
    assert_close(out, want, np.abs(v.astype(np.float64)).max())
    kb = finite_fp8(r, (B, G, L, D), "fp8e4m3").view(ml.float8_e4m3fn)
    one = np.ones(1, np.float32)
    out = gk.Plan(B, H, G, D, dtype="fp8e4m3").run(q, kb, kb, SEQ, k_scales=one, v_scales=one)
    kl = kb.astype(np.float64)
    want, _ = attention(q, kl, kl, SEQ)
    assert_close(out, want, np.abs(kl).max())


@pytest.mark.parametrize("tier", sorted({"scalar", gk.active_tier()}))
def test_forced_tiers(tier):
    r = rng(21)
    k = r.standard_normal((B, G, L, D)).astype(np.float16)
    v = r.standard_normal((B, G, L, D)).astype(np.float16)
    q = r.standard_normal((B, H, D)).astype(np.float32)
    plan = gk.Plan(B, H, G, D, dtype="f16", tier=tier)
    assert plan.tier == tier
    out, lse = plan.run(q, k, v, SEQ, lse=True)
    want, want_lse = attention(q, k.astype(np.float64), v.astype(np.float64), SEQ)
    assert_close(out, want, np.abs(v).max(), lse, want_lse)


# A (K, V) pair each unit has kernels for (README: "Units").
_UNIT_TYPES = {
    "f32-fma": ("f16", "f16"),
    "bf16-dot": ("bf16", "f16"),
    "int8-dot": ("int8", "bf16"),
    "amx-bf16": ("bf16", "bf16"),
}


def _unit_cache(r, dtype, shape):
    """Random cache values of `dtype`: (storage, scales or None, float64 values)."""
    x = r.standard_normal(shape)
    if dtype == "f16":
        s = x.astype(np.float16)
        return s, None, s.astype(np.float64)
    if dtype == "bf16":
        s = bf16_bits(x)
        return s, None, bf16_decode(s)
    s = r.integers(-127, 128, shape).astype(np.int8)
    scales = r.uniform(0.005, 0.02, shape[:-1]).astype(np.float32)
    return s, scales, s.astype(np.float64) * scales[..., None]


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("unit", sorted(_UNIT_TYPES))
def test_units_and_precision(unit, precision):
    """A forced unit runs where this CPU has it (and matches the reference:
    the f32 tolerance for `exact`, the README's bound for `fast`) or is a
    GqaError naming it where it does not; never a silent fallback."""
    kd, vd = _UNIT_TYPES[unit]
    b, h, g, d, n = 2, 8, 1, 64, 300  # r = 8: enough rows for the tile unit
    reason = gk.units()[unit]
    if reason is not None:
        with pytest.raises(gk.GqaError, match=unit):
            gk.Plan(b, h, g, d, dtype=kd, v_dtype=vd, unit=unit, precision=precision)
        return
    plan = gk.Plan(b, h, g, d, dtype=kd, v_dtype=vd, unit=unit, precision=precision, max_kv_len=n)
    assert (plan.unit, plan.precision) == (unit, precision)
    r = rng(30)
    k, ks, kl = _unit_cache(r, kd, (b, g, n, d))
    v, vs, vl = _unit_cache(r, vd, (b, g, n, d))
    q = r.standard_normal((b, h, d)).astype(np.float32)
    lens = [n, 77]
    out, lse = plan.run(q, k, v, lens, lse=True, k_scales=ks, v_scales=vs)
    want, want_lse = attention(q, kl, vl, lens)
    vmax = np.abs(vl).max()
    if precision == "exact" or unit == "f32-fma":
        assert_close(out, want, vmax, lse, want_lse)
        return
    # README, numerics contract: scores move by at most
    # delta = scale * max_row sum_d |dq_d| * max|k|.
    qa = np.abs(q.astype(np.float64))
    dq = 2.0**-8 * qa.sum(axis=-1).max() if unit != "int8-dot" else d * qa.max() / (2 * 127 * 128)
    delta = dq * np.abs(kl).max() / np.sqrt(d)
    p_rounded = unit == "amx-bf16" or (unit == "bf16-dot" and vd == "bf16")
    bound = (np.exp(2 * delta) - 1) * vmax + (2.0**-8 * vmax if p_rounded else 0.0)
    err = np.abs(out - want) - (2e-5 * vmax + 1e-4 * np.abs(want))
    assert err.max() <= bound, f"{unit} fast: error {err.max()} over the bound {bound}"
    assert np.abs(lse - want_lse).max() <= delta + 2e-5 * (1 + np.abs(want_lse).max())


def test_unit_errors():
    with pytest.raises(ValueError, match='unit: unknown unit "tensor-core"'):
        gk.Plan(1, 8, 1, 64, unit="tensor-core")
    # int8-dot has no kernels for an f16 K (whether or not this CPU has it).
    with pytest.raises(gk.GqaError, match="int8-dot"):
        gk.Plan(1, 8, 1, 64, dtype="f16", unit="int8-dot")
    assert set(gk.units()) == {"f32-fma", "bf16-dot", "int8-dot", "amx-bf16", "amx-int8"}


@pytest.mark.parametrize("layout", ["bgld", "blgd"])
def test_ring_prefix_groups(layout):
    """Rings of sequences 0 and 1 both hold the same first 12 attended
    positions; declared shared, the prefix is read from sequence 0's ring."""
    r = rng(31)
    cap, lens, first = 24, [20, 18], [50, 5]
    logical_k = r.standard_normal((2, G, cap, D)).astype(np.float32)
    logical_v = r.standard_normal((2, G, cap, D)).astype(np.float32)
    logical_k[1, :, :12], logical_v[1, :, :12] = logical_k[0, :, :12], logical_v[0, :, :12]
    ring_k, ring_v = np.zeros_like(logical_k), np.zeros_like(logical_v)
    for b in range(2):
        for i in range(lens[b]):
            ring_k[b, :, (first[b] + i) % cap] = logical_k[b, :, i]
            ring_v[b, :, (first[b] + i) % cap] = logical_v[b, :, i]
    # Sequence 1's copy of the prefix is poisoned: only sequence 0's is read.
    poisoned_k = ring_k.copy()
    for i in range(12):
        poisoned_k[1, :, (first[1] + i) % cap] = np.nan
    q = r.standard_normal((2, H, D)).astype(np.float32)
    plan = gk.Plan(2, H, G, D, dtype="f32", window=cap, cascade=True)
    out = plan.run_ring(
        q, logical_to(layout, poisoned_k), logical_to(layout, ring_v), lens, first,
        layout=layout, prefix=([12], [0, 2], [0, 1]),
    )
    want, _ = attention(q, logical_k.astype(np.float64), logical_v.astype(np.float64), lens)
    assert_close(out, want, np.abs(logical_v).max())
