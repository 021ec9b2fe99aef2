"""`cka`: linear centred kernel alignment (Kornblith et al. 2019) between every pair of layers of
a dump, and between the layers of this dump and another dump of the same images (two
checkpoints, before and after fine-tuning, a ViT and an imported model), as the heatmaps of
Raghu et al. 2021 ("Do Vision Transformers See Like CNNs?").

Each image is one row: the CLS token or the mean of the patch tokens (`pool`) of
`blocks.{i}.out`. In feature space, with X and Y centred over images,

    CKA(X, Y) = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F · ‖Yᵀ Y‖_F),

and Yᵀ X = Σ_chunks Y_cᵀ X_c − n · ȳ x̄ᵀ, so the sums are accumulated chunk by chunk: memory
is D × D per pair of layers, whatever the number of images (no N × N Gram matrix). Exactly 1
for a layer with itself, unchanged by rotating or scaling either side (tests). Baseline: the
same CKA with each image paired with the next image (the last with the first): the value two
unrelated representations of this size reach at this N.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.dump import Dump
from vitscope.errors import PluginError
from vitscope.plugin import Option, n_images, rows_per_read
from vitscope.plugin.mech import pool_option
from vitscope.plugin.tokens import cls_index
from vitscope.render import figures as F
from vitscope.render import interactive as I

PAIR_BYTES = 512 << 20   # the D×D sums held at once, float64; more pairs run in more passes


class StreamingCKA:
    """Linear CKA between every X_i and every Y_j, fed chunk by chunk (module docstring)."""

    def __init__(self) -> None:
        self.n = 0
        self.cross: dict[tuple[int, int], np.ndarray] = {}
        self.sx: dict[int, np.ndarray] = {}
        self.sy: dict[int, np.ndarray] = {}
        self.gx: dict[int, np.ndarray] = {}
        self.gy: dict[int, np.ndarray] = {}

    def add(self, xs: dict[int, np.ndarray], ys: dict[int, np.ndarray],
            pairs: list[tuple[int, int]]) -> None:
        for d, store, gram in ((xs, self.sx, self.gx), (ys, self.sy, self.gy)):
            for i, x in d.items():
                x = np.asarray(x, np.float64)
                store[i] = store.get(i, 0) + x.sum(0)
                gram[i] = gram.get(i, 0) + x.T @ x
        for i, j in pairs:
            self.cross[i, j] = self.cross.get((i, j), 0) + \
                np.asarray(xs[i], np.float64).T @ np.asarray(ys[j], np.float64)
        self.n += len(next(iter(xs.values())))

    def value(self, i: int, j: int) -> float:
        n = self.n
        mx, my = self.sx[i] / n, self.sy[j] / n
        cxy = self.cross[i, j] - n * np.outer(mx, my)
        cxx = self.gx[i] - n * np.outer(mx, mx)
        cyy = self.gy[j] - n * np.outer(my, my)
        den = np.linalg.norm(cxx) * np.linalg.norm(cyy)
        return float(np.square(cxy).sum() / den) if den > 0 else float("nan")


def cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two N×D representations of the same images, in one step."""
    s = StreamingCKA()
    s.add({0: x}, {0: y}, [(0, 0)])
    return s.value(0, 0)


