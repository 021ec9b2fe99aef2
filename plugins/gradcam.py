"""`gradcam`: Grad-CAM (Selvaraju et al. 2017) on the patch tokens of one block.

As pytorch-grad-cam runs it on a ViT (`usage_examples/vit_example.py`: target layer
`model.blocks[-1].norm1`, whose forward hook records the LayerNorm's *output*, and a
`reshape_transform` that drops the CLS token and lays the patches out on their grid): take the
activations A (P×D) of the patch tokens at `blocks.{block}.norm1.out` and the gradient G of
the target logit with respect to them, weigh each channel by its gradient averaged over the
patches, and keep the positive part of the weighted sum:

    w_d = mean_p G[p, d],    map[p] = max(Σ_d w_d · A[p, d], 0).

Every prefix token (CLS, distillation, registers) is left out of both the average and the map.
pytorch-grad-cam then rescales each map to [0, 1] for display; the saved maps keep the raw
values (figures divide by each map's maximum).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.errors import PluginError
from vitscope.methods import get as map_method
from vitscope.plugin import MaskTally, Option, append_maps, block_index, n_images, rows_for
from vitscope.render import figures as F
from vitscope.render import interactive as I
from vitscope.render import mosaic as M

POINT = "norm1.out"   # pytorch-grad-cam's target layer for ViTs: blocks[-1].norm1 (its output)


class GradCam:
    """Grad-CAM on the patch tokens of one block's norm1 output (pytorch-grad-cam's ViT setup)."""

    name = "gradcam"
    label = "Grad-CAM"           # the method's name in figures (the CAM family subclasses this)
    stem = "gradcam"             # the figures' file name
    requires = (f"blocks.*.{POINT}", f"grad:blocks.*.{POINT}")
    produces = ("maps",)
    options = (
        Option("block", int, -1, "the block whose norm1 output is explained (negative counts "
               "from the end)"),
        Option("show", int, 8, "images drawn in the per-image figure", min=1, max=64),
        Option("slider", bool, False, "also the map at every block, on a slider (captures "
               f"{POINT} and its gradient in every block: the backward pass then runs to "
               "block 0, about 2× the time and 6× the bytes of the one block the map uses)"),
        M.scale_option(),
    )

    def requires_for(self, options) -> tuple[str, ...]:
        """Only the explained block's activation and gradient, unless the slider asks for
        every block (`blocks.-1` is the last block: vitscope.names)."""
        if options.slider:
            return self.requires
        b = int(options.block)
        return tuple(r.replace("blocks.*.", f"blocks.{b}.") for r in self.requires)

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        uses_grads = any(r.startswith("grad:") for r in self.requires)
        depth = 1 + max((int(n.split(".")[1]) for n in dump.model_names
                         if n.startswith("blocks.") and n.endswith(f".{POINT}")), default=-1)
        block = block_index(options.block, depth, depth - 1, f"{self.name}.block")
        held = [b for b in range(depth) if f"blocks.{b}.{POINT}" in dump.names
                and (not uses_grads or f"grad:blocks.{b}.{POINT}" in dump.names)]
        if block not in held:
            raise PluginError(f"The dump lacks blocks.{block}.{POINT}"
                              f"{' or its gradient' if uses_grads else ''}, which {self.name} "
                              f"explains; analyze again without --dump (or capture it with "
                              f"`vitscope dump --hooks ...`).")
        # the slider shows every block the dump holds (all of them with slider=true)
        slider = held if options.slider else [block]
        acts = [f"blocks.{b}.{POINT}" for b in slider]
        grads = [f"grad:blocks.{b}.{POINT}" if uses_grads else None for b in slider]
        pos = slider.index(block)
        layout = dump.layout
        n = n_images(dump, options.limit)
        k = min(options.show, n)
        out_dir = Path(out_dir)
        # every block's Grad-CAM (cheap: one weighted sum per token) for the slider; the
        # chosen block's is the map. Chunks of images, one block at a time; per-image arrays
        # go to results.npz chunk by chunk, kept are the first k images' (figures)
        D = dump[acts[0]].shape[-1]
        chunk = rows_for(2 * layout.num_tokens * D * 4)
        masks = MaskTally(dump)
        shown, zero = [], 0
        with F.Results(out_dir) as results:
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                per_block = np.stack([map_method(self.name).compute(
                    {a: dump[a][s:e], **({g: dump[g][s:e]} if g else {})}, layout,
                    {"block": b}, depth).maps
                    for b, a, g in zip(slider, acts, grads)], axis=1)    # n×L×h×w
                maps = per_block[:, pos]
                append_maps(results, dump, maps, s)
                results.append("per_block", per_block.astype(np.float32))
                masks.add(maps, s)
                zero += int((maps.reshape(len(maps), -1).max(axis=1) <= 0).sum())
                if s < k:
                    shown.append(per_block[:k - s])
            results["block"] = np.asarray(block)
            results["blocks"] = np.asarray(slider)
            results["labels"] = dump.labels[:n]
            results["preds"] = dump.preds[:n]
            summary = {"images": n, "block": block, "point": POINT, "target": dump.target_spec,
                       "all_zero_maps": zero}
            summary.update(masks.numbers())
            files = results.save(summary)
        per_block = (np.concatenate(shown) if shown
                     else np.zeros((0, len(acts), *layout.grid), np.float32))
        maps = per_block[:, pos]
        if options.static and k:
            files.append(M.map_triptych(
                np.asarray(dump.images[:k]), maps[:k], F.captions(dump, k, target=True),
                title=f"{self.label} at blocks.{block}.{POINT}, target: {dump.target_spec}",
                map_label=self.label, stem=out_dir / self.stem, options=options))
        if options.interactive and k and len(slider) == 1:   # one block: the map, no slider
            captions = F.captions(dump, min(k, 6), target=True)
            fig = I.map_slider(np.asarray(dump.images[:len(captions)])[None],
                               per_block[:len(captions)].transpose(1, 0, 2, 3)[:, None],
                               step_labels=[str(block)], slider_label="block",
                               col_titles=[c.replace("\n", " ") for c in captions],
                               row_titles=[""],
                               title=f"{self.label} at blocks.{block}.{POINT}, target: "
                                     f"{dump.target_spec} (--opt {self.name}.slider=true: every "
                                     f"block)")
            files.append(I.save_html(fig, out_dir / f"{self.stem}.html", options))
        elif options.interactive and k:
            m = min(k, 6)
            captions = F.captions(dump, m, target=True)
            fig = I.map_slider(np.asarray(dump.images[:m])[None],
                               per_block[:m].transpose(1, 0, 2, 3)[:, None],
                               step_labels=[str(b) for b in slider],
                               slider_label=f"{self.label} at blocks.<b>.{POINT}, b =",
                               col_titles=[c.replace("\n", " ") for c in captions],
                               row_titles=[""],
                               title=f"{self.label} per block, target: {dump.target_spec}")
            files.append(I.save_html(fig, out_dir / f"{self.stem}.html", options))
        return files
