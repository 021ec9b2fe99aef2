"""What checking every hook-point read for NaN and infinity costs (vitscope.dump.finite).

    python benchmarks/finite_reads.py                       # 256 images, 64×64 px, patch 8
    python benchmarks/finite_reads.py --images 512 --repeats 7

A dump of a small random ViT is captured once (attention of every block, fp16, lzf); then
every attention dataset is read whole in the chunks plugins use (vitscope.plugin.reading),
converted to float32 as plugins do, through `Dump[name]` (checked) and through the raw h5py
dataset (unchecked), alternating. Prints the median seconds of each and the ratio with a
bootstrap 95% interval of the median difference.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def read_all(dump, checked: bool) -> float:
    from vitscope.plugin.reading import read_chunks
    t0 = time.perf_counter()
    for name in dump.match("blocks.*.attn.weights"):
        ds = dump[name] if checked else dump._f["acts"][name]
        for _, chunk in read_chunks(ds, len(dump)):
            chunk.sum()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from vitscope.dump import Dump
    from vitscope.testing import make_dump
    with tempfile.TemporaryDirectory() as tmp:
        path = make_dump(Path(tmp) / "d.h5", n=args.images, image_size=args.image_size,
                         patch_size=args.patch_size, depth=4, num_heads=4, embed_dim=64,
                         hooks=["blocks.*.attn.weights"])
        size = os.path.getsize(path) / 1e6
        with Dump.open(path) as dump:
            read_all(dump, True), read_all(dump, False)       # warm the page cache
            times = {True: [], False: []}
            for _ in range(args.repeats):
                for checked in (True, False):
                    times[checked].append(read_all(dump, checked))
            n_values = sum(int(np.prod(dump[n].shape)) for n in dump.match("blocks.*.attn.weights"))
    rng = np.random.default_rng(0)
    diffs = [statistics.median(rng.choice(times[True], len(times[True])))
             - statistics.median(rng.choice(times[False], len(times[False])))
             for _ in range(2000)]
    checked, raw = statistics.median(times[True]), statistics.median(times[False])
    print(f"{args.images} images, {n_values / 1e6:.1f} M fp16 attention values ({size:.1f} MB "
          f"on disk), {args.repeats} repeats; load {os.getloadavg()[0]:.2f}")
    print(f"checked (Dump[name]): {checked:.3f} s   raw h5py: {raw:.3f} s   "
          f"difference {checked - raw:+.3f} s, 95% CI [{np.percentile(diffs, 2.5):+.3f}, "
          f"{np.percentile(diffs, 97.5):+.3f}] ({100 * (checked / raw - 1):+.1f}%)")


if __name__ == "__main__":
    main()
