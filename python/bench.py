"""Decode-step time of gqa_kernels against numpy (a grouped einsum) and,
when `onnxruntime` and `onnx` import, ONNX Runtime's GroupQueryAttention
(com.microsoft contrib op), on Llama-3-8B attention (H = 32 query heads,
G = 8 KV heads, D = 128), an f16 cache, one sequence of L = 8192 and
32768 positions, at 1 and 2 threads. Every step reads a different
layer's cache (rotating over enough layers to exceed the last-level
cache), as a model's decode step does. Prints the best and median step
times and the ratios of the medians, all measured in this one run.

    python3 python/bench.py            # after `pip install ./python`
    python3 python/bench.py --lengths 1024   # a quick check of the script

numpy's thread count is its BLAS's (set through OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS and MKL_NUM_THREADS in a child process per count).
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

# The installed package, not its sources next to this script (which lack
# the native module).
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path.pop(0)

H, G, D = 32, 8, 128
LENGTHS = (8192, 32768)
THREADS = (1, 2)
# Caches per length: at least 512 MiB in all, so no layer is still cached
# when it is read again.
TOTAL_BYTES = 512 << 20


def layers_for(length):
    per_layer = 2 * G * length * D * 2
    return max(2, -(-TOTAL_BYTES // per_layer))


def make_caches(length, seed=0):
    r = np.random.default_rng(seed)
    n = layers_for(length)
    ks = [r.standard_normal((1, G, length, D), np.float32).astype(np.float16) for _ in range(n)]
    vs = [r.standard_normal((1, G, length, D), np.float32).astype(np.float16) for _ in range(n)]
    q = r.standard_normal((1, H, D), np.float32)
    return q, ks, vs


def numpy_step(q, k, v):
    """Grouped einsum: each KV head serves its r = H / G query heads."""
    r = H // G
    qg = q.reshape(1, G, r, D)
    s = np.einsum("bgrd,bgld->bgrl", qg, k, optimize=True) * (1.0 / np.sqrt(D))
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    out = np.einsum("bgrl,bgld->bgrd", p, v, optimize=True)
    return out.reshape(1, H, D)


def timed(step, n_layers, reps):
    times = []
    for i in range(reps):
        t = time.perf_counter()
        step(i % n_layers)
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times))


def numpy_worker(length, reps):
    q, ks, vs = make_caches(length)
    numpy_step(q, ks[0], vs[0])
    best, med = timed(lambda i: numpy_step(q, ks[i], vs[i]), len(ks), reps)
    print(json.dumps({"best": best, "median": med}))


def numpy_times(length, threads, reps):
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    res = subprocess.run(
        [sys.executable, __file__, "--numpy-worker", str(length), str(reps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    t = json.loads(res.stdout.strip().splitlines()[-1])
    return t["best"], t["median"]


def ort_session(length, threads):
    """An ONNX Runtime session of one GroupQueryAttention node (decode:
    one new token, a past cache of length - 1 positions, [B, G, L, D])."""
    import onnxruntime as ort
    from onnx import AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto

    def value(name, elem, shape):
        v = ValueInfoProto()
        v.name = name
        t = v.type.tensor_type
        t.elem_type = elem
        for d in shape:
            t.shape.dim.add().dim_value = d
        return v

    f16, i32 = TensorProto.FLOAT16, TensorProto.INT32
    node = NodeProto()
    node.op_type, node.domain = "GroupQueryAttention", "com.microsoft"
    node.input.extend(
        ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"]
    )
    node.output.extend(["output", "present_key", "present_value"])
    for name, n in (("num_heads", H), ("kv_num_heads", G)):
        a = node.attribute.add()
        a.name, a.type, a.i = name, AttributeProto.INT, n
    model = ModelProto()
    model.ir_version = 8
    for domain, version in (("", 17), ("com.microsoft", 1)):
        o = model.opset_import.add()
        o.domain, o.version = domain, version
    graph = model.graph
    graph.name = "gqa"
    graph.node.append(node)
    cache = [1, G, length, D]
    graph.input.extend(
        [
            value("query", f16, [1, 1, H * D]),
            value("key", f16, [1, 1, G * D]),
            value("value", f16, [1, 1, G * D]),
            value("past_key", f16, cache),
            value("past_value", f16, cache),
            value("seqlens_k", i32, [1]),
            value("total_sequence_length", i32, []),
        ]
    )
    graph.output.extend(
        [value("output", f16, [1, 1, H * D]), value("present_key", f16, cache), value("present_value", f16, cache)]
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_times(length, threads, reps, q, ks, vs, want):
    """ORT's decode usage: the past and present caches share one buffer
    (IO binding), the new token's K and V are the cache's last row (so the
    write changes nothing and both libraries attend over the same L
    positions)."""
    sess = ort_session(length, threads)
    q16 = q.reshape(1, 1, H * D).astype(np.float16)
    seqlens = np.array([length - 1], np.int32)
    total = np.array(length, np.int32)
    bindings = []
    for k, v in zip(ks, vs):
        b = sess.io_binding()
        b.bind_cpu_input("query", q16)
        b.bind_cpu_input("key", np.ascontiguousarray(k[0, :, length - 1]).reshape(1, 1, G * D))
        b.bind_cpu_input("value", np.ascontiguousarray(v[0, :, length - 1]).reshape(1, 1, G * D))
        b.bind_cpu_input("past_key", k)
        b.bind_cpu_input("past_value", v)
        b.bind_cpu_input("seqlens_k", seqlens)
        b.bind_cpu_input("total_sequence_length", total)
        b.bind_output("output", "cpu")
        b.bind_output("present_key", "cpu", 0, np.float16, list(k.shape), k.ctypes.data)
        b.bind_output("present_value", "cpu", 0, np.float16, list(v.shape), v.ctypes.data)
        bindings.append(b)
    sess.run_with_iobinding(bindings[0])
    got = bindings[0].copy_outputs_to_cpu()[0].astype(np.float64).reshape(1, H, D)
    # ORT returns f16: compare within f16 rounding of the output.
    err = np.abs(got - want).max()
    assert err <= 2e-3 * max(1.0, np.abs(want).max()), f"ORT output differs by {err}"
    return timed(lambda i: sess.run_with_iobinding(bindings[i]), len(ks), reps)


def main(lengths):
    import gqa_kernels as gk

    try:
        import onnxruntime  # noqa: F401
        import onnx  # noqa: F401

        have_ort = True
    except ImportError:
        have_ort = False
    print(
        f"gqa_kernels {gk.__version__} on tier {gk.active_tier()}; numpy {np.__version__}; "
        f"Llama-3-8B attention (H={H}, G={G}, D={D}), f16 cache [1, G, L, D], B=1, one token"
    )
    if not have_ort:
        print("ONNX Runtime: skipped (onnxruntime or onnx does not import)")
    header = f"{'L':>6} {'thr':>3} {'gqa_kernels ms':>15} {'numpy ms':>10} {'numpy/gqa':>9}"
    if have_ort:
        header += f" {'ORT GQA ms':>11} {'ORT/gqa':>8}"
    print("times: gqa_kernels best / median, numpy and ORT medians; ratios of the medians")
    print(header)
    for length in lengths:
        q, ks, vs = make_caches(length)
        n = len(ks)
        reps = 4 * n
        for threads in THREADS:
            plan = gk.Plan(1, H, G, D, dtype="f16", max_kv_len=length, threads=threads)
            out = np.empty((1, H, D), np.float32)
            got = plan.run(q, ks[0], vs[0], [length], out=out).copy()
            want = numpy_step(q.astype(np.float64), ks[0].astype(np.float64), vs[0].astype(np.float64))
            err = np.abs(got - want).max()
            assert err <= 2e-5 * np.abs(vs[0]).max() + 1e-4 * np.abs(want).max(), err
            best, med = timed(lambda i: plan.run(q, ks[i], vs[i], [length], out=out), n, reps)
            nb, nm = numpy_times(length, threads, max(3, n))
            line = (
                f"{length:>6} {threads:>3} {best * 1e3:>7.3f} /{med * 1e3:>6.3f}"
                f" {nm * 1e3:>10.2f} {nm / med:>8.1f}x"
            )
            if have_ort:
                try:
                    ob, om = ort_times(length, threads, max(3, n), q, ks, vs, want)
                    line += f" {om * 1e3:>11.3f} {om / med:>7.1f}x"
                except Exception as e:  # noqa: BLE001 - reported, the rest still runs
                    line += f"  ORT failed: {type(e).__name__}: {str(e).splitlines()[0][:60]}"
            print(line, flush=True)
            del plan


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--numpy-worker":
        numpy_worker(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--lengths":
        main([int(x) for x in sys.argv[2].split(",")])
    else:
        main(LENGTHS)
