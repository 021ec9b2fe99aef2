"""`vitscope.patch`: activation patching, one hook point at a time.

    res = vitscope.patch(model, clean_images, corrupted_images, hooks="blocks.*.out", token=0)
    res.effect            # {hook point: share of the clean-vs-corrupted gap it restores}
    res                   # in a notebook: the figure and the table, with intervals

Each clean image is paired with the corrupted image at the same position. With
`direction="denoise"` (default) the corrupted images run with one hook point's activation
replaced by the clean images' (all tokens, or one `token` index), and the metric is read:
where the clean activation restores the clean metric, that point carries what distinguishes
them (Meng et al. 2022; Heimersheim & Nanda 2024). `direction="noise"` runs the clean images
with the corrupted activation patched in instead.

The metric (default: the probability of the clean image's predicted class) maps B×C logits to
B values. Per hook point: the mean change from the unpatched run, with a percentile bootstrap
95% interval over the image pairs, and the normalised effect mean(patched − base) /
mean(source − base) (1: the whole gap restored, 0: nothing). Baseline: the same patch taken
from *another* clean image (the pairs shifted by one), which shows how much a point restores
for any image rather than for its own pair.

The model runs through `attach`, so hooks are removed and the model is handed back as it
was, whatever happens.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vitscope.errors import ConfigError, DataError
from vitscope.model.hooks import attach, resolve, run_with_cache
from vitscope.score.stats import Estimate, bootstrap

DIRECTIONS = ("denoise", "noise")


@dataclass
class Patching:
    """What `vitscope.patch` returns (module docstring)."""
    hooks: list[str]
    direction: str
    token: int | None
    base: np.ndarray                  # B metric of the run being patched, unpatched
    source: np.ndarray                # B metric of the run the activations come from
    patched: dict[str, np.ndarray]    # hook -> B metric with that point patched
    mismatched: dict[str, np.ndarray]  # hook -> B metric patched from another pair's source

    @property
    def gap(self) -> float:
        return float(np.mean(self.source - self.base))

    @property
    def effect(self) -> dict[str, float]:
        """Normalised effect per hook: mean(patched − base) / mean(source − base)."""
        gap = self.gap
        return {h: float(np.mean(v - self.base) / gap) if gap else float("nan")
                for h, v in self.patched.items()}

    @property
    def baseline(self) -> dict[str, float]:
        """The normalised effect of patching from another image (NaN with one pair)."""
        gap = self.gap
        return {h: float(np.mean(v - self.base) / gap) if gap and len(v) else float("nan")
                for h, v in self.mismatched.items()}

    def change(self, hook: str) -> Estimate:
        """Mean change of the metric from the unpatched run, with a bootstrap interval."""
        return bootstrap(self.patched[hook] - self.base)

    def figure(self):
        from vitscope.render import figures as F
        x = np.arange(len(self.hooks))
        eff, base = self.effect, self.baseline
        gap = self.gap or np.nan
        with F.style() as plt:
            fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(self.hooks) + 2), 3.6))
            est = [self.change(h) for h in self.hooks]
            y = np.array([eff[h] for h in self.hooks])
            lo = np.array([e.lo / gap for e in est])
            hi = np.array([e.hi / gap for e in est])
            lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
            ax.bar(x, y, color="C0", label="patched from its own pair",
                   yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
            ax.plot(x, [base[h] for h in self.hooks], "k_", ms=14, mew=2,
                    label="patched from another image (baseline)")
            ax.axhline(0, color="gray", lw=0.6)
            ax.axhline(1, color="gray", lw=0.6, ls=":")
            ax.set_xticks(x, self.hooks, rotation=60, ha="right", fontsize=7)
            where = "all tokens" if self.token is None else f"token {self.token}"
            ax.set(ylabel="share of the gap restored",
                   title=f"Activation patching ({self.direction}, {where}), "
                         f"{len(self.base)} pairs, 95% bootstrap")
            ax.legend(frameon=False, fontsize=7)
            return fig

    def _repr_html_(self) -> str:
        from vitscope.api.display import block, img_tag, png_bytes, table
        rows = [(h, f"{self.effect[h]:+.3f}", self.change(h).text(), f"{self.baseline[h]:+.3f}")
                for h in self.hooks]
        body = img_tag(png_bytes(self.figure()), "activation patching") + table(
            ["hook point", "share of gap restored", "mean change [95%]",
             "from another image"], rows, numeric=(1, 2, 3))
        return block(f"Activation patching: source − base gap {self.gap:+.3f}", body)


def prob_of_clean_prediction(clean_logits: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The default metric: each pair's probability of the clean image's predicted class."""
    cls = clean_logits.argmax(1)
    return lambda logits: logits.softmax(1).gather(1, cls[:, None].to(logits.device))[:, 0]


