"""Gradient-weighted attention (Chefer, Gur & Wolf 2021, rules 5 and 6): the arithmetic of
`grad-rollout` and `attn-grad` over N×H×T×T attention and gradient arrays. No torch.

    Ā_l = mean_h max(∇A_l ⊙ A_l, 0);   R ← R + Ā_l · R from R = I, first layer first;
    the map is R[cls, prefix:] (attn-grad: Ā_l[cls, prefix:] of one layer, = a one-layer
    grad-rollout's patch part)."""
from __future__ import annotations

import numpy as np


def attention_gradient(attn: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """N×H×T×T attention and its gradient -> N×T×T: mean over heads of max(∇A ⊙ A, 0)."""
    prod = np.asarray(attn, np.float32) * np.asarray(grad, np.float32)
    return np.maximum(prod, 0).mean(axis=1, dtype=np.float64)


def grad_rollout(layers, grads, cls_index: int = 0,
                 num_prefix_tokens: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Chefer et al.'s relevance over paired sequences of N×H×T×T attention and gradient arrays
    (first layer first). Returns (final N×P, per_layer N×L×P): the CLS row over the patches of
    R after the last layer, and after each layer in turn."""
    relevance = None
    per_layer = []
    for attn, grad in zip(layers, grads):
        a = attention_gradient(attn, grad)
        if relevance is None:
            relevance = np.broadcast_to(np.eye(a.shape[-1]), a.shape).copy()
        relevance = relevance + a @ relevance
        per_layer.append(relevance[:, cls_index, num_prefix_tokens:])
    if relevance is None:
        raise ValueError("grad-rollout needs at least one layer")
    return per_layer[-1], np.stack(per_layer, axis=1)
