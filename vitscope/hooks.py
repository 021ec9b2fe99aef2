"""Attach forward hooks to a ViT's hook points by name or glob, and cache activations.

    with attach(model, {"blocks.*.attn.weights": fn}):   # fn(tensor, name) -> tensor | None
        model(x)                                          # hooks removed on exit, even on error

    logits, cache = run_with_cache(model, x, names=["cls", "blocks.*.attn.weights"])

Patterns are globs over dotted names: `*` matches within one segment (`blocks.*.out` is the
residual stream of every block, not `blocks.0.norm1.out`), `**` matches across segments
(`blocks.**.out` is every output inside the blocks), `?` and `[0-3]` work as usual, and a bare
`*` or `**` matches everything.

A hook function may return a tensor to replace the activation (for interventions); returning
None leaves it unchanged.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from vitscope.errors import HookError
from vitscope.model import HookPoint

HookFn = Callable[[torch.Tensor, str], Any]

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of a model, by module path, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}


def layer_sort_key(name: str) -> tuple:
    """Sort key putting `blocks.10` after `blocks.9` (numeric, not lexical)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def summarize_names(names: Iterable[str]) -> str:
    """Compact listing: per-block names are folded into one `blocks.0–11.<x>` entry each."""
    names = list(names)
    blocks: dict[str, list[int]] = {}
    out: list[str] = []
    for n in names:
        m = _BLOCK.match(n)
        if m:
            if m.group(2) not in blocks:
                out.append(f"\0{m.group(2)}")
            blocks.setdefault(m.group(2), []).append(int(m.group(1)))
        else:
            out.append(n)
    parts = []
    for entry in out:
        if entry.startswith("\0"):
            rest = entry[1:]
            parts.append(f"blocks.{_spans(sorted(blocks[rest]))}.{rest}")
        else:
            parts.append(entry)
    return ", ".join(parts)


def _spans(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0–2,5,7–8": contiguous runs only, so gaps stay visible."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}–{b}" if b > a else str(a) for a, b in runs)


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern:
    if pattern in ("*", "**"):
        return re.compile(r".*\Z")
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error as e:  # "[]", "[!]", "[z-a]": an empty or reversed character set
        raise HookError(f"'{pattern}' is not a valid hook pattern ({e.msg} in its [...] set); "
                        f"use `*`, `**`, `?` or a set such as [0-3].") from None


def match_names(pattern: str, names: Iterable[str]) -> list[str]:
    """The names matching one glob (see module docstring), in the order given."""
    rx = _glob_regex(pattern)
    return [n for n in names if rx.match(n)]


def resolve(model_or_names: nn.Module | Iterable[str], patterns: str | Iterable[str]) -> list[str]:
    """Expand names and glob patterns into hook point names, in forward order.

    Raises HookError naming each pattern that matches nothing, with what exists.
    """
    available = list(hook_points(model_or_names) if isinstance(model_or_names, nn.Module)
                     else model_or_names)
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: set[str] = set()
    for pattern in patterns:
        matched = match_names(pattern, available)
        if not matched:
            raise HookError(unknown_hook_message(pattern, available))
        chosen.update(matched)
    return [n for n in available if n in chosen]


def unknown_hook_message(pattern: str, available: list[str]) -> str:
    close = difflib.get_close_matches(pattern, available, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (f"No hook point matches '{pattern}'.{hint} Available: {summarize_names(available)} "
            f"(`vitscope hooks CKPT` lists them with shapes).")


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


def list_hook_points(model: nn.Module, image_size: int | None = None,
                     in_channels: int | None = None) -> list[tuple[str, tuple[str | int, ...]]]:
    """Every hook point with its shape for one input, the batch dimension shown as "B".

    `image_size` defaults to the model's; another size is refused with a clear error, since
    the learned position embedding fixes the number of tokens (no silent interpolation)."""
    cfg = getattr(model, "cfg", None)
    size = image_size or cfg.image_size
    if size != cfg.image_size:
        raise HookError(f"This model takes {cfg.image_size}×{cfg.image_size} images (its position "
                        f"embedding holds {cfg.num_tokens} tokens), not {size}×{size}; leave "
                        f"image_size out to list the hook points at the model's size.")
    channels = in_channels or cfg.in_channels
    param = next(model.parameters())
    x = torch.zeros(1, channels, size, size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, cache = run_with_cache(model, x)
    finally:
        model.train(was_training)
    return [(name, ("B", *t.shape[1:])) for name, t in cache.items()]


def format_shape(shape: tuple) -> str:
    return "×".join(str(s) for s in shape)
