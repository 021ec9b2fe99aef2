"""Attention sinks and high-norm tokens (Darcet et al. 2023, "Vision Transformers Need
Registers"; Sun et al. 2024, "Massive Activations in Large Language Models"): the arithmetic
over N×H×T×T attention and N×T×D residual arrays. No torch.

A trained ViT often parks attention on a few tokens that carry little of the image: one
ordinary-looking background patch receives tens of times the median token's attention and has
an outlier norm. Rollout multiplies such a layer in as it is, so its map becomes that patch.
Used by the `attention-sinks` plugin and by `rollout`'s warning: one implementation.
"""
from __future__ import annotations

import numpy as np

DOMINANT_SHARE = 0.5     # one token taking more than half a layer's attention mass


def received(attn: np.ndarray) -> np.ndarray:
    """N×H×T×T post-softmax attention -> N×T: the share of the layer's attention mass each
    token receives (averaged over heads and query rows, so a row sums to 1)."""
    return np.asarray(attn).mean(axis=(1, 2), dtype=np.float32)


def ratio_to_median(values: np.ndarray, exclude: int | None = None) -> np.ndarray:
    """N×T values divided, per image, by the median over tokens (token `exclude`, e.g. the
    CLS token, left out of the median: it is the query, not a candidate)."""
    values = np.asarray(values, dtype=np.float64)
    pool = np.delete(values, exclude, axis=1) if exclude is not None else values
    median = np.median(pool, axis=1, keepdims=True)
    return values / np.maximum(median, 1e-12)


def token_norms(x: np.ndarray) -> np.ndarray:
    """N×T×D -> N×T L2 norms, accumulated in float32 whatever the stored precision."""
    x = np.asarray(x)
    return np.sqrt(np.einsum("ntd,ntd->nt", x, x, dtype=np.float32))


def top_token_share(attn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N shares, N token indices): per image, the largest share of a layer's attention mass
    one token receives, and which token it is."""
    r = received(attn)
    top = r.argmax(axis=1)
    return r[np.arange(len(r)), top], top


def dominated_layers(shares: np.ndarray, threshold: float = DOMINANT_SHARE) -> list[int]:
    """Layer indices (columns of N×L `shares`, positions in the rollout's span) where the
    images' mean top-token share is over `threshold`."""
    mean = np.asarray(shares, dtype=np.float64).mean(axis=0)
    return [int(i) for i in np.flatnonzero(mean > threshold)]


def start_layer_avoiding(layers: list[int], dominated: list[int]) -> int | None:
    """The first block after the last dominated one, or None when that is past the last of
    `layers` (no start_layer avoids them)."""
    if not dominated:
        return None
    after = max(layers[i] for i in dominated) + 1
    return after if after <= max(layers) else None


def mean_interval(values: np.ndarray, level: float = 0.95, resamples: int = 1000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean over images and its bootstrap percentile interval."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    # resamples drawn in batches of about 2^16 indices: memory does not grow with N × resamples
    batch = max(1, (1 << 16) // len(v))
    means = np.concatenate([v[rng.integers(0, len(v), (min(batch, resamples - i), len(v)))]
                            .mean(axis=1) for i in range(0, resamples, batch)])
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)
