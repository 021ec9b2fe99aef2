"""Ablation of every attention head and every MLP in turn: how much does the model need it?

    result = ablate(model, images_u8, labels, mean, std, modes=("zero", "mean"))
    result.top(5)            # the heads whose removal lowers p(target) most, with intervals

A head is ablated by replacing its slice of `blocks.{i}.attn.head_out` (its output before the
projection; the projection's bias stays) and an MLP by replacing `blocks.{i}.mlp.out`, on
every image, through `attach` (vitscope.model.hooks), so the same code runs on vitscope's ViT
and on every adapted family:
- zero-ablation: the value 0 (the component removed; for a head, as if it attended to nothing);
- mean-ablation: its mean over the images at each token position (the component kept at its
  average, so only its image-specific information is removed; less off-distribution than 0).
Per image: the change in the target class's probability (target: the label, or the clean
prediction) and in correctness; per component: the mean change with a percentile bootstrap
95% interval over images (vitscope.score.stats). A component matters when its interval lies
wholly below 0 (the baseline: removing it changes nothing).

Cost: one clean pass, then per mode one forward pass of every image for each of the L·(H+1)
components (no gradients, in batches). On vitscope's own ViT an edited pass resumes from the
residual entering the ablated block (cached once per batch), so ablating block i reruns
only blocks i and after; an adapted model runs whole (its family's forward cannot resume).
The model is left as it was (hooks removed, train/eval mode and device restored), also on
error.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from vitscope.data.specs import to_model_input
from vitscope.errors import ConfigError
from vitscope.model.hooks import attach, hook_points, run_with_cache
from vitscope.score.stats import Estimate, bootstrap

MODES = ("zero", "mean")


@dataclass(frozen=True)
class Component:
    """One ablated part: a head (`head` set) or a block's MLP."""
    block: int
    head: int | None = None

    @property
    def name(self) -> str:
        return f"L{self.block}H{self.head}" if self.head is not None else f"MLP{self.block}"

    @property
    def point(self) -> str:
        return (f"blocks.{self.block}.attn.head_out" if self.head is not None
                else f"blocks.{self.block}.mlp.out")


@dataclass
class AblationResult:
    """Per mode, per component: the mean change in p(target) and in accuracy with intervals."""
    n: int
    depth: int
    heads: int
    clean_accuracy: float
    clean_target_prob: float
    target: str
    effects: dict[str, dict[str, tuple[Estimate, Estimate]]] = field(default_factory=dict)

    def grid(self, mode: str, which: int = 0) -> np.ndarray:
        """depth × (heads + 1) mean changes (0: p(target), 1: accuracy); the last column is
        the MLP."""
        out = np.full((self.depth, self.heads + 1), np.nan)
        for i in range(self.depth):
            for h in range(self.heads):
                out[i, h] = self.effects[mode][f"L{i}H{h}"][which].mean
            out[i, -1] = self.effects[mode][f"MLP{i}"][which].mean
        return out

    def top(self, k: int = 5, mode: str | None = None, heads_only: bool = True
            ) -> list[tuple[str, Estimate, Estimate]]:
        """The k components whose ablation lowers p(target) most (mean change, most negative
        first), as (name, Δp, Δaccuracy)."""
        mode = mode or next(iter(self.effects))
        rows = [(name, dp, da) for name, (dp, da) in self.effects[mode].items()
                if not heads_only or name.startswith("L")]
        return sorted(rows, key=lambda r: r[1].mean)[:k]

    def to_dict(self) -> dict:
        return {"images": self.n, "blocks": self.depth, "heads": self.heads,
                "target": self.target, "clean_accuracy": self.clean_accuracy,
                "clean_target_prob": self.clean_target_prob,
                "effects": {mode: {name: {"delta_target_prob": dp.to_dict(),
                                          "delta_accuracy": da.to_dict()}
                                   for name, (dp, da) in comps.items()}
                            for mode, comps in self.effects.items()}}


def components(model) -> tuple[list[Component], int, int]:
    """Every head and MLP of a hooked model with `attn.head_out` and `mlp.out` points, as
    (components, depth, heads); ConfigError for a model without them."""
    points = hook_points(model)
    depth = sum(1 for n in points if n.endswith(".attn.head_out"))
    if depth == 0 or not all(f"blocks.{i}.mlp.out" in points for i in range(depth)):
        raise ConfigError(f"A {type(model).__name__} has no per-head hook points "
                          f"(blocks.*.attn.head_out); ablation needs vitscope's ViT or an "
                          f"adapted timm, torchvision or Hugging Face ViT.")
    c, h, w = model.input_shape
    param = next(model.parameters())
    with torch.inference_mode():
        _, cache = run_with_cache(model, torch.zeros(1, c, h, w, device=param.device,
                                                     dtype=param.dtype), "blocks.0.attn.head_out")
    heads = int(cache["blocks.0.attn.head_out"].shape[1])
    comps = [Component(i, k) for i in range(depth) for k in range(heads)]
    return comps + [Component(i) for i in range(depth)], depth, heads


