"""Attention rollout (Abnar & Zuidema 2020): the arithmetic, over N×H×T×T arrays. No torch.

Used by the `rollout` plugin on dump chunks and by the Python API on in-memory captures: one
implementation, so both give the same numbers."""
from __future__ import annotations

import numpy as np

FUSIONS = ("mean", "max", "min")


def fuse_heads(attn: np.ndarray, fusion: str) -> np.ndarray:
    """N×H×T×T attention -> N×T×T by the mean, max or min over heads, in float32 or wider:
    fp16 input is reduced as it is (the mean accumulates in float32), never converted whole."""
    dtype = np.result_type(attn.dtype, np.float32)
    if fusion == "mean":
        return attn.mean(axis=1, dtype=dtype)
    if fusion == "max":
        return attn.max(axis=1).astype(dtype, copy=False)
    if fusion == "min":
        return attn.min(axis=1).astype(dtype, copy=False)
    raise ValueError(f"unknown head fusion '{fusion}' (use {', '.join(FUSIONS)})")


def pooled_query(pool: np.ndarray, fusion: str = "mean") -> np.ndarray:
    """N×H×1×P pooling-head attention (SigLIP's `pool.weights`) -> N×P: its one query's row
    with the heads fused as rollout fuses them, in float32."""
    return fuse_heads(np.asarray(pool), fusion)[:, 0]


def discard_lowest(a: np.ndarray, ratio: float, cls: int | None = 0) -> np.ndarray:
    """Zero, per image, the floor(ratio·T·(T−1)) smallest entries of N×T×T `a` outside the
    CLS column (column `cls` is never dropped, so every token keeps its path to CLS; with
    `cls` None, a model without a CLS token, any entry may go)."""
    n, t, _ = a.shape
    keep = np.ones(t, bool) if cls is None else np.arange(t) != cls
    rest = a[:, :, keep].reshape(n, -1)
    k = int(ratio * rest.shape[1])
    if k <= 0:
        return a
    # exactly k per image; ties at the threshold (common in fp16 dumps) go in row-major order
    threshold = np.partition(rest, k - 1, axis=1)[:, k - 1:k]
    below = rest < threshold
    tied = rest == threshold
    need = k - below.sum(axis=1, keepdims=True)
    drop = below | (tied & (np.cumsum(tied, axis=1) <= need))
    rest = np.where(drop, 0.0, rest)
    out = a.copy()
    out[:, :, keep] = rest.reshape(n, t, int(keep.sum()))
    return out


def rollout_step(attn: np.ndarray, fusion: str = "mean", discard_ratio: float = 0.0,
                 cls: int | None = 0) -> np.ndarray:
    """One layer's N×T×T rollout factor: fused, discarded, + identity, rows renormalised."""
    # fuse from the stored precision (the H×T×T block is the big one), accumulate in float64
    a = fuse_heads(np.asarray(attn), fusion).astype(np.float64)
    if discard_ratio > 0:
        a = discard_lowest(a, discard_ratio, cls)
    a = a + np.eye(a.shape[-1])
    return a / a.sum(axis=-1, keepdims=True)


def attention_rollout(layers, fusion: str = "mean", discard_ratio: float = 0.0,
                      num_prefix_tokens: int = 1, cls: int | None = 0,
                      full_row: bool = False,
                      query: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Rollout over a sequence of N×H×T×T attention arrays (first layer first).

    Returns (final N×P, per_layer N×L×P): the CLS row (token `cls`) without prefix tokens of
    the rollout up to the last layer, and up to each layer in turn; with `full_row`, also the
    final N×T CLS row, prefix tokens included.

    `query` (N×T, rows summing to 1) replaces the CLS row for a model that reads out through
    an attention-pooling head instead (SigLIP, `cls` None): the map is query · R, the head's
    attention over the final tokens carried back through the rollout. The head's query is a
    learned constant, not a token of the residual stream, so no identity term joins it.
    """
    steps = [rollout_step(attn, fusion, discard_ratio, cls) for attn in layers]
    if not steps:
        raise ValueError("attention rollout needs at least one layer")
    rows = cls_rows(steps, cls, query=query)                      # N×L×T
    out = (rows[:, -1, num_prefix_tokens:], rows[:, :, num_prefix_tokens:])
    return (*out, rows[:, -1]) if full_row else out


def cls_rows(factors: list[np.ndarray], cls: int | None, residual: bool = False,
             query: np.ndarray | None = None) -> np.ndarray:
    """Row `cls` of each partial product R_l = F_l · … · F_1 (later layers on the left) of
    N×T×T factors: N×L×T. With `residual`, F_l = I + factors[l]. With `query` (N×T), the rows
    are query · R_l instead of e_cls · R_l (a pooling head's query, `cls` unused).

    Only the rows are carried, never R_l itself: e_clsᵀ F_l … F_1 is a row vector times one
    factor after another, from the last layer back to the first, so all L rows cost L(L+1)/2
    vector-matrix products, O(L² T²) per image, instead of L matrix products, O(L T³) (at 197
    tokens and 12 layers about 30 times fewer operations). Needs every factor at once."""
    n, t = factors[0].shape[0], factors[0].shape[-1]
    start = np.zeros((n, 1, t), factors[0].dtype)
    if query is None:
        start[:, 0, cls] = 1
    else:
        start[:, 0] = query
    rows = start[:, :0]
    for f in reversed(factors):                 # the row of R_l joins when F_l is reached
        rows = np.concatenate([start, rows], axis=1)
        rows = rows + rows @ f if residual else rows @ f
    return rows
