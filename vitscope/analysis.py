"""Render plugins on a dump: what `vitscope analyze` and training-time visualisation share.

    registry = discover()
    chosen = registry.select(["rollout", "cls-heatmap"])
    results = render_plugins(dump_path, chosen, run_dir, {"rollout": {"fusion": "max"}})
    write_index(run_dir)                                  # outputs/<run>/index.html

Each plugin renders into `run_dir/<plugin>/`, isolated: an exception in one is recorded
(message, and the traceback in `<plugin>/error.log`) and the others still run.
`run_dir/manifest.json` accumulates what every plugin wrote, so index.html lists the figures of
earlier `analyze` calls into the same folder too.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitscope.errors import PluginError, VitscopeError
from vitscope.paths import make_output_dir
from vitscope.plugin import STATIC_FORMATS, PluginEntry, discover
from vitscope.writing import is_disk_full, write_failure

MARKER = ".vitscope-plugin"   # marks a folder as plugin output, so a re-run may clear it
MANIFEST = "manifest.json"


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

    def line(self) -> str:
        if self.ok:
            text = (f"ok      {self.name:<18} {len(self.files):>3} files  {self.seconds:6.1f} s  "
                    f"{self.out_dir}")
        else:
            text = f"FAILED  {self.name:<18} {self.error}"
        return "\n".join([text] + [f"        warning: {w}" for w in self.warnings])


def union_requires(entries: Iterable[PluginEntry]) -> list[str]:
    """The hook patterns the chosen (working) plugins need, each once, in order."""
    return list(dict.fromkeys(p for e in entries if e.ok for p in e.requires))


def missing_hooks(available: Iterable[str], entries: Iterable[PluginEntry],
                  model_hooks: Iterable[str] | None = None) -> dict[str, list[str]]:
    """plugin name -> its `requires` patterns that `available` (a model's hook points, or what
    a dump holds; `grad:<hook>` for gradients, see vitscope.names.with_grads) does not fully
    serve, each as text for an error message.

    A pattern is resolved against `model_hooks` (every hook point of the model; default
    `available`), and all of its matches must be available: a dump holding blocks 1–2 of
    `blocks.*.attn.weights` does not serve a plugin that reads every block, which would
    otherwise run on part of the model and number its layers wrongly."""
    from vitscope.hooks import match_names, summarize_names
    names = list(available)
    have = set(names)
    universe = list(model_hooks) if model_hooks else names
    missing: dict[str, list[str]] = {}
    for e in entries:
        if not e.ok:
            continue
        gone = []
        for pattern in e.requires:
            wanted = match_names(pattern, universe) or [pattern]
            lacking = [w for w in wanted if w not in have]
            if len(lacking) == len(wanted):
                gone.append(pattern)
            elif lacking:
                gone.append(f"{pattern} (lacks {summarize_names(lacking)})")
        if gone:
            missing[e.name] = gone
    return missing


def render_plugin(entry: PluginEntry, dump, run_dir: Path, values: dict[str, Any] | None = None,
                  *, static: bool = True, interactive: bool = True, fmt: str = "png",
                  limit: int | None = None, assets_dir: Path | None = None) -> PluginResult:
    """Render one plugin into run_dir/<name>/; never raises for the plugin's own faults.
    `assets_dir` (default run_dir) is where shared files such as plotly.min.js go."""
    out_dir = Path(run_dir) / entry.name
    result = PluginResult(entry.name, entry.source, False, out_dir=out_dir)
    if not entry.ok:
        result.error = entry.problem()
        return result
    _fresh_folder(out_dir)
    options = entry.render_options(values, static=static, interactive=interactive, format=fmt,
                                   limit=limit, run_dir=Path(assets_dir or run_dir))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            returned = entry.plugin.render(dump, out_dir, options)
        result.warnings = _plugin_warnings(caught)
        result.files = _checked_files(returned, out_dir)
        result.ok = True
    except VitscopeError as e:
        _stop_if_disk_failed(e, out_dir)
        result.error = str(e)
    except (Exception, SystemExit) as e:  # a plugin's bug must not stop the other plugins
        _stop_if_disk_failed(e, out_dir)
        log = out_dir / "error.log"
        with contextlib.suppress(OSError):
            log.write_text(traceback.format_exc())
        result.error = (f"raised {type(e).__name__}: {_first_line(e)} (traceback in "
                        f"{log}; report it to the package {entry.source})")
    finally:
        result.seconds = time.perf_counter() - t0
        _close_figures()
    return result


def _stop_if_disk_failed(e: BaseException, out_dir: Path) -> None:
    """A full disk (or a read-only folder) is not the plugin's fault, and every plugin after it
    would fail the same way: the run stops with one sentence, the plugin's partial figures go."""
    if is_disk_full(e):
        shutil.rmtree(out_dir, ignore_errors=True)
        raise write_failure(out_dir, e) from None


