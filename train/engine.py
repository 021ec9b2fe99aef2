"""The training loop: epochs of device-resident batches, evaluation, checkpoints, resume.

Host-device syncs happen only at "sync points" (every step on the CPU, every SYNC_EVERY_GPU
steps on a GPU, and at epoch end): that is where the progress bar is updated, a non-finite
loss is detected (the step it first appeared at is recorded on the device without syncing),
and a SIGINT/SIGTERM request is honoured. Under DDP, ranks agree at those points through one
small all-reduce, so they stop together.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitscope.model.checkpoint import save_checkpoint
from vitscope.data import to_model_input
from vitscope.errors import TrainingError, TrainingInterrupted, WriteError
from vitscope.train import distributed as D
from vitscope.train.augment import Augmenter, EpochPlan
from vitscope.train.ema import EMA
from vitscope.train.run_log import Progress, RunLogger
from vitscope.train.optim import autocast, make_optimizer, make_scaler
from vitscope.train.schedule import WarmupCosine
from vitscope._internal.files import guard

SYNC_EVERY_GPU = 25
EpochCallback = Callable[[nn.Module, int, Path], Any]


@dataclass
class TrainData:
    """This rank's data, already on the device, plus what every checkpoint records."""
    train_images: torch.Tensor   # n×H×W×3 uint8 (this rank's shard)
    train_labels: torch.Tensor   # n int64
    val_images: torch.Tensor     # m×H×W×3 uint8 (this rank's shard)
    val_labels: torch.Tensor     # m int64
    classes: list[str]
    mean: list[float]
    std: list[float]
    n_train: int                 # images per epoch over all ranks (after drop-last)


