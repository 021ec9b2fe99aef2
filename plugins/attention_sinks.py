"""`attention-sinks`: tokens that receive far more attention than the rest, tokens whose norm
is an outlier, and how much of the CLS token's attention they take (Darcet et al. 2023,
"Vision Transformers Need Registers"; Sun et al. 2024, "Massive Activations").

Per block and image: the share of the layer's attention each token receives (mean over heads
and queries) over the median token's share; a token at `ratio` times the median or more (the
CLS token aside: it is the query) is a sink. Its residual norm after the block
(`blocks.i.out`) over the median token's is the norm ratio; `norm_ratio` times or more is a
high-norm token. Reported per block: sinks and high-norm tokens per image, the CLS attention
(head mean) the sinks take, and the baseline of as many median tokens (what ordinary tokens
in their place would take), each as a mean over images with a 95% bootstrap interval, and the
most any single head puts on them. The maps draw where the sinks are: the received attention
over the patch grid, and the norm ratio.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.methods import sinks as S
from vitscope.plugin import Option, layer_spec, n_images, rows_for, select_layers, to_grid
from vitscope.render import figures as F
from vitscope.render import interactive as I
from vitscope.render import mosaic as M


PREFIX_NAMES = {"cls": "CLS", "dist": "distillation", "register": "register"}


def token_name(layout, j: int) -> str:
    """"CLS", "register 2" or "patch (3, 7)" (row, column on the grid) for token index j."""
    start = 0
    for kind, count in layout.prefix:
        if j < start + count:
            name = PREFIX_NAMES.get(kind, kind)
            return name if count == 1 else f"{name} {j - start}"
        start += count
    p = j - layout.num_prefix_tokens
    return f"patch ({p // layout.grid[1]}, {p % layout.grid[1]})"


class AttentionSinks:
    """Attention sinks and high-norm tokens per block, and the CLS attention they take."""

    name = "attention-sinks"
    requires = ("blocks.*.attn.weights", "blocks.*.out")
    options = (
        Option("ratio", float, 10.0, "a token is a sink where it receives at least this many "
               "times the median token's attention", min=1.0),
        Option("norm_ratio", float, 3.0, "a token is high-norm where its norm after the block "
               "is at least this many times the median token's", min=1.0),
        Option("blocks", layer_spec, "all", "blocks analysed: all, first,middle,last, 0,5,-1, "
               "2-5", metavar="LAYERS"),
        Option("show", int, 4, "images in the maps", min=1, max=16),
        M.scale_option(),
    )

    def check(self, options, shape) -> None:
        select_layers(options.blocks, shape.depth, "attention-sinks.blocks")

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        attn_names = dump.match("blocks.*.attn.weights")
        layers = select_layers(options.blocks, len(attn_names), "attention-sinks.blocks")
        layout = dump.layout
        n = n_images(dump, options.limit)
        k = min(options.show, n)
        out_dir = Path(out_dir)
        with F.Results(out_dir) as results:
            per, shown, counts = self._compute(dump, layers, n, k, options, layout, results)
            results["layers"] = np.array(layers)
            results["sink_counts_by_token"] = counts          # L×T: images where j is a sink
            summary = self._summary(per, layers, counts, layout, options, n)
            files = results.save(summary)
        images = np.asarray(dump.images[:k])
        captions = F.captions(dump, k)
        headline = _headline(summary)
        if options.static:
            files.append(self._maps(images, shown["received"], layers, captions, options,
                                    out_dir / "attention_sinks",
                                    f"Attention received per patch (sinks: ≥ {options.ratio:g}× "
                                    f"the median token) · {headline}", "received"))
            files.append(self._maps(images, shown["norm"], layers, captions, options,
                                    out_dir / "high_norm_tokens",
                                    f"Token norm after each block ÷ the median token's "
                                    f"(high-norm: ≥ {options.norm_ratio:g}×)", "norm ratio"))
            files.append(self._share_plot(per, layers, options, out_dir))
        if options.interactive:
            m = min(k, 6)
            fig = I.map_slider(images[None, :m], shown["received"][:m].transpose(1, 0, 2, 3)[:, None],
                               step_labels=[str(l) for l in layers], slider_label="block",
                               col_titles=captions[:m], row_titles=[""],
                               value_label="share of the layer's attention",
                               title=f"Attention received per patch · {headline}")
            files.append(I.save_html(fig, out_dir / "attention_sinks.html", options))
        return files

    # ------------------------------------------------------------------------------ compute

    @staticmethod
    def _compute(dump, layers, n, k, options, layout, results):
        """Per block, in chunks of images (one block's attention in memory at a time): the
        per-image numbers (dict of N×L arrays), the first k images' maps, and how often each
        token is a sink (L×T)."""
        cls, grid, P = layout.cls_index, layout.grid, layout.num_prefix_tokens
        H, T = dump[f"blocks.{layers[0]}.attn.weights"].shape[1], layout.num_tokens
        chunk = rows_for(H * T * T * 4 * 2)
        keys = ("sinks", "high_norm", "cls_on_sinks", "baseline", "max_head_on_sinks",
                "top_share")
        per = {key: [] for key in keys}
        shown = {"received": [], "norm": []}
        counts = np.zeros((len(layers), T), np.int64)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            rows = {key: [] for key in keys}
            maps = {"received": [], "norm": []}
            for li, l in enumerate(layers):
                attn = dump[f"blocks.{l}.attn.weights"][s:e]
                got = S.received(attn)                                  # N×T
                ratio = S.ratio_to_median(got, cls)
                sink = ratio >= options.ratio
                norms = S.token_norms(dump[f"blocks.{l}.out"][s:e])
                nratio = S.ratio_to_median(norms, cls)
                high = nratio >= options.norm_ratio
                if cls is not None:
                    sink[:, cls] = high[:, cls] = False
                    row = attn[:, :, cls, :].astype(np.float32)            # N×H×T
                    mean_row = row.mean(axis=1)
                    on = (mean_row * sink).sum(axis=1)
                    ordinary = np.median(np.delete(mean_row, cls, axis=1), axis=1)
                    rows["cls_on_sinks"].append(on)
                    rows["baseline"].append(ordinary * sink.sum(axis=1))
                    rows["max_head_on_sinks"].append((row * sink[:, None]).sum(-1).max(axis=1))
                else:
                    nan = np.full(e - s, np.nan)
                    for key in ("cls_on_sinks", "baseline", "max_head_on_sinks"):
                        rows[key].append(nan)
                rows["sinks"].append(sink.sum(axis=1))
                rows["high_norm"].append(high.sum(axis=1))
                rows["top_share"].append(got.max(axis=1))
                counts[li] += sink.sum(axis=0)
                results.append(f"sink_ratio.{l}", ratio.astype(np.float32))
                results.append(f"norm_ratio.{l}", nratio.astype(np.float32))
                if s < k:
                    maps["received"].append(to_grid(got[:k - s, P:], grid))
                    maps["norm"].append(to_grid(nratio[:k - s, P:], grid))
            for key in keys:        # N×L, a few numbers per image (the intervals need them)
                per[key].append(np.stack(rows[key], axis=1).astype(np.float32))
                results.append(key, per[key][-1])
            if s < k:
                for key in maps:
                    shown[key].append(np.stack(maps[key], axis=1))      # k×L×h×w
        per = {key: np.concatenate(v) for key, v in per.items()}
        shown = {key: np.concatenate(v).astype(np.float32) for key, v in shown.items()}
        return per, shown, counts

    @staticmethod
    def _summary(per, layers, counts, layout, options, n) -> dict:
        blocks = []
        for li, l in enumerate(layers):
            top = np.argsort(-counts[li])[:3]
            share = S.mean_interval(per["cls_on_sinks"][:, li])
            base = S.mean_interval(per["baseline"][:, li])
            blocks.append({
                "block": l,
                "sinks_per_image": round(float(per["sinks"][:, li].mean()), 3),
                "high_norm_per_image": round(float(per["high_norm"][:, li].mean()), 3),
                "cls_attention_on_sinks": [round(x, 4) for x in share],
                "median_tokens_baseline": [round(x, 4) for x in base],
                "max_head_cls_attention_on_sinks": round(float(np.nanmean(
                    per["max_head_on_sinks"][:, li])), 4) if np.isfinite(
                    per["max_head_on_sinks"][:, li]).any() else None,
                "top_token_share_of_layer": round(float(per["top_share"][:, li].mean()), 4),
                "most_frequent_sinks": [f"{token_name(layout, int(j))} ({int(counts[li, j])}/{n})"
                                        for j in top if counts[li, j] > 0],
            })
        with_sinks = [b["block"] for b in blocks if b["sinks_per_image"] > 0]
        strongest = max(blocks, key=lambda b: (np.nan_to_num(b["cls_attention_on_sinks"][0]),
                                               b["sinks_per_image"]))
        return {"images": n, "ratio": options.ratio, "norm_ratio": options.norm_ratio,
                "token_layout": layout.describe(),
                "blocks_with_sinks": with_sinks,
                "strongest_block": strongest["block"],
                "cls_attention_on_sinks": strongest["cls_attention_on_sinks"],
                "median_tokens_baseline": strongest["median_tokens_baseline"],
                "interval": "mean over images [95% bootstrap interval]",
                "per_block": blocks}

    # ------------------------------------------------------------------------------ figures

    @staticmethod
    def _maps(images, maps, layers, captions, options, stem, title, what) -> Path:
        overlays, peaks, top = M.scaled_overlay_tiles(images[:, None], maps, options.scale)
        tiles = np.concatenate([M.image_tiles(images)[:, None], overlays], axis=1)
        with F.style():
            fig = M.Mosaic(tiles, row_gap=max(8, tiles.shape[2] // 8)).figure(
                title=title, col_labels=["image"] + [f"block {l}" for l in layers],
                row_labels=[c.replace("\n", " ") for c in captions[:len(images)]],
                **M.scale_legend(peaks, top, what, col_offset=1))
            return F.save_static(fig, stem, options)

    @staticmethod
    def _share_plot(per, layers, options, out_dir) -> Path:
        x = np.array(layers)
        with F.style() as plt:
            fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.3), gridspec_kw={"wspace": 0.3})
            for key, label, color in (("cls_on_sinks", "CLS attention on the sinks", "C3"),
                                      ("baseline", "as many median tokens (baseline)", "gray")):
                stats = np.array([S.mean_interval(per[key][:, i]) for i in range(len(layers))])
                ax.plot(x, stats[:, 0], "o-", color=color, label=label, ms=3)
                ax.fill_between(x, stats[:, 1], stats[:, 2], color=color, alpha=0.2, lw=0)
            ax.set(xlabel="block", ylabel="share of CLS attention (95% CI)", ylim=(0, 1),
                   title="How much of CLS's attention the sinks take")
            ax.legend(frameon=False, loc="upper left")
            for key, label, color in (("sinks", f"sinks (≥ {options.ratio:g}× median)", "C3"),
                                      ("high_norm", f"high-norm (≥ {options.norm_ratio:g}×)",
                                       "C0")):
                ax2.plot(x, per[key].mean(axis=0), "o-", color=color, label=label, ms=3)
            ax2.set(xlabel="block", ylabel="tokens per image", title="How many per image")
            ax2.legend(frameon=False, loc="upper left")
            for a in (ax, ax2):
                a.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            return F.save_static(fig, out_dir / "attention_sinks_share", options)


def _headline(summary: dict) -> str:
    share, base = summary["cls_attention_on_sinks"], summary["median_tokens_baseline"]
    if not summary["blocks_with_sinks"]:
        return "no sinks found"
    if not np.isfinite(share[0]):
        return f"sinks in blocks {_span(summary['blocks_with_sinks'])}"
    return (f"sinks in blocks {_span(summary['blocks_with_sinks'])}; in block "
            f"{summary['strongest_block']} they take {share[0]:.0%} of CLS attention "
            f"[{share[1]:.0%}–{share[2]:.0%}] vs {base[0]:.1%} for as many median tokens")


def _span(blocks: list[int]) -> str:
    return ", ".join(map(str, blocks)) if len(blocks) <= 6 else \
        f"{', '.join(map(str, blocks[:5]))}, … ({len(blocks)} blocks)"
