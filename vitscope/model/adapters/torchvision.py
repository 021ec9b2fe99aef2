"""torchvision VisionTransformer (`vit_b_16`, `vit_b_32`, `vit_l_16`, `vit_l_32`, `vit_h_14`).

Hook points are fed by hooks on `conv_proj` (patch_embed.out), `encoder.dropout` (embed.out:
tokens after the class token and position embedding), per `EncoderBlock` `ln_1`,
`self_attention`, `ln_2`, `mlp` and the block, then `encoder.ln` and the input of `heads`
(cls). torchvision calls its `nn.MultiheadAttention` with `need_weights=False`, which takes
the fused path; in a block whose attention points (q/k/v/weights) have hooks, the attention
runs explicitly instead, from the module's own `in_proj`/`out_proj` parameters: the same
numbers as `need_weights=True, average_attn_weights=False`, but with the weights inside the
computation, so a hook can edit them and gradients reach them. Other blocks stay fused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitscope.model.adapters.base import AdaptedViT, ForeignConfig, Imported, building, heads, \
    merge_heads, require, route_input, route_output, scaled, set_attribute
from vitscope.errors import ConfigError
from vitscope.layout import TokenLayout

NAMES = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")


@dataclass
class TorchvisionConfig(ForeignConfig):
    """`torchvision.models.get_model(name, weights=None, **kwargs)`."""

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> "TorchvisionConfig":
        if name not in NAMES:
            raise ConfigError(f"torchvision has no ViT '{name}' that vitscope adapts; use one of "
                              f"{', '.join(NAMES)}.")
        model = _build(name, kwargs)
        return cls(name=name, kwargs=dict(kwargs), image_size=[model.image_size] * 2,
                   num_classes=int(model.heads[-1].out_features))

    @classmethod
    def from_model(cls, model: nn.Module) -> "TorchvisionConfig":
        """The config of a torchvision VisionTransformer object, named after the torchvision
        builder with its patch size, depth and width (or its class name for another shape)."""
        shape = (model.patch_size, len(model.encoder.layers), model.hidden_dim)
        name = SHAPES.get(shape, type(model).__name__)
        return cls(name=name, kwargs={"image_size": int(model.image_size)},
                   image_size=[int(model.image_size)] * 2,
                   num_classes=int(model.heads[-1].out_features))


# (patch size, blocks, width) of each builder: how a model object is named
SHAPES = {(16, 12, 768): "vit_b_16", (32, 12, 768): "vit_b_32", (16, 24, 1024): "vit_l_16",
          (32, 24, 1024): "vit_l_32", (14, 32, 1280): "vit_h_14"}


def _build(name: str, kwargs: dict) -> nn.Module:
    models = require("torchvision.models", "torchvision")
    with building("torchvision", name, kwargs):
        return models.get_model(name, weights=None, **kwargs)


class _Points:
    """Holds a block's points for the attention without registering them as its children."""

    def __init__(self, pts) -> None:
        self.pts = pts


class ExplicitMHA(nn.MultiheadAttention):
    """torchvision's attention module with an explicit branch for hooked blocks (the class of
    the existing module is swapped, so its parameters and state_dict keys stay as they are)."""

    _vitscope: _Points

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        pts = self._vitscope.pts
        plain = key_padding_mask is None and attn_mask is None and query is key is value
        if not (plain and (pts.explicit or pts.qkv_active or pts.attn.head_out.active)):
            out, weights = super().forward(query, key, value, key_padding_mask, need_weights,
                                           attn_mask, average_attn_weights, is_causal)
        else:
            out, weights = self._explicit(query, need_weights, average_attn_weights)
        a = pts.attn
        return (a.out(out) if a.out.active else out), weights

    def _explicit(self, x: torch.Tensor, need_weights: bool, average: bool):
        a = self._vitscope.pts.attn
        H = self.num_heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = a.q(heads(q, H)), a.k(heads(k, H)), a.v(heads(v, H))
        scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
        weights = a.weights(scores.softmax(dim=-1))                 # B×H×T×T
        drop = F.dropout(weights, p=self.dropout, training=self.training)
        out = self.out_proj(merge_heads(a.head_out(drop @ v)))
        if not need_weights:
            return out, None
        return out, (weights.mean(dim=1) if average else weights)


