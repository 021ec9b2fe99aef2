"""Activation dumps: one HDF5 file per capture, written by `vitscope.capture`, read by plugins.

    /                 root attributes: format="vitscope-dump", version, model config, checkpoint
                      path + SHA-256, classes, dataset spec, split, seed, order, token layout,
                      hooks, ... (docs/dump-format.md lists every one)
    /images           N×H×W×3 uint8    the inputs as the model saw them, before normalisation
    /labels           N int64          -1 where unknown
    /logits           N×C float32
    /indices          N int64          index of each image in its split
    /masks            N×H×W uint8      ground-truth object masks, when the dataset has them
    /paths            N str            the source file of each image, for folder data
    /acts/<hook>      N×...            one dataset per captured hook point (fp16 by default),
                                       chunked along N, attribute `dims` names each axis
    /target           N int64          the class explained per image (attribute `target`
                                       says how it was chosen: pred, label, an index)
    /grads/<hook>     N×...            d logit[target] / d <hook>, for the gradients asked for

    with Dump.open("outputs/dumps/run-val-64.h5") as dump:
        for name in dump.match("blocks.*.attn.weights"):    # numeric layer order
            a = dump[name][:16]                              # lazy: reads 16 images only
        g = dump["grad:blocks.0.attn.weights"][:16]          # its gradient, where captured

A file becomes a dump only when its writer finishes (attribute `complete`), so a `.partial`
left by a killed capture never opens as one. `merge` joins the shards of a `--shard i/n`
capture into one file of HDF5 virtual datasets (no data is copied).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vitscope import __version__
from vitscope.errors import DumpError, WriteError
from vitscope.layout import TokenLayout  # noqa: F401  (re-exported: the dump's layout type)
from vitscope.names import (ATTENTION, GRAD_PREFIX, SLICES, is_grad, layer_sort_key,
                            match_names, slice_of, split_grads, summarize_names, with_slices)
from vitscope._internal.folders import make_output_dir, partial_path, publish, remove_empty
from vitscope._internal.files import GuardedFile

# The format's names and the one validated reading of a file live in vitscope.dump.check.
from vitscope.dump.check import (FORMAT, HOOK_GROUPS, JSON_ATTRS, REQUIRED, VERSION,  # noqa: F401
                                check_dump, relative_inside)

CHUNK_BYTES = 1 << 20        # target chunk size: large enough to compress well, small to read one image
READ_CACHE_BYTES = 16 << 20  # per-dataset chunk cache when reading, so image-by-image loops stay fast


def dims_for(key: str, ndim: int) -> list[str]:
    """Axis names of a dataset: N images, H heads, T tokens (prefix + patches), P patches only,
    D width, Dh head width; images use H×W×C for height, width, channels."""
    known = {"images": ["N", "H", "W", "C"], "masks": ["N", "H", "W"], "labels": ["N"],
             "dataset_labels": ["N"], "indices": ["N"], "logits": ["N", "C"], "target": ["N"],
             "paths": ["N"]}
    name = key.removeprefix("acts/").removeprefix("grads/")
    if key in known:
        dims = known[key]
    elif name.endswith("attn.weights"):
        dims = ["N", "H", "T", "T"]
    elif slice_of(name) is not None:       # a CLS row or column of the attention
        dims = ["N", "H", "T"]
    elif name.endswith(("attn.q", "attn.k", "attn.v")):
        dims = ["N", "H", "T", "Dh"]
    elif name == "patch_embed.out":
        dims = ["N", "P", "D"]
    elif ndim == 2:
        dims = ["N", "D"]
    else:
        dims = ["N", "T", "D"]
    return dims if len(dims) == ndim else ["N"] + [f"d{i}" for i in range(1, ndim)]


def chunk_rows(n: int, batch: int, row_bytes: int) -> int:
    """Images per chunk: a multiple or divisor of the batch (writes fill whole chunks) near
    CHUNK_BYTES, never more than n."""
    rows = max(1, batch)
    while rows * 2 * row_bytes <= CHUNK_BYTES and rows * 2 <= n:
        rows *= 2
    while rows * row_bytes > CHUNK_BYTES and rows % 2 == 0:
        rows //= 2
    if rows * row_bytes > CHUNK_BYTES:
        rows = max(1, CHUNK_BYTES // max(row_bytes, 1))
    return max(1, min(rows, n))


def lzf_pays(sample: np.ndarray) -> bool:
    """Whether lzf (after byte-shuffle) shrinks `sample` (the first chunk) by 10% or more.

    lzf is the default for speed, yet fp16 residual-stream activations barely compress with it
    (ratio ~1.0) while compressing costs ~10x in write speed; attention weights and images
    usually do compress. So "lzf" means lzf where it pays, raw storage elsewhere.
    """
    with h5py.File(f"probe-{id(sample)}", "w", driver="core", backing_store=False) as f:
        ds = f.create_dataset("x", data=sample, chunks=sample.shape, compression="lzf",
                              shuffle=sample.dtype.itemsize > 1)
        f.flush()
        return ds.id.get_storage_size() <= 0.9 * sample.nbytes


def _encode(key: str, value: Any) -> Any:
    if key in JSON_ATTRS:
        return json.dumps(value, sort_keys=True)
    return str(value) if isinstance(value, Path) else value


def create_file(path: Path, **kwargs) -> tuple[h5py.File, GuardedFile]:
    """h5py.File(path, "w") written through a GuardedFile (vitscope._internal.files: a full disk must
    never reach the HDF5 library, which crashes the process after a failed write), with one
    clear sentence where the file system refuses (a read-only mount, /proc), which os.access
    cannot always foresee. Close it with close_file, which raises WriteError for a failed write."""
    try:
        guarded = GuardedFile(path, swallow=True)
    except OSError as e:
        raise DumpError(f"Cannot write '{path}' ({e.strerror or type(e).__name__}); choose "
                        f"another path with -o.") from None
    try:
        return h5py.File(guarded, "w", **kwargs), guarded
    except BaseException:
        guarded.close()
        raise


def close_file(f: h5py.File, guarded: GuardedFile, *, sync: bool = True) -> None:
    """Close a file from create_file (flushed and fsynced with `sync`); WriteError if any write
    to it failed, which the caller turns into removing it."""
    if f.id.valid:
        f.close()
    if sync:
        guarded.sync()
    guarded.close()
    guarded.check()


class DumpWriter:
    """Create a dump at `path` and fill it batch by batch (from one thread).

    Datasets are created on their first batch (shapes come from the data, so no dry run of
    the model is needed) at their final length `n`, chunked along N and compressed.
    """

    def __init__(self, path: str | Path, n: int, attrs: dict[str, Any], *, batch_size: int,
                 compression: str | None = "lzf") -> None:
        self.path = Path(path)
        self.n = n
        self.batch_size = batch_size
        self.compression = None if compression in (None, "none") else compression
        self.bytes_in = 0  # uncompressed bytes handed to HDF5
        # v110: attributes beyond 64 kB (e.g. 1000 class names) and the format VDS needs anyway.
        self.f, self.file = create_file(self.path, libver="v110", rdcc_nbytes=2 * CHUNK_BYTES)
        self.f.attrs["format"] = FORMAT
        self.f.attrs["version"] = VERSION
        self.f.attrs["vitscope_version"] = __version__
        self.f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.f.attrs["complete"] = False
        for key, value in attrs.items():
            if value is not None:
                self.f.attrs[key] = _encode(key, value)
        self._datasets: dict[str, h5py.Dataset] = {}

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Store `arrays[key]` at rows start..start+len of dataset `key` (e.g. "acts/cls")."""
        for key, arr in arrays.items():
            ds = self._datasets.get(key)
            if ds is None:
                ds = self._datasets[key] = self._create(key, arr)
            ds[start:start + len(arr)] = arr
            self.bytes_in += arr.nbytes
        self.file.check()  # a full disk stops the capture at the batch it happened in

    def _create(self, key: str, arr: np.ndarray) -> h5py.Dataset:
        if arr.dtype == object:   # text (file paths): variable-length UTF-8
            ds = self.f.create_dataset(key, shape=(self.n,), dtype=h5py.string_dtype(),
                                       chunks=(min(self.n, 4096),))
            ds.attrs["dims"] = dims_for(key, 1)
            return ds
        rest = arr.shape[1:]
        rows = chunk_rows(self.n, self.batch_size, arr.itemsize * int(np.prod(rest, dtype=np.int64)))
        opts: dict[str, Any] = {}
        if self.compression and (self.compression != "lzf" or lzf_pays(arr[:rows])):
            opts["compression"] = self.compression
            if self.compression == "gzip":
                opts["compression_opts"] = 4
            opts["shuffle"] = arr.dtype.itemsize > 1  # byte-shuffle helps floats compress
        ds = self.f.create_dataset(key, shape=(self.n, *rest), dtype=arr.dtype,
                                   chunks=(rows, *rest), **opts)
        ds.attrs["dims"] = dims_for(key, arr.ndim)
        return ds

    def set_aliases(self, aliases: dict[str, str]) -> None:
        """Make each /acts/<alias> a hard link to /acts/<target>: hook points that received
        the same tensor are stored once (listed in the root attribute `aliases`)."""
        for alias, target in aliases.items():
            self.f[f"acts/{alias}"] = self.f[f"acts/{target}"]
        self.f.attrs["aliases"] = _encode("aliases", aliases)

    def set_derived(self, derived: dict[str, dict[str, Any]]) -> None:
        """Record hook points computed on read from a stored one (vitscope.dump.derive), instead of
        storing them: `derived[name]` holds function, source, eps, weight, bias and dims. The
        parameters go to /derived/<name>/ (weight, bias), the rest to the root attribute
        `derived`."""
        index = {}
        for name, spec in derived.items():
            group = self.f.require_group("derived").create_group(name)
            for key in ("weight", "bias"):
                if spec.get(key) is not None:
                    group.create_dataset(key, data=np.asarray(spec[key], np.float32))
            group.attrs["dims"] = spec["dims"]
            index[name] = {"function": spec["function"], "source": spec["source"],
                           "eps": float(spec["eps"])}
        self.f.attrs["derived"] = _encode("derived", index)

    def finish(self) -> None:
        """Mark the file complete, flush it to disk and close it (the rename that follows must
        never expose lost data); WriteError if any write failed."""
        self.f.attrs["complete"] = True
        close_file(self.f, self.file)

    def close(self) -> None:
        """Close without finishing (after a failure: the caller deletes the file)."""
        try:
            close_file(self.f, self.file, sync=False)
        except WriteError:
            pass


