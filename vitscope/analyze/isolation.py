"""Each plugin renders in a child process of its own: the boundary between vitscope and
plugin code.

    outcome = run_plugin(entry, dump_path, folder, options, timeout=3600)

The child imports the plugin, opens its own read-only view of the dump, calls render, checks
what came back and sends plain data (file names, the error, warnings) through a pipe. So:
- a plugin that hangs is stopped at the time limit (its stack goes to error.log first);
- `os._exit`, a segfault, `sys.exit` or an exception end the child, never `analyze`;
- closing the dump, changing `dump.hooks`, `os.chdir`, signal handlers, matplotlib state or
  any other global change dies with the child; the next plugin starts clean;
- threads and processes it leaves behind are killed with its process group (it runs in a
  session of its own, so the terminal's Ctrl-C reaches only analyze, which then stops it;
  on Linux it also dies with its parent, however that ends), and on Linux every process it
  started is ended before anything is published, even one that left the group with
  `os.setsid()` or a double fork (the child is a subreaper; vitscope._internal.sandbox);
- it writes only into its own folder and a private temporary folder (plus the caches numba,
  matplotlib and fontconfig keep): where the kernel has Landlock, any other write fails in
  the plugin (the dump, another plugin's figures, index.html); everywhere, the run folder and
  the dump are compared before and after it ran (vitscope.analyze.watch), and a change stops
  the run with nothing published (a changed dump is renamed `*.damaged`, so it is never
  reused);
- links are never published: a folder holding a symbolic or hard link (to /etc/passwd, say),
  or anything but files and folders, fails the plugin.

Children are forked by multiprocessing's forkserver, a small single-threaded server started
once per analyze with numpy, h5py, matplotlib, plotly and the built-in plugins imported:
a fork of it costs ~40 ms and starts warm (benchmarks/plugin_isolation.py). Forking analyze
itself would be as cheap but copies the capture's threads (torch, OpenMP) into the child,
where they deadlock; spawning a fresh interpreter re-imports everything per plugin. Where
there is no forkserver (Windows) spawn is used. The child gets the parent's sys.path,
environment and working folder at the time of the call, not the server's.
"""
from __future__ import annotations

import contextlib
import errno
import faulthandler
import json
import multiprocessing
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from vitscope._internal import sandbox
from vitscope._internal.signals import deferred_interrupts
from vitscope._internal.text import first_line, shown_name
from vitscope.analyze.staging import ERROR_LOG
from vitscope.analyze.watch import Snapshot, identity
from vitscope.plugins import BUILTINS

DEFAULT_TIMEOUT = 3600.0     # seconds per plugin: generous; --plugin-timeout changes it
STACK_GRACE = 1.0            # seconds a timed-out child gets to write its stack
# Imported once by the fork server, so each child starts warm: the libraries every built-in
# plugin uses, and the built-ins themselves (their modules, from BUILTINS).
PRELOAD = ("numpy", "h5py", "threadpoolctl", "vitscope.dump", "vitscope.plugin",
           "vitscope.render.figures", "vitscope.render.interactive", "vitscope.render.mosaic",
           "matplotlib.pyplot", "plotly.graph_objects", "plotly.subplots",
           *sorted({value.split(":")[0] for value in BUILTINS.values()}))

_CONTEXT = None


@dataclass
class Outcome:
    """What came back from one plugin's child process."""
    ok: bool
    files: list[Path] = field(default_factory=list)
    error: str | None = None          # one line for the user
    logged: bool = False              # a traceback or stack is in out_dir/error.log
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # The file system refused a write (full disk, quota, read-only): not the plugin's fault,
    # and every later plugin would fail the same way. The WriteError message, naming
    # `shown_dir` (the plugin's final folder) and its free space.
    disk_full: str | None = None
    # What must stop the whole run (nothing of it may be published): the plugin changed the
    # run folder outside its own folder, or the dump changed while it read it.
    breach: str | None = None