def render_plugins(dump_path: str | Path, entries: list[PluginEntry], run_dir: str | Path,
                   values: dict[str, dict[str, Any]] | None = None, *, static: bool = True,
                   interactive: bool = True, fmt: str = "png", limit: int | None = None,
                   echo: Callable[[str], None] | None = None,
                   info: dict[str, Any] | None = None,
                   assets_dir: Path | None = None,
                   failed: Iterable[PluginResult] = ()) -> list[PluginResult]:
    """Render every entry on one dump, then record them in the run's manifest and index.html.
    `failed`: results of plugins that failed before rendering (broken, missing hook points),
    recorded in the manifest and index.html with the others and returned after them."""
    from vitscope.dump import Dump
    from vitscope.report import write_index

    if fmt not in STATIC_FORMATS:
        raise PluginError(f"Unknown figure format '{fmt}'; use one of {', '.join(STATIC_FORMATS)}.")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with Dump.open(dump_path) as dump:
        # Plugins may rely on it: options.limit is None or a count the dump really holds.
        limit = None if limit is None else min(int(limit), len(dump))
        for entry in entries:
            gone = missing_hooks(dump.names, [entry], dump.model_names).get(entry.name)
            if gone:  # never call render on a dump without what the plugin reads
                res = PluginResult(entry.name, entry.source, False, out_dir=run_dir / entry.name,
                                   error=f"needs hook points {', '.join(gone)}, which the dump "
                                         f"{dump.path} does not hold")
            else:
                res = render_plugin(entry, dump, run_dir, (values or {}).get(entry.name),
                                    static=static, interactive=interactive, fmt=fmt, limit=limit,
                                    assets_dir=assets_dir)
            results.append(res)
            if echo:
                echo(res.line())
        run_info = {**describe_dump(dump, limit), **(info or {})}
    results += list(failed)
    update_manifest(run_dir, results, run_info, values or {})
    write_index(run_dir)
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


