"""What a run writes besides checkpoints: metrics.jsonl, curves.png, optional TensorBoard and
Weights & Biases, and the live progress bar. Only rank 0 creates one of these."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vitscope.errors import ConfigError
from vitscope._internal.bounded import loads_json
from vitscope._internal.files import replacing, write_atomic

MAX_LINE_BYTES = 1 << 20      # one epoch's metrics take a few hundred bytes

METRICS = "metrics.jsonl"
CURVES = "curves.png"
CURVES_EVERY_S = 30.0  # redraw at most this often (a redraw costs ~0.2 s), and at the end


class RunLogger:
    def __init__(self, run_dir: Path, cfg, config_dict: dict[str, Any], resume_epoch: int = 0,
                 recorded: dict[str, Any] | None = None):
        """`resume_epoch`: the epochs last.pt holds; `recorded`: its metrics (of that epoch)."""
        self.run_dir = run_dir
        self.path = run_dir / METRICS
        self.history: list[dict[str, Any]] = []
        if resume_epoch:
            self.history = resumed_history(self.path, resume_epoch, recorded)
        with replacing(self.path) as (tmp,):   # whole or not at all, whatever stops the write
            tmp.write_text("".join(json.dumps(m) + "\n" for m in self.history))
        self.curves_written = time.monotonic()
        self.tb = _tensorboard(run_dir) if "tensorboard" in cfg.log else None
        self.wandb = _wandb(run_dir, cfg, config_dict, resume=bool(resume_epoch)) \
            if "wandb" in cfg.log else None

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        with open(self.path, "a") as f:
            size = f.tell()
            try:
                f.write(json.dumps(metrics) + "\n")
                f.flush()
            except OSError:   # a full disk: no torn line is left behind for --resume to meet
                f.truncate(size)
                raise
        step = metrics["epoch"]
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def write_curves(self, final: bool = True) -> Path | None:
        """Loss and accuracy against epoch, train and val, in one PNG (when `final`, or when
        the last redraw is CURVES_EVERY_S old: short epochs should not wait on matplotlib)."""
        if not self.history or (not final and time.monotonic() - self.curves_written < CURVES_EVERY_S):
            return None
        self.curves_written = time.monotonic()
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        epochs = [m["epoch"] for m in self.history]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        for split, style in (("train", "-"), ("val", "--")):
            ax_loss.plot(epochs, [m[f"{split}_loss"] for m in self.history], style, label=split)
            ax_acc.plot(epochs, [m[f"{split}_acc"] for m in self.history], style, label=split)
        ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
        ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(self.run_dir.name)
        fig.tight_layout()
        out = self.run_dir / CURVES
        try:
            with replacing(out) as (tmp,):
                fig.savefig(tmp, dpi=100)
        finally:
            plt.close(fig)
        return out

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The readable lines of a metrics.jsonl that name an integer epoch, in file order (a torn
    or foreign line is skipped); [] when the file is missing."""
    lines: list[dict[str, Any]] = []
    if Path(path).exists():
        for text in Path(path).read_text(errors="replace").splitlines():
            try:   # capped: a line nested 200,000 deep is skipped, not a RecursionError
                line = loads_json(text, "a metrics line", max_bytes=MAX_LINE_BYTES)
            except ValueError:
                continue
            if isinstance(line, dict) and isinstance(line.get("epoch"), int):
                lines.append(line)
    return lines


def resumed_history(path: Path, epoch: int,
                    recorded: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The metrics lines of epochs 1..`epoch` (what last.pt holds) for a resumed run.

    A process killed while appending leaves a torn last line; lines after `epoch` were
    written after last.pt and are redone now. Unreadable lines are dropped, each epoch is kept
    once (its last line), and an epoch missing at the end is rebuilt from last.pt's own
    metrics, so the file is again exactly one line per epoch."""
    by_epoch = {m["epoch"]: m for m in read_metrics(path) if 1 <= m["epoch"] <= epoch}
    if epoch not in by_epoch and recorded and recorded.get("epoch") == epoch:
        by_epoch[epoch] = dict(recorded)
    return [by_epoch[e] for e in sorted(by_epoch)]


def require_loggers(names: list[str]) -> None:
    """Import the optional logging packages up front, so a missing one fails before training."""
    for name in names:
        _import_logger(name)


def _import_logger(name: str):
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            return SummaryWriter
        import wandb
        return wandb
    except ImportError:
        raise ConfigError(f"--log {name} needs the {name} package, which is not installed; run "
                          f"`pip install {name}` or drop --log {name}.") from None


def _tensorboard(run_dir: Path):
    return _import_logger("tensorboard")(log_dir=str(run_dir / "tensorboard"))


def _wandb(run_dir: Path, cfg, config_dict: dict[str, Any], resume: bool):
    wandb = _import_logger("wandb")
    # Offline by default: no account or network needed; `wandb sync runs/<name>/wandb/offline-*`
    # uploads later. WANDB_MODE in the environment still wins, as wandb documents.
    mode = os.environ.get("WANDB_MODE", cfg.wandb_mode)
    return wandb.init(project=cfg.wandb_project, name=run_dir.name, dir=str(run_dir),
                      config=config_dict, mode=mode, id=_wandb_id(run_dir),
                      resume="allow" if resume else None, settings=_wandb_settings(wandb, cfg))


def _wandb_settings(wandb, cfg):
    """--quiet silences wandb's banners and run summary too, unless WANDB_SILENT is set (the
    user's choice wins). As a per-run setting rather than by setting WANDB_SILENT: wandb reads
    its environment once per process, and warns when it changes after that."""
    if cfg.quiet and "WANDB_SILENT" not in os.environ:
        return wandb.Settings(silent=True)
    return None


def _wandb_id(run_dir: Path) -> str:
    """A stable run id so a resumed run continues the same W&B run."""
    path = run_dir / "wandb_id.txt"
    if path.exists():
        return path.read_text().strip()
    import uuid
    run_id = uuid.uuid4().hex[:12]
    write_atomic(path, run_id + "\n")   # never through a link planted at the name
    return run_id


class Progress:
    """A tqdm bar per epoch plus one summary line per epoch; silent when disabled."""

    def __init__(self, enabled: bool, total_epochs: int) -> None:
        self.enabled = enabled
        self.total_epochs = total_epochs
        self.bar = None

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm
        self.bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch}/{self.total_epochs}",
                        unit="step", leave=False, dynamic_ncols=True, file=sys.stderr,
                        disable=None)  # None: no live bar when stderr is not a terminal (CI logs)

    def update(self, steps: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(postfix, refresh=False)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, text: str) -> None:
        if self.enabled:
            from tqdm.auto import tqdm
            tqdm.write(text, file=sys.stdout)
