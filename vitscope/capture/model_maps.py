"""Map methods that need the model itself, not one forward and backward pass: integrated
gradients and patch occlusion through Captum (extra `captum`), and Score-CAM (native, as
pytorch-grad-cam computes it; tested against it). They register in the methods
registry (`needs_model`, `run`) when the Python API is imported, so `vitscope.explain(model,
images, methods=["integrated-gradients", "occlusion"])` computes them batch by batch on the
model, and `Explanation.score()` scores them like every map (its randomisation and class
sensitivity run them again on the randomised model and for other classes).

- `integrated-gradients` (Sundararajan et al. 2017): Captum's IntegratedGradients of the
  target logit with respect to the normalised input, from the all-zero input (the
  normalisation mean: mid-grey) in `steps` steps (Gauss–Legendre, Captum's default); the map
  is the attribution summed over channels and over each patch's pixels (signed: positive is
  evidence for the target).
- `occlusion`: Captum's Occlusion with one window per patch (the patch grid as windows and
  strides, every channel at once) set to the normalisation mean; the map is the fall of the
  target logit when that patch is greyed.

They live here, beside the model, because vitscope.methods never imports torch. A capture
asked for `map:<method>` (a plugin's `requires`) runs the method on every batch and stores the
N×h×w maps in `/maps/<method>` (float32), with the batch's target: plugins then read them from
the dump like any array (`dump["map:occlusion"]`), and `vitscope score` scores them.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from vitscope.capture.patch_sum import patch_sum
from vitscope.errors import ConfigError
from vitscope.methods import METHODS, MapMethod, get, register

CAPTUM = "pip install 'vitscope[captum]'"


def _captum():
    try:
        import captum.attr as attr
    except ImportError:
        raise ConfigError(f"integrated-gradients and occlusion need Captum, which is not "
                          f"installed; {CAPTUM}.") from None
    return attr


def integrated_gradients(model, x: torch.Tensor, target: torch.Tensor, layout,
                         options: Mapping[str, Any]) -> np.ndarray:
    steps = int(options.get("steps", 32))
    if steps < 2:
        raise ConfigError(f"integrated-gradients.steps must be at least 2, got {steps}.")
    ig = _captum().IntegratedGradients(model)
    with torch.enable_grad():
        x = x.detach().clone()
        attributions = ig.attribute(x, baselines=torch.zeros_like(x), target=target,
                                    n_steps=steps,
                                    internal_batch_size=int(options.get("internal_batch", 64)))
    return patch_sum(attributions, layout)


def occlusion(model, x: torch.Tensor, target: torch.Tensor, layout,
              options: Mapping[str, Any]) -> np.ndarray:
    ph, pw = layout.patch_size
    occ = _captum().Occlusion(model)
    with torch.no_grad():
        attributions = occ.attribute(x.detach(), sliding_window_shapes=(x.shape[1], ph, pw),
                                     strides=(x.shape[1], ph, pw), baselines=0.0, target=target,
                                     perturbations_per_eval=int(options.get("per_eval", 16)))
    # every pixel of a window carries that window's logit fall: read one pixel per patch
    (h, w) = layout.grid
    return attributions[:, 0, :h * ph:ph, :w * pw:pw].detach().cpu().numpy()


def score_cam(model, x: torch.Tensor, target: torch.Tensor, layout,
              options: Mapping[str, Any]) -> np.ndarray:
    """Score-CAM (Wang et al. 2020) as pytorch-grad-cam computes it on a ViT, on gradcam's
    target (blocks.{block}.norm1.out, prefix tokens dropped, patches on their grid): each
    channel's map, upsampled bilinearly to the image (align_corners, as its
    UpsamplingBilinear2d) and min-max scaled, masks the input; the target logits of the masked
    inputs, softmaxed over channels, weigh the channels; map = relu(Σ_d w_d A_d). One forward
    pass per channel and image."""
    from vitscope.methods.registry import GRADCAM_POINT, block
    from vitscope.model.hooks import attach
    depth = len([n for n in _hook_names(model) if n.endswith(".norm1.out")])
    point = GRADCAM_POINT.format(block(options.get("block"), depth, depth - 1, "scorecam.block"))
    seen: dict[str, torch.Tensor] = {}

    def keep(t, name):
        seen["a"] = t.detach()
    with torch.no_grad():
        with attach(model, {point: keep}):
            model(x)
        (h, w), p = layout.grid, layout.num_prefix_tokens
        a = seen["a"][:, p:].float()
        acts = a.reshape(len(a), h, w, a.shape[-1]).permute(0, 3, 1, 2)          # B×D×h×w
        up = torch.nn.functional.interpolate(acts, size=x.shape[-2:], mode="bilinear",
                                             align_corners=True)
        flat = up.flatten(2)
        lo, hi = flat.min(-1)[0][..., None, None], flat.max(-1)[0][..., None, None]
        up = (up - lo) / (hi - lo + 1e-8)
        per = int(options.get("batch", 64))
        weights = []
        for i in range(len(x)):
            masked = x[i][None] * up[i][:, None]                                    # D×C×H×W
            scores = torch.cat([model(masked[s:s + per])[:, int(target[i])]
                                for s in range(0, len(masked), per)])
            weights.append(torch.softmax(scores.float(), dim=0))
        cam = (torch.stack(weights)[:, :, None, None] * acts).sum(1)
    return torch.relu(cam).cpu().numpy()


def _hook_names(model) -> list[str]:
    from vitscope.model.hooks import hook_points
    return list(hook_points(model))


register(MapMethod("integrated-gradients", "integrated gradients (Sundararajan et al. 2017) "
                   "of the target logit from a mid-grey input, summed per patch (Captum)",
                   {"steps": 32, "internal_batch": 64}, needs_model=True,
                   run=integrated_gradients, class_specific=True,
                   speed_options=("internal_batch",)))
register(MapMethod("occlusion", "fall of the target logit when one patch is set to the "
                   "normalisation mean (Captum's Occlusion, one window per patch)",
                   {"per_eval": 16}, needs_model=True, run=occlusion, class_specific=True,
                   speed_options=("per_eval",)))

register(MapMethod("scorecam", "Score-CAM (Wang et al. 2020) on the patch tokens of one block's "
                   "norm1 output, as pytorch-grad-cam computes it", {"block": -1, "batch": 64},
                   needs_model=True, run=score_cam, class_specific=True,
                   speed_options=("batch",)))

from vitscope.capture import lrp  # noqa: E402,F401  (registers attnlrp and cp-lrp)


def model_map_names() -> list[str]:
    """`map:<method>` for every registered method that needs the model: what a capture can
    store besides hook points."""
    return [f"map:{name}" for name, m in METHODS.items() if m.needs_model]


def check_model_maps(names: list[str]) -> list[MapMethod]:
    """The methods of `map:` requests; ConfigError for one that is unknown or needs no model."""
    out = []
    for name in names:
        method = get(name)
        if not method.needs_model:
            raise ConfigError(f"map:{name} asks to store {name}'s maps at capture time, but "
                              f"{name} is computed from hook points; request its hook points "
                              f"instead (its plugin's requires).")
        out.append(method)
    return out


def map_options(method: MapMethod, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options `method` runs with at capture: its defaults overridden by `given`
    (`--opt METHOD.KEY=VALUE`); ConfigError for a key the method does not have."""
    unknown = sorted(set(given or {}) - set(method.defaults))
    if unknown:
        raise ConfigError(f"{method.name} has no option '{unknown[0]}'; its options: "
                          f"{', '.join(f'{k} (default {v})' for k, v in method.defaults.items()) or 'none'}"
                          f" (--opt {method.name}.KEY=VALUE).")
    return method.options(given)


