"""The plugin protocol: what a plugin is, and the options and shapes it is handed.

A plugin reads a dump (never the model) and writes figures. It is any object, usually a class
instantiated with no arguments (or a module), with the members of `Plugin` below: `name`,
`requires` and `render` are required, the others optional. `render` returns the files it wrote
and saves the numbers behind each figure next to it (`results.npz`), plus optionally
`summary.json` (a flat dict of headline numbers that `index.html` shows). Raise
`vitscope.errors.PluginError` for bad input found while rendering; any other exception is
reported as a failure of this plugin only.

A third-party package registers it with five lines of setup.cfg:

    [options.entry_points]
    vitscope.plugins =
        attention-entropy = vitscope_attention_entropy:AttentionEntropy

Discovery, validation and `--opt` parsing belong to the host (vitscope.analyze); this module
is all an author needs besides the helpers in vitscope.plugin, vitscope.render and
vitscope.dump. Imports no torch.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vitscope._internal.text import short_repr
from vitscope.errors import PluginError

# Keys every plugin receives in RenderOptions; declared options may not reuse them.
RESERVED = ("static", "interactive", "format", "limit", "run_dir", "smooth")
STATIC_FORMATS = ("png", "svg", "pdf")


class Plugin(Protocol):
    """What vitscope reads from a plugin. `name`, `requires` and `render` are required; the
    host reads every other member with the default in OPTIONAL when a plugin lacks it."""

    name: str
    """What `--plugin NAME` selects; equal to its entry-point name (a lowercase slug)."""

    requires: tuple[str, ...]
    """Hook-point globs it reads, e.g. ("blocks.*.attn.weights",); "grad:<glob>" reads the
    gradient of the target logit there; "optional:<glob>" reads those points where the model
    has them (and nothing where it has none). `vitscope analyze` captures the union."""

    options: tuple["Option", ...]
    """Optional. What `--opt NAME.key=value` may set; each arrives converted and checked."""

    produces: tuple[str, ...]
    """Optional. ("maps",) for a map plugin that `vitscope score` can evaluate: it saves its
    maps with `vitscope.plugin.map_arrays` (the map contract, vitscope.plugin.maps)."""

    description: str
    """Optional. One line for `vitscope plugins` (else the first line of the docstring)."""

    min_images: int
    """Optional. The fewest images it can show; `analyze --all` skips it below that."""

    def check(self, options: "RenderOptions", shape: "ModelShape") -> None:
        """Optional. Check layer and token options against the model before anything is
        captured or written; raise vitscope.errors.PluginError with one sentence."""

    def requires_for(self, options: "RenderOptions") -> tuple[str, ...]:
        """Optional. The hook patterns one setting reads, when fewer than `requires` (e.g. only
        the CLS rows of the attention for query=cls); the host captures just these."""

    def render(self, dump: Any, out_dir: Path, options: "RenderOptions") -> list[Path]:
        """Write the figures into `out_dir` (an existing, empty staging folder: write nowhere
        else) and return their paths. `dump` is an open `vitscope.dump.Dump` (read lazily:
        `dump["blocks.3.attn.weights"][i:j]`, `dump.match(...)`, `dump.layout`,
        `dump.labels`, `dump.masks`); `options` holds the declared options as attributes
        (`options.discard_ratio`) plus the keys in RESERVED, which the host sets for every
        plugin:

            static: bool        write static figures (matplotlib: options.format)
            interactive: bool   write interactive figures (Plotly HTML, offline)
            format: str         "png" | "svg" | "pdf"
            limit: int | None   use the first `limit` images of the dump (None: all); never
                                more than len(dump), so `dump[hook][:limit]` has that many rows
            run_dir: Path       outputs/<run>/, where shared files such as plotly.min.js live
            smooth: bool        maps bilinearly smoothed (`analyze --smooth`) instead of drawn
                                as the patch grid; vitscope.render.mosaic and
                                figures.show_overlay follow it by themselves while render runs
        """


REQUIRED = ("name", "requires", "render")
# The optional members and what the host assumes when a plugin lacks one.
OPTIONAL: dict[str, Any] = {"options": (), "produces": (), "description": "", "min_images": 1,
                            "check": None, "requires_for": None}


def member(plugin: Any, name: str) -> Any:
    """An optional member of `plugin`, or its default from OPTIONAL when absent (or None)."""
    value = getattr(plugin, name, None)
    return OPTIONAL[name] if value is None else value


# ----------------------------------------------------------------------------------- options

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Option:
    """One declared option: `--opt <plugin>.<name>=<value>`.

    `type` converts the command-line text: int, float, bool, str, or any callable that raises
    ValueError with a short reason. `choices` and `min`/`max` are checked after conversion.
    A default of None means "decided by the plugin" (e.g. "the last layer").
    """
    name: str
    type: Callable[[str], Any] = str
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    metavar: str | None = None    # how `vitscope plugins -v` names the type, e.g. "LAYERS"

    @property
    def type_name(self) -> str:
        if self.metavar:
            return self.metavar
        if self.choices:
            return "|".join(map(str, self.choices))
        return getattr(self.type, "__name__", "value")

    def convert(self, value: Any) -> Any:
        """The value converted and checked; ValueError says what is allowed."""
        if value is None:
            return None
        try:
            if self.type is bool:
                out = value if isinstance(value, bool) else _parse_bool(value)
            elif isinstance(value, str) or not isinstance(value, self._py_type()):
                out = self.type(value)
            else:
                out = value
        except Exception as e:  # a converter's own error message is the reason
            reason = str(e) if self.type not in (int, float, str) else f"expected {self.type_name}"
            raise ValueError(reason or f"expected {self.type_name}") from None
        if isinstance(out, float) and not math.isfinite(out):
            raise ValueError("expected a finite number")   # nan passes every < and > check
        if self.choices and out not in self.choices:
            raise ValueError(f"expected one of {', '.join(map(str, self.choices))}")
        if self.min is not None and out < self.min:
            raise ValueError(f"expected a value >= {self.min}")
        if self.max is not None and out > self.max:
            raise ValueError(f"expected a value <= {self.max}")
        return out

    def _py_type(self) -> tuple[type, ...]:
        return (self.type,) if isinstance(self.type, type) else (object,)

    def describe(self) -> str:
        return f"{self.name} ({self.type_name}, default {self.default!r}): {self.help}"


class RenderOptions(dict):
    """The options a plugin's render() receives: a dict with attribute access."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no option '{key}' (have: {', '.join(self)})") from None


