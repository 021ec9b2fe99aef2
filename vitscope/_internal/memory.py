"""Giving memory back to the operating system after a capture, before plugins render.

The capture's model, batches and activations are garbage once the dump is written, but freed
memory stays in the process: CPython's and glibc's heaps keep their arenas, torch keeps its CUDA
cache. `analyze` renders every plugin in child processes while it waits, so whatever it keeps
is counted beside every one of them (issue 23: 1.9 GB kept through all the rendering).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Iterator

# glibc's mallopt parameters, and its defaults (the threshold glibc would otherwise adapt)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DEFAULT_THRESHOLD = 128 * 1024
LARGE_BLOCKS = 1 << 30      # blocks up to this size stay in the heap for reuse during a capture


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


def _libc():
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


@contextlib.contextmanager
def reuse_large_blocks() -> Iterator[None]:
    """While the block runs, glibc keeps freed blocks of up to LARGE_BLOCKS in the heap and
    hands them out again, instead of mapping fresh zeroed pages for every block over 32 MB
    and unmapping them when freed. A capture allocates the same large tensors every batch
    (a ViT-S/16 at 224 px: 45 MB an attention map per block at batch 48), and the page
    faults of mapping them anew cost more CPU than the explicit attention itself
    (issue 23: 0.74 M faults and 1.2 CPU s of 7.5 for 48 images; 35 k and 0.04 s with this;
    benchmarks/capture_attention_224.py). At the end the thresholds go back to glibc's
    defaults and the free heap is returned (`give_back`). A no-op without glibc."""
    libc = _libc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCKS)
    libc.mallopt(_M_TRIM_THRESHOLD, LARGE_BLOCKS)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)
        give_back()
