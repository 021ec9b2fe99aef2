"""Checkpoints: one `torch.save` of plain data, loaded with `weights_only=True`.

    {"format": "vitscope-checkpoint", "version": 1, "arch": "vit",
     "model_config": {...}, "train_config": {...}, "classes": [...],
     "state_dict": {...}, "metrics": {...}, "vitscope_version": "..",
     "resume": {...}}            # optional: optimizer/scheduler/EMA/RNG state for --resume

No pickled classes: a checkpoint downloaded from the internet cannot run code when loaded.
The model is rebuilt from the file alone (`load_model`).
"""
from __future__ import annotations

import importlib
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitscope import __version__
from vitscope.model.adapters import FAMILIES
from vitscope._internal.text import error_summary, short_repr
from vitscope.errors import CheckpointError, ConfigError
from vitscope._internal.files import GuardedFile, replacing, write_failure

FORMAT = "vitscope-checkpoint"
VERSION = 1

# arch name -> (module, config class, model class); imported only when a checkpoint needs it.
# "timm", "torchvision" and "hf" are foreign ViTs written by `vitscope import` (adapters).
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "vit": ("vitscope.model.vit", "ModelConfig", "ViT"),
    "cnn": ("vitscope.model.cnn", "CNNConfig", "SmallCNN"),
    **FAMILIES,
}


@dataclass
class Checkpoint:
    path: Path
    arch: str
    model_config: Any                     # a ModelConfig (or the arch's config dataclass)
    state_dict: dict[str, torch.Tensor]
    classes: list[str] = field(default_factory=list)
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    vitscope_version: str = ""
    resume: dict[str, Any] | None = None  # optimizer/scheduler/EMA/RNG state, when saved

    def build_model(self) -> nn.Module:
        """The model with its weights (float32, eval mode, on the CPU)."""
        _, model_cls = _arch(self.arch, self.path)
        model = model_cls(self.model_config)
        # Named keys first; torch's own message (first line) for anything else it refuses.
        reason = _state_dict_mismatch(model.state_dict(), self.state_dict)
        if not reason:
            try:
                model.load_state_dict(self.state_dict)
            except RuntimeError as e:
                reason = str(e).strip().splitlines()[0]
        if reason:
            raise CheckpointError(f"'{self.path}' has weights that do not fit its model_config "
                                  f"({reason}); the file was edited or written by another "
                                  f"tool.")
        return model.float().eval()


def _state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, Any],
                         shown: int = 3) -> str:
    """The first few missing, unexpected and wrongly shaped keys, or "" when all fit."""
    def names(keys: list[str]) -> str:
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [k for k in expected if k in given and isinstance(given[k], torch.Tensor)
             and given[k].shape != expected[k].shape]
    not_tensors = [k for k in expected if k in given and not isinstance(given[k], torch.Tensor)]
    parts = []
    if missing:
        parts.append(f"missing {names(missing)}")
    if unexpected:
        parts.append(f"unexpected {names(unexpected)}")
    if wrong:
        shapes = [f"{k} is {tuple(given[k].shape)} instead of {tuple(expected[k].shape)}"
                  for k in wrong[:shown]]
        more = f" and {len(wrong) - shown} more" if len(wrong) > shown else ""
        parts.append("shape of " + ", ".join(shapes) + more)
    if not_tensors:
        parts.append(f"not a tensor: {names(not_tensors)}")
    return "; ".join(parts)


def _arch(name: str, path: Path | str) -> tuple[type, type]:
    if name not in ARCHITECTURES:
        raise CheckpointError(f"'{path}' has arch '{name}', which this vitscope does not know "
                              f"(known: {', '.join(ARCHITECTURES)}); upgrade vitscope.")
    module, cfg_name, model_name = ARCHITECTURES[name]
    mod = importlib.import_module(module)
    return getattr(mod, cfg_name), getattr(mod, model_name)


