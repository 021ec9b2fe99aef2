"""Stream a dataset through a ViT into an activation dump (vitscope.dump), batch by batch.

    path = capture(model, load_dataset("shapes", "val", 32), "outputs/dumps/x.h5", ckpt=ckpt)
    path, reused = ensure_dump("runs/shapes/best.pt", n=64)     # what `vitscope analyze` uses

Why it is shaped this way:
- Only the hook points asked for get a hook, so attention takes its explicit (B×H×T×T) branch
  only in blocks whose `attn.weights` is captured; everything else stays on fused SDPA.
- Activations are cast to the dump dtype on the device (half the transfer for fp16) and
  handed to a background writer thread through a bounded queue: the model never waits on
  HDF5 compression or the disk, and memory holds at most a few batches whatever N is.
- Compression "auto" (the default) is chosen by measured throughput: the first batch's pass
  through the model is timed, and the writer (vitscope.dump.DumpWriter) compresses with lzf
  only the datasets whose measured lzf cost fits in a share of it (AUTO_SHARE: on a CPU the
  writer thread takes its cycles from the model; on an accelerator it runs beside it). On
  the 2-core VM lzf on every attention map of a 224-px ViT-S cost more than the forward
  could spare (benchmarks/capture_attention_224.py); `cls` and logits still compress.
- Two hook points that receive the very same tensor (`blocks.i.out` is `blocks.{i+1}.norm1.in`)
  are stored once and hard-linked, which saves a sixth of the default set.
- The file is written as OUT.h5.<host>-<pid>-<random>.partial (unique, so two captures to
  one OUT never share it) and renamed on success; Ctrl-C, SIGTERM or an exception deletes
  the partial file, and an existing OUT.h5, even one another process finished meanwhile,
  is replaced only with force (vitscope._internal.folders.publish).
- Gradients (`grad:<pattern>` among the hooks, e.g. `grad:blocks.*.attn.weights`): the forward
  pass runs with autograd only then, and one backward pass per batch gives d logit[target] /
  d <hook output> for every image at once (images are independent in eval mode, so the
  gradient of the summed target logits is each image's own). The hook hands the model a
  fresh view of its activation, so the gradient is the one flowing through that hook point
  only (`blocks.i.norm1.in` gets the LayerNorm branch, `blocks.{i-1}.out` the whole residual
  stream), on any hooked model. Without gradients the pass stays under inference_mode.
  The class explained per image (`target`: "pred", "label", a class index, or an array per
  split position) is stored in /target for every dump.
- Images must already have the model's size (a clear DumpError otherwise): resizing silently
  would change what the model saw. `load_dataset(..., image_size=cfg.image_size)` resizes
  once, at load time; the CLI and ensure_dump always ask for the checkpoint's size.
"""
from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitscope._internal.files import (file_sha256, is_write_failure, partial_path, publish,
                                      write_failure)
from vitscope._internal.folders import make_output_dir, remove_empty
from vitscope._internal.signals import terminate_as_exception as _terminate_as_exception
from vitscope._internal.memory import reuse_large_blocks
from vitscope.capture.memory import QUEUE_BATCHES, auto_batch_size
from vitscope.capture.objective import Objective, is_class_target, reference_loader
from vitscope.capture.target import _check_target, num_classes, parse_target
from vitscope.dump import DumpWriter
from vitscope.errors import DumpError, WriteError
from vitscope.model.readout import readout_parameters
from vitscope.model.hooks import attach, hook_points, is_hooked, offered_names, resolve
from vitscope.names import SLICES, resolve_names, slice_of, split_grads, split_maps

DEFAULT_HOOKS: tuple[str, ...] = (
    "patch_embed.out",
    "blocks.*.norm1.in", "blocks.*.norm1.out",
    "blocks.*.attn.weights", "blocks.*.attn.out",
    "blocks.*.norm2.in", "blocks.*.norm2.out",
    "blocks.*.out",
    "norm.out",
    "cls",
)
DTYPES = {"float16": torch.float16, "float32": torch.float32}
COMPRESSIONS = ("auto", "lzf", "gzip", "none")
# "auto": the share of the first batch's model time that compressing a batch may cost: where
# the writer thread shares the CPU with the model, every second it compresses is one the
# model loses; beside an accelerator it overlaps the model, so most of the time is free.
AUTO_SHARE = {"cpu": 0.02, "accelerator": 0.5}
FP16_UNDERFLOW_WARN = 0.01          # warn when this share of non-zero gradients flush to 0 in fp16


