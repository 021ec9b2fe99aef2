"""Real installed plugin distributions for tests: a *.dist-info folder (METADATA,
entry_points.txt) and a module, on a folder that the test puts on sys.path or PYTHONPATH, found
by importlib.metadata exactly as a `pip install` would be."""
from __future__ import annotations

from pathlib import Path


def write_distribution(root: Path, dist: str, module: str | None, source: str | None,
                       entry_points: dict[str, str], *, metadata: bytes | None = None,
                       entry_text: bytes | None = None) -> Path:
    """A real installed distribution `dist` 0.1 under root (put root on sys.path)."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_bytes(metadata if metadata is not None else
                                    f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n".encode())
    lines = [f"{name} = {value.format(mod=module)}" for name, value in entry_points.items()]
    (info / "entry_points.txt").write_bytes(
        entry_text if entry_text is not None else
        ("[vitscope.plugins]\n" + "\n".join(lines) + "\n").encode())
    if module and source:
        (root / f"{module}.py").write_text(source)
    return root
