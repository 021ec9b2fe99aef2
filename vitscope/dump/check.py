"""The one validated reading of a dump file: what `Dump.open` checks before anything reads it.
No torch.

    contents = check_dump(path, h5py.File(path, "r"))   # DumpError, one sentence, or:
    contents.attrs, contents.layout, contents.n

A file written by `vitscope dump` passes; anything else gets "FILE is not a valid vitscope
dump: REASON" (or the more specific sentence of a foreign, interrupted or newer file). In order:

1. identity: format, version, and `complete` that is really the boolean true;
2. root attributes: JSON ones within size and depth caps (vitscope._internal.bounded), each of the
   type its readers rely on (class names are strings, `dims` lists one name per axis, ...);
3. links and storage, walked once before any data is read: no external links and no external
   raw storage anywhere (a dump must never read a local file such as /etc/passwd into a
   figure), soft links that resolve, and virtual datasets only in a merged dump, reading only
   from the shards its `merged_from` names, inside the dump's own folder, which in turn hold
   no links or storage outside themselves;
4. structure: the datasets every dump has, with N rows each, shapes that agree with the
   token layout (T, P), the image size and the classes;
5. values on a sample: labels within the classes, and attention rows (`N H T T` under acts/)
   finite and summing to 1 on a few images.
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vitscope import __version__
from vitscope._internal.bounded import loads_json
from vitscope._internal.text import short_repr
from vitscope.errors import DumpError
from vitscope.layout import TokenLayout

FORMAT = "vitscope-dump"
# 2: token layout with prefix kinds and (height, width) sizes; /target and /grads (optional:
# a version-2 dump without them reads as explained by its predictions). Version 1 still opens.
VERSION = 2
# Root attributes stored as JSON text (HDF5 attributes hold no nested data); Dump.attrs
# decodes them.
JSON_ATTRS = frozenset({"model_config", "classes", "dataset_classes", "token_layout", "hooks",
                        "model_hooks", "aliases", "normalize", "shard", "merged_from",
                        "shard_ids", "grad_hooks", "derived", "target_names",
                        "map_methods", "map_options"})
# Datasets every dump has besides the hook groups (masks and dataset_labels are optional).
REQUIRED = ("images", "labels", "logits", "indices")
# Groups of per-hook datasets (N first, a `dims` attribute naming each axis).
HOOK_GROUPS = ("acts", "grads")
MAX_LINKS = 100_000          # objects walked in one file: far above any real dump (a few hundred)
ATTENTION_SAMPLE = 3         # images whose attention rows are checked (first, middle, last)
ROW_SUM_TOLERANCE = 1e-2     # fp16 rounds each weight by <= 2**-11 of itself: sums within 5e-4


@dataclass
class Contents:
    """What the validation read, for Dump to use as is."""
    attrs: dict[str, Any]
    layout: TokenLayout
    n: int


class Invalid(Exception):
    """A reason the file is not a valid dump (turned into the DumpError sentence)."""


_CHECKED: dict[tuple, Contents] = {}   # per process: file identity -> what its check read


def check_dump(path: Path, f: h5py.File) -> Contents:
    """Validate an open dump (see the module docstring); DumpError says what is wrong.

    A file that passed is not walked again while it is unchanged (same inode, size and
    modification time, its shards' too): `analyze` opens one dump several times."""
    raw = _identity(path, f)
    try:
        attrs = {key: decode_attr(key, value) for key, value in raw.items()}
        _check_attrs(attrs)
        merged = attrs.get("merged_from")
        shards = _shard_paths(path, merged) if merged is not None else None
        for shard in shards or {}:
            if not shard.is_file():
                raise DumpError(f"'{path}' is a merged dump whose shard '{shard.name}' is "
                                f"missing next to it; keep the shard files beside the merged "
                                f"file (or merge again with `vitscope dump merge`).")
        key = _identity_of([path, *(shards or {})])
        if key in _CHECKED:
            done = _CHECKED[key]
            return Contents(copy.deepcopy(done.attrs), done.layout, done.n)
        objects = _check_links_and_storage(path, f, shards)
        ids = attrs.get("shard_ids")
        for k, shard in enumerate(shards or {}):
            with h5py.File(shard, "r") as g:
                _check_links_and_storage(shard, g, None, within=path)
                if ids is not None and (len(ids) != len(shards) or
                                        shard_identity(g.attrs) != ids[k]):
                    raise DumpError(f"'{path}' is a merged dump whose shard '{shard.name}' is "
                                    f"not the file that was merged (it was written again "
                                    f"since, e.g. by `vitscope dump --force`), so the merged "
                                    f"images would mix two captures; merge the shards again "
                                    f"with `vitscope dump merge`.")
        layout = _layout(attrs)
        n, attention = _check_structure(objects, attrs, layout)
        _check_values(f, attrs, n, attention)
    except Invalid as e:
        raise DumpError(f"'{path}' is not a valid vitscope dump: {e}; re-create it with "
                        f"`vitscope dump`.") from None
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # HDF5 cannot read it
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DumpError(f"'{path}' is not a valid vitscope dump: HDF5 cannot read part of it "
                        f"({reason}); re-create it with `vitscope dump`.") from None
    _CHECKED[key] = Contents(copy.deepcopy(attrs), layout, n)
    return Contents(attrs=attrs, layout=layout, n=n)


def shard_identity(attrs) -> str:
    """What identifies one written dump file: its capture_id (older files: the time it was
    created and its data's fingerprint)."""
    cid = _plain(attrs.get("capture_id"))
    if isinstance(cid, str) and cid:
        return cid
    return f"{_plain(attrs.get('created'))}|{_plain(attrs.get('data_sha256'))}"


def _identity_of(paths: list[Path]) -> tuple:
    """(path, inode, size, mtime) of a file and its shards: a file changed since is re-checked."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


# ---------------------------------------------------------------------------- 1. identity

def _identity(path: Path, f: h5py.File) -> dict[str, Any]:
    raw = {key: f.attrs[key] for key in f.attrs}
    fmt = _plain(raw.get("format"))
    if fmt != FORMAT:
        top = ", ".join(sorted(f)[:8]) or "nothing"
        raise DumpError(f"'{path}' is an HDF5 file but not a vitscope dump (format={fmt!r}, "
                        f"it holds: {top}); expected a file written by `vitscope dump`.")
    version = _plain(raw.get("version"))
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DumpError(f"'{path}' has no valid dump format version ({version!r}); it was "
                        f"not written by `vitscope dump`, re-create it.")
    if version > VERSION:
        raise DumpError(f"'{path}' is a dump of format version {version}, newer than this "
                        f"vitscope {__version__} reads (version {VERSION}); upgrade vitscope "
                        f"to read it.")
    complete = _plain(raw.get("complete"))
    if complete is not True:  # the string "false" is not complete, nor is 1 or "true"
        why = ("its capture was interrupted before it finished" if complete in (False, None)
               else f"its complete attribute is {complete!r}, not true")
        raise DumpError(f"'{path}' is an incomplete dump ({why}); delete it and run "
                        f"`vitscope dump` again.")
    return raw


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode_attr(key: str, value: Any) -> Any:
    """A root attribute as Python data: JSON ones parsed within the caps (ValueError)."""
    value = _plain(value)
    if key in JSON_ATTRS:
        if not isinstance(value, str):
            raise Invalid(f"attribute '{key}' is a {type(value).__name__}, not JSON text")
        try:
            return loads_json(value, f"attribute '{key}'")
        except ValueError as e:
            raise Invalid(str(e)) from None
    return value


# ---------------------------------------------------------------------------- 2. attributes

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _normalize(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(v.get(k), list) and len(v[k]) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in v[k]) for k in ("mean", "std"))


def _shard(v: Any) -> bool:
    return isinstance(v, dict) and all(_is_int(v.get(k)) and v[k] >= 0
                                       for k in ("index", "count", "start", "stop", "total"))


# attribute -> (check, what it must be). Attributes not listed pass through (newer writers).
ATTR_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: (lambda v: isinstance(v, str), "a string") for k in (
        "vitscope_version", "created", "arch", "checkpoint_path", "checkpoint_sha256",
        "dataset", "data_sha256", "split", "order", "dtype", "grad_dtype", "compression",
        "target", "capture_id")},
    **{k: (_is_int, "an integer") for k in ("split_size", "seed", "num_images", "grad_nonzero",
                                             "grad_underflow", "grad_overflow",
                                             "grad_fp16_underflow")},
    **{k: (_strings, "a list of strings") for k in (
        "classes", "dataset_classes", "hooks", "model_hooks", "merged_from", "shard_ids",
        "grad_hooks", "map_methods")},
    "model_config": (lambda v: isinstance(v, dict), "a mapping"),
    # the options each map: method ran with (vitscope.capture.model_maps)
    "map_options": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(o, dict) for k, o in v.items()),
        "a mapping of method names to option mappings"),
    "token_layout": (lambda v: isinstance(v, dict), "a mapping"),
    "aliases": (lambda v: isinstance(v, dict) and all(
        isinstance(a, str) and isinstance(b, str) for a, b in v.items()),
        "a mapping of hook names to hook names"),
    "normalize": (_normalize, "{mean: [3 finite numbers], std: [3 finite numbers]}"),
    "shard": (_shard, "{index, count, start, stop, total} of integers >= 0"),
    # hook points computed on read (vitscope.dump.derive checks each entry when the dump opens)
    "derived": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(e, dict) for k, e in v.items()),
        "a mapping of hook names to derivations"),
}


def _check_attrs(attrs: dict[str, Any]) -> None:
    if "token_layout" not in attrs:
        raise Invalid("it has no token_layout attribute")
    for key, (ok, what) in ATTR_TYPES.items():
        if key in attrs and not ok(attrs[key]):
            raise Invalid(f"attribute '{key}' must be {what}, not {short_repr(attrs[key], 60)}")


def _layout(attrs: dict[str, Any]) -> TokenLayout:
    try:
        return TokenLayout.from_dict(attrs["token_layout"])
    except (ValueError, KeyError, TypeError) as e:
        raise Invalid(f"its token_layout cannot be read ({type(e).__name__}: {str(e)[:100]})") \
            from None


# ---------------------------------------------------------------------------- 3. links, storage

def _shard_paths(path: Path, merged: list[str]) -> dict[Path, str]:
    """The shard files a merged dump may read, resolved inside its own folder."""
    folder = path.parent.resolve()
    shards: dict[Path, str] = {}
    for name in merged:
        resolved = (folder / name).resolve()
        if Path(name).is_absolute() or not resolved.is_relative_to(folder) or resolved == \
                path.resolve():
            raise Invalid(f"its merged_from names the shard '{name}', which is not a file "
                          f"inside the dump's own folder {folder}")
        shards[resolved] = name
    return shards


def _check_links_and_storage(path: Path, f: h5py.File, shards: dict[Path, str] | None,
                             within: Path | None = None) -> dict[str, Any]:
    """Every link and every dataset of `f`, before any data is read (module docstring, 3).
    `shards`: the files a merged dump's virtual datasets may read (None: none may exist).
    `within`: the merged dump a shard belongs to, for the messages. Returns every name with
    the group or dataset it leads to (soft links resolved), for the structure checks."""
    where = f"its shard '{path.name}'" if within is not None else "it"
    folder = path.parent.resolve()
    links: list[tuple[str, Any]] = []
    # Collected first, checked after: h5py's visit must not see an exception from its callback.
    f.visititems_links(lambda name, link: links.append((name, link)) or
                       (True if len(links) > MAX_LINKS else None))
    if len(links) > MAX_LINKS:
        raise Invalid(f"{where} holds more than {MAX_LINKS:,} objects")
    for name, link in links:
        if isinstance(link, h5py.ExternalLink):
            raise Invalid(f"{where} has an external link /{name} to {link.path} in the file "
                          f"'{link.filename}', and a dump may only read its own file")
    objects: dict[str, Any] = {}
    for name, link in links:
        try:
            obj = objects[name] = f.get(name)
        except RuntimeError:  # HDF5: "too many links", i.e. a soft-link loop
            raise Invalid(f"{where} has a soft link /{name} to {link.path} that loops") from None
        if isinstance(link, h5py.SoftLink):
            if obj is None:
                raise Invalid(f"{where} has a soft link /{name} to {link.path}, which does not "
                              f"exist")
            continue  # its target is checked under its own name
        if not isinstance(obj, h5py.Dataset):
            continue
        if obj.external:
            files = ", ".join(sorted({str(e[0]) for e in obj.external}))
            raise Invalid(f"{where} stores dataset /{name} in the external file(s) '{files}', "
                          f"and a dump may only read its own file")
        if obj.is_virtual:
            if shards is None:
                raise Invalid(f"{where} has a virtual dataset /{name} (reading "
                              f"'{obj.virtual_sources()[0].file_name}'), which only a merged "
                              f"dump may have")
            for source in obj.virtual_sources():
                resolved = (folder / source.file_name).resolve()
                if Path(source.file_name).is_absolute() or source.file_name == "." \
                        or shards.get(resolved) != source.file_name:
                    raise Invalid(f"{where} has a virtual dataset /{name} reading "
                                  f"'{source.file_name}', which is not one of the shards its "
                                  f"merged_from names inside its folder")
    return objects


# ---------------------------------------------------------------------------- 4. structure

def _dataset(objects: dict[str, Any], key: str, required: bool = True) -> h5py.Dataset | None:
    obj = objects.get(key)
    if obj is None:
        if required:
            raise Invalid(f"it has no /{key} dataset")
        return None
    if not isinstance(obj, h5py.Dataset):
        raise Invalid(f"/{key} is a {type(obj).__name__.lower()}, not a dataset")
    return obj


def _check_structure(objects: dict[str, Any], attrs: dict[str, Any],
                     layout: TokenLayout) -> tuple[int, list[h5py.Dataset]]:
    """N, and the attention datasets (`N H T T` under acts/) for the value sample."""
    labels = _dataset(objects, "labels")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise Invalid(f"/labels is {_describe(labels)}, not N integers")
    n = int(labels.shape[0])
    if "num_images" in attrs and attrs["num_images"] != n:
        raise Invalid(f"its num_images attribute says {attrs['num_images']} but /labels holds {n}")
    classes = attrs.get("classes") or []
    # a feature model (no classifier head, e.g. an imported DINOv2) stores its pooled features
    # under /logits; its classes are the dataset's, not one per output (nor are they for the
    # scores of a similarity or text target: vitscope.capture.objective)
    per_class = classes and attrs.get("outputs") not in ("features", "scores")
    h, w = layout.image_size
    expected = {  # key -> (shape, dtype kinds, what)
        "images": ((n, h, w, 3), "u", f"N×{h}×{w}×3 uint8 (the layout's image size)"),
        "indices": ((n,), "iu", "N integers"),
        "logits": ((n, len(classes)) if per_class else None, "f",
                   f"N×{len(classes)} floats (one per class)" if per_class else "N×C floats"),
        "masks": ((n, h, w), "ub", f"N×{h}×{w} (the image size)"),
        "dataset_labels": ((n,), "iu", "N integers"),
        "target": ((n,), "iu", "N class indices"),
    }
    for key, (shape, kinds, what) in expected.items():
        ds = _dataset(objects, key, required=key in REQUIRED)
        if ds is None:
            continue
        fits = ds.shape == shape if shape else (ds.ndim == 2 and ds.shape[0] == n)
        if not fits or ds.dtype.kind not in kinds:
            raise Invalid(f"/{key} is {_describe(ds)}, expected {what} for its {n} images")
    sizes = {"N": n, "T": layout.num_tokens, "P": layout.num_patches}
    attention = []
    for group in HOOK_GROUPS:
        g = objects.get(group)
        if g is None:
            if group == "acts":
                raise Invalid("it has no /acts group")
            continue
        if not isinstance(g, h5py.Group):
            raise Invalid(f"/{group} is a dataset, not the group of hook points")
        members = [k for k in objects if k.startswith(group + "/")
                   and "/" not in k[len(group) + 1:]]
        for key in members:
            if _check_hook(key, objects[key], sizes) == ["N", "H", "T", "T"] and group == "acts":
                attention.append(objects[key])
    acts = {k[len("acts/"):] for k in objects if k.startswith("acts/")}
    for alias, target in (attrs.get("aliases") or {}).items():
        if alias not in acts or target not in acts:
            raise Invalid(f"its aliases name '{alias}' -> '{target}', which it does not hold")
    hooks = attrs.get("hooks")
    if hooks is not None and len(set(hooks)) != len(hooks):
        raise Invalid("its hooks attribute lists a hook twice")
    return n, attention


def _check_hook(key: str, ds: Any, sizes: dict[str, int]) -> list[str]:
    if not isinstance(ds, h5py.Dataset):
        raise Invalid(f"hook /{key} is a {type(ds).__name__.lower()}, not a dataset")
    dims = ds.attrs.get("dims")
    if dims is None:
        raise Invalid(f"hook /{key} has no dims attribute naming its axes")
    dims = [_plain(d) for d in np.atleast_1d(dims)]
    if not all(isinstance(d, str) for d in dims) or len(dims) != ds.ndim:
        raise Invalid(f"hook /{key} has dims {short_repr(dims, 60)} for a {ds.ndim}-d dataset")
    if ds.dtype.kind != "f":
        raise Invalid(f"hook /{key} holds {ds.dtype}, not floats")
    for axis, (name, size) in enumerate(zip(dims, ds.shape)):
        if name in sizes and size != sizes[name]:
            what = {"N": "images", "T": "tokens in the layout", "P": "patches in the layout"}[name]
            raise Invalid(f"hook /{key} has {size} along {name} (axis {axis}) but the dump has "
                          f"{sizes[name]} {what}")
    return dims


# ---------------------------------------------------------------------------- 5. values

def _check_values(f: h5py.File, attrs: dict[str, Any], n: int,
                  attention: list[h5py.Dataset]) -> None:
    """Labels in range, and attention rows on a sample: each attention dataset is read on one
    image, the first, middle and last in turn over the layers (one chunk per dataset is
    decompressed)."""
    classes = attrs.get("classes") or []
    # a feature model's target indexes its pooled features (the columns of /logits)
    # (or, for a similarity or text target, the scores in /logits: vitscope.capture.objective);
    # "none": a feature model's capture without gradients explains nothing (-1 each)
    outputs = attrs.get("outputs")
    features = outputs in ("features", "scores", "zero-shot") and "logits" in f
    untargeted = attrs.get("target") == "none"
    for key, lowest in (("labels", -1), ("target", -1 if untargeted else 0)):
        values = np.asarray(f[key][:]) if key in f else np.zeros(0, np.int64)
        bound, what = (int(f["logits"].shape[1]), "features" if outputs == "features" else
                       "scores") if features and key == "target" else (len(classes), "classes")
        if bound and len(values) and (values.min() < lowest or values.max() >= bound):
            bad = values[(values < lowest) | (values >= bound)][0]
            raise Invalid(f"/{key} holds {int(bad)}, outside {lowest}..{bound - 1} (its "
                          f"{bound} {what})")
    sample = sorted({0, n // 2, n - 1})[:ATTENTION_SAMPLE] if n else []
    for j, ds in enumerate(attention if sample else []):
        image, hook = sample[j % len(sample)], ds.name.removeprefix("/acts/")
        rows = np.asarray(ds[image], dtype=np.float32)              # heads × queries × keys
        if not np.isfinite(rows).all():
            raise Invalid(f"its attention /acts/{hook} holds NaN or infinite weights (image "
                          f"{image})")
        error = np.abs(rows.sum(-1) - 1)                              # heads × queries
        if rows.min(initial=0) < -ROW_SUM_TOLERANCE or error.max(initial=0) > ROW_SUM_TOLERANCE:
            head, query = np.unravel_index(error.argmax(), error.shape)
            raise Invalid(f"its attention /acts/{hook} is not softmax weights (row {query} of "
                          f"head {head} sums to {float(rows[head, query].sum()):.3g} instead of "
                          f"1 in image {image})")


# ---------------------------------------------------------------------------- helpers

def _describe(ds: h5py.Dataset) -> str:
    return f"{'×'.join(map(str, ds.shape)) or 'scalar'} {ds.dtype}"




def relative_inside(path: Path, folder: Path) -> str | None:
    """`path` relative to `folder` when it lies inside it (symlinks resolved), else None."""
    p, d = path.resolve(), folder.resolve()
    return os.path.relpath(p, d) if p.is_relative_to(d) else None
