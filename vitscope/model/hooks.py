"""Hook points, and attaching forward hooks to them by name or glob.

    with attach(model, {"blocks.*.attn.weights": fn}):   # fn(tensor, name) -> tensor | None
        model(x)                                          # hooks removed on exit, even on error

    logits, cache = run_with_cache(model, x, names=["cls", "blocks.*.attn.weights"])

Works on any hooked model: an nn.Module with `HookPoint` sub-modules named by their module
path (vitscope's ViT, or a foreign ViT wrapped by `vitscope.model.adapters`), which also tells its
input shape (`input_shape`, C×H×W) and token layout (`token_layout`). Nothing here knows which
model it is; name matching lives in the torch-free `vitscope.names` (see it for the globs).

A hook function may return a tensor to replace the activation (for interventions); returning
None leaves it unchanged.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from vitscope.errors import HookError
from vitscope.names import (format_shape, layer_sort_key, match_names, resolve_names,  # noqa: F401
                            slice_of, summarize_names, unknown_hook_message, with_grads,
                            with_slices)

HookFn = Callable[[torch.Tensor, str], Any]


class HookPoint(nn.Identity):
    """A named, parameter-free identity: attach forward hooks here to read or edit activations.

    `name` is set by the model to the module path (e.g. "blocks.3.attn.weights").
    """

    name: str = ""

    @property
    def active(self) -> bool:
        """True while a forward hook is attached (the attention uses it to go explicit)."""
        return bool(self._forward_hooks)


def name_hook_points(model: nn.Module) -> None:
    """Set every HookPoint's `name` to its module path (call once a model is assembled)."""
    for name, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.name = name


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of a model, by module path, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}


def offered_names(model: nn.Module, grads: bool = True) -> list[str]:
    """What a plugin's `requires` may name on this model: every hook point, the CLS slices of
    each attention when the model has a CLS token (vitscope.names.SLICES), and with `grads`
    `grad:<point>` of every hook point."""
    points = list(hook_points(model))
    names = with_slices(points, has_cls=model.token_layout.cls_index is not None)
    return with_grads(names, points) if grads else names


def is_hooked(model: Any) -> bool:
    """Whether `model` follows the hooked-model protocol (module docstring): hook points, an
    input shape and a token layout. vitscope's ViT and every adapter do; the CNN does not."""
    return (isinstance(model, nn.Module) and hasattr(model, "input_shape")
            and hasattr(model, "token_layout") and bool(hook_points(model)))


def resolve(model_or_names: nn.Module | Iterable[str], patterns: str | Iterable[str]) -> list[str]:
    """Expand names and glob patterns into hook point names, in forward order.

    Raises HookError naming each pattern that matches nothing, with what exists.
    """
    available = (hook_points(model_or_names) if isinstance(model_or_names, nn.Module)
                 else model_or_names)
    return resolve_names(available, patterns)


@contextlib.contextmanager
def attach(model: nn.Module, hooks: dict[str, HookFn]) -> Iterator[list[str]]:
    """Attach `fn(tensor, name)` to every hook point matching each key; remove them on exit.

    Yields the list of hook point names that received a hook. A function reached through two
    overlapping patterns (`blocks.0.out` and `blocks.*.out`) runs once per point; different
    functions on one point run in the order of `hooks`, each seeing the previous one's output.
    """
    points = hook_points(model)
    handles = []
    attached: list[str] = []
    done: set[tuple[str, int]] = set()
    try:
        for pattern, fn in hooks.items():
            for name in resolve(list(points), pattern):
                if (name, id(fn)) in done:
                    continue
                done.add((name, id(fn)))
                handles.append(points[name].register_forward_hook(_adapter(fn, name)))
                attached.append(name)
        yield attached
    finally:
        for h in handles:
            h.remove()


def _adapter(fn: HookFn, name: str):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor):
        out = fn(output, name)
        if out is not None and not isinstance(out, torch.Tensor):
            raise HookError(f"The hook on '{name}' returned a value of type "
                            f"{type(out).__name__}; a hook returns None (keep the activation) "
                            f"or a tensor to replace it.")
        if out is not None and out.shape != output.shape:
            raise HookError(f"The hook on '{name}' returned a tensor of shape "
                            f"{tuple(out.shape)} for an activation of shape "
                            f"{tuple(output.shape)}; return a tensor of the same shape.")
        return out
    return hook


def run_with_cache(model: nn.Module, x: torch.Tensor, names: str | Iterable[str] | None = None,
                   detach: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run `model(x)` and return `(logits, cache)`, cache mapping each hook name to its output.

    `names` are names or glob patterns; None caches every hook point (attention weights
    included, which switches attention to the explicit branch) and [] caches none.
    """
    cache: dict[str, torch.Tensor] = {}

    def store(t: torch.Tensor, name: str) -> None:
        cache[name] = t.detach() if detach else t

    patterns = ["*"] if names is None else [names] if isinstance(names, str) else list(names)
    with attach(model, {p: store for p in patterns}):
        logits = model(x)
    return logits, cache


def list_hook_points(model: nn.Module, image_size: int | tuple[int, int] | None = None,
                     in_channels: int | None = None, slices: bool = False
                     ) -> list[tuple[str, tuple[str | int, ...]]]:
    """Every hook point with its shape for one input, the batch dimension shown as "B";
    with `slices`, also the CLS slices of each attention (vitscope.names.SLICES) after it.

    `image_size` defaults to the model's (`model.input_shape`); another size is refused with a
    clear error, since the learned position embedding fixes the number of tokens (no silent
    interpolation)."""
    channels, h, w = model.input_shape
    if image_size is not None:
        want = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size,) * 2
        if want != (h, w):
            raise HookError(f"This model takes {h}×{w} images (its position embedding holds "
                            f"{model.token_layout.num_tokens} tokens), not "
                            f"{want[0]}×{want[1]}; leave image_size out to list the hook points "
                            f"at the model's size.")
    channels = in_channels or channels
    param = next(model.parameters())
    x = torch.zeros(1, channels, h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _, cache = run_with_cache(model, x)
    finally:
        model.train(was_training)
    listed = [(name, ("B", *cache[name].shape[1:])) for name in hook_points(model) if name in cache]
    if not slices:
        return listed
    shapes = dict(listed)
    names = with_slices(shapes, has_cls=model.token_layout.cls_index is not None)
    return [(n, shapes[n] if n in shapes else shapes[slice_of(n)[0]][:3]) for n in names]
