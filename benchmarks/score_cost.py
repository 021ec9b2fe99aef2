"""Wall and CPU seconds of `vitscope score` on the quickstart checkpoint (the cost target:
256 images, rollout + grad-rollout, <= 2 minutes on the 2-core CPU).

    python benchmarks/score_cost.py                                  # trains runs/quickstart if absent
    python benchmarks/score_cost.py --ckpt examples/checkpoints/vit-cifar10.pt --json out.json

The whole command runs from a fresh temporary folder, so the first dump is captured, not
reused: the figure includes every capture (the trained model's and one per randomisation
step), rendering the maps, the curves, the statistics and writing the report. Each phase is
printed with its wall time; "cpu s" is this process's CPU time (all threads), the fairer
number when other jobs share the machine. Prints the load average beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=str(ROOT / "runs" / "quickstart" / "best.pt"))
    ap.add_argument("--plugin", action="append", help="map plugins (default: rollout, grad-rollout)")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--perturbation", default="drop", choices=["drop", "grey"])
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    plugins = args.plugin or ["rollout", "grad-rollout"]
    ckpt = Path(args.ckpt).resolve()
    if not ckpt.exists():
        print(f"{ckpt} is missing: training the quickstart recipe first (not timed)", flush=True)
        subprocess.run([sys.executable, "-m", "vitscope", "train", "--config", "shapes-quick",
                        "--name", "quickstart", "--runs-dir", str(ckpt.parent.parent), "-q"],
                       check=True, cwd=ROOT)

    import torch
    torch.set_num_threads(args.threads)
    from vitscope.analyze.registry import discover
    from vitscope.score import outputs as R
    from vitscope.score.run import score_checkpoint

    entries = discover().select(plugins)
    json_path = Path(args.json).resolve() if args.json else None
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="vitscope-score-bench-") as tmp:
        os.chdir(tmp)            # a fresh outputs/dumps: the first capture is timed too
        t0, c0 = time.perf_counter(), time.process_time()
        report = score_checkpoint(ckpt, entries, images=args.images, device="cpu",
                                  perturbation=args.perturbation,
                                  echo=lambda s: print("  " + s, flush=True))
        files = R.write(report, Path(tmp) / "outputs" / "bench" / "score")
        R.record(Path(tmp) / "outputs" / "bench", report, files)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        os.chdir(here)
    load = os.getloadavg()
    out = {"checkpoint": str(ckpt), "plugins": plugins, "images": report["images"],
           "perturbation": args.perturbation, "threads": args.threads,
           "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
           "phases_wall_seconds": report["seconds"], "target_seconds": 120,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible",
           "load_average_after": [round(x, 2) for x in load]}
    print(f"\nvitscope score: {report['images']} images, {', '.join(plugins)}, "
          f"{args.perturbation}, {args.threads} threads")
    for phase, s in report["seconds"].items():
        print(f"  {phase:<14} {s:7.1f} s wall")
    print(f"  {'everything':<14} {wall:7.1f} s wall, {cpu:.1f} cpu s (target <= 120 s wall); "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if json_path:
        json_path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
