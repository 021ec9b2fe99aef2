"""`cls-embedding`: the CLS token of the residual stream, projected with PCA and UMAP.

Layer l means the residual stream after block l (`blocks.l.out`, token 0); "head" is the `cls`
hook, the final-norm CLS token the classifier reads. Points are coloured by class (by the
predicted class when the data has no labels, in one colour for a feature model without
labels). The silhouette score of the classes in the full
D-dimensional space is computed at every depth, so "classes separate from layer k on" is a
number, not an impression. Without labels no silhouette is computed: the predictions are read
off the head token, so scoring against them would make the head separate by construction.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vitscope.errors import PluginError
from vitscope.plugin import (Option, cls_index, layer_spec, n_images, other_prefix_names,
                             read_chunks, select_layers)
from vitscope.render import figures as F
from vitscope.render import interactive as I
from vitscope.render.umap_cache import load_umap

SILHOUETTE_SAMPLE = 2000   # silhouette is O(N²): estimate it on a fixed random subset beyond this
# UMAP's neighbours: exact (sklearn, brute force) up to here, umap's NN-descent beyond. Measured
# on a 2-core CPU: brute force takes 0.13 s at 4k points and 1.6 s at 16k (it grows as N²);
# NN-descent 0.35 s at 16k but ~8 s of numba compilation in every process, cache or not.
EXACT_NEIGHBORS_MAX = 20_000
PCA_BLOCK = 1024               # rows converted to float64 at a time by the PCA
KNN_WORKING_MB = 8             # MB of one block of distances (neighbours, silhouette)
NO_LABELS = "no labels: silhouette not computed"
FEW_PER_CLASS = 10   # below this many images a class, a layout and a silhouette are anecdotes


# what the static figure's title adds about its colours, by what they stand for
COLOURED = {"prediction": " (no labels: coloured by prediction)",
            "all images": " (no labels and no class head: one colour)"}


def few_per_class(colour: np.ndarray) -> str:
    """A caution for figures whose classes hold few images ("" when they hold enough)."""
    counts = np.bincount(colour[colour >= 0])
    counts = counts[counts > 0]
    if not len(counts) or np.median(counts) >= FEW_PER_CLASS:
        return ""
    k = int(np.median(counts))
    return (f"only {k} image{'s' if k != 1 else ''} a class: the layout and the silhouette "
            f"are anecdotal (analyse more with --images N)")
NO_CLASSES = "fewer than 2 labelled classes: silhouette undefined"
# The interactive page draws SVG points (every browser) up to this many a panel and WebGL
# points beyond. Measured (benchmarks/embedding_render.py, headless Chromium, 2 panels, the
# 2-core VM): SVG takes ~0.3 s per zoom or slider step at 5,000 and ~0.55 s at 10,000, WebGL
# ~0.13 s at both; past this SVG stops feeling immediate.
WEBGL_ABOVE = 5000
WEBGL_NOTE = "Drawn with WebGL"
UMAP_MISSING = ("UMAP needs the umap-learn package, which is not installed: run `pip install "
                "umap-learn`, or pass --opt cls-embedding.umap=false for PCA only")


class PcaFit:
    """2-component PCA fitted chunk by chunk: sums of the centred data and of its D×D
    products (float64, shifted by the first chunk's mean so large means lose no precision)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum: np.ndarray | float = 0.0
        self.products: np.ndarray | float = 0.0

    def add(self, x: np.ndarray) -> None:
        if self.shift is None:
            self.shift = np.asarray(x, np.float64).mean(axis=0)
        for i in range(0, len(x), PCA_BLOCK):      # float64 copies of a block, not of x
            block = np.asarray(x[i:i + PCA_BLOCK], np.float64) - self.shift
            self.n += len(block)
            self.sum = self.sum + block.sum(axis=0)
            self.products = self.products + block.T @ block

    def fit(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean D, components 2×D, explained-variance ratio 2); signs fixed so the largest
        loading of each component is positive (stable across runs)."""
        centre = self.sum / self.n
        scatter = self.products - self.n * np.outer(centre, centre)   # of the centred data
        values, vectors = np.linalg.eigh(scatter)                     # ascending eigenvalues
        comps = vectors[:, ::-1][:, :2].T                             # 2×D, largest first
        signs = np.sign(comps[np.arange(2), np.abs(comps).argmax(axis=1)])
        comps = comps * np.where(signs == 0, 1, signs)[:, None]
        ratio = values[::-1][:2] / max(values.sum(), 1e-12)
        return self.shift + centre, comps, ratio.astype(np.float32)


def project(x: np.ndarray, mean: np.ndarray, comps: np.ndarray) -> np.ndarray:
    """N×D -> N×2 on the fitted components (in float64 blocks of PCA_BLOCK rows)."""
    return np.concatenate([((np.asarray(x[i:i + PCA_BLOCK], np.float64) - mean) @ comps.T)
                           .astype(np.float32) for i in range(0, len(x), PCA_BLOCK)]
                          or [np.zeros((0, 2), np.float32)])


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """N×D -> (N×2 coordinates, explained-variance ratio of the 2 components). Uses the D×D
    covariance (cheap for N >> D) rather than an SVD of the N×D data."""
    fit = PcaFit()
    fit.add(x)
    mean, comps, ratio = fit.fit()
    return project(x, mean, comps), ratio


def cls_chunks(dataset, n: int, token: int | None) -> Iterator[np.ndarray]:
    """The CLS vectors (token `token` of an N×T×D hook, or the N×D hook itself when None) of
    the first n images, chunk by chunk as float32; only that token is read."""
    select = () if token is None else (token,)
    for _, x in read_chunks(dataset, n, select=select):
        yield x


def silhouette_rows(labels: np.ndarray, seed: int) -> np.ndarray:
    """The images the silhouette is computed on: every labelled one, or beyond
    SILHOUETTE_SAMPLE the same random subset sklearn's `sample_size` would draw."""
    from sklearn.utils import check_random_state
    rows = np.flatnonzero(labels >= 0)
    if len(rows) > SILHOUETTE_SAMPLE:
        rows = rows[check_random_state(seed).permutation(len(rows))[:SILHOUETTE_SAMPLE]]
    return rows


def read_rows(dataset, n: int, rows: np.ndarray, token: int | None) -> np.ndarray:
    """The CLS vectors of images `rows` (any order), read in chunks: memory len(rows)×D."""
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    out = np.empty((len(rows), dataset.shape[-1]), np.float32)
    start = 0
    for x in cls_chunks(dataset, n, token):
        lo, hi = np.searchsorted(wanted, [start, start + len(x)])
        out[order[lo:hi]] = x[wanted[lo:hi] - start]
        start += len(x)
    return out


def silhouette(x: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Silhouette of the labelled points (NaN when fewer than 2 classes have 2+ points)."""
    from sklearn import config_context
    from sklearn.metrics import silhouette_score
    keep = labels >= 0
    x, labels = x[keep], labels[keep]
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2 or len(labels) <= len(classes):
        return float("nan")
    sample = SILHOUETTE_SAMPLE if len(labels) > SILHOUETTE_SAMPLE else None
    with config_context(working_memory=KNN_WORKING_MB):   # distances in blocks, not N×N
        return float(silhouette_score(x, labels, sample_size=sample, random_state=seed))


def nearest_neighbors(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every point (itself first), by scikit-learn's brute
    force in bounded blocks: (indices N×k int32, distances N×k float32)."""
    from sklearn import config_context
    from sklearn.neighbors import NearestNeighbors
    with config_context(working_memory=KNN_WORKING_MB):   # MB of distances per block
        dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(x)
    return idx.astype(np.int32), dist.astype(np.float32)


def umap_2d(x: np.ndarray, seed: int, n_neighbors: int, n_epochs: int = 200) -> np.ndarray:
    """UMAP to 2-D with a fixed seed (deterministic; umap then runs single-threaded).

    The neighbour graph comes from exact scikit-learn neighbours up to EXACT_NEIGHBORS_MAX
    points (umap's own exact path below 4,096 points goes through a slow Python-callable
    metric; its approximate NN-descent recompiles part of its numba code in every process),
    and from umap's approximate NN-descent beyond. numba's compiled code is cached across
    runs (vitscope.render.umap_cache). 200 epochs, umap's own choice for large data, instead of 500 for
    small data: the same picture at half the cost."""
    try:
        umap = load_umap()
    except ImportError:
        raise PluginError(UMAP_MISSING + ".") from None
    k = min(n_neighbors, len(x) - 1)
    extra = {"force_approximation_algorithm": True}
    if len(x) <= EXACT_NEIGHBORS_MAX:
        extra = {"precomputed_knn": (*nearest_neighbors(x, k), None)}
    with warnings.catch_warnings():  # a fixed seed disables parallelism; no search index
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=0.1, random_state=seed,
                            n_epochs=n_epochs, init="spectral" if len(x) > 8 else "random",
                            **extra)
        return reducer.fit_transform(x).astype(np.float32)


class ClsEmbedding:
    """PCA and UMAP of the CLS token per layer, coloured by class, and silhouette vs depth."""

    name = "cls-embedding"
    requires = ("blocks.*.out", "cls")
    min_images = 3        # a projection of fewer points says nothing (`analyze --all` skips it)
    options = (
        Option("layers", layer_spec, "first,middle,last", "blocks whose CLS token is projected "
               "(the final-norm 'head' token is always added)", metavar="LAYERS"),
        Option("umap", bool, True, "also project with UMAP (slower; needs umap-learn)"),
        Option("n_neighbors", int, 15, "UMAP neighbourhood size", min=2, max=200),
        Option("seed", int, 0, "random seed of UMAP and the silhouette subsample",
               min=0, max=2 ** 32 - 1),
        Option("points", int, 2000, "most images drawn in the interactive figure (the first "
               "of the dump's shuffled order; the static figure draws all)", min=10,
               max=10 ** 7),
        Option("webgl_above", int, WEBGL_ABOVE, "the interactive figure draws its points as "
               "SVG up to this many a panel (any browser), with WebGL beyond (faster, but "
               "blank in a browser without WebGL)", min=0, max=10 ** 7),
    )

    def check(self, options, shape) -> None:
        cls_index(shape.layout, self.name)
        select_layers(options.layers, shape.depth, "cls-embedding.layers")

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        blocks = dump.match("blocks.*.out")
        depth = len(blocks)
        n = n_images(dump, options.limit)
        if n < 3:
            raise PluginError(f"cls-embedding needs at least 3 images, {n} are analysed; "
                              f"pass --images 3 or more (and capture at least that many).")
        chosen = select_layers(options.layers, depth, "cls-embedding.layers")
        # the CLS token at every depth (at the layout's CLS index of each block's output) and
        # the head token; read chunk by chunk, that token only: one shown layer in memory at a time
        cls = cls_index(dump.layout, self.name)
        sources = [(dump[b], cls) for b in blocks] + [(dump["cls"], None)]
        labels, preds = dump.labels[:n], dump.preds[:n]
        # by label, else by prediction, else (a feature model, no labels) one colour
        colour, coloured_by, names = F.grouping(dump, n)
        by_label = coloured_by == "label"
        positions = [f"block {i}" for i in range(depth)] + ["head"]
        if by_label:   # on the rows sklearn's sample_size would draw, read alone
            rows = silhouette_rows(labels, options.seed)
            sil = np.array([silhouette(read_rows(ds, n, rows, token), labels[rows])
                            for ds, token in sources])
        else:  # not against the predictions: they come from the head token itself
            sil = np.full(depth + 1, np.nan)

        shown = [(f"block {l}", sources[l]) for l in chosen] + [("head (final norm)", sources[-1])]
        pca, umaps, warn = [], [], None
        for _, (ds, token) in shown:
            # UMAP needs the N×D points in memory; PCA alone streams them twice from the dump
            x = (np.concatenate(list(cls_chunks(ds, n, token))) if options.umap and not warn
                 else None)
            chunks = (lambda: [x]) if x is not None else (lambda: cls_chunks(ds, n, token))
            fit = PcaFit()
            for chunk in chunks():
                fit.add(chunk)
            mean, comps, ratio = fit.fit()
            pca.append((np.concatenate([project(c, mean, comps) for c in chunks()]), ratio))
            if x is not None:
                try:
                    umaps.append(umap_2d(x, options.seed, options.n_neighbors))
                except PluginError as e:
                    if "umap-learn" not in str(e):
                        raise
                    warn = UMAP_MISSING
                    warnings.warn(warn)
            x = chunks = None   # one layer's points in memory at a time
        coords = {"PCA": np.stack([c for c, _ in pca])}
        if umaps and not warn:
            coords["UMAP"] = np.stack(umaps)
        results = dict(pca=coords["PCA"], pca_explained=np.stack([v for _, v in pca]),
                       silhouette=sil, positions=np.array(positions),
                       shown=np.array([s for s, _ in shown]), labels=labels, preds=preds)
        if "UMAP" in coords:
            results["umap"] = coords["UMAP"]
        best = int(np.nanargmax(sil)) if np.isfinite(sil).any() else -1
        others = other_prefix_names(dump.layout)
        summary = {"images": n, "coloured_by": coloured_by,
                   "token_layout": dump.layout.describe(),
                   "silhouette_head": round(float(sil[-1]), 4),      # NaN is written as null
                   "silhouette_best": f"{positions[best]} ({sil[best]:.3f})" if best >= 0 else None,
                   "silhouette_first_block": round(float(sil[0]), 4)}
        if not np.isfinite(sil).any():
            summary["silhouette"] = NO_CLASSES if by_label else NO_LABELS
        if warn:
            summary["umap"] = "skipped: " + warn
        caution = few_per_class(colour)
        if caution:
            summary["caution"] = caution
        out_dir = Path(out_dir)
        files = F.save_results(out_dir, results, summary)
        titles = [s for s, _ in shown]
        if options.static:
            files.append(self._scatter(coords, results["pca_explained"], titles, colour, names,
                                       coloured_by, out_dir, options, others, caution))
            files.append(self._silhouette(sil, positions, by_label, out_dir, options, caution))
        if options.interactive:
            files.append(self._interactive(dump, coords, titles, colour, names, labels, preds,
                                           n, out_dir, options, caution))
        return files

    @staticmethod
    def _scatter(coords, explained, titles, colour, names, coloured_by, out_dir, options,
                 others="", caution="") -> Path:
        colors = np.array(F.class_colors(len(names)) + ["#999999"])
        rows = list(coords)
        with F.style() as plt:
            fig, axes = plt.subplots(len(rows), len(titles), figsize=(3.0 * len(titles) + 1.6,
                                                                      2.9 * len(rows)),
                                     squeeze=False)
            c = colors[np.where(colour >= 0, colour, len(names))]
            size = max(3.0, min(14.0, 3000 / max(len(colour), 1)))
            for r, proj in enumerate(rows):
                for j, title in enumerate(titles):
                    ax = axes[r, j]
                    xy = coords[proj][j]
                    ax.scatter(xy[:, 0], xy[:, 1], c=c, s=size, lw=0, alpha=0.8, rasterized=True)
                    sub = (f" · {explained[j].sum():.0%} var" if proj == "PCA" else "")
                    ax.set_title(f"{proj} · {title}{sub}")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.spines[["left", "bottom"]].set_color("#bbb")
            present = sorted(set(colour[colour >= 0].tolist()))
            handles = [plt.Line2D([], [], marker="o", ls="", color=colors[i], label=names[i])
                       for i in present]
            fig.legend(handles=handles, loc="center right", frameon=False,
                       title=coloured_by, fontsize=8)
            fig.suptitle("CLS token of the residual stream" + COLOURED.get(coloured_by, "") +
                         (f"\nthe {others} are not projected" if others else "") +
                         (f"\n{caution}" if caution else ""))
            fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
            return F.save_static(fig, out_dir / "cls_embedding", options)

    @staticmethod
    def _silhouette(sil, positions, by_label, out_dir, options, caution="") -> Path:
        with F.style() as plt:
            fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * len(positions) + 1.5), 3.2))
            x = np.arange(len(positions))
            ax.set_xticks(x, [p.replace("block ", "") for p in positions],
                          rotation=0 if len(x) <= 14 else 90)
            ax.set(xlabel="block (head = final-norm CLS)", ylabel="silhouette score",
                   title="Class separation of the CLS token vs depth" +
                         (" (by label)" if by_label else "") +
                         (f"\n{caution}" if caution else ""))
            if np.isfinite(sil).any():
                ax.plot(x, sil, "o-", color="C0", ms=4)
                ax.axhline(0, color="gray", lw=0.8, ls="--")
            else:   # an empty plot that says why, rather than a missing file
                why = NO_LABELS if not by_label else NO_CLASSES
                ax.set(xlim=(-0.5, len(x) - 0.5), ylim=(-1, 1))
                ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center",
                        fontsize=10, color="#555")
            return F.save_static(fig, out_dir / "silhouette", options)

    @staticmethod
    def _interactive(dump, coords, titles, colour, names, labels, preds, n, out_dir, options,
                     caution=""):
        """Points of the first options.points images (a browser draws and a page carries that
        many hover thumbnails; the dump's order is a seeded shuffle, so they are a sample)."""
        total, n = n, min(n, options.points)
        colour, labels, preds = colour[:n], labels[:n], preds[:n]
        coords = {proj: xy[:, :n] for proj, xy in coords.items()}
        lab = F.label_names(dump.classes, labels)
        pre = F.label_names(dump.classes, preds)
        # Plain text: the hover box shows it with textContent, Plotly's fields escaped.
        files = F.file_names(dump, len(lab))
        where = [f"{f} · " for f in files] or [""] * len(lab)
        caps = [f"#{i} · {w}label {l}" + (f"\nprediction {p}" if p != "?" else "")
                for i, (w, l, p) in enumerate(zip(where, lab, pre))]
        fig = embedding_figure(coords, titles, colour, names, by_label=(labels >= 0).any(),
                               grouped_by=F.grouping(dump, n)[1],
                               total=total, webgl_above=options.webgl_above)
        page = out_dir / "cls_embedding.html"
        step = I.thumbnail_step(dump.images.shape)      # HDF5 subsamples while reading
        script = I.hover_thumbnail_script(dump.images[:n, ::step, ::step], caps, page=page)
        note = " ".join(t for t in (caution[:1].upper() + caution[1:] + "." if caution else "",
                                    webgl_note(n, options.webgl_above) or "") if t)
        return I.save_html(fig, page, options, post_script=script, note=note or None)