class TorchvisionViT(AdaptedViT):
    family = "torchvision"
    config_class = TorchvisionConfig

    def __init__(self, cfg: TorchvisionConfig, model: nn.Module | None = None) -> None:
        if model is None:
            model = _build(cfg.name, cfg.kwargs)
        super().__init__(cfg, model)
        for block in model.encoder.layers:
            attn = block.self_attention
            if type(attn) not in (nn.MultiheadAttention, ExplicitMHA) or not attn.batch_first \
                    or not attn._qkv_same_embed_dim:
                raise ConfigError(f"torchvision model '{cfg.name}' has an attention module "
                                  f"vitscope does not adapt ({type(attn).__name__}).")
        self._finish(len(model.encoder.layers), blocks=list(model.encoder.layers),
                     head=[model.encoder.ln, model.heads])
        self._install()

    def _routes(self):
        model = self.model
        yield route_output(model.conv_proj, self.patch_embed.out, _flat, _unflat)
        yield route_output(model.encoder.dropout, self.embed.out)
        for block, pts in zip(model.encoder.layers, self.blocks):
            yield route_input(block.ln_1, getattr(pts.norm1, "in"))
            yield route_output(block.ln_1, pts.norm1.out)
            attn = block.self_attention
            yield _swap_class(attn, ExplicitMHA)
            yield set_attribute(attn, "_vitscope", _Points(pts))
            yield route_input(block.ln_2, getattr(pts.norm2, "in"))
            yield route_output(block.ln_2, pts.norm2.out)
            yield route_input(block.mlp[3], pts.mlp.hidden)   # fc2: after GELU and dropout
            yield route_output(block.mlp, pts.mlp.out)
            yield route_output(block, pts.out)
        yield route_output(model.encoder.ln, self.norm.out)
        yield route_input(model.heads, self.cls)

    @property
    def token_layout(self) -> TokenLayout:
        m = self.model
        g = m.image_size // m.patch_size
        return TokenLayout.from_prefix([("cls", 1)], (g, g), m.patch_size, m.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.model(x)

    def readout_modules(self) -> dict:
        """The final norm, the head (only a single linear layer: not with a pre-logits
        layer), each block's output projection; no layer scale (vitscope.model.readout)."""
        m = self.model
        layers = list(m.encoder.layers)
        return {"norm": m.encoder.ln, "head": m.heads[0] if len(m.heads) == 1 else None,
                "proj": [b.self_attention.out_proj for b in layers],
                "ls1": [None] * len(layers), "ls2": [None] * len(layers)}


def _swap_class(module: nn.Module, cls: type):
    """Give `module` the class `cls` (same parameters and state_dict keys); returns the undo."""
    old = type(module)
    module.__class__ = cls

    def undo() -> None:
        module.__class__ = old
    return undo


def _flat(x: torch.Tensor) -> torch.Tensor:
    """conv_proj output B×D×h×w -> B×P×D (row-major patches, as torchvision reshapes it)."""
    return x.flatten(2).transpose(1, 2)


def _unflat(new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return new.transpose(1, 2).reshape(like.shape)


def import_source(name: str, weights=None, image_size=None) -> Imported:
    """torchvision:NAME -> the model (weights from a file, else random), the resize/crop and
    mean/std of torchvision's weights for it (scaled to another image size), ImageNet names."""
    from vitscope.model.adapters.weights import load_into, read_weights
    if image_size is not None and image_size[0] != image_size[1]:
        raise ConfigError(f"torchvision's {name} takes square images only; pass one size "
                          f"(--image-size {image_size[0]}).")
    kwargs = {} if image_size is None else {"image_size": int(image_size[0])}
    model = TorchvisionViT(TorchvisionConfig.create(name, **kwargs))
    if weights is not None:
        load_into(model.model, read_weights(weights), weights, f"torchvision's {name}")
    pp, mean, std, classes = preprocessing(model)
    return Imported(model, pp, mean, std, classes)


def preprocessing(model: TorchvisionViT):
    """(Preprocess, mean, std, ImageNet class names or None) of torchvision's default weights
    for the model's builder (vit_b_16's for a model of another shape), scaled to its size."""
    from vitscope.data.images import Preprocess
    models = require("torchvision.models", "torchvision")
    name = model.cfg.name if model.cfg.name in NAMES else "vit_b_16"
    entry = models.get_model_weights(name).DEFAULT   # metadata only: nothing is downloaded
    t = entry.transforms()
    size = model.model.image_size
    resize = scaled(int(t.resize_size[0]), int(t.crop_size[0]), size)
    interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
    pp = Preprocess((resize, resize), (size, size), "shorter",
                    interp if interp in ("nearest", "bilinear", "bicubic") else "bilinear")
    classes = list(entry.meta["categories"]) if model.cfg.num_classes == 1000 else None
    return pp, list(t.mean), list(t.std), classes
