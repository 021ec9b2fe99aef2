"""`--opt plugin.key=value`: parsed against the chosen plugins' declared options, and checked against
the model before anything is captured or written."""
from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable
from typing import Any

from vitscope._internal.text import first_line
from vitscope.analyze.registry import PluginEntry, Registry
from vitscope.plugin.protocol import member
from vitscope.errors import NotApplicable, PluginError, VitscopeError
from vitscope.plugin.protocol import ModelShape


def parse_opts(specs: Iterable[str], chosen: list[PluginEntry],
               registry: Registry) -> dict[str, dict[str, Any]]:
    """`["rollout.discard_ratio=0.9", ...]` -> {"rollout": {"discard_ratio": 0.9}}, validated.

    Raises PluginError naming the bad `--opt` with what is allowed.
    """
    by_name = {e.name: e for e in chosen if e.error is None}
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        lhs, eq, text = spec.partition("=")
        plugin_name, dot, key = lhs.strip().partition(".")
        if not eq or not dot or not plugin_name or not key:
            raise PluginError(f"--opt '{spec}' is not of the form plugin.key=value; write e.g. "
                              f"--opt rollout.discard_ratio=0.9.")
        entry = by_name.get(plugin_name)
        if entry is None:
            if registry.first(plugin_name) is None:
                raise PluginError(f"--opt '{spec}' names an unknown plugin: "
                                  + registry.unknown_message(plugin_name))
            if any(e.name == plugin_name for e in chosen):
                raise PluginError(f"--opt '{spec}' is for plugin '{plugin_name}', which is "
                                  f"broken; see `vitscope plugins`.")
            raise PluginError(f"--opt '{spec}' is for plugin '{plugin_name}', which is not "
                              f"selected; add --plugin {plugin_name}.")
        options = entry.option_map()
        if key not in options:
            close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            known = ", ".join(options) if options else "none"
            raise PluginError(f"Plugin '{plugin_name}' has no option '{key}'.{hint} Its options: "
                              f"{known} (vitscope plugins --verbose).")
        try:
            value = options[key].convert(text.strip())
        except ValueError as e:
            raise PluginError(f"--opt {spec} is invalid: {e} ({options[key].help.rstrip('.')})."
                              ) from None
        out.setdefault(plugin_name, {})[key] = value
    return out


def check_options(entries: Iterable[PluginEntry], values: dict[str, dict[str, Any]],
                  shape: ModelShape) -> dict[str, NotApplicable]:
    """Call each plugin's optional `check(options, shape)` (layer and token ranges against the
    model) before the output folder is touched: a bad --opt fails with its sentence and
    leaves earlier figures alone. A plugin without `check` is checked when it renders.
    Returns the plugins that cannot apply to this model at all (name -> NotApplicable)."""
    unfit: dict[str, NotApplicable] = {}
    for e in entries:
        check = member(e.plugin, "check") if e.ok else None
        if check is None:
            continue
        options = e.render_options(values.get(e.name))
        try:
            check(options, shape)
        except NotApplicable as err:
            unfit[e.name] = err
        except VitscopeError:
            raise
        except Exception as err:   # a plugin's own bug in check(): its render may still work
            warnings.warn(f"plugin {e.name}: check() raised {type(err).__name__}: "
                          f"{first_line(err, 200)}; its options are checked when it renders.",
                          stacklevel=2)
    return unfit
