"""`vitscope dump merge`: the shards of a `--shard i/n` capture joined into one file of HDF5
virtual datasets (no data is copied), the maps stored with the model (/maps/<method>, with
their target and options) included."""
from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from vitscope._internal.files import partial_path, publish
from vitscope._internal.folders import make_output_dir, remove_empty
from vitscope.dump.check import relative_inside, shard_identity
from vitscope.dump.reader import Dump
from vitscope.dump.writer import close_file, create_file
from vitscope.errors import DumpError

# Attributes every shard of one capture must share before merge joins them.
SHARED_ATTRS = ("checkpoint_sha256", "model_config", "dataset", "data_sha256", "split",
                "split_size", "seed", "order", "hooks", "aliases", "dtype", "grad_dtype",
                "normalize",
                "classes", "token_layout", "target", "grad_hooks", "derived", "map_methods",
                "map_options")


def merge(shards: Iterable[str | Path], out: str | Path, *, force: bool = False) -> Path:
    """Join the shard files of one `--shard i/n` capture into `out`, a dump of HDF5 virtual
    datasets that read from the shards (stored by paths relative to `out`; keep them together)."""
    out = Path(out)
    paths = [Path(p) for p in shards]
    if not paths:
        raise DumpError("No shard files given to merge; pass the files written by "
                        "`vitscope dump --shard i/n`, e.g. `vitscope dump merge run-*.h5 -o run.h5`.")
    if out.resolve() in {p.resolve() for p in paths}:
        raise DumpError(f"-o '{out}' is one of the shard files being merged; choose another "
                        f"output path (the shards must stay as they are).")
    if out.exists() and not force:
        raise DumpError(f"'{out}' already exists; pass --force to replace it or choose another "
                        f"path with -o.")
    opened = []
    try:
        for p in paths:
            opened.append(Dump.open(p))
        ordered = _check_shards(opened)
        created = make_output_dir(out.parent, DumpError, "choose another path with -o")
        outside = [d.path for d in ordered if relative_inside(d.path, out.parent) is None]
        if outside:
            remove_empty(created)
            raise DumpError(f"'{outside[0]}' is not inside the folder of -o '{out}'; a merged "
                            f"dump reads its shards only from its own folder (or below it), so "
                            f"write it beside the shards or in a folder above them.")
        partial = partial_path(out)
        try:
            _write_virtual(ordered, out, partial)
            publish(partial, out, force=force, error=DumpError,
                    hint="pass --force to replace it or choose another path with -o")
        except BaseException:
            partial.unlink(missing_ok=True)
            remove_empty(created)
            raise
    finally:
        for d in opened:
            d.close()
    return out


def _check_shards(dumps: list[Dump]) -> list[Dump]:
    """The shards sorted by index; DumpError unless they are exactly the n shards of one capture."""
    for d in dumps:
        if not d.attrs.get("shard"):
            raise DumpError(f"'{d.path}' is not a shard (it was written without --shard); merge "
                            f"joins the files of one `vitscope dump --shard i/n` run.")
        if d.attrs.get("merged_from"):
            raise DumpError(f"'{d.path}' is already a merged dump; merge the shard files it was "
                            f"made from instead.")
    first = dumps[0]
    for d in dumps[1:]:
        _check_model_maps(first, d)
        for key in SHARED_ATTRS:
            if d.attrs.get(key) != first.attrs.get(key):
                raise DumpError(f"'{d.path}' does not belong with '{first.path}': their {key} "
                                f"differs; merge only the shards of one capture.")
        for key in ("count", "total"):
            if d.attrs["shard"][key] != first.attrs["shard"][key]:
                raise DumpError(f"'{d.path}' does not belong with '{first.path}': it is a shard of "
                                f"a different split into shards ({key} differs).")
    count = int(first.attrs["shard"]["count"])
    ordered = sorted(dumps, key=lambda d: d.attrs["shard"]["index"])
    got = [d.attrs["shard"]["index"] for d in ordered]
    if got != list(range(count)):
        missing = sorted(set(range(count)) - set(got))
        dup = sorted({i for i in got if got.count(i) > 1})
        what = (f"shard(s) {', '.join(map(str, missing))} missing" if missing
                else f"shard(s) {', '.join(map(str, dup))} given twice")
        raise DumpError(f"Cannot merge: {what} of {count}; pass every shard file of the capture "
                        f"exactly once.")
    stop = 0
    for d in ordered:
        s = d.attrs["shard"]
        if int(s["start"]) != stop or int(s["stop"]) - int(s["start"]) != len(d):
            raise DumpError(f"'{d.path}' covers images {s['start']}–{s['stop']} but the shards "
                            f"before it end at {stop}; the shard files are inconsistent, "
                            f"re-create them.")
        stop = int(s["stop"])
    return ordered


