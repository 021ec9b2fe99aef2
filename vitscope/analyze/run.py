"""Render plugins on a dump: what `vitscope analyze` and training-time visualisation share.

    registry = discover()
    chosen = registry.select(["rollout", "cls-heatmap"])
    results = render_plugins(dump_path, chosen, run_dir, {"rollout": {"fusion": "max"}})
    # -> run_dir/<plugin>/..., run_dir/manifest.json, run_dir/index.html

Each plugin renders into `run_dir/<plugin>/` (`run_dir/<plugin>@<key=value,...>/` when its
options differ from the defaults: vitscope.render.setting_folders), isolated in a child process of its own
(vitscope.analyze.isolation): an exception, a crash or a hang past the time limit in one is recorded
(message, and the traceback in `<plugin>/error.log`) and the others still run. Everything is
rendered into temporary folders and swapped in at the end by one journalled commit
(vitscope.analyze.staging), under the run folder's lock. `run_dir/manifest.json` accumulates what
every plugin wrote, so index.html lists the figures of earlier `analyze` calls into the same
folder too.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitscope.errors import PluginError
from vitscope.analyze.isolation import DEFAULT_TIMEOUT, run_plugin
from vitscope.plugin import STATIC_FORMATS
from vitscope.analyze.registry import PluginEntry
from vitscope.render.index_page import DOC_SUFFIXES, IMAGE_SUFFIXES, PAGE_SUFFIXES
from vitscope.render.setting_folders import changed_options, folder_problem, setting_folder
from vitscope._internal.signals import terminate_as_exception
from vitscope.render.index_page import write_index
from vitscope.analyze.staging import ERROR_LOG, MANIFEST, MARKER, Staging  # noqa: F401 (MARKER re-exported)
from vitscope.errors import WriteError


STATIC_SUFFIXES = IMAGE_SUFFIXES + DOC_SUFFIXES   # what --static asks for (PNG, SVG, PDF, GIF)
MAX_MANIFEST_BYTES = 64 << 20   # a run of every plugin with 1,000 settings takes a few MB


@dataclass
class PluginResult:
    name: str
    package: str
    ok: bool
    files: list[Path] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    out_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)
    staged: Path | None = None     # the temporary folder it rendered into, until the commit
    description: str = ""          # the plugin's one line, for index.html
    missing: list[str] = field(default_factory=list)   # kinds of figure asked for, not written
    folder: str = ""               # its folder under the run: name, or name@setting (settings)

    @property
    def key(self) -> str:
        """The folder (and manifest key) of this result: the plugin's name, or for options
        other than the defaults `name@key=value,...` (vitscope.render.setting_folders)."""
        return self.folder or self.name

    def line(self) -> str:
        if self.ok:
            text = (f"ok      {self.key:<18} {len(self.files):>3} files  {self.seconds:6.1f} s  "
                    f"{self.out_dir}")
        else:
            text = f"FAILED  {self.key:<18} {self.error}"
        return "\n".join([text] + [f"        warning: {w}" for w in self.warnings])


def union_requires(entries: Iterable[PluginEntry],
                   values: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The hook patterns the chosen (working) plugins need with their options `values`
    (PluginEntry.requires_for), each once, in order."""
    values = values or {}
    return list(dict.fromkeys(p for e in entries if e.ok
                              for p in e.requires_for(values.get(e.name))))


def map_requests(entries: Iterable[PluginEntry], values: dict[str, dict[str, Any]] | None = None
                 ) -> list[tuple[str, list[str], dict[str, Any]]]:
    """(plugin, the methods of its `map:<method>` hooks, its `--opt` values) for each chosen
    plugin that reads maps made with the model: plain data, read without torch, which
    `map_options_from` turns into options where the model is (analyze's capture process)."""
    from vitscope.names import split_maps
    out = []
    for e in entries:
        if not e.ok:
            continue
        given = dict((values or {}).get(e.name) or {})
        methods = split_maps(e.requires_for(given))[1]
        if methods:
            out.append((e.name, methods, given))
    return out


def map_options_from(requests: list[tuple[str, list[str], dict[str, Any]]]
                     ) -> dict[str, dict[str, Any]]:
    """{method: options} for `map_requests`: each plugin's `--opt` values that its method has
    (integrated-gradients.steps=16 -> {"integrated-gradients": {"steps": 16}}), which the
    capture runs the method with. Two plugins asking one method for different values is one
    sentence. Imports the methods that need the model (torch) only when there are any."""
    out: dict[str, dict[str, Any]] = {}
    if not requests:
        return out
    from vitscope.capture.model_maps import check_model_maps
    owner: dict[tuple[str, str], str] = {}
    for plugin, methods, given in requests:
        for method in check_model_maps(methods):
            for key, value in given.items():
                if key not in method.defaults:
                    continue
                if key in out.get(method.name, {}) and out[method.name][key] != value:
                    raise PluginError(f"Plugins {owner[method.name, key]} and {plugin} ask for "
                                      f"{method.name}'s maps with {key}={out[method.name][key]} "
                                      f"and {key}={value}; one capture stores one of them, so "
                                      f"give both the same value.")
                out.setdefault(method.name, {})[key] = value
                owner[method.name, key] = plugin
    return out


