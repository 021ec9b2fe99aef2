"""`norm-activations`: statistics of activations around the LayerNorms, per block.

For the chosen blocks (default first, middle, last): the residual stream entering attention
(norm1.in) and its normalised version (norm1.out), the attention output (attn.out), the stream
entering the MLP (norm2.in) and its normalised version (norm2.out), plus the patch projections
(patch_embed.out). Per hook: mean, std, max |x|, per-token L2 norms; histograms before vs after
each LayerNorm; the largest-magnitude feature dimensions (outlier channels); per-token norm
maps over the image, and an animated GIF of the residual-stream norm map across all blocks.
Streaming over the dump in chunks, so memory stays bounded for any number of images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.plugin import (Option, layer_spec, n_images, other_prefix, other_prefix_names,
                             rows_per_read, select_layers, to_grid)
from vitscope.render import figures as F
from vitscope.render import interactive as I
from vitscope.render import mosaic as M

KINDS = ("norm1.in", "norm1.out", "attn.out", "norm2.in", "norm2.out")
# What each branch adds to the residual stream, after layer scale (and whatever else the
# block applies to the branch): the difference of the residual after and before it. On a
# layer-scale model (DINOv2, CaiT) attn.out is before the scale and can be 5× smaller than
# what the block adds.
ADDED = {"attn.added": ("norm2.in", "norm1.in"), "mlp.added": ("out", "norm2.in")}
KIND_LABELS = {"norm1.in": "LN1 input = residual entering (norm1.in)",
               "norm1.out": "LN1 output (norm1.out)",
               "attn.out": "attention output, before layer scale (attn.out)",
               "norm2.in": "LN2 input = residual after attention (norm2.in)",
               "norm2.out": "LN2 output (norm2.out)",
               "attn.added": "attention adds to the residual (norm2.in − norm1.in)",
               "mlp.added": "MLP adds to the residual (out − norm2.in)",
               "patch_embed.out": "patch projections (patch_embed.out)"}
HIST_IMAGES = 64   # images whose values feed the histograms (a fixed, cheap sample)
HIST_BINS = 120   # over the full range: the bulk keeps ~10 bins even with 10× outliers


class ActivationStats:
    """Statistics of one N×T×D (or N×P×D) activation, accumulated chunk by chunk: moments
    (combined per chunk in float64, Chan et al.), max |x|, mean |x| per channel, the mean
    token L2 norm (all tokens, the CLS token `cls`, and the mean over the other prefix tokens
    `others`: distillation, registers), and the values of the first `sample` images for
    histograms. Memory: D channels and the sample, whatever N is."""

    def __init__(self, sample: int = HIST_IMAGES, cls: int = 0, others=()) -> None:
        self.sample = sample
        self.cls, self.others = cls, list(others)
        self.other_norm_sum = 0.0
        self.count = 0          # values seen
        self.mean = 0.0
        self.m2 = 0.0           # sum of squared deviations from the mean
        self.max_abs = 0.0
        self.chan_abs: np.ndarray | None = None
        self.tokens = 0         # tokens seen (images × T)
        self.norm_sum = 0.0
        self.first_norm_sum = 0.0
        self.images = 0
        self.values: list[np.ndarray] = []

    def add(self, x: np.ndarray, start: int) -> np.ndarray:
        """Add images start..start+len(x) (float32 N×T×D); returns their token norms N×T."""
        n = x.size
        if n:
            mean = float(x.mean(dtype=np.float64))
            m2 = float(np.square(x - np.float32(mean), dtype=np.float64).sum())
            total = self.count + n
            delta = mean - self.mean
            self.mean += delta * n / total
            self.m2 += m2 + delta * delta * self.count * n / total
            self.count = total
            self.max_abs = max(self.max_abs, float(np.abs(x).max()))
        a = np.abs(x).sum(axis=(0, 1), dtype=np.float64)
        self.chan_abs = a if self.chan_abs is None else self.chan_abs + a
        norms = np.sqrt(np.einsum("ntd,ntd->nt", x, x))
        self.tokens += norms.size
        self.norm_sum += float(norms.sum(dtype=np.float64))
        self.first_norm_sum += float(norms[:, self.cls].sum(dtype=np.float64))
        if self.others:
            self.other_norm_sum += float(norms[:, self.others].mean(axis=1).sum(dtype=np.float64))
        self.images += len(norms)
        if start < self.sample:   # a copy (not a view keeping the chunk), fp16 as stored
            self.values.append(x[:self.sample - start].astype(np.float16).ravel())
        return norms

    def result(self) -> dict[str, np.ndarray]:
        count = max(self.count, 1)
        tokens_per_channel = max(self.tokens, 1)
        return {"mean": np.float64(self.mean), "std": np.float64(np.sqrt(self.m2 / count)),
                "max_abs": np.float64(self.max_abs),
                "channel_abs_mean": self.chan_abs / tokens_per_channel,
                "token_norm_mean": np.float64(self.norm_sum / max(self.tokens, 1)),
                "first_token_norm_mean": np.float64(self.first_norm_sum / max(self.images, 1)),
                "other_prefix_norm_mean": np.float64(self.other_norm_sum / max(self.images, 1)),
                "images": self.images,
                "sample": np.concatenate(self.values) if self.values else np.zeros(0, np.float32)}


def full_range_bins(*samples: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Bin edges from the smallest to the largest value of all samples: the rare outliers
    are what a log-count histogram before vs after a LayerNorm is for, so none is cut."""
    values = np.concatenate([np.ravel(s) for s in samples])
    lo, hi = float(values.min()), float(values.max())
    return np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)