class Dump:
    """A finished dump opened for reading; datasets are read lazily (see module docstring)."""

    def __init__(self, path: Path, f: h5py.File, contents=None) -> None:
        """Use Dump.open: it validates the file (vitscope.dump.check) and passes what it read."""
        contents = contents if contents is not None else check_dump(path, f)
        self.path = path
        self._f = f
        self.attrs: dict[str, Any] = contents.attrs
        stored = set(f["acts"])
        listed = self.attrs.get("hooks") or sorted(stored, key=layer_sort_key)
        # hook points computed on read from a stored one (vitscope.dump.derive): name -> spec
        self.derived: dict[str, dict[str, Any]] = dict(self.attrs.get("derived") or {})
        self.hooks: list[str] = [h for h in listed if h in stored or h in self.derived]
        self.layout = contents.layout
        # CLS slices read from a stored full attention (vitscope.names.SLICES): name -> source.
        # Not in `hooks` (what is stored); in `names`, `match` and `covers` (what is served).
        self.sliced: dict[str, str] = {}
        if self.layout.cls_index is not None:
            self.sliced = {f"{h}.{s}": h for h in self.hooks if h.endswith(ATTENTION)
                           for s in SLICES if f"{h}.{s}" not in stored}
        self.readable: list[str] = [h for h in with_slices(self.hooks)
                                    if h in self.sliced or h in self.hooks]
        grads = set(f["grads"]) if "grads" in f else set()
        # hooks whose gradient of the target logit was captured (read as dump["grad:<hook>"])
        self.grad_hooks: list[str] = [h for h in self.attrs.get("grad_hooks") or [] if h in grads]
        self.classes: list[str] = list(self.attrs.get("classes") or [])
        self.model_config: dict[str, Any] = dict(self.attrs.get("model_config") or {})
        self.images: h5py.Dataset = f["images"]
        self.logits: h5py.Dataset = f["logits"]
        self.masks: h5py.Dataset | None = f["masks"] if "masks" in f else None

    @classmethod
    def open(cls, path: str | Path) -> "Dump":
        """Open and validate a dump; DumpError says what is wrong with anything else."""
        path = Path(path)
        if not path.exists():
            raise DumpError(f"No dump at '{path}': the file does not exist; create one with "
                            f"`vitscope dump CKPT -o {path}`.")
        if path.is_dir():
            raise DumpError(f"'{path}' is a directory; expected a dump file (.h5) written by "
                            f"`vitscope dump`.")
        if path.stat().st_size == 0:
            raise DumpError(f"'{path}' is empty (0 bytes), so it is truncated or was never "
                            f"written; re-create it with `vitscope dump`.")
        if not h5py.is_hdf5(path):
            raise DumpError(f"'{path}' is not an HDF5 file, so it is not a vitscope dump; "
                            f"expected a .h5 file written by `vitscope dump`.")
        try:
            f = h5py.File(path, "r", rdcc_nbytes=READ_CACHE_BYTES)
        except OSError as e:
            raise DumpError(f"'{path}' is truncated or corrupt (HDF5 cannot open it: "
                            f"{str(e).splitlines()[0][:160]}); re-create it with "
                            f"`vitscope dump`.") from None
        try:
            return cls(path, f, check_dump(path, f))
        except BaseException:
            f.close()
            raise

    def __getitem__(self, hook: str) -> h5py.Dataset:
        if is_grad(hook):
            name = hook[len(GRAD_PREFIX):]
            if name not in self.grad_hooks:
                raise DumpError(f"'{self.path}' holds no gradient of '{name}'; it holds gradients "
                                f"of: {summarize_names(self.grad_hooks) or 'none'} (capture them "
                                f"with `vitscope dump --hooks 'grad:{name}' --target ...`).")
            return self._f["grads"][name]
        if hook in self.derived and hook not in self._f["acts"]:
            return self._derived_dataset(hook)
        if hook in self.sliced:
            from vitscope.dump.derive import SliceView
            source = self[self.sliced[hook]]
            return SliceView(hook, source, SLICES[slice_of(hook)[1]], self.layout.cls_index)
        if hook not in self._f["acts"]:
            raise DumpError(f"'{self.path}' holds no hook '{hook}'; it holds: "
                            f"{summarize_names(self.hooks) or 'none'} (capture more with "
                            f"`vitscope dump --hooks`).")
        return self._f["acts"][hook]

    def __contains__(self, hook: str) -> bool:
        if is_grad(hook):
            return hook[len(GRAD_PREFIX):] in self.grad_hooks
        return hook in self._f["acts"] or hook in self.derived or hook in self.sliced

    def _derived_dataset(self, hook: str):
        """The DerivedDataset of a derived hook point (its parameters read once)."""
        from vitscope.dump.derive import DerivedDataset
        cache = self.__dict__.setdefault("_derived_params", {})
        spec = self.derived[hook]
        try:
            if hook not in cache:
                group = self._f["derived"][hook]
                cache[hook] = ({**spec, **{k: np.asarray(group[k], np.float32)
                                           for k in ("weight", "bias") if k in group}},
                               group.attrs)
            params, attrs = cache[hook]
            source = self._f["acts"][spec["source"]]
            if len(source.shape) < 2 or any(
                    params[k].shape != source.shape[-1:] for k in ("weight", "bias") if k in params):
                raise ValueError(f"parameters do not fit the source's shape {source.shape}")
            return DerivedDataset(hook, source, params, attrs)
        except (KeyError, ValueError, TypeError) as e:
            raise DumpError(f"'{self.path}' is a damaged dump: the derived hook point '{hook}' "
                            f"cannot be computed ({type(e).__name__}: {str(e)[:120]}); re-create "
                            f"it with `vitscope dump` (--no-derive stores every hook point as "
                            f"captured).") from None

    def match(self, pattern: str) -> list[str]:
        """Captured hook names matching a glob, in numeric layer order; [] if none. A
        `grad:` pattern matches the captured gradients and returns `grad:`-prefixed names."""
        if is_grad(pattern):
            found = match_names(pattern[len(GRAD_PREFIX):], self.grad_hooks)
            return [GRAD_PREFIX + n for n in sorted(found, key=self._order)]
        return sorted(match_names(pattern, self.readable), key=self._order)

    @property
    def names(self) -> list[str]:
        """Everything a plugin's `requires` can ask of this dump: the hooks, then `grad:<hook>`
        for each captured gradient."""
        return self.readable + [GRAD_PREFIX + h for h in self.grad_hooks]

    @property
    def model_names(self) -> list[str]:
        """Every name the model offers (hook points, and `grad:` of each): what `requires`
        patterns are resolved against."""
        model = list(self.attrs.get("model_hooks") or self.hooks)
        return self._with_slices(model) + [GRAD_PREFIX + h for h in model]

    def _with_slices(self, names: list[str]) -> list[str]:
        return with_slices(names, has_cls=self.layout.cls_index is not None)

    @cached_property
    def _rank(self) -> dict[str, int]:
        """Position of each hook in the model's forward order (blocks.9 before blocks.10)."""
        names = self.attrs.get("model_hooks") or sorted(self.hooks, key=layer_sort_key)
        return {n: i for i, n in enumerate(names)}

    def _order(self, name: str) -> tuple:
        return (self._rank.get(name, len(self._rank)), layer_sort_key(name))

    def dims(self, hook: str) -> list[str]:
        """Axis names of a hook's dataset, e.g. ["N", "H", "T", "T"]."""
        return [str(d) for d in self[hook].attrs["dims"]]

    def __len__(self) -> int:
        return int(self._f["labels"].shape[0])

    @cached_property
    def labels(self) -> np.ndarray:
        return np.asarray(self._f["labels"][:], dtype=np.int64)

    @cached_property
    def paths(self) -> list[str] | None:
        """The source file of each image (folder data), else None."""
        if "paths" not in self._f:
            return None
        return [str(p) for p in self._f["paths"].asstr()[:]]

    @cached_property
    def file_names(self) -> list[str] | None:
        """The file name of each image ("cat_0001.jpg"), else None."""
        return None if self.paths is None else [Path(p).name for p in self.paths]

    @cached_property
    def indices(self) -> np.ndarray:
        """Index of each image in its split."""
        return np.asarray(self._f["indices"][:], dtype=np.int64)

    @property
    def target_spec(self) -> str:
        """How /target was chosen: "pred", "label", a class index as text, or "explicit";
        "pred" for dumps made before targets were stored (their gradients: none)."""
        return str(self.attrs.get("target", "pred"))

    @cached_property
    def target(self) -> np.ndarray:
        """The class explained for each image (N int64): what its gradients differentiate;
        the predictions for a dump without /target."""
        if "target" not in self._f:
            return self.preds
        return np.asarray(self._f["target"][:], dtype=np.int64)

    @cached_property
    def preds(self) -> np.ndarray:
        """Predicted class per image; -1 for a feature model's dump (its /logits are features)."""
        if self.attrs.get("outputs") == "features":
            return np.full(len(self), -1, dtype=np.int64)
        step = 1 << 16
        return np.concatenate([self.logits[i:i + step].argmax(1) for i in range(0, len(self), step)]
                              or [np.zeros(0, np.int64)]).astype(np.int64)

    def covers(self, hooks: Iterable[str] | str, n: int, *, checkpoint_sha256: str | None = None,
               data: str | None = None, split: str | None = None,
               data_sha256: str | None = None, seed: int | None = None,
               target: str | int | None = None) -> bool:
        """Whether this dump serves a request: every hook point the names/patterns select in
        the model is captured (`grad:` ones as gradients), it holds the first n images (or the
        whole split) of its order, and the checkpoint hash, dataset spec, split and data
        fingerprint (ImageDataset.fingerprint) agree where given. With `seed`, its first n
        images must be the first n of that seeded shuffle (an `--in-order` dump's first images
        may all be of one class), unless n takes every image of the split anyway. Gradients
        serve only a request for the same `target` (default "pred"); an "explicit" one never."""
        a = self.attrs
        patterns = [hooks] if isinstance(hooks, str) else list(hooks)
        act_patterns, grad_patterns = split_grads(patterns)
        if grad_patterns and (self.target_spec == "explicit"
                              or self.target_spec != str(target if target is not None
                                                         else "pred").strip().lower()):
            return False
        if seed is not None and (a.get("order"), a.get("seed")) != ("shuffle", seed) \
                and n < int(a.get("split_size", n + 1)):
            return False
        if checkpoint_sha256 is not None and a.get("checkpoint_sha256") != checkpoint_sha256:
            return False
        if data_sha256 is not None and a.get("data_sha256") != data_sha256:
            return False  # also for dumps from before the fingerprint existed: recapture
        if data is not None and a.get("dataset") != data:
            return False
        if split is not None and a.get("split") != split:
            return False
        shard = a.get("shard")
        if shard and int(shard.get("start", 0)) != 0:
            return False  # a later shard is not a prefix of the image order
        whole_split = not shard and len(self) >= int(a.get("split_size", -1))
        if len(self) < n and not whole_split:
            return False
        model_hooks = self._with_slices(list(a.get("model_hooks") or self.hooks))
        for have, wanted_patterns in ((set(self.readable), act_patterns),
                                      (set(self.grad_hooks), grad_patterns)):
            for pattern in wanted_patterns:
                wanted = match_names(pattern, model_hooks)
                if not wanted or not have.issuperset(wanted):
                    return False
        return True

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "Dump":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        grads = (f", gradients of: {summarize_names(self.grad_hooks)} (target "
                 f"{self.target_spec})" if self.grad_hooks else "")
        return (f"Dump('{self.path}', {len(self)} images of {self.attrs.get('dataset')}:"
                f"{self.attrs.get('split')}, hooks: {summarize_names(self.hooks)}{grads})")


