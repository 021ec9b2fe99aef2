"""One output folder per setting of a plugin's options, so two settings sit side by side.

    changed_options(entry, {"fusion": "max", "discard_ratio": 0.9})
        -> {"discard_ratio": 0.9, "fusion": "max"}       # only values that differ from defaults
    setting_folder("rollout", {})                                   -> "rollout"
    setting_folder("rollout", {"discard_ratio": 0.9, "fusion": "max"})
        -> "rollout@discard_ratio=0.9,fusion=max"

`vitscope analyze -p rollout --opt rollout.fusion=max CKPT` then renders into
`outputs/<run>/rollout@fusion=max/` and leaves the default `outputs/<run>/rollout/` alone, so
the two can be compared without `-o`; index.html shows both, each titled with its setting,
and manifest.json records the plugin and its options per folder. An option given at its
default value names no setting (`--opt rollout.fusion=mean` renders into `rollout/`).

Folder names stay portable: values are written as the user would type them (floats as
their shortest exact form, so 0.1234567 and 0.1234568 stay apart), characters
outside `[A-Za-z0-9._+-]` become `_`, and a name that had to be changed that way or is longer
than MAX_SUFFIX gets a hash of the exact options, so two settings never share a folder.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

SEP = "@"
MAX_SUFFIX = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
SUFFIX_RE = re.compile(r"[A-Za-z0-9._+=,~-]{1,%d}" % MAX_SUFFIX)


def changed_options(entry, values: dict[str, Any] | None) -> dict[str, Any]:
    """The options in `values` whose value differs from the plugin's declared default,
    sorted by name."""
    defaults = {o.name: o.default for o in entry.options}
    return {k: v for k, v in sorted((values or {}).items())
            if k not in defaults or not _same(v, defaults[k])}


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):   # True == 1, but not as options
        return value is default
    return value == default


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)   # repr: exact, shortest


def setting_folder(plugin: str, changed: dict[str, Any]) -> str:
    """The folder (under the run folder) of `plugin` rendered with the `changed` options."""
    if not changed:
        return plugin
    parts = []
    for key, value in sorted(changed.items()):
        parts.append(f"{_UNSAFE.sub('_', str(key))}={_UNSAFE.sub('_', _text(value))}")
    suffix = ",".join(parts)
    exact = ",".join(f"{k}={_text(v)}" for k, v in sorted(changed.items()))
    if suffix != exact or len(suffix) > MAX_SUFFIX:
        digest = hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode())
        suffix = f"{suffix[:MAX_SUFFIX - 9]}~{digest.hexdigest()[:8]}"
    return f"{plugin}{SEP}{suffix}"


def plugin_of(folder: str) -> str:
    """The plugin name a setting folder belongs to: "rollout@fusion=max" -> "rollout"."""
    return str(folder).partition(SEP)[0]


def folder_problem(folder: Any) -> str | None:
    """Why `folder` cannot be a plugin output folder's name, or None when it can."""
    from vitscope.plugin.protocol import name_problem

    if not isinstance(folder, str):
        return name_problem(folder)
    plugin, sep, suffix = folder.partition(SEP)
    problem = name_problem(plugin)
    if problem is None and sep and not SUFFIX_RE.fullmatch(suffix):
        problem = (f"its setting '{suffix[:40]}' is not 1-{MAX_SUFFIX} of the characters "
                   f"A-Z a-z 0-9 . _ + = , ~ -")
    return problem
