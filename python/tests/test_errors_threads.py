"""Bad input raises the right exception naming the argument (and never
crashes the interpreter); a plan runs from several Python threads."""

import sys
import threading

import numpy as np
import pytest

import gqa_kernels as gk
from reference import assert_close, attention

B, H, G, D, L = 2, 8, 2, 64, 32


@pytest.fixture
def setup():
    r = np.random.default_rng(30)
    k = r.standard_normal((B, G, L, D)).astype(np.float16)
    v = r.standard_normal((B, G, L, D)).astype(np.float16)
    q = r.standard_normal((B, H, D)).astype(np.float32)
    return gk.Plan(B, H, G, D, dtype="f16"), q, k, v


def test_gqa_error_is_a_value_error():
    assert issubclass(gk.GqaError, ValueError)


def test_plan_errors():
    with pytest.raises(gk.GqaError, match="kv_heads|heads"):
        gk.Plan(1, 8, 3, 64)
    with pytest.raises(gk.GqaError, match="head_dim"):
        gk.Plan(1, 8, 2, 0)
    with pytest.raises(ValueError, match="dtype"):
        gk.Plan(1, 8, 2, 64, dtype="f17")
    with pytest.raises(TypeError, match="dtype"):
        gk.Plan(1, 8, 2, 64, dtype=np.int64)
    with pytest.raises(ValueError, match="precision"):
        gk.Plan(1, 8, 2, 64, precision="sloppy")
    with pytest.raises(gk.GqaError, match="tier|TIER|nosuch"):
        gk.Plan(1, 8, 2, 64, tier="nosuch")
    with pytest.raises(ValueError, match="batch"):
        gk.Plan(-1, 8, 2, 64)
    with pytest.raises(TypeError, match="heads"):
        gk.Plan(1, 8.0, 2, 64)
    with pytest.raises(gk.GqaError, match="window"):
        gk.Plan(1, 8, 2, 64, window=0)
    with pytest.raises(gk.GqaError, match="softcap"):
        gk.Plan(1, 8, 2, 64, softcap=-1.0)
    with pytest.raises(gk.GqaError, match="scale"):
        gk.Plan(1, 8, 2, 64, scale=float("nan"))
    with pytest.raises(gk.GqaError, match="sinks"):
        gk.Plan(1, 8, 2, 64, sinks=[0.0] * 3)


def test_run_errors(setup):
    plan, q, k, v = setup
    with pytest.raises(TypeError, match="^k:.*float16"):
        plan.run(q, k.astype(np.float32), v, [L, L])
    with pytest.raises(TypeError, match="^v:"):
        plan.run(q, k, [[1.0]], [L, L])
    with pytest.raises(TypeError, match="^q:"):
        plan.run(q.astype(np.int32), k, v, [L, L])
    with pytest.raises(gk.GqaError, match="`q`"):
        plan.run(q[:1], k, v, [L, L])
    with pytest.raises(ValueError, match="^k:.*4-D"):
        plan.run(q, k[0], v, [L, L])
    with pytest.raises(ValueError, match="^k:.*last axis"):
        plan.run(q, k[..., :32], v, [L, L])
    with pytest.raises(ValueError, match="^k:.*KV-head"):
        plan.run(q, k[:, :1], v, [L, L])
    with pytest.raises(ValueError, match="^k:.*stride"):
        plan.run(q, k[:, :, ::-1], v, [L, L])
    with pytest.raises(ValueError, match="^k:.*contiguous"):
        plan.run(q, np.asfortranarray(k), v, [L, L])
    with pytest.raises(ValueError, match="^seq_lens:"):
        plan.run(q, k, v, [L + 1, L])
    with pytest.raises(ValueError, match="^seq_lens:"):
        plan.run(q, k, v, [-1, L])
    with pytest.raises(TypeError, match="^seq_lens:"):
        plan.run(q, k, v, [1.5, L])
    with pytest.raises(gk.GqaError, match="seq_lens"):
        plan.run(q, k, v, [L])
    with pytest.raises(gk.GqaError, match="`out`"):
        plan.run(q, k, v, [L, L], out=np.empty((1, H, D), np.float32))
    with pytest.raises(ValueError, match="^out:.*contiguous"):
        plan.run(q, k, v, [L, L], out=np.empty((B, H, 2 * D), np.float32)[:, :, ::2])
    with pytest.raises(TypeError, match="^out:"):
        plan.run(q, k, v, [L, L], out=np.empty((B, H, D), np.float64))
    with pytest.raises(ValueError, match="^layout:"):
        plan.run(q, k, v, [L, L], layout="lbgd")
    with pytest.raises(ValueError, match="^k_scales:"):
        plan.run(q, k, v, [L, L], k_scales=np.ones((B, G, L), np.float32))
    with pytest.raises(ValueError, match="^v:"):
        plan.run(q, k, None, [L, L])
    with pytest.raises(gk.GqaError, match="position"):
        plan.run(q, k, v, [L, L], positions=([5, 3], [0, 2, 2]))
    with pytest.raises(gk.GqaError, match="tree_mask"):
        gk.Plan(B, H, G, D, dtype="f16", q_len=2).run(
            np.zeros((2 * B, H, D), np.float32), k, v, [L, L], tree_mask=[1, 0b100, 1, 3]
        )
    with pytest.raises(gk.GqaError, match="q_offsets"):
        plan.run(q, k, v, [L, L], q_offsets=[0, 2, 2])


