"""Evaluate a classifier on an ImageDataset, and predict classes for loose images.

Used by `vitscope eval` / `vitscope predict`, and reusable by the trainer (for example for the
confusion matrix of the best checkpoint). Inputs are fed exactly as in training: uint8 images
moved to the device in batches, then `vitscope.data.to_model_input` with the checkpoint's
normalisation.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitscope.data import ImageDataset, to_model_input
from vitscope._internal.devices import resolve_device  # noqa: F401  (re-exported)
from vitscope.errors import ConfigError, DataError

def _autocast(device: torch.device):
    """bf16 autocast on CUDA GPUs that support it; full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, mean, std, *,
                   batch_size: int = 256, device: torch.device | str = "cpu",
                   tta: bool = False) -> torch.Tensor:
    """N×C float32 logits (on the CPU) for N×H×W×3 uint8 images.

    `tta=True` averages the logits of each image and its horizontal mirror.
    """
    device = torch.device(device)
    model.eval().to(device)
    images = torch.as_tensor(images)
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        x = to_model_input(batch, mean, std)
        with _autocast(device):
            logits = model(x).float()
            if tta:
                logits = (logits + model(x.flip(-1)).float()) / 2
        out.append(logits.cpu())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def evaluate(model: nn.Module, dataset: ImageDataset, mean, std, *, classes: list[str] | None = None,
             batch_size: int = 256, device: torch.device | str = "cpu", tta: bool = False,
             limit: int | None = None) -> dict[str, Any]:
    """Accuracy, mean cross-entropy loss, per-class accuracy and the confusion matrix.

    `classes` are the model's output classes (checkpoint order); the dataset's labels are mapped
    onto them by name, so a folder whose classes are a reordering of the model's still scores
    correctly. Returns plain data (JSON-ready):
    {"n", "accuracy", "loss", "per_class_accuracy": {name: acc or None}, "confusion": C×C
    (rows = true class, columns = predicted), "classes", "tta"}.
    """
    classes = list(classes or dataset.classes)
    labels, logits = predictions(model, dataset, mean, std, classes=classes,
                                 batch_size=batch_size, device=device, tta=tta, limit=limit)
    return summarize(labels, logits, classes, tta=tta)


def predictions(model: nn.Module, dataset: ImageDataset, mean, std, *,
                classes: list[str] | None = None, batch_size: int = 256,
                device: torch.device | str = "cpu", tta: bool = False,
                limit: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """(labels in the model's class order, N×C logits) of the dataset's first `limit` images:
    what `evaluate` scores, for callers that need every image's prediction (`vitscope
    compare` pairs them image by image)."""
    if not dataset.labeled:
        raise DataError(f"The dataset '{dataset.spec}' ({dataset.split}) has no labels, so "
                        f"accuracy cannot be measured; use `vitscope predict` for unlabeled images.")
    classes = list(classes or dataset.classes)
    labels = _map_labels(dataset, classes)
    images = dataset.images
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be a positive number of images, got {limit}.")
        images, labels = images[:limit], labels[:limit]
    logits = predict_logits(model, images, mean, std, batch_size=batch_size, device=device, tta=tta)
    if logits.shape[1] != len(classes):
        raise DataError(f"The model has {logits.shape[1]} outputs but {len(classes)} classes were "
                        f"given ({', '.join(classes[:5])}...); evaluate it on the dataset it was "
                        f"trained for.")
    return labels, logits


def summarize(labels: np.ndarray, logits: torch.Tensor, classes: list[str], *,
              tta: bool = False) -> dict[str, Any]:
    """The `evaluate` result of given labels and logits."""
    target = torch.from_numpy(labels)
    loss = F.cross_entropy(logits, target).item()
    pred = logits.argmax(1).numpy()
    C = len(classes)
    confusion = np.bincount(labels * C + pred, minlength=C * C).reshape(C, C)
    support = confusion.sum(1)
    per_class = {name: (float(confusion[i, i] / support[i]) if support[i] else None)
                 for i, name in enumerate(classes)}
    return {"n": int(len(labels)), "accuracy": float((pred == labels).mean()), "loss": float(loss),
            "per_class_accuracy": per_class, "confusion": confusion.tolist(), "classes": classes,
            "tta": bool(tta)}


def _map_labels(dataset: ImageDataset, classes: list[str]) -> np.ndarray:
    """Dataset labels re-indexed into the model's class order (by class name)."""
    if dataset.classes == classes:
        return dataset.labels
    missing = sorted(set(dataset.classes) - set(classes))
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise DataError(f"The dataset '{dataset.spec}' has classes the model does not know "
                        f"({shown}); the model knows {', '.join(classes[:10])}"
                        f"{' ...' if len(classes) > 10 else ''}; evaluate on data with the "
                        f"model's classes.")
    index = {name: i for i, name in enumerate(classes)}
    lookup = np.asarray([index[name] for name in dataset.classes], dtype=np.int64)
    return lookup[dataset.labels]


def plot_confusion(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Save the confusion matrix of an `evaluate` result as a PNG (rows normalised to 1)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    confusion = np.asarray(result["confusion"], dtype=np.float64)
    classes = result["classes"]
    C = len(classes)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    side = min(4 + 0.45 * C, 14)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if C <= 40:  # beyond that the names overlap: the matrix alone still shows the structure
        ax.set_xticks(range(C), classes, rotation=90 if C > 10 else 45, ha="center" if C > 10 else "right",
                      fontsize=8 if C > 20 else 10)
        ax.set_yticks(range(C), classes, fontsize=8 if C > 20 else 10)
    if C <= 20:
        for i in range(C):
            for j in range(C):
                if confusion[i, j]:
                    ax.text(j, i, f"{int(confusion[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"accuracy {result['accuracy']:.2%} on {result['n']} images")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
