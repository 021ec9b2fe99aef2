"""Parsing text from files and flags with caps on its size and nesting depth. No torch.

Python's json (and tomllib) recurse once per level of nesting: text nested 10,000 deep raises
RecursionError, and a 1 GB attribute is parsed into memory before anything looks at it. The
readers of dump attributes and `--set` values check both caps first, so such text gets one
sentence instead of a traceback:

    loads_json(text, max_bytes=MAX_JSON_BYTES, max_depth=MAX_DEPTH)   # ValueError(reason)
    nesting_depth("[1, [2, {'a': 3}]]")                                # 3
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 32                 # the deepest vitscope writes is 3 (token_layout's prefix pairs)
MAX_JSON_BYTES = 8 << 20       # 8 MiB: 1,000 class names take 20 kB, every hook of ViT-H 40 kB
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')   # JSON/TOML strings, where brackets are text


def nesting_depth(text: str) -> int:
    """How deep [ and { nest in `text` outside quoted strings (vectorised: fast on megabytes)."""
    codes = np.frombuffer(_QUOTED.sub("", text).encode("utf-8", "replace"), dtype=np.uint8)
    step = np.isin(codes, (0x5B, 0x7B)).astype(np.int64) - np.isin(codes, (0x5D, 0x7D))
    return int(np.cumsum(step).max(initial=0))


def check_text(text: str, what: str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> None:
    """ValueError naming `what` when `text` is longer than `max_bytes` or nests deeper than
    `max_depth`; nothing has been parsed yet."""
    size = len(text.encode("utf-8", "replace"))
    if size > max_bytes:
        raise ValueError(f"{what} is {size:,} bytes, more than the {max_bytes:,} allowed")
    depth = nesting_depth(text)
    if depth > max_depth:
        raise ValueError(f"{what} nests {depth:,} levels deep, more than the {max_depth} allowed")


def loads_json(text: str | bytes, what: str = "the JSON text", *,
               max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads within the caps; ValueError with one short reason for anything wrong."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        raise ValueError(f"{what} is a {type(text).__name__}, not JSON text")
    check_text(text, what, max_bytes=max_bytes, max_depth=max_depth)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        reason = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise ValueError(f"{what} is not valid JSON ({reason})") from None
