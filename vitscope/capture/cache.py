"""Which dump serves a request, and capturing one when none does: what `vitscope analyze`,
`score` and the Python API call (`ensure_dump`).

A dump is reused when its checkpoint SHA-256, dataset spec and fingerprint, split, length, hook
points and target cover the request; otherwise one is captured into outputs/dumps/ under a name
that says what it holds (`<run>-<split>-<n>-<key>.h5`)."""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitscope._internal.devices import resolve_device
from vitscope._internal.files import file_sha256
from vitscope._internal.folders import remove_empty
from vitscope._internal.locks import hold
from vitscope.capture.stream import DEFAULT_HOOKS, capture, check_limit
from vitscope.capture.objective import is_class_target
from vitscope.capture.target import parse_target
from vitscope.dump import Dump
from vitscope.errors import DataError, DumpError, VitscopeError
from vitscope.names import split_grads, split_maps

DEFAULT_N = 64                      # images ensure_dump captures when no n is given


# One visible folder for every dump: `vitscope dump` without -o writes `<run>-<split>-<n>.h5`
# there, `vitscope analyze` captures what it needs as `<run>-<split>-<n>-<key>.h5` beside them.
DEFAULT_DUMP_DIR = Path("outputs/dumps")


# Where analyze captured in earlier versions (a hidden folder users did not find): still searched,
# so the dumps an earlier version made keep being reused; nothing new is written there.
LEGACY_DUMP_DIR = Path("outputs/.dumps")


CAPTURE_SEED = 0                    # the image order analyses ask for (a seeded shuffle)


def data_spec(ckpt, data: str | None = None) -> str:
    """`data`, else the spec the checkpoint was trained on; DumpError when there is neither."""
    spec = data or (ckpt.train_config or {}).get("data")
    if not spec:
        raise DumpError(f"'{ckpt.path}' does not record the dataset it was trained on; pass "
                        f"--data SPEC (e.g. --data shapes, --data cifar10 or --data folder:PATH).")
    return spec


def check_data(ckpt, data: str | None = None) -> None:
    """DataError, before any capture or scoring, when `data` (default: the checkpoint's own
    training data, named as such) is a folder or image files that are not on this machine."""
    from vitscope.data import missing_data, parse_spec
    spec = data_spec(ckpt, data)
    problem = missing_data(spec)
    if problem is not None and data is not None:
        raise problem
    if problem is not None:
        what = "a folder that does" if parse_spec(spec)[0] == "folder" else "image files that do"
        raise DataError(f"'{ckpt.path}' was trained on --data {spec}, {what} not exist on "
                        f"this machine; pass --data with images of the model's classes, e.g. "
                        f"--data folder:PATH.")


def default_split(ckpt, data: str | None = None) -> str:
    """The split analyses take when none is given: "val" of the checkpoint's own data (never
    the images it trained on) and of data with a validation split of its own; "all" of a
    folder given with --data that has none (a folder of images to analyse, e.g. the
    pretrained demo's examples/images: a val carve-out would keep only a tenth of it)."""
    from vitscope.data import absolute_spec, parse_spec
    tc = ckpt.train_config or {}
    if data is None or absolute_spec(data) == absolute_spec(str(tc.get("data") or "")):
        return "val"
    try:
        kind, arg = parse_spec(data)
    except DataError:
        return "val"        # the load names the problem
    if kind == "files":
        return "all"
    if kind != "folder":
        return "val"
    from vitscope.data.folder import split_dirs
    root = Path(arg).expanduser()
    if not root.is_dir():
        return "val"
    return "val" if all(split_dirs(root)) else "all"


