"""Hugging Face transformers ViTs: ViT, DeiT (distillation token), DINOv2, DINOv2 with registers,
with or without a classification head (`ViTForImageClassification`, `Dinov2Model`, ...).

Hook points are fed by hooks on the model's own modules: the patch projection, the embeddings
(embed.out), per layer the two LayerNorms, the attention (q/k/v, weights, output after
`o_proj`), the MLP and the layer, then the final `layernorm` (norm.out, and its CLS token as
`cls`: what the classifier reads, edits included). transformers picks its attention function
from `config._attn_implementation`; a layer whose attention points (q/k/v/weights) have hooks
gets, for that forward, a config naming vitscope's eager attention (transformers' eager
computation with the hook points inside it, registered with `AttentionInterface`), and every
other layer keeps the model's fused "sdpa".
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitscope.model.adapters.base import AdaptedViT, ForeignConfig, Imported, require, route_input, \
    route_output, scaled, set_attribute, split_heads
from vitscope.errors import ConfigError
from vitscope.layout import TokenLayout
from vitscope.model.adapters.hf_folder import ATTENTION_KEYS, MODEL_TYPES, check_sizes

ATTENTION = "vitscope_eager"


@dataclass
class HFConfig(ForeignConfig):
    """`transformers.<name>(AutoConfig.for_model(**kwargs))`: name is the model class
    (e.g. ViTForImageClassification), kwargs its config as a dict."""

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> "HFConfig":
        config = _config(kwargs)
        model = _model_class(name, config)(config)
        return cls.from_model(model)

    @classmethod
    def from_model(cls, model: nn.Module) -> "HFConfig":
        config = model.config
        size = config.image_size
        h, w = (size, size) if isinstance(size, int) else size
        labels = int(getattr(config, "num_labels", 0)) if _has_head(model) else 0
        kwargs = {k: v for k, v in config.to_dict().items()
                  if k not in ("transformers_version", "_attn_implementation_autoset")}
        return cls(name=type(model).__name__, kwargs=kwargs, image_size=[int(h), int(w)],
                   num_classes=labels)


def _config(kwargs: dict):
    """The transformers config of `kwargs`, its sizes checked first (a checkpoint is data
    from anywhere) and its attention vitscope's choice, never one named in the file."""
    transformers = require("transformers", "Hugging Face")
    kwargs = {k: v for k, v in kwargs.items() if k not in ATTENTION_KEYS}
    model_type = kwargs.pop("model_type", "vit")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"Hugging Face model type '{model_type}' is not one vitscope adapts "
                          f"(it adapts {', '.join(MODEL_TYPES)}).")
    check_sizes(kwargs, "The Hugging Face model config")
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = "sdpa"
    return config


def _model_class(name: str, config):
    transformers = require("transformers", "Hugging Face")
    model_cls = getattr(transformers, name, None)
    prefixes = ("ViT", "DeiT", "Dinov2")
    if model_cls is None or not name.startswith(prefixes) or "Masked" in name \
            or "Backbone" in name:
        raise ConfigError(f"'{name}' is not a Hugging Face ViT class vitscope adapts (e.g. "
                          f"ViTForImageClassification, ViTModel, Dinov2Model, "
                          f"Dinov2WithRegistersModel, DeiTForImageClassification).")
    return model_cls


def _has_head(model: nn.Module) -> bool:
    return any(hasattr(model, h) for h in ("classifier", "cls_classifier"))


def _eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     **kwargs):
    """transformers' eager attention, with the block's q/k/v/weights hook points inside."""
    a = module._vitscope.pts.attn
    query, key, value = a.q(query), a.k(key), a.v(value)          # B×H×T×dh
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = a.weights(nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype))
    dropped = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(dropped, value).transpose(1, 2).contiguous(), weights


class _Points:
    def __init__(self, pts) -> None:
        self.pts = pts