@dataclass
class CaptureRequest:
    """What a capture is asked for, besides the model, the data set and the file: the one
    object `vitscope dump`, `analyze`, `score` and the Python API build and hand down."""
    hooks: str | Iterable[str] = DEFAULT_HOOKS   # names or globs; "grad:<glob>" for gradients
    ckpt: Any = None                # a Checkpoint: path, SHA-256, classes and normalisation
    normalize: tuple | None = None  # (mean, std) without a checkpoint (default 0.5 each)
    classes: list[str] | None = None  # the model's class names without a checkpoint
    limit: int | None = None        # the first `limit` images of the shuffled split
    batch_size: int | None = None   # None: the largest batch within BATCH_MEMORY (auto)
    dtype: str = "float16"          # how activations are stored
    grad_dtype: str = "float32"     # how gradients are stored: small gradients flush to zero
                                    # in float16 (a layer-scale ViT lost 96% of them)
    compression: str | None = "auto"   # auto: lzf where it pays and the pace allows (above)
    shard: tuple[int, int] | str | None = None   # (i, n) or "i/n": the i-th of n ranges
    force: bool = False             # replace an existing file
    device: str | torch.device | None = None     # None: where the model is
    progress: bool = False          # a progress bar on stderr
    seed: int | None = 0            # image order: a seeded shuffle; None keeps the split's
    target: str | int | np.ndarray = "pred"      # the class gradients differentiate
    derive: bool = True             # store LayerNorm outputs as their norm's parameters
    # options of the `map:<method>` hooks, {method: {key: value}} over the method's defaults
    # (`--opt integrated-gradients.steps=16`); recorded in the dump beside /maps/<method>
    map_options: dict[str, dict[str, Any]] | None = None

    def check(self, model, dataset, out: Path) -> tuple[list[str], list[str]]:
        """One sentence (DumpError) for anything wrong before work starts; returns the
        (activation names, gradient names) the hooks resolve to on `model`."""
        if not is_hooked(model):
            raise DumpError(f"A {type(model).__name__} has no hook points to capture; dumps "
                            f"are made from ViT checkpoints.")
        check_limit(self.limit)
        seed, batch = self.seed, self.batch_size
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not 0 <= seed < 2 ** 63):
            raise DumpError(f"The image-order seed must be an integer from 0 to 2**63 - 1 (or "
                            f"None for the split's own order), got {seed!r}.")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                                  or batch < 1):
            raise DumpError(f"--batch-size must be a positive integer, got {batch!r}.")
        for what, value in (("dump", self.dtype), ("gradient", self.grad_dtype)):
            if value not in DTYPES:
                raise DumpError(f"Unknown {what} dtype '{value}'; use one of "
                                f"{', '.join(DTYPES)}.")
        if self.compression not in (*COMPRESSIONS, None):
            raise DumpError(f"Unknown compression '{self.compression}'; use one of "
                            f"{', '.join(COMPRESSIONS)}.")
        if out.is_dir():
            raise DumpError(f"'{out}' is a directory; give -o a file name such as "
                            f"{out / 'dump.h5'}.")
        if out.exists() and not self.force:
            raise DumpError(f"'{out}' already exists; pass --force to overwrite it or choose "
                            f"another path with -o.")
        if len(dataset) == 0:
            raise DumpError(f"Dataset '{dataset.spec}' ({dataset.split}) has no images to dump.")
        _, mh, mw = model.input_shape
        if tuple(dataset.images.shape[1:3]) != (mh, mw):
            h, w = dataset.images.shape[1:3]
            raise DumpError(f"Dataset '{dataset.spec}' has {h}×{w} images but the model "
                            f"expects {mh}×{mw}; load it at the model's size (load_dataset(..., "
                            f"image_size={mh}), which `vitscope dump` does for you).")
        return resolve_request(model, self.hooks)


