"""gqa_kernels: hand-vectorised CPU kernels for the decode step of
grouped-query attention, on numpy arrays without copies.

The caches are numpy arrays borrowed in place (their strides are read
from the array); the GIL is released while the kernels run, and a
:class:`Plan` may be used from several Python threads at once.

Example::

    import numpy as np
    import gqa_kernels as gk

    B, H, G, D, L = 2, 32, 8, 128, 1024
    k = np.random.randn(B, G, L, D).astype(np.float16)  # [B, G, L, D]
    v = np.random.randn(B, G, L, D).astype(np.float16)
    q = np.random.randn(B, H, D).astype(np.float32)      # [B*q_len, H, D]
    plan = gk.Plan(B, H, G, D, dtype="f16", max_kv_len=L)
    out = plan.run(q, k, v, seq_lens=[L, 100])           # [B*q_len, H, D] float32

Storage of each cache dtype (``dtype=`` of the plan):

- ``"f32"``: float32; ``"f16"``: float16;
- ``"bf16"``: uint16 arrays of bfloat16 bits (``ml_dtypes.bfloat16``
  arrays are accepted too and viewed as uint16, no copy);
- ``"int8"``: int8 values and ``k_scales`` / ``v_scales`` float32 arrays,
  one scale per row (the cache's shape without its last axis, in the same
  memory order);
- ``"fp8e4m3"``, ``"fp8e5m2"``: uint8 bytes (``ml_dtypes`` float8 arrays
  accepted) and float32 scales, one per KV head or one;
- ``"fp8e4m3_row"``: uint8 E4M3 bytes and float32 scales one per row, as
  int8's;
- ``"q8_0"``, ``"q4_0"``, ``"q4_1"``, ``"q5_0"``, ``"q5_1"``, ``"iq4_nl"``:
  uint8 bytes of llama.cpp blocks, the last axis holding one row of
  ``head_dim / 32`` blocks (34 bytes per 32 values for q8_0).

Errors: a value the library rejects raises :class:`GqaError` (a
``ValueError``) naming the argument; a wrong array type raises
``TypeError``; bad shapes and strides raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import GqaError

__all__ = [
    "Plan",
    "GqaError",
    "append",
    "merge_states",
    "pool_heads",
    "active_tier",
    "dtypes",
    "units",
]

__version__ = "0.1.0"

_DTYPE_ALIASES = {
    "float32": "f32",
    "float16": "f16",
    "bfloat16": "bf16",
    "half": "f16",
    "float": "f32",
}

_STRIDED_LAYOUTS = ("bgld", "blgd")
_PAGE_LAYOUTS = ("pgd", "gpd")


def active_tier() -> str:
    """The SIMD tier plans run on when none is named (``GQA_KERNELS_ISA``
    may force one), e.g. ``"avx512"``.

    Example::

        >>> gqa_kernels.active_tier() in ("avx512", "avx2", "neon", "scalar")
        True
    """
    return _native.active_tier()


def dtypes() -> list:
    """The cache dtype names the library knows.

    Example::

        >>> "q8_0" in gqa_kernels.dtypes()
        True
    """
    return list(_native.dtypes())


def units() -> dict:
    """Every multiply-add unit by name, mapped to ``None`` where this
    process can use it and to the reason where it cannot (a plan's
    ``unit=`` may name a usable one that has kernels for its types).

    Example::

        >>> gqa_kernels.units()["f32-fma"] is None
        True
    """
    return dict(_native.units())


def _dtype_name(arg: str, dtype: Any) -> str:
    if isinstance(dtype, str):
        return _DTYPE_ALIASES.get(dtype, dtype)
    try:
        name = np.dtype(dtype).name
    except TypeError:
        raise TypeError(f"{arg}: expected a dtype name such as 'f16', got {dtype!r}") from None
    if name in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[name]
    raise TypeError(f"{arg}: numpy dtype {name} is not a cache dtype; pass a name such as 'int8'")


def _storage(arg: str, a: Any) -> Any:
    """The array as the library reads it: ml_dtypes' bfloat16 and float8
    arrays are viewed as their bits (no copy)."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{arg}: expected a numpy array, got {type(a).__name__}")
    name = a.dtype.name
    if name == "bfloat16":
        return a.view(np.uint16)
    if name.startswith("float8"):
        return a.view(np.uint8)
    return a


