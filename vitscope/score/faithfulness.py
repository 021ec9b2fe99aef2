"""Faithfulness: deletion and insertion curves (Petsiuk et al. 2018, RISE) over patch tokens.

Patches are ranked by the map, most relevant first. Tied patches (a gradcam map has about
half its patches at exactly 0) have no order: one random tie break moved per-image AUCs by up
to 0.32, so a map with ties is scored by the mean curve over TIE_DRAWS random tie orders (the
expected AUC over tie orders, sampled), and the share of tied patches is reported. Deletion removes
the top 0%, 10%, ..., 100% of them; insertion keeps only the top 0%, 10%, ..., 100% (it starts
from no patch and inserts the most relevant first, i.e. it removes the least relevant first).
At each step the target class probability (softmax) is recorded; the area under each curve
(trapezoid over the fraction of patches, 0..1) summarises it: a faithful map has a low
deletion AUC and a high insertion AUC, and a random order is the baseline both must beat.

Two perturbations:
- `drop` (default): the removed patch tokens leave the sequence. Done through the generic
  `blocks.*.attn.weights` hook points: every attention row is restricted to the kept keys and
  renormalised, which is exactly softmax over the kept tokens only, so the prefix tokens and
  the kept patches compute what they would on the shorter sequence (tokens are otherwise
  independent: LayerNorm and MLP act per token). No out-of-distribution pixels are shown.
- `grey`: the removed patches' pixels are set to the normalisation mean (0 after
  normalisation, mid-grey for mean 0.5), the perturbation of pixel-space papers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitscope.errors import VitscopeError
from vitscope.model.hooks import attach, hook_points
from vitscope.names import match_names

PERTURBATIONS = ("drop", "grey")
STEPS = 10                  # 0%, 10%, ..., 100% of the patches
TIE_DRAWS = 4               # random tie orders averaged for a map with tied patches
ATTENTION = "blocks.*.attn.weights"


@dataclass
class Curves:
    deletion: np.ndarray    # N×(STEPS+1) target probability after removing the top k/STEPS
    insertion: np.ndarray   # N×(STEPS+1) target probability keeping only the top k/STEPS

    @property
    def fractions(self) -> np.ndarray:
        return np.linspace(0, 1, self.deletion.shape[1])

    @classmethod
    def average(cls, draws: list["Curves"]) -> "Curves":
        """The mean curves over several tie orders of one map: the expected curve (and AUC,
        which is linear in the curve) over random tie breaks, estimated by sampling."""
        return cls(np.mean([c.deletion for c in draws], axis=0),
                   np.mean([c.insertion for c in draws], axis=0))

    def auc(self) -> tuple[np.ndarray, np.ndarray]:
        """Per image (deletion AUC, insertion AUC): trapezoids over fractions 0..1."""
        return trapezoid(self.deletion), trapezoid(self.insertion)


def trapezoid(curves: np.ndarray) -> np.ndarray:
    steps = curves.shape[1] - 1
    return (curves[:, 1:] + curves[:, :-1]).sum(axis=1) / (2 * steps)


def relevance_order(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N×h×w maps -> N×P patch indices, most relevant first; ties in random order."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    tiebreak = rng.random(flat.shape)
    return np.lexsort((tiebreak, -flat), axis=-1)


def random_order(n: int, patches: int, rng: np.random.Generator) -> np.ndarray:
    return np.argsort(rng.random((n, patches)), axis=1)


def step_counts(patches: int, steps: int = STEPS) -> np.ndarray:
    """Patches removed (or kept) at each step: round(k / steps · P), k = 0..steps."""
    return np.round(np.arange(steps + 1) * patches / steps).astype(int)


def check_perturbation(model, perturbation: str) -> None:
    if perturbation not in PERTURBATIONS:
        raise VitscopeError(f"Unknown perturbation '{perturbation}'; use drop (patch tokens "
                            f"leave the sequence) or grey (patch pixels set to the mean).")
    if perturbation == "drop" and not match_names(ATTENTION, list(hook_points(model))):
        raise VitscopeError(f"This model exposes no {ATTENTION} hook points, so patch tokens "
                            f"cannot be dropped; use --perturbation grey.")


class Perturber:
    """Runs the model on images with some patches removed; `probabilities(x, keep, target)`.

    keep: B×P bool (True = the patch stays), x: B×C×H×W normalised inputs."""

    def __init__(self, model, layout, perturbation: str = "drop", objective=None) -> None:
        check_perturbation(model, perturbation)
        self.model, self.layout, self.perturbation = model, layout, perturbation
        # a target that is no class (vitscope.capture.objective): its raw score is followed,
        # since a softmax over one similarity is always 1
        self.objective = objective
        self._keys: torch.Tensor | None = None   # B×1×1×T weights of the kept keys

    def _restrict(self, attn: torch.Tensor, name: str) -> torch.Tensor:
        kept = attn * self._keys
        return kept / kept.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(attn.dtype).tiny)

    def _grey(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        (h, w), (ph, pw) = self.layout.grid, self.layout.patch_size
        pixels = keep.view(-1, 1, h, 1, w, 1).expand(-1, 1, h, ph, w, pw)
        pixels = pixels.reshape(-1, 1, h * ph, w * pw).to(x.dtype)
        H, W = x.shape[-2:]
        if (h * ph, w * pw) != (H, W):
            pixels = torch.nn.functional.pad(pixels, (0, W - w * pw, 0, H - h * ph), value=1.0)
        return x * pixels            # 0 is the normalisation mean: "grey"

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor, keep: torch.Tensor,
                      target: torch.Tensor) -> torch.Tensor:
        if self.perturbation == "grey":
            logits = self.model(self._grey(x, keep))
        else:
            prefix = torch.ones(len(keep), self.layout.num_prefix_tokens, dtype=torch.bool,
                                device=keep.device)
            self._keys = torch.cat([prefix, keep], dim=1)[:, None, None, :].to(x.dtype)
            with attach(self.model, {ATTENTION: self._restrict}):
                logits = self.model(x)
            self._keys = None
        if self.objective is not None:
            return self.objective.scores(self.model, logits).gather(1, target[:, None])[:, 0]
        return logits.float().softmax(dim=1).gather(1, target[:, None])[:, 0]


def curves(perturber: Perturber, x: torch.Tensor, target: torch.Tensor,
           orders: dict[str, np.ndarray], batch_size: int = 256,
           steps: int = STEPS) -> dict[str, Curves]:
    """Deletion and insertion curves for each named order (N×P, most relevant first), all
    methods' perturbed inputs evaluated together in batches."""
    n = len(x)
    patches = perturber.layout.num_patches
    counts = step_counts(patches, steps)
    # jobs: (order name, curve, step) -> keep mask; the full and the empty input are shared
    jobs: list[tuple[str, str, int]] = []
    for name in orders:
        for k in range(1, steps):
            jobs += [(name, "deletion", k), (name, "insertion", k)]
    ranks = {name: np.argsort(order, axis=1) for name, order in orders.items()}  # patch -> rank
    full = _run(perturber, x, target, np.ones((n, patches), bool), batch_size)
    empty = _run(perturber, x, target, np.zeros((n, patches), bool), batch_size)
    out = {name: Curves(np.empty((n, steps + 1)), np.empty((n, steps + 1))) for name in orders}
    for name in orders:
        c = out[name]
        c.deletion[:, 0], c.deletion[:, steps] = full, empty
        c.insertion[:, 0], c.insertion[:, steps] = empty, full
    # evaluate every job for every image; chunked so one forward holds batch_size inputs
    per_job = max(1, batch_size // max(n, 1))
    for j0 in range(0, len(jobs), per_job):
        chunk = jobs[j0:j0 + per_job]
        keep = np.concatenate([_keep(ranks[name], curve, counts[k]) for name, curve, k in chunk])
        xs = x.repeat(len(chunk), 1, 1, 1)
        ts = target.repeat(len(chunk))
        probs = _run(perturber, xs, ts, keep, batch_size).reshape(len(chunk), n)
        for (name, curve, k), p in zip(chunk, probs):
            getattr(out[name], curve)[:, k] = p
    return out


def _keep(rank: np.ndarray, curve: str, count: int) -> np.ndarray:
    """Which patches stay: deletion drops the `count` top-ranked, insertion keeps only them."""
    top = rank < count
    return ~top if curve == "deletion" else top


def _run(perturber: Perturber, x: torch.Tensor, target: torch.Tensor, keep: np.ndarray,
         batch_size: int) -> np.ndarray:
    out = []
    keep_t = torch.from_numpy(keep).to(x.device)
    for s in range(0, len(x), batch_size):
        out.append(perturber.probabilities(x[s:s + batch_size], keep_t[s:s + batch_size],
                                           target[s:s + batch_size]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
