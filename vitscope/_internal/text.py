"""Short text from exceptions and values, for one-line error messages and warnings."""
from __future__ import annotations

from typing import Any


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most `limit` characters ("" if none)."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else ""


def error_summary(e: BaseException, limit: int = 160) -> str:
    """"TypeName: first sentence" of an exception, short enough for one line."""
    text = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters; never raises (a broken __repr__ gives <Type>)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shown_name(name: str) -> str:
    """A file name for display: on Linux a name is bytes, carried in Python with
    surrogateescape (b"\\xff" is "\\udcff"); those bytes are shown escaped ("bad\\xff.png"),
    so the text can be printed and written as UTF-8."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:   # a lone surrogate that no byte stands for
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
