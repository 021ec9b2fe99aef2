"""Doc test: docs/api.md runs as printed. Its ```python blocks run in order in one namespace,
from a folder holding `examples/` (as the page's paths assume, so nothing is written into the
repository), and each `print(...)` followed by comment lines must print what they say ("..."
stands for anything). When this fails, the page no longer tells the truth: fix the page."""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docs, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def expectations(block: str) -> list[str]:
    """The text each print statement is said to print: the comment lines right after it."""
    out, lines = [], block.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("print(") and i + 1 < len(lines) \
                and lines[i + 1].startswith("# "):
            said = []
            for follow in lines[i + 1:]:
                if not follow.startswith("# "):
                    break
                said.append(follow[2:].strip())
            out.append(" ".join(said))
    return out


def test_the_page_runs_as_printed(tmp_path, monkeypatch):
    from vitscope.methods import METHODS
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    code = blocks(DOC.read_text(encoding="utf-8"))
    assert len(code) >= 7
    namespace: dict = {}
    try:
        for block in code:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(block, str(DOC), "exec"), namespace)
            lines = printed.getvalue().splitlines()
            for said in expectations(block):
                pattern = ".*".join(re.escape(part) for part in said.split("..."))
                assert any(re.fullmatch(pattern, line) for line in lines), (said, lines)
    finally:
        METHODS.pop("input-gradient", None)
    assert not (ROOT / "outputs" / "cats").exists()
    assert os.listdir(tmp_path) == ["examples"]
