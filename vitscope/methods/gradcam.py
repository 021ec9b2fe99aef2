"""Grad-CAM (Selvaraju et al. 2017) on a ViT's patch tokens: the arithmetic over N×T×D
activations and their gradients. No torch. Used by the `gradcam` plugin on dump chunks and by
the Python API on in-memory captures."""
from __future__ import annotations

import numpy as np


def gradcam(acts: np.ndarray, grads: np.ndarray, num_prefix_tokens: int = 1) -> np.ndarray:
    """N×T×D activations and gradients -> N×P Grad-CAM over the patch tokens."""
    a = np.asarray(acts, np.float32)[:, num_prefix_tokens:]
    g = np.asarray(grads, np.float32)[:, num_prefix_tokens:]
    weights = g.mean(axis=1, keepdims=True)                       # N×1×D
    return np.maximum((a * weights).sum(axis=-1, dtype=np.float64), 0)
