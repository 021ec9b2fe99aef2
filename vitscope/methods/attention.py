"""Views of the attention itself over N×H×T×T arrays: the CLS row and column, one query's
row. No torch. Used by the cls-heatmap and token-attention plugins and by the Python API."""
from __future__ import annotations

import numpy as np


def cls_maps(attn: np.ndarray, prefix: int, cls: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N×H×T×T -> (CLS→patches N×H×P, patches→CLS N×H×P); `cls` is the CLS token's index
    and `prefix` the number of tokens before the patches (dump.layout)."""
    return attn[:, :, cls, prefix:], attn[:, :, prefix:, cls]


def query_row(attn: np.ndarray, q: np.ndarray) -> np.ndarray:
    """k×H×T×T attention (any float type) -> k×H×T float32: query q[i]'s row of image i."""
    return attn[np.arange(len(q)), :, q, :].astype(np.float32)
