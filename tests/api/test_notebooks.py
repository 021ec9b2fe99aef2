"""The tutorial notebooks (examples/notebooks) run top to bottom, in a kernel of this
environment's Python, and are committed without outputs.

Run with nbclient (the library Jupyter's own `nbconvert --execute` uses): one kernel per
notebook, every cell's error fails the test with the cell's traceback, and nothing but the
standard Jupyter stack is needed; nbmake would add a pytest plugin for the same call and
papermill parameters the notebooks do not have. The kernel is this interpreter
(sys.executable), through a kernelspec written for the test, never whatever `python3` kernel
the machine has installed."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))
LIMIT_S = 120      # a hang guard; each runs in about 10-25 s on the 2-core CI machine


def test_the_tutorials_are_there_and_committed_without_outputs():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]
    for path in NOTEBOOKS:
        book = json.loads(path.read_text(encoding="utf-8"))
        for cell in book["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, (
                    f"{path.name} holds outputs; clear them before committing "
                    f"(jupyter nbconvert --clear-output --inplace {path.name})")
        assert book["metadata"]["kernelspec"]["name"] == "python3"


@pytest.fixture(scope="module")
def kernel_of_this_python(tmp_path_factory):
    """A kernelspec whose argv is this interpreter, found first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "vitscope-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vitscope test", "language": "python"}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(root)
    yield "vitscope-test"
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_of_this_python):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    book = nbformat.read(path, as_version=4)
    book.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    t0 = time.perf_counter()
    client = nbclient.NotebookClient(book, kernel_name=kernel_of_this_python, timeout=LIMIT_S,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    seconds = time.perf_counter() - t0
    printed = "".join(o.get("text", "") for o in book.cells[-1].outputs)
    assert printed.strip() == sys.executable
    shown = [o for c in book.cells if c.cell_type == "code" for o in c.outputs
             if o.get("output_type") in ("display_data", "execute_result")]
    assert any("text/html" in o.get("data", {}) for o in shown), "nothing was displayed"
    assert seconds < LIMIT_S, f"{path.name} took {seconds:.0f} s"
    print(f"{path.name}: {seconds:.1f} s")
