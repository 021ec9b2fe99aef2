"""One training run end to end: process group, run folder, data on the device, model, Trainer.

    from vitscope.train.runner import run
    summary = run(make_config(read_recipe("shapes-quick")))

`run` is what `vitscope train` calls (and torchrun ranks call through it); `resume_config`
turns a last.pt into the config of the run it continues.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitscope.model.checkpoint import Checkpoint, load_checkpoint
from vitscope.data import (ImageDataset, absolute_spec, dataset_stats, load_dataset,
                           normalization)
from vitscope.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from vitscope._internal.locks import hold
from vitscope.model.vit import ViT, count_parameters
from vitscope._internal.folders import remove_empty
from vitscope.train import distributed as D
from vitscope._internal import threads
from vitscope.train.config import TrainConfig, describe_model
from vitscope.train.engine import EpochCallback, TrainData, Trainer
from vitscope.train.run_log import require_loggers
from vitscope.train.optim import resolve_precision
from vitscope._internal.files import guard, replacing

# Fields that may change when resuming: they do not alter what the remaining steps compute
# (epochs does: the cosine schedule stretches, so a longer run is no longer bit-exact).
RESUME_OVERRIDABLE = ("epochs", "quiet", "log", "device", "compile", "patience", "save_every",
                      "eval_batch_size", "wandb_mode", "wandb_project")

MakeCallbacks = Callable[[ImageDataset, list[str], tuple[list[float], list[float]], str],
                         Sequence[EpochCallback]]


def run_name(cfg: TrainConfig) -> str:
    if cfg.name:
        return cfg.name
    data = cfg.data.split(":", 1)[0] if not cfg.data.startswith("folder:") \
        else Path(cfg.data[len("folder:"):]).name or "folder"
    return f"{cfg.preset}-{data}"


def run(cfg: TrainConfig, *, overwrite: bool = False, resume: Checkpoint | None = None,
        callbacks: Sequence[EpochCallback] = (), make_callbacks: MakeCallbacks | None = None
        ) -> dict[str, Any]:
    """Train `cfg` (or continue `resume`, a last.pt); returns the Trainer's summary."""
    require_loggers(cfg.log)
    if resume is None:  # recorded as absolute paths: the run can be used from any folder
        cfg.data = absolute_spec(cfg.data)
        cfg.data_dir = str(Path(cfg.data_dir).expanduser().absolute())
    info, device = D.setup(cfg.device)
    folder: RunFolder | None = None
    locks = contextlib.ExitStack()
    finished = False   # every rank reached the end: they meet once more before leaving DDP
    try:
        precision = resolve_precision(cfg.precision, device)
        cuda_speed_settings(device)
        if cfg.batch_size % info.world_size:
            raise ConfigError(f"batch_size ({cfg.batch_size}) must be divisible by the number of "
                              f"DDP processes ({info.world_size}); it is the global batch.")
        # A fresh run folder is only checked here and created once the data, model and
        # callbacks are known to work; until its first checkpoint is written, a failure removes
        # it again and puts back the run that --overwrite moved aside (RunFolder).
        run_dir = Path(resume.path).parent if resume else _run_dir_of(cfg)
        if info.is_main:   # one process per run folder, from the check below to the end
            locks.enter_context(run_lock(run_dir))
        if not resume:
            _check_run_dir(cfg, overwrite)
        train_ds, val_ds = _load_data(cfg, info)
        if resume:
            mean, std = normalization(resume)  # exactly what the run started with
        else:
            mean, std = dataset_stats(train_ds)
        cfg.model = dataclasses.replace(cfg.model, num_classes=len(train_ds.classes))
        model = build_model(cfg).to(device)
        if resume:
            model.load_state_dict(resume.state_dict)
        torch.manual_seed(cfg.seed + info.rank)  # dropout / drop-path streams differ per rank
        data = _to_device(train_ds, val_ds, mean, std, info, device)
        per_rank = cfg.batch_size // info.world_size
        if (data.n_train // info.world_size) // per_rank == 0:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {data.n_train} "
                              f"training images of '{cfg.data}'; pass a smaller --batch-size.")
        ckpt_config = {
            **cfg.to_dict(), "arch": cfg.arch, "image_size": cfg.model.image_size,
            "normalize": {"mean": mean, "std": std}, "world_size": info.world_size,
            "device": device.type, "precision": precision, "parameters": count_parameters(model),
            "n_train": len(train_ds), "n_val": len(val_ds),
        }
        if device.type == "cpu":   # float sums follow the thread count: it is part of the result
            ckpt_config["cpu_threads"] = torch.get_num_threads()
        callbacks = list(callbacks)
        if info.is_main:
            if make_callbacks is not None:  # may reject a plugin name: before anything is written
                callbacks += make_callbacks(val_ds, train_ds.classes, (mean, std), run_dir.name)
        if not resume:
            folder = RunFolder(run_dir, info)
            folder.create(overwrite)
        if info.is_main:
            if resume:
                _remove_stale_temporaries(run_dir)
            with guard(run_dir, "nothing was trained; free some space and start again"):
                with replacing(run_dir / "config.json") as (tmp,):
                    tmp.write_text(json.dumps(ckpt_config, indent=2) + "\n")
        trainer = Trainer(cfg, model, data, run_dir, dist=info, device=device,
                          precision=precision, ckpt_train_config=ckpt_config, callbacks=callbacks,
                          on_first_save=folder.keep if folder is not None else None)
        if info.is_main and not cfg.quiet:
            cpu = f" · {threads.current().describe()}" if device.type == "cpu" else ""
            print(f"vitscope train: {run_dir}  {cfg.arch} {describe_model(cfg.preset, cfg.model)} "
                  f"({count_parameters(model):,} params)  data {cfg.data} "
                  f"({len(train_ds)} train / {len(val_ds)} val)  device {device}{cpu} {precision}"
                  f"{f'  x{info.world_size} DDP' if info.enabled else ''}  {trainer.steps} "
                  f"steps/epoch of {cfg.batch_size}", flush=True)
        summary = trainer.fit(resume.resume if resume else None,
                              resume.metrics if resume else None)
        finished = True
        if folder is not None:
            folder.keep()
        return summary
    except TrainingInterrupted as e:
        # Ctrl-C before the first epoch ended: the new run is resumable from its last.pt and the
        # old one it was to replace stays where --overwrite moved it; neither is deleted.
        aside = folder.leave_both() if folder is not None else None
        if aside is None:
            raise
        raise TrainingInterrupted(f"{str(e).rstrip('.')}; the run it replaces is kept in "
                                  f"'{aside}' until you delete it.") from None
    except TrainingError as e:
        restored = folder.undo_unless_kept() if folder is not None else False
        if not restored:
            raise
        raise TrainingError(f"{str(e).rstrip('.')}; '{run_dir}' holds the previous run again, "
                            f"as it was before --overwrite.") from None
    except _OOM:
        raise TrainingError(
            f"CUDA ran out of memory training {cfg.preset} with batch size {cfg.batch_size} on "
            f"{device}; pass a smaller --batch-size (e.g. {max(1, cfg.batch_size // 2)}) or a "
            f"smaller model.") from None
    finally:
        if folder is not None:
            folder.undo_unless_kept()  # a no-op once the run wrote its first checkpoint
        locks.close()
        D.cleanup(sync=finished)