@dataclass
class _Stream:
    """A checked request resolved against the model and data: what `_stream` runs."""
    names: list[str]                # activations to store, in forward order
    grads: list[str]                # gradients to store
    positions: np.ndarray           # split positions, in capture order
    labels: np.ndarray              # the split's labels as model class indices
    remapped: bool                  # labels were mapped to the model's classes by name
    mean: list[float]
    std: list[float]
    batch_size: int
    dtype: torch.dtype
    grad_dtype: torch.dtype
    target: str | int | np.ndarray
    norms: dict[str, tuple[str, torch.nn.LayerNorm]]
    device: torch.device
    progress: bool
    desc: str
    map_methods: list = dataclasses.field(default_factory=list)   # `map:` (method, options)


def capture(model: torch.nn.Module, dataset, out_path: str | Path,
            hooks: str | Iterable[str] | None = None, request: CaptureRequest | None = None,
            **options: Any) -> Path:
    """Run `dataset` (an ImageDataset) through `model` and write the dump `out_path`.

    What is captured is a CaptureRequest: `request`, with `hooks` and any of its fields given
    as keywords (`capture(model, ds, out, ["cls"], limit=16, target="label")`) taking
    precedence. Images go in a seeded shuffle of the split (`seed`; None keeps the split's
    order) so any prefix is a mixed sample; `limit` keeps the first images of that order and
    `shard=(i, n)` (or "i/n") writes the i-th of n contiguous ranges of it. `ckpt` (a
    Checkpoint) supplies path, SHA-256, classes and normalisation; without it they come from
    `model.cfg`, `classes` and `normalize` ((mean, std), default 0.5 each) and the hash stays
    empty. The model is moved to `device` (None: where it is) and put back in its train/eval
    mode afterwards. `target` is the class whose logit gradients differentiate and /target
    records: "pred" (the model's prediction), "label", a class index, or an int array over the
    split's positions (stored as "explicit"). `batch_size` None picks the largest batch of at
    most DEFAULT_BATCH images whose capture stays within BATCH_MEMORY (`auto_batch_size`). With
    `derive`, a LayerNorm output whose input is stored too is kept as the norm's parameters
    and computed on read (vitscope.dump.derive: about 29% of the default hooks' bytes), where
    the first batch shows that this reproduces it. Returns the path of the finished dump.
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(CaptureRequest)}
    if unknown:
        raise TypeError(f"capture() got unexpected options {', '.join(sorted(unknown))}")
    if hooks is not None:
        options["hooks"] = hooks
    req = dataclasses.replace(request or CaptureRequest(), **options)
    out = Path(out_path)
    names, grads = req.check(model, dataset, out)
    map_methods = _map_methods(req.hooks, req.map_options)
    batch_size = req.batch_size or auto_batch_size(model, names, grads, req.dtype)
    order = image_order(len(dataset), req.seed)[:req.limit]
    index, count = parse_shard(req.shard) if req.shard is not None else (0, 1)
    start, stop = shard_range(len(order), index, count)
    positions = order[start:stop]
    if len(positions) == 0:
        raise DumpError(f"Shard {index}/{count} of {len(order)} images is empty; use at most "
                        f"{len(order)} shards.")
    mean, std = _normalisation(req.ckpt, req.normalize)
    attrs = _root_attrs(model, dataset, req, names, mean, std, len(order),
                        (index, count, start, stop) if req.shard else None)
    labels, remapped = _labels_for(dataset, attrs["classes"])
    dev = torch.device(req.device) if req.device is not None else \
        next(model.parameters()).device
    if num_classes(model) == 0 and not grads and is_class_target(req.target):
        spec = None     # a feature model's capture without gradients explains nothing
    else:
        spec = parse_target(req.target, num_classes(model))
    if isinstance(spec, Objective):
        model.to(dev).eval()
        if not spec.prepared:   # the API hands one prepared with its own preprocessing
            spec.prepare(model, reference_loader(model, req.ckpt, mean, std, dev),
                         attrs["classes"] or attrs["dataset_classes"])
        attrs.update(target=spec.spec, target_names=spec.names, outputs=spec.outputs)
        if spec.kind == "text-classes":   # the zero-shot classes are the model's classes now
            attrs["classes"] = spec.names
            labels, remapped = _labels_for(dataset, spec.names)
    else:
        _check_target(spec, labels[positions] if not isinstance(spec, np.ndarray) else None,
                      spec[positions] if isinstance(spec, np.ndarray) else None, dataset)
        attrs["target"] = "explicit" if isinstance(spec, np.ndarray) else \
            "none" if spec is None else str(spec)
    attrs["grad_hooks"] = grads
    attrs["map_methods"] = [m.name for m, _ in map_methods]
    if map_methods:   # every option each method ran with, its defaults included
        attrs["map_options"] = {m.name: options for m, options in map_methods}
    plan = _Stream(names, grads, positions, labels, remapped, mean, std, batch_size,
                   DTYPES[req.dtype], DTYPES[req.grad_dtype], spec, _norm_outputs(model, names) if req.derive else {},
                   dev, req.progress, out.name, map_methods)
    created = make_output_dir(out.parent, DumpError, "choose another path with -o")
    partial = partial_path(out)      # unique: two captures to one OUT never collide
    was_training = model.training
    writer = None
    try:
        model.to(dev).eval()
        writer = BackgroundWriter(DumpWriter(partial, len(positions), attrs,
                                             batch_size=batch_size,
                                             compression=req.compression,
                                             readout=readout_parameters(model)))
        applied = spec.applied(model) if isinstance(spec, Objective) else \
            contextlib.nullcontext()
        with _terminate_as_exception(), applied, reuse_large_blocks():
            precision = _stream(model, dataset, plan, writer)
            writer.finish(precision.attrs() if grads else {})
            publish(partial, out, force=req.force, error=DumpError,
                    hint="pass --force to overwrite it or choose another path with -o")
    except BaseException as e:
        if writer is not None:
            writer.abort()
        partial.unlink(missing_ok=True)
        remove_empty(created)
        failed = writer.writer.file.error if writer is not None else None
        if failed is not None or (isinstance(e, OSError) and is_write_failure(e)):
            raise write_failure(out, failed or e).with_hint(
                "the partial file was removed and nothing else changed; free some space or "
                "choose another path with -o") from None
        raise
    finally:
        model.train(was_training)
    return out


def _map_methods(hooks, given: dict[str, dict[str, Any]] | None = None) -> list:
    """(method, the options it runs with) for each `map:<method>` entry of a request
    (vitscope.capture.model_maps); `given` options of a method not asked for are refused."""
    from vitscope.capture.model_maps import check_model_maps, map_options
    methods = check_model_maps(split_maps([hooks] if isinstance(hooks, str) else list(hooks))[1])
    stray = sorted(set(given or {}) - {m.name for m in methods})
    if stray:
        raise DumpError(f"Options are given for map:{stray[0]}, which the capture does not ask "
                        f"for; add map:{stray[0]} to the hooks or drop its options.")
    return [(m, map_options(m, (given or {}).get(m.name))) for m in methods]


def resolve_request(model, hooks: str | Iterable[str]) -> tuple[list[str], list[str]]:
    """Hook names/patterns, some `grad:`-prefixed -> (activation names, gradient names), each
    in forward order; HookError for a pattern that matches nothing. `map:` entries (maps of
    methods that need the model) are not hook points and are left to `capture`."""
    hooks = split_maps([hooks] if isinstance(hooks, str) else list(hooks))[0]
    acts, grads = split_grads(hooks)
    names = resolve_names(offered_names(model, grads=False), acts)
    # a CLS slice of an attention that is stored whole is read from it (vitscope.dump)
    names = [n for n in names if slice_of(n) is None or slice_of(n)[0] not in names]
    return names, resolve(model, grads)


def image_order(n: int, seed: int | None) -> np.ndarray:
    """Positions in the split in capture order: a seeded shuffle, or 0..n-1 for seed None."""
    if seed is None:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


def parse_shard(shard: tuple[int, int] | str) -> tuple[int, int]:
    """`"1/4"` or `(1, 4)` -> (1, 4); DumpError unless 0 <= i < n."""
    try:
        i, n = (int(s) for s in shard.split("/")) if isinstance(shard, str) else map(int, shard)
    except (ValueError, TypeError):
        raise DumpError(f"--shard must look like i/n (e.g. 0/4 for the first of four shards), "
                        f"got {shard!r}.") from None
    if not (n >= 1 and 0 <= i < n):
        raise DumpError(f"--shard {i}/{n} is out of range; i counts from 0 to n-1 (e.g. 0/4 .. 3/4).")
    return i, n


def shard_range(total: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous [start, stop) of shard `index` of `count` over `total` ordered images."""
    return total * index // count, total * (index + 1) // count


