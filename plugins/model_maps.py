"""`integrated-gradients`, `occlusion`, `scorecam`, `attnlrp` and `cp-lrp`: maps of methods that need the model (many forward
or backward passes per image), computed at capture time and stored in the dump as
`/maps/<method>` (vitscope.capture.model_maps): the plugin asks for `map:<method>` in its
`requires`, reads the N×h×w maps and draws them like any map. Maps are signed (integrated
gradients: evidence for and against the target; occlusion: a patch whose greying raises the
target logit is negative); figures show the positive part, results.npz keeps the values."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.plugin import MaskTally, Option, append_maps, n_images, rows_for
from vitscope.render import figures as F
from vitscope.render import interactive as I
from vitscope.render import mosaic as M


class ModelMap:
    """A map stored in the dump by the capture (`map:<name>`)."""

    name = ""
    label = ""
    produces = ("maps",)
    options = (Option("show", int, 8, "images drawn in the per-image figure", min=1, max=64),
               M.scale_option())

    @property
    def requires(self) -> tuple[str, ...]:
        return (f"map:{self.name}",)

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        out_dir = Path(out_dir)
        stored = dump[f"map:{self.name}"]
        n = n_images(dump, options.limit)
        k = min(options.show, n)
        masks = MaskTally(dump)
        chunk = rows_for(4 * int(np.prod(stored.shape[1:])))
        with F.Results(out_dir) as results:
            for s in range(0, n, chunk):
                maps = np.asarray(stored[s:min(n, s + chunk)], np.float32)
                append_maps(results, dump, maps, s)
                masks.add(maps, s)
            results["labels"] = dump.labels[:n]
            results["preds"] = dump.preds[:n]
            summary = {"images": n, "target": dump.target_spec, "stored": f"/maps/{self.name}",
                       "options": dump.map_options(self.name)}   # what the capture ran
            summary.update(masks.numbers())
            files = results.save(summary)
        if options.static and k:
            shown = np.maximum(np.asarray(stored[:k], np.float32), 0)
            files.append(M.map_triptych(
                np.asarray(dump.images[:k]), shown, F.captions(dump, k, target=True),
                title=f"{self.label}, target: {dump.target_spec} (positive part)",
                map_label=self.label, stem=out_dir / self.name, options=options))
        if options.interactive and k:
            m = min(k, 6)
            shown = np.maximum(np.asarray(stored[:m], np.float32), 0)
            captions = F.captions(dump, m, target=True)
            fig = I.map_slider(np.asarray(dump.images[:m])[None], shown[None, None],
                               step_labels=[self.label], slider_label="map",
                               col_titles=[c.replace("\n", " ") for c in captions],
                               row_titles=[""],
                               title=f"{self.label}, target: {dump.target_spec} (positive part)")
            files.append(I.save_html(fig, out_dir / f"{self.name}.html", options))
        return files


# The method's own options, declared here so `--opt integrated-gradients.steps=16` is checked
# like any plugin option; the capture runs the method with them (the same names and defaults
# as its registration in vitscope.capture.model_maps, which a test keeps in step).

class IntegratedGradients(ModelMap):
    """Integrated gradients (Sundararajan et al. 2017) per patch, stored at capture (Captum)."""
    name, label = "integrated-gradients", "Integrated gradients"
    options = ModelMap.options + (
        Option("steps", int, 32, "integration steps from the mid-grey input (run at capture)",
               min=2, max=1024),
        Option("internal_batch", int, 64, "inputs per forward pass of the integration (memory "
               "only; the maps do not change)", min=1))


class Occlusion(ModelMap):
    """The fall of the target logit when each patch is greyed, stored at capture (Captum)."""
    name, label = "occlusion", "Occlusion"
    options = ModelMap.options + (
        Option("per_eval", int, 16, "occluded inputs per forward pass (memory only; the maps "
               "do not change)", min=1),)


class ScoreCam(ModelMap):
    """Score-CAM (Wang et al. 2020) on gradcam's target, stored at capture (one forward pass per
    channel and image)."""
    name, label = "scorecam", "Score-CAM"
    options = ModelMap.options + (
        Option("block", int, -1, "block whose norm1 output is the target (negative counts from "
               "the end; run at capture)"),
        Option("batch", int, 64, "masked inputs per forward pass (memory only; the maps do not "
               "change)", min=1))


class AttnLrp(ModelMap):
    """AttnLRP (Achtibat et al. 2024): LRP relevance per patch, stored at capture (one forward
    and backward pass with LRP's rules, as lxt computes it)."""
    name, label = "attnlrp", "AttnLRP"


class CpLrp(ModelMap):
    """CP-LRP (Ali et al. 2022): LRP with the attention weights held constant, stored at
    capture (lxt's setting for ViTs)."""
    name, label = "cp-lrp", "CP-LRP"