class HFViT(AdaptedViT):
    family = "hf"
    config_class = HFConfig

    def __init__(self, cfg: HFConfig, model: nn.Module | None = None) -> None:
        transformers = require("transformers", "Hugging Face")
        transformers.AttentionInterface.register(ATTENTION, _eager_attention)
        if model is None:
            config = _config(cfg.kwargs)
            model = _model_class(cfg.name, config)(config)
        super().__init__(cfg, model)
        base = model.base_model
        self.base = _Points(base)
        layers = base.layers if hasattr(base, "layers") else base.encoder.layer
        for layer in layers:
            _first(layer, "layernorm_before", "norm1")
            _first(layer, "layernorm_after", "norm2")
            attn = layer.attention
            if not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
                raise ConfigError(f"The attention of '{cfg.name}' ({type(attn).__name__}) is not "
                                  f"the q_proj/k_proj/v_proj/o_proj kind vitscope adapts; "
                                  f"upgrade transformers (vitscope[hf]).")
        self._layers = _Points(list(layers))
        self._finish(len(layers), blocks=list(layers),
                     head=[base.layernorm] + [getattr(model, n, None) for n in (
                         "classifier", "cls_classifier", "distillation_classifier")])
        self._install()

    def _routes(self):
        base = self.base.pts
        emb = base.embeddings
        yield route_output(emb.patch_embeddings.projection, self.patch_embed.out, _flat, _unflat)
        yield route_output(emb, self.embed.out)
        for layer, pts in zip(self._layers.pts, self.blocks):
            norm1 = _first(layer, "layernorm_before", "norm1")
            norm2 = _first(layer, "layernorm_after", "norm2")
            yield route_input(norm1, getattr(pts.norm1, "in"))
            yield route_output(norm1, pts.norm1.out)
            yield from _route_attention(layer.attention, pts)
            yield route_input(layer.attention.o_proj, pts.attn.head_out,
                              *split_heads(_num_heads(layer.attention)))
            yield route_input(norm2, getattr(pts.norm2, "in"))
            yield route_output(norm2, pts.norm2.out)
            if hasattr(layer.mlp, "fc2"):
                yield route_input(layer.mlp.fc2, pts.mlp.hidden)
            yield route_output(layer.mlp, pts.mlp.out)
            yield route_output(layer, pts.out)
        yield route_output(base.layernorm, self.norm.out)
        yield route_output(base.layernorm, self.cls, _cls_token, _put_cls)

    @property
    def token_layout(self) -> TokenLayout:
        emb = self.base.pts.embeddings
        c = self.model.config
        dist = 1 if getattr(emb, "distillation_token", None) is not None else 0
        regs = int(getattr(c, "num_register_tokens", 0) or 0) \
            if getattr(emb, "register_tokens", None) is not None else 0
        patch = c.patch_size if isinstance(c.patch_size, int) else tuple(c.patch_size)
        ph, pw = (patch, patch) if isinstance(patch, int) else patch
        h, w = self.cfg.image_size
        return TokenLayout.from_prefix([("cls", 1), ("dist", dist), ("register", regs)],
                                       (h // ph, w // pw), (ph, pw), (h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        out = self.model(pixel_values=x)
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out.pooler_output

    def readout_modules(self) -> dict:
        """The final layernorm, the classifier where it reads the CLS token alone (not
        DINOv2's CLS + mean-patch head or DeiT's two heads), each layer's o_proj and layer
        scales (vitscope.model.readout)."""
        base, layers = self.base.pts, self._layers.pts
        head = getattr(self.model, "classifier", None)
        plain = isinstance(head, nn.Linear) and head.in_features == base.layernorm.normalized_shape[0] \
            and getattr(self.model, "distillation_classifier", None) is None

        def scale(layer, name):
            return getattr(getattr(layer, name, None), "lambda1", None)
        return {"norm": base.layernorm, "head": head if plain else None,
                "proj": [layer.attention.o_proj for layer in layers],
                "ls1": [scale(layer, "layer_scale1") for layer in layers],
                "ls2": [scale(layer, "layer_scale2") for layer in layers]}


def _num_heads(attn: nn.Module) -> int:
    return attn.o_proj.in_features // attn.head_dim


def _first(module: nn.Module, *names: str) -> nn.Module:
    for n in names:
        if hasattr(module, n):
            return getattr(module, n)
    raise ConfigError(f"{type(module).__name__} has none of {', '.join(names)}; vitscope's "
                      f"Hugging Face adapter does not know this layer.")


def _route_attention(attn: nn.Module, pts):
    """The attention's routes, as undo callables (its config is put back last)."""
    base_config = attn.config
    explicit_config = copy.copy(base_config)
    explicit_config._attn_implementation_internal = ATTENTION
    yield set_attribute(attn, "config", base_config)   # put back should a forward fail midway
    yield set_attribute(attn, "_vitscope", _Points(pts))

    def choose(mod, args):
        mod.config = explicit_config if (pts.explicit or pts.qkv_active) else base_config

    def restore(mod, args, out):
        mod.config = base_config
        if not pts.attn.out.active:
            return None
        new = pts.attn.out(out[0])
        return None if new is out[0] else (new, *out[1:])
    yield attn.register_forward_pre_hook(choose).remove
    yield attn.register_forward_hook(restore).remove


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _unflat(new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return new.transpose(1, 2).reshape(like.shape)


def _cls_token(out: torch.Tensor) -> torch.Tensor:
    return out[:, 0]


def _put_cls(new: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    out = out.clone()
    out[:, 0] = new
    return out


RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}   # PIL's numbers
# What each model type's image processor does when a folder has no preprocessor_config.json.
DEFAULT_PROCESSORS = {
    "vit": {"size": {"height": 224, "width": 224}, "resample": 2, "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3},
    "deit": {"size": {"height": 256, "width": 256}, "crop_size": {"height": 224, "width": 224},
             "do_center_crop": True, "resample": 3, "image_mean": [0.485, 0.456, 0.406],
             "image_std": [0.229, 0.224, 0.225]},
    "dinov2": {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
               "do_center_crop": True, "resample": 3, "image_mean": [0.485, 0.456, 0.406],
               "image_std": [0.229, 0.224, 0.225]},
}


def import_source(folder: str, weights=None, image_size=None, num_classes=None,
                  pretrained=False) -> Imported:
    """hf:DIR (a folder saved by `save_pretrained`) -> the model with the folder's weights
    (or --weights, or random), its image processor's resize/crop/mean/std, id2label names.
    The folder is read as data and checked first (vitscope.model.adapters.hf_folder): no code
    from it runs and nothing is downloaded. With `pretrained`, `folder` is a hub id whose
    snapshot the hub fetches into its cache first (vitscope.model.adapters.hub).

    --weights are loaded through transformers' own key conversion (older and newer key
    names); a classifier with another number of outputs than config.json's labels (a
    fine-tuned head), or `num_classes`, sets the labels. Another --image-size is the folder's
    model at its own size with the position embedding resampled by the family's own
    `interpolate_pos_encoding`."""
    from pathlib import Path

    from vitscope.model.adapters import hf_folder
    from vitscope.model.adapters.weights import read_weights
    from vitscope.errors import CheckpointError
    transformers = require("transformers", "Hugging Face")
    root = Path(folder)
    if pretrained and not root.is_dir():
        from vitscope.model.adapters.hub import hf_snapshot
        root = hf_snapshot(str(folder))
    if not (root / "config.json").exists():
        raise CheckpointError(f"'{root}' is not a saved Hugging Face model folder (no "
                              f"config.json); save one with model.save_pretrained(DIR)" +
                              (", or add --pretrained to fetch a hub id such as "
                               "facebook/dinov2-small." if "/" in str(folder) and
                               not root.exists() else "."))
    settings = hf_folder.read_config(root)
    if image_size is not None:
        resized = dict(settings, image_size=list(image_size) if image_size[0] != image_size[1]
                       else image_size[0])
        hf_folder.check_sizes(resized, f"'{root / 'config.json'}' at --image-size "
                                       f"{image_size[0]}x{image_size[1]}")
    model_type = settings.pop("model_type")
    processor = hf_folder.read_processor(root)
    files = hf_folder.weight_files(root)
    with hf_folder.offline():
        config = transformers.AutoConfig.for_model(model_type, **settings)
        config._attn_implementation = "sdpa"
        names = list(getattr(config, "architectures", None) or [])
        model_cls = _model_class(names[0] if names else "ViTModel", config)
        state = read_weights(weights) if weights is not None else None
        if num_classes is not None or state is not None:
            _fit_labels(config, state, num_classes, model_cls)
        if weights is None and files:
            for f in files:   # one sentence for a hostile file, before transformers reads it
                read_weights(f)
            try:
                model = model_cls.from_pretrained(str(root), config=config,
                                                  local_files_only=True,
                                                  trust_remote_code=False,
                                                  attn_implementation="sdpa")
            except RuntimeError as e:    # --num-classes against the folder's own classifier
                if "mismatch" not in str(e).lower():
                    raise
                raise _misfit(files[0], f"the {model_cls.__name__} of {root} with "
                                        f"{config.num_labels} classes",
                              "the classifier's shape differs") from None
            weights = files[0]
        elif state is not None:
            model = _load_converted(model_cls, config, state, weights, root)
        else:
            model = model_cls(config)
        if image_size is not None:
            model = _resized(model_cls, model.eval(), tuple(image_size), root)
    adapted = HFViT(HFConfig.from_model(model), model.eval())
    pp, mean, std = _processor(root, model_type, adapted.cfg.image_size, processor)
    labels = getattr(model.config, "id2label", None) or {}
    classes = [str(labels[i]) for i in sorted(labels)] if labels else None
    if classes and (all(c == f"LABEL_{i}" for i, c in enumerate(classes))
                    or len(classes) != adapted.cfg.num_classes):
        classes = None
    adapted.source_weights = weights
    return Imported(adapted, pp, mean, std, classes)


def _fit_labels(config, state, num_classes, model_cls) -> None:
    """config's number of labels set to `num_classes`, else to the rows of the weights'
    classifier where they differ from config.json's (their names then unknown)."""
    rows = None
    if state is not None:
        head = next((v for k, v in state.items() if k.endswith("classifier.weight")
                     and not k.endswith("distillation_classifier.weight")
                     and getattr(v, "ndim", 0) == 2), None)
        rows = int(head.shape[0]) if head is not None else None
    wanted = num_classes if num_classes is not None else rows
    if wanted is None or wanted == config.num_labels:
        return
    if not any(n in model_cls.__name__ for n in ("Classification",)):
        return       # a model without a head: load_into refuses a file that has one
    config.id2label = {i: f"LABEL_{i}" for i in range(int(wanted))}
    config.label2id = {v: k for k, v in config.id2label.items()}


def _load_converted(model_cls, config, state, path, root):
    """`model_cls` with `state` loaded through transformers' own key conversion (older
    `attention.attention.query` and newer `attention.q_proj` names alike), strictly: a
    missing, unexpected or mis-shaped tensor is one sentence."""
    import contextlib
    import io
    what = f"the {model_cls.__name__} of {root}"
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model, info = model_cls.from_pretrained(None, config=config, state_dict=dict(state),
                                                    output_loading_info=True,
                                                    attn_implementation="sdpa")
    except (RuntimeError, ValueError) as e:
        reason = "a tensor's shape differs from the model's" if "mismatch" in str(e).lower() \
            else (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise _misfit(path, what, reason) from None
    for key, label in (("mismatched_keys", "mis-shaped"), ("missing_keys", "missing"),
                       ("unexpected_keys", "unexpected")):
        keys = sorted(map(str, info.get(key) or ()))
        if keys:
            shown = ", ".join(k if isinstance(k, str) else str(k[0]) for k in keys[:3])
            raise _misfit(path, what, f"{len(keys)} {label} tensors, e.g. {shown}")
    return model


def _misfit(path, what: str, reason: str):
    from vitscope.errors import CheckpointError
    return CheckpointError(f"The weights in '{path}' do not fit {what} ({reason}); check that "
                           f"the file is this model's (and its image size and classes).")


def _resized(model_cls, model, size: tuple[int, int], root):
    """`model` rebuilt for inputs of `size` = (h, w), its position embedding resampled by the
    family's own `interpolate_pos_encoding` (what the model does at run time for another
    size), every other tensor unchanged."""
    config = model.config
    native = config.image_size
    native = (native, native) if isinstance(native, int) else tuple(native)
    if tuple(size) == native:
        return model
    emb = model.base_model.embeddings
    pe = getattr(emb, "position_embeddings", None)
    if not isinstance(pe, torch.Tensor) or not hasattr(emb, "interpolate_pos_encoding"):
        raise ConfigError(f"The {type(model).__name__} of '{root}' has no position embedding "
                          f"transformers can resample, so --image-size cannot change it from "
                          f"{native[0]}x{native[1]}; leave --image-size out.")
    patch = config.patch_size
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    prefix = pe.shape[1] - (native[0] // ph) * (native[1] // pw)
    new_patches = (size[0] // ph) * (size[1] // pw)
    with torch.no_grad():
        like = pe.new_zeros(1, prefix + new_patches, pe.shape[-1])
        new_pe = emb.interpolate_pos_encoding(like, size[0], size[1])
    if tuple(new_pe.shape) != (1, prefix + new_patches, pe.shape[-1]):
        raise ConfigError(f"transformers resampled the position embedding of '{root}' to "
                          f"{tuple(new_pe.shape)} for {size[0]}x{size[1]}, not the "
                          f"{prefix + new_patches} tokens that size has; leave --image-size out "
                          f"or choose a size its patch size {ph}x{pw} divides.")
    name = next(n for n, p in model.named_parameters() if p is pe)
    state = model.state_dict()
    state[name] = new_pe.detach().clone()
    new_config = copy.deepcopy(config)
    new_config.image_size = list(size) if size[0] != size[1] else size[0]
    new = model_cls(new_config)
    new.load_state_dict(state)
    return new.eval()


def _processor(root, model_type: str, size, checked: dict | None = None) -> tuple:
    """The folder's preprocessor_config.json, as hf_folder.read_processor checked it (or the
    type's default), as (Preprocess, mean, std), scaled to the model's input size when the
    two differ."""
    return preprocessing(checked, model_type, size)


def preprocessing(cfg: dict | None, model_type: str, size) -> tuple:
    """An image processor's settings (its `to_dict()`, or a checked preprocessor_config.json;
    None: the model type's default) as (Preprocess, mean, std) for a model taking `size` = (h, w)."""
    from vitscope.data.images import Preprocess
    base = "dinov2" if model_type.startswith("dinov2") else model_type
    cfg = cfg or DEFAULT_PROCESSORS.get(base, DEFAULT_PROCESSORS["vit"])
    h, w = size
    interp = RESAMPLE.get(int(cfg.get("resample", 2)), "bilinear")
    s = cfg.get("size") or {"height": h, "width": w}
    crop = cfg.get("crop_size") if cfg.get("do_center_crop") else None
    # the processor's sizes are scaled to the model's input: what it crops (or, without a
    # crop, what it resizes to) becomes h×w
    if crop:
        ch, cw = crop["height"], crop["width"]
    elif "shortest_edge" in s:
        ch = cw = s["shortest_edge"]
    else:
        ch, cw = s["height"], s["width"]
    if "shortest_edge" in s:
        r = s["shortest_edge"]
        rh, rw = scaled(r, ch, h), scaled(r, cw, w)   # HF: shorter side, the longer truncated
        pp = Preprocess((rh, rw), (h, w), "shorter" if rh == rw else "cover", interp)
    elif cfg.get("do_resize", True) is False:
        pp = Preprocess((h, w), (h, w), "squash", interp)
    else:
        pp = Preprocess((scaled(s["height"], ch, h), scaled(s["width"], cw, w)), (h, w),
                        "squash", interp)   # HF resizes to exactly (height, width), then crops
    mean = [float(x) for x in cfg.get("image_mean", [0.5] * 3)]
    std = [float(x) for x in cfg.get("image_std", [0.5] * 3)]
    return pp, mean, std
