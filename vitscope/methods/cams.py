"""The CAM family on a ViT's patch tokens, as pytorch-grad-cam computes it, over N×T×D
activations and their gradients (one forward and one backward pass: what a dump holds). No
torch. The same target as `gradcam`: one block's norm1 output, prefix tokens left out, the
patches on their grid; pytorch-grad-cam's channel axis is D, its spatial axes the patches.

    gradcam    w_d = mean_p G;                        map = Σ_d w_d A
    gradcam-pp (Chattopadhay et al. 2018, eq. 19)     w_d = Σ_p relu(G) · α,
               α = G² / (2 G² + (Σ_p A) G³ + 1e-6), 0 where G = 0;  map = Σ_d w_d A
    hirescam   (Draelos & Carin 2020)                 map = Σ_d G · A
    layercam   (Jiang et al. 2021)                    map = Σ_d relu(G) · A
    eigencam   (Muhammad & Yeasin 2020)               map = the patches' projection on the
               first right-singular vector of the centred P×D activations (no gradient: the
               same map for every class, by construction)

and every map's positive part (pytorch-grad-cam's ReLU after each). Score-CAM needs the model
(one forward pass per channel): vitscope.methods.model_maps.
"""
from __future__ import annotations

import numpy as np

CAMS = ("gradcam", "gradcam-pp", "hirescam", "layercam", "eigencam")
EPS = 1e-6          # pytorch-grad-cam's Grad-CAM++ epsilon


def cam(acts: np.ndarray, grads: np.ndarray | None, kind: str,
        num_prefix_tokens: int = 1) -> np.ndarray:
    """N×T×D activations (and gradients) -> N×P map of `kind` (one of CAMS)."""
    a = np.asarray(acts, np.float32)[:, num_prefix_tokens:]            # N×P×D
    if kind == "eigencam":
        return np.maximum(eigen_projection(a), 0)
    g = np.asarray(grads, np.float32)[:, num_prefix_tokens:]
    if kind == "gradcam":
        weights = g.mean(axis=1, keepdims=True)
        out = (a * weights).sum(axis=-1, dtype=np.float64)
    elif kind == "gradcam-pp":
        g2 = g * g
        g3 = g2 * g
        alpha = g2 / (2 * g2 + a.sum(axis=1, keepdims=True) * g3 + EPS)
        alpha = np.where(g != 0, alpha, 0)
        weights = (np.maximum(g, 0) * alpha).sum(axis=1, keepdims=True)
        out = (a * weights).sum(axis=-1, dtype=np.float64)
    elif kind == "hirescam":
        out = (g * a).sum(axis=-1, dtype=np.float64)
    elif kind == "layercam":
        out = (np.maximum(g, 0) * a).sum(axis=-1, dtype=np.float64)
    else:
        raise ValueError(f"unknown CAM '{kind}' (use {', '.join(CAMS)})")
    return np.maximum(out, 0)


def eigen_projection(a: np.ndarray) -> np.ndarray:
    """N×P×D -> N×P: each image's centred activations projected on their first principal
    direction (numpy's SVD, as pytorch-grad-cam's get_2d_projection: the same sign)."""
    out = np.empty(a.shape[:2], np.float32)
    for i, x in enumerate(a):
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=True)
        out[i] = centred @ vt[0]
    return out
