"""Giving memory back to the operating system after a capture, before plugins render.

The capture's model, batches and activations are garbage once the dump is written, but freed
memory stays in the process: CPython's and glibc's heaps keep their arenas, torch keeps its CUDA
cache. `analyze` renders every plugin in child processes while it waits, so whatever it keeps
is counted beside every one of them (issue 23: 1.9 GB kept through all the rendering).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys


def give_back() -> None:
    """Collect garbage, empty torch's CUDA cache where torch is loaded and CUDA initialised,
    and ask glibc to return its free heap pages (`malloc_trim(0)`; a no-op elsewhere)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except Exception:   # a broken CUDA setup must not fail an analysis that has its dump
            pass
    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):   # musl and others without malloc_trim
            pass
