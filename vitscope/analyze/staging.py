"""Render into temporary folders, swap them into place on success: per plugin and per run.

    with Staging(run_dir) as stage:                  # locks run_dir (vitscope._internal.locks)
        folder = stage.folder("rollout")             # run_dir/.vitscope-new-<token>-rollout/
        ...render into folder...
        stage.commit(succeeded=["rollout"], failed_logs=[], manifest=new_manifest)

What a run folder promises, whatever kills the process and when:
- A plugin's folder `run_dir/<name>/` is replaced only by a complete, successful render of
  the same plugin. A plugin that fails keeps its earlier figures (its error.log is put
  beside them); one that never rendered before gets a folder holding its error.log.
- `manifest.json` and `index.html` are written atomically (a temporary file renamed over
  the old one) and only at the commit, so they never list figures that a re-run deleted.
- The commit is journalled: `run_dir/.vitscope-commit-<token>.json` is written (fsynced)
  before the first rename. A process killed during the renames leaves the journal, and the
  next Staging of that folder (which holds the lock, so the killed one is dead) finishes
  the commit; leftovers without a journal are discarded. A kill before the commit leaves
  the run folder exactly as it was. A journal that cannot be finished (its pages cannot be
  written, a hand-edited or damaged journal) is rolled back instead, with one warning: the
  swapped folders and manifest.json go back to what they were, so the folder is never left
  broken for every later run.
- Only plugin output folders are ever replaced or deleted: a `<name>/` that exists without
  the `.vitscope-plugin` marker (or is a link) is refused, names are safe slugs
  (vitscope.plugin.check_name; a setting folder adds `@key=value,...`, vitscope.render.setting_folders), and the temporary folders sit at the same depth as the
  final ones, so relative links a plugin writes (`../plotly.min.js`) stay right.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from vitscope.errors import PluginError
from vitscope._internal.locks import hold
from vitscope._internal.signals import deferred_interrupts
from vitscope._internal.files import replacing, sweep_temporaries

MARKER = ".vitscope-plugin"     # marks a folder as plugin output, so a re-run may replace it
MANIFEST = "manifest.json"
LOCK = ".vitscope.lock"
NEW, OLD, JOURNAL = ".vitscope-new-", ".vitscope-old-", ".vitscope-commit-"
ERROR_LOG = "error.log"


def is_plugin_folder(path: Path) -> bool:
    """A real folder (not a link) that vitscope marked as one plugin's output."""
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def check_replaceable(run_dir: Path, name: str) -> Path:
    """run_dir/<name>, which a render may replace: absent, or a plugin folder of ours directly
    under run_dir. PluginError otherwise (nothing is touched)."""
    from vitscope.render.setting_folders import folder_problem
    problem = folder_problem(name)
    if problem:
        raise PluginError(f"Output folder {name!r} of a plugin: {problem}.")
    target = Path(run_dir) / name
    if target.resolve().parent != Path(run_dir).resolve():
        raise PluginError(f"'{target}' is not a folder directly inside '{run_dir}'.")
    if (target.exists() or target.is_symlink()) and not is_plugin_folder(target):
        raise PluginError(f"'{target}' exists and is not a vitscope plugin folder (no {MARKER} "
                          f"marker), so it is not replaced; move it away or choose another "
                          f"output folder with -o.")
    return target


class Staging:
    """One analyze run into `run_dir`: the lock, temporary folders and the commit."""

    def __init__(self, run_dir: str | Path, pages: Callable[[Path], Any] | None = None) -> None:
        """`pages(run_dir)` writes the pages derived from manifest.json (index.html), right
        after each commit's manifest, also when a killed run's commit is finished."""
        self.run_dir = Path(run_dir).absolute()
        self.pages = pages
        self.token = f"{os.getpid()}{secrets.token_hex(3)}"
        self.committed = False
        self._folders: dict[str, Path] = {}
        self._lock = None

    def __enter__(self) -> "Staging":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = hold(self.run_dir / LOCK, self.run_dir, PluginError,
                          hint="wait for that analyze to finish, or choose another output "
                               "folder with -o")
        self._lock.__enter__()
        try:
            recover(self.run_dir, self.pages)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if not self.committed:
                for folder in self._folders.values():
                    _rmtree(folder)
        finally:
            self._lock.__exit__(*exc)

    def folder(self, name: str) -> Path:
        """A new, empty, marked folder to render plugin `name` into (PluginError when its
        final folder is not ours to replace)."""
        check_replaceable(self.run_dir, name)
        folder = self.run_dir / f"{NEW}{self.token}-{name}"
        if folder.exists():
            _rmtree(folder)
        folder.mkdir()
        (folder / MARKER).touch()
        self._folders[name] = folder
        return folder

    def final(self, name: str) -> Path:
        return self.run_dir / name

    def commit(self, succeeded: Iterable[str], failed_logs: Iterable[str] = (),
               manifest: dict[str, Any] | None = None) -> None:
        """Swap in the folders of `succeeded` plugins; for `failed_logs`, put the error.log of
        the failed render beside the earlier figures (or, with none, the folder holding only
        the log); then write manifest.json and index.html (when `manifest` is given)."""
        swap, logs = [], []
        for name in failed_logs:
            folder = self._folders[name]
            for child in folder.iterdir():   # a failed render's partial figures never show
                if child.name not in (MARKER, ERROR_LOG):
                    _rmtree(child)
            (logs if is_plugin_folder(self.final(name)) else swap).append(name)
        swap = [n for n in succeeded] + swap
        journal = {"token": self.token, "swap": swap, "logs": logs, "manifest": manifest}
        path = self.run_dir / f"{JOURNAL}{self.token}.json"
        with deferred_interrupts():   # Ctrl-C after the commit began: it completes first
            _write(path, json.dumps(journal, default=str))
            self.committed = True
            finish(self.run_dir, path, self.pages)