def save_checkpoint(path: str | Path, model: nn.Module, *, model_config: Any = None,
                    arch: str = "vit", classes: list[str] | None = None,
                    train_config: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None, resume: dict[str, Any] | None = None,
                    half: bool = False) -> Path:
    """Write a checkpoint atomically (temporary file, fsync, then rename): a crash or power loss
    never leaves a truncated or empty file at `path`. `half=True` stores floating weights as
    fp16 (half the size)."""
    path = Path(path)
    cfg = model_config if model_config is not None else model.cfg
    state = {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(model).state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "model_config": cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg),
        "train_config": _plain(train_config or {}),
        "classes": list(classes or []),
        "state_dict": state,
        "metrics": _plain(metrics or {}),
        "vitscope_version": __version__,
    }
    if resume is not None:
        payload["resume"] = resume
    path.parent.mkdir(parents=True, exist_ok=True)
    # On disk before the rename (replacing fsyncs): otherwise a power loss can keep the
    # rename but not the data, leaving an empty checkpoint where the previous good one was.
    hint = "the file that was there is unchanged" if path.exists() else "no partial file is left"
    with replacing(path, hint=hint) as (tmp,):
        f = GuardedFile(tmp)   # knows why a write failed; torch only says "unexpected pos"
        try:
            torch.save(payload, f)
            f.sync()
        except Exception:
            if f.error is None:
                raise
        finally:
            f.close()
        if f.error is not None:   # the real cause, not torch's "unexpected pos 156352"
            raise write_failure(path, f.error).with_hint(hint) from None
    return path


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _plain(value: Any) -> Any:
    """Convert config values to plain data so `weights_only=True` can load them."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_raw(path: str | Path) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` with one clear sentence for each failure."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"No checkpoint at '{path}': the file does not exist; expected a "
                              f"vitscope checkpoint such as runs/<name>/best.pt from `vitscope train`.")
    if path.is_dir():
        raise CheckpointError(f"'{path}' is a directory; expected a vitscope checkpoint file "
                              f"such as {path / 'best.pt'}.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"'{path}' is empty (0 bytes), so it is truncated or was never "
                              f"written; expected a vitscope checkpoint.")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith((b"PK", b"\x80")):  # neither a torch zip archive nor a pickle
        if head == HDF5_SIGNATURE:  # a dump passed where a checkpoint goes: an easy slip
            raise CheckpointError(f"'{path}' is an HDF5 file (an activation dump?), not a "
                                  f"checkpoint; render a dump with `vitscope analyze --dump "
                                  f"{path} --plugin NAME`, or inspect it with `vitscope dump "
                                  f"info {path}`.")
        raise CheckpointError(f"'{path}' is not a torch file (neither a torch zip archive nor a "
                              f"pickle: it starts with {head[:8]!r}); expected a vitscope "
                              f"checkpoint such as runs/<name>/best.pt.")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Only zip archives and pickles get here (see the signature check above).
        unsafe = "weights only load failed" in str(e).lower()
        if unsafe and "Unsupported operand" in str(e) and not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"'{path}' is a raw pickle (or an old-style torch file with pickle protocol 4+), "
                f"which torch's safe loader cannot read and vitscope does not unpickle because "
                f"that can run arbitrary code; if you trust it, load it yourself and re-save it "
                f"with torch.save (zip format) or vitscope.model.checkpoint.save_checkpoint.") from None
        if unsafe:
            raise CheckpointError(
                f"'{path}' holds pickled Python objects ({_unsafe_reason(e)}), which vitscope "
                f"refuses to load because unpickling can run arbitrary code; expected a vitscope "
                f"checkpoint of plain tensors and data.") from None
        raise CheckpointError(f"'{path}' is truncated or corrupt (it cannot be read as a torch "
                              f"file: {error_summary(e)}); expected a vitscope checkpoint.") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError... for damaged files
        raise CheckpointError(f"'{path}' is truncated or corrupt (it cannot be read as a torch "
                              f"file: {error_summary(e)}); expected a vitscope checkpoint written "
                              f"by `vitscope train`.") from None
    return obj


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a vitscope checkpoint (no code runs; see module docstring)."""
    path = Path(path)
    obj = read_raw(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a vitscope checkpoint; "
                              f"expected a dict with format='{FORMAT}'.")
    fmt = obj.get("format")
    if fmt != FORMAT:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(
                f"'{path}' holds a plain state_dict ({len(obj)} tensors) with no model config, not "
                f"a vitscope checkpoint; expected format='{FORMAT}' (wrap the weights with "
                f"vitscope.model.checkpoint.save_checkpoint).")
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise CheckpointError(f"'{path}' is not a vitscope checkpoint (format={fmt!r}, top-level "
                              f"keys: {keys}); expected format='{FORMAT}'.")
    version = obj.get("version")
    if not isinstance(version, int):
        raise CheckpointError(f"'{path}' has no valid format version ({version!r}); expected an "
                              f"integer version of a vitscope checkpoint.")
    if version > VERSION:
        raise CheckpointError(
            f"'{path}' is a vitscope checkpoint of format version {version}, newer than this "
            f"vitscope {__version__} reads (version {VERSION}); upgrade vitscope to load it.")
    missing = [k for k in ("model_config", "state_dict") if not isinstance(obj.get(k), dict)]
    if missing:
        raise CheckpointError(f"'{path}' is an incomplete vitscope checkpoint (missing "
                              f"{', '.join(missing)}); it was not written by save_checkpoint.")
    _check_types(path, obj)
    arch = obj.get("arch", "vit")
    cfg_cls, _ = _arch(arch, path)
    try:  # the config dataclass checks types and size bounds before anything is allocated
        cfg = cfg_cls.from_dict(obj["model_config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"'{path}' has an invalid model_config: {e}") from None
    _check_classes(path, obj.get("classes") or [], cfg)
    _check_train_config(path, obj.get("train_config") or {})
    _check_finite(path, obj["state_dict"])
    return Checkpoint(path=path, arch=arch, model_config=cfg, state_dict=obj["state_dict"],
                      classes=list(obj.get("classes") or []),
                      train_config=dict(obj.get("train_config") or {}),
                      metrics=dict(obj.get("metrics") or {}),
                      vitscope_version=str(obj.get("vitscope_version", "")),
                      resume=obj.get("resume"))


def _check_types(path: Path, obj: dict[str, Any]) -> None:
    """The optional fields, where present, have the types the rest of vitscope relies on."""
    expected = {"arch": (str, "a string"), "train_config": (dict, "a dict"),
                "metrics": (dict, "a dict"), "classes": ((list, tuple), "a list of class names"),
                "resume": (dict, "a dict"), "vitscope_version": (str, "a string")}
    for key, (kind, what) in expected.items():
        value = obj.get(key)
        if value is not None and not isinstance(value, kind):
            raise CheckpointError(f"'{path}' has an invalid '{key}' field (a {type(value).__name__}, "
                                  f"expected {what}); the file was edited or written by another "
                                  f"tool.")
    classes = obj.get("classes") or []
    if not all(isinstance(c, str) for c in classes):
        bad = next(c for c in classes if not isinstance(c, str))
        raise CheckpointError(f"'{path}' has an invalid classes list (it holds {bad!r}, expected "
                              f"class names as strings); the file was edited or written by "
                              f"another tool.")
    if not all(isinstance(k, str) for k in obj["state_dict"]):
        raise CheckpointError(f"'{path}' has a state_dict with keys that are not strings; the "
                              f"file was edited or written by another tool.")


def _check_classes(path: Path, classes: list[str], cfg: Any) -> None:
    """Class names, when stored, name every output of the head: no fewer (predict would index
    past the list), no more (labels would map onto outputs that do not exist)."""
    outputs = getattr(cfg, "num_classes", None)
    if classes and outputs is not None and len(classes) != outputs:
        raise CheckpointError(f"'{path}' lists {len(classes)} class names but its model has "
                              f"{outputs} outputs (model_config.num_classes); the file was "
                              f"edited or written by another tool.")


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _integer(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


# The train_config fields that eval, predict, dump and analyze read, and what each must be:
# checked once here so that no reader meets a string where it needs a number.
TRAIN_CONFIG_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data": (lambda v: isinstance(v, str), "a dataset spec string"),
    "data_dir": (lambda v: isinstance(v, str), "a folder path string"),
    "image_size": (_integer(1, 1 << 16), "a positive integer number of pixels"),
    "seed": (_integer(0, 2 ** 63 - 1), "an integer from 0 to 2**63 - 1"),
    "val_split": (_optional(_fraction), "a fraction between 0 and 1, or null"),
    "train_subset": (_optional(_integer(1, 2 ** 63 - 1)), "a positive number of images, or null"),
    "val_subset": (_optional(_integer(1, 2 ** 63 - 1)), "a positive number of images, or null"),
    "eval_flip_tta": (lambda v: isinstance(v, bool), "true or false"),
    "model": (lambda v: isinstance(v, dict), "a dict"),
}


def _check_train_config(path: Path, tc: dict[str, Any]) -> None:
    from vitscope.data import parse_normalize

    for key, (ok, what) in TRAIN_CONFIG_FIELDS.items():
        if key in tc and not ok(tc[key]):
            raise CheckpointError(f"'{path}' has an invalid train_config['{key}'] "
                                  f"({short_repr(tc[key], 60)}, expected {what}); the file was edited or "
                                  f"written by another tool.")
    if tc.get("normalize") is not None:
        try:
            parse_normalize(tc["normalize"])
        except ValueError as e:
            raise CheckpointError(f"'{path}' has an invalid train_config['normalize'] ({e}); "
                                  f"inputs normalised with it would be meaningless, so the file "
                                  f"is refused (it was edited or is damaged).") from None


def _check_finite(path: Path, state_dict: dict[str, Any], shown: int = 3) -> None:
    """NaN or infinite weights make every output NaN ("nan%" predictions, a NaN eval loss):
    refused here, once, rather than reported as results."""
    bad = [k for k, v in state_dict.items() if isinstance(v, torch.Tensor)
           and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
        raise CheckpointError(f"'{path}' holds non-finite weights (NaN or infinite values in "
                              f"{', '.join(bad[:shown])}{more}), so every output of its model "
                              f"would be meaningless; it is damaged or comes from a run that "
                              f"diverged, so use an earlier checkpoint.")




def load_model(path: str | Path) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model from a checkpoint file alone: `(model in eval mode, checkpoint)`."""
    ckpt = load_checkpoint(path)
    return ckpt.build_model(), ckpt


def _unsafe_reason(e: Exception) -> str:
    for line in str(e).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            # Keep what was found, not torch's advice to allow-list it (vitscope never does).
            return line.split(" was not an allowed global")[0].strip().rstrip(".")
    return "objects outside the allowed set of tensors and plain data"

