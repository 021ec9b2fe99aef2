"""How fast `imagenet-seg:PATH` reads, on a synthetic file in the benchmark's layout (the real
gtsegs_ijcv.mat is 1.8 GB and not shipped): opening (the layout check reads one image, so it
does not grow with the file), then decoding N images with their masks at a model size.

    python benchmarks/imagenet_seg_read.py [--images 400] [--read 64] [--size 224]

Images are ImageNet-sized (375×500, random pixels, which compress as badly as photos do).
Prints seconds; say which machine and its load (`uptime`) when you quote them.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vitscope.data import imagenet_seg, load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400, help="images in the synthetic file")
    ap.add_argument("--read", type=int, default=64, help="images decoded (a capture's -n)")
    ap.add_argument("--size", type=int, default=224, help="the model's image size")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gtsegs_ijcv.mat"
        images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(args.images)]
        masks = [np.zeros((375, 500), np.uint8) for _ in range(args.images)]
        for m in masks:
            m[100:300, 150:350] = 1
        t0 = time.perf_counter()
        imagenet_seg.write(path, images, masks)
        print(f"wrote {args.images} images of 375×500: {os.path.getsize(path) / 1e6:,.1f} MB "
              f"in {time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        ds = load_dataset(f"imagenet-seg:{path}", "val", args.size)
        print(f"open (layout check, lazy): {time.perf_counter() - t0:.3f} s for {len(ds)} images")
        index = np.sort(rng.choice(len(ds), args.read, replace=False))
        t0 = time.perf_counter()
        ds.images[index]
        t_img = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds.masks[index]
        t_mask = time.perf_counter() - t0
        print(f"decode {args.read} images at {args.size} px: {t_img:.2f} s "
              f"({1e3 * t_img / args.read:.1f} ms/image); their masks: {t_mask:.2f} s")
        t0 = time.perf_counter()
        ds.fingerprint()
        print(f"fingerprint (file identity, no pixels): {time.perf_counter() - t0:.4f} s")


if __name__ == "__main__":
    main()
