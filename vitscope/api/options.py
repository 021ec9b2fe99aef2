"""Options as the API takes them (`options={"rollout": {"discard_ratio": 0.9}}`), converted
and checked by the plugins' declared `Option`s, as `--opt` is on the command line."""
from __future__ import annotations

import difflib
from typing import Any

from vitscope.errors import ConfigError


def plugin_options(entry, given: dict[str, Any] | None) -> dict[str, Any]:
    """`given` converted and checked by a plugin's declared options (as `--opt` is)."""
    return convert_options(f"Plugin '{entry.name}'", entry.option_map(), given or {})


def convert_options(who: str, known: dict, given: dict[str, Any],
                    also: tuple[str, ...] = ()) -> dict[str, Any]:
    """Each value converted by its declared Option (`known`); keys in `also` pass as they
    are; anything else is one sentence naming the options there are."""
    values = {}
    for key, value in given.items():
        if key not in known and key not in also:
            allowed = sorted(set(known) | set(also))
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{who} has no option '{key}'.{hint} Its options: "
                              f"{', '.join(allowed) or 'none'}.")
        if key in known:
            try:
                value = known[key].convert(value)
            except ValueError as e:
                raise ConfigError(f"{who}: option {key}={value!r} is invalid: {e} "
                                  f"({known[key].help.rstrip('.')}).") from None
        values[key] = value
    return values
