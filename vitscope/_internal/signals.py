"""SIGTERM handled like Ctrl-C: an exception in the main thread, so cleanup code runs.

    with terminate_as_exception():
        long_work()      # `kill PID` raises Terminated (a SystemExit, exit code 143) here

Without it SIGTERM ends Python at once: no `finally`, no `with` exit, so temporary files
and folders stay behind and lock files linger until the kernel drops them.
"""
from __future__ import annotations

import signal
import threading


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