def cka_matrix(read_x, read_y, nx: int, ny: int, n: int, width: int, step: int,
               shift: bool = False) -> np.ndarray:
    """nx × ny CKA between the layers `read_x(i, start, stop)` and `read_y(j, start, stop)`
    (each N×D), `step` images at a time, in passes of as many x-layers as PAIR_BYTES allows;
    with `shift`, image i's x row paired with image i+1's y row (the last with the first:
    the baseline, the same however the images are chunked)."""
    out = np.full((nx, ny), np.nan)
    per_row = max(1, PAIR_BYTES // max(1, 8 * width * width * ny))

    def y_rows(j, s, e):
        if not shift:
            return read_y(j, s, e)
        rows = read_y(j, s + 1, min(e + 1, n))
        return np.concatenate([rows, read_y(j, 0, 1)]) if e == n else rows
    for first in range(0, nx, per_row):
        rows = list(range(first, min(nx, first + per_row)))
        acc = StreamingCKA()
        for s in range(0, n, step):
            e = min(n, s + step)
            xs = {i: read_x(i, s, e) for i in rows}
            ys = {j: y_rows(j, s, e) for j in range(ny)}
            acc.add(xs, ys, [(i, j) for i in rows for j in range(ny)])
        for i in rows:
            for j in range(ny):
                out[i, j] = acc.value(i, j)
    return out


def reader(dump, names: list[str], pool: str, plugin: str):
    """(i, start, stop) -> the pooled N×D features of layer i for those images."""
    layout = dump.layout
    if pool == "cls":
        c = cls_index(layout, plugin)
        return lambda i, s, e: np.asarray(dump[names[i]][s:e, c], np.float32)
    prefix = layout.num_prefix_tokens
    return lambda i, s, e: np.asarray(dump[names[i]][s:e], np.float32)[:, prefix:].mean(1)


class Cka:
    """Linear CKA between every pair of layers, within a dump and against a second dump."""

    name = "cka"
    requires = ("blocks.*.out",)
    min_images = 3        # centring over fewer says nothing (`analyze --all` skips it)
    options = (
        Option("pool", pool_option, "cls", "each image's row: the CLS token (cls) or the mean "
               "of the patch tokens (mean)"),
        Option("other", str, "", "a second dump of the same images to compare layer by layer "
               "(path to its .h5); empty: this dump only", metavar="PATH"),
    )

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        names = dump.match("blocks.*.out")
        n = n_images(dump, options.limit)
        pool = options.pool if dump.layout.cls_index is not None else "mean"
        if n < 3:
            raise PluginError(f"cka needs at least 3 images to centre and compare, and "
                              f"'{dump.path}' gives {n}.")
        read = reader(dump, names, pool, self.name)
        width = dump[names[0]].shape[-1]
        L = len(names)
        # chunks sized for the whole tokens when pooling patches, the CLS row otherwise
        step = min(rows_per_read(dump[b], (cls_index(dump.layout, self.name),)
                                 if pool == "cls" else ()) for b in names)
        within = cka_matrix(read, read, L, L, n, width, step)
        base = cka_matrix(read, read, L, L, n, width, step, shift=True)
        arrays = {"within": within, "within_mismatched_baseline": base, "blocks": np.arange(L)}
        summary = {"images": n, "pool": pool,
                   "adjacent blocks (mean CKA)": round(float(np.nanmean(np.diag(within, 1))), 4)
                   if L > 1 else None,
                   "first vs last block": round(float(within[0, -1]), 4),
                   "mismatched-image baseline (max)": round(float(np.nanmax(base)), 4)}
        other_names: list[str] = []
        between = None
        if options.other:
            between, other_names, other_label = self._between(dump, options.other, n, pool,
                                                              read, names, width, step)
            arrays["between"] = between
            summary["other dump"] = other_label
            summary["between: diagonal mean"] = round(float(np.nanmean(np.diag(between))), 4)
        files = F.save_results(Path(out_dir), arrays, summary)
        out_dir = Path(out_dir)
        panels = [(within, "this dump", names, names)]
        if between is not None:
            panels.append((between, f"this dump (rows) vs {Path(options.other).name} (columns)",
                           names, other_names))
        if options.static:
            with F.style() as plt:
                fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6),
                                         squeeze=False)
                for ax, (m, title, rows, cols) in zip(axes[0], panels):
                    im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", origin="lower")
                    ax.set(title=f"Linear CKA: {title}", xlabel="block", ylabel="block")
                    ax.set_xticks(range(len(cols)))
                    ax.set_yticks(range(len(rows)))
                    fig.colorbar(im, ax=ax, fraction=0.046)
                fig.suptitle(f"Linear CKA over {n} images ({pool}); mismatched-image baseline "
                             f"≤ {np.nanmax(base):.2f}")
                files.append(F.save_static(fig, out_dir / "cka", options))
        if options.interactive:
            import plotly.graph_objects as go
            from plotly.subplots import make_subplots
            fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[1] for p in panels])
            for c, (m, _, rows, cols) in enumerate(panels):
                fig.add_trace(go.Heatmap(z=m, x=cols, y=rows, zmin=0, zmax=1,
                                         colorscale="Magma"), 1, c + 1)
            fig.update_layout(title=f"Linear CKA over {n} images ({pool})", height=520,
                              width=520 * len(panels))
            files.append(I.save_html(fig, out_dir / "cka.html", options))
        return files

    def _between(self, dump, other_path: str, n: int, pool: str, read, names, width, step):
        path = Path(other_path).expanduser()
        if not path.is_absolute() and not path.exists():
            path = Path(dump.path).parent / other_path
        with Dump.open(path) as other:
            if len(other) < n or not np.array_equal(other.indices[:n], dump.indices[:n]) or \
                    other.attrs.get("dataset") != dump.attrs.get("dataset"):
                raise PluginError(f"cka.other '{path}' does not hold the same images as "
                                  f"'{dump.path}' in the same order (dataset, split positions and "
                                  f"count must match); dump both with the same --data, --limit "
                                  f"and --seed.")
            other_names = other.match("blocks.*.out")
            if not other_names:
                raise PluginError(f"cka.other '{path}' holds no blocks.*.out; dump it with "
                                  f"--hooks 'blocks.*.out'.")
            opool = pool if other.layout.cls_index is not None else "mean"
            read_y = reader(other, other_names, opool, self.name)
            between = cka_matrix(read, read_y, len(names), len(other_names), n, width, step)
            return between, other_names, str(path)
