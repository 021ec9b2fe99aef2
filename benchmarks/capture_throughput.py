"""Capture throughput: plain forward vs `vitscope.capture` for three hook sets, next to `dd`.

    python benchmarks/capture_throughput.py --device cpu [--images 512] [--threads 2]

For each model (vit-tiny, seed-cifar10 at 32x32, random weights: speed does not depend on
them) it prints images/s of
  plain      the model alone on the same uint8 -> normalised input path (no hooks);
  hooked     the forward with the set's hooks attached and activations cast/copied to the
             host, nothing written (the model-side cost, explicit attention included);
  write      the HDF5 writer alone storing those activations (the disk/compression side);
  capture    the real thing: `capture()` into a file;
and bytes/image on disk and MB/s written, for (a) `cls` only, (b) every attention weight,
(c) DEFAULT_HOOKS. Each number is the best of --repeats interleaved runs; on a CPU the
throughput per CPU-second of this process is shown too, which neighbours on a shared machine
disturb far less than wall-clock time. Targets: (a) >= 70% of plain; (b), (c) bound by the write path, not by the
model. The machine's sequential write speed (`dd ... oflag=direct`) is printed for comparison.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vitscope.capture import DEFAULT_HOOKS, DTYPES, capture
from vitscope.data import ImageDataset, to_model_input
from vitscope.dump import DumpWriter
from vitscope.model.hooks import attach, resolve
from vitscope.model.vit import ViT, preset

SETS = {"(a) cls": ("cls",), "(b) attention": ("blocks.*.attn.weights",), "(c) default": DEFAULT_HOOKS}
MEAN = STD = [0.5, 0.5, 0.5]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock and CPU seconds of this process (all threads). On a shared CPU the wall
    time depends on the neighbours; the CPU time measures the work itself."""

    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def batches(images: np.ndarray, batch_size: int):
    for i in range(0, len(images), batch_size):
        yield torch.from_numpy(images[i:i + batch_size])


def plain_forward(model, images, batch_size, device) -> Timer:
    with torch.inference_mode():
        model(to_model_input(torch.from_numpy(images[:batch_size]).to(device), MEAN, STD))  # warm-up
        sync(device)
        with Timer() as t:
            for u8 in batches(images, batch_size):
                model(to_model_input(u8.to(device), MEAN, STD))
            sync(device)
    return t


def hooked_forward(model, images, names, batch_size, device, dtype) -> tuple[Timer, dict]:
    """Hooks attached and activations brought to the host, nothing written; one batch's arrays."""
    acts: dict[str, torch.Tensor] = {}
    last: dict[str, np.ndarray] = {}
    with attach(model, {n: (lambda t, n: acts.__setitem__(n, t)) for n in names}), \
            torch.inference_mode(), Timer() as t:
        for u8 in batches(images, batch_size):
            logits = model(to_model_input(u8.to(device), MEAN, STD))
            last = {f"acts/{n}": a.to(DTYPES[dtype]).cpu().numpy() for n, a in acts.items()}
            last["logits"] = logits.float().cpu().numpy()
            last["images"] = u8.numpy()
        sync(device)
    return t, last


def writer_alone(path: Path, n: int, arrays: dict, batch_size: int, compression: str) -> tuple[Timer, int]:
    """DumpWriter storing `arrays` (one batch) n/batch times: the time and the bytes on disk."""
    rows = len(arrays["images"])
    with Timer() as t:
        w = DumpWriter(path, n, {}, batch_size=batch_size, compression=compression)
        for start in range(0, n, rows):
            w.write(start, {k: v[: min(rows, n - start)] for k, v in arrays.items()})
        w.finish()
    size = path.stat().st_size
    path.unlink()
    return t, size


def keep(best: dict[str, list[float]], key: str, values: list[float]) -> None:
    """Element-wise maximum over repeats (throughputs: the least disturbed run is the truth)."""
    best[key] = [max(a, b) for a, b in zip(best[key], values)] if key in best else values


