"""Which model the API runs, and giving the user's model back as it was.

`vitscope.explain(model, ...)` takes a vitscope ViT, a checkpoint path, or a timm,
torchvision or Hugging Face ViT object as it is. A foreign object is wrapped in place by its
family's adapter (vitscope.model.adapters: no copy of the weights, no import step) only while
the API runs it, then handed back: the adapter's hooks, swapped classes and fused-attention
flags undone, every module's `training` and every parameter's `requires_grad` as they were,
also after an exception. While it runs the model is in eval mode with `requires_grad` off on
its parameters: gradients are taken with respect to activations only, so no weight gradient
is computed or kept.

Preprocessing comes from the model: the checkpoint's (vitscope's policy or what `vitscope
import` recorded), timm's data config, torchvision's weights metadata, the Hugging Face image
processor's defaults for the model type (or the processor object passed as `processor=`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitscope.data.images import Preprocess
from vitscope.errors import ConfigError
from vitscope.model.hooks import is_hooked

FAMILIES = ("vitscope", "timm", "torchvision", "hf", "hf-clip", "openclip")
HUB_SOURCES = ("timm:", "hf:", "openclip:")   # a model name the API fetches pretrained (_from_hub)
_PACKAGES = {"timm": "timm", "torchvision": "torchvision", "transformers": "hf",
             "open_clip": "openclip"}
_ADAPTERS = {"timm": ("vitscope.model.adapters.timm", "TimmViT"),
             "torchvision": ("vitscope.model.adapters.torchvision", "TorchvisionViT"),
             "hf": ("vitscope.model.adapters.transformers", "HFViT"),
             "hf-clip": ("vitscope.model.adapters.clip", "ClipViT"),
             "openclip": ("vitscope.model.adapters.openclip", "OpenClipViT")}
# image–text classes of transformers: the CLIP/SigLIP adapter (vitscope.model.adapters.clip)
_HF_CLIP = ("CLIPModel", "CLIPVisionModel", "SiglipModel", "SiglipVisionModel")


@dataclass
class Model:
    """A model the API can run: the hooked module and what it knows of inputs and classes."""
    hooked: nn.Module                # vitscope's ViT, or an adapter around the user's object
    family: str                      # one of FAMILIES
    name: str                        # for captions and index.html, e.g. "timm vit_tiny_patch16_224"
    classes: list[str]               # class names ([] when the model has none)
    preprocess: Preprocess           # how a file or PIL image becomes the model's input size
    mean: list[float]
    std: list[float]
    ckpt: Any = None                 # the Checkpoint, for a model loaded from a file
    owner: Any = None                # the object given (or loaded): what caches are keyed on

    @property
    def num_classes(self) -> int:
        return int(self.hooked.cfg.num_classes)

    @property
    def layout(self):
        return self.hooked.token_layout

    @property
    def depth(self) -> int:
        return len(self.hooked.blocks)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.hooked.input_shape[1:])

    @property
    def device(self) -> torch.device:
        return next(self.hooked.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hooked.parameters()).dtype


class ModelSource:
    """What the user passed, opened for each run (`with source.open() as model:`): a path is
    loaded once and kept; an object is wrapped and given back every time."""

    def __init__(self, model: Any, *, classes: Sequence[str] | None = None,
                 preprocess: Preprocess | None = None,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                 processor: Any = None, device: str | None = None) -> None:
        self.given = model
        self.classes = None if classes is None else [str(c) for c in classes]
        self.preprocess = preprocess
        self.normalize = normalize
        self.processor = processor
        self.device = device
        self._loaded: Model | None = None
        if isinstance(model, str) and model.startswith(HUB_SOURCES) and not Path(model).exists():
            self._loaded = self._override(_from_hub(model, device))
        elif isinstance(model, (str, Path)):
            self._loaded = self._override(_from_checkpoint(Path(model), device))
        elif not isinstance(model, nn.Module):
            raise ConfigError(f"vitscope takes a model as a checkpoint path or a torch module "
                              f"(a vitscope ViT, or a ViT from {', '.join(FAMILIES[1:])}); got "
                              f"a {type(model).__name__}.")
        elif device is not None:
            raise ConfigError("device= moves a model loaded from a checkpoint path; a model "
                              "object runs where it is (move it with model.to(device) first).")
        else:
            family_of(model)        # an unknown family is named before any work

    @contextlib.contextmanager
    def open(self) -> Iterator[Model]:
        if self._loaded is not None:
            with _running(self._loaded.hooked):
                yield self._loaded
            return
        with _given_back(_unwrap(self.given)) as model:
            yield self._override(model)

    def _override(self, model: Model) -> Model:
        if self.classes is not None:
            if model.num_classes and len(self.classes) != model.num_classes:
                raise ConfigError(f"classes= names {len(self.classes)} classes but the model has "
                                  f"{model.num_classes} outputs; give one name per output.")
            model.classes = list(self.classes)
        if self.processor is not None and model.family == "hf":
            from vitscope.model.adapters.transformers import preprocessing
            model.preprocess, model.mean, model.std = preprocessing(
                self.processor.to_dict(), model.hooked.model.config.model_type, model.input_size)
        if self.preprocess is not None:
            if tuple(self.preprocess.crop) != model.input_size:
                raise ConfigError(f"preprocess= crops to {self.preprocess.crop[0]}×"
                                  f"{self.preprocess.crop[1]} but the model takes "
                                  f"{model.input_size[0]}×{model.input_size[1]} images.")
            model.preprocess = self.preprocess
        if self.normalize is not None:
            mean, std = self.normalize
            model.mean, model.std = [float(x) for x in mean], [float(x) for x in std]
        return model


def family_of(model: nn.Module) -> str:
    """Which family a model object belongs to; ConfigError naming the supported ones."""
    if is_hooked(model):
        return "vitscope"
    model = _unwrap(model)
    top = type(model).__module__.split(".")[0]
    kind = type(model).__name__
    looks_like = {"timm": lambda: hasattr(model, "blocks") and hasattr(model, "patch_embed"),
                  "torchvision": lambda: kind == "VisionTransformer",
                  "hf": lambda: kind.startswith(("ViT", "DeiT", "Dinov2")),
                  "openclip": lambda: kind in ("CLIP", "VisionTransformer")}
    family = _PACKAGES.get(top)
    if family == "hf" and kind in _HF_CLIP:
        return "hf-clip"
    if family is not None and looks_like[family]():
        return family
    what = f"a {kind} from {top}" + (", which is not a ViT" if family else "")
    raise ConfigError(f"vitscope cannot explain {what}: it takes a vitscope ViT or checkpoint "
                      f"path, or a ViT from timm, torchvision, Hugging Face transformers "
                      f"(CLIP and SigLIP too) or open_clip "
                      f"(families: {', '.join(FAMILIES)}).")


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            model = model.module
        else:
            return model


def _from_checkpoint(path: Path, device) -> Model:
    from vitscope._internal.devices import resolve_device
    from vitscope.data import normalization, preprocessing
    from vitscope.model.checkpoint import load_model
    hooked, ckpt = load_model(path)
    if not is_hooked(hooked):
        raise ConfigError(f"'{path}' holds a {type(hooked).__name__}, which has no hook points; "
                          f"vitscope explains ViT checkpoints.")
    hooked.to(resolve_device(device or "cpu"))
    mean, std = normalization(ckpt)
    family = ckpt.arch if ckpt.arch in FAMILIES else "vitscope"
    return Model(hooked, family, f"checkpoint {path}", list(ckpt.classes), preprocessing(ckpt),
                 mean, std, ckpt, hooked)


def _from_hub(source: str, device) -> Model:
    """"timm:NAME", "hf:ORG/NAME" or "openclip:NAME[@TAG]" / "openclip:hf-hub:ORG/NAME": the
    pretrained model through the family's own hub code
    (vitscope.model.adapters.hub), what `vitscope import --pretrained` writes, kept in memory."""
    import importlib

    from vitscope._internal.devices import resolve_device
    from vitscope.model.adapters import FAMILIES as ADAPTED
    family, _, name = source.partition(":")
    if not name:
        raise ConfigError(f"'{source}' names no model; e.g. timm:vit_small_patch16_224 or "
                          f"hf:facebook/dinov2-small.")
    if family == "hf":   # a CLIP or SigLIP repository goes to the image–text adapter
        from vitscope.model.adapters.hub import hf_adapter
        family = hf_adapter(name, pretrained=True)
    imported = importlib.import_module(ADAPTED[family][0]).import_source(name, pretrained=True)
    hooked = imported.model.to(resolve_device(device or "cpu")).eval()
    classes = list(imported.classes or [])
    if not classes and hooked.cfg.num_classes == 1000:
        classes = imagenet_classes()
    return Model(hooked, family, f"{family} {name} (pretrained)", classes, imported.preprocess,
                 imported.mean, imported.std, owner=hooked)


@contextlib.contextmanager
def _running(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients while the API runs `model`; every module's
    `training` and every parameter's `requires_grad` put back afterwards, error or not."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _given_back(model: nn.Module) -> Iterator[Model]:
    """A user's model object, wrapped in place for the duration and handed back as it was."""
    family = family_of(model)
    with _running(model):
        if family == "vitscope":
            yield _describe(model, family, model)
            return
        import importlib
        module, cls = _ADAPTERS[family]
        adapter_cls = getattr(importlib.import_module(module), cls)
        try:
            adapter = adapter_cls.around(model)
        except ConfigError:
            raise
        except Exception as e:   # the adapter's one sentence, for an object it cannot read
            from vitscope.errors import VitscopeError
            if isinstance(e, VitscopeError):
                raise ConfigError(str(e)) from None
            raise ConfigError(f"vitscope's {family} adapter cannot read this "
                              f"{type(model).__name__} ({type(e).__name__}: {e}); it adapts "
                              f"standard ViTs of that library.") from None
        try:
            adapter.eval()
            yield _describe(adapter, family, model)
        finally:
            adapter.release()