def dataset_for(ckpt, data: str | None = None, split: str | None = "val",
                data_dir: str | None = None):
    """The `split` of `data` (default: the checkpoint's training data) at the model's image
    size, loaded the way training loaded it (same data_dir, val_split carve-out and seed), or
    as an imported model's recorded preprocessing says. `split` None: `default_split`. Files
    of an unlabelled folder named after the model's classes (cat_0001.jpg) are labelled with
    them."""
    from vitscope.data import is_imported, load_dataset, preprocessing, training_data_gone
    from vitscope.data.folder import label_from_file_names

    tc = ckpt.train_config or {}
    spec = data_spec(ckpt, data)
    split = split or default_split(ckpt, data)
    kwargs: dict[str, Any] = {"data_dir": data_dir or tc.get("data_dir") or "./data",
                              "whole_folder": is_imported(ckpt)}
    if spec == tc.get("data"):  # the same carve-out as training (the seed only matters with it)
        kwargs.update(val_split=tc.get("val_split"), seed=int(tc.get("seed", 0)))
    try:
        ds = load_dataset(spec, split, preprocessing(ckpt), **kwargs)
    except DataError as e:
        if data is not None:
            raise
        raise training_data_gone(ckpt.path, spec, e) from None
    return label_from_file_names(ds, list(ckpt.classes or []))[0]


def run_name(ckpt_path: str | Path) -> str:
    """`runs/shapes/best.pt` -> "shapes"; `models/vit3.pt` -> "vit3"."""
    p = Path(ckpt_path)
    generic = {"best", "last", "ckpt", "checkpoint", "model", "final"}
    return p.parent.resolve().name if p.stem in generic and p.parent.resolve().name else p.stem


def _covering_dump(dump_dir, patterns, n, sha, spec, split, data_sha,
                   target="pred", dtype=None, grad_dtype="float32",
                   map_options=None) -> Path | None:
    """The first finished dump in the search folders that serves the request, else None.
    `map_options`: {method: given options} of the `map:` hooks (their defaults otherwise)."""
    from vitscope.capture.model_maps import deciding_options
    deciding = deciding_options(split_maps(patterns)[1], map_options)
    for path in find_dumps(dump_dir):
        try:
            with Dump.open(path) as dump:
                if dump.covers(patterns, n, checkpoint_sha256=sha, data=spec, split=split,
                               data_sha256=data_sha, seed=CAPTURE_SEED, target=target,
                               dtype=dtype, grad_dtype=grad_dtype, map_options=deciding):
                    return path
        except VitscopeError:
            continue  # a foreign or damaged file in the cache folder is not ours to judge
    return None


def covering_dump(ckpt_path: str | Path, *, data: str | None = None, split: str | None = "val",
                  n: int | None = None, hooks: str | Iterable[str] = DEFAULT_HOOKS,
                  target: str | int = "pred", dump_dir: str | Path | None = None,
                  map_options: dict[str, dict[str, Any]] | None = None) -> Path | None:
    """The finished dump `ensure_dump` falls back to when the data cannot be loaded here (one
    that matches in all but the unchecked pixels), else None."""
    from vitscope.model.checkpoint import load_checkpoint
    ckpt = load_checkpoint(ckpt_path)
    patterns = [hooks] if isinstance(hooks, str) else list(hooks)
    return _covering_dump(dump_dir, patterns, DEFAULT_N if n is None else n,
                          file_sha256(ckpt.path), data_spec(ckpt, data),
                          split or default_split(ckpt, data), None, target,
                          map_options=map_options)


