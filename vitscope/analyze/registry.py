"""Finding plugins: entry points of the `vitscope.plugins` group, loaded and validated one by one.

Discovery happens when a command asks (`discover()`), never at import time. A plugin that
fails to import or breaks the protocol (vitscope.plugin.protocol) is reported by name, package,
reason and fix, and never stops the CLI or other plugins. `VITSCOPE_DISABLE_PLUGIN_AUTOLOAD=1`
loads only the built-ins."""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import inspect
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitscope import __version__
from vitscope._internal.text import first_line, short_repr
from vitscope.plugins import BUILTINS
from vitscope.errors import PluginError
from vitscope.plugin.protocol import (_TRUE, RESERVED, Option, RenderOptions, member,
                                      name_problem)

GROUP = "vitscope.plugins"


AUTOLOAD_ENV = "VITSCOPE_DISABLE_PLUGIN_AUTOLOAD"


@dataclass
class PluginEntry:
    """One registered plugin: where it comes from, and once loaded, the object or why not."""
    name: str
    value: str                  # "module:attr" of the entry point
    package: str                # distribution name
    version: str
    builtin: bool
    plugin: Any = None          # the loaded, validated plugin object
    error: str | None = None    # why it is broken
    fix: str | None = None      # what to do about it
    loaded: bool = False
    # What the plugin declares, read once when it loads: a plugin attribute that raises makes
    # the plugin broken there, never `vitscope plugins -v` or analyze later.
    _requires: tuple[str, ...] = ()
    _produces: tuple[str, ...] = ()
    _options: tuple["Option", ...] = ()
    _description: str = ""

    @property
    def ok(self) -> bool:
        return self.load().error is None

    @property
    def status(self) -> str:
        return "ok" if self.ok else f"broken: {self.error}"

    @property
    def source(self) -> str:
        return f"{self.package} {self.version}".strip()

    @property
    def requires(self) -> tuple[str, ...]:
        return self._requires if self.ok else ()

    @property
    def options(self) -> tuple[Option, ...]:
        return self._options if self.ok else ()

    @property
    def produces(self) -> tuple[str, ...]:
        """What it declares to produce: ("maps",) for a map plugin `vitscope score` evaluates."""
        return self._produces if self.ok else ()

    @property
    def description(self) -> str:
        return self._description if self.ok else ""

    def problem(self) -> str:
        """One sentence naming the plugin, its package, the reason and the fix."""
        return (f"Plugin '{self.name}' (package {self.source}) is broken: {self.error}; "
                f"{self.fix}")

    def load(self) -> "PluginEntry":
        """Import and validate once; never raises (the error is recorded instead)."""
        if self.loaded:
            return self
        self.loaded = True
        try:
            obj = _import(self.value)
        except BaseException as e:  # a plugin's import may raise anything, even SystemExit
            if isinstance(e, KeyboardInterrupt):
                raise
            self.error = f"importing {self.value} failed ({type(e).__name__}: {first_line(e, 200)})"
            self.fix = self._builtin_fix() or (
                f"reinstall or upgrade it (pip install -U {self.package}), uninstall it (pip "
                f"uninstall {self.package}), or set {AUTOLOAD_ENV}=1 to load only the built-ins")
            return self
        try:
            self.plugin = _instantiate(obj)
            self._requires, self._produces, self._options, self._description = \
                _validate(self.plugin, self.name)
        except _Malformed as e:
            self.plugin = None
            self.error = str(e)
            self.fix = self._builtin_fix() or (
                f"fix it to follow the protocol in vitscope.plugin (name, requires, "
                f"render(dump, out_dir, options)) or uninstall it (pip uninstall {self.package})")
        except BaseException as e:   # __init__ may raise anything, even SystemExit
            if isinstance(e, KeyboardInterrupt):
                raise
            self.plugin = None
            self.error = f"creating {self.value} failed ({type(e).__name__}: {first_line(e, 200)})"
            self.fix = self._builtin_fix() or f"upgrade or uninstall it (pip uninstall {self.package})"
        return self

    def _builtin_fix(self) -> str | None:
        if not self.builtin:
            return None
        return ("this is a bug in vitscope itself: reinstall it (pip install -e . in a checkout, "
                "or pip install -U vitscope) and report it if it persists")

    def option_map(self) -> dict[str, Option]:
        return {o.name: o for o in self.options}

    def requires_for(self, given: dict[str, Any] | None = None) -> tuple[str, ...]:
        """The hook patterns a render with the options `given` reads: what the plugin's
        optional `requires_for(options)` returns (fewer than `requires`, e.g. token-attention
        with query=cls reads only the CLS rows), else `requires`. A `requires_for` that raises
        or returns anything but a non-empty sequence of patterns falls back to `requires`,
        with a warning."""
        fn = member(self.plugin, "requires_for") if self.ok else None
        if fn is None:
            return self.requires
        try:
            got = fn(self.render_options(given))
            if isinstance(got, (list, tuple)) and got and all(
                    isinstance(p, str) and p for p in got):
                return tuple(got)
            raise TypeError(f"it returned {short_repr(got)}, not a tuple of hook patterns")
        except Exception as err:   # a plugin's own bug: read what it declared in `requires`
            warnings.warn(f"plugin {self.name}: requires_for() failed ({type(err).__name__}: "
                          f"{first_line(err, 200)}); capturing its `requires` instead.", stacklevel=2)
            return self.requires

    def render_options(self, given: dict[str, Any] | None = None, **common: Any) -> RenderOptions:
        """Declared defaults, overridden by `given` (already converted), plus the common keys."""
        values = {o.name: o.default for o in self.options}
        values.update(given or {})
        values.update(common)
        return RenderOptions(values)