_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def cuda_speed_settings(device: torch.device) -> None:
    if device.type == "cuda":  # fixed shapes: let cuDNN pick the fastest conv kernels
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside autocast


def build_model(cfg: TrainConfig) -> nn.Module:
    """The ViT (or SmallCNN), initialised from cfg.seed so every rank starts identical."""
    torch.manual_seed(cfg.seed)
    if cfg.arch == "cnn":
        from vitscope.model.cnn import SmallCNN
        return SmallCNN(cfg.model)
    return ViT(cfg.model)


def resume_config(path: str | Path, overrides: dict[str, Any]) -> tuple[TrainConfig, Checkpoint]:
    """The config of the run a last.pt belongs to, with the few fields a resume may change."""
    ckpt = load_checkpoint(path)
    if not ckpt.resume:
        raise TrainingError(f"'{path}' holds weights only, no resume state (best.pt never does); "
                            f"resume from the run's last.pt, e.g. {Path(path).parent / 'last.pt'}.")
    changed = sorted(k for k in overrides if k not in RESUME_OVERRIDABLE)
    if changed:
        new_run = ("start a new run (--config/--model with --name) to branch off" if
                   {"name", "runs_dir"} & set(changed) else "start a new run with --name")
        raise ConfigError(f"--resume continues a run in its own folder with its own settings, "
                          f"so {', '.join(changed)} cannot change; only "
                          f"{', '.join(RESUME_OVERRIDABLE)} may be given, or {new_run}.")
    stored = {k: v for k, v in ckpt.train_config.items()
              if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    try:  # the run's own settings first, so an error there names the file, not the flags
        TrainConfig.from_dict(stored)
    except ConfigError as e:
        raise CheckpointError(f"'{path}' has an invalid train_config ({str(e).rstrip('.')}); "
                              f"the file was edited or written by another tool.") from None
    _check_resume_state(path, ckpt.resume)
    cfg = TrainConfig.from_dict({**stored, **overrides})
    done = int(ckpt.resume["epoch"])
    if done >= cfg.epochs and not ckpt.resume.get("step_in_epoch"):
        raise TrainingError(f"'{path}' has already finished all {done} epochs; pass --epochs N "
                            f"with N > {done} to train longer (the cosine schedule then stretches).")
    return cfg, ckpt


# What a process killed while writing can leave in a run folder (every write goes through
# one of these names and a rename): removed when the run resumes.
STALE_TEMPORARIES = ("*.pt.tmp", ".*.tmp-*", "curves.tmp.png")


def _remove_stale_temporaries(run_dir: Path) -> None:
    for pattern in STALE_TEMPORARIES:
        for p in run_dir.glob(pattern):
            if p.is_file():
                p.unlink(missing_ok=True)


def _check_resume_state(path: str | Path, r: dict[str, Any]) -> None:
    """The fields of last.pt's `resume` that Trainer._restore reads, with their types."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    expected = {"epoch": count, "step_in_epoch": count, "global_step": count,
                "best_epoch": count, "stale_epochs": count, "best_val_acc": number,
                "partial_seconds": number, "optimizer": lambda v: isinstance(v, dict),
                "partial": lambda v: isinstance(v, torch.Tensor) and v.numel() == 3,
                "rng": lambda v: v is None or isinstance(v, list)}
    bad = [k for k, ok in expected.items() if not ok(r.get(k))]
    if bad:
        raise CheckpointError(f"'{path}' has a damaged resume state ({', '.join(bad)} missing or "
                              f"of the wrong type); it was not written by `vitscope train`, so "
                              f"resume from another last.pt or start a new run.")


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the lock of a run folder: `runs/.<name>.lock` beside it (not inside: --overwrite
    moves the folder aside), so a second `train --name same` or `--resume` of it is refused
    with "'runs/same' is in use by process PID". Folders made for the lock file are removed
    again if nothing else was put in them."""
    run_dir = Path(run_dir)
    created = [p for p in [run_dir.parent, *run_dir.parent.parents] if not p.exists()]
    try:
        with hold(run_dir.parent / f".{run_dir.name}.lock", run_dir, TrainingError,
                  hint="wait for that run to finish, or pass --name to start another run"):
            yield
    except OSError as e:
        raise TrainingError(f"Cannot lock the run folder '{run_dir}' ({e.strerror or e}); pass "
                            f"--runs-dir a folder you can write to.") from None
    finally:
        remove_empty(created)


def _run_dir_of(cfg: TrainConfig) -> Path:
    """runs_dir/<name>; TrainingError when --runs-dir (or a folder above it) is a file."""
    run_dir = Path(cfg.runs_dir) / run_name(cfg)
    blocking = next((p for p in run_dir.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise TrainingError(f"--runs-dir '{cfg.runs_dir}' is not a folder ('{blocking}' is a "
                            f"file); pass --runs-dir a folder path (it is created if missing) "
                            f"or move that file away.")
    return run_dir


def _check_run_dir(cfg: TrainConfig, overwrite: bool) -> Path:
    """The new run's folder, refused when it holds a run and --overwrite is not given, or when
    --runs-dir is not a folder; nothing is created or deleted yet."""
    run_dir = _run_dir_of(cfg)
    if _holds_something(run_dir) and not overwrite:
        resume = f", --resume {run_dir / 'last.pt'} to continue it" \
            if (run_dir / "last.pt").is_file() else ""
        aside = sorted(run_dir.parent.glob(f"{run_dir.name}.replaced-*"))
        note = (f" (an earlier --overwrite that was killed left the run it replaced in "
                f"'{aside[-1]}'; move it back or delete it)") if aside else ""
        raise TrainingError(f"Run folder '{run_dir}' already exists{note}; pass --overwrite to "
                            f"replace it{resume}, or --name to start another run.")
    return run_dir


class RunFolder:
    """The new run's folder (only rank 0 touches the file system).

    `create` makes it; under --overwrite the old run is first renamed aside, not deleted.
    `keep` (called at the first checkpoint write, and when training returns) deletes the old
    run for good. Until then `undo_unless_kept` (on any failure) removes what this run wrote and
    renames the old run back, so a failed start neither loses the old run nor leaves a folder
    that blocks the retry."""

    def __init__(self, path: Path, info: D.DistInfo) -> None:
        self.path, self.info = path, info
        self.aside: Path | None = None   # where the old run waits under --overwrite
        self.created = False             # False: an empty folder that existed is reused
        self.active = False              # created and not yet kept

    def create(self, overwrite: bool) -> None:
        """Collective: every rank looks at the folder before rank 0 changes anything."""
        existed = _holds_something(self.path)
        D.barrier()
        if self.info.is_main:
            try:
                if existed and overwrite:
                    aside = _aside_name(self.path)
                    self.path.rename(aside)
                    self.aside = aside
                created = not self.path.is_dir()
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                if self.aside is not None and not self.path.exists():
                    self.aside.rename(self.path)  # mkdir failed: the old run goes back
                raise TrainingError(f"Cannot create the run folder '{self.path}' ({e.strerror}); "
                                    f"pass --runs-dir a folder you can write to.") from None
            self.created, self.active = created, True
        D.barrier()

    def keep(self) -> None:
        """The new run has a checkpoint: the old run it replaces can go."""
        if not self.active:
            return
        self.active = False
        if self.aside is not None:
            try:
                _remove(self.aside)
            except OSError as e:  # not worth stopping the new run for
                print(f"vitscope train: could not delete the replaced run in '{self.aside}' "
                      f"({e.strerror or e}); delete it yourself.", file=sys.stderr, flush=True)
            self.aside = None

    def leave_both(self) -> Path | None:
        """After an interrupt that wrote last.pt: keep the new run (resumable) and the old one
        beside it, deleting neither. Returns where the old run is, if there is one."""
        if not self.active:
            return None
        self.active = False
        return self.aside if self.info.is_main else None

    def undo_unless_kept(self) -> bool:
        """Remove what this run wrote (its new folder, or the contents of the empty folder it
        reused) and put the old run back where it was. True when an old run was put back."""
        if not self.active:
            return False
        self.active = False
        try:
            if self.created:
                _remove(self.path)
            elif self.path.is_dir():  # it was empty before this run: everything in it is ours
                for child in self.path.iterdir():
                    _remove(child)
            if self.aside is not None:
                self.aside.rename(self.path)
                return True
        except OSError as e:
            where = f"; the old run is still in '{self.aside}'" if self.aside else ""
            print(f"vitscope train: could not undo the failed start in '{self.path}' "
                  f"({e.strerror or e}){where}.", file=sys.stderr, flush=True)
        return False


def _aside_name(run_dir: Path) -> Path:
    """A free name beside the run folder, named so that it is clear what it holds."""
    for i in range(1000):
        suffix = f"-{i}" if i else ""
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{os.getpid()}{suffix}")
        if not aside.exists():
            return aside
    raise TrainingError(f"Cannot find a free name beside '{run_dir}' to move the old run to; "
                        f"remove the '{run_dir.name}.replaced-*' folders there.")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _holds_something(path: Path) -> bool:
    """A file, or a folder with anything in it (an empty folder may be reused)."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _load_data(cfg: TrainConfig, info: D.DistInfo) -> tuple[ImageDataset, ImageDataset]:
    """Both splits at the model's image size; rank 0 first, so a folder's decode cache is
    written once and the other ranks read it."""
    def load() -> tuple[ImageDataset, ImageDataset]:
        kw = dict(data_dir=cfg.data_dir, val_split=cfg.val_split, seed=cfg.seed)
        size = cfg.model.image_size
        return load_dataset(cfg.data, "train", size, **kw), load_dataset(cfg.data, "val", size, **kw)

    if info.is_main:
        train, val = load()
    D.barrier()
    if not info.is_main:
        train, val = load()
    for ds in (train, val):
        if not ds.labeled:
            raise ConfigError(f"The {ds.split} split of '{cfg.data}' has unlabeled images; "
                              f"training needs class sub-folders (train/<class>/*.jpg).")
    if train.classes != val.classes:
        raise ConfigError(f"The train and val splits of '{cfg.data}' have different classes "
                          f"({len(train.classes)} vs {len(val.classes)}); give both the same "
                          f"class folders.")
    return (seeded_subset(train, cfg.train_subset, cfg.seed),
            seeded_subset(val, cfg.val_subset, cfg.seed))


def seeded_subset(ds: ImageDataset, n: int | None, seed: int) -> ImageDataset:
    """train_subset / val_subset: n images picked by `seed` (`vitscope eval` picks the same)."""
    if n is None or n >= len(ds):
        return ds
    keep = np.sort(np.random.default_rng([seed, 0x5B5E7]).permutation(len(ds))[:n])
    return ds.subset(keep)


def _to_device(train: ImageDataset, val: ImageDataset, mean, std, info: D.DistInfo,
               device: torch.device) -> TrainData:
    """This rank's shard of both splits as uint8 tensors on the device (decoded only once)."""
    part = D.shard(len(train), info)
    vpart = D.shard(len(val), info)
    put = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    return TrainData(put(train.images[part]), put(train.labels[part]), put(val.images[vpart]),
                     put(val.labels[vpart]), list(train.classes), list(mean), list(std),
                     n_train=len(train))