def _replace(comp: Component, value: torch.Tensor | None) -> Callable:
    """The hook that ablates `comp`: its slice set to `value` (None: zero)."""
    def hook(t: torch.Tensor, name: str) -> torch.Tensor:
        out = t.clone()
        if comp.head is None:
            out[:] = 0 if value is None else value.to(t.dtype)
        else:
            out[:, comp.head] = 0 if value is None else value.to(t.dtype)
        return out
    return hook


def _resumable(model) -> bool:
    """Whether `model` is vitscope's own ViT, whose forward can resume at any block."""
    from vitscope.model.vit import ViT
    return type(model) is ViT


def _block_inputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream entering each block of vitscope's ViT for inputs x."""
    names = [f"blocks.{i}.norm1.in" for i in range(len(model.blocks))]
    _, cache = run_with_cache(model, x, names)
    return [cache[n] for n in names]


def _run_from(model, block: int, x: torch.Tensor) -> torch.Tensor:
    """vitscope's ViT from the residual entering `block` to the logits, as its forward does."""
    for b in model.blocks[block:]:
        x = b(x)
    return model.head(model.cls(model.norm(x)[:, 0]))


def ablate(model, images: np.ndarray | torch.Tensor, labels: np.ndarray | None, mean, std, *,
           modes: tuple[str, ...] = MODES, target: str = "label", batch_size: int = 256,
           device: str | torch.device | None = None,
           progress: Callable[[int, int], None] | None = None, seed: int = 0,
           resume: bool = True) -> AblationResult:
    """Ablate every head and MLP of `model` on N×H×W×3 uint8 `images` (module docstring).
    `target`: "label" (needs `labels`) or "pred" (the clean prediction). `progress(done,
    total)` is called after each batch of each component."""
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"Unknown ablation mode(s) {', '.join(bad) or '(none)'}; use "
                          f"{' and/or '.join(MODES)}.")
    if target not in ("label", "pred"):
        raise ConfigError(f"The ablation target must be 'label' or 'pred', not {target!r}.")
    if target == "label" and labels is None:
        raise ConfigError("These images have no labels; ablate with target 'pred' (the "
                          "model's own clean prediction).")
    images = torch.as_tensor(images)
    n = len(images)
    if n == 0:
        raise ConfigError("No images to ablate on.")
    first = next(model.parameters())
    home, was_training = first.device, model.training
    dev = torch.device(device) if device is not None else home
    try:
        model.eval().to(dev)
        comps, depth, heads = components(model)
        batches = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]

        def inputs(s, e):
            return to_model_input(images[s:e].to(dev), mean, std)

        # clean pass: probabilities, predictions, and the per-position means of every point
        points = sorted({c.point for c in comps})
        sums = {p: None for p in points}
        clean_logits = []
        with torch.inference_mode():
            for s, e in batches:
                logits, cache = run_with_cache(model, inputs(s, e),
                                               points if "mean" in modes else [])
                clean_logits.append(logits.float().cpu())
                for p in cache:
                    part = cache[p].double().sum(0)
                    sums[p] = part if sums[p] is None else sums[p] + part
        clean = torch.cat(clean_logits)
        tgt = torch.as_tensor(np.asarray(labels), dtype=torch.long) if target == "label" \
            else clean.argmax(1)
        truth = torch.as_tensor(np.asarray(labels), dtype=torch.long) if labels is not None \
            else clean.argmax(1)
        p_clean = clean.softmax(1).gather(1, tgt[:, None])[:, 0].numpy()
        ok_clean = (clean.argmax(1) == truth).numpy().astype(np.float64)
        means = {p: (v / n).float().to(dev) for p, v in sums.items() if v is not None}
        result = AblationResult(n, depth, heads, float(ok_clean.mean()), float(p_clean.mean()),
                                target)
        total, done = len(modes) * len(comps) * len(batches), 0
        p_abl = {(m, c): np.zeros(n) for m in modes for c in comps}
        ok_abl = {(m, c): np.zeros(n) for m in modes for c in comps}
        fast = resume and _resumable(model)
        with torch.inference_mode():
            for s, e in batches:
                x = inputs(s, e)
                # vitscope's ViT: the residual entering each block, so that ablating block i
                # reruns only blocks i.. (the same numbers as the whole model; test)
                entering = _block_inputs(model, x) if fast else None
                for mode in modes:
                    for comp in comps:
                        value = None
                        if mode == "mean":
                            m = means[comp.point]
                            value = m if comp.head is None else m[comp.head]
                        with attach(model, {comp.point: _replace(comp, value)}):
                            logits = (_run_from(model, comp.block, entering[comp.block]) if fast
                                      else model(x)).float().cpu()
                        p_abl[mode, comp][s:e] = logits.softmax(1).gather(
                            1, tgt[s:e, None])[:, 0].numpy()
                        ok_abl[mode, comp][s:e] = (logits.argmax(1) == truth[s:e]).numpy()
                        done += 1
                        if progress is not None:
                            progress(done, total)
        for mode in modes:
            result.effects[mode] = {
                comp.name: (bootstrap(p_abl[mode, comp] - p_clean, seed),
                            bootstrap(ok_abl[mode, comp] - ok_clean, seed)) for comp in comps}
        return result
    finally:
        model.to(home)
        model.train(was_training)
