"""Which images the figures show: `vitscope analyze --select ...`.

    --select misclassified             prediction differs from the label
    --select correct                   prediction equals the label
    --select class:cat[,dog]           label (or, for unlabelled images, prediction) is a class
    --select 3,7,12                    positions in the analysed images (the #i of captions)
    --select name:cat_0001.jpg[,dog*]  file names (globs allowed), for folder and file data

Several --select narrow each other (misclassified cats: `--select misclassified --select
class:cat`); the commas inside one are alternatives. Explicit positions and names keep the
order they were given in; the others keep the dump's order.

The chosen images are written as a dump of their own (`select_dump`: a real dump, rows copied,
attributes kept, `order` = "selection"), so every plugin, built-in or third-party, renders
exactly those images with no change to its code. Selections live in `<dump dir>/selections/`,
where the search for reusable dumps never looks.
"""
from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitscope._internal.files import partial_path, publish
from vitscope.errors import DumpError, PluginError

KINDS = ("misclassified", "correct", "class:NAME", "INDEX,INDEX", "name:FILE")
BLOCK = 64  # images copied per read: memory stays bounded for any selection
# In the name of every selection written: one written before its parameters of derived hook
# points were copied (format 1) is never reused.
SELECTION_FORMAT = 3   # 3: the read-out weights and maps made with the model are kept


@dataclass(frozen=True)
class Criterion:
    kind: str                  # "misclassified" | "correct" | "class" | "index" | "name"
    values: tuple = ()

    def describe(self) -> str:
        return self.kind if not self.values else f"{self.kind} {','.join(map(str, self.values))}"


def parse_select(values, classes: list[str] | None = None) -> list[Criterion]:
    """`--select` texts -> criteria; PluginError naming the forms for anything else, and for
    a class the model does not have (checked before any capture)."""
    out = []
    for text in values:
        raw = str(text).strip()
        low = raw.lower()
        if low in ("misclassified", "wrong", "errors"):
            out.append(Criterion("misclassified"))
        elif low in ("correct", "right"):
            out.append(Criterion("correct"))
        elif low.startswith("class:"):
            names = tuple(v.strip() for v in raw[6:].split(",") if v.strip())
            if not names:
                raise PluginError("--select class: names no class; write e.g. class:cat.")
            if classes:
                unknown = [n for n in names if n not in classes]
                if unknown:
                    raise PluginError(f"--select class:{unknown[0]}: the model has no class "
                                      f"'{unknown[0]}'; its classes: {', '.join(classes)}.")
            out.append(Criterion("class", names))
        elif low.startswith(("name:", "file:")):
            names = tuple(v.strip() for v in raw[5:].split(",") if v.strip())
            if not names:
                raise PluginError("--select name: names no file; write e.g. name:cat_0001.jpg.")
            out.append(Criterion("name", names))
        else:
            try:
                idx = tuple(int(v) for v in raw.split(",") if v.strip())
            except ValueError:
                idx = ()
            if not idx or any(i < 0 for i in idx):
                raise PluginError(f"--select {raw!r} is not a selection; use one of: "
                                  f"{', '.join(KINDS)} (positions count from 0).")
            out.append(Criterion("index", idx))
    return out


