"""Writing files: whole or not at all, and failures (a full disk, a quota, a vanished or
read-only folder) as one sentence that names the folder and its free space. No torch.

The one write-then-rename helper of vitscope. Every temporary file is created exclusively
(O_CREAT|O_EXCL, mode 0600, `tempfile.mkstemp`) beside its target under an unpredictable name
that records the host and process (`.<name>.<random>.tmp-<host>-<pid><suffix>`, or
`<name>.<host>-<pid>-<random>.partial` for dumps), reopened only with O_NOFOLLOW, and checked to
be that same regular file before it is renamed: a link planted at a temporary name in a shared
folder is never written through. Temporaries of dead processes are swept by the next run in the
folder (`sweep_temporaries`, `partial_path`).

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
import hashlib
import io
import itertools
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from vitscope.errors import VitscopeError, WriteError

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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | NOFOLLOW,
                     0o666)
        self._f = os.fdopen(fd, "w+b", buffering=0)

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


NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
TEMP_MARK = ".tmp-"          # in every temporary name vitscope writes, before host and pid
STALE_S = 24 * 3600          # a temporary older than this is swept whoever left it


def host_tag() -> str:
    """This machine's name as it appears in temporary names (letters, digits, _)."""
    name = socket.gethostname() or "host"
    return "".join(c if c.isalnum() else "_" for c in name)[:32]


def alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_beside(path: Path) -> Path:
    """A new, empty file beside `path` to write it under, created exclusively with an
    unpredictable name that keeps `path`'s suffix (matplotlib and PIL pick the format from
    it): runs/x/.curves.png.k3j2h1x8.tmp-myhost-1234.png."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.",
                                suffix=f"{TEMP_MARK}{host_tag()}-{os.getpid()}{path.suffix}",
                                dir=path.parent)
    os.close(fd)
    return Path(name)


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries that killed processes left in `folder` (those of a dead process
    of this host, and any older than a day); returns what was removed. Never follows links."""
    removed = []
    host = host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or TEMP_MARK not in name:
            continue
        tag = name.rsplit(TEMP_MARK, 1)[1]
        owner, _, rest = tag.rpartition("-")
        pid = "".join(itertools.takewhile(str.isdigit, rest))
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        dead = owner == host and pid.isdigit() and not alive(int(pid))
        if dead or now - st.st_mtime > STALE_S:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _identity(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def _still_ours(tmp: Path, identity: tuple[int, int]) -> None:
    """OSError unless `tmp` is still the regular file created for this write."""
    st = os.lstat(tmp)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != identity:
        raise OSError(errno.EEXIST, f"the temporary file '{tmp}' was replaced by another "
                                    f"process while it was written; nothing was published")


def default_mode() -> int:
    """The permissions a new file gets here (0o666 less the umask): temporaries are 0600."""
    global _MODE
    if _MODE is None:
        mask = 0o022
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("Umask:"):
                        mask = int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
        _MODE = 0o666 & ~mask
    return _MODE


_MODE: int | None = None


def _seal(tmp: Path, identity: tuple[int, int]) -> None:
    """fsync `tmp` (opened without following links) and give it a normal file's mode."""
    _still_ours(tmp, identity)
    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC | NOFOLLOW)
    try:
        os.fsync(fd)
        os.fchmod(fd, default_mode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(*paths: Path, hint: str | None = None) -> Iterator[list[Path]]:
    """Temporary paths to write `paths` to, renamed over them only when the whole block
    succeeds; on any failure they are removed and the old files stay as they were
    (OSError -> WriteError naming the first path)."""
    temps: list[Path] = []
    try:
        with guard(paths[0], hint):
            for p in paths:
                sweep_temporaries(Path(p).parent)
            temps = [temporary_beside(p) for p in paths]
            ids = [_identity(t) for t in temps]
            yield list(temps)
            for tmp, identity in zip(temps, ids):
                _seal(tmp, identity)
            for tmp, path in zip(temps, paths):
                os.replace(tmp, path)
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_atomic(path: Path, data: bytes | str, *, hint: str | None = None) -> Path:
    """Write `data` to `path` whole or not at all (replacing with one file)."""
    with replacing(Path(path), hint=hint) as (tmp,):
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


# --------------------------------------------------------------- files that appear whole

def partial_path(out: Path) -> Path:
    """A new partial file beside `out`, unique to this process (created empty, exclusively):
    `OUT.h5.<host>-<pid>-<random>.partial`. Two captures to one OUT never share or delete
    each other's partial file; ones left by killed processes of this host are removed."""
    out = Path(out)
    host = host_tag()
    for stale in out.parent.glob(f"{glob_escape(out.name)}.{host}-*.partial"):
        pid = stale.name[len(out.name) + len(host) + 2:].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
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
    if os.path.islink(partial) or not partial.is_file():
        raise error(f"The partial file '{partial}' was replaced by another process while it "
                    f"was written; nothing was published; {hint}.")
    with contextlib.suppress(OSError):
        os.chmod(partial, default_mode())
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


_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, cached per (path, size, mtime) so repeated requests hash once."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]