class _Malformed(Exception):
    pass


def _import(value: str) -> Any:
    module, _, attr = value.partition(":")
    obj = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


def _instantiate(obj: Any) -> Any:
    if inspect.isclass(obj):
        try:
            return obj()
        except TypeError as e:
            raise _Malformed(f"{obj.__name__}() cannot be created without arguments ({e})") from None
    return obj  # an instance or a module with module-level name/requires/render


_ABSENT = object()


def _read(plugin: Any, attr: str, default: Any = _ABSENT) -> Any:
    """getattr that turns anything an attribute (a property, __getattr__) raises into one
    _Malformed reason."""
    try:
        return getattr(plugin, attr, default)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        raise _Malformed(f"reading its '{attr}' attribute raised {type(e).__name__}: "
                         f"{first_line(e, 200)}") from None


def _validate(plugin: Any, entry_name: str) -> tuple[tuple[str, ...], tuple[str, ...],
                                                     tuple["Option", ...], str]:
    """(requires, produces, options, description) of `plugin`, each read once; _Malformed
    with one reason if it breaks the protocol."""
    values = {a: _read(plugin, a) for a in ("name", "requires", "render")}
    missing = [a for a, v in values.items() if v is _ABSENT]
    if missing:
        raise _Malformed(f"it has no {', '.join(repr(m) for m in missing)} attribute"
                         f"{'s' if len(missing) > 1 else ''}")
    name = values["name"]
    if not isinstance(name, str) or name != entry_name:
        raise _Malformed(f"its name {short_repr(name)} differs from its entry-point name "
                         f"'{entry_name}'")
    req = values["requires"]
    if isinstance(req, str) or not isinstance(req, (tuple, list)) or \
            not all(isinstance(r, str) and r for r in req):
        raise _Malformed(f"its requires {short_repr(req)} is not a tuple of hook-name patterns")
    produces = _read(plugin, "produces", ()) or ()
    if isinstance(produces, str) or not isinstance(produces, (tuple, list)) or \
            not all(isinstance(p, str) and p for p in produces):
        raise _Malformed(f"its produces {short_repr(produces)} is not a tuple of names such as "
                         f"('maps',)")
    render = values["render"]
    if not callable(render):
        raise _Malformed("its render attribute is not callable")
    try:
        inspect.signature(render).bind(None, Path("."), RenderOptions())
    except TypeError:
        raise _Malformed(f"its render{inspect.signature(render)} does not take "
                         f"(dump, out_dir, options)") from None
    except ValueError:
        pass  # builtins without a signature: trust them
    options = _read(plugin, "options", ()) or ()
    if isinstance(options, (str, bytes)) or not isinstance(options, Iterable):
        raise _Malformed(f"its options {short_repr(options)} is not a tuple of "
                         f"vitscope.plugin.Option")
    try:
        options = tuple(options)
    except Exception as e:
        raise _Malformed(f"its options cannot be listed ({type(e).__name__}: "
                         f"{first_line(e, 200)})") from None
    seen: set[str] = set()
    for opt in options:
        if not isinstance(opt, Option):
            raise _Malformed(f"its options hold {short_repr(opt)}, not a vitscope.plugin.Option")
        if not opt.name.isidentifier() or opt.name in RESERVED or opt.name in seen:
            raise _Malformed(f"its option name {opt.name!r} is not a unique identifier outside "
                             f"{', '.join(RESERVED)}")
        seen.add(opt.name)
        try:
            opt.convert(opt.default)
        except ValueError as e:
            raise _Malformed(f"the default of its option '{opt.name}' ({opt.default!r}) is "
                             f"invalid: {e}") from None
    text = _read(plugin, "description", None)
    if not text:
        try:
            text = inspect.getdoc(plugin)
        except Exception:
            text = None
    if text is not None and not isinstance(text, str):
        raise _Malformed(f"its description {short_repr(text)} is not a string")
    text = (text or "").strip()
    return tuple(req), tuple(produces), options, text.splitlines()[0] if text else ""