def test_length_one_axes_are_not_aliased(setup):
    """A cache with one sequence for a 2-sequence plan, or a pool of one
    page for a table naming page 1, is out of bounds, never index 0 read
    again (numpy's stride of a length-1 axis is kept)."""
    plan, q, k, v = setup
    with pytest.raises(gk.GqaError, match="`k`|`v`"):
        plan.run(q, k[:1], v[:1], [L, L])
    with pytest.raises(gk.GqaError, match="`v`"):
        plan.run(q, k, v[-1:, :, ::1][:, :, :, :], [L, L])
    pool = np.zeros((1, 16, G, D), np.float16)
    with pytest.raises(gk.GqaError, match="k_pages"):
        plan.run_paged(q, pool, pool, np.array([[0], [1]]), [16, 16])


def test_huge_plan_is_a_memory_error_not_a_crash():
    plan = gk.Plan(10**9, 32, 8, 128)
    with pytest.raises(MemoryError, match="workspace"):
        plan.run(np.zeros((1, 32, 128), np.float32), np.zeros((1, 8, 1, 128), np.float16),
                 np.zeros((1, 8, 1, 128), np.float16), [1], out=np.zeros((1, 32, 128), np.float32))


def test_read_only_big_endian_and_unaligned_arrays(setup):
    plan, q, k, v = setup
    frozen_k, frozen_v = k.copy(), v.copy()
    frozen_k.flags.writeable = False
    frozen_v.flags.writeable = False
    assert np.array_equal(plan.run(q, frozen_k, frozen_v, [L, L]), plan.run(q, k, v, [L, L]))
    with pytest.raises(TypeError, match="^k:.*>f2"):
        plan.run(q, k.astype(">f2"), v, [L, L])
    raw = np.zeros(k.nbytes + 1, np.uint8)[1:]
    unaligned = raw.view(np.float16).reshape(k.shape)
    assert not unaligned.flags.aligned
    with pytest.raises(ValueError, match="^k:.*aligned"):
        plan.run(q, unaligned, v, [L, L])


def test_int8_errors():
    plan = gk.Plan(B, H, G, D, dtype="int8")
    k = np.zeros((B, G, L, D), np.int8)
    q = np.zeros((B, H, D), np.float32)
    s = np.ones((B, G, L), np.float32)
    with pytest.raises(ValueError, match="^k_scales:"):
        plan.run(q, k, k, [L, L], v_scales=s)
    with pytest.raises(ValueError, match="^k_scales:.*shape"):
        plan.run(q, k, k, [L, L], k_scales=s[:, :, :4], v_scales=s)
    with pytest.raises(ValueError, match="^v_scales:.*strides"):
        plan.run(q, k, k, [L, L], k_scales=s, v_scales=np.asfortranarray(s))