def context():
    """The multiprocessing context children come from (forkserver, else spawn)."""
    global _CONTEXT
    if _CONTEXT is None:
        methods = multiprocessing.get_all_start_methods()
        _CONTEXT = multiprocessing.get_context("forkserver" if "forkserver" in methods
                                               else "spawn")
        if _CONTEXT.get_start_method() == "forkserver":
            _CONTEXT.set_forkserver_preload(list(PRELOAD))
    return _CONTEXT


def warm_up() -> None:
    """Start the fork server now (it imports in the background while analyze captures)."""
    _start_server(context())


def _start_server(ctx) -> None:
    """The fork server, started (once) with SIGINT ignored: it shares the terminal's process
    group, so Ctrl-C reaches it too, and while it imported PRELOAD it printed a 30-line
    KeyboardInterrupt traceback of its own. analyze stops it (its `alive` pipe closes when
    analyze exits); its children, in sessions of their own, are killed by analyze."""
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    from vitscope._internal.signals import sigint_ignored
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is not None and _running(pid):
        return     # not again: a Ctrl-C in that window would be ignored, and lost
    with sigint_ignored():
        forkserver.ensure_running()


def _running(pid: int) -> bool:
    """Whether our child `pid` still runs (not exited, nor a zombie)."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


def run_plugin(entry, dump_path: str | Path, out_dir: str | Path, options: dict[str, Any], *,
               timeout: float | None = DEFAULT_TIMEOUT,
               shown_dir: str | Path | None = None) -> Outcome:
    """Render plugin `entry` (a loaded PluginEntry) on the dump at `dump_path` into the
    existing folder `out_dir`, in a child process; never raises for the plugin's faults.
    `timeout` None or <= 0: no limit. The run folder is `out_dir`'s parent (staging folders
    sit there, vitscope.analyze.staging)."""
    out_dir = Path(out_dir).absolute()
    dump = Path(os.path.realpath(dump_path))
    if options.get("interactive") and options.get("run_dir"):
        try:    # written here: the plugin's process may not write outside its folder
            _shared_assets(Path(options["run_dir"]))
        except OSError as e:   # a full disk, a read-only folder: not the plugin's fault
            from vitscope._internal.files import is_write_failure, write_failure
            if not is_write_failure(e):
                raise
            failure = str(write_failure(Path(shown_dir or out_dir), e))
            return Outcome(False, error=failure, disk_full=failure)
    private = tempfile.mkdtemp(prefix="vitscope-plugin-")
    job = {"value": entry.value, "name": entry.name, "dump": str(Path(dump_path).absolute()),
           "out_dir": str(out_dir), "options": dict(options), "sys_path": list(sys.path),
           "env": dict(os.environ), "cwd": os.getcwd(), "tmp": private,
           "protect": [str(out_dir.parent), str(dump)],
           "shown_dir": str(Path(shown_dir or out_dir).absolute())}
    ctx = context()
    _start_server(ctx)       # with SIGINT ignored, when analyze did not start it (warm_up)
    t0 = time.perf_counter()
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, writer), name=f"vitscope-plugin-{entry.name}")
    before = Snapshot.take(out_dir.parent, skip=(out_dir,))
    dump_before = identity(dump)
    reaping = sandbox.become_subreaper()
    known = set(sandbox.children(os.getpid()))
    outcome = None
    try:
        try:
            # a start cut between connecting to the fork server and handing it the child's
            # files kills the server with a traceback of its own: Ctrl-C waits until it is done
            with deferred_interrupts(), _main_not_rerun():
                proc.start()
        except Exception as e:   # e.g. an option value that cannot be pickled
            outcome = Outcome(False, error=f"could not be started in its own process "
                                           f"({type(e).__name__}: {first_line(e)})")
            return outcome
        finally:
            writer.close()
        limit = timeout if timeout and timeout > 0 else None
        ready = wait([reader, proc.sentinel], limit)
        message = _receive(reader) if reader in ready or proc.sentinel in ready else None
        if not ready:
            _dump_stack(proc)
            _end(proc)
            logged = _headed_log(out_dir / ERROR_LOG, f"{entry.name} did not finish within its "
                                 f"time limit of {_seconds(limit)}; its threads when stopped:")
            outcome = Outcome(False, error=f"did not finish within the time limit of "
                                           f"{_seconds(limit)} (raise it with --plugin-timeout)",
                              logged=logged, seconds=time.perf_counter() - t0)
        elif message is None:
            proc.join(5)
            logged = _headed_log(out_dir / ERROR_LOG, f"{entry.name}: {_death(proc.exitcode)}")
            outcome = Outcome(False, error=_death(proc.exitcode),
                              seconds=time.perf_counter() - t0, logged=logged)
        else:
            outcome = Outcome(bool(message["ok"]), [out_dir / f for f in message["files"]],
                              message["error"], bool(message["logged"]),
                              list(message["warnings"]), message["seconds"],
                              message.get("disk_full"))
        return outcome
    finally:
        _end(proc)
        _end_adopted(known)
        if reaping:
            sandbox.become_subreaper(False)
        reader.close()
        shutil.rmtree(private, ignore_errors=True)
        if outcome is not None:
            outcome.breach, added = _breach(entry.name, out_dir, before, dump, dump_before)
            if added and outcome.breach is None:
                shown = ", ".join(shown_name(a) for a in added[:3])
                outcome.ok, outcome.files = False, []
                outcome.error = (f"wrote {shown} outside its output folder (removed again): a "
                                 f"plugin writes only into out_dir")


def _shared_assets(run_dir: Path) -> None:
    """plotly.min.js in the run folder before a plugin runs: its pages link to it, and the
    plugin's process may write only into its own folder."""
    from vitscope.render.interactive import plotly_js
    plotly_js(run_dir)


