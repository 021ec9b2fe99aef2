"""How long headless Chromium takes to draw, zoom, switch layer and hover the cls-embedding
page, with SVG points (go.Scatter) and with WebGL points (go.Scattergl), per point count.

    python benchmarks/embedding_render.py                         # 1k 2k 5k 10k 20k points
    python benchmarks/embedding_render.py --points 2000 5000 --repeats 5 --json out.json

The figure is the plugin's own (`plugins/cls_embedding.embedding_figure`): two panels (PCA and
UMAP, the default), ten classes, four layers on the slider; N points a panel, random
coordinates. Each step is timed inside the page with performance.now() up to two animation
frames after Plotly's promise resolves (so the paint is counted):

    draw    Plotly.newPlot of the whole figure
    zoom    Plotly.relayout of both panels' axis ranges (what a drag-zoom does)
    layer   Plotly.update of the traces' visibility (what the slider does)
    hover   Plotly.Fx.hover at a point of the first panel (the nearest-point search)

Chromium is the test harness's (tests/browser.py: headless, --disable-gpu), so WebGL is
SwiftShader's software renderer here; a real GPU draws WebGL faster, SVG about the same.
The median of --repeats runs is printed with the load average: the numbers depend on both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))      # the harness: a real Chromium over DevTools

from browser import Browser  # noqa: E402

from vitscope.render.interactive import plotly_js  # noqa: E402
from vitscope.plugins.cls_embedding import embedding_figure  # noqa: E402

STEPS = ("draw", "zoom", "layer", "hover")
PAGE = """<!doctype html><html><head><meta charset="utf-8"><script src="plotly.min.js"></script>
</head><body><div id="plot"></div><script>
var FIG = {fig};
function frames() {{ return new Promise(r => requestAnimationFrame(() =>
  requestAnimationFrame(r))); }}
async function timed(f) {{ var t = performance.now(); await f(); await frames();
  return performance.now() - t; }}
async function bench() {{
  var gd = document.getElementById('plot'), out = {{}};
  Plotly.purge(gd);
  out.draw = await timed(() => Plotly.newPlot(gd, FIG.data, FIG.layout));
  out.zoom = await timed(() => Plotly.relayout(gd, {{'xaxis.range': [-1, 1],
    'yaxis.range': [-1, 1], 'xaxis2.range': [-1, 1], 'yaxis2.range': [-1, 1]}}));
  var steps = FIG.layout.sliders[0].steps;
  out.layer = await timed(() => Plotly.update(gd, steps[0].args[0]));
  out.hover = await timed(() => Plotly.Fx.hover(gd, {{xval: 0.1, yval: 0.1}}, 'xy'));
  out.webgl = !!document.querySelector('.gl-canvas-context');
  out.points = document.querySelectorAll('.scatterlayer .point').length;
  return out;
}}
</script></body></html>"""


def page_for(folder: Path, n: int, webgl: bool, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    layers, classes = 4, 10
    coords = {p: rng.normal(size=(layers, n, 2)).astype(np.float32) for p in ("PCA", "UMAP")}
    colour = rng.integers(0, classes, n)
    fig = embedding_figure(coords, [f"block {i}" for i in range(layers)], colour,
                           [f"class {c}" for c in range(classes)], by_label=True, total=n,
                           webgl_above=n - 1 if webgl else n)
    path = folder / f"{'gl' if webgl else 'svg'}_{n}.html"
    path.write_text(PAGE.format(fig=fig.to_json()), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, nargs="+", default=[1000, 2000, 5000, 10000, 20000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Browser(timeout=120) as browser:
        folder = Path(tmp)
        plotly_js(folder)
        print(f"{browser.version}; {platform.node()}, {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.2f}")
        print(f"{'points':>7} {'mode':>5} " + " ".join(f"{s + ' ms':>9}" for s in STEPS))
        for n in args.points:
            for webgl in (False, True):
                page = browser.open(page_for(folder, n, webgl), root=folder)
                runs = [page.eval("bench()", timeout=120) for _ in range(args.repeats)]
                page.close()
                assert all(r["webgl"] == webgl for r in runs), runs[0]
                row = {"points": n, "mode": "webgl" if webgl else "svg",
                       **{s: statistics.median(r[s] for r in runs) for s in STEPS},
                       "svg_points": runs[-1]["points"], "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"{n:>7} {row['mode']:>5} " + " ".join(f"{row[s]:>9.0f}" for s in STEPS),
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps({"browser": browser.version, "cpus": os.cpu_count(),
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
