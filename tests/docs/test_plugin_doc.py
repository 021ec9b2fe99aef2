"""Doc test: docs/plugins.md, "Writing a plugin", followed to the letter.

The section's code blocks that start with a file-name comment (`# my_plugin.py`,
`# pyproject.toml`, `# test_my_plugin.py`) are written into a new folder, exactly as a reader
would copy them; that folder is pip-installed (editable) into a fresh virtual environment, and
the real CLI of that environment renders the plugin and lists it; the doc's own test runs
under pytest there. When this fails, the doc no longer tells the truth: fix the doc.

The fresh environment sees the packages of the one running the tests (torch, vitscope,
setuptools, pip, pytest) through a .pth file, so nothing is downloaded: a venv made from a
venv's interpreter with --system-site-packages sees the *base* interpreter's packages only.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest

from vitscope.dump import Dump
from vitscope.testing import make_dump

pytestmark = [pytest.mark.docs, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
SECTION = "Writing a plugin"
# A block is a file when its first line names one: "# my_plugin.py", "# pyproject.toml".
FILE_COMMENT = re.compile(r"#\s*([\w.-]+\.(?:py|toml|cfg))\b")
PNG = b"\x89PNG\r\n\x1a\n"


def doc_files(text: str, section: str = SECTION) -> dict[str, str]:
    """{file name: content} of the code blocks in `## section` (its ### subsections too) whose
    first line is a file-name comment."""
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:] if end == -1 else text[start:end]
    files = {}
    for block in re.findall(r"^```[\w-]*\n(.*?)^```", body, re.M | re.S):
        named = FILE_COMMENT.match(block.split("\n", 1)[0].strip())
        if named:
            files[named.group(1)] = block
    return files


def fresh_venv(where: Path) -> Path:
    """A new virtual environment that also sees this interpreter's packages; its python."""
    venv.EnvBuilder(with_pip=False, system_site_packages=True).create(where)
    python = where / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True)
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # addsitedir (not a bare path) so the .pth files there run too: editable installs of
    # vitscope and the example plugin are found through theirs.
    Path(purelib.stdout.strip(), "_vitscope_test_parent.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in sorted(ours)))
    return python


def run(cmd, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VITSCOPE_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_docs_plugin_installs_renders_and_passes_its_own_test(tmp_path):
    files = doc_files(DOC.read_text(encoding="utf-8"))
    assert "my_plugin.py" in files, f"{DOC}: no `# my_plugin.py` block; found {sorted(files)}"
    package = tmp_path / "my-plugin"
    package.mkdir()
    for name, content in files.items():
        (package / name).write_text(content, encoding="utf-8")

    python = fresh_venv(tmp_path / "venv")
    install = run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                   "--no-index", "-q", "-e", "."], package)
    assert install.returncode == 0, f"pip install -e of the doc's files {sorted(files)} " \
                                    f"failed:\n{install.stdout}{install.stderr}"

    listed = run([python, "-m", "vitscope", "plugins"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next((l for l in listed.stdout.splitlines() if l.startswith("mean-attention ")), "")
    assert line.split()[1:4] == ["vitscope-mean-attention", "0.1.0", "ok"], listed.stdout

    dump_path = make_dump(tmp_path / "tiny.h5", n=4, checkpoint=tmp_path / "tiny.pt")
    out = tmp_path / "out"
    res = run([python, "-m", "vitscope", "analyze", tmp_path / "tiny.pt", "--dump", dump_path,
               "--plugin", "mean-attention", "-o", out], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^ok\s+mean-attention\s", res.stdout, re.M), res.stdout
    assert "wrote no" not in res.stdout, res.stdout   # it has both kinds of figure
    folder = out / "mean-attention"
    assert (folder / "received.png").read_bytes()[:8] == PNG
    html = (folder / "received.html").read_text(encoding="utf-8")
    assert "Plotly.newPlot" in html and 'src="http' not in html     # offline page
    assert "mean-attention/received.png" in (out / "index.html").read_text(encoding="utf-8")
    # The numbers behind the figure are what the doc says: attention received per patch.
    with Dump.open(dump_path) as dump:
        attn = dump[dump.match("blocks.*.attn.weights")[-1]][:].astype(np.float32)
        p, grid = dump.layout.num_prefix_tokens, dump.layout.grid
    want = attn[..., p:].mean(axis=(1, 2)).reshape(len(attn), *grid)
    np.testing.assert_allclose(np.load(folder / "results.npz")["received"], want, rtol=1e-5)

    tests = [name for name in files if name.startswith("test_")]
    assert tests, f"{DOC}: no `# test_....py` block in '{SECTION}'; found {sorted(files)}"
    tested = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  "--basetemp", tmp_path / "inner", *tests], package)
    assert tested.returncode == 0 and " passed" in tested.stdout, tested.stdout + tested.stderr
