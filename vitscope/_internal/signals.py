"""Signals that end a command without leaving anything half made.

    with terminate_as_exception():
        long_work()      # `kill PID` raises Terminated (a SystemExit, exit code 143) here
    with interrupt_once():
        long_work()      # Ctrl-C raises KeyboardInterrupt; a second one no longer cuts the
                         # cleanup the first one started
    with deferred_interrupts():
        renames()        # Ctrl-C and SIGTERM wait until the block is done

Without them SIGTERM ends Python at once (no `finally`, no `with` exit, so temporary files
and folders stay behind and lock files linger until the kernel drops them), and an impatient
second Ctrl-C interrupts the very cleanup that keeps the output folder whole.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(SystemExit):
    """SIGTERM turned into an exception; its code is the shell's 128 + signal number."""


class terminate_as_exception:
    """While the block runs in the main thread, SIGTERM raises Terminated (elsewhere: no-op,
    only the main thread may install handlers). Only where SIGTERM has its default action:
    a handler someone installed (training's "stop at the next step", an outer block) stays.
    The previous handler comes back at exit."""

    def __enter__(self):
        self.installed = threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
        if self.installed:
            def handler(signum, frame):
                raise Terminated(128 + signum)
            self.previous = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None
                          else signal.SIG_DFL)
        return False


@contextlib.contextmanager
def interrupt_once() -> Iterator[None]:
    """Within the block (main thread, where Python's own Ctrl-C handler is installed), the
    first SIGINT raises KeyboardInterrupt and any later one is ignored until the block has
    been left: the `finally` and `with` exits the first one runs are not cut short."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def first(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then arrive as usual (a few renames
    that must happen all or none, a process start that must not be cut in half)."""
    if not hasattr(signal, "pthread_sigmask") or \
            threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored within the block (main thread), so that a process started here ignores
    it too (an ignored signal stays ignored across exec): a helper process that shares the
    terminal's process group, like multiprocessing's fork server, then never prints a
    KeyboardInterrupt traceback of its own on Ctrl-C; the command that owns it stops it."""
    if threading.current_thread() is not threading.main_thread():
        with deferred_interrupts():
            yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