def update_manifest(run_dir: Path, results: list[PluginResult], info: dict[str, Any],
                    values: dict[str, dict[str, Any]]) -> Path:
    path = Path(run_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        manifest = {}
    manifest.setdefault("plugins", {})
    manifest["run"] = {**info, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for r in results:
        manifest["plugins"][r.name] = {
            "package": r.package, "ok": r.ok, "error": r.error, "seconds": round(r.seconds, 3),
            "files": [_rel(f, run_dir) for f in r.files],
            "options": {k: v for k, v in (values.get(r.name) or {}).items()},
            "run": manifest["run"],
        }
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path


def epoch_analyses_dir(run_name: str, out_root: str | Path = "outputs") -> Path:
    """Where `vitscope train --analyze-every` renders: <out_root>/<run>/epoch_NNN/."""
    return Path(out_root) / run_name


def make_epoch_analyzer(plugins: list[str], dataset, *, run_name: str, classes: list[str],
                        normalize: tuple[list, list], out_root: str | Path = "outputs",
                        n_images: int = 16, static: bool = True, interactive: bool = True,
                        echo: Callable[[str], None] | None = None
                        ) -> Callable[[Any, int, Any], list[Path]]:
    """For `vitscope train --analyze-every N --plugin NAME`: a function
    `analyze(model, epoch, run_dir) -> files` that captures the same `n_images` images of
    `dataset` (a seeded sample) with the model as it is now and renders `plugins` into
    `<out_root>/<run_name>/epoch_XXX/`. Unknown or broken plugins fail here, before training.
    A plugin failing at some epoch is reported through `echo` (default: stderr), never raised.
    """
    registry = discover()
    entries = registry.select(plugins)
    for e in entries:
        if not e.ok:
            raise PluginError(e.problem())
    patterns = union_requires(entries)
    if not isinstance(n_images, int) or n_images < 1:
        raise PluginError(f"n_images must be a positive number of images, got {n_images!r}.")
    say = echo or (lambda msg: print(msg, file=sys.stderr))
    root = epoch_analyses_dir(run_name, out_root)
    make_output_dir(root, PluginError, "run from a folder where outputs/ can be written")

    def analyze(model, epoch: int, run_dir=None) -> list[Path]:
        try:
            return _analyze(model, epoch, run_dir)
        except Exception as e:   # a full disk at epoch 40 must not end the training run
            say(f"epoch {epoch}: the analyses failed ({type(e).__name__}: {_first_line(e)}); "
                f"training goes on")
            return []

    def _analyze(model, epoch: int, run_dir=None) -> list[Path]:
        from vitscope.capture import capture
        from vitscope.checkpoint import _unwrap

        epoch_dir = root / f"epoch_{int(epoch):03d}"
        with tempfile.TemporaryDirectory(prefix="vitscope-epoch-") as tmp:
            dump_path = capture(_unwrap(model), dataset, Path(tmp) / "epoch.h5", patterns,
                                ckpt=None, normalize=normalize, classes=list(classes),
                                limit=min(n_images, len(dataset)), batch_size=n_images,
                                progress=False, seed=0)
            info = {"checkpoint": f"{run_dir or run_name} (model at epoch {epoch}, in training)",
                    "epoch": int(epoch)}
            results = render_plugins(dump_path, entries, epoch_dir, static=static,
                                     interactive=interactive, info=info,
                                     assets_dir=root)   # plotly.js once for all epochs
        for r in results:
            if not r.ok:
                say(f"epoch {epoch}: plugin {r.name} failed: {r.error}")
        return [f for r in results for f in r.files] + [epoch_dir / "index.html"]

    return analyze


# ------------------------------------------------------------------------------------ helpers

def _fresh_folder(out_dir: Path) -> None:
    """Empty a folder of earlier output of this plugin (only one we marked), then mark it."""
    if (out_dir / MARKER).exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).touch()


def _checked_files(returned: Any, out_dir: Path) -> list[Path]:
    if returned is None:  # lenient: a plugin that forgot to return its files
        return sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != MARKER)
    if isinstance(returned, (str, Path)) or not isinstance(returned, Iterable):
        raise PluginError(f"render() returned {type(returned).__name__}, not a list of paths; "
                          f"return the files it wrote.")
    files = [Path(p) for p in returned]
    absent = [str(p) for p in files if not p.is_file()]
    if absent:
        raise PluginError(f"render() returned files that do not exist: {', '.join(absent[:3])}.")
    return files


def _plugin_warnings(caught) -> list[str]:
    """UserWarnings a plugin raised for the user (library deprecation noise is dropped)."""
    out = []
    for w in caught:
        if issubclass(w.category, UserWarning) and not issubclass(
                w.category, (DeprecationWarning, PendingDeprecationWarning)):
            msg = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
            if msg and msg not in out:
                out.append(msg)
    return out


def _close_figures() -> None:
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else ""


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)
