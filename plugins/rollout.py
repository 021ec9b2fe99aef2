"""`rollout`: attention rollout (Abnar & Zuidema 2020), batched over every image of the dump.

Per layer l (from start_layer to end_layer): fuse the heads (mean, max or min) into A_l;
optionally drop, per image, the `discard_ratio` lowest entries of A_l except those of the CLS
column; add the identity for the residual path and renormalise the rows:
Â_l = (A_l + I) / rowsum. The rollout is R = Â_end · … · Â_start (later layers multiply on the
left) and the CLS row of R without the prefix tokens, R[cls, prefix:], is the map over patches.

Distillation and register tokens (dump.layout) stay in every product, as tokens information
flows through, and only their column is left out of the final map; the share of the CLS
row they hold is reported (summary.json, figure titles), so a map that lost most of its
mass to registers says so.

A model without a CLS token that pools with an attention head (SigLIP) is read out at that
head instead: its one query's head-fused attention over the final tokens, q, times the
rollout, q · R, is the map. That is the natural analogue of the CLS row: the CLS row of R is
what the class head reads, and q is what the pooling head reads. The titles and summary say
so ("pooling-head query attention, not a CLS row"); per-layer raw CLS attention has no
analogue there (the query attends only after the last block) and is left out.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.methods import FUSIONS, LazyArrays, fuse_heads, pooled_query
from vitscope.methods import sinks as S
from vitscope.methods import get as map_method
from vitscope.plugin import (POOL_POINT, POOL_READOUT, NanMean, Option, append_maps,
                             block_index, mask_area, mask_summary_from, mass_in_mask, n_images,
                             other_prefix, patch_coverage, pointing, prefix_note,
                             readout_query, rows_for, to_grid)
from vitscope.render import figures as F
from vitscope.render import interactive as I
from vitscope.render import mosaic as M


class Rollout:
    """Attention rollout: where the CLS token's information comes from, across all layers."""

    name = "rollout"
    # the pooling head's query where the model has one (SigLIP: no CLS token; module docstring)
    requires = ("blocks.*.attn.weights", f"optional:{POOL_POINT}")
    produces = ("maps",)    # `maps` in results.npz: what `vitscope score` evaluates
    options = (
        Option("fusion", str, "mean", "how heads are fused per layer", choices=FUSIONS),
        Option("discard_ratio", float, 0.0, "fraction of the lowest attentions dropped per "
               "layer and image (never the CLS column); 0.9 gives sharper maps", min=0.0,
               max=0.99),
        Option("start_layer", int, 0, "first block in the rollout (negative counts from the end)"),
        Option("end_layer", int, None, "last block in the rollout (default: the last block)"),
        Option("show", int, 8, "images drawn in the per-image figures", min=1, max=64),
        M.scale_option(),
    )

    @staticmethod
    def _span(options, depth: int) -> tuple[int, int]:
        start = block_index(options.start_layer, depth, 0, "rollout.start_layer")
        end = block_index(options.end_layer, depth, depth - 1, "rollout.end_layer")
        if end < start:
            from vitscope.errors import PluginError
            raise PluginError(f"rollout.end_layer ({end}) is before rollout.start_layer ({start}); "
                              f"choose end_layer >= start_layer.")
        return start, end

    def check(self, options, shape) -> None:
        readout_query(shape.layout, shape.hooks, self.name)
        self._span(options, shape.depth)

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        names = dump.match("blocks.*.attn.weights")
        start, end = self._span(options, len(names))
        layout = dump.layout
        n = n_images(dump, options.limit)
        k = min(options.show, n)
        layers = list(range(start, end + 1))
        out_dir = Path(out_dir)
        cls = readout_query(layout, dump.names, self.name)   # None: the pooling head's query
        with F.Results(out_dir) as results:
            tops: dict[str, list] = {}
            maps, evo, numbers, share = self._compute(dump, names[start:end + 1], n, k, options,
                                                      layout, results, cls, len(names), tops)
            sink = _sink_warning(tops, names[start:end + 1], layers, results)
            for key, value in dict(layers=np.array(layers), labels=dump.labels[:n],
                                   preds=dump.preds[:n], fusion=options.fusion,
                                   discard_ratio=options.discard_ratio, **numbers).items():
                results[key] = value
            summary = {"images": n, "fusion": options.fusion,
                       "discard_ratio": options.discard_ratio, "layers": f"{start}–{end}",
                       "token_layout": layout.describe(),
                       "readout": "CLS row" if cls is not None else POOL_READOUT}
            if share is not None:
                summary["rollout_to_other_prefix"] = round(share, 4)
            if numbers:
                summary.update(_mask_numbers(numbers))
            summary.update(sink["summary"])
            files = results.save(summary)
        pooled = None if cls is not None else f"read out by the {POOL_READOUT}"
        note = "\n".join(x for x in (pooled, prefix_note(layout, share, "the maps"),
                                     sink["title"]) if x)
        settings = f"{options.fusion} fusion, discard {options.discard_ratio:g}, " \
                   f"blocks {start}–{end}"
        images = np.asarray(dump.images[:k])
        captions = F.captions(dump, k)
        if options.static:
            files.append(self._per_image(images, maps[:k], captions, options, out_dir, note,
                                         settings))
            rows = min(k, 4)   # the evolution figure shows at most 4 of the `show` images
            files.append(self._evolution(images[:rows], evo[:rows], layers, captions, options,
                                         out_dir, note, settings))
            if numbers:
                files.append(self._mask_plot(numbers, layers, options, out_dir))
        if options.interactive:
            m = min(k, 6)
            fig = I.map_slider(images[None, :m], evo[:m].transpose(1, 0, 2, 3)[:, None],
                               step_labels=[str(l) for l in layers], slider_label="rollout up to layer",
                               col_titles=captions[:m], row_titles=[""],
                               value_label="rollout",
                               title=f"Attention rollout ({settings}) up to each layer" +
                                     (f" · {note}".replace("\n", " · ") if note else ""))
            files.append(I.save_html(fig, out_dir / "rollout.html", options))
        return files

    # ------------------------------------------------------------------------------ compute

    @staticmethod
    def _compute(dump, names, n, k, options, layout, results, cls, depth, tops=None):
        """Batched over images in chunks (about maps.READ_BYTES of float32 attention per layer),
        one batched matmul per layer and chunk. The per-image maps go to `results` chunk by chunk;
        kept are the first k images' maps (figures) and a few numbers per image (mask).
        Returns (rollout k×h×w, evolution k×L×h×w, per-image mask numbers or {}, the mean
        rollout mass of the CLS row on the other prefix tokens or None)."""
        prefix, grid = layout.num_prefix_tokens, layout.grid
        others = other_prefix(layout)
        share = NanMean() if others else None
        H, T = dump[names[0]].shape[1], layout.num_tokens
        chunk = rows_for(H * T * T * 4 + len(names) * T * T * 8)   # a layer read, every factor kept
        shown: tuple[list, list] = ([], [])
        numbers: dict[str, list] = {}
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            raw: list[np.ndarray] = []
            reads = names if cls is not None else [*names, POOL_POINT]
            layers = LazyArrays(reads, lambda name, s=s, e=e: dump[name][s:e]
                                if name == POOL_POINT else _read_layer(
                                    dump, name, s, e, options.fusion, prefix, raw, cls, tops))
            out = map_method("rollout").compute(layers, layout, options, depth)
            maps, evo, row = out.maps, out.steps, out.extra["cls_row"]    # N×h×w, N×L×h×w, N×T
            if share is not None:   # N: the CLS row's rollout mass not drawn on the grid
                held = row[:, others].sum(-1)
                results.append("rollout_to_other_prefix", held.astype(np.float32))
                share.add(held)
            row = None
            # fused CLS attention per layer; the pooling head's query attends after the last
            # block only, so there it is stored once, with no per-layer counterpart
            raw = to_grid(np.stack(raw, axis=1), grid) if raw else None
            results.append("rollout", maps.astype(np.float32))
            append_maps(results, dump, maps, s)      # the map contract, chunk by chunk
            results.append("evolution", evo.astype(np.float32))
            if raw is not None:
                results.append("raw_cls_attention", raw.astype(np.float32))
            else:
                results.append("pool_query_attention", to_grid(pooled_query(
                    dump[POOL_POINT][s:e], options.fusion), grid).astype(np.float32))
            if s < k:
                shown[0].append(maps[:k - s])
                shown[1].append(evo[:k - s])
            if dump.masks is not None:
                cov = patch_coverage(np.asarray(dump.masks[s:e]), grid)
                results.append("coverage", cov)
                for key, value in (("mass_in_mask", mass_in_mask(evo, cov)),
                                   ("raw_mass_in_mask", None if raw is None else
                                    mass_in_mask(raw, cov)),
                                   ("mask_area", mask_area(cov)),
                                   ("pointing", pointing(maps, cov))):
                    if value is not None:
                        numbers.setdefault(key, []).append(value)
        maps, evo = (np.concatenate(x) if x else np.zeros((0, *grid)) for x in shown)
        return (maps, evo, {key: np.concatenate(v) for key, v in numbers.items()},
                None if share is None else float(share.result()))

    # ------------------------------------------------------------------------------ figures

    @staticmethod
    def _per_image(images, maps, captions, options, out_dir, note="", settings="") -> Path:
        """original | rollout | overlay for each image, in two side-by-side groups when many."""
        return M.map_triptych(images, maps, captions, map_label="rollout", stem=out_dir / "rollout",
                              options=options, title=f"Attention rollout ({settings})"
                                                     + (f"\n{note}" if note else ""))

    @staticmethod
    def _evolution(images, evo, layers, captions, options, out_dir, note="", settings="") -> Path:
        """Rows = images; columns = the image, then the rollout up to each layer."""
        overlays, peaks, top = M.scaled_overlay_tiles(images[:, None], evo, options.scale)
        tiles = np.concatenate([M.image_tiles(images)[:, None], overlays], axis=1)
        with F.style():
            fig = M.Mosaic(tiles, row_gap=max(8, tiles.shape[2] // 8)).figure(
                title=f"Rollout up to each layer ({settings})" +
                      (f"\n{note}" if note else ""),
                col_labels=["image"] + [f"≤ {l}" for l in layers],
                row_labels=[c.replace("\n", " ") for c in captions[:len(images)]],
                **M.scale_legend(peaks, top, "rollout", col_offset=1))
            return F.save_static(fig, out_dir / "rollout_evolution", options)

    @staticmethod
    def _mask_plot(results, layers, options, out_dir) -> Path:
        area = results["mask_area"]
        roll = results["mass_in_mask"]          # N×L
        raw = results.get("raw_mass_in_mask")   # N×L (None for a pooling head)
        with F.style() as plt:
            fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.3), gridspec_kw={"wspace": 0.3})
            x = np.array(layers)
            for vals, label, color in ((roll, "rollout up to layer", "C0"),
                                       (raw, "CLS attention of the layer", "C1")):
                if vals is None:    # a pooling head: no CLS attention per layer
                    continue
                mean = np.nanmean(vals, axis=0)
                q1, q3 = np.nanpercentile(vals, [25, 75], axis=0)
                ax.plot(x, mean, "o-", color=color, label=label, ms=3)
                ax.fill_between(x, q1, q3, color=color, alpha=0.15, lw=0)
            ax.axhline(area.mean(), color="gray", ls="--", lw=1, label="mask area (uniform map)")
            ax.set(xlabel="layer", ylabel="fraction of map mass inside mask", ylim=(0, 1),
                   title="Does the map land on the object?")
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.legend(frameon=False, loc="upper left")
            ratio = roll[:, -1] / np.maximum(area, 1e-9)
            ax2.hist(ratio[np.isfinite(ratio)], bins=30, color="C0", alpha=0.8)
            ax2.axvline(1.0, color="gray", ls="--", lw=1)
            ax2.xaxis.set_major_locator(plt.MaxNLocator(4))   # ratios all near 1: long ticks
            ax2.set(xlabel="mass in mask ÷ mask area (final rollout)", ylabel="images",
                    title=f"per image (median {np.nanmedian(ratio):.2f}×)")
            return F.save_static(fig, out_dir / "rollout_mask", options)


