"""The weights that turn a hooked model's activations into residual contributions and logits,
as plain float32 arrays: what a dump stores so that read-outs need no model.

    params = readout_parameters(model)     # {"norm.weight": D, ..., "head.weight": C×D, ...}

Keys (vitscope.dump.derive reads them):
- `norm.weight`, `norm.bias`, `norm.eps`: the final LayerNorm;
- `head.weight` (C×D), `head.bias` (C): only where the logits are one linear map of the
  final-norm CLS token (a pooled, distilled or two-layer head has none: no logit lens there);
- `blocks.{i}.attn.proj.weight` (D×H·dh), `.bias` (D): turns `attn.head_out` into each
  head's contribution (`attn.out` is the sum over heads plus the bias);
- `blocks.{i}.ls1`, `blocks.{i}.ls2` (D): layer scale after attention and after the MLP, only
  where the model has it (timm `ls1.gamma`, DINOv2 `layer_scale1.lambda1`).

Every hooked model says where these live with `readout_modules()`; a model without it (or
a family that gives none) yields {} and the read-outs say so.
"""
from __future__ import annotations

import numpy as np
import torch


def _array(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def readout_parameters(model) -> dict[str, np.ndarray]:
    """The read-out weights of `model` as float32 arrays (module docstring); {} if unknown."""
    find = getattr(model, "readout_modules", None)
    if find is None:
        return {}
    mods = find()
    out: dict[str, np.ndarray] = {}
    norm = mods.get("norm")
    if isinstance(norm, torch.nn.LayerNorm):
        if norm.weight is not None:
            out["norm.weight"] = _array(norm.weight)
        if norm.bias is not None:
            out["norm.bias"] = _array(norm.bias)
        out["norm.eps"] = np.float32(norm.eps)
    head = mods.get("head")
    if isinstance(head, torch.nn.Linear):
        out["head.weight"] = _array(head.weight)
        if head.bias is not None:
            out["head.bias"] = _array(head.bias)
    for i, proj in enumerate(mods.get("proj") or []):
        out[f"blocks.{i}.attn.proj.weight"] = _array(proj.weight)
        if proj.bias is not None:
            out[f"blocks.{i}.attn.proj.bias"] = _array(proj.bias)
    for key in ("ls1", "ls2"):
        for i, gamma in enumerate(mods.get(key) or []):
            if gamma is not None:
                out[f"blocks.{i}.{key}"] = _array(gamma)
    return out
