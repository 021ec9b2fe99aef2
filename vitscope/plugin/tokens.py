"""The token axis of an activation, read through the dump's token layout: which index is CLS,
which prefix tokens there are, and patch values as the image's grid. Imports no torch."""
from __future__ import annotations

import numpy as np

from vitscope.errors import NotApplicable
from vitscope.names import POOL_WEIGHTS

# What the built-ins still draw for a model without a CLS token (mean-pooled, MAP-pooled).
NO_CLS_INSTEAD = ("what still applies: token-attention with --opt token-attention.query=top "
                  "(where each image's most-attended patch looks), gradcam (a class map from "
                  "the patch tokens) and norm-activations")


def cls_index(layout, plugin: str) -> int:
    """The CLS token's index along T; NotApplicable for a model without one (a plugin built
    on the CLS token has nothing to show there). Plugins call it in `check` too, so that
    `analyze` finds out before it captures anything."""
    index = layout.cls_index
    if index is None:
        reason = f"reads the CLS token, and this model has none ({layout.describe()})"
        raise NotApplicable(f"{plugin} {reason}; {NO_CLS_INSTEAD}.", reason, NO_CLS_INSTEAD)
    return index


# A model that pools with an attention head instead of a CLS token (SigLIP's "MAP" head: one
# learned query over the final patch tokens) exposes that query's attention as this hook point,
# N×H×1×P.
POOL_POINT = POOL_WEIGHTS
POOL_READOUT = "pooling-head query attention, not a CLS row"


def readout_query(layout, names, plugin: str) -> int | None:
    """Which query a CLS-based map reads: the CLS token's index, or None for the pooling
    head's query when the model has no CLS token but has `pool.weights` among `names` (its
    hook points, or what a dump holds); NotApplicable (cls_index) for a model with neither."""
    if layout.cls_index is None and POOL_POINT in set(names):
        return None
    return cls_index(layout, plugin)


def other_prefix(layout) -> list[int]:
    """Token indices of the prefix tokens other than CLS (distillation, registers), in order."""
    skip = layout.cls_index
    return [i for i in range(layout.num_prefix_tokens) if i != skip]


def other_prefix_names(layout) -> str:
    """"4 register tokens" or "1 distillation token": the non-CLS prefix, for captions ("" if none)."""
    from vitscope.layout import KIND_NAMES
    parts = [f"{c} {KIND_NAMES.get(k, k)}" for k, c in layout.prefix if k != "cls"]
    if not parts:
        return ""
    n = len(other_prefix(layout))
    return " + ".join(parts) + (" tokens" if n > 1 else " token")


def prefix_note(layout, share: float | None = None, where: str = "the map") -> str:
    """What a CLS-based patch map does with the other prefix tokens, for a figure title:
    "4 register tokens left out of the map (they hold 12.3% of it)"; "" when there are none.
    `share` is the fraction of the row's mass (attention, rollout) that falls on them."""
    names = other_prefix_names(layout)
    if not names:
        return ""
    held = f" (they hold {share:.1%} of the row)" if share is not None and np.isfinite(share) else ""
    return f"{names} left out of {where}{held}"


def to_grid(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """...×P patch values (row-major, prefix tokens already removed) to ...×h×w."""
    return tokens.reshape(*tokens.shape[:-1], *grid)
