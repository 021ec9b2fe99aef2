"""Analysis at dataset scale: wall time and peak memory of every built-in plugin on dumps of
1k, 4k and 16k images, `analyze --all` on the largest, and what a dump costs per image.

    python benchmarks/analyze_scaling.py                       # the README table
    python benchmarks/analyze_scaling.py --sizes 1000,4000 --plugin rollout --json out.json

Dumps are captured once with the real CLI (`vitscope dump CKPT --split train --limit N`, the
shipped CIFAR-10 checkpoint on the CIFAR-10 JPEG mirror by default; the default hook points
plus the gradients the gradient plugins read, unless --no-grads) into --dump-dir and reused
by later runs. "bytes per image" of these dumps includes the gradients; the capture section
measures the default hook points alone. Every measurement runs in a fresh subprocess that first imports what the plugin
needs (vitscope, matplotlib, plotly, and for cls-embedding umap), records its peak RSS at that
point (the import baseline), then renders the plugin with the code a plugin's own process
runs under `vitscope analyze --dump` (vitscope.analyze.isolation; static and interactive figures) and
reports the peak RSS again. `analyze --all` is the real command; its peak is the proportional
set size of its whole process tree (the plugins' processes included), sampled every 0.2 s. "MB" is the peak
above the import baseline, "total" the peak of the whole process. cls-embedding is run once
on the smallest dump before it is measured, so its figures are with a warm numba cache (the
cold figure, with an empty cache, is printed separately).

Targets: peak RSS at the largest size within 15% of the smallest, for every plugin;
time per image at the largest size no more than at the second largest; `analyze --all` on
the largest dump within 1.5 GB peak RSS in all; cls-embedding on 4k images in <= 15 s warm.
Wall times depend on what else runs on the machine: the load average is printed beside them.
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

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("token-attention", "cls-heatmap", "rollout", "cls-embedding", "norm-activations",
           "grad-rollout", "attn-grad", "gradcam")
GRAD_PLUGINS = ("grad-rollout", "attn-grad", "gradcam")   # need --grads dumps
# cls-embedding twice: UMAP's own memory grows with the number of points by its nature
RUNS = {"cls-embedding": [("cls-embedding (PCA)", {"umap": False}),
                          ("cls-embedding (PCA + UMAP)", {})]}
RSS_TARGET = 0.15        # peak at the largest size within 15% of the smallest
ALL_TARGET_MB = 1500     # analyze --all on the largest dump
UMAP_TARGET_S = 15.0     # cls-embedding on 4k images, warm cache
# (preset, image size, patch size) whose bytes per image the report lists
MODEL_SIZES = [("vit-tiny", 32, 4), ("vit-small", 32, 4), ("vit-base", 32, 4),
               ("vit-tiny", 224, 16), ("vit-small", 224, 16), ("vit-base", 224, 16)]
DATA_HELP = ("extract the CIFAR-10 JPEG mirror first: mkdir -p /tmp/vitscope-data && tar xzf "
             "../shared/data/cifar10-jpeg.tar.gz -C /tmp/vitscope-data (or pass --data SPEC)")


def peak_mb() -> float:
    """Peak resident set size of this process so far, in MB. On Linux VmHWM of
    /proc/self/status: getrusage's ru_maxrss survives exec, so a child would report its
    parent's peak when that was higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 1e6


def thread_env(threads: int, cache: str | None = None) -> dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[key] = str(threads)
    if cache is not None:
        env["VITSCOPE_CACHE"] = cache
        env.pop("NUMBA_CACHE_DIR", None)
    return env


# ------------------------------------------------------------------------------- children