def _read_layer(dump, name, start, stop, fusion, prefix, raw_cls: list, cls: int | None = 0,
                tops: dict | None = None):
    """One layer's attention for images start..stop as stored (fp16: half the memory of
    float32; fuse_heads reduces it as it is), read when the rollout reaches it so one layer is
    in memory at a time; its fused CLS row (token `cls`; None: a model without one) goes to
    raw_cls for the raw-attention comparison, and the share of its mass its top token
    receives to `tops`."""
    attn = dump[name][start:stop]
    if cls is not None:
        raw_cls.append(fuse_heads(attn[:, :, cls:cls + 1, :], fusion)[:, 0, prefix:])
    if tops is not None:
        tops.setdefault(name, []).append(S.top_token_share(attn)[0])
    return attn


def _sink_warning(tops: dict, names: list[str], layers: list[int], results) -> dict:
    """Blocks where one token takes most of the attention mass (an attention sink, which
    rollout multiplies in and which then becomes the map), for the summary and the titles,
    with the start_layer that leaves them out."""
    if not tops or any(name not in tops for name in names):
        return {"summary": {}, "title": ""}
    shares = np.stack([np.concatenate(tops[name]) for name in names], axis=1)    # N×L
    results["top_token_share"] = shares.astype(np.float32)
    mean = shares.mean(axis=0)
    dominated = S.dominated_layers(shares)
    summary = {"top_token_share_by_block": {str(l): round(float(m), 4)
                                            for l, m in zip(layers, mean)}}
    if not dominated:
        return {"summary": summary, "title": ""}
    blocks = [layers[i] for i in dominated]
    worst = max(dominated, key=lambda i: mean[i])
    start = S.start_layer_avoiding(layers, dominated)
    fix = (f"--opt rollout.start_layer={start} leaves {'it' if len(blocks) == 1 else 'them'} out"
           if start is not None else "no start_layer leaves them out (the last block has one)")
    text = (f"attention sink: in block{'s' if len(blocks) > 1 else ''} "
            f"{', '.join(map(str, blocks))} one token takes most of the attention "
            f"(up to {mean[worst]:.0%}); {fix} (attention-sinks plugin)")
    summary.update(attention_sink_blocks=blocks, suggested_start_layer=start,
                   warning=text)
    return {"summary": summary, "title": "⚠ " + text}


def _mask_numbers(numbers: dict) -> dict:
    """The summary's mask figures from the per-image numbers (the final rollout is the last
    layer of the evolution)."""
    out = mask_summary_from(numbers["mass_in_mask"][:, -1], numbers["mask_area"], numbers["pointing"])
    if "raw_mass_in_mask" in numbers:    # a model with a CLS token
        out["last_layer_cls_attention_mass_in_mask"] = float(
            np.nanmean(numbers["raw_mass_in_mask"][:, -1]))
    return {k: round(v, 4) for k, v in out.items()}
