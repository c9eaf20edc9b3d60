"""A float64 numpy reference for the tests, written here (not the
library's): decoders of each cache type and grouped-query attention with
the causal rule, windows, softcap, sparse lists and tree masks."""

import numpy as np

# The library's documented tolerance (reference::tolerance in the Rust
# crate), the same for every K/V type pair: outputs within
# 2e-5 * max|V| + 1e-4 * |want|, lse within 2e-5 + 2e-5 * |want|.
OUT_ATOL, OUT_RTOL = 2e-5, 1e-4
LSE_ATOL, LSE_RTOL = 2e-5, 2e-5


def assert_close(out, want, vmax, lse=None, want_lse=None):
    out = np.asarray(out, np.float64)
    bound = OUT_ATOL * vmax + OUT_RTOL * np.abs(want)
    err = np.abs(out - want)
    assert np.all(err <= bound), f"max error {err.max()} (bound {bound.min()}..{bound.max()})"
    if want_lse is not None:
        lse = np.asarray(lse, np.float64)
        inf = np.isinf(want_lse)
        assert np.array_equal(lse[inf], want_lse[inf])
        e = np.abs(lse[~inf] - want_lse[~inf])
        assert np.all(e <= LSE_ATOL + LSE_RTOL * np.abs(want_lse[~inf])), f"lse error {e.max()}"


