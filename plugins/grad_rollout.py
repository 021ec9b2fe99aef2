"""`grad-rollout` and `attn-grad`: class-specific attention maps from the target's gradients.

`grad-rollout` is the generic attention explainability rule of Chefer, Gur & Wolf 2021
("Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers", ICCV; rules 5 and 6): per layer, weigh each head's attention by the gradient of
the target logit with respect to it, keep the positive part and average the heads,

    Ā_l = mean_h max(∇A_l ⊙ A_l, 0),

then accumulate relevance from R = I with R ← R + Ā_l · R over the layers (first layer first)
and read the CLS row over the patches, R[cls, prefix:]. `attn-grad` is the same quantity for
one layer only (default the last): Ā_l[cls, prefix:], "attention × gradient" — which is also
exactly the patch part of a grad-rollout over that single layer.

Every prefix token (CLS, distillation, registers) takes part in the propagation like any other
token; only the read-out is restricted to the patch tokens. Batched over images (chunks of
maps.READ_BYTES of float32 attention and gradient, one layer read at a time, and each layer's T×T Ā
kept for the CLS-row product); per-image maps go to results.npz
chunk by chunk, so memory does not grow with the number of images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.errors import PluginError
from vitscope.methods import LazyArrays
from vitscope.methods import get as map_method
from vitscope.plugin import MaskTally, Option, append_maps, block_index, n_images, rows_for
from vitscope.render import figures as F
from vitscope.render import interactive as I
from vitscope.render import mosaic as M


def _cls_index(layout, who: str = "the attention × gradient maps") -> int:
    """The CLS token's index; NotApplicable (before any capture, from `check`) without one."""
    from vitscope.plugin import cls_index
    return cls_index(layout, who)


class GradRollout:
    """Gradient-weighted attention rollout (Chefer et al. 2021): class-specific, all layers."""

    name = "grad-rollout"
    requires = ("blocks.*.attn.weights", "grad:blocks.*.attn.weights")
    produces = ("maps",)
    title = "Gradient-weighted rollout (Chefer et al. 2021)"
    map_label = "relevance"
    options = (
        Option("start_layer", int, 0, "first block (negative counts from the end)"),
        Option("end_layer", int, None, "last block (default: the last block)"),
        Option("show", int, 8, "images drawn in the per-image figure", min=1, max=64),
        M.scale_option(),
    )

    def layers(self, depth: int, options) -> list[int]:
        start = block_index(options.start_layer, depth, 0, f"{self.name}.start_layer")
        end = block_index(options.end_layer, depth, depth - 1, f"{self.name}.end_layer")
        if end < start:
            raise PluginError(f"{self.name}.end_layer ({end}) is before {self.name}.start_layer "
                              f"({start}); choose end_layer >= start_layer.")
        return list(range(start, end + 1))

    def check(self, options, shape) -> None:
        _cls_index(shape.layout, self.name)     # the maps are the CLS row
        self.layers(shape.depth, options)

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        names = dump.match("blocks.*.attn.weights")
        grads = dump.match("grad:blocks.*.attn.weights")
        if len(grads) != len(names):
            raise PluginError(f"The dump holds attention of {len(names)} blocks but gradients of "
                              f"{len(grads)}; capture both for every block.")
        layers = self.layers(len(names), options)
        layout = dump.layout
        n = n_images(dump, options.limit)
        k = min(options.show, n)
        out_dir = Path(out_dir)
        with F.Results(out_dir) as results:    # per-image arrays spill to disk chunk by chunk
            maps, evo, masks = self._compute(dump, [names[l] for l in layers],
                                             [grads[l] for l in layers], n, k, layout, results,
                                             options, len(names))
            results["layers"] = np.array(layers)
            results["labels"] = dump.labels[:n]
            results["preds"] = dump.preds[:n]
            summary = {"images": n, "layers": f"{layers[0]}–{layers[-1]}",
                       "target": dump.target_spec}
            summary.update(masks.numbers())
            files = results.save(summary)
        images = np.asarray(dump.images[:k])
        captions = F.captions(dump, k, target=True)
        span = f"layers {layers[0]}–{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
        title = f"{self.title}, {span}, target: {dump.target_spec}"
        if options.static:
            files.append(M.map_triptych(images, maps[:k], captions, title=title,
                                        map_label=self.map_label, stem=out_dir / self.name,
                                        options=options))
        if options.interactive:
            m = min(k, 6)
            fig = I.map_slider(images[None, :m], evo[:m].transpose(1, 0, 2, 3)[:, None],
                               step_labels=[str(l) for l in layers], slider_label="up to layer",
                               col_titles=[c.replace("\n", " ") for c in captions[:m]],
                               row_titles=[""], title=title)
            files.append(I.save_html(fig, out_dir / f"{self.name}.html", options))
        return files

    def _compute(self, dump, names, grads, n, k, layout, results, options, depth):
        """Chunks of images (maps.rows_for: about READ_BYTES of float32 attention and gradient, one layer at a time): the
        maps and their evolution go to `results` chunk by chunk; kept are the first k images'
        (figures) and three mask numbers per image. Returns (maps k×h×w, evolution k×L×h×w,
        MaskTally)."""
        _cls_index(layout)   # one sentence for a model without a CLS token, before reading
        H, T = dump[names[0]].shape[1], layout.num_tokens
        chunk = rows_for(2 * H * T * T * 4 + len(names) * T * T * 8)  # a layer read, every Ā kept
        masks = MaskTally(dump)
        shown: tuple[list, list] = ([], [])
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            arrays = LazyArrays([*names, *grads], lambda name, s=s, e=e: np.asarray(
                dump[name][s:e], np.float32))           # read as the method reaches each layer
            out = map_method(self.name).compute(arrays, layout, options, depth)
            maps, evo = out.maps, out.steps.astype(np.float32)
            append_maps(results, dump, maps, s)
            results.append("evolution", evo)
            masks.add(maps, s)
            if s < k:
                shown[0].append(maps[:k - s])
                shown[1].append(evo[:k - s])
        maps, evo = (np.concatenate(x) if x else np.zeros((0, *layout.grid)) for x in shown)
        return maps, evo, masks


class AttnGrad(GradRollout):
    """Attention × gradient of one layer (default the last): class-specific, one layer."""

    name = "attn-grad"
    title = "Attention × gradient"
    map_label = "attn × grad"
    options = (
        Option("layer", int, -1, "the block (negative counts from the end)"),
        Option("show", int, 8, "images drawn in the per-image figure", min=1, max=64),
        M.scale_option(),
    )

    def layers(self, depth: int, options) -> list[int]:
        return [block_index(options.layer, depth, depth - 1, f"{self.name}.layer")]
