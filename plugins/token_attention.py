"""`token-attention`: where one query token looks, in every layer and head, over the image.

The query is the CLS token, a patch (row-major index on the patch grid), or per image the
most-attended patch (the patch that receives the most attention, averaged over the chosen
layers, heads and all queries). Maps are rows of the attention matrix restricted to patches.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vitscope.errors import PluginError
from vitscope.methods import query_row
from vitscope.plugin import (Option, cls_index, layer_spec, n_images, other_prefix, prefix_note,
                             select_layers, to_grid)
from vitscope.render import figures as F
from vitscope.render import interactive as I
from vitscope.render import mosaic as M


def query_spec(text: str) -> str:
    """'cls', 'top', or a patch index ('12'), as the --opt text; checked against the grid later."""
    t = str(text).strip().lower()
    if t in ("cls", "top") or re.fullmatch(r"\d+", t):
        return t
    raise ValueError("expected cls, top (the most-attended patch) or a patch index such as 27")


def query_rows(attn_sum: np.ndarray | None, query: str, k: int, num_patches: int,
               prefix: int, cls: int | None = 0) -> np.ndarray:
    """The token index (into T) of the query for each of k images (`cls`: where the CLS
    token sits, from the dump's token layout)."""
    if query == "cls":
        return np.full(k, cls, dtype=np.int64)
    if query == "top":
        return prefix + attn_sum.argmax(axis=-1)   # attn_sum: k×P attention received
    index = int(query)
    if index >= num_patches:
        raise PluginError(f"token-attention.query={index} is not a patch: the grid has "
                          f"{num_patches} patches (0–{num_patches - 1}, row-major).")
    return np.full(k, prefix + index, dtype=np.int64)


def received_attention(dump, names, k: int, prefix: int) -> np.ndarray:
    """k×P: the attention each patch receives in the first k images, averaged over the layers
    `names`, their heads and every query; one layer in memory at a time, in its stored type."""
    total = None
    for nm in names:
        part = dump[nm][:k, :, :, prefix:].mean(axis=(1, 2), dtype=np.float32)
        total = part if total is None else total + part
    return total / len(names)


GIF_TILE_PX = 176   # the GIF's tiles: as large as the triptychs' (a few images side by side)


class TokenAttention:
    """Attention of a query token (CLS, a patch, or the most-attended patch) per layer and head."""

    name = "token-attention"
    requires = ("blocks.*.attn.weights",)
    options = (
        Option("query", query_spec, "cls", "query token: cls, top (most-attended patch) or a "
               "patch index (row-major)", metavar="cls|top|INDEX"),
        Option("layers", layer_spec, "all", "blocks to show: all, first,middle,last, 0,5,-1, 2-5",
               metavar="LAYERS"),
        Option("show", int, 3, "images drawn (one layers×heads grid each)", min=1, max=32),
        Option("gif", bool, True, "also write an animated GIF over layers and heads"),
        M.scale_option(),
    )

    CLS_ROWS = "blocks.*.attn.weights.cls_row"

    def requires_for(self, options) -> tuple[str, ...]:
        """query=cls (the default) reads only the CLS row of each attention: 1/T of it."""
        return (self.CLS_ROWS,) if options.query == "cls" else self.requires

    def check(self, options, shape) -> None:
        if options.query == "cls":
            cls_index(shape.layout, self.name)
        select_layers(options.layers, shape.depth, "token-attention.layers")
        if options.query not in ("cls", "top"):
            query_rows(None, options.query, 1, shape.layout.num_patches,
                       shape.layout.num_prefix_tokens)

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        layout = dump.layout
        prefix, P = layout.num_prefix_tokens, layout.num_patches
        k = min(options.show, n_images(dump, options.limit))
        if options.query == "cls":   # the CLS rows alone (stored, or read from the weights)
            cls = cls_index(layout, self.name)
            names = dump.match(self.CLS_ROWS)
            layers = select_layers(options.layers, len(names), "token-attention.layers")
            q = np.full(k, cls, dtype=np.int64)
            rows = np.stack([np.asarray(dump[names[l]][:k], np.float32) for l in layers],
                            axis=1)                                          # k×L×H×T
        else:
            names = dump.match("blocks.*.attn.weights")
            layers = select_layers(options.layers, len(names), "token-attention.layers")
            chosen = [names[l] for l in layers]
            received = received_attention(dump, chosen, k, prefix) \
                if options.query == "top" else None
            q = query_rows(received, options.query, k, P, prefix, layout.cls_index)
            rows = np.stack([query_row(dump[nm][:k], q) for nm in chosen], axis=1)  # k×L×H×T
        maps = to_grid(rows[..., prefix:], layout.grid)             # k×L×H×h×w
        # Distillation/register tokens are not on the grid: say how much of the row they take.
        others = other_prefix(layout)
        share = float(rows[..., others].sum(-1).mean()) if others else None
        note = prefix_note(layout, share)
        mean = maps.mean(axis=2, keepdims=True)
        with_mean = np.concatenate([maps, mean], axis=2)            # heads + head-mean
        query_patch = [None if qi < prefix else int(qi - prefix) for qi in q]
        H = maps.shape[2]
        heads = [f"head {h}" for h in range(H)] + ["mean"]
        what = self._query_label(options.query) + (f"\n{note}" if note else "")

        out_dir = Path(out_dir)
        files = F.save_results(out_dir, dict(
            maps=maps.astype(np.float32), query_token=q, layers=np.array(layers),
            labels=dump.labels[:k], preds=dump.preds[:k], image_index=np.arange(k)),
            {"query": options.query, "images": k, "layers": len(layers), "heads": H,
             "token_layout": layout.describe(),
             **({"other_prefix_attention_share": round(share, 4)} if share is not None else {}),
             **({"query_patches": query_patch} if any(q is not None for q in query_patch)
                else {})})
        images = np.asarray(dump.images[:k])
        captions = F.captions(dump, k)
        if options.static:
            for i in range(k):
                title = f"{what}\nimage {i}: {captions[i].replace(chr(10), ' ')}"
                files.append(self._grid(images[i], with_mean[i], layers, heads, query_patch[i],
                                        layout, f"{title} · uniform = 1/{P} = {1 / P:.3f}",
                                        out_dir / f"token_attention_img{i}", options))
            if options.gif and (len(layers) * len(heads)) > 1:
                files.append(self._gif(images[:4], with_mean[:4], layers, heads, query_patch[:4],
                                       layout, what, out_dir / "token_attention.gif"))
        if options.interactive:
            m = min(k, 3)
            fig = I.map_slider(images[:m], with_mean[:m].transpose(1, 0, 2, 3, 4),
                               step_labels=[str(l) for l in layers], slider_label="layer",
                               col_titles=heads, row_titles=[c.replace("\n", " ") for c in captions[:m]],
                               value_label="attention",
                               title=f"{what.replace(chr(10), ' · ')}, per head (slider: layer)", query=query_patch[:m])
            files.append(I.save_html(fig, out_dir / "token_attention.html", options))
        return files

    @staticmethod
    def _query_label(query: str) -> str:
        if query == "cls":
            return "CLS → patches"
        if query == "top":
            return "Most-attended patch (cyan) → patches"
        return f"Patch {query} (cyan) → patches"

    @staticmethod
    def _grid(image, maps, layers, heads, qpatch, layout, title, stem, options) -> Path:
        """Rows = layers, columns = heads and their mean; each map ÷ its own maximum (printed
        under the tile) or, with scale=shared, one scale for all (colourbar in attention)."""
        tiles, peaks, top = M.scaled_overlay_tiles(image, maps, options.scale)
        mosaic = M.Mosaic(tiles, col_breaks=[len(heads) - 2],
                          row_gap=0 if top is not None else max(8, tiles.shape[2] // 8))
        with F.style():
            fig = mosaic.figure(title=title, col_labels=heads,
                                row_labels=[f"layer {l}" for l in layers],
                                **M.scale_legend(peaks, top, "attention"))
            if qpatch is not None:
                for r in range(mosaic.R):
                    for c in range(mosaic.C):
                        mosaic.mark(r, c, qpatch, layout.grid)
            return F.save_static(fig, stem, options)

    @staticmethod
    def _gif(images, maps, layers, heads, qpatch, layout, what, path) -> Path:
        """Frames step through layers, and within each layer through the heads and the mean."""
        k, L, C = maps.shape[:3]
        big = M.tile_scale(max(images.shape[1:3]), GIF_TILE_PX)
        tiles = M.overlay_tiles(images[:, None, None], maps, scale=big)   # k×L×C×S×S×3
        S, Sw = tiles.shape[3:5]
        scale = Sw // layout.image_size[1]
        if any(q is not None for q in qpatch):  # outline the query patch in cyan
            ph, pw = S // layout.grid[0], Sw // layout.grid[1]
            for i, q in enumerate(qpatch):
                if q is not None:
                    r, c = divmod(q, layout.grid[1])
                    y, x = r * ph, c * pw
                    box = tiles[i, :, :, y:y + ph, x:x + pw]
                    edge = max(1, scale // 2)
                    box[..., :edge, :, :] = box[..., -edge:, :, :] = (0, 255, 255)
                    box[..., :, :edge, :] = box[..., :, -edge:, :] = (0, 255, 255)
        strips, headers = [], []
        for l in range(L):
            for c in range(C):
                strips.append(M.Mosaic(tiles[:, l, c][None]).array)
                headers.append(f"layer {layers[l]} · {heads[c]}\n{what}")   # changing part first
        legend = M.colourbar_strip(strips[0].shape[1], "attention, each tile ÷ its own maximum",
                                   high="max")
        frames = [np.concatenate([f, legend]) for f in M.text_frames(strips, headers)]
        return F.save_gif(frames, path, duration_ms=350)