def find_dumps(dump_dir: str | Path | None = None) -> list[Path]:
    """Candidate dumps for reuse: the .h5 files in `dump_dir`, or by default in outputs/dumps
    (where both `analyze` and `vitscope dump` write, so a full dump made by hand serves later
    analyses too) and then the legacy outputs/.dumps."""
    folders = [Path(dump_dir)] if dump_dir is not None else [DEFAULT_DUMP_DIR, LEGACY_DUMP_DIR]
    return [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.h5"))]


def ensure_dump(ckpt_path: str | Path, *, data: str | None = None, split: str | None = "val",
                n: int | None = None, hooks: str | Iterable[str] = DEFAULT_HOOKS,
                dump_dir: str | Path | None = None, batch_size: int | None = None,
                device: str | torch.device | None = None,
                progress: bool = False, target: str | int = "pred",
                dtype: str | None = None, grad_dtype: str = "float32",
                map_options: dict[str, dict[str, Any]] | None = None) -> tuple[Path, bool]:
    """A dump serving (checkpoint, data, split, first n images, hooks, target): `(path, reused)`.

    Reuses any finished dump in `dump_dir` (default: outputs/dumps, then the legacy
    outputs/.dumps) whose checkpoint SHA-256, dataset spec and fingerprint, split, length and
    hook points cover the request, else captures one in `dump_dir` (default outputs/dumps).
    `data` None means the checkpoint's training data; `n` None means DEFAULT_N images;
    `split` None means `default_split` (all of a folder given as `data`, else val).
    `target` ("pred", "label" or a class index) matters only for `grad:` hooks. `dtype` and
    `grad_dtype` store activations and gradients, and a dump is reused only when stored in
    them (`dtype` None: any activations; a capture stores float16). `map_options`
    ({method: {key: value}}) are the options of the `map:<method>` hooks: a dump serves only
    when its maps were made with the same values (those that decide the maps), else the
    capture runs the methods with them.
    """
    from vitscope.model.checkpoint import load_checkpoint

    n = DEFAULT_N if n is None else n
    check_limit(n)
    ckpt = load_checkpoint(ckpt_path)
    classes = int(getattr(ckpt.model_config, "num_classes", 0) or len(ckpt.classes or ()))
    patterns = [hooks] if isinstance(hooks, str) else list(hooks)
    if classes or split_grads(patterns)[1] or not is_class_target(target):
        target = parse_target(target, classes)   # a feature model without gradients: none
    if isinstance(target, np.ndarray):
        raise DumpError("ensure_dump takes a target of pred, label or a class index; call "
                        "capture() for an explicit target per image.")
    spec = data_spec(ckpt, data)
    split = split or default_split(ckpt, data)
    sha = file_sha256(ckpt.path)
    # Loaded before the search: a dump is reused only for the very same pixels and labels,
    # not merely the same spec string (folder:PATH may have changed since).
    try:
        dataset = dataset_for(ckpt, data, split)
    except DataError:
        # The data is gone (moved, or outputs/ copied to another machine): a dump that matches
        # in everything else still serves, with a warning that its pixels went unchecked.
        found = _covering_dump(dump_dir, patterns, n, sha, spec, split, None, target, dtype,
                               grad_dtype, map_options)
        if found is None:
            raise
        warnings.warn(f"Reusing {found} without re-checking its images: the data {spec} cannot "
                      f"be loaded here.", stacklevel=2)
        return found, True
    data_sha = dataset.fingerprint()
    found = _covering_dump(dump_dir, patterns, n, sha, spec, split, data_sha, target, dtype,
                           grad_dtype, map_options)
    if found is not None:
        return found, True
    folder = Path(dump_dir) if dump_dir is not None else DEFAULT_DUMP_DIR
    request = (sha, data_sha, split, n, sorted(patterns))
    if split_grads(patterns)[1]:
        request += (str(target), grad_dtype)   # another target is another dump
    if dtype not in (None, "float16"):
        request += (dtype,)
    if split_maps(patterns)[1]:   # maps explain the target, with their options
        from vitscope.capture.model_maps import deciding_options
        request += (str(target), sorted((m, sorted(o.items(), key=str)) for m, o in
                                        deciding_options(split_maps(patterns)[1],
                                                         map_options).items()))
    key = hashlib.sha256(repr(request).encode()).hexdigest()[:10]
    out = folder / f"{run_name(ckpt.path)}-{split}-{min(n, len(dataset))}-{key}.h5"
    created = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        # Two analyses of one checkpoint share the cache: the second waits for the first
        # capture of the same request, then finds and reuses it.
        with hold(folder / f".{out.name}.lock", out, DumpError, wait=True):
            found = _covering_dump(dump_dir, patterns, n, sha, spec, split, data_sha, target,
                                   dtype, grad_dtype, map_options)
            if found is not None:
                return found, True
            model = ckpt.build_model()
            device = resolve_device(device) if not isinstance(device, torch.device) else device
            path = capture(model, dataset, out, patterns, ckpt=ckpt, limit=min(n, len(dataset)),
                           batch_size=batch_size, device=device, progress=progress, force=True,
                           seed=CAPTURE_SEED, target=target, dtype=dtype or "float16",
                           grad_dtype=grad_dtype, map_options=map_options)
    except BaseException:
        remove_empty(created)
        raise
    return path, False
