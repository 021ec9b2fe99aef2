"""What rendering each plugin in a child process of its own costs (vitscope.analyze.isolation).

    python benchmarks/plugin_isolation.py                  # 12-image dump, 15 repeats
    python benchmarks/plugin_isolation.py --repeats 30 --plugin rollout --plugin cls-heatmap

For each plugin: the median wall-clock seconds of render() called in this process (a fresh
output folder each time, the dump opened once) against the same render through
`run_plugin` (fork from the warm fork server, reopen the dump read-only, render, report back),
with a bootstrap 95% interval of the difference. A "null" plugin that writes one small file
measures the fixed cost alone. The fork server's start (once per `analyze`, overlapping the
capture) is timed separately. The dump is the tiny one vitscope.testing.make_dump writes, so
the fixed cost dominates: on real dumps render time grows and the overhead stays.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")

NULL_PLUGIN = '''
from pathlib import Path
class Null:
    name = "null"
    requires = ()
    def render(self, dump, out_dir, options):
        p = Path(out_dir) / "null.txt"
        p.write_text(str(len(dump)))
        return [p]
'''


def interval(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Median of b minus median of a, with a bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    a_, b_ = np.asarray(a), np.asarray(b)
    diffs = [np.median(rng.choice(b_, b_.size)) - np.median(rng.choice(a_, a_.size))
             for _ in range(2000)]
    return float(np.median(b_) - np.median(a_)), *np.percentile(diffs, [2.5, 97.5])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--plugin", action="append", help="built-ins to time (default: rollout, "
                    "cls-heatmap, token-attention)")
    ap.add_argument("--images", type=int, default=12)
    args = ap.parse_args()

    from vitscope.dump import Dump
    from vitscope.analyze.isolation import context, run_plugin, warm_up
    from vitscope.analyze.registry import PluginEntry, discover
    from vitscope.testing import make_dump

    root = Path(tempfile.mkdtemp(prefix="vitscope-iso-bench-"))
    try:
        (root / "nullplugin.py").write_text(NULL_PLUGIN)
        sys.path.insert(0, str(root))
        dump_path = make_dump(root / "d.h5", n=args.images)
        registry = discover(autoload=False)
        entries = [PluginEntry("null", "nullplugin:Null", "bench", "0", False).load()]
        entries += [registry.get(n).load() for n in
                    (args.plugin or ["rollout", "cls-heatmap", "token-attention"])]

        t0 = time.perf_counter()
        warm_up()
        context().Process(target=int).start()   # the server is ready once a child has run
        server_start = time.perf_counter() - t0

        print(f"{platform.node()}  {platform.processor() or platform.machine()}  "
              f"{os.cpu_count()} CPUs  python {platform.python_version()}  "
              f"load {os.getloadavg()[0]:.1f}")
        print(f"fork server start (with the built-ins preloaded): {server_start:.2f} s, once per "
              f"analyze")
        print(f"{'plugin':<16} {'in-process s':>13} {'child s':>9} {'overhead s [95% CI]':>28}")
        for entry in entries:
            options = entry.render_options({}, static=True, interactive=False, format="png",
                                           limit=None, run_dir=root)
            inproc, child = [], []
            with Dump.open(dump_path) as dump:
                for k in range(args.repeats):
                    out = root / f"in-{entry.name}-{k}"
                    out.mkdir()
                    t = time.perf_counter()
                    entry.plugin.render(dump, out, options)
                    inproc.append(time.perf_counter() - t)
                    shutil.rmtree(out)
            for k in range(args.repeats):
                out = root / f"child-{entry.name}-{k}"
                out.mkdir()
                t = time.perf_counter()
                outcome = run_plugin(entry, dump_path, out, dict(options), timeout=600)
                child.append(time.perf_counter() - t)
                assert outcome.ok, outcome.error
                shutil.rmtree(out)
            d, lo, hi = interval(inproc, child)
            print(f"{entry.name:<16} {statistics.median(inproc):>13.3f} "
                  f"{statistics.median(child):>9.3f} {d:>+12.3f} [{lo:+.3f}, {hi:+.3f}]")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
