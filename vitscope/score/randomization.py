"""The model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps"), cascading: randomise the head first, then the blocks from the last down, then the
embedding; after each step recompute every map and compare it with the trained model's map
(Spearman ρ per image). A map that explains the model must change; one that barely changes
after the whole model is random depends on the image, not on the model.

Randomising a parameter tensor replaces it with Gaussian noise of the tensor's own mean and
standard deviation, so activations keep their scale (a re-initialisation that shrank every
weight would turn each block into the identity and make every map trivially uniform), and
nothing here needs to know the architecture. The groups come from the model's
`randomization_groups()` when it has one (adapters may define it), else from parameter names:
`head` + `norm` (the classifier and the final norm), `blocks.<i>` from the last block down,
then everything else (patch embedding, position embedding, CLS token) as `embedding`.

One draw of random weights is one sample: the ρ of a step varies between draws far beyond
an interval over images (six draws on 32 images: grad-rollout's head-step ρ from 0.29 to
0.62). So the cascade is repeated for DRAWS independent draws (`draw_seed`), and intervals
cover draws and images together (stats.two_level).
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

RHO_SAME = 0.9      # a mean ρ at or above this: the map is (nearly) unchanged
RHO_CHANGED = 0.5   # after the whole cascade, a mean ρ below this: the map depends on the model
DRAWS = 5           # independent weight draws of the cascade
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def cascade_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """(label, parameter names) in cascade order, head first."""
    if hasattr(model, "randomization_groups"):
        return [(str(label), list(names)) for label, names in model.randomization_groups()]
    names = [n for n, _ in model.named_parameters()]
    head = [n for n in names if n.split(".")[0] in ("head", "norm", "fc_norm")]
    blocks: dict[int, list[str]] = {}
    for n in names:
        if m := _BLOCK.match(n):
            blocks.setdefault(int(m.group(1)), []).append(n)
    rest = [n for n in names if n not in head and not _BLOCK.match(n)]
    groups = [("head", head)] if head else []
    groups += [(f"blocks.{i}", blocks[i]) for i in sorted(blocks, reverse=True)]
    if rest:
        groups.append(("embedding", rest))
    return groups


def randomize_(params: list[nn.Parameter], generator: torch.Generator) -> None:
    """Replace each tensor by noise of its own mean and standard deviation, in place."""
    with torch.no_grad():
        for p in params:
            mean = p.float().mean()
            std = p.float().std(unbiased=False) if p.numel() > 1 else p.float().abs().mean()
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            p.copy_((noise.to(p.device) * std + mean).to(p.dtype))


def cascade(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Yield (label, model) after randomising each group in turn, cumulatively: first the head,
    then the head and the last block, ... The trained model is left untouched (a copy is
    randomised)."""
    work = copy.deepcopy(model).eval()
    params = dict(work.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    for label, names in cascade_groups(work):
        randomize_([params[n] for n in names], generator)
        yield label, work


def draw_seed(seed: int, draw: int) -> int:
    """The generator seed of draw `draw` of a score seeded `seed`: independent streams."""
    return int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])