def _normalisation(ckpt, normalize) -> tuple[list[float], list[float]]:
    from vitscope.data import DEFAULT_MEAN, DEFAULT_STD, normalization
    if ckpt is not None:
        return normalization(ckpt)
    if normalize is None:
        return list(DEFAULT_MEAN), list(DEFAULT_STD)
    mean, std = normalize
    return [float(x) for x in mean], [float(x) for x in std]


def _root_attrs(model, dataset, req: CaptureRequest, names, mean, std, total,
                shard) -> dict[str, Any]:
    cfg, ckpt, classes, seed = model.cfg, req.ckpt, req.classes, req.seed
    model_classes = list(ckpt.classes) if ckpt is not None and ckpt.classes else \
        list(classes if classes is not None else dataset.classes)
    attrs = {
        "arch": getattr(ckpt, "arch", "vit"),
        # an adapter's config may hold more than a dump should carry (a tokenizer's files)
        "model_config": cfg.dump_dict() if hasattr(cfg, "dump_dict") else cfg.to_dict(),
        "checkpoint_path": str(ckpt.path) if ckpt is not None else "",
        "checkpoint_sha256": file_sha256(ckpt.path) if ckpt is not None else "",
        "classes": model_classes,
        "dataset_classes": list(dataset.classes),
        "dataset": dataset.spec,
        "data_sha256": dataset.fingerprint(),
        "split": dataset.split,
        "split_size": len(dataset),
        "seed": -1 if seed is None else int(seed),
        "order": "split" if seed is None else "shuffle",
        "num_images": total if shard is None else shard[3] - shard[2],
        "normalize": {"mean": mean, "std": std},
        "token_layout": model.token_layout.to_dict(),
        # a feature model (no classifier head) stores its pooled features under /logits
        "outputs": "features" if getattr(cfg, "num_classes", 1) == 0 else "logits",
        "hooks": names,
        "model_hooks": list(hook_points(model)),
        "dtype": req.dtype,
        "grad_dtype": req.grad_dtype,
        "compression": req.compression or "none",
    }
    if shard is not None:
        i, n, start, stop = shard
        attrs["shard"] = {"index": i, "count": n, "start": start, "stop": stop, "total": total}
    return attrs


