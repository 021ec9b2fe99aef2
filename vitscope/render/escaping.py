"""Escaping for everything vitscope writes into HTML, scripts and Plotly text.

Class names, file names, captions and summary values come from checkpoints, dumps and
folder names, which anyone can make: `</script><script>…` or `<img src=x onerror=…>` are
legal class names. Every HTML writer goes through these five functions:

    text(v)          HTML text and attribute values (quotes included): `&lt;img …&gt;`
    href(path)       a relative link to a file under the page's folder: `./rollout/a%20b.png`
    script_json(v)   a JSON value to paste inside <script>: `<`, `>`, `&`, U+2028/9 as \\uXXXX,
                     so no `</script>` or `<!--` can end or change the block
    plotly_text(v)   a string for Plotly's text fields (titles, legend names, hover text), which
                     Plotly reads as its own small HTML: shown literally instead of as markup
    template_text(v) the same for a Plotly hovertemplate, whose `%{…}` is a substitution

Scripts that show such strings set `textContent`, never `innerHTML`.
"""
from __future__ import annotations

import html
import json
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from vitscope._internal.text import shown_name

_SCRIPT_SWAPS = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                 ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def text(value: Any) -> str:
    """`value` as HTML text, safe in element content and in quoted attributes. A file name
    that is not UTF-8 (bytes carried as surrogateescape) is shown escaped: `bad\\xff.png`."""
    return html.escape(shown_name(str(value)), quote=True)


def href(path: Any) -> str:
    """A relative URL for a file path under the page's folder, escaped for an attribute.

    Each segment is percent-encoded (so `#`, `?` and spaces in file names work) and the URL
    starts with `./`, so no segment can be read as a scheme such as `javascript:`."""
    parts = [quote(_bytes(p), safe="") for p in PurePosixPath(str(path).replace("\\", "/")).parts
             if p not in ("", ".")]
    return text("./" + "/".join(parts))


def _bytes(segment: str) -> bytes:
    """A path segment as the bytes it names (non-UTF-8 names arrive as surrogateescape), so
    its link percent-encodes the file's real name."""
    try:
        return segment.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return segment.encode("utf-8", "backslashreplace")


def script_json(value: Any) -> str:
    """JSON for a <script> block: the characters that could end the block, start an HTML
    comment or end a JavaScript line are written as \\u escapes (still the same JSON), and so
    are lone surrogates (names that are not UTF-8)."""
    out = json.dumps(value, ensure_ascii=False)
    out = out.encode("utf-8", "backslashreplace").decode("utf-8")
    for char, escaped in _SCRIPT_SWAPS:
        out = out.replace(char, escaped)
    return out


def plotly_text(value: Any) -> str:
    """A string Plotly shows as-is: it parses `<b>`, `<br>`, `<a href>`… in text fields and
    decodes HTML entities, so escaping keeps a class name like `<b>x</b>` literal."""
    return html.escape(shown_name(str(value)), quote=False)


def template_text(value: Any) -> str:
    """plotly_text for a hovertemplate, where `%{name}` would be substituted."""
    return plotly_text(value).replace("%", "&#37;")