class Trainer:
    def __init__(self, cfg, model: nn.Module, data: TrainData, run_dir: Path, *,
                 dist: D.DistInfo, device: torch.device, precision: str,
                 ckpt_train_config: dict[str, Any], callbacks: Sequence[EpochCallback] = (),
                 on_first_save: Callable[[], None] | None = None):
        self.cfg, self.model, self.data, self.run_dir = cfg, model, data, run_dir
        self.on_first_save = on_first_save  # rank 0: the run folder is worth keeping from now on
        self.interrupting = False
        self.dist, self.device, self.precision = dist, device, precision
        self.ckpt_train_config = ckpt_train_config
        self.callbacks = list(callbacks)
        self.batch = cfg.batch_size // dist.world_size
        # Every rank runs the same number of steps (shards may differ by one image).
        self.steps = (data.n_train // dist.world_size) // self.batch
        self.optimizer = make_optimizer(model, cfg, device)
        self.scaler = make_scaler(device, precision)
        self.schedule = WarmupCosine(cfg.lr, cfg.epochs * self.steps,
                                     round(cfg.warmup_epochs * self.steps), cfg.min_lr)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema else None
        self.augment = Augmenter(cfg, data.mean, data.std, len(data.classes), device)
        wrapped: nn.Module = model
        if dist.enabled:
            wrapped = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = torch.compile(wrapped) if cfg.compile else wrapped
        self.sync_every = 1 if device.type == "cpu" else SYNC_EVERY_GPU
        self.stop_requested = False
        # Progress of the run (saved in last.pt for --resume).
        self.epoch = 0               # completed epochs
        self.step_in_epoch = 0       # batches done in the current epoch (mid-epoch resume)
        self.global_step = 0
        self.best_val_acc = -1.0
        self.best_epoch = 0
        self.stale_epochs = 0        # epochs since val_acc last improved (early stopping)
        self.last_pt_at: tuple[int, int] | None = None  # (epoch, step_in_epoch) last.pt holds
        # Running sums of the current epoch (loss sum, correct, seen); float64 except on MPS.
        self.acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        self.partial = torch.zeros(3, dtype=self.acc_dtype, device=device)
        self.partial_seconds = 0.0   # training seconds of the current epoch before a resume
        self.epoch_t0 = time.perf_counter()
        self.seen0 = 0.0             # images already counted in this epoch when it (re)started
        self.last_metrics: dict[str, Any] = {}
        self.logger: RunLogger | None = None  # rank 0, during fit()
        self.start_time = time.perf_counter()

    # ------------------------------------------------------------------ public
    def fit(self, resume: dict[str, Any] | None = None,
            recorded: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train to the end (or early stop); returns the final metrics and paths. `resume`:
        last.pt's resume state, `recorded`: its metrics (to mend a torn metrics.jsonl)."""
        if resume is not None:
            self._restore(resume)
        main = self.dist.is_main
        restore_signals = lambda: None  # noqa: E731
        progress = Progress(main and not self.cfg.quiet, self.cfg.epochs)
        logger = None
        stopped_early = False
        try:
            with guard(self.run_dir):   # a full disk: one sentence, see _write_failed
                logger = self.logger = RunLogger(self.run_dir, self.cfg, self.ckpt_train_config,
                                                 resume_epoch=self.epoch, recorded=recorded) \
                    if main else None
                restore_signals = self._install_signal_handlers()
                while self.epoch < self.cfg.epochs and not stopped_early:
                    metrics = self._train_epoch(progress)
                    stopped_early = self._end_epoch(metrics, logger, progress)
        except WriteError as e:
            raise self._write_failed(e) from None
        finally:
            restore_signals()
            progress.end_epoch()
            if logger is not None:
                logger.close()
        return {"metrics": self.last_metrics, "best_val_acc": self.best_val_acc,
                "best_epoch": self.best_epoch, "stopped_early": stopped_early,
                "run_dir": str(self.run_dir), "epochs": self.epoch}

    # ------------------------------------------------------------------ one epoch
    def _train_epoch(self, progress: Progress) -> dict[str, Any]:
        cfg, epoch = self.cfg, self.epoch + 1
        plan = EpochPlan(cfg, len(self.data.train_labels), self.steps, self.batch, epoch,
                         self.dist.rank, self.data.train_images.shape[1], self.device)
        self.model.train()
        progress.start_epoch(epoch, self.steps, self.step_in_epoch)
        acc = self.partial.clone()
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        step_t = torch.full((), self.global_step, dtype=torch.long, device=self.device)
        batch_t = torch.full((), float(self.batch), dtype=acc.dtype, device=self.device)
        self.epoch_t0, reported, self.seen0 = time.perf_counter(), acc.clone(), float(acc[2])
        lr = self.schedule(self.global_step)
        for i in range(self.step_in_epoch, self.steps):
            if i % self.sync_every == 0 or i == self.step_in_epoch:
                self._sync_point(acc, first_bad, progress, reported)
                reported = acc.clone()
            x, targets, y = self.augment(self.data.train_images, self.data.train_labels, plan.batch(i))
            lr = self.schedule(self.global_step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss, logits = self.train_step(x, targets)
            # Running sums stay on the device: no sync per step.
            acc += torch.stack([loss.detach().to(acc.dtype) * batch_t,
                                (logits.argmax(1) == y).sum().to(acc.dtype), batch_t])
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step_t, first_bad)
            step_t += 1
            self.global_step += 1
            self.step_in_epoch = i + 1
            self.partial = acc
        self._sync_point(acc, first_bad, progress, reported, final=True)
        train_seconds = self._epoch_seconds()
        loss_sum, correct, seen = D.all_reduce_sum(acc.clone()).tolist()
        t_eval = time.perf_counter()
        val = self._evaluate()
        return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1), **val, "lr": lr,
                "images_per_s": seen / max(train_seconds, 1e-9),
                "seconds": train_seconds + time.perf_counter() - t_eval}

    def _epoch_seconds(self) -> float:
        """Training time of the current epoch, including time before an interruption."""
        return self.partial_seconds + time.perf_counter() - self.epoch_t0

    def train_step(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.precision):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss, logits

    def _sync_point(self, acc, first_bad, progress, reported, final: bool = False) -> None:
        """Progress, non-finite loss and stop requests, checked together (one host sync)."""
        flags = torch.stack([first_bad.to(self.acc_dtype),
                             torch.full((), float(self.stop_requested), dtype=self.acc_dtype,
                                        device=self.device)])
        bad_step, stop = D.all_reduce_max(flags).tolist()
        if bad_step >= 0:
            lr = self.schedule(int(bad_step))
            kept = self._kept_checkpoints()
            raise TrainingError(
                f"The training loss became NaN or infinite at step {int(bad_step)} (epoch "
                f"{self.epoch + 1}, lr {lr:.3g}), so training stopped and {kept}; lower --lr, "
                f"keep grad_clip on, or check the data.")
        if stop and not final:
            self._interrupt()
        if progress.enabled:
            loss_sum, correct, seen = acc.tolist()
            elapsed = max(time.perf_counter() - self.epoch_t0, 1e-9)
            progress.update(int((seen - float(reported[2])) // self.batch),
                            loss=f"{loss_sum / max(seen, 1):.3f}", acc=f"{correct / max(seen, 1):.3f}",
                            img_s=f"{(seen - self.seen0) * self.dist.world_size / elapsed:.0f}")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        model = self.eval_model()
        model.eval()
        totals = torch.zeros(3, dtype=self.acc_dtype, device=self.device)
        images, labels = self.data.val_images, self.data.val_labels
        for s in range(0, len(labels), self.cfg.eval_batch_size):
            x = to_model_input(images[s:s + self.cfg.eval_batch_size], self.data.mean, self.data.std)
            y = labels[s:s + self.cfg.eval_batch_size]
            with autocast(self.device, self.precision):
                logits = model(x).float()
                if self.cfg.eval_flip_tta:
                    logits = (logits + model(x.flip(-1)).float()) / 2
            totals += torch.stack([F.cross_entropy(logits, y, reduction="sum").to(totals.dtype),
                                   (logits.argmax(1) == y).sum().to(totals.dtype),
                                   torch.full((), len(y), dtype=totals.dtype, device=self.device)])
        loss_sum, correct, seen = D.all_reduce_sum(totals).tolist()
        self.model.train()
        return {"val_loss": loss_sum / max(seen, 1), "val_acc": correct / max(seen, 1)}

    def eval_model(self) -> nn.Module:
        """The plain model that is evaluated and saved: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ epoch end
    def _end_epoch(self, metrics: dict[str, Any], logger: RunLogger | None,
                   progress: Progress) -> bool:
        progress.end_epoch()
        self.epoch += 1
        self.step_in_epoch = 0
        self.partial = torch.zeros_like(self.partial)
        self.partial_seconds = 0.0
        improved = metrics["val_acc"] > self.best_val_acc
        if improved:
            self.best_val_acc, self.best_epoch, self.stale_epochs = metrics["val_acc"], self.epoch, 0
        else:
            self.stale_epochs += 1
        stop_early = bool(self.cfg.patience) and self.stale_epochs >= self.cfg.patience
        metrics.update(best_val_acc=self.best_val_acc, elapsed=time.perf_counter() - self.start_time)
        self.last_metrics = metrics
        last = self.epoch == self.cfg.epochs or stop_early
        if self.dist.is_main:
            logger.log_epoch(metrics)
            if improved:
                self._save("best.pt", with_resume=False)
            # before last.pt: last.pt marks the epoch as done, so a kill after it must not
            # leave a finished run without its curves (a resume would not redraw them)
            logger.write_curves(final=last)
        if self.epoch % self.cfg.save_every == 0 or last:
            self._save_last()
        if self.dist.is_main:
            self._run_callbacks()
            progress.line(self._summary(metrics, stop_early))
        D.barrier()
        return stop_early

    def _summary(self, m: dict[str, Any], stop_early: bool) -> str:
        text = (f"epoch {m['epoch']:>3}/{self.cfg.epochs}  train loss {m['train_loss']:.4f} "
                f"acc {m['train_acc']:.4f}  val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}  "
                f"lr {m['lr']:.2e}  {m['images_per_s']:,.0f} img/s  {m['seconds']:.1f}s")
        if stop_early:
            text += (f"  (early stop: no better val_acc for {self.cfg.patience} epochs; best "
                     f"{self.best_val_acc:.4f} at epoch {self.best_epoch})")
        return text

    def _run_callbacks(self) -> None:
        """Epoch-end analyses on rank 0, on the plain eval-mode model; training resumes after."""
        if not self.callbacks:
            return
        model = self.eval_model()
        model.eval()
        try:
            for fn in self.callbacks:
                fn(model, self.epoch, self.run_dir)
        finally:
            self.model.train()

    # ------------------------------------------------------------------ checkpoints
    def _ckpt_metrics(self) -> dict[str, Any]:
        keep = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")
        out = {k: self.last_metrics[k] for k in keep if k in self.last_metrics}
        out.update(best_val_acc=self.best_val_acc, best_epoch=self.best_epoch)
        return out

    def _save(self, name: str, with_resume: bool, resume: dict[str, Any] | None = None) -> Path:
        path = save_checkpoint(self.run_dir / name, self.eval_model(), model_config=self.cfg.model,
                               arch=self.cfg.arch, classes=self.data.classes,
                               train_config=self.ckpt_train_config, metrics=self._ckpt_metrics(),
                               resume=resume if with_resume else None)
        if self.on_first_save is not None and not self.interrupting:
            self.on_first_save()   # an interrupt's last.pt does not make the new run the keeper
            self.on_first_save = None
        return path

    def _kept_checkpoints(self) -> str:
        """What the run folder still holds, for the message of a run that must stop."""
        last = self.run_dir / "last.pt"
        if self.last_pt_at is not None:
            epoch, step = self.last_pt_at
            held = f"epoch {epoch + 1} up to step {step}" if step else f"epoch {epoch}"
            return f"{last} still holds {held}"
        if self.best_epoch:
            return f"no last.pt was written yet ({self.run_dir / 'best.pt'} holds epoch {self.best_epoch})"
        return "no checkpoint was written"

    def _write_failed(self, error: WriteError) -> TrainingError:
        """A full disk (or any failed write) stops training: what the run still holds (an
        atomic checkpoint write never leaves last.pt half written) and how to go on."""
        last = self.run_dir / "last.pt"
        if self.last_pt_at is not None:
            go_on = f"free some space, then continue with `vitscope train --resume {last}`"
        elif self.best_epoch:
            go_on = "free some space and start the run again with --overwrite"
        else:
            go_on = "free some space and start the run again"
        return TrainingError(f"{error.base}; training stopped and {self._kept_checkpoints()}: "
                             f"{go_on}.")

    def _save_last(self) -> Path:
        """last.pt with the state --resume needs; collective (gathers every rank's RNG and
        sums the ranks' running metrics of a partly done epoch)."""
        rng = D.gather_to_main(_rng_state(self.device))
        # Every rank's share of the epoch so far; on resume rank 0 carries it, the others 0.
        partial = D.all_reduce_sum(self.partial.clone())
        at = (self.epoch, self.step_in_epoch)
        if not self.dist.is_main:
            self.last_pt_at = at
            return self.run_dir / "last.pt"
        resume = {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step, "world_size": self.dist.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            # state_dict holds the evaluated (EMA) weights; the raw ones are needed to continue.
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            if self.ema is not None else None,
            "rng": rng,
            "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
            "stale_epochs": self.stale_epochs,
            "partial": partial.cpu(),
            "partial_seconds": self._epoch_seconds() if self.step_in_epoch else 0.0,
        }
        path = self._save("last.pt", with_resume=True, resume=resume)
        self.last_pt_at = at   # only once it is written: a failed write leaves the old one
        return path

    def _restore(self, r: dict[str, Any]) -> None:
        if r.get("model") is not None:
            self.model.load_state_dict(r["model"])
        self.optimizer.load_state_dict(r["optimizer"])
        if self.scaler is not None and r.get("scaler"):
            self.scaler.load_state_dict(r["scaler"])
        if self.ema is not None and r.get("ema"):
            self.ema.load_state_dict(r["ema"])
        self.epoch, self.step_in_epoch = int(r["epoch"]), int(r["step_in_epoch"])
        self.global_step = int(r["global_step"])
        self.best_val_acc, self.best_epoch = float(r["best_val_acc"]), int(r["best_epoch"])
        self.stale_epochs = int(r["stale_epochs"])
        self.last_pt_at = (self.epoch, self.step_in_epoch)  # the last.pt resumed from
        # Saved summed over the ranks: counted once, on rank 0, so the epoch's all-reduce
        # gives the same train metrics as an uninterrupted run.
        partial = r["partial"].to(self.device, self.acc_dtype)
        self.partial = partial if self.dist.is_main else torch.zeros_like(partial)
        self.partial_seconds = float(r["partial_seconds"])
        rng = r.get("rng") or []
        if self.dist.rank < len(rng):
            _set_rng_state(rng[self.dist.rank], self.device)

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT/SIGTERM ask the loop to write last.pt and stop at the next step; a second
        SIGINT interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True

        for s in previous:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)
        return restore

    def _interrupt(self) -> None:
        self.interrupting = True
        path = self._save_last()
        if self.logger is not None:
            self.logger.write_curves()
        # No rank exits before rank 0 has written last.pt: torchrun kills the remaining
        # processes as soon as one exits with an error status.
        D.barrier()
        where = (f"epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps}"
                 if self.step_in_epoch else f"the end of epoch {self.epoch}")
        raise TrainingInterrupted(f"Training was interrupted at {where} and saved {path}; "
                                  f"continue with `vitscope train --resume {path}`.")


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state(), "device": None}
    if device.type == "cuda":
        state["device"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["device"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("device") is not None:
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["device"], device)
        elif device.type == "mps":
            torch.mps.set_rng_state(state["device"])

