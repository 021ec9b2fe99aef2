"""`vitscope analyze --all` on 16 images of a 12-layer ViT-S/16 at 224 px: wall time, the peak
resident memory of the whole process tree (analyze, its capture process and its plugin
processes together) while it captures and while the plugins render, what the analyze process
itself holds, the largest single child, and the dump's size.

    python benchmarks/analyze_real_size.py                  # timm vit_small_patch16_224, 16 images
    python benchmarks/analyze_real_size.py --images 8 --json out.json

What analyze_224.py measures (one process's peak, per-plugin seconds), plus the tree: the
model is timm's vit_small_patch16_224 with random weights (cost depends on shapes, not on what
the weights learned), the images a folder of photo-sized JPEGs (analyze_224.make_images). The
tree is sampled with psutil every 100 ms (RSS, and PSS, which counts shared pages once); "rendering" starts when analyze prints that it has
its dump. Numbers depend on the machine and its load: the load average is printed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analyze_224 import make_images, report, step  # noqa: E402  (the sibling benchmark's helpers)


def tree_rss(proc) -> tuple[int, int, int, int]:
    """(RSS of `proc`, RSS of it and all its descendants, PSS of them all, RSS of the largest
    descendant), in bytes; 0 for what has exited. RSS counts pages shared between processes (the fork server's children
    share the libraries it loaded) once per process; PSS divides each shared page among its
    sharers, so the tree's PSS is the memory it really takes."""
    import psutil
    try:
        own = proc.memory_info().rss
        kids = proc.children(recursive=True)
    except psutil.Error:
        return 0, 0, 0, 0
    total = pss = biggest = 0
    for p in [proc, *kids]:
        try:
            info = p.memory_full_info()
            total += info.rss
            pss += getattr(info, "pss", info.rss)
            if p is not proc:
                biggest = max(biggest, info.rss)
        except psutil.Error:
            pass
    return own, total, pss, biggest


def watched(args: list[str], env: dict) -> dict:
    """Run `python -m vitscope ARGS`, sampling the tree's memory; the numbers and output."""
    import psutil
    t0 = time.perf_counter()
    popen = subprocess.Popen([sys.executable, "-m", "vitscope", *args], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             cwd=env["VITSCOPE_BENCH_WORK"])
    proc = psutil.Process(popen.pid)
    samples: list[tuple[float, int, int, int, int]] = []
    lines: list[str] = []
    rendering = [None]

    def read() -> None:
        for line in popen.stdout:
            lines.append(line)
            if rendering[0] is None and ("dump " in line and line.startswith(
                    ("Captured", "Reusing", "Using"))):
                rendering[0] = time.perf_counter() - t0
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while popen.poll() is None:
        samples.append((time.perf_counter() - t0, *tree_rss(proc)))
        time.sleep(0.1)
    reader.join(5)
    wall = time.perf_counter() - t0
    text = "".join(lines)
    if popen.returncode != 0:
        sys.exit(f"`vitscope {' '.join(args)}` failed:\n{text[-3000:]}")
    start = rendering[0] if rendering[0] is not None else wall
    capture = [s for s in samples if s[0] < start] or [(0, 0, 0, 0, 0)]
    render = [s for s in samples if s[0] >= start] or [(0, 0, 0, 0, 0)]
    mb = 1 / 2 ** 20
    return {"wall_s": round(wall, 1), "capture_s": round(start, 1),
            "render_s": round(wall - start, 1),
            "tree_peak_mb": round(max(s[2] for s in samples) * mb),
            "tree_peak_pss_mb": round(max(s[3] for s in samples) * mb),
            # analyze captures in a child process of its own (the largest child then)
            "analyze_process_while_capturing_mb": round(max(s[1] for s in capture) * mb),
            "largest_child_while_capturing_mb": round(max(s[4] for s in capture) * mb),
            "tree_peak_while_capturing_mb": round(max(s[2] for s in capture) * mb),
            "tree_peak_pss_while_capturing_mb": round(max(s[3] for s in capture) * mb),
            "analyze_process_while_rendering_mb": round(max(s[1] for s in render) * mb),
            "largest_child_while_rendering_mb": round(max(s[4] for s in render) * mb),
            "tree_peak_while_rendering_mb": round(max(s[2] for s in render) * mb),
            "tree_peak_pss_while_rendering_mb": round(max(s[3] for s in render) * mb),
            "output": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--model", default="timm:vit_small_patch16_224")
    ap.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of the steps")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="more analyze arguments, e.g. --extra --static")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="vitscope-real-size-")).resolve()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "MPLBACKEND": "Agg",
           "VITSCOPE_CACHE": str(work / "cache"), "VITSCOPE_BENCH_WORK": str(work)}
    images = work / "images"
    if len(list(images.rglob("*.jpg"))) < args.images:
        make_images(images, args.images, None)
    ckpt = work / "vit_s.pt"
    if not ckpt.exists():
        step(["import", args.model, "-o", str(ckpt)], env)
    out = work / "out"
    before = os.getloadavg()
    got = watched(["analyze", "--all", str(ckpt), "--data", f"folder:{images}",
                   "-n", str(args.images), "-o", str(out), *args.extra], env)
    manifest = json.loads((out / "manifest.json").read_text())
    dump = Path(manifest["run"]["dump"])
    failed = [n for n, p in manifest["plugins"].items() if not p["ok"]]
    text = got.pop("output")
    numbers = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{args.threads} threads",
        "load_average_before": [round(x, 2) for x in before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "model": args.model, "images": args.images, **got,
        "plugin_s": {n: round(p["seconds"], 1) for n, p in manifest["plugins"].items()},
        "dump_mb": round(dump.stat().st_size / 1e6, 1),
        "failed": failed,
    }
    report(numbers, args.json, text)


if __name__ == "__main__":
    main()
