"""Hook-point names: glob matching, ordering and compact listings. Imports no torch.

The dump reader, the plugins and the CLI's listings match names without loading a model, so
this module depends on nothing but the standard library (`import vitscope.dump` must stay
torch-free; a test checks it).

Patterns are globs over dotted names: `*` matches within one segment (`blocks.*.out` is the
residual stream of every block, not `blocks.0.norm1.out`), `**` matches across segments
(`blocks.**.out` is every output inside the blocks), `?` and `[0-3]` work as usual, and a bare
`*` or `**` matches everything.

CLS slices of the attention: `blocks.{i}.attn.weights.cls_row` (N×H×T: the CLS query's row,
where CLS reads from) and `blocks.{i}.attn.weights.cls_col` (N×H×T: how much each query reads
from CLS) are hook points of every model whose token layout has a CLS token. A dump stores
them at 2/T of the full weights' size (1% at 197 tokens), and a dump of the full
`attn.weights` serves them as well (vitscope.dump reads the slice). Only a pattern that names
a slice suffix matches slices: `blocks.*.attn.weights.cls_row` and `...weights.cls_*` do,
`**`, `blocks.*.attn.*` and `blocks.*.attn.weights.*` do not, so globs over everything never capture the same numbers twice.

A block index may count from the end: `blocks.-1.norm1.out` is the last block's, resolved
against the names it is matched with (a model's or a dump's full list of hook points: the
largest block index there is the last block), so a plugin can ask for "the last block"
without knowing the depth.

Gradients are named like activations with a `grad:` prefix: `grad:blocks.*.attn.weights` in a
plugin's `requires` asks for d logit[target] / d `blocks.i.attn.weights` of every block
(`split_grads`, `with_grads`).

A pattern with the `optional:` prefix asks for its hook points where the model has them and for
nothing where it has none: `optional:pool.weights` in a plugin's `requires` captures SigLIP's
pooling-head attention, and on a model without a pooling head the plugin still runs (it then
reads the CLS rows, say). Where the model has matches, they are required like any others: a
dump lacking them does not serve the plugin (`resolve_names`, `missing_hooks`, `Dump.covers`).
"""
from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable

from vitscope.errors import HookError

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
OPTIONAL_PREFIX = "optional:"   # `optional:<pattern>`: its hook points where the model has any
GRAD_PREFIX = "grad:"   # `grad:<hook pattern>`: the gradient of the target logit at those points
MAP_PREFIX = "map:"     # `map:<method>`: the N×h×w maps of a method that needs the model, stored
                        # at capture time (integrated-gradients, occlusion, attnlrp, ...)
ATTENTION = "attn.weights"
# N×H×1×P: the query of an attention-pooling head over the final tokens (SigLIP's "MAP" head),
# what CLS-based maps read on a model without a CLS token
POOL_WEIGHTS = "pool.weights"
# slice suffix -> the axis of the N×H×T×T attention fixed at the CLS index
SLICES = {"cls_row": 2, "cls_col": 3}


def slice_of(name: str) -> tuple[str, str] | None:
    """(source attention, slice suffix) of a CLS slice name, else None:
    "blocks.3.attn.weights.cls_row" -> ("blocks.3.attn.weights", "cls_row")."""
    source, _, suffix = name.rpartition(".")
    if suffix in SLICES and source.endswith(ATTENTION):
        return source, suffix
    return None


def with_slices(names: Iterable[str], has_cls: bool = True) -> list[str]:
    """`names` with the CLS slices of each attention-weights name right after it (none for a
    model without a CLS token), each once."""
    out: list[str] = []
    for n in names:
        out.append(n)
        if has_cls and n.endswith(ATTENTION) and not is_grad(n):
            out += [f"{n}.{s}" for s in SLICES]
    return list(dict.fromkeys(out))


def optional_of(pattern: str) -> str | None:
    """The pattern inside `optional:<pattern>`, else None."""
    return pattern[len(OPTIONAL_PREFIX):] if pattern.startswith(OPTIONAL_PREFIX) else None


def is_grad(name: str) -> bool:
    return name.startswith(GRAD_PREFIX)


def is_map(name: str) -> bool:
    return name.startswith(MAP_PREFIX)


def split_maps(patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """Names/patterns -> (everything else, map method names without the `map:` prefix)."""
    rest, maps = [], []
    for p in patterns:
        (maps if is_map(p) else rest).append(p[len(MAP_PREFIX):] if is_map(p) else p)
    return rest, maps


def split_grads(patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """Names/patterns -> (activation patterns, gradient patterns without the `grad:` prefix)."""
    acts, grads = [], []
    for p in patterns:
        (grads if is_grad(p) else acts).append(p[len(GRAD_PREFIX):] if is_grad(p) else p)
    return acts, grads


def with_grads(names: Iterable[str], grads: Iterable[str] | None = None) -> list[str]:
    """`names` followed by `grad:`-prefixed `grads` (default: the same names), for matching
    `requires` that mix activations and gradients against one list."""
    names = list(names)
    return names + [GRAD_PREFIX + n for n in (names if grads is None else grads)]


def layer_sort_key(name: str) -> tuple:
    """Sort key putting `blocks.10` after `blocks.9` (numeric, not lexical)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def block_of(name: str) -> int | None:
    """The block index of `blocks.<i>.<rest>`, else None."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


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


_FROM_END = re.compile(r"^(grad:)?blocks\.-(\d+)\.")


def match_names(pattern: str, names: Iterable[str]) -> list[str]:
    """The names matching one glob (see module docstring), in the order given. A CLS slice
    matches only a pattern whose last segment spells part of its suffix (`cls_row`,
    `cls_*`), not one of wildcards alone (`*`, `**`). `blocks.-k.` counts from the last
    block among `names`."""
    names = list(names)
    end = _FROM_END.match(pattern)
    if end:
        blocks = [b for b in (block_of(n.removeprefix(GRAD_PREFIX)) for n in names)
                  if b is not None]
        k, depth = int(end.group(2)), (max(blocks) + 1 if blocks else 0)
        if not 1 <= k <= depth:
            return []
        pattern = f"{end.group(1) or ''}blocks.{depth - k}." + pattern[end.end():]
    rx = _glob_regex(pattern)
    named = pattern.rpartition(".")[2].strip("*?") != ""
    return [n for n in names if rx.match(n) and (named or slice_of(n) is None)]


def resolve_names(available: Iterable[str], patterns: str | Iterable[str]) -> list[str]:
    """Expand names and glob patterns into names of `available`, in the order of `available`.

    Raises HookError naming each pattern that matches nothing, with what exists (an
    `optional:` pattern may match nothing).
    """
    available = list(available)
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: set[str] = set()
    for pattern in patterns:
        inner = optional_of(pattern)
        matched = match_names(pattern if inner is None else inner, available)
        if not matched and inner is None:   # `optional:` asks only for what the model has
            raise HookError(unknown_hook_message(pattern, available))
        chosen.update(matched)
    return [n for n in available if n in chosen]


def unknown_hook_message(pattern: str, available: list[str]) -> str:
    close = difflib.get_close_matches(pattern, available, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (f"No hook point matches '{pattern}'.{hint} Available: {summarize_names(available)} "
            f"(`vitscope hooks CKPT` lists them with shapes).")


def format_shape(shape: tuple) -> str:
    return "×".join(str(s) for s in shape)
