"""Class sensitivity: does a map change when another class is explained? Measured, not
inferred from the randomisation test (a map identical for every class by construction, such
as a rollout of the gradient of the summed logits, still changes once the head is random).

For every image the same model explains two other classes beside the target: the runner-up
(the highest logit after the target's: the class the model nearly chose, the hardest case)
and a random other class (seeded, neither the target nor the runner-up where the model has
three classes or more). Spearman's ρ between the target's map and each other class's map, per
image, with a bootstrap interval over images. Verdict (on the runner-up):

- class-agnostic: the interval's lower end ≥ RHO_SAME (the map is the same whichever class);
- class-sensitive: its upper end < RHO_SAME;
- inconclusive: otherwise (or no defined ρ: every map constant).
"""
from __future__ import annotations

import numpy as np

from vitscope.score.randomization import RHO_SAME
from vitscope.score.stats import Estimate, bootstrap, constant, spearman

OTHERS = ("runner-up", "random class")


def logits_of(model, x, batch_size: int = 256) -> np.ndarray:
    """N×C logits of the unperturbed model (float32 numpy)."""
    import torch
    out = []
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            out.append(model(x[s:s + batch_size]).float().cpu().numpy())
    return np.concatenate(out)


def other_classes(logits: np.ndarray, target: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """{"runner-up": N, "random class": N} class indices other than `target` per image; empty
    for a model with fewer than two classes."""
    logits = np.asarray(logits, np.float64)
    n, c = logits.shape
    if c < 2:
        return {}
    target = np.asarray(target, np.int64)
    masked = logits.copy()
    masked[np.arange(n), target] = -np.inf
    runner = masked.argmax(axis=1)
    rng = np.random.default_rng([seed, 24])
    allowed = np.ones((n, c), bool)
    allowed[np.arange(n), target] = False
    if c >= 3:
        allowed[np.arange(n), runner] = False
    # a uniform pick among the allowed classes of each image
    keys = np.where(allowed, rng.random((n, c)), -1.0)
    return {"runner-up": runner, "random class": keys.argmax(axis=1)}


def sensitivity(maps: np.ndarray, other_maps: dict[str, np.ndarray], seed: int = 0) -> dict:
    """The entry of one method: per other class, ρ (Estimate) and the number of constant maps
    of that class; the verdict from the runner-up."""
    out: dict = {}
    for what, omaps in other_maps.items():
        out[what] = {"rho": bootstrap(spearman(maps, omaps), seed),
                     "constant_maps": int(constant(omaps).sum())}
    out["verdict"] = verdict(out["runner-up"]["rho"]) if "runner-up" in out else "not measured"
    return out


def verdict(rho: Estimate) -> str:
    if rho.n == 0 or not np.isfinite(rho.mean):
        return "inconclusive"
    lo = rho.lo if np.isfinite(rho.lo) else rho.mean
    hi = rho.hi if np.isfinite(rho.hi) else rho.mean
    if lo >= RHO_SAME:
        return "class-agnostic"
    if hi < RHO_SAME:
        return "class-sensitive"
    return "inconclusive"