def child_plugin(spec: dict) -> dict:
    """In a fresh process: import, note the baseline, render one plugin, note the peak.
    `import_seconds`: the imports (for cls-embedding umap's, where numba compiles or loads
    its cache), which `vitscope analyze` pays too."""
    t_import = time.perf_counter()
    import warnings
    warnings.simplefilter("ignore")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import plotly.graph_objects  # noqa: F401

    from vitscope.analyze.isolation import _render   # what a plugin's own process runs
    from vitscope.analyze.registry import discover

    entry = discover().get(spec["plugin"]).load()
    if spec["plugin"] == "cls-embedding":   # the libraries' import is not the plugin's cost
        import sklearn.metrics  # noqa: F401
        import sklearn.neighbors  # noqa: F401

        from vitscope.render.umap_cache import load_umap
        load_umap()
    base = peak_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    t_import = t0 - t_import
    with tempfile.TemporaryDirectory() as tmp:
        # `vitscope analyze` renders each plugin in a process of its own (vitscope.analyze.isolation);
        # here the same rendering runs in this process, so its peak is this process's
        options = entry.render_options(spec.get("values", {}), static=True, interactive=True,
                                       format="png", limit=spec.get("limit"), run_dir=Path(tmp))
        res = _render({"value": entry.value, "options": options, "dump": spec["dump"]},
                      Path(tmp))
    return {"ok": bool(res.get("ok")), "error": res.get("error"),
            "seconds": time.perf_counter() - t0, "import_seconds": t_import,
            "cpu_seconds": time.process_time() - c0, "baseline_mb": base, "peak_mb": peak_mb(),
            "above_mb": peak_mb() - base, "files": len(res.get("files", []))}


def child_cli(spec: dict) -> dict:
    """In a fresh process: the real `vitscope ...` command line. Its plugins run in processes
    of their own (a fork server's children), so the peak is sampled over the whole process
    tree (proportional set size: shared pages counted once), every 0.2 s."""
    import threading

    from vitscope.cli import main
    peak = {"mb": 0.0}
    done = threading.Event()

    def sample() -> None:
        import psutil
        me = psutil.Process()
        while not done.wait(0.2):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except (psutil.Error, AttributeError):
                    continue
            peak["mb"] = max(peak["mb"], total / 2 ** 20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    code = 0
    try:
        main(spec["args"], standalone_mode=False)
    except SystemExit as e:
        code = e.code or 0
    except Exception as e:  # reported, not raised: the parent prints the table
        code = f"{type(e).__name__}: {e}"
    done.set()
    sampler.join()
    return {"ok": code == 0, "error": None if code == 0 else f"exit {code}",
            "seconds": time.perf_counter() - t0,
            "peak_mb": max(peak["mb"], peak_mb()), "process_peak_mb": peak_mb()}


def child_capture(spec: dict) -> dict:
    """In a fresh process: plain forward vs capture (derived hooks on and off) of the
    checkpoint on the first images of the data, best of `repeats`, and bytes per image."""
    import numpy as np
    import torch

    from vitscope.capture import DEFAULT_HOOKS, capture, dataset_for, image_order
    from vitscope.model.checkpoint import load_model
    from vitscope.data import normalization, to_model_input

    torch.set_num_threads(spec["threads"])
    model, ck = load_model(spec["ckpt"])
    model.eval()
    data = dataset_for(ck, spec["data"], spec["split"])
    n, batch = spec["images"], 64
    images = np.ascontiguousarray(data.images[image_order(len(data), 0)[:n]])
    mean, std = normalization(ck)
    best: dict[str, float] = {}
    sizes: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(spec["repeats"]):
            with torch.inference_mode():
                model(to_model_input(torch.from_numpy(images[:batch]), mean, std))   # warm-up
                t0 = time.perf_counter()
                for i in range(0, n, batch):
                    model(to_model_input(torch.from_numpy(images[i:i + batch]), mean, std))
                best["plain"] = max(best.get("plain", 0), n / (time.perf_counter() - t0))
            for derive in (True, False):
                key = "derived" if derive else "stored"
                out = Path(tmp) / f"{key}.h5"
                t0 = time.perf_counter()
                capture(model, data, out, DEFAULT_HOOKS, ckpt=ck, limit=n, batch_size=batch,
                        force=True, device="cpu", derive=derive)
                best[key] = max(best.get(key, 0), n / (time.perf_counter() - t0))
                sizes[key] = out.stat().st_size / n
    return {"ok": True, "images_per_s": best, "bytes_per_image": sizes, "images": n}


def child_sizes(spec: dict) -> dict:
    """In a fresh process: bytes per image of the default hooks, stored raw (trained models'
    fp16 activations do not compress), for each model size, with and without derived hooks:
    a real capture of a few random images through a randomly initialised ViT."""
    import numpy as np
    import torch

    from vitscope.capture import DEFAULT_HOOKS, capture
    from vitscope.data import ImageDataset
    from vitscope.model.vit import ViT, preset

    torch.set_num_threads(spec["threads"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, size, patch in spec["models"]:
            torch.manual_seed(0)
            model = ViT(preset(name, image_size=size, patch_size=patch, num_classes=10)).eval()
            n = spec["images"]
            pixels = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), np.uint8)
            data = ImageDataset(images=pixels, labels=np.zeros(n, np.int64), classes=[],
                                masks=None, spec="random", split="val", paths=None)
            row = {"model": name, "image_size": size, "patch_size": patch,
                   "tokens": model.cfg.num_tokens}
            for derive in (True, False):
                out = Path(tmp) / "x.h5"
                capture(model, data, out, DEFAULT_HOOKS, batch_size=n, compression="none",
                        force=True, device="cpu", derive=derive)
                import h5py
                with h5py.File(out) as f:
                    stored = []
                    f.visititems(lambda k, v: stored.append(v.id.get_storage_size())
                                 if isinstance(v, h5py.Dataset) else None)
                row["derived" if derive else "stored"] = sum(stored) / n
            rows.append(row)
    return {"ok": True, "rows": rows}


def run_child(kind: str, spec: dict, threads: int, cache: str | None = None,
              timeout: float = 3600) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--child-{kind}", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads, cache),
                         cwd=ROOT, timeout=timeout)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"ok": False, "error": (res.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------- dumps

def dump_hooks() -> list[str]:
    """The default hook points plus the gradients the built-in gradient plugins read."""
    from vitscope.capture import DEFAULT_HOOKS
    from vitscope.testing import BUILTIN_GRADS
    return [*DEFAULT_HOOKS, *BUILTIN_GRADS]


def ensure_dump(args, n: int) -> tuple[Path, dict]:
    """A dump of the first n images of the shuffled split, captured by the real CLI once."""
    from vitscope.dump import Dump
    from vitscope.errors import VitscopeError

    grads = "-grads" if args.grads else ""
    path = Path(args.dump_dir) / f"{Path(args.ckpt).stem}-{args.split}-{n}{grads}.h5"
    info: dict = {}
    if path.is_file():
        try:
            with Dump.open(path) as d:
                if len(d) == n:
                    return path, {"bytes_per_image": path.stat().st_size / n, "reused": True}
        except VitscopeError:
            pass
    cmd = [sys.executable, "-m", "vitscope", "dump", args.ckpt, "--data", args.data,
           "--split", args.split, "--limit", str(n), "-o", str(path), "--force", "-q",
           "--device", "cpu", *(["--no-derive"] if args.no_derive else []),
           *(["--hooks", ",".join(dump_hooks())] if args.grads else [])]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(args.threads),
                         cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"capturing {path} failed: {res.stderr.strip()[-600:]}\n"
                         f"({DATA_HELP})")
    info.update(seconds=time.perf_counter() - t0, bytes_per_image=path.stat().st_size / n,
                reused=False)
    return path, info