# ----------------------------------------------------------------------------------- entries






# ---------------------------------------------------------------------------------- registry


# ------------------------------------------------------------------------------- --opt parsing


# ------------------------------------------------------------------------ options vs. model

@dataclass(frozen=True)
class ModelShape:
    """What option checks may rely on before any capture: the model's depth (blocks), token
    layout (prefix tokens, patch grid), classes and hook points, from the checkpoint or the
    dump."""
    depth: int
    layout: Any                 # vitscope.layout.TokenLayout
    classes: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()   # the model's hook points ("pool.weights": a pooling head)


# Plugin names become folder names (outputs/<run>/<name>/): a lowercase slug, so `.`, `..`,
# paths, schemes and the run's own files can never be one.
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
RESERVED_NAMES = ("index.html", "manifest.json", "plotly.min.js")


def name_problem(name: Any) -> str | None:
    """Why `name` cannot be a plugin name, or None when it can."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return (f"its name {short_repr(name)} is not a safe plugin name (1-64 lowercase letters, "
                f"digits, '-', '_' or '.', starting and ending with a letter or digit)")
    if name in RESERVED_NAMES or name.startswith(("epoch_", ".")):
        return f"its name '{name}' is reserved for vitscope's own files in an output folder"
    return None


def check_name(name: Any) -> str:
    """`name` if it is a safe plugin name, else PluginError."""
    problem = name_problem(name)
    if problem:
        raise PluginError(f"Plugin {short_repr(name)}: {problem}.")
    return name
