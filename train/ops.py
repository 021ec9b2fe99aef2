"""Batched image operations of the RandAugment / TrivialAugment policies, on the device.

Every op takes a float batch `x` (n×3×H×W, values in [0, 1]) and a per-image magnitude `m`
(n values in [-1, 1]; the sign picks the direction of symmetric ops, |m| the strength as a
fraction of the op's range) and returns a new batch. The formulas follow torchvision's
functional ops (blend with a degenerate image, 3x3 smoothing kernel for sharpness, the same
histogram equalisation), so the policy matches what the seed projects applied per image with
PIL, but a whole batch at a time and without leaving the GPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Magnitude ranges at m = 1. "randaugment": torchvision RandAugment (num_magnitude_bins=31);
# "trivial": TrivialAugmentWide, the ranges the TrivialAugment paper tuned on CIFAR.
RANGES = {
    "randaugment": dict(shear=0.3, translate=150 / 331, rotate=30.0, enhance=0.9, posterize_bits=4),
    "trivial": dict(shear=0.99, translate=1.0, rotate=135.0, enhance=0.99, posterize_bits=6),
}

# Op order matters: the five geometric ops are adjacent so one grid_sample serves them all.
OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
       "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
       "autocontrast", "equalize")
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
GEOMETRIC_IDS = (OPS.index(GEOMETRIC[0]), OPS.index(GEOMETRIC[-1]) + 1)  # a half-open range


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(img: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * img + (1 - factor) * degenerate, clamped (torchvision's _blend)."""
    f = _per_image(factor)
    return (f * img + (1 - f) * degenerate).clamp_(0, 1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, n×1×H×W (as torchvision's rgb_to_grayscale)."""
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def affine(x: torch.Tensor, op_ids: torch.Tensor, m: torch.Tensor, ranges: dict) -> torch.Tensor:
    """Shear, translate or rotate each image (op chosen per image by `op_ids`) about its centre.

    Nearest-neighbour sampling and black fill, as torchvision's policies use by default.
    """
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    is_op = {name: (op_ids == OPS.index(name)).float() for name in GEOMETRIC}
    shear = m * ranges["shear"]
    theta[:, 0, 1] += is_op["shear_x"] * shear
    theta[:, 1, 0] += is_op["shear_y"] * shear
    shift = m * ranges["translate"] * 2  # fraction of the size -> normalised coordinates (width 2)
    theta[:, 0, 2] += is_op["translate_x"] * shift
    theta[:, 1, 2] += is_op["translate_y"] * shift
    angle = m * ranges["rotate"] * (math.pi / 180) * is_op["rotate"]
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1)  # n×2×2
    theta[:, :, :2] = rot @ theta[:, :, :2]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid.to(x.dtype), mode="nearest", padding_mode="zeros",
                         align_corners=False).to(x.dtype)


def brightness(x, m, r):
    return _blend(x, torch.zeros_like(x), 1 + m * r["enhance"])


def color(x, m, r):
    return _blend(x, _grayscale(x), 1 + m * r["enhance"])


def contrast(x, m, r):
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, 1 + m * r["enhance"])


def sharpness(x, m, r):
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5
    kernel = (kernel / kernel.sum()).expand(3, 1, 3, 3)
    smooth = F.conv2d(x, kernel, groups=3)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth  # borders keep their pixels, as in PIL and torchvision
    return _blend(x, degenerate, 1 + m * r["enhance"])


def posterize(x, m, r):
    bits = 8 - torch.round(m.abs() * r["posterize_bits"])
    step = _per_image(torch.pow(2.0, 8 - bits))
    return (torch.floor(torch.round(x * 255) / step) * step / 255).to(x.dtype)


def solarize(x, m, r):
    threshold = _per_image(1 - m.abs())
    return torch.where(x >= threshold, 1 - x, x)


def autocontrast(x, m, r):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1 / (hi - lo).clamp_min(1e-12))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - lo) * scale).clamp_(0, 1)


def equalize(x, m, r):
    """Per-channel histogram equalisation with torchvision's look-up table, batched."""
    n, c, h, w = x.shape
    v = torch.round(x * 255).long().reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device, dtype=torch.float32)
    hist.scatter_add_(1, v, torch.ones_like(v, dtype=torch.float32))
    last = hist.gather(1, v.amax(dim=1, keepdim=True))  # count of the highest value present
    step = torch.floor((h * w - last) / 255)
    lut = torch.floor((hist.cumsum(1) + torch.floor(step / 2)) / step.clamp_min(1))
    lut = F.pad(lut, (1, 0))[:, :-1].clamp_(0, 255)
    out = torch.where(step > 0, lut.gather(1, v), v.float())
    return (out / 255).view(n, c, h, w).to(x.dtype)


COLOR_OPS = {"brightness": brightness, "color": color, "contrast": contrast,
             "sharpness": sharpness, "posterize": posterize, "solarize": solarize,
             "autocontrast": autocontrast, "equalize": equalize}