def deciding_options(names, given: Mapping[str, Mapping[str, Any]] | None = None
                     ) -> dict[str, dict[str, Any]]:
    """{method: the options that decide its maps} for the `map:` methods `names`, with
    `given` ({method: {key: value}}) over the defaults: what a stored map must have been
    made with to serve a request (Dump.covers)."""
    return {m.name: m.map_deciding(map_options(m, (given or {}).get(m.name)))
            for m in check_model_maps(list(names))}


def parse_map_opts(specs, methods: list[str]) -> dict[str, dict[str, Any]]:
    """`vitscope dump --opt METHOD.KEY=VALUE` for the `map:` methods `methods`: values parsed
    as the method's default is typed (int, float, bool, text; `none` for None); ConfigError
    for anything else, in one sentence."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        lhs, eq, text = spec.partition("=")
        name, dot, key = lhs.strip().partition(".")
        if not eq or not dot or not name or not key:
            raise ConfigError(f"--opt '{spec}' is not of the form METHOD.KEY=VALUE; write e.g. "
                              f"--opt integrated-gradients.steps=16.")
        if name not in methods:
            raise ConfigError(f"--opt '{spec}' is for map:{name}, which --hooks does not ask "
                              f"for; add --hooks map:{name}"
                              + (f" (asked: {', '.join('map:' + m for m in methods)})."
                                 if methods else "."))
        method = get(name)
        if key not in method.defaults:
            map_options(method, {key: None})        # the sentence naming its options
        out.setdefault(name, {})[key] = _typed(text.strip(), method.defaults[key], spec)
    return out


def _typed(text: str, default: Any, spec: str) -> Any:
    if text.lower() == "none":
        return None
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("not true or false")
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int) or default is None:
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else \
            "an integer" if isinstance(default, int) or default is None else "a number"
        raise ConfigError(f"--opt {spec} is invalid: '{text}' is not {kind}.") from None
    return text


def run_model_map(method: MapMethod, model, x: torch.Tensor, target: torch.Tensor, layout,
                  options: Mapping[str, Any] | None = None) -> np.ndarray:
    """N×h×w float32 maps of `method` for a batch, with autograd on even when the capture runs
    under inference_mode (the batch is cloned out of it)."""
    with torch.inference_mode(False), torch.enable_grad():
        maps = method.run(model, x.clone(), target.clone(), layout,
                          method.options(options))
    return np.asarray(maps, np.float32)