def _check_model_maps(first: Dump, d: Dump) -> None:
    """The stored maps of methods that need the model (/maps/<method>) join only when both
    shards hold the same methods, explaining the same target, run with the same options."""
    mine, theirs = set(first.model_maps), set(d.model_maps)
    if mine != theirs:
        only = sorted(mine - theirs) or sorted(theirs - mine)
        holder = first if mine - theirs else d
        raise DumpError(f"'{d.path}' does not belong with '{first.path}': only '{holder.path}' "
                        f"holds the maps of {', '.join(only)} (/maps); merge the shards of one "
                        f"capture, all made with the same map: hooks.")
    if mine and first.target_spec != d.target_spec:
        raise DumpError(f"'{d.path}' does not belong with '{first.path}': their maps explain "
                        f"different targets ({first.target_spec} and {d.target_spec}); merge "
                        f"the shards of one capture.")
    for name in sorted(mine):
        a, b = first.map_options(name), d.map_options(name)
        if a != b:
            raise DumpError(f"'{d.path}' does not belong with '{first.path}': their {name} maps "
                            f"were made with different options ({_options_text(a)} and "
                            f"{_options_text(b)}); merge the shards of one capture.")


def _options_text(options: dict | None) -> str:
    if options is None:
        return "not recorded"
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "defaults"


def _dataset_keys(f: h5py.File, aliases: dict[str, str]) -> list[str]:
    keys = [k for k in f if isinstance(f[k], h5py.Dataset) and k != "readout"]   # not per image
    grads = [f"grads/{h}" for h in f["grads"]] if "grads" in f else []
    maps = [f"maps/{m}" for m in f["maps"]] if "maps" in f else []   # made with the model
    return keys + [f"acts/{h}" for h in f["acts"] if h not in aliases] + grads + maps


def _write_virtual(shards: list[Dump], out: Path, partial: Path) -> None:
    first = shards[0]
    aliases: dict[str, str] = first.attrs.get("aliases") or {}
    total = sum(len(d) for d in shards)
    rel = [relative_inside(d.path, out.parent) for d in shards]
    f, guarded = create_file(partial, libver="v110")
    try:
        for key, value in first._f.attrs.items():
            if key not in ("shard", "complete", "capture_id"):
                f.attrs[key] = value
        f.attrs["capture_id"] = secrets.token_hex(16)
        # each shard's identity, checked whenever the merged dump opens (dump.check)
        f.attrs["shard_ids"] = json.dumps([shard_identity(d._f.attrs) for d in shards])
        f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        f.attrs["num_images"] = total
        f.attrs["merged_from"] = json.dumps(rel)
        f.create_group("acts")
        for group in ("grads", "maps"):
            if group in first._f:
                f.create_group(group)
        if "derived" in first._f:   # the norms' parameters: a few kB, copied (the same in all)
            for d in shards[1:]:
                for name in first.derived:
                    a, b = first._f["derived"][name], d._f.get(f"derived/{name}")
                    if b is None or any(k not in b or not np.array_equal(a[k], b[k]) for k in a):
                        raise DumpError(f"'{d.path}' does not belong with '{first.path}': the "
                                        f"parameters of the derived hook point '{name}' differ.")
            f.copy(first._f["derived"], "derived")
        if "readout" in first._f:   # the model's read-out weights: the first shard's, linked
            ref = first._f["readout"]
            layout = h5py.VirtualLayout(shape=ref.shape, dtype=ref.dtype)
            layout[...] = h5py.VirtualSource(rel[0], "readout", shape=ref.shape)
            f.create_virtual_dataset("readout", layout, fillvalue=0).attrs["index"] = \
                ref.attrs["index"]
        for key in _dataset_keys(first._f, aliases):
            ref = first._f[key]
            for d in shards[1:]:
                other = d._f.get(key)
                if other is None or other.shape[1:] != ref.shape[1:] or other.dtype != ref.dtype:
                    raise DumpError(f"'{d.path}' does not belong with '{first.path}': dataset "
                                    f"/{key} is missing or has another shape or type.")
            layout = h5py.VirtualLayout(shape=(total, *ref.shape[1:]), dtype=ref.dtype)
            start = 0
            for d, name in zip(shards, rel):
                n = len(d)
                layout[start:start + n] = h5py.VirtualSource(name, key, shape=(n, *ref.shape[1:]))
                start += n
            text = h5py.check_string_dtype(ref.dtype) is not None   # /paths
            vds = f.create_virtual_dataset(key, layout, fillvalue=None if text else 0)
            for k, v in ref.attrs.items():
                vds.attrs[k] = v
        for alias, target in aliases.items():
            f[f"acts/{alias}"] = f[f"acts/{target}"]
        f.attrs["complete"] = True
    finally:
        close_file(f, guarded)
