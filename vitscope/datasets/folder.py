"""`folder:PATH`: images on disk, decoded once in parallel into a cached uint8 array.

Three layouts are recognised (docs/data.md):

    PATH/train/<class>/*.jpg + PATH/val/<class>/*   (or test/)   two splits
    PATH/<class>/*.png                                            one split; val carved with val_split
    PATH/*.jpg                                                    unlabeled (labels -1, classes [])

Any format PIL reads, any size (see images.py for the resize policy). The decoded array is
cached in `cache_dir/folders/<key>.npz`, keyed by a hash of the sorted file list with sizes
and modification times plus the image size, so a second run only reads one file; any change
to the files gives a new key. Files that fail to decode are skipped with ONE warning listing
them (a corrupt file should not cost a long training run); the cache remembers them.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from vitscope.datasets.images import decode_many, is_image_name
from vitscope.errors import DataError

CACHE_VERSION = 1
DEFAULT_VAL_SPLIT = 0.1
POOL_MIN_FILES = 256     # below this, decoding in-process is faster than starting workers
TASK_FILES = 256         # files per pool task: large enough to amortise the inter-process cost
MAX_LISTED = 20          # skipped files named in the warning; the rest are counted


class DataWarning(UserWarning):
    """Something about a dataset the user should know, which did not stop the load."""


class CorruptImageWarning(DataWarning):
    """Some files of a folder dataset could not be decoded and were skipped."""


def load(path: str, split: str, image_size: int, *, spec: str, val_split: float | None,
         seed: int, cache_dir: Path, workers: int | None = None):
    from vitscope.data import carve_split

    root = Path(path).expanduser().absolute()  # absolute paths: in the cache key and ds.paths
    if not root.exists():
        raise DataError(f"The folder '{root}' of --data {spec} does not exist; check the path, "
                        f"or use --data shapes for the built-in dataset.")
    if not root.is_dir():
        raise DataError(f"'{root}' of --data {spec} is a file, not a folder; folder:PATH needs a "
                        f"folder of images or of class sub-folders.")
    train_dir = root / "train"
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)

    if train_dir.is_dir() and val_dir is not None and val_split is None:
        train_classes = _class_dirs(train_dir)
        val_classes = _class_dirs(val_dir)
        if train_classes and val_classes and train_classes != val_classes:
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise DataError(
                f"The train and {val_dir.name} folders of '{root}' have different classes "
                f"(only in train: {', '.join(only_train) or '-'}; only in {val_dir.name}: "
                f"{', '.join(only_val) or '-'}); give both splits the same class sub-folders.")
        return _load_tree(train_dir if split == "train" else val_dir, split, image_size, spec,
                          cache_dir, workers)

    # One split on disk (PATH/train alone, or PATH itself): val is carved from it.
    source = train_dir if train_dir.is_dir() else root
    full = _load_tree(source, "train", image_size, spec, cache_dir, workers)
    if not full.classes and val_split is None:
        full.split = split  # a flat, unlabeled folder: every image, whichever split is asked
        return full
    return carve_split(full, split, val_split if val_split is not None else DEFAULT_VAL_SPLIT, seed)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: Path | str, recursive: bool) -> list[os.DirEntry]:
    """Image files (by extension) under `folder`, sorted by path; hidden files are ignored."""
    found: list[os.DirEntry] = []
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if recursive:
                        stack.append(entry.path)
                elif is_image_name(entry.name):
                    found.append(entry)
    return sorted(found, key=lambda e: e.path)


def _load_tree(folder: Path, split: str, image_size: int, spec: str, cache_dir: Path,
               workers: int | None):
    """A class tree (folder/<class>/...) or a flat folder of images, decoded and cached."""
    from vitscope.data import ImageDataset

    classes = _class_dirs(folder)
    entries: list[os.DirEntry] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = _image_files(folder / name, recursive=True)
        if not files:
            raise DataError(f"The class folder '{folder / name}' holds no image files; add "
                            f"images to it or remove it (every class needs at least one image).")
        entries += files
        labels += [label] * len(files)
    loose = _image_files(folder, recursive=False)
    if not classes:
        entries, labels = loose, [-1] * len(loose)
    elif loose:
        warnings.warn(f"Ignored {len(loose)} image file(s) directly in '{folder}' (e.g. "
                      f"{loose[0].name}), beside its class sub-folders; move them into a class "
                      f"folder to use them.", DataWarning, stacklevel=4)
    if not entries:
        raise DataError(f"The folder '{folder}' of --data {spec} holds no image files (looked "
                        f"for .jpg, .png, .webp and other formats PIL reads, directly and in "
                        f"class sub-folders); point folder: at a folder of images.")

    paths = [e.path for e in entries]
    images, errors = _decode_cached(entries, image_size, cache_dir, workers)
    bad = [i for i, err in enumerate(errors) if err is not None]
    if len(bad) == len(paths):
        raise DataError(f"None of the {len(paths)} image files in '{folder}' could be decoded "
                        f"(e.g. {paths[0]}: {errors[0]}); check that they are images.")
    if bad:
        listed = "; ".join(f"{paths[i]} ({errors[i]})" for i in bad[:MAX_LISTED])
        more = f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        warnings.warn(f"Skipped {len(bad)} unreadable image file(s) of {len(paths)} in "
                      f"'{folder}': {listed}{more}.", CorruptImageWarning, stacklevel=4)
        keep = np.setdiff1d(np.arange(len(paths)), bad)
        images = images[keep]
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
    return ImageDataset(images=images, labels=np.asarray(labels, dtype=np.int64), classes=classes,
                        masks=None, spec=spec, split=split, paths=paths)


def cache_key(entries: list[os.DirEntry], image_size: int) -> str:
    """Hash of the sorted (absolute) paths with sizes and mtimes, plus the image size."""
    h = hashlib.sha256(f"vitscope-folder-cache {CACHE_VERSION} {image_size}\n".encode())
    for entry in entries:
        st = entry.stat()
        h.update(f"{entry.path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _decode_cached(entries: list[os.DirEntry], image_size: int, cache_dir: Path,
                   workers: int | None) -> tuple[np.ndarray, list[str | None]]:
    file = Path(cache_dir) / "folders" / f"{cache_key(entries, image_size)}.npz"
    if file.is_file():
        try:
            with np.load(file, allow_pickle=False) as z:
                images, errors = z["images"], [str(e) or None for e in z["errors"]]
            if len(images) == len(entries) and images.shape[1:] == (image_size, image_size, 3):
                return images, errors
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    images, errors = decode_files([e.path for e in entries], image_size, workers)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:  # write then rename: a crash never leaves a half cache
            np.savez(f, images=images, errors=np.asarray([e or "" for e in errors], dtype=str))
        os.replace(tmp, file)
    except OSError as e:
        warnings.warn(f"Could not write the decoded-image cache {file} ({e}); the images will "
                      f"be decoded again next time (set VITSCOPE_CACHE to a writable folder).",
                      DataWarning, stacklevel=4)
    return images, errors


def decode_files(paths: list[str], image_size: int,
                 workers: int | None = None) -> tuple[np.ndarray, list[str | None]]:
    """Decode files in parallel worker processes (in-process when there are few)."""
    workers = workers or _cpu_count()
    if workers <= 1 or len(paths) < POOL_MIN_FILES:
        return decode_many(paths, image_size)
    images = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    errors: list[str | None] = []
    tasks = [paths[i:i + TASK_FILES] for i in range(0, len(paths), TASK_FILES)]
    # fork starts workers instantly and never re-imports the caller's __main__ module; the
    # workers only run PIL and numpy, so threads in the parent (torch) cannot deadlock them.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: "fork() with threads"
        pool = multiprocessing.get_context(method).Pool(min(workers, len(tasks)))
    with pool:
        start = 0
        for chunk, errs in pool.imap(_decode_task, [(t, image_size) for t in tasks]):
            images[start:start + len(chunk)] = chunk
            errors += errs
            start += len(chunk)
    return images, errors


def _decode_task(args: tuple[list[str], int]):
    return decode_many(*args)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
