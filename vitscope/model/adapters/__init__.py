"""Foreign ViTs behind vitscope's hook points: one small module per family.

    from vitscope.model.adapters import build, FAMILIES
    model = build("timm", "deit_tiny_distilled_patch16_224")      # random weights
    logits, cache = run_with_cache(model, x, names=["blocks.*.attn.weights", "cls"])

Each family module (`timm`, `torchvision`, `transformers`) holds a config dataclass and an
`AdaptedViT` subclass; the checkpoint's `arch` names the family and `vitscope.model.checkpoint`
builds it like vitscope's own ViT. The adapter is the only place that knows the family:
hooks, capture, dumps and plugins see hook points, `input_shape` and `token_layout`.
The family's package is imported only when a model of that family is built; without it the
error is one sentence naming the pip command (`pip install 'vitscope[timm]'`).
"""
from __future__ import annotations

from typing import Any

# arch -> (module, config class, model class): what vitscope.model.checkpoint.ARCHITECTURES adds.
FAMILIES: dict[str, tuple[str, str, str]] = {
    "timm": ("vitscope.model.adapters.timm", "TimmConfig", "TimmViT"),
    "torchvision": ("vitscope.model.adapters.torchvision", "TorchvisionConfig", "TorchvisionViT"),
    "hf": ("vitscope.model.adapters.transformers", "HFConfig", "HFViT"),
    # CLIP and SigLIP (image–text models) from transformers
    "hf-clip": ("vitscope.model.adapters.clip", "ClipConfig", "ClipViT"),
    "openclip": ("vitscope.model.adapters.openclip", "OpenClipConfig", "OpenClipViT"),
}


def build(family: str, name: str, **kwargs: Any):
    """A randomly initialised adapted model of `family` ("timm", "torchvision", "hf")."""
    import importlib

    from vitscope.errors import ConfigError
    if family not in FAMILIES:
        raise ConfigError(f"Unknown model family '{family}'; use one of {', '.join(FAMILIES)}.")
    module, cfg_name, model_name = FAMILIES[family]
    mod = importlib.import_module(module)
    cfg = getattr(mod, cfg_name).create(name, **kwargs)
    return getattr(mod, model_name)(cfg)