def uses_webgl(n: int, webgl_above: int) -> bool:
    """Whether n points a panel are drawn with WebGL (Scattergl) rather than SVG (Scatter).
    SVG draws everywhere, WebGL only where the browser has it (not in every VM, remote
    desktop or locked-down browser: there Plotly shows only "WebGL is not supported")."""
    return n > webgl_above


def webgl_note(n: int, webgl_above: int) -> str | None:
    """The page's sentence when its points are WebGL (None when SVG): shown above the figure,
    where a browser without WebGL still shows it, with the two ways to get SVG points."""
    if not uses_webgl(n, webgl_above):
        return None
    return (f"{WEBGL_NOTE}: {n:,} points a panel, more than webgl_above={webgl_above:,}. "
            f"A browser without WebGL shows \"WebGL is not supported\" instead of the plot: "
            f"render again with SVG points, --opt cls-embedding.webgl_above={n} (slower to zoom "
            f"beyond about {WEBGL_ABOVE:,} points), or with fewer points, "
            f"--opt cls-embedding.points={webgl_above}.")


def embedding_figure(coords, titles, colour, names, *, by_label: bool, total: int,
                     webgl_above: int = WEBGL_ABOVE, grouped_by: str | None = None):
    """The page's figure: one panel per projection (coords: name -> L×n×2), a slider over
    the L shown layers, one trace per class and panel; each point's customdata is its image
    index (the hover box reads it). SVG up to `webgl_above` points a panel, WebGL beyond
    (webgl_note says so on the page)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    projs = list(coords)
    n = coords[projs[0]].shape[1]
    webgl = uses_webgl(n, webgl_above)
    Trace = go.Scattergl if webgl else go.Scatter
    colors = F.class_colors(len(names))
    fig = make_subplots(rows=1, cols=len(projs), subplot_titles=projs,
                        horizontal_spacing=0.06)
    groups = []  # trace indices per shown layer
    present = sorted(set(colour[colour >= 0].tolist())) + ([-1] if (colour < 0).any() else [])
    for j, title in enumerate(titles):
        ids = []
        for col, proj in enumerate(projs):
            xy = coords[proj][j]
            for c in present:
                m = np.flatnonzero(colour == c)
                # no per-point text: the corner box shows each image's label and prediction
                fig.add_trace(Trace(
                    x=xy[m, 0], y=xy[m, 1], mode="markers", customdata=m,
                    name=I.plotly_text(names[c]) if c >= 0 else "unknown",
                    legendgroup=str(c), showlegend=col == 0, visible=j == len(titles) - 1,
                    marker=dict(size=6, color=colors[c] if c >= 0 else "#999", opacity=0.8),
                    hovertemplate="#%{customdata}<extra>%{fullData.name}</extra>"),
                    row=1, col=col + 1)
                ids.append(len(fig.data) - 1)
        groups.append(ids)
    steps = []
    for j, title in enumerate(titles):
        visible = [False] * len(fig.data)
        for i in groups[j]:
            visible[i] = True
        steps.append(dict(method="update", label=I.plotly_text(title),
                          args=[{"visible": visible}]))
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(
        title="CLS token of the residual stream (hover a point to see its image)" +
              (f"<br><sub>the first {n:,} of {total:,} images (the static figure shows all; "
               f"--opt cls-embedding.points=N)</sub>" if n < total else ""),
        height=620, width=520 * len(projs) + 200, plot_bgcolor="white",
        legend=dict(title=grouped_by or ("label" if by_label else "prediction")),
        sliders=[dict(active=len(titles) - 1, currentvalue=dict(prefix="layer: "),
                      pad=dict(t=40), steps=steps)])
    return fig