def test_paged_errors():
    plan = gk.Plan(B, H, G, D, dtype="f16")
    pool = np.zeros((4, 16, G, D), np.float16)
    q = np.zeros((B, H, D), np.float32)
    with pytest.raises(gk.GqaError, match="page"):
        plan.run_paged(q, pool, pool, np.array([[0, 9], [1, 2]]), [32, 32])
    with pytest.raises(gk.GqaError, match="block"):
        plan.run_paged(q, pool, pool, np.array([[0], [1]]), [32, 32])
    with pytest.raises(ValueError, match="^block_table:"):
        plan.run_paged(q, pool, pool, np.array([[0, -1], [1, 2]]), [32, 32])
    with pytest.raises(ValueError, match="^block_table:"):
        plan.run_paged(q, pool, pool, np.array([0, 1]), [16, 16])


def test_many_bad_inputs_never_crash(setup):
    """Random shapes, dtypes and strides: always a Python exception or a result."""
    plan, q, k, v = setup
    r = np.random.default_rng(31)
    dtypes = [np.float16, np.float32, np.int8, np.uint8, np.uint16, np.float64]
    for _ in range(300):
        shape = tuple(int(x) for x in r.integers(0, 5, size=int(r.integers(0, 6))))
        a = np.zeros(shape, dtypes[int(r.integers(0, len(dtypes)))])
        if a.ndim and r.integers(0, 2):
            a = a[..., ::2]
        lens = [int(x) for x in r.integers(0, 40, size=int(r.integers(0, 4)))]
        try:
            plan.run(q, a, v, lens)
        except (ValueError, TypeError):
            pass
        try:
            plan.run_paged(q, a, a, r.integers(0, 9, size=(2, 3)), lens)
        except (ValueError, TypeError):
            pass
        try:
            plan.run_ring(q, a, v, lens, [int(x) for x in r.integers(0, 99, size=len(lens))])
        except (ValueError, TypeError):
            pass
        new = np.zeros(tuple(int(x) for x in r.integers(0, 4, size=3)), np.float32)
        try:
            gk.append(a, a.copy() if r.integers(0, 2) else None, new, new, [0, len(new)], [int(r.integers(0, 9))],
                      dtype=["f16", "f32", "int8", "q8_0"][int(r.integers(0, 4))], ring=bool(r.integers(0, 2)))
        except (ValueError, TypeError):
            pass


def test_threads_share_a_plan():
    """Eight Python threads run one plan (with 2 worker threads of its own)
    on their own queries; each result is bitwise the serial one."""
    r = np.random.default_rng(32)
    big_l = 4096
    k = r.standard_normal((B, G, big_l, D)).astype(np.float16)
    v = r.standard_normal((B, G, big_l, D)).astype(np.float16)
    plan = gk.Plan(B, H, G, D, dtype="f16", max_kv_len=big_l, threads=2)
    qs = [r.standard_normal((B, H, D)).astype(np.float32) for _ in range(8)]
    lens = [big_l, 1000]
    serial = [plan.run(q, k, v, lens) for q in qs]
    results = [None] * len(qs)
    errors = []

    def work(i):
        try:
            for _ in range(10):
                out = plan.run(qs[i], k, v, lens)
                if results[i] is not None and not np.array_equal(out, results[i]):
                    raise AssertionError("a thread's result changed")
                results[i] = out
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(qs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, serial):
        assert np.array_equal(got, want)
    want, _ = attention(qs[0], k.astype(np.float64), v.astype(np.float64), lens)
    assert_close(serial[0], want, np.abs(v).max())


def test_gil_is_released():
    """Another Python thread runs while a step runs. The switch interval is
    raised so that, were the GIL held through the step, the other thread
    could not run at all between `go` and the step's end."""
    r = np.random.default_rng(33)
    big_l, q_len = 16384, 32
    k = r.standard_normal((1, G, big_l, D)).astype(np.float16)
    v = r.standard_normal((1, G, big_l, D)).astype(np.float16)
    q = r.standard_normal((q_len, H, D)).astype(np.float32)
    plan = gk.Plan(1, H, G, D, dtype="f16", q_len=q_len, max_kv_len=big_l)
    plan.run(q, k, v, [big_l])  # warm up (pages, workspace)
    go, done = threading.Event(), threading.Event()
    ticks = [0]

    def spin():
        go.wait()
        while not done.is_set():
            ticks[0] += 1

    old = sys.getswitchinterval()
    t = threading.Thread(target=spin)
    t.start()
    sys.setswitchinterval(1.0)
    try:
        go.set()
        plan.run(q, k, v, [big_l])
        during = ticks[0]
    finally:
        done.set()
        sys.setswitchinterval(old)
        t.join()
    assert during > 0
