"""Training speed on a shared CPU: the same epoch idle and beside 1 and 2 busy processes.

    python benchmarks/thread_contention.py                      # README's table
    python benchmarks/thread_contention.py --json contention.json --repeats 3

For each number of busy processes (`python -c "while True: pass"`, started before the run and
stopped after it) and each thread setting, it runs the real CLI in a fresh process,

    vitscope train --config shapes-quick --epochs 1 --set train_subset=N --set val_subset=200

and reads the epoch's training images/s from the run's metrics.jsonl. Thread settings are
VITSCOPE_THREADS values (vitscope/_internal/threads.py):

    torch   torch's and OpenMP's own defaults: one thread per core, idle threads spin
            (what vitscope did before it chose threads itself)
    auto    the default now: idle threads sleep (OMP_WAIT_POLICY=PASSIVE), one thread per
            usable CPU not busy with another process
    N       N threads, idle threads sleep

The environment's OMP_NUM_THREADS / MKL_NUM_THREADS / OMP_WAIT_POLICY are removed for the
children, so each setting is what a user gets. The machine's load average is printed beside
each figure: on a machine shared with others the numbers mix their load with the busy
processes started here. Numbers only: nothing here is a test.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLEAN = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "VITSCOPE_THREADS",
         "VITSCOPE_THREADS_SET", "VITSCOPE_THREADS_SET_WAIT", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=None,
                   help="comma-separated VITSCOPE_THREADS values (default: torch,auto,<cpus>,1)")
    p.add_argument("--busy", default="0,1,2", help="numbers of busy processes (default 0,1,2)")
    p.add_argument("--images", type=int, default=1500, help="training images in the epoch")
    p.add_argument("--recipe", default="shapes-quick", help="training recipe")
    p.add_argument("--repeats", type=int, default=1, help="runs per cell; the median is shown")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run before giving up")
    p.add_argument("--json", type=Path, default=None, help="also write every run here")
    return p.parse_args()


def usable_cpus() -> int:
    sys.path.insert(0, str(ROOT))
    from vitscope._internal.threads import usable_cpus as cpus
    return cpus()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def start_busy(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.5 if n else 0)   # let the scheduler see them before torch picks its threads
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def one_run(setting: str, args, runs_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update(VITSCOPE_THREADS=setting, MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "vitscope", "train", "--config", args.recipe, "--epochs", "1",
           "--set", f"train_subset={args.images}", "--set", "val_subset=200", "--device", "cpu",
           "--runs-dir", str(runs_dir), "--name", "bench", "--overwrite"]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout,
                             cwd=runs_dir)
    except subprocess.TimeoutExpired:
        return {"setting": setting, "images_per_s": None, "error": f"over {args.timeout:.0f} s",
                "load_before": load_before, "load_after": os.getloadavg()}
    wall = time.perf_counter() - t0
    out = {"setting": setting, "wall_s": round(wall, 2), "load_before": load_before,
           "load_after": os.getloadavg()}
    header = next((l for l in res.stdout.splitlines() if l.startswith("vitscope train:")), "")
    out["threads"] = header.split(" · ", 1)[1].split(" fp32")[0].split(" bf16")[0] \
        if " · " in header else "?"
    metrics = runs_dir / "bench" / "metrics.jsonl"
    if res.returncode != 0 or not metrics.is_file():
        out.update(images_per_s=None, error=(res.stderr or res.stdout).strip()[-300:])
        return out
    last = json.loads(metrics.read_text().splitlines()[-1])
    out["images_per_s"] = round(float(last["images_per_s"]), 1)
    return out


def main() -> None:
    args = parse_args()
    cpus = usable_cpus()
    settings = (args.settings or f"torch,auto,{cpus},1").split(",")
    busy_levels = [int(b) for b in args.busy.split(",")]
    import torch  # only for the version line; the children import their own
    print(f"machine: {cpu_model()}, {cpus} usable CPUs ({os.cpu_count()} online), "
          f"{platform.system()} {platform.release()}; torch {torch.__version__}; "
          f"python {platform.python_version()}")
    print(f"epoch: {args.recipe}, {args.images} training images, 1 epoch, cpu; repeats "
          f"{args.repeats} (median)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="vitscope-contention-") as tmp:
        for busy in busy_levels:
            for rep in range(args.repeats):
                for setting in settings:    # interleaved, so drifting load hits all settings
                    procs = start_busy(busy)
                    try:
                        r = one_run(setting, args, Path(tmp))
                    finally:
                        stop(procs)
                    r.update(busy=busy, repeat=rep)
                    runs.append(r)
                    ips = "failed" if r.get("images_per_s") is None else f"{r['images_per_s']:.0f}"
                    print(f"  busy {busy}  {setting:>6}: {ips:>7} img/s  [{r.get('threads', '?')}]"
                          f"  load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}"
                          + (f"  ({r['error']})" if r.get("error") else ""), flush=True)
    print()
    head = "| threads | " + " | ".join(f"idle" if b == 0 else f"+{b} busy" for b in busy_levels)
    print(head + " |")
    print("|---|" + "---|" * len(busy_levels))
    for setting in settings:
        cells = []
        for busy in busy_levels:
            vals = [r["images_per_s"] for r in runs if r["setting"] == setting and
                    r["busy"] == busy and r.get("images_per_s") is not None]
            loads = [r["load_before"][0] for r in runs if r["setting"] == setting and
                     r["busy"] == busy]
            cells.append(f"{statistics.median(vals):.0f} img/s (load {statistics.median(loads):.1f})"
                         if vals else "failed")
        print(f"| {setting} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"cpus": cpus, "cpu": cpu_model(),
                                         "torch": torch.__version__, "runs": runs}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
