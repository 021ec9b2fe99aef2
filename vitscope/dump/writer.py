"""Writing a dump: chunked, compressed datasets, filled batch by batch, finished atomically.

The writer owns the file until `finish`: the root attribute `complete` is set last, so a file a
killed capture left behind never opens as a dump (vitscope.dump.check)."""
from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vitscope import __version__
from vitscope._internal.files import GuardedFile
from vitscope.dump.check import FORMAT, JSON_ATTRS, VERSION
from vitscope.errors import DumpError, WriteError
from vitscope.names import slice_of

CHUNK_BYTES = 1 << 20        # target chunk size: large enough to compress well, small to read one image
LZF_MIN_SAVING = 0.10        # lzf is used only where it shrinks a chunk by this much


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
    return lzf_probe(sample)[0] <= 1 - LZF_MIN_SAVING


def lzf_probe(sample: np.ndarray) -> tuple[float, float]:
    """(stored fraction, CPU seconds lzf costs beyond a raw write) of `sample`, one chunk,
    written both ways to memory: what "auto" compression weighs against the capture's own
    pace. CPU time of this thread, so a busy neighbour does not make lzf look dearer."""
    seconds = []
    for opts in ({}, {"compression": "lzf", "shuffle": sample.dtype.itemsize > 1}):
        with h5py.File(f"probe-{id(sample)}", "w", driver="core", backing_store=False) as f:
            t0 = time.thread_time()
            ds = f.create_dataset("x", data=sample, chunks=sample.shape, **opts)
            f.flush()
            seconds.append(time.thread_time() - t0)
            stored = ds.id.get_storage_size() / max(sample.nbytes, 1)
    return stored, max(0.0, seconds[1] - seconds[0])


def _encode(key: str, value: Any) -> Any:
    if key in JSON_ATTRS:
        return json.dumps(value, sort_keys=True)   # non-UTF-8 names survive as \\udcXX escapes
    value = str(value) if isinstance(value, Path) else value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:   # a path with bytes that are not UTF-8: shown escaped
            from vitscope._internal.text import shown_name
            value = shown_name(value)
    return value