def _index_list(arg: str, x: Any, kind: str = "uint64") -> list:
    """A small integer argument (lengths, offsets, tables) as a list of
    non-negative Python ints (copied: these are metadata)."""
    a = np.asarray(x)
    if a.dtype == np.bool_ or (a.size and a.dtype.kind not in "iu"):
        raise TypeError(f"{arg}: expected integers, got {a.dtype}")
    a = a.reshape(-1)
    if a.size and a.min() < 0:
        raise ValueError(f"{arg}: entries must be non-negative (found {int(a.min())})")
    if kind == "uint32" and a.size and a.max() > 0xFFFFFFFF:
        raise ValueError(f"{arg}: entries must fit in 32 bits")
    return [int(i) for i in a.tolist()]


def _canonical(arg: str, a: Any, layout: str, allowed: Tuple[str, str]) -> Any:
    """A 4-D cache array (or 3-D scales) viewed in the order the native
    module reads: [outer, position, kv_head, ...]. A transpose: no copy."""
    if a is None:
        return None
    a = _storage(arg, a)
    if layout not in allowed:
        raise ValueError(f"layout: {layout!r} is not one of {', '.join(allowed)}")
    if a.ndim not in (3, 4):
        raise ValueError(f"{arg}: expected a 4-D cache array (or 3-D scales), got {a.ndim} dimensions")
    if layout in ("bgld", "gpd"):
        return a.swapaxes(1, 2)
    return a


def _q_array(q: Any) -> np.ndarray:
    if not isinstance(q, np.ndarray):
        raise TypeError(f"q: expected a numpy array, got {type(q).__name__}")
    if q.dtype.kind != "f":
        raise TypeError(f"q: expected a floating-point array, got {q.dtype}")
    return np.ascontiguousarray(q, dtype=np.float32)