def _labels_for(dataset, model_classes: list[str]) -> tuple[np.ndarray, bool]:
    """Dataset labels as indices into the model's classes (by name when the two lists differ,
    -1 for a class the model lacks), and whether they had to be remapped."""
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if not dataset.classes or list(dataset.classes) == list(model_classes) or not model_classes:
        return labels, False
    lookup = np.array([model_classes.index(c) if c in model_classes else -1
                       for c in dataset.classes] + [-1], dtype=np.int64)
    return lookup[np.where(labels >= 0, labels, len(dataset.classes))], True


class BackgroundWriter:
    """A thread that owns the DumpWriter and takes batches through a bounded queue."""

    def __init__(self, writer: DumpWriter) -> None:
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="vitscope-dump-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None or self._stop.is_set():
                return
            try:
                start, arrays, tensors, event, links = item
                if event is not None:
                    event.synchronize()  # the device-to-host copies were issued asynchronously
                arrays.update({k: t.numpy() for k, t in tensors.items()})
                self.writer.write(start, arrays)
                if links is not None:   # after the first batch: what is stored only once
                    aliases, derived = links
                    self.writer.set_aliases(aliases)
                    if derived:
                        self.writer.set_derived(derived)
            except BaseException as e:  # reported to the capture loop, which stops
                self.error = e
                return

    def put(self, item) -> None:
        while True:
            self._raise_if_failed()
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        if isinstance(self.error, WriteError):  # capture() names the output and cleans up
            raise self.error
        if self.error is not None:
            raise DumpError(f"Writing '{self.writer.path}' failed ({type(self.error).__name__}: "
                            f"{self.error}); check free disk space and write permission.") \
                from self.error

    def finish(self, attrs: dict[str, Any] | None = None) -> None:
        """Write what is queued, then `attrs` (known only at the end) and finish the file."""
        self.put(None)
        self.thread.join()
        self._raise_if_failed()
        for key, value in (attrs or {}).items():   # the thread is done: this one owns the file
            self.writer.f.attrs[key] = value
        self.writer.finish()

    def abort(self) -> None:
        """Stop the thread without writing the rest, and close the file."""
        self._stop.set()
        while self.thread.is_alive():
            try:
                self.queue.put(None, timeout=0.1)
            except queue.Full:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    pass
            self.thread.join(timeout=0.1)
        self.writer.close()


