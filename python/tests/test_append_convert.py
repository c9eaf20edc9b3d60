"""append (plain, quantized, paged, ring, latent), then decode; pool_heads."""

import numpy as np
import pytest

import gqa_kernels as gk
from reference import (
    assert_close,
    attention,
    bf16_bits,
    bf16_decode,
    e4m3_decode,
    e5m2_decode,
    q8_0_decode,
)

B, H, G, D = 2, 8, 2, 64
CAP = 32


@pytest.mark.parametrize("layout", ["bgld", "blgd"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_append_float_roundtrip(layout, dtype):
    r = np.random.default_rng(20)
    store = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[dtype]
    shape = (B, G, CAP, D) if layout == "bgld" else (B, CAP, G, D)
    k = np.zeros(shape, store)
    v = np.zeros(shape, store)
    counts = [3, 5]
    offsets = [0, 3, 8]
    before = [4, 10]
    new_k = r.standard_normal((8, G, D)).astype(np.float32)
    new_v = r.standard_normal((8, G, D)).astype(np.float32)
    gk.append(k, v, new_k, new_v, offsets, before, dtype=dtype, layout=layout)
    for b in range(B):
        for i in range(counts[b]):
            pos = before[b] + i
            got = k[b, :, pos] if layout == "bgld" else k[b, pos]
            want = new_k[offsets[b] + i]
            if dtype == "f32":
                assert np.array_equal(got, want)
            elif dtype == "f16":
                assert np.array_equal(got, want.astype(np.float16))
            else:
                assert np.array_equal(got, bf16_bits(want))
    # Rows nobody wrote stay zero.
    untouched = k[0, :, 0] if layout == "bgld" else k[0, 0]
    assert not untouched.any()


def test_append_int8_then_decode():
    r = np.random.default_rng(21)
    k = np.zeros((B, G, CAP, D), np.int8)
    v = np.zeros((B, G, CAP, D), np.int8)
    sk = np.zeros((B, G, CAP), np.float32)
    sv = np.zeros((B, G, CAP), np.float32)
    lens = [9, 20]
    new_k = r.standard_normal((sum(lens), G, D)).astype(np.float32)
    new_v = r.standard_normal((sum(lens), G, D)).astype(np.float32)
    gk.append(k, v, new_k, new_v, [0, 9, 29], [0, 0], dtype="int8", k_scales=sk, v_scales=sv)
    assert (sk[0, :, :9] > 0).all() and (sk[0, :, 9:] == 0).all()
    # The quantized values stay within half a step of the originals.
    deq = k[1, :, :20].astype(np.float64) * sk[1, :, :20, None]
    orig = new_k[9:29].swapaxes(0, 1)
    assert np.all(np.abs(deq - orig) <= 0.5 * sk[1, :, :20, None] + 1e-7)
    # Decode reads exactly the stored values and scales.
    q = r.standard_normal((B, H, D)).astype(np.float32)
    out = gk.Plan(B, H, G, D, dtype="int8").run(q, k, v, lens, k_scales=sk, v_scales=sv)
    kl = k.astype(np.float64) * sk[..., None]
    vl = v.astype(np.float64) * sv[..., None]
    want, _ = attention(q, kl, vl, lens)
    assert_close(out, want, np.abs(vl).max())


def test_append_paged_and_ring():
    r = np.random.default_rng(22)
    page = 8
    pool_k = np.zeros((6, page, G, D), np.float16)
    pool_v = np.zeros((6, page, G, D), np.float16)
    table = np.array([[4, 1], [0, 5]], np.uint32)
    new_k = r.standard_normal((4, G, D)).astype(np.float16)
    new_v = r.standard_normal((4, G, D)).astype(np.float16)
    gk.append(pool_k, pool_v, new_k, new_v, [0, 2, 4], [7, 0], dtype="f16", block_table=table)
    assert np.array_equal(pool_k[4, 7], new_k[0])  # sequence 0, position 7
    assert np.array_equal(pool_k[1, 0], new_k[1])  # position 8: next page
    assert np.array_equal(pool_v[0, 1], new_v[3])  # sequence 1, position 1
    ring = np.zeros((1, G, 4, D), np.float32)
    ring_v = np.zeros_like(ring)
    new = r.standard_normal((3, G, D)).astype(np.float32)
    gk.append(ring, ring_v, new, new, [0, 3], [6], dtype="f32", ring=True)
    assert np.array_equal(ring[0, :, 2], new[0]) and np.array_equal(ring[0, :, 0], new[2])


def test_append_latent():
    r = np.random.default_rng(23)
    dk, dv = 128, 64
    kv = np.zeros((1, 1, CAP, dk), np.float16)
    new = r.standard_normal((5, 1, dk)).astype(np.float32)
    gk.append(kv, None, new, None, [0, 5], [0], dtype="f16")
    assert np.array_equal(kv[0, 0, :5], new[:, 0].astype(np.float16))
    q = r.standard_normal((1, H, dk)).astype(np.float32)
    out = gk.Plan(1, H, 1, dk, dtype="f16", head_dim_v=dv).run(q, kv, None, [5], latent=True)
    kl = kv.astype(np.float64)
    want, _ = attention(q, kl, kl[..., :dv], [5])
    assert_close(out, want, np.abs(kl[..., :dv]).max())



def _appended(fmt, k, ks):
    """A cache `fmt` after an append, from its bytes and scales: (decoded
    float64 [B, G, CAP, D], relative and absolute error allowed against
    the row written) from the format's rounding (README, quant)."""
    full = (B, G, CAP, D)
    if fmt == "q8_0":
        x = q8_0_decode(k.reshape(-1, k.shape[-1]), D).reshape(full)
        amax = np.abs(x.reshape(B, G, CAP, D // 32, 32)).max(axis=-1, keepdims=True)
        # Half a step of amax/127, and the f16 rounding of the block scale.
        return x, 2.0**-10, np.broadcast_to(0.51 * amax / 127, amax.shape[:-1] + (32,)).reshape(full)
    if fmt == "fp8e4m3_row":
        s = ks[..., None].astype(np.float64)
    else:
        s = ks[None, :, None, None].astype(np.float64)
    if fmt == "fp8e5m2":
        return e5m2_decode(k) * s, 2.0**-3, np.broadcast_to(2.0**-17 * s, full)
    return e4m3_decode(k) * s, 2.0**-4 + 1e-7, np.broadcast_to(2.0**-10 * s, full)


@pytest.mark.parametrize("fmt", ["fp8e4m3", "fp8e5m2", "fp8e4m3_row", "q8_0"])
def test_append_quantized_then_decode(fmt):
    """Rows quantized on write: each stored value within the format's
    rounding of what was written (an fp8 cache's per-head scales read, a
    per-row fp8 cache's scales written), and the step reads exactly the
    stored values."""
    r = np.random.default_rng(24)
    lens = [7, 12]
    width = D // 32 * 34 if fmt == "q8_0" else D
    k = np.zeros((B, G, CAP, width), np.uint8)
    v = np.zeros((B, G, CAP, width), np.uint8)
    if fmt == "fp8e4m3_row":
        ks, vs = np.zeros((B, G, CAP), np.float32), np.zeros((B, G, CAP), np.float32)
    elif fmt == "q8_0":
        ks = vs = None
    else:
        ks, vs = np.array([0.02, 0.05], np.float32), np.array([0.03], np.float32)
    new_k = r.standard_normal((sum(lens), G, D)).astype(np.float32)
    new_v = (0.5 * r.standard_normal((sum(lens), G, D))).astype(np.float16)
    gk.append(k, v, new_k, new_v, [0, 7, 19], [0, 0], dtype=fmt, k_scales=ks, v_scales=vs)
    if fmt == "fp8e4m3_row":
        assert (ks[0, :, :7] > 0).all() and (ks[0, :, 7:] == 0).all() and (ks[1, :, :12] > 0).all()
    kl, k_rel, k_abs = _appended(fmt, k, ks)
    vl, v_rel, v_abs = _appended(fmt, v, vs)
    for b, (lo, n) in enumerate([(0, 7), (7, 12)]):
        for got, rel, slack, new in ((kl, k_rel, k_abs, new_k), (vl, v_rel, v_abs, new_v)):
            orig = new[lo:lo + n].astype(np.float64).swapaxes(0, 1)  # [G, n, D]
            err = np.abs(got[b, :, :n] - orig)
            assert np.all(err <= rel * np.abs(orig) + slack[b, :, :n]), f"{fmt}: {err.max()}"
            assert not got[b, :, n:].any()  # nothing written past the new rows
    q = r.standard_normal((B, H, D)).astype(np.float32)
    out, lse = gk.Plan(B, H, G, D, dtype=fmt).run(q, k, v, lens, lse=True, k_scales=ks, v_scales=vs)
    want, want_lse = attention(q, kl, vl, lens)
    assert_close(out, want, np.abs(vl).max(), lse, want_lse)


def test_append_mixed_types():
    """K in bf16, V in int8 (scales written), from f16 rows; then decode."""
    r = np.random.default_rng(25)
    k = np.zeros((B, CAP, G, D), np.uint16)  # [B, L, G, D]
    v = np.zeros((B, CAP, G, D), np.int8)
    vs = np.zeros((B, CAP, G), np.float32)
    lens = [5, 9]
    new_k = r.standard_normal((14, G, D)).astype(np.float16)
    new_v = r.standard_normal((14, G, D)).astype(np.float16)
    gk.append(k, v, new_k, new_v, [0, 5, 14], [0, 0], dtype="bf16", v_dtype="int8",
              layout="blgd", v_scales=vs)
    # f16 -> bf16 goes through f32 (exact), then one rounding.
    assert np.array_equal(k[1, :9], bf16_bits(new_k[5:14].astype(np.float32)))
    assert (vs[0, :5] > 0).all() and (vs[0, 5:] == 0).all()
    kl = bf16_decode(k).swapaxes(1, 2)
    vl = (v.astype(np.float64) * vs[..., None]).swapaxes(1, 2)
    orig_v = new_v[5:14].astype(np.float64)
    assert np.all(np.abs(vl[1, :, :9].swapaxes(0, 1) - orig_v) <= 0.5 * vs[1, :9, :, None] + 1e-7)
    q = r.standard_normal((B, H, D)).astype(np.float32)
    plan = gk.Plan(B, H, G, D, dtype="bf16", v_dtype="int8")
    out = plan.run(q, k, v, lens, layout="blgd", v_scales=vs)
    want, _ = attention(q, kl, vl, lens)
    assert_close(out, want, np.abs(vl).max())

def test_append_errors():
    k = np.zeros((1, G, 4, D), np.float16)
    v = np.zeros_like(k)
    new = np.zeros((5, G, D), np.float32)
    with pytest.raises(gk.GqaError, match="capacity|positions"):
        gk.append(k, v, new, new, [0, 5], [0], dtype="f16")
    ro = np.zeros_like(k)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="^k:"):
        gk.append(ro, v, new[:1], new[:1], [0, 1], [0], dtype="f16")
    with pytest.raises(ValueError, match="^k:.*contiguous"):
        gk.append(np.zeros((1, G, 8, D), np.float16)[:, :, ::2], v, new[:1], new[:1], [0, 1], [0], dtype="f16")
    with pytest.raises(TypeError, match="new_k"):
        gk.append(k, v, new[:1].astype(np.int32), new[:1], [0, 1], [0], dtype="f16")
    with pytest.raises(gk.GqaError, match="new.k"):
        bad = new[:1].copy()
        bad[0, 0, 0] = np.nan
        gk.append(
            np.zeros((1, G, 4, D), np.int8),
            np.zeros((1, G, 4, D), np.int8),
            bad,
            new[:1],
            [0, 1],
            [0],
            dtype="int8",
            k_scales=np.zeros((1, G, 4), np.float32),
            v_scales=np.zeros((1, G, 4), np.float32),
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bf16"])
def test_pool_heads(dtype):
    r = np.random.default_rng(24)
    heads, groups, hd, cols = 8, 2, 16, 12
    w64 = r.standard_normal((heads * hd, cols))
    if dtype == "bf16":
        w = bf16_bits(w64)
        pooled = gk.pool_heads(w, heads=heads, groups=groups, dtype="bf16")
        src = bf16_decode(w)
        got = bf16_decode(pooled)
        rounding = lambda x: bf16_decode(bf16_bits(x.astype(np.float32)))  # noqa: E731
    else:
        w = w64.astype(dtype)
        pooled = gk.pool_heads(w, heads=heads, groups=groups)
        assert pooled.dtype == w.dtype
        src = w.astype(np.float64)
        got = pooled.astype(np.float64)
        rounding = lambda x: x.astype(dtype).astype(np.float64)  # noqa: E731
    assert pooled.shape == (groups * hd, cols)
    mean = src.reshape(groups, heads // groups, hd, cols).mean(axis=1).reshape(groups * hd, cols)
    # The correctly rounded mean (numpy rounds f64 to f32 and f16 once;
    # the test's bf16 rounding goes through f32, so within one bf16 ulp).
    want = rounding(mean)
    if dtype == "bf16":
        assert np.all(np.abs(got - want) <= np.abs(want) * 2.0**-7)
    else:
        assert np.array_equal(got, want)
    first = gk.pool_heads(w, heads=heads, groups=groups, how="first", dtype="bf16" if dtype == "bf16" else None)
    assert np.array_equal(first, w.reshape(groups, heads // groups, hd, cols)[:, 0].reshape(groups * hd, cols))
    with pytest.raises(gk.GqaError, match="heads"):
        gk.pool_heads(w, heads=heads, groups=3, dtype="bf16" if dtype == "bf16" else None)
