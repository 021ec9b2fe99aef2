"""Seconds per plugin to render from an existing dump of 1,000 images of `vit-tiny` on the CPU.

    python benchmarks/analyze_throughput.py                 # all built-ins, static + interactive
    python benchmarks/analyze_throughput.py --images 200 --plugin rollout

The dump is captured once (not timed as part of any plugin) into --dump-dir and reused by
later runs. The model is a randomly initialised vit-tiny (32×32 input, 4×4 patches, 65
tokens, 12 blocks × 3 heads): rendering cost depends on shapes, not on what the weights
learned. Targets: each plugin <= 10 s, cls-embedding with UMAP <= 30 s.
"seconds" is wall-clock time; "cpu s" is the CPU time of this process (all its threads),
which is the fairer number when other processes share the machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--model", default="vit-tiny", help="model preset")
    ap.add_argument("--plugin", action="append", help="plugins to time (default: built-ins)")
    ap.add_argument("--dump-dir", default="outputs/.bench", help="where the dump is kept")
    ap.add_argument("--static-only", action="store_true", help="skip the interactive HTML")
    ap.add_argument("--threads", type=int, default=2, help="torch/BLAS threads (default 2)")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from vitscope.analyze.run import render_plugin, union_requires
    from vitscope.capture import capture
    from vitscope.data import load_dataset
    from vitscope.dump import Dump
    from vitscope.model.vit import ViT, preset
    from vitscope.plugins import BUILTINS
    from vitscope.analyze.registry import discover

    registry = discover()
    names = args.plugin or list(BUILTINS)
    entries = registry.select(names)
    runs = []  # (label, entry, option values)
    for e in entries:
        if e.name == "cls-embedding":
            runs.append(("cls-embedding (PCA only)", e, {"umap": False}, 10.0))
            runs.append(("cls-embedding (PCA + UMAP)", e, {"umap": True}, 30.0))
        else:
            runs.append((e.name, e, {}, 10.0))

    spec = f"shapes:val={args.images}"
    dump_path = Path(args.dump_dir) / f"{args.model}-{args.images}.h5"
    patterns = union_requires(entries)
    if not _covers(dump_path, patterns, args.images):
        data = load_dataset(spec, "val", 32)
        torch.manual_seed(0)
        model = ViT(preset(args.model, num_classes=len(data.classes))).eval()
        t0 = time.perf_counter()
        capture(model, data, dump_path, patterns, classes=data.classes, force=True,
                device="cpu", batch_size=64)
        print(f"captured {dump_path} in {time.perf_counter() - t0:.1f} s "
              f"({dump_path.stat().st_size / 1e6:.0f} MB)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}, threads {args.threads}; load average "
          f"{os.getloadavg()[0]:.1f} (other processes share the CPU)")
    print(f"{'plugin':<28} {'seconds':>8} {'cpu s':>7} {'target':>7}  ok  files")
    with Dump.open(dump_path) as dump, tempfile.TemporaryDirectory() as tmp:
        print(f"dump: {len(dump)} images, {dump.model_config.get('depth')} blocks × "
              f"{dump.model_config.get('num_heads')} heads, {dump.layout.num_tokens} tokens")
        for label, entry, values, target in runs:
            t0, c0 = time.perf_counter(), time.process_time()
            res = render_plugin(entry, dump, Path(tmp) / label.replace(" ", "_"), values,
                                static=True, interactive=not args.static_only)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            ok = "yes" if res.ok and dt <= target else ("FAIL" if not res.ok else "slow")
            print(f"{label:<28} {dt:8.1f} {cpu:7.1f} {target:7.0f}  {ok:<3} {len(res.files)}"
                  + ("" if res.ok else f"  {res.error}"))


def _covers(path: Path, patterns, n: int) -> bool:
    from vitscope.dump import Dump
    from vitscope.errors import VitscopeError
    if not path.is_file():
        return False
    try:
        with Dump.open(path) as dump:
            return dump.covers(patterns, n) and len(dump) == n
    except VitscopeError:
        return False


if __name__ == "__main__":
    main()
