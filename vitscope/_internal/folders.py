"""Output folders: created up front with one clear error, and tidied up after a failed command.

    with output_folder(Path("outputs/run/eval"), ConfigError, hint="choose another with -o"):
        ...   # an exception here removes the folders this call created, if still empty

Every command that writes results (eval, analyze, dump) checks its folder before the long part
of the work, so a typo in -o costs nothing, and a command that fails leaves no empty folders.
Files that must appear whole are written by vitscope._internal.files.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitscope.errors import VitscopeError


def make_output_dir(path: Path, error: type[VitscopeError], hint: str) -> list[Path]:
    """Create `path` and check that files can be written in it (a real probe file: os.access
    says yes to root on read-only mounts and /proc). Returns the folders it created,
    innermost first; raises `error` with `hint` where that cannot be done."""
    path = Path(path)
    created = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        remove_empty(created)
        reason = e.strerror or type(e).__name__
        raise error(f"Cannot write to the folder '{path}' ({reason}); {hint}.") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove the given folders, innermost first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()   # refuses, and keeps the folder, once anything is in it
        except OSError:
            return


def discard_new(created: list[Path], files: tuple[str, ...] = ()) -> None:
    """After a failed or interrupted command: `files` in the innermost folder it created (a
    shared file such as plotly.min.js, written there before the results it served), then the
    folders it created, as far as they are empty."""
    for name in files if created else ():
        with contextlib.suppress(OSError):
            (created[0] / name).unlink()
    remove_empty(created)


@contextlib.contextmanager
def output_folder(path: Path, error: type[VitscopeError], hint: str) -> Iterator[Path]:
    """make_output_dir, then remove_empty of what it created if the block raises."""
    created = make_output_dir(path, error, hint)
    try:
        yield Path(path)
    except BaseException:
        remove_empty(created)
        raise


def resolve_cache_dir(cache_dir: Any = None) -> Path:
    """vitscope's cache folder (decoded image folders, numba's compiled code): `cache_dir`,
    else $VITSCOPE_CACHE, else ~/.cache/vitscope."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("VITSCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vitscope"
