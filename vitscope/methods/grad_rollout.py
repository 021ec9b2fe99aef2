"""Gradient-weighted attention (Chefer, Gur & Wolf 2021, rules 5 and 6): the arithmetic of
`grad-rollout` and `attn-grad` over N×H×T×T attention and gradient arrays. No torch.

    Ā_l = mean_h max(∇A_l ⊙ A_l, 0);   R ← R + Ā_l · R from R = I, first layer first;
    the map is R[cls, prefix:] (attn-grad: Ā_l[cls, prefix:] of one layer, = a one-layer
    grad-rollout's patch part)."""
from __future__ import annotations

import numpy as np

from vitscope.methods.rollout import cls_rows


def attention_gradient(attn: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """N×H×T×T attention and its gradient -> N×T×T: mean over heads of max(∇A ⊙ A, 0)."""
    prod = np.asarray(attn, np.float32) * np.asarray(grad, np.float32)
    return np.maximum(prod, 0).mean(axis=1, dtype=np.float64)


def grad_rollout(layers, grads, cls_index: int = 0,
                 num_prefix_tokens: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Chefer et al.'s relevance over paired sequences of N×H×T×T attention and gradient arrays
    (first layer first). Returns (final N×P, per_layer N×L×P): the CLS row over the patches of
    R after the last layer, and after each layer in turn. R_l = (I + Ā_l) R_{l-1} from R = I,
    so its CLS row is e_clsᵀ (I + Ā_l) … (I + Ā_1): carried as rows (rollout.cls_rows)."""
    steps = [attention_gradient(attn, grad) for attn, grad in zip(layers, grads)]
    if not steps:
        raise ValueError("grad-rollout needs at least one layer")
    rows = cls_rows(steps, cls_index, residual=True)[:, :, num_prefix_tokens:]
    return rows[:, -1], rows
