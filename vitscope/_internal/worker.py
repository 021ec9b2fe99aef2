"""Calling functions in a child process of their own, so that what they import and allocate
(torch, a model, a capture's buffers) never enters the calling process.

    with Worker() as side:
        names = side.call("vitscope.analyze.plan", "_model_hooks", ckpt)   # runs in the child

`vitscope analyze` reads the checkpoint and captures its dump through one: the analyze process
itself, which waits while plugins render in processes of their own, then never imports torch
and never holds the model (issue 23: it kept 0.6 GB of PSS, torch's libraries and heap,
through all the rendering). The child is spawned (a fresh interpreter: forking a process whose
torch threads exist deadlocks the copy) on the first call and serves calls until `close`.

What crosses back is what the caller would have seen in-process:
- the return value (pickled: plain data);
- an exception, re-raised here as the same type with the same message (the child's traceback
  rides along as a note);
- every warning the call issued, re-issued here in order (so the CLI prints its one line);
- Ctrl-C: the terminal sends SIGINT to both processes; the child stops its call (the capture
  deletes its partial file) and this process waits for it before KeyboardInterrupt goes on.
SIGTERM to this process (or any exception while it waits) terminates the child and waits;
on Linux the child also receives SIGTERM when this process dies, however that happens.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
import warnings
from typing import Any

from vitscope._internal.signals import Terminated, terminate_as_exception

STOP_GRACE_S = 60.0      # how long a stopping child may clean up (delete a partial dump)
INTERRUPT_WAIT_S = 2.0   # after Ctrl-C: how long the child may take to notice its own SIGINT
RETERMINATE_S = 5.0      # a terminated child still running after this got a lost SIGTERM


class WorkerDied(RuntimeError):
    """The child ended without answering (killed, out of memory, a crash in native code)."""


class Worker:
    """A spawned child process that runs `module.function(*args, **kwargs)` on request."""

    def __init__(self) -> None:
        self._proc = None
        self._conn = None

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(stop=kind is not None)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), name="vitscope-model-side",
                                 daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        """`module.function(*args, **kwargs)` in the child (started on the first call)."""
        if self._proc is None:
            self._start()
        try:
            self._conn.send((module, function, args, kwargs))
            status, value, caught = self._conn.recv()
        except KeyboardInterrupt:
            self.close(interrupt=True)   # the child got the same Ctrl-C: let it clean up
            raise
        except (EOFError, OSError, BrokenPipeError):
            code = self._proc.exitcode if self._proc.join(5) is None else None
            self._proc = self._conn = None
            raise WorkerDied(f"The process running {function} ended without an answer (exit "
                             f"code {code}); it may have run out of memory.") from None
        for category, message, filename, lineno in caught:
            warnings.warn_explicit(message, _category(category), filename, lineno,
                                   registry=None)   # no registry: never swallowed as a repeat
        if status == "ok":
            return value
        raise _rebuild(value)

    def close(self, stop: bool = False, interrupt: bool = False) -> None:
        """End the child: ask it to exit; with `stop` (this process is failing) terminate it;
        with `interrupt` (Ctrl-C reached this process) give it a moment to stop on its own
        copy of the terminal's SIGINT, else send it one. Then wait up to STOP_GRACE_S for its
        cleanup, and kill it."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        try:
            if interrupt:
                proc.join(INTERRUPT_WAIT_S)
                if proc.is_alive():     # the SIGINT went to this process alone (kill -INT)
                    os.kill(proc.pid, signal.SIGINT)
            elif stop and proc.is_alive():
                proc.terminate()
                proc.join(RETERMINATE_S)
                if proc.is_alive():     # a SIGTERM that landed in a finalizer is swallowed
                    proc.terminate()    # ("Exception ignored in ..."): say it once more
            elif conn is not None:
                try:
                    conn.send(None)
                except (OSError, BrokenPipeError):
                    pass
            proc.join(STOP_GRACE_S)
        except BaseException:    # a second Ctrl-C while waiting: do not leave it running
            proc.kill()
            proc.join()
            raise
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join()
            if conn is not None:
                conn.close()


def _serve(conn) -> None:
    """The child's loop: one call per message until None (or the pipe closes)."""
    _die_with_parent()
    sys.unraisablehook = _signal_again
    while True:
        try:
            request = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if request is None:
            return
        module, function, args, kwargs = request
        # SIGTERM (close(stop=True), or the parent's death) raises Terminated inside the
        # call, as `kill` does in the CLI: a capture deletes its partial file on the way out
        with warnings.catch_warnings(record=True) as caught, terminate_as_exception():
            try:
                value = getattr(importlib.import_module(module), function)(*args, **kwargs)
                reply = ("ok", value)
            except BaseException as e:     # KeyboardInterrupt and Terminated too: reported
                reply = ("error", _portable(e))
        notes = [(_category_name(w.category), str(w.message), w.filename, w.lineno)
                 for w in caught]
        try:
            conn.send((*reply, notes))
        except (OSError, BrokenPipeError):
            return
        except Exception as e:     # an unpicklable result: say so instead of hanging
            conn.send(("error", _portable(TypeError(f"{function} returned {type(e).__name__}: "
                                                    f"{e}")), notes))
        if reply[0] == "error" and reply[1][3] in ("KeyboardInterrupt", "Terminated"):
            return      # stopped: the caller is on its way out


def _signal_again(info, default=sys.unraisablehook) -> None:
    """Ctrl-C or SIGTERM whose exception was raised inside a finalizer (a weakref callback,
    `__del__`), where Python prints "Exception ignored" and drops it: the capture would run
    on. The signal is sent again, so its exception arrives where the call can stop on it."""
    if isinstance(info.exc_value, Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
    elif isinstance(info.exc_value, KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    else:
        default(info)


def _portable(e: BaseException) -> tuple:
    """An exception as (pickled or None, message, traceback text, type name, module)."""
    text = "".join(traceback.format_exception(e))
    try:
        blob = pickle.dumps(e)
    except Exception:
        blob = None
    return (blob, str(e), text, type(e).__name__, type(e).__module__)


def _rebuild(value: tuple) -> BaseException:
    blob, message, text, name, module = value
    error = None
    if blob is not None:
        try:
            error = pickle.loads(blob)
        except Exception:
            error = None
    if error is None:
        cls = getattr(sys.modules.get(module), name, None)
        error = cls(message) if isinstance(cls, type) and issubclass(cls, BaseException) \
            else RuntimeError(f"{name}: {message}")
    if not isinstance(error, (KeyboardInterrupt, SystemExit)) and hasattr(error, "add_note"):
        error.add_note(f"(raised in the model's process:)\n{text}")
    return error


def _category_name(category: type) -> str:
    return f"{category.__module__}:{category.__qualname__}"


def _category(name: str) -> type[Warning]:
    module, _, qualname = name.partition(":")
    cls = getattr(sys.modules.get(module), qualname, None)   # never imports (torch) for it
    return cls if isinstance(cls, type) and issubclass(cls, Warning) else UserWarning


def _die_with_parent() -> None:
    """Linux: SIGTERM this child when its parent dies (a SIGKILLed analyze must not leave a
    capture running); the capture turns SIGTERM into a cleanup."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))   # PR_SET_PDEATHSIG
        if os.getppid() == 1:                # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):
        pass