def _stream(model, dataset, plan: _Stream, writer: BackgroundWriter) -> "GradPrecision":
    from tqdm import tqdm

    from vitscope.data import to_model_input

    labels, remapped, positions, names, grads = (plan.labels, plan.remapped, plan.positions,
                                                 plan.names, plan.grads)
    dev, mean, std, batch_size, torch_dtype = (plan.device, plan.mean, plan.std,
                                               plan.batch_size, plan.dtype)
    progress, desc, target, norms = plan.progress, plan.desc, plan.target, plan.norms
    acts: dict[str, torch.Tensor] = {}
    grad_in: dict[str, torch.Tensor] = {}   # the views handed on by gradient hook points
    act_set, grad_set = set(names), set(grads)
    # CLS slices (vitscope.names.SLICES): read at their attention, stored as a row or column
    slices: dict[str, list[tuple[str, int]]] = {}
    for n in names:
        if slice_of(n) is not None:
            source, suffix = slice_of(n)
            slices.setdefault(source, []).append((n, SLICES[suffix]))
    cls = model.token_layout.cls_index
    norms = norms or {}                        # LayerNorm outputs asked for: (input, module)
    probe_set = {i for i, _ in norms.values()} - act_set   # their inputs, seen, not stored
    aliases: dict[str, str] | None = None
    derived: dict[str, dict] = {}
    cuda = dev.type == "cuda"
    precision = GradPrecision(plan.grad_dtype)

    def grab(t: torch.Tensor, name: str) -> torch.Tensor | None:
        if name in act_set or name in probe_set:
            acts[name] = t.detach()
        for part, axis in slices.get(name, ()):   # a copy: the full matrix need not stay
            acts[part] = t.detach().select(axis, cls).contiguous()
        if name in grad_set:   # a fresh view: its gradient is what flows through this point
            grad_in[name] = view = t.view_as(t)
            return view
        return None

    auto = writer.writer.compression == "auto"
    # "auto" weighs the writer's CPU seconds against the model's: on a CPU the model's own CPU
    # time (the writer is idle during the first batch; a busy neighbour does not inflate it),
    # beside an accelerator the wall clock of the pass
    clock = time.process_time if dev.type == "cpu" else time.perf_counter
    bar = tqdm(total=len(positions), unit="img", desc=desc, dynamic_ncols=True,
               disable=None if progress else True)  # None: only on a terminal
    # Autograd only when gradients are asked for: plain captures keep inference_mode's speed.
    mode = torch.enable_grad() if grads else torch.inference_mode()
    points = [n for n in names if slice_of(n) is None] + [s for s in slices if s not in act_set]
    with attach(model, {n: grab for n in [*points, *grads, *sorted(probe_set)]}), mode, bar:
        for b0 in range(0, len(positions), batch_size):
            pos = positions[b0:b0 + batch_size]
            started = clock()
            images = np.ascontiguousarray(dataset.images[pos])
            u8 = torch.from_numpy(images)
            if cuda:
                u8 = u8.pin_memory().to(dev, non_blocking=True)
            acts.clear()
            grad_in.clear()
            x = (to_model_input(u8.to(dev), mean, std) if dataset.inputs is None else
                 torch.as_tensor(np.asarray(dataset.inputs[pos]), dtype=torch.float32).to(dev))
            if grads:
                x.requires_grad_(True)   # every hook output joins the graph, frozen weights or not
            logits = model(x)
            tgt = _batch_target(target, logits, labels, pos)
            tensors: dict[str, torch.Tensor] = {}
            if grads:
                raw = _target_grads(logits, tgt, grad_in, grads)
                precision.count(raw)
                tensors.update({f"grads/{n}": g.to(plan.grad_dtype) for n, g in zip(grads, raw)})
                del raw
                grad_in.clear()   # frees this batch's graph before the next forward
            logits = logits.detach()
            first = aliases is None
            if first:
                aliases = _same_tensors(acts, names)
                derived = _derivations(acts, names, aliases, norms, torch_dtype)
            tensors.update({f"acts/{n}": acts[n].to(torch_dtype) for n in names
                            if n not in aliases and n not in derived})
            tensors["logits"] = logits.float()
            tensors = {k: v.to("cpu", non_blocking=cuda) for k, v in tensors.items()}
            event = None
            if cuda:
                event = torch.cuda.Event()
                event.record()
            for method, options in plan.map_methods:   # methods that need the model
                tensors[f"maps/{method.name}"] = torch.from_numpy(
                    _run_model_map(method, model, x, tgt, model.token_layout, options))
            arrays = {"images": images, "labels": labels[pos], "indices": pos,
                      "target": tgt.cpu().numpy()}
            if dataset.paths is not None:   # the file of each image, for captions and hovers
                arrays["paths"] = np.array([str(dataset.paths[i]) for i in pos], dtype=object)
            if remapped:
                arrays["dataset_labels"] = np.asarray(dataset.labels, dtype=np.int64)[pos]
            if dataset.masks is not None:
                arrays["masks"] = np.asarray(dataset.masks[pos], dtype=np.uint8)
            links = (aliases, derived) if first else None
            if first and auto:   # the pace "auto" compression must keep up with
                if cuda:
                    torch.cuda.synchronize(dev)
                share = AUTO_SHARE["cpu" if dev.type == "cpu" else "accelerator"]
                writer.writer.compress_budget = share * (clock() - started)
            writer.put((b0, arrays, tensors, event, links))
            bar.update(len(pos))
            if progress:
                bar.set_postfix_str(f"{writer.writer.bytes_in / 1e6:,.1f} MB written", refresh=False)
    precision.warn()
    return precision


