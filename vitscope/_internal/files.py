"""Writes that fail (a full disk, a quota, a vanished or read-only folder) as one sentence that
names the folder and its free space, without losing what was there before. No torch.

    with guard(run_dir):                      # OSError while writing -> WriteError
        ...
    f = GuardedFile(tmp, swallow=True)        # for HDF5: remembers the first failed write
    ... h5py.File(f, "w") ...; f.check()      # -> WriteError after the file was closed cleanly
    with replacing(out / "metrics.json", out / "confusion.png") as (m, c):
        ...write m and c...                   # renamed over the old files only if all succeed

Why a guarded file for HDF5: once the HDF5 library has failed a write it cannot close the file
again, and the process crashes at the latest at exit (h5py issue #914: "Segmentation fault"
after "No space left on device"). Written through a file object that swallows the error, the
library never sees it: the file is closed normally, then deleted, and the error reported.
torch's zip writer reports a failed write as "unexpected pos 156352 vs 156240"; through a
guarded file the real cause is known.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vitscope.errors import WriteError

# The errors that mean "this file system cannot take the write", as opposed to a bug.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO,
                         errno.EACCES, errno.EPERM})


def free_space(folder: Path) -> str:
    """Free space where `folder` (or its nearest existing parent) lives, e.g. "1.9 MB"."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "an unknown amount"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if free >= size:
            return f"{free / size:,.1f} {unit}"
    return f"{free} bytes"


def write_failure(path: Path | str, error: BaseException) -> WriteError:
    """The WriteError for `path`: "Cannot write 'P' (No space left on device; its folder 'F'
    has 1.9 MB free)"; commands add what is kept and what to do (WriteError.with_hint)."""
    if isinstance(error, WriteError):
        return error
    path = Path(path)
    reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0][:120] \
        or type(error).__name__
    folder = path.parent if path.suffix or not path.is_dir() else path
    return WriteError(f"Cannot write '{path}' ({reason}; its folder '{folder}' has "
                      f"{free_space(folder)} free).")


# The ones that no program can have caused by a bug of its own: space, quota, a read-only mount.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS or (
        isinstance(error, WriteError) and any(os.strerror(n) in str(error)
                                              for n in DISK_FULL_ERRNOS))


def is_write_failure(error: BaseException) -> bool:
    return isinstance(error, WriteError) or (isinstance(error, OSError)
                                             and error.errno in DISK_ERRNOS)


@contextlib.contextmanager
def guard(path: Path | str, hint: str | None = None) -> Iterator[None]:
    """OSError of the file system inside the block -> WriteError naming `path` (with `hint`).
    Other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        if not is_write_failure(e):
            raise
        failure = write_failure(path, e)
        raise (failure.with_hint(hint) if hint else failure) from None


class GuardedFile(io.RawIOBase):
    """A binary read/write file (created or truncated) that remembers the first failed write.

    `swallow=False` re-raises it (torch.save stops at once); `swallow=True` pretends the write
    succeeded and drops it and every later write (for HDF5, see the module docstring). Either
    way `check()` raises WriteError afterwards."""

    def __init__(self, path: Path | str, *, swallow: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.swallow = swallow
        self.error: OSError | None = None
        self._f = open(self.path, "w+b", buffering=0)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._f.readinto(buffer)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is not None and self.swallow:
            return len(view)
        try:
            done = 0
            while done < len(view):
                done += self._f.write(view[done:])
            return done
        except OSError as e:
            return self._failed(e, len(view))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        try:
            return self._f.truncate(size)
        except OSError as e:
            return self._failed(e, size if size is not None else self.tell())

    def flush(self) -> None:
        pass  # unbuffered

    def sync(self) -> None:
        """fsync: on some file systems a full disk shows only here."""
        if self.error is None:
            try:
                os.fsync(self._f.fileno())
            except OSError as e:
                self._failed(e, 0)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()

    def check(self) -> None:
        if self.error is not None:
            raise write_failure(self.path, self.error)

    def _failed(self, error: OSError, result: int) -> int:
        if self.error is None:
            self.error = error
        if not self.swallow:
            raise error
        return result


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path` for writing it, with its suffix (matplotlib picks the
    format from it): runs/x/.curves.tmp-1234.png."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def replacing(*paths: Path, hint: str | None = None) -> Iterator[list[Path]]:
    """Temporary paths to write `paths` to, renamed over them only when the whole block
    succeeds; on any failure they are removed and the old files stay as they were
    (OSError -> WriteError naming the first path)."""
    temps = [temporary_name(p) for p in paths]
    try:
        with guard(paths[0], hint):
            yield temps
            for tmp in temps:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            for tmp, path in zip(temps, paths):
                os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
