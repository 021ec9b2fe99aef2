"""Pixel attributions to patch maps, shared by the methods that need the model
(vitscope.capture.model_maps, vitscope.capture.lrp)."""
from __future__ import annotations

import numpy as np
import torch


def patch_sum(pixels: torch.Tensor, layout) -> np.ndarray:
    """N×C×H×W attributions -> N×h×w: summed over channels and over each patch's pixels."""
    (h, w), (ph, pw) = layout.grid, layout.patch_size
    a = pixels.sum(dim=1)[:, :h * ph, :w * pw]
    return a.reshape(len(a), h, ph, w, pw).sum(dim=(2, 4)).detach().cpu().numpy()