def map_options(entries: Iterable[PluginEntry],
                values: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """{method: options} for the `map:<method>` hooks the chosen plugins read
    (map_options_from of map_requests)."""
    return map_options_from(map_requests(entries, values))


def missing_hooks(available: Iterable[str], entries: Iterable[PluginEntry],
                  model_hooks: Iterable[str] | None = None,
                  values: dict[str, dict[str, Any]] | None = None) -> dict[str, list[str]]:
    """plugin name -> its `requires` patterns that `available` (a model's hook points, or what
    a dump holds; `grad:<hook>` for gradients, see vitscope.names.with_grads) does not fully
    serve, each as text for an error message.

    A pattern is resolved against `model_hooks` (every hook point of the model; default
    `available`), and all of its matches must be available: a dump holding blocks 1–2 of
    `blocks.*.attn.weights` does not serve a plugin that reads every block, which would
    otherwise run on part of the model and number its layers wrongly. `values`: the plugins'
    options, for plugins whose reads depend on them (PluginEntry.requires_for)."""
    from vitscope.names import (ATTENTION, SLICES, match_names, optional_of, slice_of,
                                summarize_names)
    names = list(available)
    have = set(names)
    universe = list(model_hooks) if model_hooks else names
    missing: dict[str, list[str]] = {}
    for e in entries:
        if not e.ok:
            continue
        gone = []
        for pattern in e.requires_for((values or {}).get(e.name)):
            inner = optional_of(pattern)
            if inner is not None:   # required only where the model has it
                pattern = inner
                if not match_names(inner, universe):
                    continue
            wanted = match_names(pattern, universe) or [pattern]
            lacking = [w for w in wanted if w not in have]
            if len(lacking) == len(wanted):
                no_cls = pattern.rpartition(".")[2] in SLICES and not any(
                    slice_of(n) for n in universe) and any(
                    n.endswith(ATTENTION) for n in universe)
                gone.append(f"{pattern} (this model has no CLS token)" if no_cls else pattern)
            elif lacking:
                gone.append(f"{pattern} (lacks {summarize_names(lacking)})")
        if gone:
            missing[e.name] = gone
    return missing


@dataclass(frozen=True)
class RenderRequest:
    """How plugins render in one run, the same for each of them: built once by the command
    (analyze, score, train --analyze-every) and handed down."""
    static: bool = True             # static figures (options.format)
    interactive: bool = True        # Plotly HTML pages
    fmt: str = "png"                # png | svg | pdf
    limit: int | None = None        # the first `limit` images of the dump (None: all)
    smooth: bool = False            # maps smoothed bilinearly (analyze --smooth)
    timeout: float | None = DEFAULT_TIMEOUT   # seconds per plugin (None or 0: no limit)
    assets_dir: Path | None = None  # where shared files (plotly.min.js) go; default the run's

    @classmethod
    def of(cls, request: "RenderRequest | None", settings: dict[str, Any]) -> "RenderRequest":
        """`request` (or the defaults) with the given fields replaced."""
        return dataclasses.replace(request or cls(), **settings)


def render_plugin(entry: PluginEntry, dump, run_dir: Path, values: dict[str, Any] | None = None,
                  request: RenderRequest | None = None, **settings: Any) -> PluginResult:
    """Render one plugin into run_dir/<name>/, whatever its options (in its own process,
    swapped in on success; no manifest or index; `render_plugins` is what gives each setting
    a folder of its own); never raises for the plugin's own faults. `dump` is a Dump or the
    path of one; `settings` override fields of `request`."""
    path = Path(getattr(dump, "path", dump))
    req = RenderRequest.of(request, settings)
    with Staging(run_dir, pages=write_index) as stage:
        result = _render_staged(stage, entry, path, values, req)
        stage.commit(*_swaps([result]))
    return result


def _render_staged(stage: Staging, entry: PluginEntry, dump_path: Path,
                   values: dict[str, Any] | None, req: RenderRequest,
                   by_setting: bool = False) -> PluginResult:
    """Render `entry` into a new folder of `stage` (vitscope.analyze.staging) through its own
    child process (vitscope.analyze.isolation). The result names the plugin's final folder:
    `<name>`, or with `by_setting` `<name>@<setting>` for options other than the defaults."""
    key = output_folder(entry, values) if by_setting else entry.name
    final = stage.final(key) if folder_problem(key) is None else None
    result = PluginResult(entry.name, entry.source, False, out_dir=final,
                          description=_description(entry), folder=key)
    if not entry.ok:
        result.error = entry.problem()
        return result
    try:
        folder = stage.folder(key)
    except PluginError as e:
        result.error = str(e)
        return result
    options = entry.render_options(values, static=req.static, interactive=req.interactive,
                                   format=req.fmt, limit=req.limit,
                                   run_dir=Path(req.assets_dir or stage.run_dir).absolute(),
                                   smooth=req.smooth)
    outcome = run_plugin(entry, dump_path, folder, options, timeout=req.timeout,
                         shown_dir=final)
    if outcome.disk_full:   # not the plugin's fault: the run stops, nothing is swapped in
        raise WriteError(outcome.disk_full)
    if outcome.breach:      # the dump or the run folder changed: nothing of the run is trusted
        raise PluginError(outcome.breach)
    result.ok, result.warnings, result.seconds = outcome.ok, outcome.warnings, outcome.seconds
    result.files = [final / f.relative_to(folder) for f in outcome.files]
    result.staged = folder
    if outcome.ok:   # "ok" must not hide that the figures asked for are not there
        result.missing = unwritten_kinds(result.files, static=req.static,
                                         interactive=req.interactive)
        if result.missing:
            result.warnings.append(missing_note(result.missing))
    if not outcome.ok:
        result.error = outcome.error
        if outcome.logged:
            result.error += (f" (details in {final / ERROR_LOG}; report it to the package "
                             f"{entry.source})")
    return result


def unwritten_kinds(files: Iterable[Path], *, static: bool, interactive: bool) -> list[str]:
    """The kinds of figure asked for ("static", "interactive") of which `files` hold none.
    Nothing asked for (`vitscope score` renders map plugins for their results alone): none."""
    written = {Path(f).suffix.lower() for f in files}
    asked = {"static": (static, STATIC_SUFFIXES), "interactive": (interactive, PAGE_SUFFIXES)}
    return [kind for kind, (wanted, suffixes) in asked.items()
            if wanted and not written & set(suffixes)]


def missing_note(kinds: list[str]) -> str:
    """The warning under a plugin that succeeded without writing the figures asked for."""
    if len(kinds) == 2:
        return ("wrote no figure, static or interactive, though both were asked for: this "
                "plugin may produce only results (results.npz, summary.json)")
    if kinds == ["interactive"]:
        return ("wrote no interactive figure (no .html file) though one was asked for: this "
                "plugin may have only static output")
    return ("wrote no static figure (no PNG, SVG, PDF or GIF file) though one was asked for: "
            "this plugin may have only interactive output")


def _swaps(results: Iterable[PluginResult]) -> tuple[list[str], list[str]]:
    """(plugins whose new folder replaces the old, failed ones whose error.log is kept)."""
    staged = [r for r in results if r.staged is not None]
    return [r.key for r in staged if r.ok], [r.key for r in staged if not r.ok]


def output_folder(entry: PluginEntry, values: dict[str, Any] | None) -> str:
    """Where `entry` rendered with `values` goes under the run folder: its name, or
    `name@key=value,...` for options other than its defaults (vitscope.render.setting_folders)."""
    return setting_folder(entry.name, changed_options(entry, values)) if entry.ok else entry.name


def render_plugins(dump_path: str | Path, entries: list[PluginEntry], run_dir: str | Path,
                   values: dict[str, dict[str, Any]] | None = None,
                   request: RenderRequest | None = None, *,
                   echo: Callable[[str], None] | None = None,
                   info: dict[str, Any] | None = None,
                   failed: Iterable[PluginResult] = (),
                   announce: bool = False, **settings: Any) -> list[PluginResult]:
    """Render every entry on one dump, then record them in the run's manifest and index.html.
    Each renders into `run_dir/<name>/`, or `run_dir/<name>@<key=value,...>/` when its
    `values` differ from its defaults (vitscope.render.setting_folders), so settings coexist.
    How they render is `request` (a RenderRequest), with `settings` overriding its fields.
    `failed`: results of plugins that failed before rendering (broken, missing hook points),
    recorded in the manifest and index.html with the others and returned after them.

    Everything is rendered into temporary folders and swapped in by one journalled commit at
    the end (vitscope.analyze.staging), under the run folder's lock: a run that is killed or
    fails leaves the folder as it was, and a plugin that fails keeps its earlier figures.
    `announce`: echo a line as each plugin starts (the line after it gives its time)."""
    from vitscope.dump import Dump

    req = RenderRequest.of(request, settings)
    if req.fmt not in STATIC_FORMATS:
        raise PluginError(f"Unknown figure format '{req.fmt}'; use one of "
                          f"{', '.join(STATIC_FORMATS)}.")
    run_dir = Path(run_dir).absolute()
    dump_path = Path(dump_path).absolute()
    results = []
    with Dump.open(dump_path) as dump:
        # Plugins may rely on it: options.limit is None or a count the dump really holds.
        limit = None if req.limit is None else min(int(req.limit), len(dump))
        req = dataclasses.replace(req, limit=limit)
        held, model_hooks = list(dump.names), dump.model_names
        count = len(dump) if limit is None else limit
        run_info = {**describe_dump(dump, limit), **(info or {})}
    with terminate_as_exception(), Staging(run_dir, pages=write_index) as stage:
        for entry in entries:
            gone = missing_hooks(held, [entry], model_hooks, values).get(entry.name)
            if gone:  # never call render on a dump without what the plugin reads
                key = output_folder(entry, (values or {}).get(entry.name))
                res = PluginResult(entry.name, entry.source, False, out_dir=run_dir / key,
                                   error=f"needs hook points {', '.join(gone)}, which the dump "
                                         f"{dump_path} does not hold", folder=key)
            else:
                if echo and announce:   # a slow plugin is not silence: say what runs now
                    echo(f"…       {entry.name:<18} rendering ({count} images)")
                res = _render_staged(stage, entry, dump_path, (values or {}).get(entry.name),
                                     req, by_setting=True)
            results.append(res)
            if echo:
                echo(res.line())
        results += list(failed)
        manifest = merge_manifest(read_manifest(run_dir), results, run_info, values or {},
                                  run_dir)
        stage.commit(*_swaps(results), manifest=manifest)
    return results


def describe_dump(dump, limit: int | None = None) -> dict[str, Any]:
    """What index.html states about the data and model of a run."""
    a = dump.attrs
    n = len(dump) if limit is None else min(len(dump), limit)
    return {
        "checkpoint": a.get("checkpoint_path") or "",
        "checkpoint_sha256": a.get("checkpoint_sha256") or "",
        "data": a.get("dataset", ""), "split": a.get("split", ""), "images": n,
        "dump": str(Path(dump.path).resolve()), "model_config": dump.model_config,
        "classes": dump.classes,
        "has_masks": dump.masks is not None,
    }


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """run_dir/manifest.json, or an empty one when it is missing or unreadable."""
    from vitscope._internal.bounded import loads_json
    path = Path(run_dir) / MANIFEST
    try:   # capped: a manifest nested too deep or too large is as good as none
        manifest = loads_json(path.read_bytes(), "manifest.json", max_bytes=MAX_MANIFEST_BYTES) \
            if path.exists() else {}
    except (OSError, ValueError):
        manifest = {}
    if not isinstance(manifest, dict) or not isinstance(manifest.get("plugins", {}), dict):
        manifest = {}
    return manifest


def merge_manifest(manifest: dict[str, Any], results: list[PluginResult], info: dict[str, Any],
                   values: dict[str, dict[str, Any]], run_dir: Path) -> dict[str, Any]:
    """The manifest after this run: each plugin's entry replaced by its new result, except
    that a failure never replaces an earlier success (whose figures stay): that entry keeps
    its files and gains `rerun_error`, shown in index.html."""
    manifest = dict(manifest)
    plugins = dict(manifest.get("plugins") or {})
    manifest["run"] = {**info, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for r in results:
        earlier = plugins.get(r.key)
        if not r.ok and isinstance(earlier, dict) and earlier.get("ok"):
            plugins[r.key] = {**earlier, "rerun_error": r.error,
                               "rerun_at": manifest["run"]["updated"]}
            continue
        plugins[r.key] = {
            "plugin": r.name, "package": r.package, "ok": r.ok, "error": r.error,
            "seconds": round(r.seconds, 3),
            "description": r.description,
            "files": [_rel(f, run_dir) for f in r.files],
            "warnings": list(r.warnings), "missing_outputs": list(r.missing),
            "options": {k: v for k, v in (values.get(r.name) or {}).items()},
            "run": manifest["run"],
        }
    manifest["plugins"] = plugins
    return manifest


def _description(entry: PluginEntry) -> str:
    """The plugin's one-line description ("" when it has none or it cannot be read)."""
    try:
        return str(entry.description or "").strip().splitlines()[0][:300] if entry.ok else ""
    except Exception:   # a plugin's broken attribute must not stop the run
        return ""


# ------------------------------------------------------------------------------------ helpers


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)