def outlier_dims(channel_abs_mean: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k channels with the largest mean |x|, largest first."""
    k = min(k, len(channel_abs_mean))
    top = np.argpartition(-channel_abs_mean, k - 1)[:k]
    return top[np.argsort(-channel_abs_mean[top])]


class NormActivations:
    """Activation statistics before and after the LayerNorms: moments, norms, outlier channels."""

    name = "norm-activations"
    requires = ("patch_embed.out", "blocks.*.norm1.in", "blocks.*.norm1.out", "blocks.*.attn.out",
                "blocks.*.norm2.in", "blocks.*.norm2.out", "blocks.*.out")
    options = (
        Option("blocks", layer_spec, "first,middle,last", "blocks analysed: all, first,middle,last, "
               "0,5,-1, 2-5", metavar="LAYERS"),
        Option("top_k", int, 8, "outlier feature dimensions reported per hook", min=1, max=64),
        Option("show", int, 4, "images in the per-token norm maps", min=1, max=16),
        Option("gif", bool, True, "also write an animated GIF of token norms across all blocks"),
    )

    def check(self, options, shape) -> None:
        select_layers(options.blocks, shape.depth, "norm-activations.blocks")

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        depth = len(dump.match("blocks.*.norm1.in"))
        blocks = select_layers(options.blocks, depth, "norm-activations.blocks")
        n = n_images(dump, options.limit)
        layout = dump.layout
        prefix = layout.num_prefix_tokens
        # the first prefix token stands in for "CLS" in models without one (norms only)
        cls = layout.cls_index if layout.cls_index is not None else 0
        others = other_prefix(layout)
        hooks = {(b, k): f"blocks.{b}.{k}" for b in blocks for k in KINDS}
        hooks["embed"] = "patch_embed.out"
        has_out = bool(dump.match("blocks.*.out"))     # dumps made before it was required
        added = [(b, k) for b in blocks for k in ADDED if has_out or k != "mlp.added"]
        if has_out:
            hooks.update({(b, "out"): f"blocks.{b}.out" for b in blocks})
        # histograms show the LayerNorms' inputs and outputs: only those keep a sample
        acc = {key: ActivationStats(0 if key == "embed" or key[1] not in KINDS or
                                    key[1] == "attn.out" else HIST_IMAGES,
                                    cls=0 if key == "embed" else cls,
                                    others=() if key == "embed" else others)
               for key in [*hooks, *added]}
        out_dir = Path(out_dir)
        with F.Results(out_dir) as results:
            # one pass in chunks of images, every hook per chunk: the token norms of a chunk
            # go to results.npz at once, so nothing of size N stays in memory
            step = min(rows_per_read(dump[name]) for name in hooks.values())
            for start in range(0, n, step):
                stop = min(n, start + step)
                arrays = {key: np.asarray(dump[name][start:stop], np.float32)
                          for key, name in hooks.items()}
                norms = {key: acc[key].add(x, start) for key, x in arrays.items()}
                for b, kind in added:
                    after, before = ADDED[kind]
                    acc[b, kind].add(arrays[b, after] - arrays[b, before], start)
                arrays = None
                results.append("residual_token_norms",                      # N×B×T
                               np.stack([norms[b, "norm1.in"] for b in blocks], axis=1))
                results.append("patch_embed_token_norms", norms["embed"])   # N×P
            stats = {key: a.result() for key, a in acc.items()}
            embed = stats["embed"]
            branch_kinds = [k for k in ADDED if (blocks[0], k) in stats]
            results["added_kinds"] = np.array(branch_kinds)
            for key in ("mean", "std", "max_abs", "token_norm_mean"):
                results[f"added_{key}"] = np.array([[stats[b, k][key] for k in branch_kinds]
                                                    for b in blocks])
            results["blocks"], results["kinds"] = np.array(blocks), np.array(KINDS)
            # the norm maps' panels: the chosen blocks' inputs, then what leaves the last block
            cols = blocks + ([depth] if has_out else [])
            labels = [f"blocks.{b}.norm1.in" for b in blocks] + \
                     ([f"blocks.{depth - 1}.out"] if has_out else [])
            results["norm_map_hooks"] = np.array(labels)
            for key in ("mean", "std", "max_abs"):
                results[key] = np.array([[stats[b, k][key] for k in KINDS] for b in blocks])
            for key, what in (("token_norm_mean", "token_norm_mean"),
                              ("cls_norm_mean", "first_token_norm_mean")):   # float32 as before
                results[key] = np.array([[stats[b, k][what] for k in KINDS] for b in blocks],
                                        np.float32)
            if others:  # register / distillation tokens: high-norm tokens are their signature
                results["other_prefix_norm_mean"] = np.array(
                    [[stats[b, k]["other_prefix_norm_mean"] for k in KINDS] for b in blocks],
                    np.float32)
            results["channel_abs_mean"] = np.stack([[stats[b, k]["channel_abs_mean"]
                                                     for k in KINDS] for b in blocks])
            top = np.stack([[outlier_dims(stats[b, k]["channel_abs_mean"], options.top_k)
                             for k in KINDS] for b in blocks])
            results["outlier_dims"] = top
            for key in ("mean", "std", "max_abs"):
                results[f"patch_embed_{key}"] = embed[key]
            summary = {"images": n, "blocks": blocks, "token_layout": layout.describe()}
            for b in blocks:
                ca = stats[b, "norm1.in"]["channel_abs_mean"]
                d = int(top[blocks.index(b), 0, 0])
                summary[f"block {b} residual max |x|"] = round(
                    float(stats[b, "norm1.in"]["max_abs"]), 3)
                summary[f"block {b} top residual dim"] = (
                    f"{d} ({ca[d] / max(np.median(ca), 1e-12):.1f}× the median channel)")
                summary[f"block {b} attention output norm → added to the residual"] = (
                    f"{stats[b, 'attn.out']['token_norm_mean']:.3g} → "
                    f"{stats[b, 'attn.added']['token_norm_mean']:.3g}")
                if (b, "mlp.added") in stats:
                    summary[f"block {b} MLP adds to the residual (norm)"] = round(
                        float(stats[b, "mlp.added"]["token_norm_mean"]), 3)
            files = results.save(summary)
        plotted = (*KINDS, *branch_kinds)
        plot = {key: np.array([[stats[b, k][key] for k in plotted] for b in blocks])
                for key in ("mean", "std", "max_abs", "token_norm_mean")}

        k = min(options.show, n)
        images = np.asarray(dump.images[:k])
        # residual-stream norm per patch for the shown images at every block (GIF, maps)
        # (k×depth×T), then the residual leaving the last block, where the dump has it
        stream = [f"blocks.{b}.norm1.in" for b in range(depth)]
        if has_out:
            stream.append(f"blocks.{depth - 1}.out")
        all_norms = np.stack([np.linalg.norm(np.asarray(dump[name][:k], np.float32), axis=-1)
                              for name in stream], axis=1)
        maps = to_grid(all_norms[..., prefix:], layout.grid)
        other_norms = all_norms[..., others].mean(-1) if others else None   # k×depth
        captions = [c.replace("\n", " ") for c in F.captions(dump, k)]
        if options.static:
            files.append(self._stats_plot(plot, embed, blocks, out_dir, options, plotted))
            files.append(self._histograms(stats, blocks, out_dir, options))
            files.append(self._outliers(stats, blocks, top, out_dir, options))
            # short column labels ("block 3 in", "block 11 out"); the title names the hooks
            shown = [f"block {h.split('.')[1]} {'out' if h.endswith('.out') else 'in'}"
                     for h in labels]
            files.append(self._norm_maps(images, maps[:, cols], all_norms[:, cols, cls], shown,
                                         captions, out_dir, options,
                                         None if other_norms is None else other_norms[:, cols],
                                         other_prefix_names(layout)))
            if options.gif and depth > 1:
                files.append(self._gif(images, maps, all_norms[..., cls], out_dir, has_out))
        if options.interactive:
            files.append(self._stats_html(plot, blocks, out_dir, options))
            m = min(k, 4)
            fig = I.map_slider(images[:m], maps[:m].transpose(1, 0, 2, 3)[:, :, None],
                               step_labels=[f"{b} in" for b in range(depth)] +
                               ([f"{depth - 1} out"] if has_out else []), slider_label="block",
                               col_titles=["‖residual‖ per token"], row_titles=captions[:m],
                               value_label="‖x‖",
                               title="Residual-stream norm per patch entering each block "
                                     "(blocks.i.norm1.in)" + (", and leaving the last "
                                                              f"(blocks.{depth - 1}.out)"
                                                              if has_out else ""))
            files.append(I.save_html(fig, out_dir / "token_norms.html", options))
        return files

    # ------------------------------------------------------------------------------ figures

    @staticmethod
    def _stats_plot(plot, embed, blocks, out_dir, options, kinds=KINDS) -> Path:
        panels = (("mean", "mean"), ("std", "std"), ("max_abs", "max |x|"),
                  ("token_norm_mean", "mean token L2 norm"))
        x = np.arange(len(blocks))
        width = 0.8 / len(kinds)
        with F.style() as plt:
            fig, axes = plt.subplots(2, 2, figsize=(10, 6.2))
            for ax, (key, label) in zip(axes.flat, panels):
                for i, kind in enumerate(kinds):
                    ax.bar(x + (i - (len(kinds) - 1) / 2) * width, plot[key][:, i], width,
                           label=KIND_LABELS[kind], color=f"C{i}",
                           hatch="//" if kind in ADDED else None)
                ref = {"mean": embed["mean"], "std": embed["std"], "max_abs": embed["max_abs"],
                       "token_norm_mean": embed["token_norm_mean"]}[key]
                ax.axhline(ref, color="k", ls=":", lw=1, label="patch projections")
                ax.set_xticks(x, [f"block {b}" for b in blocks])
                ax.set_title(label)
                if key in ("max_abs", "token_norm_mean", "std"):
                    _log_axis(ax)
                if key == "mean":
                    ax.axhline(0, color="gray", lw=0.6)
            handles, labels = axes[0, 0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, fontsize=7)
            fig.suptitle("Activation statistics around the LayerNorms (hatched: what each "
                         "branch adds to the residual, after layer scale)")
            fig.subplots_adjust(hspace=0.3, wspace=0.15, bottom=0.2)
            return F.save_static(fig, out_dir / "stats", options)

    @staticmethod
    def _histograms(stats, blocks, out_dir, options) -> Path:
        with F.style() as plt:
            fig, axes = plt.subplots(len(blocks), 2, figsize=(9, 2.3 * len(blocks) + 0.6),
                                     squeeze=False)
            for r, b in enumerate(blocks):
                for c, (pre, post) in enumerate((("norm1.in", "norm1.out"), ("norm2.in", "norm2.out"))):
                    ax = axes[r, c]
                    a, z = stats[b, pre]["sample"], stats[b, post]["sample"]
                    bins = full_range_bins(a, z)
                    # one polygon per histogram (stepfilled), not one patch per bin
                    ax.hist(a, bins=bins, alpha=0.55, color="C0", label=f"{pre} (pre)", log=True,
                            histtype="stepfilled")
                    ax.hist(z, bins=bins, alpha=0.55, color="C3", label=f"{post} (post)", log=True,
                            histtype="stepfilled")
                    sa, sz = a.std(dtype=np.float32), z.std(dtype=np.float32)   # fp16 samples
                    ax.set_title(f"block {b} · LN{c + 1}: std {sa:.2f} → {sz:.2f} · "
                                 f"max |x| {np.abs(a).max():.1f} → {np.abs(z).max():.1f}")
                    ax.legend(frameon=False, fontsize=7)
                    if r == len(blocks) - 1:
                        ax.set_xlabel("activation value")
            images = min(stats[blocks[0], "norm1.in"]["images"], HIST_IMAGES)
            fig.suptitle(f"Values before vs after each LayerNorm (first {images} images, "
                         f"full range, log counts)")
            fig.subplots_adjust(hspace=0.45, wspace=0.18, top=1 - 0.55 / fig.get_figheight())
            return F.save_static(fig, out_dir / "histograms", options)

    @staticmethod
    def _outliers(stats, blocks, top, out_dir, options) -> Path:
        kinds = ("norm1.in", "norm1.out")
        with F.style() as plt:
            fig, axes = plt.subplots(len(blocks), 2, figsize=(10, 2.2 * len(blocks) + 0.6),
                                     squeeze=False)
            for r, b in enumerate(blocks):
                for c, kind in enumerate(kinds):
                    ax = axes[r, c]
                    ca = stats[b, kind]["channel_abs_mean"]
                    dims = top[r, KINDS.index(kind)]
                    edges = np.arange(len(ca) + 1) - 0.5   # one patch for all channels
                    ax.stairs(ca, edges, fill=True, color="#9ca3af")
                    ax.bar(dims, ca[dims], width=1.0, color="C3")
                    for d in dims[:5]:
                        ax.annotate(str(d), (d, ca[d]), fontsize=6, ha="center", va="bottom",
                                    color="C3")
                    ax.axhline(np.median(ca), color="k", lw=0.7, ls=":")
                    ax.set_title(f"block {b} · {kind}: top dim {dims[0]} = "
                                 f"{ca[dims[0]] / max(np.median(ca), 1e-12):.1f}× median")
                    ax.set_xlim(-1, len(ca))
                    if r == len(blocks) - 1:
                        ax.set_xlabel("feature dimension")
                    if c == 0:
                        ax.set_ylabel("mean |x|")
            fig.suptitle("Outlier feature dimensions (largest mean |x|, red)")
            fig.subplots_adjust(hspace=0.45, wspace=0.15, top=1 - 0.55 / fig.get_figheight())
            return F.save_static(fig, out_dir / "outlier_dims", options)

    @staticmethod
    def _norm_maps(images, maps, cls_norms, labels, captions, out_dir, options,
                   other_norms=None, others="") -> Path:
        tiles = np.concatenate([M.image_tiles(images)[:, None],
                                M.heat_tiles(maps, tuple(M.image_tiles(images[:1]).shape[1:3]))],
                               axis=1)
        def caption(i, j):
            text = f"max {maps[i, j].max():.1f}\nCLS {cls_norms[i, j]:.1f}"
            return text + (f"\nprefix {other_norms[i, j]:.1f}" if other_norms is not None else "")
        title = "Residual-stream norm per patch (÷ max of each map): 'in' entering the block " \
                "(blocks.i.norm1.in), 'out' leaving it (blocks.i.out)"
        if others:
            title += f"\nthe {others} are not on the grid: 'prefix' is their mean norm"
        with F.style():
            lines = 2 if other_norms is None else 3   # 7-pt caption lines at 150 dpi: ~19 px each
            gap = max(tiles.shape[2] // 4, 19 * lines)
            fig = M.Mosaic(tiles, col_breaks=[0], row_gap=gap).figure(
                title=title, col_labels=["image"] + list(labels),
                row_labels=captions, cbar="‖x‖ ÷ max",
                captions={(i, j + 1): caption(i, j)
                          for i in range(len(images)) for j in range(len(labels))})
            return F.save_static(fig, out_dir / "token_norms", options)

    @staticmethod
    def _gif(images, maps, cls_norms, out_dir, last_out=False) -> Path:
        k, frames = maps.shape[:2]
        depth = frames - 1 if last_out else frames
        tiles = np.concatenate([M.image_tiles(images)[:, None], M.overlay_tiles(images[:, None], maps)],
                               axis=1)                                  # k×(1+depth)×S×S×3
        strips, headers = [], []
        for b in range(frames):
            strips.append(M.Mosaic(np.stack([tiles[:, 0], tiles[:, b + 1]], axis=1)).array)
            # the part that changes per frame (the block) on the first line, where it is read
            leaving = b == depth
            headers.append(f"block {b - 1 if leaving else b} · max {maps[:, b].max():.1f} · CLS "
                           f"{cls_norms[:, b].mean():.1f}\n"
                           f"residual-stream norm per token "
                           f"{'leaving the last block (out)' if leaving else 'entering the block (norm1.in)'}")
        return F.save_gif(M.text_frames(strips, headers), out_dir / "token_norms.gif",
                          duration_ms=600)

    @staticmethod
    def _stats_html(plot, blocks, out_dir, options) -> Path:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        keys = (("mean", "mean"), ("std", "std"), ("max_abs", "max |x|"),
                ("token_norm_mean", "mean token norm"))
        fig = make_subplots(rows=2, cols=2, subplot_titles=[k[1] for k in keys])
        for p, (key, _) in enumerate(keys):
            for i, kind in enumerate(KINDS):
                fig.add_trace(go.Bar(x=[f"block {b}" for b in blocks], y=plot[key][:, i],
                                     name=KIND_LABELS[kind], legendgroup=kind, showlegend=p == 0,
                                     marker_color=F.class_colors(len(KINDS))[i]),
                              row=p // 2 + 1, col=p % 2 + 1)
        fig.update_yaxes(type="log", row=1, col=2)
        fig.update_yaxes(type="log", row=2, col=1)
        fig.update_yaxes(type="log", row=2, col=2)
        fig.update_layout(title="Activation statistics around the LayerNorms", barmode="group",
                          height=700, width=1100, plot_bgcolor="white")
        return I.save_html(fig, out_dir / "stats.html", options)


def _log_axis(ax) -> None:
    """Log scale with plain tick labels (0.5, 1, 2, 5) instead of 5×10⁻¹."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