# Attributes every shard of one capture must share before merge joins them.
SHARED_ATTRS = ("checkpoint_sha256", "model_config", "dataset", "data_sha256", "split",
                "split_size", "seed", "order", "hooks", "aliases", "dtype", "normalize",
                "classes", "token_layout", "target", "grad_hooks", "derived")


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


def _dataset_keys(f: h5py.File, aliases: dict[str, str]) -> list[str]:
    keys = [k for k in f if isinstance(f[k], h5py.Dataset)]
    grads = [f"grads/{h}" for h in f["grads"]] if "grads" in f else []
    return keys + [f"acts/{h}" for h in f["acts"] if h not in aliases] + grads


def _write_virtual(shards: list[Dump], out: Path, partial: Path) -> None:
    first = shards[0]
    aliases: dict[str, str] = first.attrs.get("aliases") or {}
    total = sum(len(d) for d in shards)
    rel = [relative_inside(d.path, out.parent) for d in shards]
    f, guarded = create_file(partial, libver="v110")
    try:
        for key, value in first._f.attrs.items():
            if key not in ("shard", "complete"):
                f.attrs[key] = value
        f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        f.attrs["num_images"] = total
        f.attrs["merged_from"] = json.dumps(rel)
        f.create_group("acts")
        if "grads" in first._f:
            f.create_group("grads")
        if "derived" in first._f:   # the norms' parameters: a few kB, copied (the same in all)
            for d in shards[1:]:
                for name in first.derived:
                    a, b = first._f["derived"][name], d._f.get(f"derived/{name}")
                    if b is None or any(k not in b or not np.array_equal(a[k], b[k]) for k in a):
                        raise DumpError(f"'{d.path}' does not belong with '{first.path}': the "
                                        f"parameters of the derived hook point '{name}' differ.")
            f.copy(first._f["derived"], "derived")
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
