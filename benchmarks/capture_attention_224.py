"""Capture of every attention map of a real-size ViT against a plain forward, in one process:
timm `vit_small_patch16_224` (random weights: cost depends on shapes), 64 images at 224 px,
`blocks.*.attn.weights` (12 blocks × 6 heads × 197 × 197, 5.6 MB an image in fp16).

    python benchmarks/capture_attention_224.py                      # CPU, 3 alternating rounds
    python benchmarks/capture_attention_224.py --repeats 5 --compression auto,none,lzf

Each round runs, back to back on the same batches: the plain forward (the same uint8 ->
normalised input path, no hooks), the steps a capture adds one at a time (hooks that keep the
attention, as timm's AttentionExtract does; then its cast to the dump's fp16), and `capture()`
into a file with each compression asked for. The machine is shared, so the rounds alternate
and every ratio is taken within its round (capture seconds against that round's plain
forward); the median and the best over rounds are printed, with the load average (`uptime`)
before and after. Each step is timed in wall-clock seconds and in CPU seconds of this process
(every thread: the writer's compressing included); on a shared CPU the wall clock depends on
the neighbours, the CPU time far less.

The baseline, measured in the same rounds: "before" is capture as it was before issue 23's
item 5 (compression lzf, and glibc mapping every block over 32 MB afresh); "plain+reuse" and
"hooked+fp16+reuse" run with the heap setting capture now uses (vitscope._internal.memory.
reuse_large_blocks), to show how much of the gain is the allocator's.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

import vitscope.capture.stream as stream
from vitscope._internal.memory import reuse_large_blocks
from vitscope.capture import capture
from vitscope.capture.memory import auto_batch_size
from vitscope.data import ImageDataset, to_model_input
from vitscope.model.adapters import build
from vitscope.model.hooks import attach, resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture_throughput import Timer  # noqa: E402  (the sibling benchmark's wall + CPU timer)

HOOKS = ("blocks.*.attn.weights",)
MEAN = STD = [0.5, 0.5, 0.5]


def images_like_photos(n: int, size: int) -> np.ndarray:
    """Smooth random colour fields (noise would be an unrealistic input)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (n, size // 16, size // 16, 3), dtype=np.uint8)
    return np.ascontiguousarray(small.repeat(16, axis=1).repeat(16, axis=2))


def batches(images: np.ndarray, batch: int):
    for i in range(0, len(images), batch):
        yield torch.from_numpy(images[i:i + batch])


def plain(model, images, batch) -> Timer:
    with torch.inference_mode(), Timer() as t:
        for u8 in batches(images, batch):
            model(to_model_input(u8, MEAN, STD))
    return t


def hooked(model, images, batch, names, cast: bool) -> Timer:
    """The forward with every attention hooked and kept (explicit attention in each block);
    with `cast`, each also converted to fp16 as the capture stores it."""
    kept: dict[str, torch.Tensor] = {}

    def keep(t, name):
        kept[name] = t.to(torch.float16) if cast else t
    with attach(model, {n: keep for n in names}), torch.inference_mode(), Timer() as t:
        for u8 in batches(images, batch):
            kept.clear()
            model(to_model_input(u8, MEAN, STD))
    return t


def captured(model, ds, folder: Path, batch: int, compression: str,
             reuse: bool = True) -> tuple[Timer, int, dict]:
    """`capture()` into a file; without `reuse`, as before: glibc's default thresholds."""
    out = folder / f"attn-{compression}.h5"
    kept = stream.reuse_large_blocks
    if not reuse:
        stream.reuse_large_blocks = contextlib.nullcontext
    try:
        with Timer() as seconds:
            capture(model, ds, out, list(HOOKS), batch_size=batch, compression=compression,
                    force=True, device="cpu", seed=None)
    finally:
        stream.reuse_large_blocks = kept
    with h5py.File(out, "r") as f:      # how the first attention map was stored
        first = f["acts"][sorted(f["acts"])[0]]
        filters = {"filter": first.compression or "none", "chunks": first.chunks}
    size = out.stat().st_size
    out.unlink()
    return seconds, size, filters


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compression", default="auto,none",
                    help="comma-separated: the compressions to capture with, each round")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default: what capture picks itself (auto_batch_size)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--folder", default=None, help="where dumps go (default: a temporary one)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build("timm", args.model).eval()
    size = model.input_shape[1]
    images = images_like_photos(args.images, size)
    ds = ImageDataset(images=images, labels=np.zeros(args.images, np.int64), classes=[],
                      masks=None, spec="random", split="val", paths=None)
    names = resolve(model, HOOKS)
    batch = args.batch_size or auto_batch_size(model, names, (), "float16")
    folder = Path(args.folder or tempfile.mkdtemp(prefix="vitscope-attn224-"))
    folder.mkdir(parents=True, exist_ok=True)
    kinds = args.compression.split(",")
    print(f"{platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); {args.model} {size} px, {args.images} images, "
          f"batch {batch}, {len(names)} attention maps; dumps in {folder}")
    print(f"load average before: {load()}")
    plain(model, images[:batch], batch)      # warm-up
    rounds: list[dict[str, Timer]] = []
    sizes: dict[str, int] = {}
    layout: dict[str, dict] = {}
    try:
        for r in range(args.repeats):
            row = {"plain": plain(model, images, batch),
                   "hooked": hooked(model, images, batch, names, cast=False),
                   "hooked+fp16": hooked(model, images, batch, names, cast=True)}
            with reuse_large_blocks():
                row["plain+reuse"] = plain(model, images, batch)
                row["hooked+fp16+reuse"] = hooked(model, images, batch, names, cast=True)
            row["before"], sizes["before"], layout["before"] = captured(
                model, ds, folder, batch, "lzf", reuse=False)
            for kind in kinds:
                row[kind], sizes[kind], layout[kind] = captured(model, ds, folder, batch, kind)
            rounds.append(row)
            print(f"round {r + 1}: " + "  ".join(f"{k} {v.wall:.2f} s ({v.cpu:.2f} CPU s)"
                                                 for k, v in row.items())
                  + f"   (load {load()})", flush=True)
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"load average after: {load()}")
    base = [r["plain"].wall for r in rounds]
    print(f"\nplain forward: {args.images / statistics.median(base):.1f} images/s (median)")
    print(f"{'step':<18}{'images/s':>10}{'× plain: median':>17}{'best':>7}{'CPU-time ×':>12}"
          f"{'MB on disk':>12}  stored as")
    for key in ["hooked", "hooked+fp16", "plain+reuse", "hooked+fp16+reuse", "before", *kinds]:
        ratios = [r["plain"].wall / r[key].wall for r in rounds]
        cpu = [r["plain"].cpu / r[key].cpu for r in rounds]
        ips = args.images / statistics.median([r[key].wall for r in rounds])
        mb = f"{sizes[key] / 1e6:,.0f}" if key in sizes else ""
        how = layout.get(key, {})
        text = f"{how.get('filter', '')} chunks {how.get('chunks')}" if how else ""
        print(f"{key:<18}{ips:>10.1f}{statistics.median(ratios):>16.2f}×{max(ratios):>6.2f}×"
              f"{statistics.median(cpu):>11.2f}×{mb:>12}  {text}")


if __name__ == "__main__":
    main()
