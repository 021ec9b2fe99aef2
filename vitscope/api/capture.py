"""Maps from an in-memory capture: the hook points the chosen methods read, batch by batch,
straight into the methods' arithmetic; no dump is written.

What it does not pay for, compared with a capture into a dump:
- only the points `MapMethod.reads` names for the chosen setting (Grad-CAM: one block's norm1
  output and its gradient, not every block's), so attention stays fused where no method
  reads it;
- activations and gradients stay float32 in memory (no fp16 cast, no compression, no writer
  thread) and are dropped once the batch's maps are computed: memory is bounded by the batch
  (sized by vitscope.capture.memory, as `vitscope dump` sizes it);
- the backward pass starts at the first hook point whose gradient is asked for: that point's
  activation becomes a leaf of the graph, so nothing before it is recorded, and the
  parameters take no gradient (vitscope.api.models turns requires_grad off while the API
  runs). The gradient at each point is still the whole d logit[target] / d point: everything
  downstream of the leaf is in the graph, and any later point is a view of it, as the dump's
  capture takes it.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vitscope.capture.memory import auto_batch_size
from vitscope.capture.stream import _target_grads, resolve_request
from vitscope.methods import MapMethod
from vitscope.model.hooks import attach
from vitscope.names import GRAD_PREFIX


@dataclass
class Captured:
    """The outputs of one in-memory run over N images."""
    logits: np.ndarray                                   # N×C float32 (N×D features headless)
    targets: np.ndarray                                  # N int64, the class explained (-1: none)
    maps: dict[str, np.ndarray] = field(default_factory=dict)    # method -> N×h×w float32
    steps: dict[str, np.ndarray] = field(default_factory=dict)   # method -> N×L×h×w float32
    batch_size: int = 0


def run_maps(model, batch, methods: Sequence[MapMethod], options: dict[str, dict],
             targets: np.ndarray | str, *, batch_size: int | None = None) -> Captured:
    """Every method's maps for `batch` (vitscope.api.images.Batch) on `model`
    (vitscope.api.models.Model, opened). `targets`: "pred" or an N int64 array of classes
    (-1 for none: a model without a class head)."""
    hooked, layout, depth = model.hooked, model.layout, model.depth
    wanted = [n for m in methods if not m.needs_model for n in m.reads(options[m.name], depth)]
    names, grads = resolve_request(hooked, wanted)
    size = batch_size or memory_sized_batch(model, names, grads)
    n = len(batch)
    out = Captured(np.zeros(0), np.zeros(0, np.int64), batch_size=size)
    parts: dict[str, list[np.ndarray]] = {}
    logits_parts, target_parts = [], []
    for start in range(0, n, size):
        stop = min(n, start + size)
        x = batch.model_inputs(model.mean, model.std, start, stop, model.device, model.dtype)
        chosen = targets if not isinstance(targets, np.ndarray) else targets[start:stop]
        logits, tgt, arrays = forward(hooked, x, names, grads, chosen)
        logits_parts.append(logits)
        target_parts.append(tgt)
        for m in methods:
            if m.needs_model:
                maps, steps = m.run(hooked, x, torch.as_tensor(tgt, device=x.device), layout,
                                    options[m.name]), None
            else:
                result = m.compute(arrays, layout, options[m.name], depth)
                maps, steps = result.maps, result.steps
            parts.setdefault(f"maps/{m.name}", []).append(np.asarray(maps, np.float32))
            if steps is not None:
                parts.setdefault(f"steps/{m.name}", []).append(np.asarray(steps, np.float32))
        del arrays
    out.logits = np.concatenate(logits_parts)
    out.targets = np.concatenate(target_parts)
    for key, chunks in parts.items():
        kind, _, name = key.partition("/")
        {"maps": out.maps, "steps": out.steps}[kind][name] = np.concatenate(chunks)
    return out


_BATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def memory_sized_batch(model, names: list[str], grads: list[str]) -> int:
    """The batch `vitscope dump` would take for these hook points (vitscope.capture.memory),
    remembered per model object: sizing it runs the model once on one image with every hook
    point, which a second explain() of the same model need not pay again."""
    key = (tuple(names), tuple(grads))
    try:
        known = _BATCHES.setdefault(model.owner, {}) if model.owner is not None else {}
    except TypeError:           # an object that takes no weak reference: size every time
        known = {}
    if key not in known:
        known[key] = auto_batch_size(model.hooked, names, grads, dtype="float32")
    return known[key]


def forward(hooked, x: torch.Tensor, names: list[str], grads: list[str],
            targets: np.ndarray | str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One batch: (logits B×C float32, targets B int64, {name or grad:name: float32 array})."""
    acts: dict[str, torch.Tensor] = {}
    grad_in: dict[str, torch.Tensor] = {}
    act_set, grad_set = set(names), set(grads)

    def grab(t: torch.Tensor, name: str) -> torch.Tensor | None:
        if name in act_set:
            acts[name] = t.detach()
        if name not in grad_set:
            return None
        # the first point the gradient is asked of starts the graph (a leaf: nothing before it
        # is recorded); a later one is a view, so its gradient is what flows through it
        point = t.view_as(t) if t.requires_grad else t.detach().requires_grad_(True)
        grad_in[name] = point
        return point

    hooks: dict[str, Callable] = {n: grab for n in dict.fromkeys([*names, *grads])}
    mode = torch.enable_grad() if grads else torch.inference_mode()
    with attach(hooked, hooks), mode:
        logits = hooked(x)
        tgt = _targets(logits, targets)
        arrays: dict[str, np.ndarray] = {}
        if grads:
            if (tgt < 0).any():
                raise ValueError("gradients need a class per image")
            values = _target_grads(logits, tgt, grad_in, grads)
            arrays.update({GRAD_PREFIX + n: _numpy(g) for n, g in zip(grads, values)})
            grad_in.clear()
    arrays.update({n: _numpy(acts[n]) for n in names})
    return _numpy(logits), tgt.cpu().numpy(), arrays


def _targets(logits: torch.Tensor, targets) -> torch.Tensor:
    if isinstance(targets, str):        # "pred"
        return logits.detach().argmax(dim=1)
    if not isinstance(targets, np.ndarray):   # an applied Objective: logits are its scores
        return targets.choose(logits)
    return torch.as_tensor(np.asarray(targets), dtype=torch.long, device=logits.device)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float32).numpy()
