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
            summary = {"images": n, "target": dump.target_spec, "stored": f"/maps/{self.name}"}
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


class IntegratedGradients(ModelMap):
    """Integrated gradients (Sundararajan et al. 2017) per patch, stored at capture (Captum)."""
    name, label = "integrated-gradients", "Integrated gradients"


class Occlusion(ModelMap):
    """The fall of the target logit when each patch is greyed, stored at capture (Captum)."""
    name, label = "occlusion", "Occlusion"


class ScoreCam(ModelMap):
    """Score-CAM (Wang et al. 2020) on gradcam's target, stored at capture (one forward pass per
    channel and image)."""
    name, label = "scorecam", "Score-CAM"


class AttnLrp(ModelMap):
    """AttnLRP (Achtibat et al. 2024): LRP relevance per patch, stored at capture (one forward
    and backward pass with LRP's rules, as lxt computes it)."""
    name, label = "attnlrp", "AttnLRP"


class CpLrp(ModelMap):
    """CP-LRP (Ali et al. 2022): LRP with the attention weights held constant, stored at
    capture (lxt's setting for ViTs)."""
    name, label = "cp-lrp", "CP-LRP"