def _token_axis(t: torch.Tensor, name: str) -> int:
    """The token axis of a hook point's activation: 2 for B×H×T×… points, else 1."""
    if t.ndim < 3:
        raise ConfigError(f"token= patches one token, and '{name}' has no token axis (shape "
                          f"{tuple(t.shape)}); leave token out or choose a B×T×D point.")
    return 2 if t.ndim == 4 else 1


def patch(model: Any, clean: Any, corrupted: Any, hooks: str | Iterable[str] = "blocks.*.out",
          metric: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
          direction: str = "denoise", token: int | None = None, classes=None,
          preprocessed: bool = False, preprocess=None, normalize=None, processor=None,
          device: str | None = None) -> Patching:
    """Activation patching of `clean` into `corrupted` images (or the reverse) at each hook
    point (module docstring). model and images are taken as by vitscope.explain; `metric`
    maps B×C logits to B values (default: p(clean prediction))."""
    from vitscope.api.images import load_images
    from vitscope.api.models import ModelSource
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be {' or '.join(DIRECTIONS)}, not {direction!r}.")
    if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
        raise ConfigError(f"token must be a token index (0 is CLS in most ViTs) or None, "
                          f"not {token!r}.")
    source = ModelSource(model, classes=classes, preprocess=preprocess, normalize=normalize,
                         processor=processor, device=device)
    with source.open() as m:
        a = load_images(clean, m, preprocessed=preprocessed)
        b = load_images(corrupted, m, preprocessed=preprocessed)
        if len(a) != len(b):
            raise DataError(f"patch pairs the clean and corrupted images by position, and got "
                            f"{len(a)} clean and {len(b)} corrupted; give as many of each.")
        model_ = m.hooked
        names = resolve(model_, hooks)
        if token is not None and not -m.layout.num_tokens <= token < m.layout.num_tokens:
            raise ConfigError(f"token {token} is outside this model's {m.layout.num_tokens} "
                              f"tokens.")
        xa = a.model_inputs(m.mean, m.std, device=m.device, dtype=m.dtype)
        xb = b.model_inputs(m.mean, m.std, device=m.device, dtype=m.dtype)
        with torch.inference_mode():
            la, cache_a = run_with_cache(model_, xa, names)
            lb, cache_b = run_with_cache(model_, xb, names)
            fn = metric or prob_of_clean_prediction(la)
            src_x, src_cache, base_x = (xa, cache_a, xb) if direction == "denoise" \
                else (xb, cache_b, xa)
            ma, mb = _values(fn(la)), _values(fn(lb))
            src, base = (ma, mb) if direction == "denoise" else (mb, ma)
            patched, mismatched = {}, {}
            for name in names:
                for store, shift in ((patched, 0), (mismatched, 1)):
                    if shift and len(a) < 2:
                        store[name] = np.zeros(0)
                        continue
                    value = torch.roll(src_cache[name], shift, 0)

                    def put(t, n, value=value):
                        if token is None:
                            return value.to(t.dtype)
                        out = t.clone()
                        out.select(_token_axis(t, n), token).copy_(
                            value.select(_token_axis(t, n), token))
                        return out
                    with attach(model_, {name: put}):
                        store[name] = _values(fn(model_(base_x)))
        return Patching(names, direction, token, base, src, patched, mismatched)


def _values(t: Any) -> np.ndarray:
    v = torch.as_tensor(t).detach().float().cpu().numpy()
    if v.ndim != 1:
        raise ConfigError(f"A patching metric returns one value per image (shape B), got "
                          f"shape {tuple(v.shape)}.")
    return v.astype(np.float64)
