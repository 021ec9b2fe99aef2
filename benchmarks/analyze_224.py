"""`vitscope analyze --all` on 256 images of a ViT-S/16 at 224 px: wall time, peak memory and
dump size per image, through the real CLI (import, then analyze).

    python benchmarks/analyze_224.py                       # timm vit_small_patch16_224, 256 images
    python benchmarks/analyze_224.py --images 64 --json out.json
    python benchmarks/analyze_224.py --ckpt my_vit_s.pt    # an already imported checkpoint

The model is timm's vit_small_patch16_224 with random weights (`vitscope import` without
--weights): cost depends on shapes (197 tokens, 12 blocks × 6 heads, width 384), not on
what the weights learned. The images are a folder of JPEGs of mixed sizes (synthetic, or
--images-from a folder), resized and cropped by timm's own data config as analyze does.
Each step runs as its own process (`python -m vitscope ...`); "peak RSS" is that process's
maximum resident memory. Numbers depend on the machine and its load: the load average is
printed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def step(args: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB of the child, output) of `python -m vitscope ARGS`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vitscope", *args], env=env, text=True,
                          capture_output=True, cwd=env["VITSCOPE_BENCH_WORK"])  # dumps land there
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"`vitscope {' '.join(args)}` failed:\n{proc.stdout}\n{proc.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far (KiB on Linux)
    return wall, max(peak, before) / 1024, proc.stdout + proc.stderr


def make_images(folder: Path, n: int, source: Path | None) -> None:
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
        if source else []
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = folder / f"c{i % 4}"
        cls.mkdir(exist_ok=True)
        if files:
            with Image.open(files[i % len(files)]) as im:
                im.convert("RGB").save(cls / f"{i}.jpg", quality=90)
        else:   # smooth random blobs at photo-like sizes (JPEG of pure noise is unrealistic)
            h, w = int(rng.integers(200, 400)), int(rng.integers(200, 500))
            small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(
                cls / f"{i}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--model", default="timm:vit_small_patch16_224")
    ap.add_argument("--ckpt", default=None, help="an imported checkpoint (skips the import)")
    ap.add_argument("--images-from", default=None, help="take JPEG/PNG files from this folder")
    ap.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of the steps")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="more analyze arguments, e.g. --extra --static")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="vitscope-bench224-")).resolve()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "MPLBACKEND": "Agg", "VITSCOPE_CACHE": str(work / "cache"),
           "VITSCOPE_BENCH_WORK": str(work)}
    images = work / "images"
    if len(list(images.rglob("*.jpg"))) < args.images:   # a --work folder of an earlier, smaller run
        make_images(images, args.images, Path(args.images_from) if args.images_from else None)
    ckpt = Path(args.ckpt).resolve() if args.ckpt else work / "vit_s.pt"
    if not ckpt.exists():
        step(["import", args.model, "-o", str(ckpt)], env)
    out = work / "out"
    wall, rss, text = step(["analyze", "--all", str(ckpt), "--data", f"folder:{images}",
                            "-n", str(args.images), "-o", str(out), *args.extra], env)
    manifest = json.loads((out / "manifest.json").read_text())
    dump = Path(manifest["run"]["dump"])
    size = dump.stat().st_size
    plugins = {n: p["seconds"] for n, p in manifest["plugins"].items()}
    failed = [n for n, p in manifest["plugins"].items() if not p["ok"]]
    numbers = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{args.threads} threads",
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "model": str(ckpt) if args.ckpt else args.model, "images": args.images,
        "analyze_wall_s": round(wall, 1),
        "capture_and_setup_s": round(wall - sum(plugins.values()), 1),
        "plugin_s": {k: round(v, 1) for k, v in plugins.items()},
        "peak_rss_mb": round(rss), "dump_mb": round(size / 1e6, 1),
        "dump_kb_per_image": round(size / args.images / 1e3, 1),
        "failed": failed,
    }
    report(numbers, args.json, text)


def report(numbers: dict, json_path: str | None, output: str) -> None:
    """Print the numbers (and write them to `json_path`); exit 1 naming the failed plugins."""
    print(json.dumps(numbers, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(numbers, indent=2) + "\n")
    if numbers["failed"]:
        sys.exit(f"plugins failed: {', '.join(numbers['failed'])}\n{output[-2000:]}")


if __name__ == "__main__":
    main()
