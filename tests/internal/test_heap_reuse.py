"""reuse_large_blocks: during a capture glibc keeps freed large blocks in the heap for the next
batch instead of unmapping them and mapping fresh pages (the page faults cost a 224-px capture
more than its explicit attention); afterwards its defaults are back and the heap is returned.
Seen in this process's real resident memory."""
from __future__ import annotations

import platform
import sys

import numpy as np
import psutil
import pytest

from vitscope._internal.memory import _libc, reuse_large_blocks

BLOCK = 64 << 20       # over glibc's largest dynamic mmap threshold (32 MB)
MB = 1 << 20


def kept_after_free() -> int:
    """Bytes of resident memory a touched, then freed, BLOCK leaves behind."""
    me = psutil.Process()
    before = me.memory_info().rss
    block = np.ones(BLOCK, np.uint8)
    del block
    return me.memory_info().rss - before


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
                    or _libc() is None, reason="glibc's mallopt")
def test_large_blocks_stay_for_reuse_inside_and_go_back_after():
    assert kept_after_free() < 16 * MB            # glibc's default: unmapped at once
    me = psutil.Process()
    with reuse_large_blocks():
        assert kept_after_free() > 48 * MB        # kept in the heap for the next batch
        inside = me.memory_info().rss
    assert me.memory_info().rss < inside - 48 * MB   # returned when the capture ends
    assert kept_after_free() < 16 * MB            # and the defaults are back