class Plan:
    """A decode plan: the shape and options of one attention layer's step,
    validated once, with its kernels and work split chosen.

    Arguments: ``batch`` sequences, ``heads`` query heads over ``kv_heads``
    KV heads, ``head_dim`` (K's; ``head_dim_v`` for V, default the same),
    ``dtype`` of K (and V unless ``v_dtype``), ``q_len`` query tokens per
    sequence (the most, with ragged ``q_offsets``), ``max_kv_len`` (the
    longest sequence expected: long sequences are split over threads),
    ``threads`` (the plan's own worker threads; results are bitwise the
    same for any count), ``precision`` (``"exact"`` or ``"fast"``),
    ``window`` (sliding window), ``softcap``, ``alibi`` (a max bias, e.g.
    8.0, or one slope per head), ``sinks`` (one logit per head), ``scale``
    (default ``1/sqrt(head_dim)``), ``tier`` (force ``"avx512"``,
    ``"avx2"``, ``"neon"`` or ``"scalar"``), ``unit`` (force a multiply-add
    unit: ``"f32-fma"``, ``"bf16-dot"``, ``"int8-dot"`` or ``"amx-bf16"``;
    one without kernels for the plan's types, or that this CPU lacks, is
    a :class:`GqaError`, never a silent fallback; see :func:`units`) and
    ``cascade`` (the plan runs batches with shared-prefix groups).

    Example::

        plan = gqa_kernels.Plan(1, 32, 8, 128, dtype="f16", max_kv_len=8192, threads=2)
        print(plan.tier, plan.unit, plan.precision, plan.kernel_name)
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        dtype: Any = "f16",
        head_dim_v: Optional[int] = None,
        v_dtype: Any = None,
        q_len: int = 1,
        max_kv_len: int = 0,
        threads: int = 1,
        precision: str = "exact",
        window: Optional[int] = None,
        softcap: Optional[float] = None,
        alibi: Union[None, float, Sequence[float]] = None,
        sinks: Optional[Sequence[float]] = None,
        scale: Optional[float] = None,
        tier: Optional[str] = None,
        cascade: bool = False,
        unit: Optional[str] = None,
    ) -> None:
        for name, value in (
            ("batch", batch),
            ("heads", heads),
            ("kv_heads", kv_heads),
            ("head_dim", head_dim),
            ("q_len", q_len),
            ("max_kv_len", max_kv_len),
            ("threads", threads),
        ):
            _check_count(name, value)
        for name, optional in (("head_dim_v", head_dim_v), ("window", window)):
            if optional is not None:
                _check_count(name, optional)
        slopes: Optional[list] = None
        max_bias: Optional[float] = None
        if alibi is not None:
            if isinstance(alibi, (int, float, np.number)):
                max_bias = float(alibi)
            else:
                slopes = [float(s) for s in np.asarray(alibi, dtype=np.float64).reshape(-1)]
        self._native = _native.Plan(
            batch,
            heads,
            kv_heads,
            head_dim,
            _dtype_name("dtype", dtype),
            head_dim_v,
            None if v_dtype is None else _dtype_name("v_dtype", v_dtype),
            q_len,
            max_kv_len,
            threads,
            precision,
            window,
            None if softcap is None else float(softcap),
            slopes,
            max_bias,
            None if sinks is None else [float(s) for s in np.asarray(sinks, dtype=np.float64).reshape(-1)],
            None if scale is None else float(scale),
            tier,
            bool(cascade),
            unit,
        )
        (
            self.batch,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.head_dim_v,
            self.q_len,
            self.max_kv_len,
            self.dtype,
            self.v_dtype,
        ) = self._native.shape

    @property
    def tier(self) -> str:
        """The tier the plan runs on (``"avx512"``, ``"avx2"``, ``"neon"``, ``"scalar"``)."""
        return self._native.tier

    @property
    def unit(self) -> str:
        """The multiply-add unit the plan's kernels run on, e.g. ``"f32-fma"``."""
        return self._native.unit

    @property
    def precision(self) -> str:
        """The precision class, ``"exact"`` or ``"fast"``."""
        return self._native.precision

    @property
    def kernel_name(self) -> str:
        """The main kernel instance, e.g. ``decode_f16_d128_r4__avx512``."""
        return self._native.kernel_name

    @property
    def threads(self) -> int:
        """Threads a step runs on (the caller's and the plan's workers)."""
        return self._native.threads

    @property
    def scale(self) -> float:
        """The score scale."""
        return self._native.scale

    def __repr__(self) -> str:
        return (
            f"Plan(batch={self.batch}, heads={self.heads}, kv_heads={self.kv_heads}, "
            f"head_dim={self.head_dim}, head_dim_v={self.head_dim_v}, dtype={self.dtype!r}, "
            f"v_dtype={self.v_dtype!r}, q_len={self.q_len}, tier={self.tier!r}, unit={self.unit!r})"
        )

    def _tokens(self, q_offsets: Optional[list]) -> int:
        if q_offsets is None:
            return self.batch * self.q_len
        return q_offsets[-1] if q_offsets else 0

    def _call(
        self,
        cache: str,
        names: Tuple[str, str],
        layout: str,
        q: Any,
        k: Any,
        v: Any,
        latent: bool,
        seq_lens: Any,
        out: Optional[np.ndarray],
        lse: Union[bool, np.ndarray],
        k_scales: Any,
        v_scales: Any,
        q_offsets: Any,
        positions: Any,
        tree_mask: Any,
        prefix: Any,
        bias: Any,
        **extra: Any,
    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """The step of :meth:`run`, :meth:`run_paged` and :meth:`run_ring`:
        ``names`` are the caches' argument names, ``layout`` their axis
        order (checked against the cache kind's two orders)."""
        kname, vname = names
        if latent and v is not None:
            raise ValueError(f"{vname}: a latent cache reads V from K; pass {vname}=None")
        if not latent and v is None:
            raise ValueError(f"{vname}: give the V cache (or latent=True)")
        allowed = _PAGE_LAYOUTS if cache == "paged" else _STRIDED_LAYOUTS
        k = _canonical(kname, k, layout, allowed)
        v = _canonical(vname, v, layout, allowed)
        k_scales = _scales("k_scales", k_scales, layout, allowed)
        v_scales = _scales("v_scales", v_scales, layout, allowed)
        q = _q_array(q)
        if bias is not None:
            if not isinstance(bias, np.ndarray):
                raise TypeError(f"bias: expected a numpy array, got {type(bias).__name__}")
            if bias.ndim == 3:
                bias = bias[:, :, None, :]  # one row for every head (stride 0)
        seq = _index_list("seq_lens", seq_lens)
        qo = None if q_offsets is None else _index_list("q_offsets", q_offsets)
        t = self._tokens(qo)
        if out is None:
            out = np.empty((t, self.heads, self.head_dim_v), dtype=np.float32)
        lse_arr = None
        if isinstance(lse, np.ndarray):
            lse_arr = lse
        elif lse:
            lse_arr = np.empty((t, self.heads), dtype=np.float32)
        pos = pos_off = None
        per_kv_head = False
        if positions is not None:
            if not (isinstance(positions, tuple) and len(positions) in (2, 3)):
                raise TypeError("positions: expected (lists, offsets) or (lists, offsets, per_kv_head)")
            pos = _index_list("positions", positions[0], "uint32")
            pos_off = _index_list("positions", positions[1])
            per_kv_head = bool(positions[2]) if len(positions) == 3 else False
        mask = None
        if tree_mask is not None:
            mask = _index_list("tree_mask", tree_mask)
        pre = None
        if prefix is not None:
            if not (isinstance(prefix, tuple) and len(prefix) == 3):
                raise TypeError("prefix: expected (lens, offsets, members)")
            pre = (
                _index_list("prefix", prefix[0]),
                _index_list("prefix", prefix[1]),
                _index_list("prefix", prefix[2]),
            )
        self._native.run(
            q,
            k,
            v,
            seq,
            out,
            lse_arr,
            cache,
            k_scales=k_scales,
            v_scales=v_scales,
            q_offsets=qo,
            positions=pos,
            position_offsets=pos_off,
            per_kv_head=per_kv_head,
            tree_mask=mask,
            prefix=pre,
            bias=bias,
            **extra,
        )
        if lse_arr is not None and lse is not False:
            return out, lse_arr
        return out

    def run(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: Optional[np.ndarray],
        seq_lens: Sequence[int],
        out: Optional[np.ndarray] = None,
        lse: Union[bool, np.ndarray] = False,
        layout: str = "bgld",
        k_scales: Optional[np.ndarray] = None,
        v_scales: Optional[np.ndarray] = None,
        latent: bool = False,
        q_offsets: Optional[Sequence[int]] = None,
        positions: Optional[tuple] = None,
        tree_mask: Optional[Sequence[int]] = None,
        prefix: Optional[tuple] = None,
        bias: Optional[np.ndarray] = None,
    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """One decode step over a strided cache.

        - ``q``: ``[B*q_len, H, head_dim]`` (or ``[T, H, head_dim]`` with
          ``q_offsets``), any float type (converted to float32: a copy of
          the queries only);
        - ``k``, ``v``: ``[B, G, L, D]`` (``layout="bgld"``, Hugging Face's
          order) or ``[B, L, G, D]`` (``layout="blgd"``), any strides with a
          contiguous last axis (a slice ``k[:, :, :n]`` of a bigger cache
          works), borrowed without a copy; ``L`` is the room per sequence;
        - ``seq_lens``: cached positions per sequence, the step's tokens
          included;
        - ``out``: an optional C-contiguous float32 ``[T, H, head_dim_v]``
          to write (allocated if ``None``); ``lse=True`` also returns the
          natural-log log-sum-exp per row ``[T, H]`` (or pass an array);
        - ``k_scales``/``v_scales``: int8 scales (``[B, G, L]`` or
          ``[B, L, G]`` as the layout) or fp8 scales (per KV head or one);
        - ``latent=True``: a latent cache, V being the leading
          ``head_dim_v`` values of each K row (pass ``v=None``);
        - ``q_offsets``: ragged query tokens, ``B + 1`` offsets (cu_seqlens);
        - ``positions``: sparse lists ``(lists, offsets)`` (one list per
          sequence) or ``(lists, offsets, True)`` (one per sequence and KV
          head);
        - ``tree_mask``: one uint64 word per query token (draft trees);
        - ``prefix``: shared-prefix groups ``(lens, offsets, members)``
          (plan made with ``cascade=True``);
        - ``bias``: an additive float32 bias ``[B, q_len, H, P]`` or
          ``[B, q_len, P]`` (the same for every head), ``P`` at least the
          longest sequence, any strides with a contiguous last axis.

        Returns ``out`` (and ``lse`` when asked).

        Example::

            plan = gqa_kernels.Plan(1, 8, 2, 64, dtype="f32")
            k = np.ones((1, 2, 16, 64), np.float32); v = np.ones_like(k)
            out = plan.run(np.ones((1, 8, 64), np.float32), k, v, [16])
            assert np.allclose(out, 1.0)
        """
        return self._call(
            "strided", ("k", "v"), layout, q, k, v, latent, seq_lens, out, lse,
            k_scales, v_scales, q_offsets, positions, tree_mask, prefix, bias,
        )

    def run_paged(
        self,
        q: np.ndarray,
        k_pages: np.ndarray,
        v_pages: Optional[np.ndarray],
        block_table: Any,
        seq_lens: Sequence[int],
        out: Optional[np.ndarray] = None,
        lse: Union[bool, np.ndarray] = False,
        page_layout: str = "pgd",
        k_scales: Optional[np.ndarray] = None,
        v_scales: Optional[np.ndarray] = None,
        latent: bool = False,
        q_offsets: Optional[Sequence[int]] = None,
        positions: Optional[tuple] = None,
        tree_mask: Optional[Sequence[int]] = None,
        prefix: Optional[tuple] = None,
        bias: Optional[np.ndarray] = None,
    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """One decode step over a paged cache.

        ``k_pages``/``v_pages`` are page pools ``[P, page, G, D]``
        (``page_layout="pgd"``, vLLM's order) or ``[P, G, page, D]``
        (``"gpd"``); ``block_table`` is ``[B, blocks_per_seq]`` page
        indices (position ``j`` of sequence ``b`` is slot ``j % page`` of
        page ``block_table[b, j // page]``). Every page index a step uses
        is checked against the pools. The other arguments are those of
        :meth:`run`.

        Example::

            plan = gqa_kernels.Plan(2, 8, 2, 64, dtype="f16")
            pool = np.zeros((8, 16, 2, 64), np.float16)   # 8 pages of 16
            table = np.array([[0, 3], [5, 1]], np.uint32)
            out = plan.run_paged(np.ones((2, 8, 64), np.float32), pool, pool, table, [20, 32])
        """
        table = np.asarray(block_table)
        if table.ndim != 2:
            raise ValueError(f"block_table: expected [batch, blocks_per_seq], got {table.ndim} dimensions")
        return self._call(
            "paged", ("k_pages", "v_pages"), page_layout, q, k_pages, v_pages, latent, seq_lens, out,
            lse, k_scales, v_scales, q_offsets, positions, tree_mask, prefix, bias,
            block_table=_index_list("block_table", table, "uint32"),
            blocks_per_seq=int(table.shape[1]),
        )

    def run_ring(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: Optional[np.ndarray],
        seq_lens: Sequence[int],
        first_pos: Sequence[int],
        out: Optional[np.ndarray] = None,
        lse: Union[bool, np.ndarray] = False,
        layout: str = "bgld",
        k_scales: Optional[np.ndarray] = None,
        v_scales: Optional[np.ndarray] = None,
        latent: bool = False,
        q_offsets: Optional[Sequence[int]] = None,
        positions: Optional[tuple] = None,
        tree_mask: Optional[Sequence[int]] = None,
        prefix: Optional[tuple] = None,
        bias: Optional[np.ndarray] = None,
    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """One decode step over ring caches (sliding-window models).

        ``k``/``v`` hold ``C`` slots per sequence (``[B, G, C, D]`` or
        ``[B, C, G, D]``); absolute position ``p`` lives in slot ``p % C``.
        Sequence ``b`` attends to the ``seq_lens[b]`` positions starting at
        absolute position ``first_pos[b]`` (at most ``C``). A ``prefix``
        group's shared rows are its first member's first ``lens`` attended
        positions (from its ``first_pos``), read through that member's
        ring. The other arguments are those of :meth:`run`.

        Example::

            plan = gqa_kernels.Plan(1, 8, 2, 64, dtype="f32", window=16)
            ring = np.zeros((1, 2, 16, 64), np.float32)
            out = plan.run_ring(np.ones((1, 8, 64), np.float32), ring, ring, [16], [100])
        """
        return self._call(
            "ring", ("k", "v"), layout, q, k, v, latent, seq_lens, out, lse,
            k_scales, v_scales, q_offsets, positions, tree_mask, prefix, bias,
            first_pos=_index_list("first_pos", first_pos),
        )


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if not 0 <= value < 2**63:
        raise ValueError(f"{name}: must be non-negative (and below 2**63), got {value}")


def _scales(arg: str, s: Any, layout: str, allowed: Tuple[str, str]) -> Any:
    """int8 scales (3-D, in the cache's layout) are transposed like the
    cache; fp8 scales (1-D) pass as they are."""
    if s is None:
        return None
    if not isinstance(s, np.ndarray):
        s = np.asarray(s, dtype=np.float32)
    if s.ndim == 3:
        return _canonical(arg, s, layout, allowed)
    return s


def append(
    k: np.ndarray,
    v: Optional[np.ndarray],
    new_k: np.ndarray,
    new_v: Optional[np.ndarray],
    offsets: Sequence[int],
    positions: Sequence[int],
    dtype: Any,
    v_dtype: Any = None,
    layout: str = "bgld",
    k_scales: Optional[np.ndarray] = None,
    v_scales: Optional[np.ndarray] = None,
    block_table: Any = None,
    ring: bool = False,
) -> None:
    """Writes new tokens' K and V rows into a cache, in place, converted or
    quantized to the cache's ``dtype``.

    - ``k``, ``v``: the cache (layouts of :meth:`Plan.run`, or page pools
      with ``layout="pgd"``/``"gpd"`` and a ``block_table``, or rings with
      ``ring=True``), each contiguous in some order of its axes;
      ``v=None`` with ``new_v=None`` is a latent cache (each new row written
      once, from ``new_k``);
    - ``new_k``, ``new_v``: ``[T, G, Dk]`` / ``[T, G, Dv]`` float32,
      float16 or bfloat16 (uint16 bits) rows, C-contiguous;
    - ``offsets``: ``B + 1`` token offsets (sequence ``b`` owns tokens
      ``offsets[b]:offsets[b+1]``);
    - ``positions``: per sequence, where its first new token goes (its
      length before the append; for a ring, the absolute position);
    - ``k_scales``/``v_scales``: an int8 cache's scales (written too) or
      an fp8 cache's per-head scales (read).

    Example::

        k = np.zeros((1, 2, 16, 64), np.float16); v = np.zeros_like(k)
        new = np.ones((3, 2, 64), np.float32)      # 3 tokens of sequence 0
        gqa_kernels.append(k, v, new, new, [0, 3], [5], dtype="f16")
        assert (k[0, :, 5:8] == 1).all()
    """
    paged = block_table is not None
    allowed = _PAGE_LAYOUTS if paged else _STRIDED_LAYOUTS
    if paged and layout == "bgld":
        layout = "pgd"
    if paged and ring:
        raise ValueError("ring: a cache is paged (block_table) or a ring, not both")
    cache = "paged" if paged else ("ring" if ring else "strided")
    table = None
    blocks_per_seq = 0
    if paged:
        t = np.asarray(block_table)
        if t.ndim != 2:
            raise ValueError(f"block_table: expected [batch, blocks_per_seq], got {t.ndim} dimensions")
        table = _index_list("block_table", t, "uint32")
        blocks_per_seq = int(t.shape[1])
    _native.append(
        _canonical("k", k, layout, allowed),
        _canonical("v", v, layout, allowed),
        _storage("new_k", new_k),
        _storage("new_v", new_v),
        _index_list("offsets", offsets),
        _index_list("positions", positions),
        _dtype_name("dtype", dtype),
        None if v_dtype is None else _dtype_name("v_dtype", v_dtype),
        cache,
        k_scales=_scales("k_scales", k_scales, layout, allowed),
        v_scales=_scales("v_scales", v_scales, layout, allowed),
        block_table=table,
        blocks_per_seq=blocks_per_seq,
    )


def merge_states(out: np.ndarray, lse: np.ndarray, other_out: np.ndarray, other_lse: np.ndarray) -> None:
    """Merges the attention state ``(other_out, other_lse)``, computed over
    other KV positions, into ``(out, lse)`` in place (shared-prefix /
    cascade attention): ``out`` is ``[..., H, Dv]`` float32 and ``lse``
    ``[..., H]`` (natural log, ``-inf`` for an empty range), C-contiguous.

    Example::

        plan = gqa_kernels.Plan(1, 8, 2, 64, dtype="f32")
        q = np.ones((1, 8, 64), np.float32)
        kv = np.random.rand(1, 2, 32, 64).astype(np.float32)
        out1, lse1 = plan.run(q, kv[:, :, :16], kv[:, :, :16], [16], lse=True)
        out2, lse2 = plan.run(q, kv[:, :, 16:], kv[:, :, 16:], [16], lse=True)
        gqa_kernels.merge_states(out1, lse1, out2, lse2)   # out1: over all 32
    """
    for name, a in (("out", out), ("lse", lse), ("other_out", other_out), ("other_lse", other_lse)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if out.ndim < 1:
        raise ValueError("out: expected [..., H, Dv]")
    _native.merge_states(out, lse, other_out, other_lse, int(out.shape[-1]))


def pool_heads(weights: np.ndarray, heads: int, groups: int, how: str = "mean", dtype: Any = None) -> np.ndarray:
    """Converts a K or V projection of ``heads`` heads to ``groups`` KV
    heads (the MHA -> GQA initialisation of Ainslie et al., 2023): each
    group's head is the mean of its ``heads / groups`` contiguous source
    heads (``how="mean"``) or the first of them (``"first"``), means taken
    in f64 and rounded once.

    ``weights`` is ``[heads * head_dim, d_model]`` (a weight; row
    ``h * head_dim + d`` makes element ``d`` of head ``h``) or
    ``[heads * head_dim]`` (a bias), float32, float16 or bfloat16 (uint16
    bits with ``dtype="bf16"``, or an ml_dtypes array); the result has
    ``groups * head_dim`` rows, same type.

    Example::

        w = np.random.randn(32 * 128, 4096).astype(np.float16)   # MHA K weight
        wk = gqa_kernels.pool_heads(w, heads=32, groups=8)       # [8*128, 4096]
    """
    bits = _storage("weights", weights)
    if bits is not weights and weights.dtype.name == "bfloat16":
        dtype = "bf16"
    if dtype is None:
        dtype = {"float32": "f32", "float16": "f16"}.get(bits.dtype.name)
        if dtype is None:
            raise TypeError(
                f"weights: expected float32, float16 or bfloat16 (uint16 with dtype='bf16'), got {bits.dtype}"
            )
    dtype = _dtype_name("dtype", dtype)
    if bits.ndim not in (1, 2):
        raise ValueError(f"weights: expected [heads*head_dim, d_model] or [heads*head_dim], got {bits.ndim} dimensions")
    _check_count("heads", heads)
    _check_count("groups", groups)
    rows = bits.shape[0]
    cols = bits.shape[1] if bits.ndim == 2 else 1
    if heads == 0 or rows % heads:
        raise ValueError(f"heads: {rows} rows are not a whole number of {heads} heads")
    head_dim = rows // heads
    flat = _native.pool_heads(np.ascontiguousarray(bits), dtype, heads, head_dim, cols, groups, how)
    out = flat.reshape((-1, cols)) if bits.ndim == 2 else flat
    if bits is not weights:
        out = out.view(weights.dtype)
    return out
