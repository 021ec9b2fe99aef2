"""numba's compiled code, kept across runs in the user's cache folder (the one implementation).

umap-learn and pynndescent compile a few hundred functions with numba the first time a process
uses them: about 30 s on a 2-core CPU, in every new `vitscope analyze`. numba can keep machine
code on disk, but only for functions declared `cache=True`, and by default next to their source
(site-packages, often read-only). `load_umap()` points numba's cache at one folder and turns
caching on for every umap/pynndescent function compiled without it, so only the first run on a
machine pays. The folder is, first match wins:

    $NUMBA_CACHE_DIR              numba's own setting, when the user set it
    $VITSCOPE_CACHE/numba         vitscope's cache folder (decoded image folders live there too)
    ~/.cache/vitscope/numba

numba keys each entry by the function's source file (path, size, mtime), its signature, the
Python version and the CPU, so an upgraded umap or another machine sharing a home folder
recompiles instead of loading stale code. An unwritable folder costs a warning, never the run.
Delete the folder to reclaim its space (a few MB).
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

from vitscope._internal.folders import resolve_cache_dir

CACHED_PACKAGES = ("umap", "pynndescent")


def numba_cache_dir() -> Path:
    """Where numba keeps compiled code for vitscope (see the module docstring)."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    return Path(env).expanduser() if env else resolve_cache_dir() / "numba"


def _writable(folder: Path) -> str | None:
    """None if files can be created in `folder` (made if missing), else the reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def enable_numba_cache() -> Path | None:
    """Point numba's cache at numba_cache_dir() and cache every already-imported umap and
    pynndescent function; call it before (and it is safe to call again after) importing umap.
    Returns the folder, or None (with a warning) when it cannot be written."""
    folder = numba_cache_dir()
    reason = _writable(folder)
    if reason is not None:
        warnings.warn(f"numba's cache folder '{folder}' cannot be written ({reason}), so UMAP "
                      f"compiles again in every run (~30 s); set VITSCOPE_CACHE to a writable "
                      f"folder.", stacklevel=2)
        return None
    os.environ["NUMBA_CACHE_DIR"] = str(folder)  # read by numba when it is first imported
    if "numba" in sys.modules:                   # imported already: set it where it is read
        sys.modules["numba"].config.CACHE_DIR = str(folder)
        _cache_uncached(CACHED_PACKAGES)
    return folder


def _cache_uncached(packages: tuple[str, ...]) -> int:
    """Turn on caching for the numba-compiled functions of `packages` that lack it; returns
    how many. (numba's Dispatcher.enable_caching is what `cache=True` calls.)"""
    from numba.core.dispatcher import Dispatcher
    from numba.core.caching import NullCache

    count = 0
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in packages:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher) and isinstance(value._cache, NullCache):
                try:
                    value.enable_caching()
                except Exception:  # a function numba cannot cache stays as it was
                    continue
                count += 1
    return count


def load_umap() -> ModuleType:
    """`import umap` with numba's cache enabled for it (ImportError when not installed)."""
    folder = enable_numba_cache()
    with warnings.catch_warnings():   # umap warns about TensorFlow and parametric UMAP
        warnings.simplefilter("ignore")
        import umap
    if folder is not None:
        enable_numba_cache()          # numba is loaded now: cache what umap compiles without
    return umap
