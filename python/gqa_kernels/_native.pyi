"""Type stubs of the native module (gqa_kernels._native); the public API
is gqa_kernels (its __init__.py is typed inline)."""

from typing import List, Optional, Sequence, Tuple

import numpy as np

class GqaError(ValueError): ...

class Plan:
    def __init__(
        self,
        batch: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        dtype: str,
        head_dim_v: Optional[int],
        v_dtype: Optional[str],
        q_len: int,
        max_kv_len: int,
        threads: int,
        precision: str,
        window: Optional[int],
        softcap: Optional[float],
        alibi_slopes: Optional[Sequence[float]],
        alibi_max_bias: Optional[float],
        sinks: Optional[Sequence[float]],
        scale: Optional[float],
        tier: Optional[str],
        cascade: bool,
        unit: Optional[str] = None,
    ) -> None: ...
    @property
    def shape(self) -> Tuple[int, int, int, int, int, int, int, str, str]: ...
    @property
    def tier(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def kernel_name(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def scale(self) -> float: ...
    @property
    def workspace_bytes(self) -> int: ...
    def run(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: Optional[np.ndarray],
        seq_lens: Sequence[int],
        out: np.ndarray,
        lse: Optional[np.ndarray],
        cache: str,
        k_scales: Optional[np.ndarray] = None,
        v_scales: Optional[np.ndarray] = None,
        block_table: Optional[Sequence[int]] = None,
        blocks_per_seq: int = 0,
        first_pos: Optional[Sequence[int]] = None,
        q_offsets: Optional[Sequence[int]] = None,
        positions: Optional[Sequence[int]] = None,
        position_offsets: Optional[Sequence[int]] = None,
        per_kv_head: bool = False,
        tree_mask: Optional[Sequence[int]] = None,
        prefix: Optional[Tuple[Sequence[int], Sequence[int], Sequence[int]]] = None,
        bias: Optional[np.ndarray] = None,
    ) -> None: ...

def append(
    k: np.ndarray,
    v: Optional[np.ndarray],
    new_k: np.ndarray,
    new_v: Optional[np.ndarray],
    offsets: Sequence[int],
    positions: Sequence[int],
    dtype: str,
    v_dtype: Optional[str],
    cache: str,
    k_scales: Optional[np.ndarray] = None,
    v_scales: Optional[np.ndarray] = None,
    block_table: Optional[Sequence[int]] = None,
    blocks_per_seq: int = 0,
) -> None: ...
def merge_states(
    out: np.ndarray, lse: np.ndarray, other_out: np.ndarray, other_lse: np.ndarray, head_dim_v: int
) -> None: ...
def pool_heads(
    src: np.ndarray, dtype: str, heads: int, head_dim: int, cols: int, groups: int, how: str
) -> np.ndarray: ...
def active_tier() -> str: ...
def dtypes() -> List[str]: ...
def units() -> List[Tuple[str, Optional[str]]]: ...
