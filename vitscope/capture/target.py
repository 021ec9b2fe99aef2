"""Which class a capture explains: --target pred | label | INDEX, checked against the data."""
from __future__ import annotations

import numpy as np

from vitscope.capture.objective import feature_model_sentence, parse_objective
from vitscope.errors import DumpError

TARGETS = ("pred", "label")         # besides a class index: what --target may name


def num_classes(model) -> int:
    """Outputs of a hooked model's head (its config says; adapters carry one too)."""
    return int(model.cfg.num_classes)


def parse_target(target, classes: int):
    """`--target` text or value -> "pred", "label", a class index, an int64 array, or an
    Objective (similarity:IMAGE, text:PROMPT, text-classes: vitscope.capture.objective);
    DumpError in one sentence for anything else (e.g. `--target 99` for a 10-class model, or
    any class target for a model without a class head: `classes` 0)."""
    objective = parse_objective(target)
    if objective is not None:
        return objective
    if classes == 0:
        shown = "explicit" if isinstance(target, np.ndarray) else target
        raise DumpError(feature_model_sentence(shown))
    if isinstance(target, np.ndarray):
        arr = np.asarray(target)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DumpError(f"An explicit target must be a 1-D integer array over the split, got "
                            f"{arr.dtype} of shape {arr.shape}.")
        return arr.astype(np.int64)
    text = str(target).strip().lower()
    if text in TARGETS:
        return text
    try:
        index = int(text)
    except ValueError:
        raise DumpError(f"--target must be pred, label, a class index 0–{classes - 1}, "
                        f"similarity:IMAGE, text:PROMPT or text-classes, got {target!r}.") \
            from None
    if not 0 <= index < classes:
        raise DumpError(f"--target {index} is not a class of this model, which has {classes} "
                        f"classes (0–{classes - 1}); use pred, label or an index in that range.")
    return index


def _check_target(spec, labels: np.ndarray | None, explicit: np.ndarray | None, dataset) -> None:
    """--target label needs a known label for every captured image; an explicit array needs
    a class for each."""
    if isinstance(spec, str) and spec == "label" and labels is not None and (labels < 0).any():
        missing = int((labels < 0).sum())
        raise DumpError(f"--target label needs a label for every image, but {missing} of the "
                        f"{len(labels)} images of '{dataset.spec}' have none the model knows; "
                        f"use --target pred or a class index.")
    if explicit is not None and (explicit < 0).any():
        raise DumpError(f"The explicit target has no class for {int((explicit < 0).sum())} of "
                        f"the captured images; give a class index for each.")