def _breach(name: str, out_dir: Path, before: Snapshot, dump: Path,
            dump_before: tuple | None) -> tuple[str | None, list[str]]:
    """What plugin `name` did outside `out_dir` where the kernel did not stop it: (the
    sentence that stops the run, when it changed the dump or what was in the run folder;
    the paths it added there, which are removed again)."""
    now = identity(dump)
    if now != dump_before:
        if now is None or dump_before is None or now[:2] != dump_before[:2]:
            return (f"The dump '{dump}' was replaced or removed while plugin '{name}' read it "
                    f"(another `vitscope dump --force` into it?), so the plugins would show "
                    f"different images; nothing was published; run the command again."), []
        damaged = dump.with_name(dump.name + ".damaged")
        with contextlib.suppress(OSError):
            os.replace(dump, damaged)
        return (f"Plugin '{name}' changed the dump '{dump}' that every plugin reads (a plugin "
                f"may only read it); nothing was published, and the dump was renamed to "
                f"'{damaged.name}' so that no later run reuses it; report it to the plugin's "
                f"package."), []
    after = Snapshot.take(out_dir.parent, skip=(out_dir,))
    changed = after.changed_since(before)
    added = [c for c in changed if c not in before.entries]
    touched = [c for c in changed if c in before.entries]
    if touched:
        shown = ", ".join(shown_name(c) for c in touched[:3]) + \
            (f" and {len(touched) - 3} more" if len(touched) > 3 else "")
        return (f"Plugin '{name}' changed {shown} in '{out_dir.parent}', outside its output "
                f"folder (a plugin writes only into out_dir); nothing was published; report "
                f"it to the plugin's package."), added
    for rel in sorted(added, key=len, reverse=True):     # deepest first
        target = out_dir.parent / rel
        with contextlib.suppress(OSError):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
    return None, added


def _end(proc) -> None:
    """End the child and every process it started, wherever they went (their own session
    included: the child is a subreaper, so its orphans are still below it)."""
    try:
        pid = proc.pid
        alive = pid is not None and proc.is_alive()
    except ValueError:   # closed by an earlier call
        return
    if alive:
        sandbox.end_tree([pid])
    _kill_group(proc)


def _end_adopted(known: set[int]) -> None:
    """Kill and reap the processes that became this process's children while the plugin ran
    (orphans of a child that died before them: this process is a subreaper then), except the
    fork server and children it had before."""
    server = _forkserver_pid()
    new = [p for p in sandbox.children(os.getpid()) if p not in known and p != server]
    if new:
        sandbox.end_tree(new)
        sandbox.reap(2.0, new)


