"""`cls-heatmap`: attention from CLS to the patches and from the patches to CLS, per layer.

For every image of the dump and every layer and head: the CLS row restricted to patches
(where CLS reads from) and the CLS column restricted to patches (how much each patch reads
from CLS). Figures show head-means and per-head maps over images, class-averaged maps over the
whole dump, and, where the dump has ground-truth masks, how much CLS attention falls on the
object compared with the object's area.

A model without a CLS token that pools with an attention head (SigLIP) gets the pooling head's
query attention over the patches instead (`pool.weights`): it is what the CLS row is on a
model with one, the final read-out's view of the tokens, per head and head mean, once (the
query attends after the last block, not in every layer). "Patches → CLS" has no counterpart
there (no patch reads from the head's query) and is left out; every title says what was used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.methods.sinks import mean_interval
from vitscope.plugin import (POOL_POINT, POOL_READOUT, ClassMeans, NanMean, Option, cls_index,
                             layer_spec, mask_area, mass_in_mask, n_images, other_prefix,
                             patch_coverage, prefix_note, readout_query, rows_for, select_layers,
                             to_grid)
from vitscope.render import figures as F
from vitscope.render import interactive as I
from vitscope.render import mosaic as M

DIRECTIONS = ("CLS → patches", "patches → CLS")


def read_cls_maps(dump, names, start: int, stop: int, layout,
                  cls: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """CLS→patches and patches→CLS of images start..stop, every layer in `names`:
    (N×L×H×P, N×L×H×P) float32, and N×L×H of the CLS row's mass on the other prefix tokens
    (distillation, registers; None when there are none). `names` are attention hook points;
    only their CLS slices are read (`<name>.cls_row`, `.cls_col`: stored as such, or selected
    by HDF5 from a stored full attention), 2/T of the attention."""
    prefix, others = layout.num_prefix_tokens, other_prefix(layout)
    rows = np.stack([np.asarray(dump[f"{nm}.cls_row"][start:stop], np.float32) for nm in names],
                    axis=1)                                               # N×L×H×T
    cols = [np.asarray(dump[f"{nm}.cls_col"][start:stop, :, prefix:], np.float32)
            for nm in names]
    share = rows[..., others].sum(-1) if others else None
    # a copy, not a view: the first images' maps are kept for the figures, the chunk is not
    return np.ascontiguousarray(rows[..., prefix:]), np.stack(cols, axis=1), share


class ClsHeatmap:
    """CLS→patch and patch→CLS attention per layer: head-mean, per head, class averages."""

    name = "cls-heatmap"
    # Only the CLS row and column of each attention: a dump of just these is 2/T of the full
    # weights (1% at 197 tokens), and a dump of the full weights serves them too. A model
    # without a CLS token has no such slices: its pooling head's query is read instead
    # (module docstring); `check` refuses a model with neither.
    requires = ("optional:blocks.*.attn.weights.cls_row", "optional:blocks.*.attn.weights.cls_col",
                f"optional:{POOL_POINT}")
    options = (
        Option("layers", layer_spec, "all", "blocks to show: all, first,middle,last, 0,5,-1, 2-5",
               metavar="LAYERS"),
        Option("show", int, 6, "images in the head-mean figures", min=1, max=32),
        Option("per_head", int, 2, "images that get a per-head figure", min=0, max=16),
        M.scale_option(),
    )

    def check(self, options, shape) -> None:
        if readout_query(shape.layout, shape.hooks, self.name) is not None:
            select_layers(options.layers, shape.depth, "cls-heatmap.layers")

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        if readout_query(dump.layout, dump.names, self.name) is None:
            return _render_pooling_head(dump, Path(out_dir), options, self.name)
        names = [n.rpartition(".")[0] for n in dump.match("blocks.*.attn.weights.cls_row")]
        layers = select_layers(options.layers, len(names), "cls-heatmap.layers")
        layout = dump.layout
        n = n_images(dump, options.limit)
        k = min(options.show, n)
        labels = dump.labels[:n]
        # by label, else by prediction, else (a feature model, no labels) one group of all
        by_class, grouped_by, group_names = F.grouping(dump, n)
        C = max(len(group_names), 1)
        out_dir = Path(out_dir)
        with F.Results(out_dir) as results:
            (c2p, p2c), means, masks, share = self._compute(
                dump, [names[l] for l in layers], n, k, layout, by_class, C, results,
                cls_index(layout, self.name))
            (cls_c2p, counts), (cls_p2c, _), (mean_images, _) = (m.result() for m in means)
            for key, value in dict(class_cls_to_patches=cls_c2p, class_patches_to_cls=cls_p2c,
                                   class_counts=counts, layers=np.array(layers), labels=labels,
                                   preds=dump.preds[:n]).items():
                results[key] = value
            summary = {"images": n, "layers": len(layers), "token_layout": layout.describe(),
                       "class_average_by": grouped_by}
            if share is not None:
                summary["cls_attention_to_other_prefix"] = round(share, 4)
            if masks is not None:
                masks = {key: m.result() for key, m in masks.items()}
                m = masks["head_mean_map"]
                best = int(np.nanargmax(m))
                summary.update(mask_area=round(float(masks["area"]), 4),
                               last_layer_cls_mass_in_mask=round(float(m[-1]), 4),
                               best_layer=layers[best],
                               best_layer_cls_mass_in_mask=round(float(m[best]), 4))
            files = results.save(summary)
        note = prefix_note(layout, share, "the maps (CLS → patches)")
        note = f"\n{note}" if note else ""
        c2p_mean, p2c_mean = c2p.mean(axis=2), p2c.mean(axis=2)          # k×L×h×w
        images = np.asarray(dump.images[:k])
        captions = F.captions(dump, k)
        # A class "average" of one image is that image again: only classes with two or more
        present = np.flatnonzero(counts >= 2)
        cnames = [group_names[c] for c in present]
        row_names = [f"{nm} ({int(counts[c])})" for nm, c in zip(cnames, present)]
        mean_u8 = mean_images[present].round().astype(np.uint8)
        alone = int((counts == 1).sum())
        single = f"\n{alone} class{'es' if alone > 1 else ''} with one image left out" \
            if alone else ""
        if options.static:
            for key, maps in (("cls_to_patches", c2p_mean), ("patches_to_cls", p2c_mean)):
                title = DIRECTIONS[key == "patches_to_cls"]
                files.append(self._strip(images, maps[:k], layers, captions,
                                         f"Attention {title} (head mean){note}", out_dir / key,
                                         options))
            for i in range(min(options.per_head, k)):
                files.append(self._heads(images[i], c2p[i], p2c[i], layers, captions[i], i,
                                         out_dir / f"heads_img{i}", options, note))
            averaged = (("cls_to_patches", cls_c2p), ("patches_to_cls", cls_p2c))
            for key, maps in averaged if len(present) else ():
                title = DIRECTIONS[key == "patches_to_cls"]
                files.append(self._strip(mean_u8, maps[present], layers, row_names,
                                         f"Class-averaged attention {title} (head mean, by "
                                         f"{summary['class_average_by']}){single}{note}",
                                         out_dir / f"class_average_{key}", options, overlay=False))
            if masks is not None:
                files.append(self._mask_plot(masks, layers, out_dir, options))
        if options.interactive:
            m = min(k, 4)
            both = np.stack([c2p_mean[:m], p2c_mean[:m]], axis=2)          # m×L×2×h×w
            fig = I.map_slider(images[:m], both.transpose(1, 0, 2, 3, 4),
                               step_labels=[str(l) for l in layers], slider_label="layer",
                               col_titles=DIRECTIONS,
                               row_titles=[c.replace("\n", " ") for c in captions[:m]],
                               value_label="attention",
                               title="CLS attention, head mean (slider: layer)" +
                                     note.replace("\n", " · "))
            files.append(I.save_html(fig, out_dir / "cls_heatmap.html", options))
        if options.interactive and len(present):
            both = np.stack([cls_c2p[present], cls_p2c[present]], axis=2)
            fig = I.map_slider(mean_u8, both.transpose(1, 0, 2, 3, 4),
                               step_labels=[str(l) for l in layers], slider_label="layer",
                               col_titles=DIRECTIONS, row_titles=row_names,
                               value_label="attention",
                               title="Class-averaged CLS attention over the mean image of each class")
            files.append(I.save_html(fig, out_dir / "class_average.html", options))
        return files

    @staticmethod
    def _compute(dump, names, n, k, layout, by_class, C, results, cls):
        """One pass over the images in chunks: only the CLS row and column of each layer are
        read. Per-image maps go to `results` as they come; kept in memory are the first k
        images' maps (for the figures), class sums and mask-number sums: nothing grows with n.
        Returns ((c2p, p2c) k×L×H×h×w, class-mean accumulators, mask accumulators or None,
        the CLS row's mean mass on the other prefix tokens or None)."""
        grid = layout.grid
        L, H = len(names), dump[f"{names[0]}.cls_row"].shape[1]
        # class-mean images are shown as small tiles: averaged at thumbnail size (subsampling
        # then averaging is averaging then subsampling), HDF5 subsamples while reading
        sub = I.thumbnail_step(dump.images.shape)
        sums = [ClassMeans(C, (L, *grid)), ClassMeans(C, (L, *grid)),
                ClassMeans(C, dump.images[:1, ::sub, ::sub].shape[1:])]
        masks = None if dump.masks is None else {
            key: NanMean() for key in ("area", "per_head", "c2p", "p2c", "head_mean_map")}
        step = rows_for(2 * L * H * layout.num_patches * 4)    # 2 float32 L×H×P maps per image
        shown, share = ([], []), (NanMean() if other_prefix(layout) else None)
        for start in range(0, n, step):
            stop = min(n, start + step)
            c2p, p2c, held = read_cls_maps(dump, names, start, stop, layout, cls)
            c2p, p2c = to_grid(c2p, grid), to_grid(p2c, grid)
            if held is not None:   # the CLS row's mass on distillation/register tokens, not drawn
                results.append("cls_attention_to_other_prefix", held)   # N×L×H
                share.add(held.reshape(len(held), -1).mean(axis=1))
            results.append("cls_to_patches", c2p.astype(np.float16))   # N×L×H×h×w
            results.append("patches_to_cls", p2c.astype(np.float16))
            if start < k:
                shown[0].append(c2p[:k - start])
                shown[1].append(p2c[:k - start])
            c2p_mean, p2c_mean = c2p.mean(axis=2), p2c.mean(axis=2)        # N×L×h×w
            labels = by_class[start:stop]
            sums[0].add(c2p_mean, labels)
            sums[1].add(p2c_mean, labels)
            sums[2].add(dump.images[start:stop, ::sub, ::sub], labels)
            if masks is not None:
                cov = patch_coverage(np.asarray(dump.masks[start:stop]), grid)
                in_c2p, in_p2c = mass_in_mask(c2p, cov), mass_in_mask(p2c, cov)   # N×L×H
                results.append("mass_in_mask_cls_to_patches", in_c2p)
                results.append("mass_in_mask_patches_to_cls", in_p2c)
                results.append("mask_area", mask_area(cov))
                masks["area"].add(mask_area(cov))
                masks["per_head"].add(in_c2p)
                masks["c2p"].add(in_c2p.mean(axis=2))
                masks["p2c"].add(in_p2c.mean(axis=2))
                masks["head_mean_map"].add(mass_in_mask(c2p_mean, cov))
        empty = np.zeros((0, L, H, *grid), np.float32)
        return (tuple(np.concatenate(x) if x else empty for x in shown), sums, masks,
                None if share is None else float(share.result()))


    @staticmethod
    def _strip(images, maps, layers, row_labels, title, stem, options, overlay=True) -> Path:
        """Rows = images (or classes), columns = the image and one map per layer."""
        first = M.image_tiles(images)
        if overlay:
            rest, peaks, top = M.scaled_overlay_tiles(images[:, None], maps, options.scale)
        else:
            scaled, peaks, top = M.scale_maps(maps, options.scale)
            rest = M.heat_tiles(maps if top is None else scaled, tuple(first.shape[1:3]),
                                normalize=top is None)
        tiles = np.concatenate([first[:, None], rest], axis=1)
        with F.style():
            fig = M.Mosaic(tiles, col_breaks=[0], row_gap=max(8, tiles.shape[2] // 8)).figure(
                title=title,
                col_labels=["image" if overlay else "mean image"] + [f"layer {l}" for l in layers],
                row_labels=[r.replace("\n", " ") for r in row_labels],
                **M.scale_legend(peaks, top, "attention", col_offset=1))
            return F.save_static(fig, stem, options)

    @staticmethod
    def _heads(image, c2p, p2c, layers, caption, i, stem, options, note="") -> Path:
        """Rows = layers; columns = heads for CLS→patches, then heads for patches→CLS."""
        H = c2p.shape[1]
        tiles, peaks, top = M.scaled_overlay_tiles(image, np.concatenate([c2p, p2c], axis=1),
                                                   options.scale)           # L×2H×S×S×3
        cols = [f"CLS→p · h{h}" for h in range(H)] + [f"p→CLS · h{h}" for h in range(H)]
        with F.style():
            fig = M.Mosaic(tiles, col_breaks=[H - 1],
                           row_gap=0 if top is not None else max(8, tiles.shape[2] // 8)).figure(
                title=f"Per-head CLS attention · image {i}: {caption.replace(chr(10), ' ')}\n"
                      f"left: CLS → patches · right: patches → CLS{note}",
                col_labels=cols, row_labels=[f"layer {l}" for l in layers],
                **M.scale_legend(peaks, top, "attention"))
            return F.save_static(fig, stem, options)

    @staticmethod
    def _mask_plot(masks, layers, out_dir, options) -> Path:
        """Means over images of the fraction of each map inside the mask (masks: means)."""
        area = masks["area"]
        x = np.array(layers)
        with F.style() as plt:
            fig, ax = plt.subplots(figsize=(6.2, 3.4))
            per_head = masks["per_head"]                 # L×H
            for h in range(per_head.shape[1]):
                ax.plot(x, per_head[:, h], color="C0", alpha=0.35, lw=0.9,
                        label="CLS → patches, each head" if h == 0 else None)
            ax.plot(x, masks["c2p"], "o-", color="C0", ms=3,
                    label="CLS → patches, mean of heads")
            ax.plot(x, masks["p2c"], "s-", color="C2", ms=3,
                    label="patches → CLS, mean of heads")
            ax.axhline(area, color="gray", ls="--", lw=1, label="mask area (uniform map)")
            ax.set(xlabel="layer", ylabel="fraction of attention inside mask", ylim=(0, 1),
                   title="How much CLS attention lands on the object")
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.legend(frameon=False, fontsize=7, loc="upper left")
            return F.save_static(fig, out_dir / "mask_mass", options)


# ------------------------------------------------------------------ a model with a pooling head

POOL_TITLE = f"Pooling head's query → patches\n{POOL_READOUT} (this model has no CLS token)"


def _render_pooling_head(dump, out_dir: Path, options, name: str) -> list[Path]:
    """The pooling head's query attention over the patches (module docstring): per head and
    head mean for each image, class means, the mask numbers; `layers` does not apply (the
    query attends once, after the last block)."""
    layout, grid = dump.layout, dump.layout.grid
    n = n_images(dump, options.limit)
    k = min(options.show, n)
    by_class, grouped_by, group_names = F.grouping(dump, n)
    H = dump[POOL_POINT].shape[1]
    sums = [ClassMeans(max(len(group_names), 1), grid)]
    peak, in_mask, area, shown = [], [], [], []
    with F.Results(out_dir) as results:
        step = rows_for(H * layout.num_patches * 4)
        for start in range(0, n, step):
            stop = min(n, start + step)
            heads = to_grid(np.asarray(dump[POOL_POINT][start:stop], np.float32)[:, :, 0], grid)
            mean = heads.mean(axis=1)                                       # N×h×w
            results.append("pool_to_patches", heads)                         # N×H×h×w
            results.append("pool_to_patches_head_mean", mean)
            sums[0].add(mean, by_class[start:stop])
            peak.append(mean.reshape(len(mean), -1).max(axis=1))
            if start < k:
                shown.append(heads[:k - start])
            if dump.masks is not None:
                cov = patch_coverage(np.asarray(dump.masks[start:stop]), grid)
                in_mask.append(mass_in_mask(mean, cov))
                area.append(mask_area(cov))
        class_means, counts = sums[0].result()
        for key, value in dict(class_pool_to_patches=class_means, class_counts=counts,
                               labels=dump.labels[:n], preds=dump.preds[:n]).items():
            results[key] = value
        top, lo, hi = mean_interval(np.concatenate(peak)) if peak else (np.nan,) * 3
        # the baseline a peak must beat: a query attending evenly gives each patch 1/P
        summary = {"images": n, "readout": POOL_READOUT, "heads": H,
                   "token_layout": layout.describe(), "class_average_by": grouped_by,
                   "peak_patch_share": round(top, 4),
                   "peak_patch_share_95ci": [round(lo, 4), round(hi, 4)],
                   "uniform_patch_share": round(1 / layout.num_patches, 4)}
        if in_mask:
            mass, mlo, mhi = mean_interval(np.concatenate(in_mask))
            summary.update(mask_area=round(float(np.concatenate(area).mean()), 4),
                           pool_mass_in_mask=round(mass, 4),
                           pool_mass_in_mask_95ci=[round(mlo, 4), round(mhi, 4)])
        files = results.save(summary)
    heads = np.concatenate(shown) if shown else np.zeros((0, H, *grid), np.float32)
    images = np.asarray(dump.images[:k])
    captions = [c.replace("\n", " ") for c in F.captions(dump, k)]
    # columns: the head mean, then each head; rows: images
    panels = np.concatenate([heads.mean(axis=1, keepdims=True), heads], axis=1)   # k×(1+H)×h×w
    cols = ["head mean"] + [f"head {h}" for h in range(H)]
    if options.static and k:
        tiles, peaks, scale_top = M.scaled_overlay_tiles(images[:, None], panels, options.scale)
        tiles = np.concatenate([M.image_tiles(images)[:, None], tiles], axis=1)
        with F.style():
            fig = M.Mosaic(tiles, col_breaks=[0], row_gap=max(8, tiles.shape[2] // 8)).figure(
                title=POOL_TITLE, col_labels=["image"] + cols, row_labels=captions,
                **M.scale_legend(peaks, scale_top, "attention", col_offset=1))
            files.append(F.save_static(fig, out_dir / "pool_to_patches", options))
    if options.interactive and k:
        m = min(k, 4)
        fig = I.map_slider(images[:m], panels[:m].transpose(1, 0, 2, 3)[:, :, None],
                           step_labels=cols, slider_label="head", col_titles=["pooling head"],
                           row_titles=captions[:m], value_label="attention",
                           title=POOL_TITLE.replace("\n", " · ") + " (slider: head)")
        files.append(I.save_html(fig, out_dir / "cls_heatmap.html", options))
    return files