# --------------------------------------------------------------------------------- report

def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2 ** 20
    except OSError:
        mem = float("nan")
    return f"{model}, {os.cpu_count()} CPUs, {mem:.0f} GiB"


def load() -> str:
    return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def fmt_size(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="examples/checkpoints/vit-cifar10.pt")
    ap.add_argument("--data", default="folder:/tmp/vitscope-data/cifar10-jpeg")
    ap.add_argument("--split", default="train")
    ap.add_argument("--sizes", default="1000,4000,16000",
                    help="images per dump, comma-separated (64000 needs a split that large)")
    ap.add_argument("--plugin", action="append", help="plugins to measure (default: built-ins)")
    ap.add_argument("--dump-dir", default="outputs/.bench/scaling")
    ap.add_argument("--threads", type=int, default=2, help="BLAS/numba threads in each run")
    ap.add_argument("--no-derive", action="store_true",
                    help="capture dumps storing every hook point (no derived LayerNorm outputs)")
    ap.add_argument("--no-grads", dest="grads", action="store_false",
                    help="dumps without gradients (default: with the ones grad-rollout, attn-grad "
                         "and gradcam read, so `analyze --all` runs every built-in)")
    ap.add_argument("--skip-all", action="store_true", help="skip `analyze --all`")
    ap.add_argument("--skip-cold", action="store_true", help="skip the cold-cache UMAP run")
    ap.add_argument("--skip-capture", action="store_true",
                    help="skip capture vs plain forward and bytes per image per model size")
    ap.add_argument("--capture-images", type=int, default=1024)
    ap.add_argument("--json", help="also write every figure to this JSON file")
    args = ap.parse_args()

    sizes = sorted(int(s) for s in args.sizes.split(","))
    plugins = args.plugin or [p for p in PLUGINS if args.grads or p not in GRAD_PLUGINS]
    Path(args.dump_dir).mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(), "threads": args.threads, "load_start": os.getloadavg(),
                    "dumps": {}, "plugins": {}}
    print(f"machine: {report['machine']}; {args.threads} threads per run; {load()}")
    dumps = {}
    for n in sizes:
        path, info = ensure_dump(args, n)
        dumps[n] = path
        report["dumps"][n] = {"path": str(path), **info}
        print(f"dump {fmt_size(n):>4}: {path} ({info['bytes_per_image'] / 1e3:,.1f} kB/image"
              + (", reused" if info.get("reused") else f", captured in {info['seconds']:.0f} s")
              + ")")

    runs = [(label, p, values) for p in plugins for label, values in
            (RUNS.get(p) or [(p, {})])]
    for label, plugin, values in runs:
        if plugin == "cls-embedding" and values.get("umap", True):   # warm numba's cache
            run_child("plugin", {"plugin": plugin, "dump": str(dumps[sizes[0]])}, args.threads)
        rows = {}
        for n in sizes:
            r = run_child("plugin", {"plugin": plugin, "dump": str(dumps[n]), "values": values},
                          args.threads)
            r["load"] = os.getloadavg()[0]
            rows[n] = r
            state = (f"{r['seconds']:7.1f} s ({r['cpu_seconds']:6.1f} CPU s, imports "
                     f"{r['import_seconds']:4.1f} s) {r['above_mb']:5.0f} MB "
                     f"(total {r['peak_mb']:,.0f})" if r["ok"] else f"FAILED: {r['error']}")
            print(f"  {label:<26} {fmt_size(n):>4}  {state}   {load()}")
        report["plugins"][label] = rows

    if "cls-embedding" in plugins and not args.skip_cold:
        n = 4000 if 4000 in dumps else sizes[0]
        with tempfile.TemporaryDirectory(prefix="vitscope-cold-") as cache:
            r = run_child("plugin", {"plugin": "cls-embedding", "dump": str(dumps[n])},
                          args.threads, cache=cache)
        report["cls_embedding_cold"] = {"images": n, **r}
        print(f"  cls-embedding {fmt_size(n)} with an empty numba cache: "
              + (f"{r['seconds']:.1f} s + imports {r['import_seconds']:.1f} s ({r['cpu_seconds']:.1f} CPU s)"
                 if r["ok"] else f"FAILED: {r['error']}"))

    if not args.skip_all:
        n = sizes[-1]
        with tempfile.TemporaryDirectory() as out:
            r = run_child("cli", {"args": ["analyze", "--dump", str(dumps[n]), "--all", "-o",
                                           out]}, args.threads)
        r["load"] = os.getloadavg()[0]
        report["analyze_all"] = {"images": n, **r}
        print(f"  analyze --all     {fmt_size(n):>4}  "
              + (f"{r['seconds']:7.1f} s, peak {r['peak_mb']:,.0f} MB (process tree)" if r["ok"]
                 else f"FAILED: {r['error']}") + f"   {load()}")

    if not args.skip_capture:
        r = run_child("capture", {"ckpt": args.ckpt, "data": args.data, "split": args.split,
                                  "images": args.capture_images, "repeats": 3,
                                  "threads": args.threads}, args.threads)
        r["load"] = os.getloadavg()[0]
        report["capture"] = r
        r = run_child("sizes", {"models": MODEL_SIZES, "images": 8, "threads": args.threads},
                      args.threads)
        report["sizes"] = r

    print_table(report, sizes, [label for label, _, _ in runs])
    print_capture(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


def print_capture(report: dict) -> None:
    """Capture speed against the plain forward, and bytes per image and images per TB of disk
    for each model size."""
    cap = report.get("capture")
    if cap:
        if not cap.get("ok"):
            print(f"\ncapture: FAILED: {cap.get('error')}")
        else:
            ips, size = cap["images_per_s"], cap["bytes_per_image"]
            print(f"\ncapture of the default hooks, {cap['images']} images, shipped checkpoint "
                  f"(load {cap['load']:.1f}):")
            print("| | images/s | % of plain forward | kB/image |\n|---|---|---|---|")
            print(f"| plain forward | {ips['plain']:,.0f} | 100% | |")
            for key, label in (("derived", "capture, LayerNorm outputs derived (default)"),
                               ("stored", "capture --no-derive")):
                print(f"| {label} | {ips[key]:,.0f} | {100 * ips[key] / ips['plain']:.0f}% | "
                      f"{size[key] / 1e3:,.1f} |")
    sz = report.get("sizes")
    if sz and sz.get("ok"):
        print("\nbytes per image of the default hooks (fp16, raw) and images per TB of disk:")
        print("| model | input | tokens | MB/image | --no-derive | images per TB |")
        print("|---|---|---|---|---|---|")
        for r in sz["rows"]:
            print(f"| {r['model']} | {r['image_size']} px / {r['patch_size']} | {r['tokens']} | "
                  f"{r['derived'] / 1e6:,.3f} | {r['stored'] / 1e6:,.3f} | "
                  f"{1e12 / r['derived']:,.0f} |")


def print_table(report: dict, sizes: list[int], labels: list[str]) -> None:
    """The README table: seconds and MB above the import baseline per size, then the targets."""
    lo, hi = sizes[0], sizes[-1]
    mid = sizes[-2] if len(sizes) > 1 else lo
    head = " | ".join(f"{fmt_size(n)} images" for n in sizes)
    print(f"\n| plugin | {head} | ms/image {fmt_size(mid)} → {fmt_size(hi)} | "
          f"peak {fmt_size(hi)} ÷ {fmt_size(lo)} |")
    print("|---" * (len(sizes) + 3) + "|")
    failures = []
    for plugin in labels:
        rows = report["plugins"][plugin]
        if not all(rows[n]["ok"] for n in sizes):
            print(f"| {plugin} | " + " | ".join("ok" if rows[n]["ok"] else "FAILED"
                                               for n in sizes) + " | | |")
            failures.append(f"{plugin} failed")
            continue
        cells = [f"{rows[n]['seconds']:.1f} s, {rows[n]['above_mb']:,.0f} MB" for n in sizes]
        per = {n: 1e3 * rows[n]["seconds"] / n for n in sizes}
        ratio = rows[hi]["above_mb"] / max(rows[lo]["above_mb"], 1e-9)
        print(f"| {plugin} | " + " | ".join(cells) +
              f" | {per[mid]:.2f} → {per[hi]:.2f} | {ratio:.2f}× |")
        if ratio > 1 + RSS_TARGET:
            failures.append(f"{plugin}: peak at {fmt_size(hi)} is {ratio:.2f}× that at "
                            f"{fmt_size(lo)} (target <= {1 + RSS_TARGET:.2f}×)")
        if per[hi] > per[mid]:
            failures.append(f"{plugin}: {per[hi]:.2f} ms/image at {fmt_size(hi)} > "
                            f"{per[mid]:.2f} at {fmt_size(mid)}")
    dumps = report["dumps"]
    print("\nbytes per image: " + ", ".join(
        f"{fmt_size(n)}: {dumps[n]['bytes_per_image'] / 1e3:,.1f} kB" for n in sizes))
    all_ = report.get("analyze_all")
    if all_ and all_.get("ok"):
        print(f"analyze --all on {fmt_size(all_['images'])}: {all_['seconds']:.0f} s, peak "
              f"{all_['peak_mb']:,.0f} MB in all (target <= {ALL_TARGET_MB:,} MB)")
        if all_["peak_mb"] > ALL_TARGET_MB:
            failures.append(f"analyze --all peaks at {all_['peak_mb']:,.0f} MB")
    emb = report["plugins"].get("cls-embedding (PCA + UMAP)", {}).get(4000)
    if emb and emb.get("ok"):
        total = emb["seconds"] + emb.get("import_seconds", 0)
        print(f"cls-embedding on 4k, warm cache: {emb['seconds']:.1f} s + imports "
              f"{emb.get('import_seconds', 0):.1f} s = {total:.1f} s ({emb['cpu_seconds']:.1f} "
              f"CPU s in the render; target <= {UMAP_TARGET_S:.0f} s)")
        if total > UMAP_TARGET_S:
            failures.append(f"cls-embedding 4k takes {total:.1f} s")
    print(f"{report['machine']}; {load()} at the end (wall times are contaminated by other load)")
    print("targets: " + ("all met" if not failures else "; ".join(failures)))


if __name__ == "__main__":
    children = {"--child-plugin": child_plugin, "--child-cli": child_cli,
                "--child-capture": child_capture, "--child-sizes": child_sizes}
    if len(sys.argv) == 3 and sys.argv[1] in children:
        print(json.dumps(children[sys.argv[1]](json.loads(sys.argv[2]))))
    else:
        main()
