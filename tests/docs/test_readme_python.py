"""README's Python example runs as printed, from a folder holding what ships, and makes what
its comments say: the picture, the maps, the evidence and a saved run."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"^## In Python\n\n```python\n(.*?)^```", text, re.S | re.M)
    assert found, "README.md has no '## In Python' section with a python block"
    return found.group(1)


def test_readme_python_example_runs_as_printed(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_python(), "README.md", "exec"), scope)
    ex, ev = scope["ex"], scope["ev"]
    maps = ex.maps["grad-rollout"]
    assert maps.shape == (4, *ex.layout.grid) and np.isfinite(maps).all()
    with Image.open(tmp_path / "explain.png") as im:
        assert im.size[0] > 400 and im.size[1] > 300
    text = str(ev)
    assert "Faithfulness" in text and "random order" in text and "Randomisation" in text
    assert (tmp_path / "outputs/cats/index.html").is_file()
    assert (tmp_path / "outputs/cats/grad-rollout").is_dir()
