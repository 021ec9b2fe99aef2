"""TrainConfig: every training setting in one dataclass, filled from a TOML recipe, CLI flags
and `--set key=value` overrides (in that order, later wins).

A recipe is flat TOML whose keys are TrainConfig fields, plus an optional `[model]` table of
model-config fields applied on top of the `preset`:

    preset = "vit-lite"        # a vitscope.model.vit preset, or "cnn" for the SmallCNN baseline
    data = "cifar10"
    epochs = 40
    [model]
    depth = 6                  # -> --set model.depth=6

`model.num_classes` always follows the dataset's classes; `model.image_size` is the size the
data are loaded at.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitscope._internal.bounded import check_text
from vitscope._internal.devices import DEVICES
from vitscope.errors import ConfigError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (setup.cfg requires it there)
    import tomli as tomllib
from vitscope.model.vit import PRESETS, ModelConfig

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
SET_MAX_BYTES = 1 << 20   # a recipe or one --set value
CNN_PRESET = "cnn"

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENTS = ("none", "trivial", "randaugment")
PAD_MODES = ("reflect", "zeros")
LOGGERS = ("tensorboard", "wandb")
WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class TrainConfig:
    # ---- run ----
    name: str = ""                 # run folder name under runs_dir; "" = recipe name or "<preset>-<data>"
    runs_dir: str = "runs"         # where run folders are created
    seed: int = 0                  # seeds model init, data order and augmentation (exactly reproducible on CPU)
    device: str = "auto"           # auto (cuda, then mps, then cpu) | cpu | cuda | mps
    precision: str = "auto"        # auto: bf16 autocast on CUDA (fp16+GradScaler without bf16), fp32 elsewhere
    compile: bool = False          # torch.compile the model (worth it on a GPU; slow to start on a CPU)
    quiet: bool = False            # no progress bar and no per-epoch lines
    log: list[str] = field(default_factory=list)  # extra loggers: "tensorboard", "wandb"
    wandb_project: str = "vitscope"  # W&B project name (with log = ["wandb"])
    wandb_mode: str = "offline"    # offline (sync later with `wandb sync`) | online | disabled

    # ---- data ----
    data: str = "shapes"           # shapes | cifar10 | cifar100 | folder:PATH (an ImageFolder with train/ and val/)
    data_dir: str = "./data"       # where cifar10/cifar100 are downloaded or found
    val_split: float | None = None  # carve this fraction of train as validation (None: the dataset's own split)
    train_subset: int | None = None  # use only the first N training images (after a seeded shuffle), for quick runs
    val_subset: int | None = None    # likewise for validation

    # ---- model ----
    preset: str = "vit-tiny"       # vitscope.model.vit preset name, or "cnn" for the SmallCNN baseline
    model: Any = None              # the ModelConfig (or CNNConfig) built from preset + [model] overrides

    # ---- optimisation ----
    epochs: int = 10               # passes over the training set
    batch_size: int = 128          # global batch (split evenly across DDP ranks)
    lr: float = 1e-3               # peak AdamW learning rate, reached after warmup
    min_lr: float = 1e-5           # learning rate at the end of the cosine decay
    warmup_epochs: float = 1.0     # linear warmup length (fractions allowed), counted in optimizer steps
    weight_decay: float = 0.05     # AdamW decay on weights; never on norms, biases, cls_token, pos_embed
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    grad_clip: float = 1.0         # clip the global gradient norm to this (0 = off)
    label_smoothing: float = 0.1   # cross-entropy label smoothing

    # ---- augmentation (batched on the device, on uint8 then float images) ----
    crop_padding: int = 4          # random crop after padding each side by this many pixels (0 = off)
    pad_mode: str = "reflect"      # reflect | zeros: how the crop padding is filled
    flip: bool = True              # random horizontal flip
    augment: str = "none"          # none | trivial (TrivialAugment) | randaugment
    randaug_ops: int = 2           # RandAugment: ops applied per image
    randaug_magnitude: int = 9     # RandAugment: magnitude on torchvision's 0..30 scale
    mixup_alpha: float = 0.0       # mixup Beta(alpha, alpha) (0 = off)
    cutmix_alpha: float = 0.0      # cutmix Beta(alpha, alpha) (0 = off); with both on, each batch picks one
    mix_prob: float = 1.0          # probability that a batch is mixed at all (when mixup or cutmix is on)

    # ---- evaluation, checkpoints and stopping ----
    ema: bool = False              # keep an exponential moving average of the weights; evaluate and save it
    ema_decay: float = 0.999       # EMA decay per step (warmed up as min(decay, (1+t)/(10+t)))
    patience: int = 0              # stop after this many epochs without a better val_acc (0 = never)
    eval_batch_size: int = 1024    # batch size for validation
    eval_flip_tta: bool = False    # average the logits of each val image and its mirror image
    save_every: int = 1            # write last.pt every N epochs (and always at the end or on a signal)

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = build_model_config(self.preset, {})
        elif isinstance(self.model, dict):
            self.model = build_model_config(self.preset, self.model)
        self.validate()

    @property
    def arch(self) -> str:
        """The checkpoint architecture: "cnn" for the CNN baseline, else "vit"."""
        return "cnn" if self.preset == CNN_PRESET else "vit"

    def validate(self) -> None:
        """Raise ConfigError naming the field and its allowed values."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{f.name} must be a finite number, got {value!r}.")
        if not 0 <= self.seed < 2 ** 63:
            raise ConfigError(f"seed must be an integer >= 0 (and below 2**63), got {self.seed!r}.")
        choices = {"device": DEVICES, "precision": PRECISIONS, "augment": AUGMENTS,
                   "pad_mode": PAD_MODES, "wandb_mode": WANDB_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got "
                                  f"{getattr(self, name)!r}.")
        for item in self.log:
            if item not in LOGGERS:
                raise ConfigError(f"log entries must be among {', '.join(LOGGERS)}, got {item!r}.")
        if self.preset != CNN_PRESET and self.preset not in PRESETS:
            raise ConfigError(_unknown("preset", self.preset, [*PRESETS, CNN_PRESET]))
        for name in ("epochs", "batch_size", "eval_batch_size", "save_every", "randaug_ops"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        for name in ("lr", "ema_decay"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}.")
        for name in ("min_lr", "warmup_epochs", "weight_decay", "grad_clip", "mixup_alpha",
                     "cutmix_alpha", "crop_padding", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}.")
        for name in ("label_smoothing", "mix_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)!r}.")
        if not 0 <= self.randaug_magnitude <= 30:
            raise ConfigError(f"randaug_magnitude must be in 0..30 (torchvision's scale), got "
                              f"{self.randaug_magnitude!r}.")
        if self.ema_decay >= 1:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}.")
        if self.val_split is not None and not 0 < self.val_split < 1:
            raise ConfigError(f"val_split must be in (0, 1) or none, got {self.val_split!r}.")
        for name in ("train_subset", "val_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive number of images or none, got "
                                  f"{getattr(self, name)!r}.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}.")
        if self.name and (Path(self.name).name != self.name or self.name in (".", "..")):
            raise ConfigError(f"name must be a plain folder name without '/', got {self.name!r}; "
                              f"use runs_dir to choose the parent folder.")
        if getattr(self.model, "in_channels", 3) != 3:
            raise ConfigError(f"model.in_channels must be 3: training data are always loaded as "
                              f"RGB images, got {self.model.in_channels!r}.")
        if self.crop_padding >= self.model.image_size:
            raise ConfigError(f"crop_padding ({self.crop_padding}) must be smaller than the image "
                              f"size ({self.model.image_size}).")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Rebuild from to_dict() output (e.g. a checkpoint's train_config), each field checked
        against its type like a recipe value (keys that are not fields are ignored)."""
        hints = _field_types(cls)
        return cls(**{k: v if k == "model" else coerce(k, hints[k], v)
                      for k, v in data.items() if k in hints})


def _unknown(what: str, value: str, known: list[str], where: str = "") -> str:
    close = difflib.get_close_matches(value, known, 3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown {what} {value!r}{where}.{hint} Known: {', '.join(known)}."


def model_config_class(preset: str) -> type:
    if preset == CNN_PRESET:
        from vitscope.model.cnn import CNNConfig
        return CNNConfig
    return ModelConfig


def build_model_config(preset: str, overrides: dict[str, Any]) -> Any:
    """The preset's config with `overrides` applied (unknown fields are rejected by from_dict)."""
    if preset != CNN_PRESET and preset not in PRESETS:
        raise ConfigError(_unknown("preset", preset, [*PRESETS, CNN_PRESET]))
    base = {} if preset == CNN_PRESET else dict(PRESETS[preset])
    return model_config_class(preset).from_dict({**base, **overrides})


def model_overrides(preset: str, model: Any) -> dict[str, Any]:
    """The fields of `model` (a ModelConfig or CNNConfig) that differ from `preset`'s own,
    except num_classes, which always follows the data."""
    base = build_model_config(preset, {}).to_dict()
    mine = model.to_dict()
    changed = {k: v for k, v in mine.items() if k != "num_classes" and base.get(k) != v}
    if mine.get("stem") == "patch":
        changed.pop("stem_channels", None)   # unused without the ConvStem
    return changed


def describe_model(preset: str, model: Any) -> str:
    """"vit-tiny", or "vit-tiny with embed_dim=64, depth=3" when fields were overridden: a
    model whose widths were changed is not the preset its name says."""
    try:
        changed = model_overrides(preset, model)
    except (ConfigError, AttributeError):
        return preset
    if not changed:
        return preset
    return f"{preset} with " + ", ".join(f"{k}={v}" for k, v in changed.items())


# ---------------------------------------------------------------------------------------------
# Recipes and --set overrides


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def find_recipe(spec: str) -> Path:
    """A recipe path, or the name of a shipped recipe (`shapes-quick`)."""
    if not spec.strip():  # Path("") is the current folder: never a silent default run
        raise ConfigError(f"--config got an empty recipe name; pass a shipped recipe "
                          f"({', '.join(shipped_recipes())}) or a TOML file, or leave it out.")
    path = Path(spec)
    if path.is_file():
        return path
    if path.suffix in ("", ".toml") and path.parent == Path("."):
        shipped = RECIPES_DIR / f"{path.stem}.toml"
        if shipped.is_file():
            return shipped
    close = difflib.get_close_matches(path.stem, shipped_recipes(), 1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"No recipe '{spec}': it is neither a file nor a shipped recipe.{hint} "
                      f"Shipped recipes: {', '.join(shipped_recipes())}.")


def read_recipe(spec: str) -> dict[str, Any]:
    """Parse a recipe TOML into raw values (validated later, when the config is built)."""
    path = find_recipe(spec)
    text = path.read_text()
    try:
        check_text(text, f"recipe '{path}'", max_bytes=SET_MAX_BYTES)
    except ValueError as e:
        raise ConfigError(f"{e}; fix the file.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Recipe '{path}' is not valid TOML ({e}); fix the file.") from None
    check_recipe_keys(path, data)
    data.setdefault("name", "")  # an explicit name in the recipe wins over the file name
    if not data["name"]:
        data["name"] = path.stem
    return data


def check_recipe_keys(path: Path, data: dict[str, Any]) -> None:
    """Reject a key no TrainConfig field (or [model] field of the recipe's preset) has, naming
    the recipe file: make_config alone could not tell a recipe typo from a --set typo."""
    where = f" in recipe '{path}' (fix or remove it there)"
    known = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    model_keys: dict[str, Any] = {}
    for key, value in data.items():
        if key == "model" and isinstance(value, dict):
            model_keys.update(value)
        elif key.startswith("model."):
            model_keys[key[len("model."):]] = value
        elif key not in known:
            raise ConfigError(_unknown("setting", key, known + ["[model] table"], where))
    preset = data.get("preset", TrainConfig.preset)
    if not isinstance(preset, str) or (preset != CNN_PRESET and preset not in PRESETS):
        return  # make_config names the bad preset and the known ones
    fields = list(_field_types(model_config_class(preset)))
    for key in model_keys:
        if key not in fields:
            raise ConfigError(_unknown("[model] field", key, fields, f" in recipe '{path}' (for "
                                       f"preset {preset!r}; fix or remove it there)"))


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(key: str, hint: Any, value: Any) -> Any:
    """Convert a TOML- or CLI-parsed value to the field's type, or raise ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, (str, int)) and str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}.")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}.")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}.")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}.")
    if origin is list:
        if isinstance(value, str):  # --set log=tensorboard,wandb
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value)]
    return value


def parse_value(text: str, key: str = "value") -> Any:
    """A --set value: TOML syntax when it parses (3, 1e-3, true, [64, 128]), else the raw text.
    Values nested deeper than config fields ever are (the TOML parser recurses once per
    level) or longer than 1 MB are refused before parsing."""
    try:
        check_text(text, f"--set {key}", max_bytes=SET_MAX_BYTES)
    except ValueError as e:
        raise ConfigError(f"{e}; config values are numbers, strings or flat lists.") from None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["epochs=3", "model.depth=4"]` -> {"epochs": 3, "model.depth": 4} (values not yet typed)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. --set epochs=5 or --set "
                              f"model.depth=6), got {item!r}.")
        out[key.strip()] = parse_value(value.strip(), key.strip())
    return out


def make_config(recipe: dict[str, Any] | None = None, *, preset: str | None = None,
                overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build a TrainConfig: defaults <- recipe <- overrides (flat keys; `model.x` for the model).

    `preset` (the --model flag, or a `preset` override) replaces the recipe's preset AND its
    [model] table, since model fields of one preset rarely suit another; `model.x` overrides
    still apply on top.
    """
    raw: dict[str, Any] = {}
    model_raw: dict[str, Any] = {}
    overrides = dict(overrides or {})
    if preset is None and "preset" in overrides:  # --set preset=X changes the model like --model X
        preset = overrides.pop("preset")

    def split(source: dict[str, Any]) -> None:
        for key, value in source.items():
            if key == "model" and isinstance(value, dict):
                model_raw.update(value)
            elif key.startswith("model."):
                model_raw[key[len("model."):]] = value
            else:
                raw[key] = value

    split(recipe or {})
    if preset is not None:
        raw["preset"] = preset
        model_raw.clear()
    split(overrides)
    train_types = _field_types(TrainConfig)
    known = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    typed: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(_unknown("setting", key, known + ["model.<field>"]))
        typed[key] = coerce(key, train_types[key], value)
    name = typed.get("preset", TrainConfig.preset)
    if name != CNN_PRESET and name not in PRESETS:
        raise ConfigError(_unknown("preset", name, [*PRESETS, CNN_PRESET]))
    cfg_cls = model_config_class(name)
    model_types = _field_types(cfg_cls)
    model_typed = {}
    for key, value in model_raw.items():
        if key not in model_types:
            raise ConfigError(_unknown(f"model field for preset {name!r}:", f"model.{key}",
                                       [f"model.{k}" for k in model_types]))
        model_typed[key] = coerce(f"model.{key}", model_types[key], value)
    typed["model"] = build_model_config(name, model_typed)
    return TrainConfig(**typed)