def recover(run_dir: Path, pages: Callable[[Path], Any] | None = None) -> None:
    """Finish the journalled commits of killed runs and discard their other leftovers.
    Called with the run folder's lock held."""
    run_dir = Path(run_dir)
    sweep_temporaries(run_dir)    # writes cut short by a kill (vitscope._internal.files)
    for journal in sorted(run_dir.glob(f"{JOURNAL}*.json")):
        try:
            plan = _plan(journal)
        except ValueError:     # a torn journal: it was never complete, so nothing was renamed
            journal.unlink(missing_ok=True)
            continue
        try:
            finish(run_dir, journal, pages, plan)
        except Exception as e:
            warnings.warn(f"An interrupted commit in '{run_dir}' could not be finished "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                          f"); it was rolled back, so the folder holds what it held before "
                          f"that run", stacklevel=2)
    for leftover in list(run_dir.glob(f"{OLD}*")):
        name = leftover.name[len(OLD):].split("-", 1)[-1]
        if name == MANIFEST:
            leftover.unlink(missing_ok=True)
            continue
        if not (run_dir / name).exists() and is_plugin_folder(leftover):
            leftover.rename(run_dir / name)       # a swap cut in half: the old one goes back
        else:
            _rmtree(leftover)
    for leftover in run_dir.glob(f"{NEW}*"):
        _rmtree(leftover)


def _plan(journal: Path) -> dict[str, Any]:
    """A journal's plan; ValueError for one that is torn or not a plan at all."""
    from vitscope.render.setting_folders import folder_problem
    plan = json.loads(journal.read_text(encoding="utf-8"))
    if not (isinstance(plan, dict) and isinstance(plan.get("token"), str)
            and plan["token"].isalnum()
            and all(isinstance(plan.get(k), list) and all(
                isinstance(n, str) and folder_problem(n) is None for n in plan[k])
                for k in ("swap", "logs"))):
        raise ValueError("not a commit plan")
    return plan


def finish(run_dir: Path, journal: Path, pages: Callable[[Path], Any] | None = None,
           plan: dict[str, Any] | None = None) -> None:
    """Carry out a written journal; each step checks what is done, so it can be repeated.
    When a step fails, what was done is rolled back (`_roll_back`) and the error raised."""
    plan = plan if plan is not None else _plan(journal)
    token = plan["token"]
    saved = run_dir / f"{OLD}{token}-{MANIFEST}"
    if (run_dir / MANIFEST).is_file() and not saved.exists():
        shutil.copyfile(run_dir / MANIFEST, saved)      # for a roll back
    try:
        for name in plan["swap"]:
            new, final = run_dir / f"{NEW}{token}-{name}", run_dir / name
            old = run_dir / f"{OLD}{token}-{name}"
            if not new.exists():
                continue                                  # swapped before the kill
            if is_plugin_folder(final):
                if old.exists():
                    _rmtree(old)
                final.rename(old)
            elif final.exists() or final.is_symlink():    # appeared since: never ours to delete
                _rmtree(new)
                continue
            new.rename(final)
        for name in plan["logs"]:
            log = run_dir / f"{NEW}{token}-{name}" / ERROR_LOG
            if log.is_file() and is_plugin_folder(run_dir / name):
                os.replace(log, run_dir / name / ERROR_LOG)
        if plan.get("manifest") is not None:
            _write(run_dir / MANIFEST, json.dumps(plan["manifest"], indent=2, default=str) + "\n")
            if pages is not None:
                pages(run_dir)
    except BaseException:
        _roll_back(run_dir, plan, saved, pages)
        journal.unlink(missing_ok=True)
        raise
    for leftover in [*run_dir.glob(f"{OLD}{token}-*"), *run_dir.glob(f"{NEW}{token}-*")]:
        _rmtree(leftover)
    journal.unlink(missing_ok=True)


def _roll_back(run_dir: Path, plan: dict[str, Any], saved: Path,
               pages: Callable[[Path], Any] | None) -> None:
    """Undo a commit that could not be finished: each swapped folder back to its old one
    (or gone, where there was none), manifest.json as it was, the page from it again."""
    token = plan["token"]
    for name in plan["swap"]:
        new, final = run_dir / f"{NEW}{token}-{name}", run_dir / name
        old = run_dir / f"{OLD}{token}-{name}"
        if new.exists():
            continue                                      # never swapped in
        if old.exists():
            _rmtree(final)
            old.rename(final)
        elif is_plugin_folder(final):
            _rmtree(final)                                # it had no earlier folder
    try:
        if saved.is_file():
            os.replace(saved, run_dir / MANIFEST)
        if pages is not None and (run_dir / MANIFEST).is_file():
            pages(run_dir)
    except Exception:      # the page of the old manifest: the old index.html is still there
        pass
    for leftover in [*run_dir.glob(f"{OLD}{token}-*"), *run_dir.glob(f"{NEW}{token}-*")]:
        _rmtree(leftover)


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a temporary file, fsynced, renamed over `path` (vitscope._internal.files)."""
    with replacing(path) as (tmp,):
        tmp.write_text(text, encoding="utf-8")


def _rmtree(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)

