"""Reading a dump: `Dump.open(path)`, lazy per-hook datasets, the file's layout and labels.

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
left by a killed capture never opens as one.
"""
from __future__ import annotations

import json

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vitscope.errors import DumpError
from vitscope.layout import TokenLayout  # noqa: F401  (re-exported: the dump's layout type)
from vitscope.names import (ATTENTION, GRAD_PREFIX, MAP_PREFIX, SLICES, is_grad, is_map,
                            layer_sort_key, match_names, optional_of, slice_of, split_grads,
                            split_maps, summarize_names, with_slices)

# The format's names and the one validated reading of a file live in vitscope.dump.check.
from vitscope.dump.check import (FORMAT, HOOK_GROUPS, JSON_ATTRS, REQUIRED, VERSION,  # noqa: F401
                                check_dump, relative_inside)

READ_CACHE_BYTES = 16 << 20  # per-dataset chunk cache when reading, so image-by-image loops stay fast


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
        stored_maps = set(f["maps"]) if "maps" in f else set()
        # methods that need the model, whose N×h×w maps the capture stored (read "map:<name>")
        self.model_maps: list[str] = [m for m in self.attrs.get("map_methods") or []
                                      if m in stored_maps]
        self.classes: list[str] = list(self.attrs.get("classes") or [])
        # what /target indexes when the target is no class of the model (similarity to an
        # image, text prompts: vitscope.capture.objective); None: /target holds classes
        self.target_names: list[str] | None = list(self.attrs.get("target_names") or []) or None
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
        """The dataset of a hook point (or `grad:<hook>`), read lazily; every read is checked
        for NaN and infinity (vitscope.dump.finite: DumpError naming the images)."""
        if is_map(hook):
            name = hook[len(MAP_PREFIX):]
            if name not in self.model_maps:
                raise DumpError(f"'{self.path}' holds no maps of '{name}'; it holds maps of: "
                                f"{', '.join(self.model_maps) or 'none'} (capture them with "
                                f"`vitscope dump --hooks 'map:{name}'`).")
            return self._checked(self._f["maps"][name], hook)
        if is_grad(hook):
            name = hook[len(GRAD_PREFIX):]
            if name not in self.grad_hooks:
                raise DumpError(f"'{self.path}' holds no gradient of '{name}'; it holds gradients "
                                f"of: {summarize_names(self.grad_hooks) or 'none'} (capture them "
                                f"with `vitscope dump --hooks 'grad:{name}' --target ...`).")
            return self._checked(self._f["grads"][name], hook)
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
        return self._checked(self._f["acts"][hook], hook)

    def _checked(self, dataset: h5py.Dataset, hook: str) -> h5py.Dataset:
        from vitscope.dump.finite import CheckedDataset, describe_images
        return CheckedDataset(dataset, hook, self.path,
                              lambda rows: describe_images(self.paths, len(self))(rows))

    def __contains__(self, hook: str) -> bool:
        if is_map(hook):
            return hook[len(MAP_PREFIX):] in self.model_maps
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
            source = self._checked(self._f["acts"][spec["source"]], spec["source"])
            if len(source.shape) < 2 or any(
                    params[k].shape != source.shape[-1:] for k in ("weight", "bias") if k in params):
                raise ValueError(f"parameters do not fit the source's shape {source.shape}")
            return DerivedDataset(hook, source, params, attrs)
        except (KeyError, ValueError, TypeError) as e:
            raise DumpError(f"'{self.path}' is a damaged dump: the derived hook point '{hook}' "
                            f"cannot be computed ({type(e).__name__}: {str(e)[:120]}); re-create "
                            f"it with `vitscope dump` (--no-derive stores every hook point as "
                            f"captured).") from None

    @property
    def readout(self) -> dict[str, np.ndarray]:
        """The model's read-out weights stored with the dump (vitscope.model.readout's keys:
        `norm.weight`, `head.weight`, `blocks.{i}.attn.proj.weight`, `blocks.{i}.ls1`, ...),
        float32; {} for a dump made without them."""
        if "_readout" not in self.__dict__:
            ds = self._f.get("readout")
            out: dict[str, np.ndarray] = {}
            if isinstance(ds, h5py.Dataset):     # packed by DumpWriter.set_readout
                try:
                    flat = np.asarray(ds[()], np.float32).ravel()
                    for key, (offset, shape) in json.loads(ds.attrs["index"]).items():
                        size = int(np.prod(shape, dtype=np.int64))
                        if offset < 0 or offset + size > flat.size:
                            raise ValueError(f"{key} lies outside the packed weights")
                        out[key] = flat[offset:offset + size].reshape(shape)
                except (KeyError, ValueError, TypeError) as e:
                    raise DumpError(f"'{self.path}' is a damaged dump: its read-out weights "
                                    f"cannot be read ({type(e).__name__}: {str(e)[:120]}); "
                                    f"re-create it with `vitscope dump`.") from None
            self._readout = out
        return self._readout

    def match(self, pattern: str) -> list[str]:
        """Captured hook names matching a glob, in numeric layer order; [] if none. A
        `grad:` pattern matches the captured gradients and returns `grad:`-prefixed names."""
        if is_grad(pattern):
            found = match_names(pattern[len(GRAD_PREFIX):], self.grad_hooks)
            return [GRAD_PREFIX + n for n in sorted(found, key=self._order)]
        if is_map(pattern):
            return [MAP_PREFIX + n for n in match_names(pattern[len(MAP_PREFIX):],
                                                        self.model_maps)]
        return sorted(match_names(pattern, self.readable), key=self._order)

    @property
    def names(self) -> list[str]:
        """Everything a plugin's `requires` can ask of this dump: the hooks, then `grad:<hook>`
        for each captured gradient."""
        return (self.readable + [GRAD_PREFIX + h for h in self.grad_hooks]
                + [MAP_PREFIX + m for m in self.model_maps])

    @property
    def model_names(self) -> list[str]:
        """Every name the model offers (hook points, and `grad:` of each): what `requires`
        patterns are resolved against."""
        model = list(self.attrs.get("model_hooks") or self.hooks)
        return (self._with_slices(model) + [GRAD_PREFIX + h for h in model]
                + [MAP_PREFIX + m for m in self.model_maps])

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
        # stored as the names' bytes (a Linux name need not be UTF-8): read back unchanged
        return [str(p) for p in self._f["paths"].asstr(errors="surrogateescape")[:]]

    @cached_property
    def file_names(self) -> list[str] | None:
        """The file name of each image ("cat_0001.jpg"), else None."""
        return None if self.paths is None else [Path(p).name for p in self.paths]

    @cached_property
    def indices(self) -> np.ndarray:
        """Index of each image in its split."""
        return np.asarray(self._f["indices"][:], dtype=np.int64)

    @property
    def grad_dtype(self) -> str:
        """How the gradients are stored: "float32" (the default since gradients got their own
        type), or the activations' type for dumps made before."""
        return str(self.attrs.get("grad_dtype", self.attrs.get("dtype", "float16")))

    def grad_precision(self) -> dict[str, Any] | None:
        """What storing the gradients lost, as shares of their non-zero values: `underflow`
        (flushed to zero in the stored type), `overflow`, `fp16_underflow` (what float16 would
        flush), `nonzero` (how many); None where the capture did not count (older dumps)."""
        a = self.attrs
        if "grad_nonzero" not in a:
            return None
        nz = int(a["grad_nonzero"])
        share = (lambda k: int(a.get(k, 0)) / nz if nz else 0.0)
        return {"nonzero": nz, "underflow": share("grad_underflow"),
                "overflow": share("grad_overflow"), "fp16_underflow": share("grad_fp16_underflow")}

    def map_options(self, name: str) -> dict[str, Any] | None:
        """The options the stored maps of `name` were made with (every option its method
        read); None for dumps made before they were recorded (defaults of that version)."""
        recorded = self.attrs.get("map_options")
        if not isinstance(recorded, dict) or not isinstance(recorded.get(name), dict):
            return None
        return dict(recorded[name])

    def map_options_agree(self, name: str, wanted: dict[str, Any]) -> bool:
        """Whether `name`'s stored maps were made with every option value in `wanted` (options
        not named are not compared: the caller leaves out those that only set speed)."""
        recorded = self.map_options(name)
        if recorded is None:
            return not wanted
        missing = object()
        return all(recorded.get(k, missing) == v for k, v in wanted.items())

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
        """Predicted class per image; -1 for a feature model's dump (its /logits are features,
        or the scores of a similarity or text target); zero-shot logits give their classes."""
        if self.attrs.get("outputs") in ("features", "scores"):   # no class head: none
            return np.full(len(self), -1, dtype=np.int64)
        step = 1 << 16
        return np.concatenate([self.logits[i:i + step].argmax(1) for i in range(0, len(self), step)]
                              or [np.zeros(0, np.int64)]).astype(np.int64)

    def covers(self, hooks: Iterable[str] | str, n: int, *, checkpoint_sha256: str | None = None,
               data: str | None = None, split: str | None = None,
               data_sha256: str | None = None, seed: int | None = None,
               target: str | int | None = None, dtype: str | None = None,
               grad_dtype: str | None = None,
               map_options: dict[str, dict[str, Any]] | None = None) -> bool:
        """Whether this dump serves a request: every hook point the names/patterns select in
        the model is captured (`grad:` ones as gradients), it holds the first n images (or the
        whole split) of its order, and the checkpoint hash, dataset spec, split and data
        fingerprint (ImageDataset.fingerprint) agree where given. With `seed`, its first n
        images must be the first n of that seeded shuffle (an `--in-order` dump's first images
        may all be of one class), unless n takes every image of the split anyway. Gradients
        serve only a request for the same `target` (default "pred"); an "explicit" one never;
        with `dtype` / `grad_dtype`, only when activations / gradients are stored in that type
        (a score in float16 measures float16, not a float32 dump found in the cache).
        Stored maps (`map:<method>`) serve only the same target, and, for each method in
        `map_options` ({method: {option: value}}), only when they were made with those values
        (`map_options_agree`)."""
        a = self.attrs
        patterns, maps = split_maps([hooks] if isinstance(hooks, str) else list(hooks))
        act_patterns, grad_patterns = split_grads(patterns)
        wanted = str(target if target is not None else "pred").strip()
        if ":" not in wanted:   # pred, label, an index; a similarity path or prompt as given
            wanted = wanted.lower()
        if maps and (not set(maps) <= set(self.model_maps) or self.target_spec == "explicit"
                     or self.target_spec != wanted):
            return False     # maps explain the target, as gradients do
        if maps and not all(self.map_options_agree(m, (map_options or {}).get(m, {}))
                            for m in maps):
            return False     # another step count or window is another map
        if dtype is not None and a.get("dtype", "float16") != dtype:
            return False
        if grad_patterns and grad_dtype is not None and self.grad_dtype != grad_dtype:
            return False
        if grad_patterns and (self.target_spec == "explicit" or self.target_spec != wanted):
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
                inner = optional_of(pattern)     # optional: only what the model has
                wanted = match_names(pattern if inner is None else inner, model_hooks)
                if (not wanted and inner is None) or not have.issuperset(wanted):
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


