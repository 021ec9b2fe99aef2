"""`folder:PATH`: images on disk, decoded once in parallel into a cached uint8 array.

Three layouts are recognised (docs/data.md):

    PATH/train/<class>/*.jpg + PATH/val/<class>/*   two splits (train/ may be named training/;
                                                    val/ may be valid/, validation/ or test/)
    PATH/<class>/*.png                              one split; val carved with val_split
    PATH/*.jpg                                                    unlabeled (labels -1, classes [])

split="all" is every image (both splits, no carve-out). A flat folder whose file names start
with class names (cat_0001.jpg, truck.png) is labelled by `label_from_file_names` once the
classes are known (capture does it with the checkpoint's classes).

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

from vitscope.data.images import Preprocess, decode_many, is_image_name
from vitscope.data.base import ImageDataset, carve_split, concat
from vitscope._internal.files import replacing
from vitscope.errors import DataError, WriteError

CACHE_VERSION = 1
DEFAULT_VAL_SPLIT = 0.1
POOL_MIN_FILES = 256     # below this, decoding in-process is faster than starting workers
TASK_FILES = 256         # files per pool task: large enough to amortise the inter-process cost
MAX_LISTED = 20          # skipped files named in the warning; the rest are counted
# Accepted names of the split folders, in order of preference (matched case-insensitively).
TRAIN_DIRS = ("train", "training")
VAL_DIRS = ("val", "valid", "validation", "test")
SPLIT_NAMES = frozenset((*TRAIN_DIRS, *VAL_DIRS, "testing"))
# PATH/masks/<the image's path under PATH, as .png>: an object mask per image (non-zero = the
# object), which `vitscope score` uses for localisation. Never a class or a split folder.
MASKS_DIR = "masks"


class DataWarning(UserWarning):
    """Something about a dataset the user should know, which did not stop the load."""


class CorruptImageWarning(DataWarning):
    """Some files of a folder dataset could not be decoded and were skipped."""


def load(path: str, split: str, image_size, *, spec: str, val_split: float | None,
         seed: int, cache_dir: Path, workers: int | None = None, whole: bool = False):
    """One split of a folder dataset. `whole`: a folder with one split on disk is not carved
    (every image, whichever split is asked: for a model that was not trained on it). With a
    PATH/masks/ tree, every image gets its object mask (MASKS_DIR)."""
    ds = _load_split(path, split, image_size, spec=spec, val_split=val_split, seed=seed,
                     cache_dir=cache_dir, workers=workers, whole=whole)
    root = Path(path).expanduser().absolute()
    return _with_masks(ds, root, spec) if (root / MASKS_DIR).is_dir() else ds


def _with_masks(ds, root: Path, spec: str):
    """`ds` with the mask of each image from root/masks/<relative path>.png, resized to the
    image size (nearest); DataError naming the first image without one."""
    from PIL import Image
    h, w = ds.images.shape[1:3]
    masks = np.zeros((len(ds), h, w), bool)
    for i, p in enumerate(ds.paths):
        mask_path = (root / MASKS_DIR / Path(p).relative_to(root)).with_suffix(".png")
        if not mask_path.is_file():
            raise DataError(f"--data {spec} has a {MASKS_DIR}/ folder but no mask for "
                            f"'{p}' (looked for '{mask_path}'); give every image a mask PNG "
                            f"(non-zero = the object) or remove {root / MASKS_DIR}.")
        with Image.open(mask_path) as im:
            m = im.convert("L")
            if m.size != (w, h):
                m = m.resize((w, h), Image.NEAREST)
            masks[i] = np.asarray(m) > 0
    ds.masks = masks
    return ds


def _load_split(path: str, split: str, image_size, *, spec: str, val_split: float | None,
                seed: int, cache_dir: Path, workers: int | None = None, whole: bool = False):
    root = Path(path).expanduser().absolute()  # absolute paths: in the cache key and ds.paths
    if not root.exists():
        raise DataError(f"The folder '{root}' of --data {spec} does not exist; check the path, "
                        f"or use --data shapes for the built-in dataset.")
    if not root.is_dir():
        raise DataError(f"'{root}' of --data {spec} is a file, not a folder; folder:PATH needs a "
                        f"folder of images or of class sub-folders.")
    train_dir, val_dir = split_dirs(root)

    if train_dir is not None and val_dir is not None and val_split is None:
        train_classes = _class_dirs(train_dir)
        val_classes = _class_dirs(val_dir)
        if train_classes and val_classes and train_classes != val_classes:
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise DataError(
                f"The {train_dir.name} and {val_dir.name} folders of '{root}' have different "
                f"classes (only in {train_dir.name}: {', '.join(only_train) or '-'}; only in "
                f"{val_dir.name}: {', '.join(only_val) or '-'}); give both splits the same class "
                f"sub-folders.")
        if split == "all":   # both splits, no carve-out: a tree meant only for analysis
            return concat([_load_tree(d, s, image_size, spec, cache_dir, workers)
                           for d, s in ((train_dir, "train"), (val_dir, "val"))], "all")
        return _load_tree(train_dir if split == "train" else val_dir, split, image_size, spec,
                          cache_dir, workers)

    # One split on disk (PATH/train alone, or PATH itself): val is carved from it.
    source = train_dir if train_dir is not None else root
    full = _load_tree(source, "train", image_size, spec, cache_dir, workers)
    if split == "all":       # every image of the folder (or of PATH/train), no val carve-out
        full.split = "all"
        return full
    if (whole or not full.classes) and val_split is None:
        full.split = split  # a flat, unlabeled folder: every image, whichever split is asked
        return full
    return carve_split(full, split, val_split if val_split is not None else DEFAULT_VAL_SPLIT, seed)


def split_dirs(root: Path) -> tuple[Path | None, Path | None]:
    """The train and val folders of a two-split tree (None where there is none)."""
    by_name = {name.lower(): root / name for name in _class_dirs(root)}
    train = next((by_name[n] for n in TRAIN_DIRS if n in by_name), None)
    val = next((by_name[n] for n in VAL_DIRS if n in by_name), None)
    return train, val


def _check_split_names_as_classes(folder: Path, classes: list[str], spec: str) -> None:
    """Class folders named like splits (PATH/val/<class> with no PATH/train, PATH/test alone,
    PATH/train/{train,val}) mean a layout vitscope did not recognise: refuse when every class
    is such a name, warn when some are (a class may really be called "valid")."""
    found = [name for name in classes if name.lower() in SPLIT_NAMES]
    if not found:
        return
    layouts = (f"vitscope reads PATH/train/<class>/ with PATH/val/<class>/ (train/ may be "
               f"named training/; val/ may be valid/, validation/ or test/), PATH/train/<class>/ "
               f"alone, or PATH/<class>/")
    if len(found) == len(classes):
        raise DataError(f"The folder '{folder}' of --data {spec} has only sub-folders named like "
                        f"dataset splits ({', '.join(found)}), which would be read as classes; "
                        f"{layouts}, so rename the folders or point folder: at the right one.")
    warnings.warn(f"The folder(s) {', '.join(found)} in '{folder}' are named like dataset splits "
                  f"but are read as classes ({layouts}); rename them if they are not classes.",
                  DataWarning, stacklevel=5)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
                  and e.name != MASKS_DIR)


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


def _load_tree(folder: Path, split: str, image_size, spec: str, cache_dir: Path,
               workers: int | None):
    """A class tree (folder/<class>/...) or a flat folder of images, decoded and cached."""

    classes = _class_dirs(folder)
    _check_split_names_as_classes(folder, classes, spec)
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
        _refuse_emptied_classes(folder, classes, labels, bad, paths, errors)
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


def _refuse_emptied_classes(folder: Path, classes: list[str], labels: list[int], bad: list[int],
                            paths: list[str], errors: list[str | None]) -> None:
    """A class whose files all fail to decode must not train as a class with no images."""
    if not classes:
        return
    broken = set(bad)
    good = np.bincount([lab for i, lab in enumerate(labels) if i not in broken],
                       minlength=len(classes))
    emptied = [c for c in range(len(classes)) if good[c] == 0]
    if emptied:
        example = next(i for i in bad if labels[i] == emptied[0])
        names = ", ".join(f"'{folder / classes[c]}'" for c in emptied[:MAX_LISTED])
        raise DataError(f"None of the image files of the class folder(s) {names} could be "
                        f"decoded (e.g. {paths[example]}: {errors[example]}), so the class "
                        f"would have no images; replace the files with readable images or "
                        f"remove the folder.")


def cache_key(entries: list[os.DirEntry], image_size) -> str:
    """Hash of the sorted (absolute) paths with sizes and mtimes, plus the image size."""
    h = hashlib.sha256(f"vitscope-folder-cache {CACHE_VERSION} "
                       f"{Preprocess.of(image_size).key()}\n".encode())
    for entry in entries:
        st = entry.stat()
        # a file name is bytes on Linux, carried as surrogateescape text: hashed as those bytes
        h.update(f"{entry.path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8",
                                                                             "surrogateescape"))
    return h.hexdigest()[:32]


def _decode_cached(entries: list[os.DirEntry], image_size, cache_dir: Path,
                   workers: int | None) -> tuple[np.ndarray, list[str | None]]:
    file = Path(cache_dir) / "folders" / f"{cache_key(entries, image_size)}.npz"
    if file.is_file():
        try:
            with np.load(file, allow_pickle=False) as z:
                images, errors = z["images"], [str(e) or None for e in z["errors"]]
            if len(images) == len(entries) and \
                    images.shape[1:] == (*Preprocess.of(image_size).out_size, 3):
                return images, errors
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    images, errors = decode_files([e.path for e in entries], image_size, workers)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with replacing(file) as (tmp,):   # a crash never leaves a half cache
            with open(tmp, "wb") as f:
                np.savez(f, images=images, errors=np.asarray([e or "" for e in errors], dtype=str))
    except (OSError, WriteError) as e:
        warnings.warn(f"Could not write the decoded-image cache {file} ({e}); the images will "
                      f"be decoded again next time (set VITSCOPE_CACHE to a writable folder).",
                      DataWarning, stacklevel=4)
    return images, errors


def decode_files(paths: list[str], image_size,
                 workers: int | None = None) -> tuple[np.ndarray, list[str | None]]:
    """Decode files in parallel worker processes (in-process when there are few)."""
    workers = workers or _cpu_count()
    if workers <= 1 or len(paths) < POOL_MIN_FILES:
        return decode_many(paths, image_size)
    images = np.empty((len(paths), *Preprocess.of(image_size).out_size, 3), dtype=np.uint8)
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


NAME_SEPARATORS = "_-. ("


def class_of_name(stem: str, classes: list[str]) -> int:
    """The class a file stem names, -1 for none: "cat_0001", "cat-3", "cat (2)", "cat7" or
    "cat" name "cat" (case-insensitive; spaces in class names may be written _ or -); the
    longest matching class wins, so "tabby_cat" is not "tab"."""
    low = stem.lower()
    best, best_len = -1, 0
    for i, c in enumerate(classes):
        for form in {c.lower(), c.lower().replace(" ", "_"), c.lower().replace(" ", "-")}:
            if not form or len(form) <= best_len or not low.startswith(form):
                continue
            rest = low[len(form):]
            if not rest or rest[0] in NAME_SEPARATORS or rest[0].isdigit():
                best, best_len = i, len(form)
    return best


def label_from_file_names(ds: ImageDataset, classes: list[str]) -> tuple[ImageDataset, int]:
    """An unlabelled dataset of files (a flat folder) labelled by the class each file name
    starts with (`class_of_name`), with `classes` as its classes: (dataset, files labelled).
    Unchanged, with 0, when it is labelled already, has no files, or no name names a class."""
    if ds.classes or not ds.paths or not classes:
        return ds, 0
    labels = np.array([class_of_name(Path(p).stem, list(classes)) for p in ds.paths],
                      dtype=np.int64)
    found = int((labels >= 0).sum())
    if not found:
        return ds, 0
    return ImageDataset(images=ds.images, labels=labels, classes=list(classes), masks=ds.masks,
                        spec=ds.spec, split=ds.split, paths=list(ds.paths)), found


def load_files(paths: list[str], image_size, *, spec: str) -> ImageDataset:
    """Image files named one by one (`files:` spec, `analyze --image`), unlabelled until
    `label_from_file_names`; every file must exist and decode (it was asked for by name)."""
    files = [Path(p).expanduser().absolute() for p in paths]
    for f in files:
        if not f.is_file():
            what = "a folder; use --data folder:PATH for a folder" if f.is_dir() else "missing"
            raise DataError(f"The image file '{f}' is {what}.")
    images, errors = decode_files([str(f) for f in files], image_size, workers=1)
    bad = [(f, e) for f, e in zip(files, errors) if e is not None]
    if bad:
        raise DataError(f"The image file '{bad[0][0]}' cannot be decoded ({bad[0][1]}); pass "
                        f"an image PIL reads (.jpg, .png, .webp, ...).")
    return ImageDataset(images=images, labels=np.full(len(files), -1, dtype=np.int64),
                        classes=[], masks=None, spec=spec, split="all",
                        paths=[str(f) for f in files])