def _forkserver_pid() -> int | None:
    try:
        from multiprocessing import forkserver
        return getattr(forkserver._forkserver, "_forkserver_pid", None)
    except (ImportError, AttributeError):
        return None


@contextlib.contextmanager
def _main_not_rerun() -> Iterator[None]:
    """While a child starts, the parent's __main__ looks like an interactive session, so the
    child does not import the user's script again (multiprocessing does that to a script
    without an `if __name__ == "__main__":` guard: a script calling vitscope.explain(...).save
    at top level would run again in every plugin's child). The child needs nothing from it:
    it imports the plugin by its entry point."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _receive(reader) -> dict | None:
    try:
        if reader.poll(0):
            msg = reader.recv()
            return msg if isinstance(msg, dict) else None
    except (EOFError, OSError):
        pass
    return None


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"its process was killed by {name} before render returned (a crash in native code?)"
    return (f"its process exited with code {code} before render returned (os._exit, or a crash "
            f"in native code); plugins must return from render")


def _headed_log(path: Path, head: str) -> bool:
    """Put `head` above what the child left in error.log (a stack, or nothing); True."""
    try:
        body = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        path.write_text(head + "\n" + body, encoding="utf-8")
        return True
    except OSError:
        return False


def _dump_stack(proc) -> None:
    """Ask a timed-out child for its Python stack (faulthandler on SIGUSR1), briefly."""
    sig = getattr(signal, "SIGUSR1", None)
    if sig is None or proc.pid is None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.join(STACK_GRACE)
    except OSError:
        pass


def _kill_group(proc) -> None:
    """Kill the child and everything it started (its process group), then reap it. Safe to
    call again."""
    try:
        if proc.pid is None:
            return
    except ValueError:   # closed by an earlier call
        return
    if hasattr(os, "killpg"):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:   # already gone (and with it every member of its group)
            pass
    if proc.is_alive():
        proc.kill()
    proc.join(10)
    try:
        proc.close()
    except ValueError:
        pass


def _seconds(limit: float) -> str:
    return f"{limit:g} s" if limit < 120 else f"{limit / 60:g} min"




# ------------------------------------------------------------------------------- the child

def _child(job: dict[str, Any], conn) -> None:
    """Runs in the child: set up like the parent, walls up, render, end what it started,
    report, and leave at once."""
    _detach()
    sandbox.become_subreaper()
    sys.path[:] = job["sys_path"]
    os.environ.clear()
    os.environ.update(job["env"])
    for var in ("TMPDIR", "TEMP", "TMP"):
        os.environ[var] = job["tmp"]
    tempfile.tempdir = job["tmp"]
    os.chdir(job["cwd"])
    out_dir = Path(job["out_dir"])
    log_path = out_dir / ERROR_LOG
    log = open(log_path, "w", encoding="utf-8")
    walled = _walls(job)
    if hasattr(signal, "SIGUSR1"):   # the parent asks for the stack of a hung plugin
        faulthandler.register(signal.SIGUSR1, file=log, all_threads=True)
    result = {"ok": False, "files": [], "error": None, "logged": False, "warnings": [],
              "seconds": 0.0}
    t0 = time.perf_counter()
    from vitscope.errors import VitscopeError
    try:
        result.update(_render(job, out_dir))
    except VitscopeError as e:   # bad input, or what render returned: one line, no traceback
        result["error"] = str(e)
        result["disk_full"] = _disk_full(e, job["shown_dir"])
    except BaseException as e:  # anything, SystemExit and KeyboardInterrupt included
        result["error"] = f"raised {type(e).__name__}: {first_line(e)}"
        if walled and isinstance(e, OSError) and e.errno == errno.EACCES:
            where = shown_name(str(e.filename)) if e.filename else "a file"
            result["error"] = (f"tried to write {where}, outside its output folder, and was "
                               f"refused: a plugin writes only into out_dir ({result['error']})")
        result["logged"] = _write_log(log)
        result["disk_full"] = _disk_full(e, job["shown_dir"])
    result["seconds"] = time.perf_counter() - t0
    sandbox.end_descendants()   # before the parent publishes anything
    if not result["logged"]:
        with contextlib.suppress(OSError):
            log.close()
        log_path.unlink(missing_ok=True)
    _release_semaphores()   # before the report: the parent kills the child once it has it
    try:
        conn.send(result)
        conn.close()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(0)   # not sys.exit: threads the plugin left must not keep the child alive


def _walls(job: dict[str, Any]) -> bool:
    """Restrict the child's writes (module docstring) to its folder, its temporary folder and
    the caches libraries keep; a cache folder holding the run folder or the dump is left out.
    True where the kernel enforces it."""
    protect = [Path(p) for p in job["protect"]]
    caches = [Path(os.environ.get("NUMBA_CACHE_DIR") or _vitscope_cache() / "numba"),
              Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fontconfig",
              Path("/dev/shm")]
    with contextlib.suppress(Exception):
        import matplotlib
        caches.append(Path(matplotlib.get_cachedir()))
    folders = [Path(job["out_dir"]), Path(job["tmp"])]
    for cache in caches:
        if any(p == cache or p.is_relative_to(cache) for p in protect):
            continue
        with contextlib.suppress(OSError):
            cache.mkdir(parents=True, exist_ok=True)
        folders.append(cache)
    return sandbox.restrict_writes(folders, [Path(os.devnull)])


def _vitscope_cache() -> Path:
    from vitscope._internal.folders import resolve_cache_dir
    return resolve_cache_dir()


def _render(job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from vitscope.dump import Dump
    from vitscope.errors import VitscopeError
    from vitscope.render.figures import pyplot, smoothing
    from vitscope.plugin import RenderOptions
    from vitscope.analyze.registry import _import, _instantiate

    pyplot()   # the headless backend before any plugin code
    plugin = _instantiate(_import(job["value"]))
    options = RenderOptions(job["options"])
    with _blas_threads(job["env"]), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with Dump.open(job["dump"]) as dump:
            try:
                with smoothing(bool(options.get("smooth", False))):   # analyze --smooth
                    returned = plugin.render(dump, out_dir, options)
            except VitscopeError as e:   # bad input the plugin found: one line, no traceback
                return {"error": str(e), "warnings": _plugin_warnings(caught)}
            files = _checked_files(returned, out_dir)   # the dump still open for anything
    _check_summary(out_dir)
    return {"ok": True, "files": files, "warnings": _plugin_warnings(caught)}


def _blas_threads(env: dict[str, str]):
    """Cap numpy's BLAS and OpenMP pools at the command's thread count (OMP_NUM_THREADS, as
    vitscope._internal.threads chose it). The fork server loaded numpy before the command set
    it, so the environment alone no longer reaches those pools; threadpoolctl does."""
    text = env.get("OMP_NUM_THREADS", "")
    if not text.isdigit() or int(text) < 1:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=int(text))


def _release_semaphores() -> None:
    """Unlink the named semaphores this child made, as its exit would have.

    numba's threading layer (UMAP, in cls-embedding) and tqdm each make a multiprocessing
    lock; in a forkserver child that is a named POSIX semaphore registered with the resource
    tracker analyze shares with its children. The child leaves with os._exit, which skips the
    finalizer that unlinks it, so at analyze's exit the tracker found them and warned of
    "leaked semaphore objects". Only those finalizers run here (others could block)."""
    try:
        from multiprocessing import synchronize, util
        for finalizer in list(util._finalizer_registry.values()):
            if getattr(finalizer, "_callback", None) is synchronize.SemLock._cleanup:
                finalizer()
    except Exception:   # private API of multiprocessing: a warning is all that is at stake
        pass


def _write_log(log) -> bool:
    """The traceback into error.log; False when it cannot be written (a full disk)."""
    try:
        log.seek(0)
        log.truncate()
        log.write(traceback.format_exc())
        log.close()
        return True
    except OSError:
        return False


def _disk_full(error: BaseException, shown_dir: str) -> str | None:
    from vitscope._internal.files import is_disk_full, write_failure
    return str(write_failure(Path(shown_dir), error)) if is_disk_full(error) else None


def _checked_files(returned: Any, out_dir: Path) -> list[str]:
    """The files render() returned, as paths relative to out_dir; PluginError for anything
    else (a string, a closed HDF5 object, a file elsewhere or missing), and for a folder that
    holds a link or anything but files and folders, returned or not (the whole folder is
    published)."""
    from vitscope.errors import PluginError
    from vitscope.analyze.staging import MARKER
    regular = _regular_files(out_dir)
    if returned is None:  # lenient: a plugin that forgot to return its files
        return sorted(f for f in regular if f not in (MARKER, ERROR_LOG))
    if isinstance(returned, (str, bytes, os.PathLike)) or not _iterable(returned):
        raise PluginError(f"render() returned {type(returned).__name__}, not a list of paths; "
                          f"return the files it wrote.")
    root = out_dir.resolve()
    out = []
    for item in list(returned):
        if not isinstance(item, (str, os.PathLike)):
            raise PluginError(f"render() returned a {type(item).__name__} among its files, not "
                              f"a path; return the paths of the files it wrote.")
        path = Path(item)
        path = path if path.is_absolute() else out_dir / path
        try:
            rel = Path(os.path.abspath(path)).relative_to(out_dir).as_posix()
        except ValueError:
            try:
                rel = path.resolve().relative_to(root).as_posix()
            except ValueError:
                raise PluginError(f"render() returned {shown_name(str(item))}, which is outside "
                                  f"its output folder {out_dir}; write every file into "
                                  f"out_dir.") from None
        if rel not in regular:
            raise PluginError(f"render() returned a file that does not exist: "
                              f"{shown_name(str(item))}.")
        out.append(rel)
    return list(dict.fromkeys(out))


def _regular_files(out_dir: Path) -> set[str]:
    """The files under out_dir (relative POSIX paths), never following a link; PluginError
    for a link (symbolic, or a hard link to a file elsewhere) or a device, FIFO or socket."""
    from vitscope.errors import PluginError
    found: set[str] = set()
    for folder, dirs, files in os.walk(out_dir):
        for name in [*dirs, *files]:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, out_dir).replace(os.sep, "/")
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise PluginError(f"its folder holds the link {shown_name(rel)} -> "
                                  f"{shown_name(os.readlink(full))}; a plugin writes files, and "
                                  f"links are never published.")
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    raise PluginError(f"its folder holds {shown_name(rel)}, a hard link to a "
                                      f"file elsewhere; a plugin writes files, and links are "
                                      f"never published.")
                found.add(rel)
            elif not stat.S_ISDIR(st.st_mode):
                raise PluginError(f"its folder holds {shown_name(rel)}, which is neither a file "
                                  f"nor a folder; only files are published.")
    return found


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _check_summary(out_dir: Path) -> None:
    """summary.json, when written, must be one JSON object (index.html shows it as a table)."""
    from vitscope.errors import PluginError
    path = out_dir / "summary.json"
    if not path.is_file():
        return
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise PluginError(f"its summary.json is not valid UTF-8 JSON ({first_line(e)}).") \
            from None
    if not isinstance(value, dict):
        raise PluginError(f"its summary.json holds a JSON {type(value).__name__}, not an "
                          f"object of headline numbers (pass a dict to save_results).")


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


def _detach() -> None:
    """A session and process group of its own; on Linux, SIGKILL when the parent dies.

    The parent is the fork server, which exits when analyze does, however analyze ends (it
    reads EOF on its `alive` pipe). multiprocessing hands each child the write end of that
    pipe too; a child that kept it would keep the server alive after a SIGKILL of analyze,
    and itself with it, so it is closed here."""
    try:
        os.setsid()
    except (AttributeError, OSError):
        pass
    try:
        from multiprocessing import forkserver
        alive = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
        if alive is not None:
            os.close(alive)
            forkserver._forkserver._forkserver_alive_fd = None
    except (ImportError, AttributeError, OSError):
        pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
        except Exception:
            pass
        if os.getppid() == 1:    # the server died before prctl took effect
            os._exit(1)