def _run_model_map(method, model, x, tgt, layout, options) -> np.ndarray:
    from vitscope.capture.model_maps import run_model_map
    return run_model_map(method, model, x, tgt, layout, options)


def _batch_target(target, logits: torch.Tensor, labels: np.ndarray,
                  pos: np.ndarray) -> torch.Tensor:
    """The class (or score of an Objective) explained for each image of a batch (B int64 on
    the logits' device); -1 each for a feature model's capture without a target."""
    if target is None:
        return torch.full((len(pos),), -1, dtype=torch.long, device=logits.device)
    if isinstance(target, Objective):
        return target.choose(logits)
    if isinstance(target, np.ndarray):
        values = target[pos]
    elif target == "pred":
        return logits.detach().argmax(dim=1)
    elif target == "label":
        values = labels[pos]
    else:
        values = np.full(len(pos), int(target), dtype=np.int64)
    return torch.as_tensor(values, dtype=torch.long, device=logits.device)


def _target_grads(logits: torch.Tensor, target: torch.Tensor, grad_in: dict[str, torch.Tensor],
                  grads: list[str]) -> list[torch.Tensor]:
    """d logit[target] / d each hooked view, for the whole batch in one backward pass."""
    missing = [n for n in grads if n not in grad_in]
    if missing:
        raise DumpError(f"Hook point '{missing[0]}' produced nothing during the forward pass; "
                        f"this model does not run it, so it has no gradient.")
    chosen = logits.gather(1, target[:, None]).sum()
    out = torch.autograd.grad(chosen, [grad_in[n] for n in grads], allow_unused=True)
    # a point the target logit does not depend on at all has a zero gradient
    return [torch.zeros_like(grad_in[n]) if g is None else g.detach()
            for n, g in zip(grads, out)]


