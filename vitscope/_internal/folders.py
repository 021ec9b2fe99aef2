"""Output folders: created up front with one clear error, and tidied up after a failed command.

    with output_folder(Path("outputs/run/eval"), ConfigError, hint="choose another with -o"):
        ...   # an exception here removes the folders this call created, if still empty

Every command that writes results (eval, analyze, dump) checks its folder before the long part
of the work, so a typo in -o costs nothing, and a command that fails leaves no empty folders.
Files that must appear whole (dumps) are written under a `partial_path` unique to the process
and renamed into place by `publish`.
"""
from __future__ import annotations

import contextlib
import os
import socket
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


@contextlib.contextmanager
def output_folder(path: Path, error: type[VitscopeError], hint: str) -> Iterator[Path]:
    """make_output_dir, then remove_empty of what it created if the block raises."""
    created = make_output_dir(path, error, hint)
    try:
        yield Path(path)
    except BaseException:
        remove_empty(created)
        raise


# --------------------------------------------------------------- files that appear whole

def partial_path(out: Path) -> Path:
    """A new partial file beside `out`, unique to this process (created empty, exclusively):
    `OUT.h5.<host>-<pid>-<random>.partial`. Two captures to one OUT never share or delete
    each other's partial file; ones left by killed processes of this host are removed."""
    out = Path(out)
    host = _host()
    for stale in out.parent.glob(f"{glob_escape(out.name)}.{host}-*.partial"):
        pid = stale.name[len(out.name) + len(host) + 2:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{out.name}.{host}-{os.getpid()}-", suffix=".partial",
                                dir=out.parent)
    os.close(fd)
    return Path(name)


def publish(partial: Path, out: Path, *, force: bool, error: type[VitscopeError],
            hint: str) -> None:
    """Rename a finished `partial` to `out` in one step. Without `force` an `out` that
    appeared meanwhile (another process finished first) is never replaced: a hard link
    creates `out` only if it is absent, atomically; `error` names it with `hint`."""
    partial, out = Path(partial), Path(out)
    if force:
        os.replace(partial, out)
        return
    try:
        os.link(partial, out)
    except FileExistsError:
        raise error(f"'{out}' appeared while this one was written (another process wrote it); "
                    f"{hint}.") from None
    except OSError:   # a file system without hard links: check, then rename
        if out.exists():
            raise error(f"'{out}' appeared while this one was written (another process wrote "
                        f"it); {hint}.") from None
        os.replace(partial, out)
        return
    partial.unlink()


def glob_escape(name: str) -> str:
    """`name` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _host() -> str:
    name = socket.gethostname() or "host"
    return "".join(c if c.isalnum() else "_" for c in name)[:32]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_cache_dir(cache_dir: Any = None) -> Path:
    """vitscope's cache folder (decoded image folders, numba's compiled code): `cache_dir`,
    else $VITSCOPE_CACHE, else ~/.cache/vitscope."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("VITSCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vitscope"
