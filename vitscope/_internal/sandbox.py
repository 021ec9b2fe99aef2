"""Walls for code vitscope runs but did not write (plugins): where it may write, and the
processes it leaves. Linux only; elsewhere every function is a no-op that says so. Stdlib only.

    restrict_writes([out_dir, tmp])     # Landlock: from now on this process (and whatever it
                                        # starts) writes only beneath these folders
    become_subreaper()                  # orphans of our descendants become our children
    end_descendants()                   # stop and kill every descendant, then reap them

Landlock (Linux 5.13 and later, unprivileged, inherited by every child) is what makes "a
plugin writes only into its folder" true rather than asked for: it restricts the write
accesses of the calling process, reading and executing stay free. Without it (an older
kernel, a seccomp filter that blocks the calls) `restrict_writes` returns False and the
caller checks afterwards what changed (vitscope.analyze.isolation).

A process that calls `os.setsid()` leaves its process group, so killing the group misses it,
and a double fork reparents it to init. A child subreaper keeps such orphans inside its own
tree (prctl PR_SET_CHILD_SUBREAPER), where `end_descendants` finds them through
/proc/<pid>/task/<tid>/children: each is stopped (SIGSTOP) before its children are listed, so
none can fork past the walk, and then all are killed.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import sys
import time
from pathlib import Path

LINUX = sys.platform.startswith("linux")
# Landlock's system calls (the same numbers on every architecture since Linux 5.13).
_CREATE, _ADD_RULE, _RESTRICT = 444, 445, 446
_VERSION = 1                     # LANDLOCK_CREATE_RULESET_VERSION
_PATH_BENEATH = 1                # LANDLOCK_RULE_PATH_BENEATH
_PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 38, 36
# Write accesses by the ABI version that introduced them; reading and executing are not
# handled, so they stay allowed everywhere.
_WRITE = {1: (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9)
          | (1 << 10) | (1 << 11) | (1 << 12),   # write file, remove dir/file, make any kind
          2: 1 << 13,                            # REFER: link or rename across folders
          3: 1 << 14}                            # TRUNCATE
_FILE_ACCESS = (1 << 1) | (1 << 14)              # what a rule on a single file may grant


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


OFF_ENV = "VITSCOPE_NO_LANDLOCK"   # =1: no kernel write limits (debugging; changes are still
                                  # found afterwards, vitscope.analyze.watch)


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none, blocked, or OFF_ENV set)."""
    if not LINUX or os.environ.get(OFF_ENV, "").strip() not in ("", "0"):
        return 0
    try:
        version = _libc().syscall(_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def restrict_writes(folders: list[Path], files: list[Path] = ()) -> bool:
    """From now on this process and its future children may create, change, rename or remove
    files only beneath `folders` (and write to the existing `files`, e.g. /dev/null). True
    when the kernel enforces it; False (nothing changed) where Landlock is unavailable."""
    abi = landlock_abi()
    if abi < 1:
        return False
    libc = _libc()
    handled = 0
    for version, bits in _WRITE.items():
        if abi >= version:
            handled |= bits
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(_CREATE, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        return False
    try:
        for path, access in [*((p, handled) for p in folders),
                             *((p, handled & _FILE_ACCESS) for p in files)]:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue              # a folder that does not exist needs no rule
            try:
                rule = _PathBeneath(access, fd)
                if libc.syscall(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_PATH_BENEATH),
                                ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                    err = ctypes.get_errno()
                    if err != errno.EINVAL:   # EINVAL: a folder right on a file; skipped
                        return False
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            return False
        return libc.syscall(_RESTRICT, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0
    finally:
        os.close(ruleset)


def become_subreaper(on: bool = True) -> bool:
    """Make this process a child subreaper (or stop being one); False where not possible."""
    if not LINUX:
        return False
    try:
        return _libc().prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int) -> list[int]:
    """The direct children of `pid` (every thread's), from /proc; [] when unknown."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                out += [int(c) for c in f.read().split()]
    return list(dict.fromkeys(out))


def end_tree(roots: list[int], *, include_roots: bool = True) -> list[int]:
    """Stop every process in the trees under `roots` (each before its children are listed, so
    none forks past the walk), then kill them all. Returns the pids killed."""
    seen: list[int] = []
    queue = list(roots)
    while queue:
        pid = queue.pop()
        if pid in seen or pid == os.getpid():
            continue
        seen.append(pid)
        if include_roots or pid not in roots:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        queue += children(pid)
    killed = [p for p in seen if include_roots or p not in roots]
    for pid in killed:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return killed


def end_descendants(timeout: float = 2.0) -> int:
    """Kill every descendant of this process (a subreaper: orphans included) and reap its
    children; returns how many were killed."""
    if not LINUX:
        return 0
    killed = end_tree([os.getpid()], include_roots=False)
    reap(timeout if killed else 0.0)
    return len(killed)


def reap(timeout: float = 2.0, pids: list[int] | None = None) -> None:
    """Collect exited children (all, or `pids`) for up to `timeout` seconds, so none stays a
    zombie."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pids is None:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            else:
                pid = 0
                for p in list(pids):
                    try:
                        if os.waitpid(p, os.WNOHANG)[0]:
                            pids.remove(p)
                    except ChildProcessError:   # not ours, or reaped already
                        pids.remove(p)
                if not pids:
                    return
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)