class GradPrecision:
    """What storing the gradients in `dtype` lost, counted over every batch against the float32
    gradients autograd computed: non-zero values, those that flush to zero (underflow) or become
    infinite (overflow) in `dtype`, and those float16 would flush (whatever `dtype` is, so a
    float32 dump says what float16 would have cost). Recorded in the dump's root attributes."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.nonzero = self.underflow = self.overflow = self.fp16_underflow = 0

    def count(self, raw: list[torch.Tensor]) -> None:
        for g in raw:
            nz = g != 0
            g16 = g.to(torch.float16)
            stored = g16 if self.dtype == torch.float16 else g.to(self.dtype)
            self.nonzero += int(nz.sum())
            self.fp16_underflow += int((nz & (g16 == 0)).sum())
            self.underflow += int((nz & (stored == 0)).sum())
            self.overflow += int((torch.isinf(stored) & torch.isfinite(g)).sum())

    @property
    def lost_fraction(self) -> float:
        return (self.underflow + self.overflow) / self.nonzero if self.nonzero else 0.0

    def attrs(self) -> dict[str, int]:
        return {"grad_nonzero": self.nonzero, "grad_underflow": self.underflow,
                "grad_overflow": self.overflow, "grad_fp16_underflow": self.fp16_underflow}

    def warn(self) -> None:
        """Warn when the stored gradients lost more than FP16_UNDERFLOW_WARN of the non-zero
        values (or any to overflow)."""
        if self.overflow or self.lost_fraction > FP16_UNDERFLOW_WARN:
            warnings.warn(f"{str(self.dtype).removeprefix('torch.')} loses gradients of this "
                          f"model: {self.underflow} of {self.nonzero} non-zero values flush to "
                          f"zero ({self.underflow / max(self.nonzero, 1):.1%}), {self.overflow} "
                          f"overflow; store gradients in float32 (the default) to keep them.",
                          stacklevel=4)


def _norm_outputs(model, names: list[str]) -> dict[str, tuple[str, torch.nn.LayerNorm]]:
    """Captured hook points `<path>.out` that are the output of a LayerNorm at `<path>` whose
    input is the hook point `<path>.in`: {output: (input, norm)}; candidates for deriving."""
    points = set(hook_points(model))
    found = {}
    for name in names:
        path, _, leaf = name.rpartition(".")
        if leaf != "out" or f"{path}.in" not in points:
            continue
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.LayerNorm) and len(module.normalized_shape) == 1:
            found[name] = (f"{path}.in", module)
    return found


def _derivations(acts: dict[str, torch.Tensor], names: list[str], aliases: dict[str, str],
                 norms: dict[str, tuple[str, torch.nn.LayerNorm]], torch_dtype) -> dict[str, dict]:
    """On the first batch: which LayerNorm outputs to compute on read instead of storing.
    One qualifies when its input is stored under some name (the very tensor: `norm.in` is
    stored as `blocks.{last}.out`) and vitscope.dump.derive, from that input as stored, reproduces
    the output as it would be stored, to fp16 precision; anything else is stored as usual."""
    from vitscope.dump import dims_for
    from vitscope.dump.derive import layer_norm, matches

    def key(t):
        return (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device)

    stored = {key(acts[n]): n for n in names if n not in aliases}
    targets = set(aliases.values())
    out = {}
    for name, (inp, norm) in norms.items():
        source = stored.get(key(acts[inp])) if inp in acts else None
        if source is None or source in norms or name in aliases or name in targets:
            continue
        weight, bias = (None if p is None else p.detach().float().cpu().numpy()
                        for p in (norm.weight, norm.bias))
        x = acts[source].to(torch_dtype).cpu().numpy()        # both as they would be stored
        want = acts[name].to(torch_dtype).cpu().numpy()
        if matches(layer_norm(x, weight, bias, norm.eps).astype(want.dtype), want):
            out[name] = {"function": "layer_norm", "source": source, "eps": float(norm.eps),
                         "weight": weight, "bias": bias, "dims": dims_for(f"acts/{name}", want.ndim)}
    return out


def _same_tensors(acts: dict[str, torch.Tensor], names: list[str]) -> dict[str, str]:
    """alias -> first name for hook points that received the identical tensor object's data
    (same storage, offset, shape and strides); stored once, linked in the file."""
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for n in names:
        t = acts.get(n)
        if t is None:
            raise DumpError(f"Hook point '{n}' produced nothing during the forward pass; this "
                            f"model does not run it.")
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device)
        if key in seen:
            aliases[n] = seen[key]
        else:
            seen[key] = n
    return aliases


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DumpError(f"--limit must be a positive number of images, got {limit!r}; leave it "
                        f"out to dump the whole split.")