def select_positions(dump, criteria: list[Criterion], limit: int | None = None) -> np.ndarray:
    """Positions (in the first `limit` images of `dump`) that meet every criterion."""
    n = len(dump) if limit is None else min(limit, len(dump))
    labels, preds = dump.labels[:n], dump.preds[:n]
    keep = np.arange(n)
    for c in criteria:
        if c.kind in ("misclassified", "correct"):
            known = labels[keep] >= 0
            if not known.any():
                raise PluginError(f"--select {c.kind} needs labels, and none of the {n} analysed "
                                  f"images has one; name files after their classes "
                                  f"(cat_0001.jpg) or use class folders.")
            hit = known & ((preds[keep] != labels[keep]) if c.kind == "misclassified"
                           else (preds[keep] == labels[keep]))
            keep = keep[hit]
        elif c.kind == "class":
            ids = [dump.classes.index(v) for v in c.values if v in dump.classes]
            if len(ids) < len(c.values):
                bad = next(v for v in c.values if v not in dump.classes)
                raise PluginError(f"--select class:{bad}: the dump has no class '{bad}'; its "
                                  f"classes: {', '.join(dump.classes) or 'none'}.")
            shown = np.where(labels[keep] >= 0, labels[keep], preds[keep])
            keep = keep[np.isin(shown, ids)]
        elif c.kind == "index":
            bad = [i for i in c.values if i >= n]
            if bad:
                raise PluginError(f"--select {bad[0]}: there are {n} analysed images "
                                  f"(positions 0–{n - 1}); raise --images or choose another.")
            allowed = set(keep.tolist())
            keep = np.array([i for i in dict.fromkeys(c.values) if i in allowed], dtype=np.int64)
        else:  # names
            names = dump.file_names
            if not names:
                raise PluginError("--select name: needs file names, and this dump's images do "
                                  "not come from files (use positions instead, e.g. --select 0,3).")
            allowed = set(keep.tolist())
            order = []
            for pattern in c.values:
                found = [i for i in range(n) if fnmatch.fnmatchcase(names[i], pattern)
                         or names[i] == pattern]
                if not found:
                    raise PluginError(f"--select name:{pattern}: no analysed image has that "
                                      f"file name (e.g. {', '.join(names[:3])}).")
                order += [i for i in found if i in allowed and i not in order]
            keep = np.array(order, dtype=np.int64)
    return np.asarray(keep, dtype=np.int64)


def describe(criteria: list[Criterion]) -> str:
    return " and ".join(c.describe() for c in criteria)


def select_dump(path: str | Path, positions: np.ndarray, what: str) -> Path:
    """A dump of the images at `positions` of the dump `path`, in that order (written once
    into `<dir>/selections/`, then reused while the source is unchanged)."""
    import h5py

    from vitscope.dump import Dump, DumpWriter
    path = Path(path)
    positions = np.asarray(positions, dtype=np.int64)
    st = path.stat()
    key = hashlib.sha256(f"{SELECTION_FORMAT} {path.resolve()} {st.st_size} {st.st_mtime_ns} "
                         f"{positions.tolist()}".encode()).hexdigest()[:10]
    out = path.parent / "selections" / f"{path.stem}-sel{len(positions)}-{key}.h5"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out)
    with Dump.open(path) as dump:
        f = dump._f
        aliases = dict(dump.attrs.get("aliases") or {})
        skip = {"format", "version", "vitscope_version", "created", "complete", "shard",
                "merged_from", "aliases"}
        attrs = {k: v for k, v in dump.attrs.items() if k not in skip}
        attrs.update(order="selection", num_images=len(positions), selection=what,
                     selected_from=str(path.resolve()))
        # per-image datasets: everything but the model's read-out weights, which are copied
        # whole (they belong to the model, not to an image)
        keys = [k for k in f if isinstance(f[k], h5py.Dataset) and k != "readout"]
        keys += [f"acts/{h}" for h in f["acts"] if h not in aliases]
        keys += [f"grads/{h}" for h in f["grads"]] if "grads" in f else []
        keys += [f"maps/{m}" for m in f["maps"]] if "maps" in f else []   # made with the model
        writer = DumpWriter(partial, len(positions), attrs, batch_size=BLOCK,
                            compression=str(dump.attrs.get("compression") or "lzf"),
                            readout=dump.readout)
        try:
            for s in range(0, len(positions), BLOCK):
                pos = positions[s:s + BLOCK]
                uniq, inverse = np.unique(pos, return_inverse=True)   # h5py reads increasing
                batch = {}
                for k in keys:
                    rows = f[k][uniq.tolist()]
                    if h5py.check_string_dtype(f[k].dtype) is not None:
                        rows = np.array([_text(r) for r in rows], dtype=object)
                    batch[k] = rows[inverse]
                writer.write(s, batch)
            if aliases:
                writer.set_aliases(aliases)
            if "derived" in f:   # the norms' parameters that derived hook points are read with
                f.copy(f["derived"], writer.f, "derived")
            writer.finish()
            publish(partial, out, force=True, error=DumpError, hint="run the command again")
        except BaseException:
            writer.close()
            partial.unlink(missing_ok=True)
            raise
    return out


def _text(value) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