def bf16_bits(x):
    """float32 values rounded to bfloat16 (nearest even), as uint16 bits."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype(np.uint16)


def bf16_decode(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def e4m3_decode(b):
    b = b.astype(np.int64)
    s = np.where(b >> 7, -1.0, 1.0)
    e = (b >> 3) & 0xF
    m = (b & 7).astype(np.float64)
    val = np.where(e == 0, m / 8 * 2.0**-6, (1 + m / 8) * np.exp2(e - 7.0))
    val = np.where((e == 15) & (m == 7), np.nan, val)
    return s * val


def e5m2_decode(b):
    b = b.astype(np.int64)
    s = np.where(b >> 7, -1.0, 1.0)
    e = (b >> 2) & 0x1F
    m = (b & 3).astype(np.float64)
    val = np.where(e == 0, m / 4 * 2.0**-14, (1 + m / 4) * np.exp2(e - 15.0))
    val = np.where(e == 31, np.nan, val)
    return s * val


def finite_fp8(rng, shape, fmt):
    """Random fp8 bytes of moderate magnitude (no NaN or infinity)."""
    if fmt == "fp8e4m3":
        e = rng.integers(4, 10, size=shape)
        m = rng.integers(0, 8, size=shape)
        return ((rng.integers(0, 2, size=shape) << 7) | (e << 3) | m).astype(np.uint8)
    e = rng.integers(12, 18, size=shape)
    m = rng.integers(0, 4, size=shape)
    return ((rng.integers(0, 2, size=shape) << 7) | (e << 2) | m).astype(np.uint8)


def q8_0_encode_random(rng, rows, d):
    """Random q8_0 blocks: `rows` rows of `d` values, bytes [rows, d/32*34]."""
    nb = d // 32
    scales = (rng.uniform(0.002, 0.02, size=(rows, nb))).astype(np.float16)
    qs = rng.integers(-127, 128, size=(rows, nb, 32)).astype(np.int8)
    out = np.empty((rows, nb, 34), np.uint8)
    out[:, :, :2] = scales.view(np.uint8).reshape(rows, nb, 2)
    out[:, :, 2:] = qs.view(np.uint8)
    return out.reshape(rows, nb * 34)


def q8_0_decode(blocks, d):
    rows = blocks.shape[0]
    nb = d // 32
    b = blocks.reshape(rows, nb, 34)
    scale = b[:, :, :2].copy().view(np.float16).astype(np.float64)  # [rows, nb, 1]
    qs = b[:, :, 2:].copy().view(np.int8).astype(np.float64)
    return (qs * scale).reshape(rows, d)


# The GGUF 4- and 5-bit blocks, written out from their definitions
# (llama.cpp's ggml-common.h): an f16 scale d (and offset m), for the 5-bit
# ones 32 fifth bits, then 16 bytes whose low nibbles are values 0..15 and
# high nibbles values 16..31.
BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "iq4_nl": 18}
IQ4_NL_VALUES = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float64
)


def blocks_random(rng, fmt, rows, d):
    """Random blocks of `fmt`: random code bytes and small positive scales
    (and offsets), bytes [rows, d/32*size]."""
    nb, size = d // 32, BLOCK_BYTES[fmt]
    out = rng.integers(0, 256, size=(rows, nb, size)).astype(np.uint8)
    out[:, :, 0:2] = rng.uniform(0.002, 0.02, size=(rows, nb)).astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    if fmt in ("q4_1", "q5_1"):
        m = rng.uniform(-0.1, 0.1, size=(rows, nb)).astype(np.float16)
        out[:, :, 2:4] = m.view(np.uint8).reshape(rows, nb, 2)
    return out.reshape(rows, nb * size)


def blocks_decode(blocks, fmt, d):
    rows, nb, size = blocks.shape[0], d // 32, BLOCK_BYTES[fmt]
    b = blocks.reshape(rows, nb, size)
    half = lambda o: b[:, :, o:o + 2].copy().view(np.float16).astype(np.float64)  # noqa: E731
    scale = half(0)
    off = 4 if fmt in ("q4_1", "q5_1") else 2
    m = half(2) if fmt in ("q4_1", "q5_1") else 0.0
    qh = None
    if fmt in ("q5_0", "q5_1"):
        qh = b[:, :, off:off + 4].copy().view("<u4")[..., 0].astype(np.uint64)  # [rows, nb]
        off += 4
    qs = b[:, :, off:off + 16].astype(np.int64)
    q = np.concatenate([qs & 0xF, qs >> 4], axis=2)  # values 0..31 of each block
    if qh is not None:
        bits = (qh[..., None] >> np.arange(32, dtype=np.uint64)) & 1
        q = q | (bits.astype(np.int64) << 4)
    if fmt == "iq4_nl":
        x = IQ4_NL_VALUES[q] * scale
    elif fmt == "q4_0":
        x = (q - 8) * scale
    elif fmt == "q5_0":
        x = (q - 16) * scale
    else:
        x = q * scale + m
    return x.reshape(rows, d)


def attention(q, k, v, seq_lens, q_counts=None, scale=None, window=None, softcap=None,
              lists=None, per_kv_head=False, tree=None, bias=None, alibi=None, sinks=None):
    """Grouped-query attention in float64.

    q: [T, H, Dk]; k: [B, G, L, Dk] and v: [B, G, L, Dv] logical values
    (already decoded); q_counts: query tokens per sequence (their tokens
    are the last positions); lists: sparse position lists per sequence
    (or per (sequence, KV head)); tree: one mask word per query token;
    bias: [B, tokens, H, positions] added to the (softcapped) scores;
    alibi: slope per head (slope * (j - p) added after the softcap);
    sinks: a logit per head joining the softmax denominator.
    Returns (out [T, H, Dv], lse [T, H])."""
    q = np.asarray(q, np.float64)
    t_all, h_all, dk = q.shape
    b_all, g_all = k.shape[0], k.shape[1]
    dv = v.shape[3]
    r = h_all // g_all
    if q_counts is None:
        q_counts = [t_all // b_all] * b_all
    if scale is None:
        scale = 1.0 / np.sqrt(dk)
    out = np.zeros((t_all, h_all, dv))
    lse = np.full((t_all, h_all), -np.inf)
    tok = 0
    for b in range(b_all):
        n, length = q_counts[b], seq_lens[b]
        first_new = length - n
        for t in range(n):
            last = first_new + t
            for g in range(g_all):
                vis = np.arange(length) <= last
                if window is not None:
                    vis &= np.arange(length) > last - window
                if tree is not None:
                    word = int(tree[tok])
                    for j in range(first_new, length):
                        if not (word >> (j - first_new)) & 1:
                            vis[j] = False
                if lists is not None:
                    listed = np.zeros(length, bool)
                    idx = lists[b * g_all + g] if per_kv_head else lists[b]
                    listed[np.asarray(idx, np.int64)] = True
                    vis &= listed
                js = np.nonzero(vis)[0]
                if js.size == 0:
                    continue
                for h in range(g * r, (g + 1) * r):
                    s = k[b, g, js] @ q[tok, h] * scale
                    if softcap is not None:
                        s = softcap * np.tanh(s / softcap)
                    if alibi is not None:
                        s = s + float(alibi[h]) * (js - last)
                    if bias is not None:
                        s = s + np.asarray(bias[b, t, h, js], np.float64)
                    m = s.max() if sinks is None else max(s.max(), float(sinks[h]))
                    w = np.exp(s - m)
                    den = w.sum() + (0.0 if sinks is None else np.exp(float(sinks[h]) - m))
                    out[tok, h] = (w / den) @ v[b, g, js]
                    lse[tok, h] = m + np.log(den)
            tok += 1
    return out, lse