@dataclass
class Registry:
    """The plugins found by one discovery, in name order (duplicates kept, and reported)."""
    entries: list[PluginEntry] = field(default_factory=list)
    autoload: bool = True
    skipped: list[str] = field(default_factory=list)  # third-party names left out by the env var
    unreadable: list[str] = field(default_factory=list)  # distributions that could not be read

    def names(self) -> list[str]:
        return sorted({e.name for e in self.entries})

    def first(self, name: str) -> PluginEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    def get(self, name: str) -> PluginEntry:
        entry = self.first(name)
        if entry is None:
            raise PluginError(self.unknown_message(name))
        return entry.load()

    def select(self, names: Iterable[str] = (), all_: bool = False) -> list[PluginEntry]:
        """The entries for `names` (or every one with all_), unique, in the order asked."""
        chosen: list[PluginEntry] = []
        wanted = self.names() if all_ else list(dict.fromkeys(names))
        for name in wanted:
            chosen.append(self.get(name))
        if all_:  # a clashing duplicate is a chosen plugin too, so it is reported
            chosen += [e.load() for e in self.entries if e not in chosen]
        return chosen

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        skipped = ""
        if name in self.skipped:
            skipped = (f" It is installed but {AUTOLOAD_ENV}=1 loads only the built-ins; unset "
                       f"it to use '{name}'.")
        installed = ", ".join(names) if names else "none"
        return f"No plugin '{name}'.{hint}{skipped} Installed: {installed} (vitscope plugins)."


def autoload_enabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in _TRUE


def discover(autoload: bool | None = None) -> Registry:
    """Find plugins through the `vitscope.plugins` entry points (nothing is imported yet).

    Each installed distribution is read on its own: one whose metadata cannot be read (an
    undecodable byte in METADATA or entry_points.txt, a missing file) is left out and, when
    its raw entry points mention the group, reported in `registry.unreadable`; it never
    stops discovery of the others."""
    autoload = autoload_enabled() if autoload is None else autoload
    registry = Registry(autoload=autoload)
    seen: dict[str, PluginEntry] = {}
    found: list[PluginEntry] = []
    for name, value, package, version in _group_entry_points(registry.unreadable):
        builtin = package == "vitscope" and BUILTINS.get(name) == value
        found.append(PluginEntry(name, value, package, version, builtin))
    have_builtins = {e.name for e in found if e.builtin}
    for name, value in BUILTINS.items():  # a source tree that was never installed
        if name not in have_builtins:
            found.append(PluginEntry(name, value, "vitscope", __version__, True))
    found.sort(key=lambda e: (not e.builtin, e.name, e.package))
    for entry in found:
        if not entry.builtin and not autoload:
            registry.skipped.append(entry.name)
            continue
        first = seen.get(entry.name)
        bad_name = name_problem(entry.name)
        if bad_name:
            entry.loaded, entry.error = True, bad_name
            entry.fix = (f"the package must rename its entry point; until then uninstall it "
                         f"(pip uninstall {entry.package})")
        elif first is not None:
            if first.value == entry.value:
                continue  # the same distribution seen twice on sys.path
            entry.loaded, entry.error = True, (
                f"its name is already taken by {first.value} from package {first.source}")
            entry.fix = f"uninstall one of the two (pip uninstall {entry.package})"
        else:
            seen[entry.name] = entry
        registry.entries.append(entry)
    registry.entries.sort(key=lambda e: (e.name, e.error is not None))
    return registry