def dd_write_speed(folder: Path, mb: int) -> str:
    target = folder / "dd.tmp"
    cmd = ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mb}", "oflag=direct"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        target.unlink(missing_ok=True)
    found = re.findall(r"copied, ([\d.,]+) s, ([\d.,]+ [kMG]?B/s)", res.stderr)
    if not found:  # oflag=direct is refused on some filesystems (tmpfs): plain write + fsync
        cmd[-1] = "conv=fsync"
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        target.unlink(missing_ok=True)
        found = re.findall(r"copied, ([\d.,]+) s, ([\d.,]+ [kMG]?B/s)", res.stderr)
    return f"{found[0][1]} ({' '.join(cmd[1:])})" if found else f"unavailable: {res.stderr.strip()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="vit-tiny,seed-cifar10")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--dtype", default="float16", choices=list(DTYPES))
    ap.add_argument("--compression", default="lzf", choices=["lzf", "gzip", "none"])
    ap.add_argument("--out-dir", default=None, help="where dumps go (default: a temporary folder)")
    ap.add_argument("--dd-mb", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="report the best of this many runs")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    folder = Path(args.out_dir or tempfile.mkdtemp(prefix="vitscope-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    ds = ImageDataset(images=images, labels=np.zeros(args.images, np.int64), classes=[],
                      masks=None, spec="random", split="val", paths=None)
    print(f"device {device}  repeats {args.repeats} (best shown)  torch threads {torch.get_num_threads()}  cpus {os.cpu_count()}  "
          f"images {args.images}  batch {args.batch_size}  {args.dtype} {args.compression}  "
          f"folder {folder}")
    cpu = device.type == "cpu"
    try:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = ViT(preset(name, image_size=32, num_classes=10)).to(device).eval()
            best: dict[str, list[float]] = {}  # best of --repeats: the CPU may be shared
            sizes: dict[str, int] = {}
            n = args.images
            for _ in range(args.repeats):
                t = plain_forward(model, images, args.batch_size, device)
                keep(best, "plain", [n / t.wall, n / t.cpu])
                for label, patterns in SETS.items():
                    names = resolve(model, patterns)
                    th, arrays = hooked_forward(model, images, names, args.batch_size, device,
                                                args.dtype)
                    tw, wsize = writer_alone(folder / "w.h5", n, arrays, args.batch_size,
                                             args.compression)
                    out = folder / f"{name}-{label[1]}.h5"
                    with Timer() as tc:
                        capture(model, ds, out, patterns, batch_size=args.batch_size,
                                dtype=args.dtype, compression=args.compression, force=True,
                                device=device)
                    sizes[label] = out.stat().st_size
                    out.unlink()
                    keep(best, label, [len(names), n / th.wall, n / tw.wall, n / tc.wall,
                                       n / tc.cpu, sizes[label] / tc.wall / 1e6,
                                       wsize / tw.wall / 1e6])
            plain, plain_cpu = best["plain"]
            print(f"\n{name}: plain forward {plain:,.0f} images/s"
                  + (f" ({plain_cpu:,.0f} images per CPU-second)" if cpu else ""))
            print(f"  {'set':<15}{'hooks':>6}{'hooked':>9}{'write':>9}{'capture':>9}{'% plain':>9}"
                  + (f"{'% CPU':>7}" if cpu else "")
                  + f"{'kB/image':>10}{'MB/s':>8}{'write MB/s':>12}")
            for label in SETS:
                n_hooks, hooked, w_ips, ips, ips_cpu, mbs, w_mbs = best[label]
                print(f"  {label:<15}{n_hooks:>6.0f}{hooked:>9,.0f}{w_ips:>9,.0f}{ips:>9,.0f}"
                      f"{100 * ips / plain:>8.0f}%"
                      + (f"{100 * ips_cpu / plain_cpu:>6.0f}%" if cpu else "")
                      + f"{sizes[label] / n / 1e3:>10,.1f}{mbs:>8,.1f}{w_mbs:>12,.1f}")
        print(f"\ndd write speed: {dd_write_speed(folder, args.dd_mb)}")
        print("columns: images/s of the hooked forward (no file), of the writer alone and of "
              "capture; % plain = capture / plain images/s (wall clock)"
              + ("; % CPU = the same per CPU-second of this process, robust to a shared CPU"
                 if cpu else "") + "; MB/s = bytes on disk / capture time; write MB/s = writer alone.")
    finally:
        if not args.out_dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
