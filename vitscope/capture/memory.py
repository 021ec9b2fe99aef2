"""How many images a capture takes per forward pass: the largest batch whose activations,
gradients and autograd graph stay within BATCH_MEMORY."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from vitscope.names import slice_of

DEFAULT_BATCH = 64                  # images per forward pass, unless memory says fewer
QUEUE_BATCHES = 2                   # batches waiting for the writer: bounds memory


# What one batch may hold while it is captured (activations, gradients, the autograd graph,
# and the batches queued for the writer): the automatic batch size keeps under it, so a
# ViT-S/16 at 224 px with gradients captures in batches of 7, not 64 (measured on the 2-core
# VM, benchmarks/analyze_224.py at 64 images: 6.3 GB peak with 64, 2.1 GB with 7).
BATCH_MEMORY = 1 << 30


def capture_bytes_per_image(model, names: Iterable[str], grads: Iterable[str],
                            dtype: str = "float16") -> int:
    """About how much memory capturing one image takes: the hooked activations and gradients
    in float32, the autograd graph when gradients are taken (about as large as every hook
    point's output: it keeps the attention and MLP activations for the backward pass), and
    the stored copies queued for the writer (QUEUE_BATCHES batches in `dtype`). From the
    hook points' shapes at the model's input size (one forward pass of one image)."""
    from vitscope.model.hooks import list_hook_points

    names, grads = list(names), list(grads)
    sizes = {name: int(np.prod([d for d in shape[1:]], dtype=np.int64))
             for name, shape in list_hook_points(model)}
    every_point = sum(sizes.values())
    for name in names:                       # a CLS slice: one row of its attention
        if slice_of(name) is not None and slice_of(name)[0] in sizes:
            sizes[name] = sizes[slice_of(name)[0]] // model.token_layout.num_tokens
    stored = sum(sizes.get(n, 0) for n in names) + sum(sizes.get(n, 0) for n in grads)
    graph = every_point if grads else 0
    item = 2 if dtype == "float16" else 4
    return 4 * (stored + graph) + item * stored * QUEUE_BATCHES


def auto_batch_size(model, names: Iterable[str], grads: Iterable[str] = (),
                    dtype: str = "float16", budget: int | None = None) -> int:
    """The largest batch of at most DEFAULT_BATCH images whose capture fits in `budget`
    bytes (default BATCH_MEMORY), at least 1."""
    per_image = max(1, capture_bytes_per_image(model, names, grads, dtype))
    budget = BATCH_MEMORY if budget is None else budget
    return int(max(1, min(DEFAULT_BATCH, budget // per_image)))
