"""Lock files: one process at a time in a training run folder or an analyze output folder.

    with hold(run_dir.parent / f".{run_dir.name}.lock", run_dir, TrainingError,
              hint="pass --name to start another run"):
        ...      # a second `vitscope train --name same` gets "'runs/same' is in use by process 4242"

An advisory `flock` on the lock file: the kernel drops it when the process ends, however it
ends (SIGKILL included), so a lock is never stale. The file holds the owner's PID for the
message and is removed on release; a process that locked a file which was removed meanwhile
sees that (another inode at the path) and locks the new one. `wait=True` blocks instead of
refusing (the shared dump cache: the second analyze waits for the first capture, then reuses
it). Holding a lock again in the same process is a no-op, so a command and the library
function it calls can both take it.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from vitscope.errors import VitscopeError

try:
    import fcntl
except ImportError:   # Windows: no flock; msvcrt locks one byte instead
    fcntl = None
    import msvcrt

_HELD: dict[str, int] = {}          # lock path -> depth, for re-entrant use in one process
_GUARD = threading.Lock()


class InUse(VitscopeError):
    """Another process holds the lock."""


def owner(lock_file: Path) -> str:
    """The PID written in a lock file, or 'another process' if it cannot be read yet."""
    try:
        pid = Path(lock_file).read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def hold(lock_file: str | Path, what: str | Path, error: type[VitscopeError] = InUse, *,
         hint: str = "wait for it to finish", wait: bool = False) -> Iterator[None]:
    """Hold `lock_file` (created, with its folder) for the block; `error` says "'WHAT' is in
    use by process PID; HINT." when another process holds it (unless `wait`)."""
    path = Path(lock_file).absolute()
    key = str(path)
    with _GUARD:
        if key in _HELD:
            _HELD[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _GUARD:
                _HELD[key] -= 1
        return
    fd = _acquire(path, what, error, hint, wait)
    with _GUARD:
        _HELD[key] = 1
    try:
        yield
    finally:
        with _GUARD:
            del _HELD[key]
        _release(path, fd)


def _acquire(path: Path, what, error, hint: str, wait: bool) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, wait)
        except BlockingIOError:
            os.close(fd)
            raise error(f"'{what}' is in use by {owner(path)}; {hint}.") from None
        except BaseException:
            os.close(fd)
            raise
        try:   # the file we locked must still be the one at the path (see module docstring)
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _release(path: Path, fd: int) -> None:
    try:
        path.unlink()      # while still locked: a waiter then notices and retries
    except OSError:
        pass
    os.close(fd)           # closing drops the lock


def _lock(fd: int, wait: bool) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return
    while True:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return
        except OSError:
            if not wait:
                raise BlockingIOError from None
            import time
            time.sleep(0.2)