def _describe(hooked: nn.Module, family: str, model: nn.Module) -> Model:
    """Name, classes and preprocessing of a hooked model built around a user's object."""
    size = tuple(hooked.input_shape[1:])
    if family == "vitscope":
        return Model(hooked, family, f"vitscope ViT ({hooked.cfg.depth} blocks)", [],
                     Preprocess(size, size), [0.5] * 3, [0.5] * 3, owner=model)
    name = f"{family} {hooked.cfg.name}"
    classes: list[str] = []
    if family == "timm":
        from vitscope.model.adapters.timm import preprocessing
        pp, mean, std = preprocessing(hooked)
        labels = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
        if labels and len(labels) == hooked.cfg.num_classes:
            classes = [str(c) for c in labels]
        elif hooked.cfg.num_classes == 1000:
            classes = imagenet_classes()
    elif family == "torchvision":
        from vitscope.model.adapters.torchvision import preprocessing
        pp, mean, std, names = preprocessing(hooked)
        classes = names or []
    elif family == "hf-clip":
        from vitscope.model.adapters.clip import _default_processor
        from vitscope.model.adapters.transformers import preprocessing
        pp, mean, std = preprocessing(_default_processor(hooked.cfg.name), "vit", size)
    elif family == "openclip":
        visual = getattr(model, "visual", model)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        mean = [float(v) for v in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))]
        std = [float(v) for v in cfg.get("std", (0.26862954, 0.26130258, 0.27577711))]
        pp = Preprocess(size, size, "shorter" if size[0] == size[1] else "cover",
                        cfg.get("interpolation", "bicubic"))
    else:
        from vitscope.model.adapters.transformers import preprocessing
        config = model.config
        pp, mean, std = preprocessing(None, config.model_type, size)
        labels = getattr(config, "id2label", None) or {}
        named = [str(labels[i]) for i in sorted(labels)]
        if named and len(named) == hooked.cfg.num_classes and not all(
                c == f"LABEL_{i}" for i, c in enumerate(named)):
            classes = named
    return Model(hooked, family, name, classes, pp, mean, std, owner=model)


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet class names, in the order of the classifiers' outputs."""
    from importlib import resources
    text = resources.files("vitscope").joinpath("imagenet_classes.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
