"""What `vitscope ablate` costs: every head and MLP ablated, zero and mean, on N images.

    python benchmarks/ablate_cost.py [--images 256] [--threads 2] [--modes zero mean]

Models (random weights: the cost does not depend on them), at 32×32 px, patch 4 (65 tokens):
  shipped   the shipped CIFAR-10 checkpoint's shape: 4 blocks × 4 heads, width 128, ConvStem;
  12x12     12 blocks × 12 heads, width 192 (ViT-Tiny's width with 12 heads of 16);
  12x12-wide  the same at width 384 (ViT-S's), four times the work per pass.
The cost is linear in the images and in the passes: `--images 64` and ×4 estimates 256.
Prints the seconds of one clean forward pass over the images, the number of edited passes
(modes × components), the wall-clock time of the whole ablation, and the machine's load
(`os.getloadavg`), since neighbours on a shared machine slow every number down.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from vitscope.data import to_model_input
from vitscope.evaluate.ablation import ablate
from vitscope.model.vit import ModelConfig, ViT

MODELS = {
    "shipped": dict(embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, stem="conv",
                    stem_channels=[32]),
    "12x12": dict(embed_dim=192, depth=12, num_heads=12, mlp_ratio=4.0),
    "12x12-wide": dict(embed_dim=384, depth=12, num_heads=12, mlp_ratio=4.0),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["zero", "mean"])
    ap.add_argument("--models", nargs="+", default=["shipped", "12x12"], choices=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (args.images, 32, 32, 3), dtype=np.uint8)
    print(f"load average before: {os.getloadavg()[0]:.1f}; threads {args.threads}; "
          f"{args.images} images")
    for name in args.models:
        torch.manual_seed(0)
        model = ViT(ModelConfig(image_size=32, patch_size=4, num_classes=10,
                                **MODELS[name])).eval()
        x = to_model_input(torch.from_numpy(images), [0.5] * 3, [0.5] * 3)
        with torch.inference_mode():
            model(x[:8])
            t = time.perf_counter()
            model(x)
            forward = time.perf_counter() - t
        cfg = model.cfg
        passes = len(args.modes) * cfg.depth * (cfg.num_heads + 1)
        t = time.perf_counter()
        result = ablate(model, images, None, [0.5] * 3, [0.5] * 3, modes=tuple(args.modes),
                        target="pred", batch_size=256)
        total = time.perf_counter() - t
        top = ", ".join(n for n, _, _ in result.top(3))
        print(f"{name:8s} {cfg.depth}×{cfg.num_heads}: clean forward {forward:.2f} s; "
              f"{passes} edited passes; ablation {total:.1f} s "
              f"({total / max(passes, 1):.2f} s/pass); load now {os.getloadavg()[0]:.1f}; "
              f"top heads {top}", flush=True)


if __name__ == "__main__":
    main()