def _name_bytes(value: Any) -> Any:
    """A text value (a file path) as the bytes it stands for (surrogateescape), so a name
    that is not UTF-8 is stored, and read back (Dump.paths), as it is on disk."""
    if isinstance(value, str):
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace")
    return value


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
    the model is needed) at their final length `n`, chunked along N and compressed:
    `compression` "lzf" (byte-shuffle and lzf where it shrinks a chunk by LZF_MIN_SAVING),
    "gzip", "none", or "auto": lzf where it pays *and* the capture can afford it. With
    `compress_budget` (seconds per batch; the capture sets it from its first forward pass,
    vitscope.capture.stream) "auto" measures lzf on the first chunk of each dataset, and
    compresses the datasets that save the most bytes per second of compressing while their
    summed cost per batch stays within the budget; the rest are stored raw. Without a budget
    "auto" is "lzf". Either way every dataset reads the same (h5py decompresses on read).
    """

    def __init__(self, path: str | Path, n: int, attrs: dict[str, Any], *, batch_size: int,
                 compression: str | None = "lzf",
                 readout: dict[str, np.ndarray] | None = None,
                 compress_budget: float | None = None) -> None:
        self.path = Path(path)
        self.readout = readout or {}   # the model's read-out weights, written by finish()
        self.n = n
        self.batch_size = batch_size
        self.compression = None if compression in (None, "none") else compression
        self.compress_budget = compress_budget   # seconds a batch for "auto" (None: as "lzf")
        self.chosen: dict[str, str] = {}         # "auto": dataset -> "lzf" or "none", and why
        self.bytes_in = 0  # uncompressed bytes handed to HDF5
        # v110: attributes beyond 64 kB (e.g. 1000 class names) and the format VDS needs anyway.
        self.f, self.file = create_file(self.path, libver="v110", rdcc_nbytes=2 * CHUNK_BYTES)
        self.f.attrs["format"] = FORMAT
        self.f.attrs["version"] = VERSION
        self.f.attrs["vitscope_version"] = __version__
        self.f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # unique per file written: a merged dump records its shards' ids (dump.check)
        self.f.attrs["capture_id"] = secrets.token_hex(16)
        self.f.attrs["complete"] = False
        for key, value in attrs.items():
            if value is not None:
                self.f.attrs[key] = _encode(key, value)
        self.f.require_group("acts")   # always there: a plugin may read no hook point at all
        self._datasets: dict[str, h5py.Dataset] = {}

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Store `arrays[key]` at rows start..start+len of dataset `key` (e.g. "acts/cls")."""
        new = [k for k in arrays if k not in self._datasets]
        lzf = self._auto(arrays, new) if new and self.compression == "auto" else None
        for key, arr in arrays.items():
            ds = self._datasets.get(key)
            if ds is None:
                ds = self._datasets[key] = self._create(key, arr, lzf)
            if arr.dtype == object:   # file names are bytes on Linux: stored as those bytes
                arr = np.array([_name_bytes(v) for v in arr], dtype=object)
            ds[start:start + len(arr)] = arr
            self.bytes_in += arr.nbytes
        self.file.check()  # a full disk stops the capture at the batch it happened in

    def _auto(self, arrays: dict[str, np.ndarray], keys: list[str]) -> set[str]:
        """Which of the new datasets `keys` "auto" compresses with lzf (see the class)."""
        candidates = []
        for key in keys:
            arr = arrays[key]
            if arr.dtype == object or arr.nbytes == 0:
                continue
            rows = chunk_rows(self.n, self.batch_size, arr[:1].nbytes)
            stored, cost = lzf_probe(np.ascontiguousarray(arr[:rows]))
            scale = arr.nbytes / max(arr[:rows].nbytes, 1)     # the probe's chunk -> this batch
            if stored > 1 - LZF_MIN_SAVING:
                self.chosen[key] = "none: lzf would save under 10%"
                continue
            candidates.append(((1 - stored) * arr.nbytes / max(cost * scale, 1e-9), key,
                               cost * scale))
        if self.compress_budget is None:
            chosen = {key for _, key, _ in candidates}
        else:
            chosen, spent = set(), 0.0
            for _, key, cost in sorted(candidates, reverse=True):   # most bytes saved a second
                if spent + cost <= self.compress_budget and self.compress_budget > 0:
                    chosen.add(key)
                    spent += cost
        for _, key, cost in candidates:
            self.chosen[key] = "lzf" if key in chosen else \
                f"none: lzf would cost {cost:.2f} s a batch, over the budget"
        return chosen

    def _create(self, key: str, arr: np.ndarray, lzf: set[str] | None = None) -> h5py.Dataset:
        if arr.dtype == object:   # text (file paths): variable-length UTF-8
            ds = self.f.create_dataset(key, shape=(self.n,), dtype=h5py.string_dtype(),
                                       chunks=(min(self.n, 4096),))
            ds.attrs["dims"] = dims_for(key, 1)
            return ds
        rest = arr.shape[1:]
        rows = chunk_rows(self.n, self.batch_size, arr.itemsize * int(np.prod(rest, dtype=np.int64)))
        opts: dict[str, Any] = {}
        if lzf is not None:      # "auto", decided for the whole first batch by _auto
            if key in lzf:
                opts.update(compression="lzf", shuffle=arr.dtype.itemsize > 1)
        elif self.compression and (self.compression != "lzf" or lzf_pays(arr[:rows])):
            opts["compression"] = self.compression
            if self.compression == "gzip":
                opts["compression_opts"] = 4
            opts["shuffle"] = arr.dtype.itemsize > 1  # byte-shuffle helps floats compress
        ds = self.f.create_dataset(key, shape=(self.n, *rest), dtype=arr.dtype,
                                   chunks=(rows, *rest), **opts)
        ds.attrs["dims"] = dims_for(key, arr.ndim)
        if key.startswith("maps/") and "map_options" in self.f.attrs:
            # beside the maps, the options their method ran with (also a root attribute)
            options = json.loads(self.f.attrs["map_options"]).get(key[len("maps/"):])
            if options is not None:
                ds.attrs["options"] = json.dumps(options, sort_keys=True)
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

    def set_readout(self, params: dict[str, np.ndarray]) -> None:
        """Store the model's read-out weights (vitscope.model.readout: final norm, head,
        output projections, layer scales) as /readout/<key>, float32, so that read-outs
        (logit lens, direct logit attribution, per-head contributions) need no model."""
        if not params:
            return
        # one packed float32 dataset and an index {key: [offset, shape]}: a merged dump links
        # it (one virtual dataset) instead of copying a dozen small ones
        arrays = {k: np.asarray(v, np.float32) for k, v in sorted(params.items())}
        index, offset = {}, 0
        for key, value in arrays.items():
            index[key] = [offset, list(value.shape)]
            offset += value.size
        flat = np.concatenate([v.ravel() for v in arrays.values()]) if arrays else np.zeros(0)
        ds = self.f.create_dataset("readout", data=flat.astype(np.float32))
        ds.attrs["index"] = json.dumps(index)

    def finish(self) -> None:
        """Mark the file complete, flush it to disk and close it (the rename that follows must
        never expose lost data); WriteError if any write failed."""
        self.set_readout(self.readout)
        if self.chosen:   # "auto": what each dataset got, and why (read by nothing, for people)
            self.f.attrs["compression_choice"] = json.dumps(self.chosen, sort_keys=True)
        self.f.attrs["complete"] = True
        close_file(self.f, self.file)

    def close(self) -> None:
        """Close without finishing (after a failure: the caller deletes the file)."""
        try:
            close_file(self.f, self.file, sync=False)
        except WriteError:
            pass


def dims_for(key: str, ndim: int) -> list[str]:
    """Axis names of a dataset: N images, H heads, T tokens (prefix + patches), P patches only,
    D width, Dh head width; images use H×W×C for height, width, channels."""
    known = {"images": ["N", "H", "W", "C"], "masks": ["N", "H", "W"], "labels": ["N"],
             "dataset_labels": ["N"], "indices": ["N"], "logits": ["N", "C"], "target": ["N"],
             "paths": ["N"]}
    name = key.removeprefix("acts/").removeprefix("grads/")
    if key in known:
        dims = known[key]
    elif key.startswith("maps/"):          # a method's maps on the patch grid
        dims = ["N", "h", "w"]
    elif name.endswith("attn.weights"):
        dims = ["N", "H", "T", "T"]
    elif slice_of(name) is not None:       # a CLS row or column of the attention
        dims = ["N", "H", "T"]
    elif name.endswith(("attn.q", "attn.k", "attn.v", "attn.head_out")):
        dims = ["N", "H", "T", "Dh"]
    elif name.endswith("mlp.hidden"):
        dims = ["N", "T", "F"]
    elif name == "patch_embed.out":
        dims = ["N", "P", "D"]
    elif ndim == 2:
        dims = ["N", "D"]
    else:
        dims = ["N", "T", "D"]
    return dims if len(dims) == ndim else ["N"] + [f"d{i}" for i in range(1, ndim)]
