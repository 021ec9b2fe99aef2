"""timm VisionTransformer family (ViT, DeiT and DeiT-distilled, DINOv2 with registers, ...).

timm's own forward runs untouched; hook points are fed by hooks on its modules:
`patch_embed`, `norm_pre` (embed.out), per block `norm1`, `attn` (q/k after `q_norm`/`k_norm`,
v from `qkv`, weights after the softmax at `attn_drop`, out), `norm2`, `mlp`, the block, then
`norm` and the head's input (`cls`, for token-pooling models). Explicit attention: timm's
`fused_attn` flag, set just before each block's attention runs, False only while that block's
`attn.weights` has a hook, and put back after it (and by `release()`, should a forward fail
in between). `attn.out` is the attention module's output (after `proj`), before
any layer scale (`ls1`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vitscope.model.adapters.base import AdaptedViT, ForeignConfig, Imported, building, require, \
    route_input, route_output, split_heads
from vitscope.errors import ConfigError
from vitscope.layout import TokenLayout


@dataclass
class TimmConfig(ForeignConfig):
    """`timm.create_model(name, pretrained=False, **kwargs)`."""

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> "TimmConfig":
        timm = require("timm", "timm")
        # "name.tag" (e.g. vit_small_patch16_224.augreg_in1k) picks timm's pretrained weights
        if not timm.models.is_model(name.split(".")[0]):
            import difflib
            close = difflib.get_close_matches(name, timm.list_models("vit_*") + timm.list_models(
                "deit*"), 3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"timm has no model '{name}'.{hint} (`timm.list_models('vit_*')` "
                              f"lists them.)")
        with building("timm", name, kwargs):
            model = timm.create_model(name, pretrained=False, **kwargs)
        _check_supported(model, name)
        h, w = model.patch_embed.img_size
        return cls(name=name, kwargs=dict(kwargs), image_size=[int(h), int(w)],
                   num_classes=int(model.num_classes))

    @classmethod
    def from_model(cls, model) -> "TimmConfig":
        """The config of a timm model object (its pretrained_cfg names the architecture; the
        constructor's other arguments are not recorded by timm, so kwargs stay empty)."""
        pretrained = getattr(model, "pretrained_cfg", None) or {}
        name = pretrained.get("architecture") or type(model).__name__
        size = getattr(getattr(model, "patch_embed", None), "img_size", None) or (0, 0)
        h, w = (size, size) if isinstance(size, int) else size
        return cls(name=str(name), image_size=[int(h), int(w)],
                   num_classes=int(getattr(model, "num_classes", 0) or 0))


class TimmViT(AdaptedViT):
    family = "timm"
    config_class = TimmConfig

    def __init__(self, cfg: TimmConfig, model=None) -> None:
        timm = require("timm", "timm")
        if model is None:
            model = timm.create_model(cfg.name, pretrained=False, **cfg.kwargs)
        super().__init__(cfg, model)
        _check_supported(model, cfg.name)
        self._token_pooled = getattr(model, "global_pool", "token") == "token"
        self._finish(len(model.blocks), cls=self._token_pooled, blocks=list(model.blocks),
                     head=[getattr(model, n, None) for n in ("norm", "fc_norm", "head",
                                                              "head_dist", "head_drop")])
        self._install()

    def _routes(self):
        m = self.model
        yield route_output(m.patch_embed, self.patch_embed.out, _flat, _unflat)
        yield route_output(m.norm_pre, self.embed.out)
        for block, pts in zip(m.blocks, self.blocks):
            yield from _route_block(block, pts)
        yield route_output(m.norm, self.norm.out)
        if self._token_pooled:
            yield route_input(m.head, self.cls)

    @property
    def token_layout(self) -> TokenLayout:
        m = self.model
        prefix = [("cls", 1 if getattr(m, "cls_token", None) is not None else 0),
                  ("dist", 1 if getattr(m, "dist_token", None) is not None else 0),
                  ("register", int(getattr(m, "num_reg_tokens", 0) or 0))]
        pe = m.patch_embed
        return TokenLayout.from_prefix(prefix, tuple(pe.grid_size), tuple(pe.patch_size),
                                       tuple(pe.img_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.model(x)

    def readout_modules(self) -> dict:
        """What turns the residual stream into logits, and each block's projection and layer
        scales (vitscope.model.readout). A head is given only where the logits are one linear
        map of the final-norm CLS token (not for pooled, distilled or fc_norm models)."""
        m = self.model
        linear = isinstance(getattr(m, "head", None), torch.nn.Linear)
        plain = self._token_pooled and linear and getattr(m, "head_dist", None) is None \
            and isinstance(getattr(m, "fc_norm", torch.nn.Identity()), torch.nn.Identity)
        return {"norm": m.norm, "head": m.head if plain else None,
                "proj": [b.attn.proj for b in m.blocks],
                "ls1": [getattr(b.ls1, "gamma", None) for b in m.blocks],
                "ls2": [getattr(b.ls2, "gamma", None) for b in m.blocks]}


def _check_supported(model, name: str) -> None:
    from vitscope.errors import CheckpointError
    blocks = getattr(model, "blocks", None)
    ok = blocks is not None and all(
        all(hasattr(b, a) for a in ("norm1", "attn", "norm2", "mlp")) and
        all(hasattr(b.attn, a) for a in ("qkv", "q_norm", "k_norm", "attn_drop", "fused_attn"))
        for b in blocks)
    if not ok or not hasattr(model, "patch_embed") or not hasattr(model, "norm_pre"):
        raise CheckpointError(f"timm model '{name}' ({type(model).__name__}) is not a "
                              f"VisionTransformer with standard attention blocks, which is what "
                              f"vitscope's timm adapter reads (ViT, DeiT, DINOv2 and the like).")


def _route_block(block, pts):
    """The block's routes, as undo callables (fused_attn is put back last)."""
    attn, a = block.attn, pts.attn
    yield route_input(block.norm1, getattr(pts.norm1, "in"))
    yield route_output(block.norm1, pts.norm1.out)
    fused = attn.fused_attn

    def put_back():
        attn.fused_attn = fused
    yield put_back

    def choose_branch(mod, args):
        mod.fused_attn = fused and not pts.explicit   # explicit only while weights are hooked

    def restore(mod, args, out):
        mod.fused_attn = fused
    yield attn.register_forward_pre_hook(choose_branch).remove
    yield attn.register_forward_hook(restore).remove
    yield route_output(attn.q_norm, a.q)
    yield route_output(attn.k_norm, a.k)
    num_heads = attn.num_heads

    def v_from_qkv(mod, args, out):    # qkv: B×T×3·H·dh, v is the last third
        if not a.v.active:
            return None
        B, T, _ = out.shape
        parts = out.view(B, T, 3, num_heads, -1)
        v = parts[:, :, 2].transpose(1, 2)
        new = a.v(v)
        if new is v:
            return None
        return torch.cat([parts[:, :, :2], new.transpose(1, 2).unsqueeze(2)], dim=2).view(B, T, -1)
    yield attn.qkv.register_forward_hook(v_from_qkv).remove
    yield route_output(attn.attn_drop, a.weights)   # runs only in the explicit branch, post-softmax
    yield route_input(attn.proj, a.head_out, *split_heads(num_heads))   # both branches
    yield route_output(attn, a.out)
    yield route_input(block.norm2, getattr(pts.norm2, "in"))
    yield route_output(block.norm2, pts.norm2.out)
    if hasattr(block.mlp, "fc2"):
        yield route_input(block.mlp.fc2, pts.mlp.hidden)
    yield route_output(block.mlp, pts.mlp.out)
    yield route_output(block, pts.out)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """patch_embed output: B×P×D, or B×h×w×D with dynamic image size -> B×P×D."""
    return x.flatten(1, 2) if x.ndim == 4 else x


def _unflat(new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return new.view(like.shape)


def import_source(name: str, weights=None, image_size=None, num_classes=None,
                  pretrained=False) -> Imported:
    """timm:NAME -> the model (weights from a file, timm's hub with `pretrained`, else random)
    and timm's data config. A file whose classifier has another number of outputs than the
    model's default (a fine-tuned head) builds the model with that many (`head_classes`);
    `num_classes` says it explicitly, and a file that disagrees with it is refused."""
    import sys

    from vitscope.model.adapters.weights import load_into, read_weights
    kwargs = {} if image_size is None else {"img_size": tuple(image_size)}
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    if pretrained:
        from vitscope.model.adapters.hub import timm_pretrained
        model = TimmViT(TimmConfig.create(name, **kwargs), timm_pretrained(name, kwargs))
        model.source_weights = _cached_file(model.model)
        model.hub_id = _hub_id(model.model, name)
        pp, mean, std = preprocessing(model)
        return Imported(model, pp, mean, std)
    state = read_weights(weights) if weights is not None else None
    model = TimmViT(TimmConfig.create(name, **kwargs))
    found = head_classes(state) if state is not None and num_classes is None else None
    if found is not None and found != model.cfg.num_classes:   # a fine-tuned head
        model = TimmViT(TimmConfig.create(name, **kwargs, num_classes=found))
    if state is not None:
        # timm's own converter: original DINOv2/DeiT/JAX layouts, position-embedding resampling
        convert = getattr(sys.modules.get(type(model.model).__module__), "checkpoint_filter_fn",
                          None)
        if convert is not None:
            try:
                state = convert(state, model.model)
            except Exception:  # a file it cannot convert is judged by load_into below
                pass
        load_into(model.model, state, weights, f"timm's {name} with {model.cfg.num_classes} "
                                               f"classes")
    pp, mean, std = preprocessing(model)
    return Imported(model, pp, mean, std)


def head_classes(state: dict) -> int | None:
    """The number of outputs of the classifier in a timm state_dict (`head.weight`, N×D), or
    None where it has no such head (a feature model's file, another layout)."""
    head = state.get("head.weight")
    if head is None or head.ndim != 2:
        return None
    return int(head.shape[0])


def _cached_file(model):
    """The weight file timm read from the hub cache (None where it came from a URL)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg.get("hf_hub_id"):
        return None
    from huggingface_hub import try_to_load_from_cache
    for filename in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(cfg["hf_hub_id"], filename) if filename else None
        if isinstance(found, str):
            return found
    return None


def _hub_id(model, name: str) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("hf_hub_id") or cfg.get("url") or name)


def preprocessing(model: TimmViT):
    """(Preprocess, mean, std) of timm's eval transform for the model (its data config)."""
    import math

    from vitscope.data.images import Preprocess
    timm = require("timm", "timm")
    dc = timm.data.resolve_model_data_config(model.model)
    h, w = model.cfg.image_size
    crop_pct = float(dc.get("crop_pct") or 1.0)
    interp = dc.get("interpolation", "bicubic")
    resize = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    # timm's eval transform: squash, or torchvision's Resize(shorter side) for a square
    # target, else its ResizeKeepRatio (rounded: our "cover")
    mode = "squash" if dc.get("crop_mode") == "squash" else \
        "shorter" if resize[0] == resize[1] else "cover"
    pp = Preprocess(resize, (h, w), mode,
                    interp if interp in ("nearest", "bilinear", "bicubic", "lanczos") else "bicubic")
    return pp, [float(x) for x in dc["mean"]], [float(x) for x in dc["std"]]