def _group_entry_points(unreadable: list[str]) -> list[tuple[str, str, str, str]]:
    """(name, value, package, version) of every `vitscope.plugins` entry point, read one
    sys.path folder and one distribution at a time; what cannot be read goes to
    `unreadable` as a sentence."""
    out = []
    for folder in list(sys.path):
        try:
            dists = list(md.distributions(path=[folder]))
        except Exception as e:   # an unreadable folder on sys.path
            unreadable.append(f"the folder '{folder}' on sys.path cannot be searched for "
                              f"plugins ({type(e).__name__}: {first_line(e, 200)})")
            continue
        for dist in dists:
            try:
                eps = [ep for ep in dist.entry_points if ep.group == GROUP]
            except Exception as e:
                if _mentions_group(dist):
                    where = _dist_path(dist)
                    unreadable.append(
                        f"the plugin package at '{where}' has unreadable entry points "
                        f"({type(e).__name__}: {first_line(e, 200)}); reinstall it (pip install "
                        f"--force-reinstall {_dist_label(dist)[0]}) or remove that folder")
                continue
            if not eps:
                continue
            package, version = _dist_label(dist)
            out += [(ep.name, ep.value, package, version) for ep in eps]
    return out


TORCH_AUTOLOAD_ENV = "TORCH_DEVICE_BACKEND_AUTOLOAD"


def guard_torch_import() -> list[str]:
    """Keep one undecodable entry_points.txt from breaking `import torch`.

    torch reads every installed distribution's entry points when it is imported (to load
    out-of-tree device backends), so such a file makes `import torch` raise
    UnicodeDecodeError. Before torch is imported, this checks the files (~2 ms for 100
    distributions) and, if one cannot be read, sets TORCH_DEVICE_BACKEND_AUTOLOAD=0 (unless
    the user set it). Returns the paths of the unreadable files."""
    if "torch" in sys.modules or os.environ.get(TORCH_AUTOLOAD_ENV) is not None:
        return []
    bad = []
    for folder in list(sys.path):
        try:
            dists = list(md.distributions(path=[folder]))
        except Exception:
            continue
        for dist in dists:
            try:
                dist.read_text("entry_points.txt")
            except (ValueError, OSError):    # UnicodeDecodeError is a ValueError
                bad.append(str(Path(_dist_path(dist)) / "entry_points.txt"))
    if bad:
        os.environ[TORCH_AUTOLOAD_ENV] = "0"
    return bad


def _dist_path(dist: md.Distribution) -> str:
    return str(getattr(dist, "_path", "") or "?")


def _dist_label(dist: md.Distribution) -> tuple[str, str]:
    """(name, version) from the metadata, else from the .dist-info folder name."""
    try:
        meta = dist.metadata
        name, version = meta["Name"], meta["Version"]
        if name:
            return str(name), str(version or "")
    except Exception:  # a distribution with broken metadata must not break discovery
        pass
    stem = Path(_dist_path(dist)).name
    for suffix in (".dist-info", ".egg-info"):
        stem = stem[:-len(suffix)] if stem.endswith(suffix) else stem
    name, _, version = stem.partition("-")
    return (name or "?") + " (metadata unreadable)", version


def _mentions_group(dist: md.Distribution) -> bool:
    """Whether a distribution's raw entry_points.txt names the vitscope.plugins group."""
    path = getattr(dist, "_path", None)
    try:
        return path is not None and GROUP.encode() in (Path(path) / "entry_points.txt").read_bytes()
    except OSError:
        return False


