"""Hugging Face image–text models: CLIP (`CLIPModel`, `CLIPVisionModel`) and SigLIP
(`SiglipModel`, `SiglipVisionModel`), through vitscope's hook points.

The image tower is a ViT like the others, its hook points fed the way vitscope's Hugging Face
adapter feeds them (vitscope.model.adapters.transformers: the same eager attention with the
q/k/v/weights points inside, chosen per hooked layer; everything else stays on "sdpa"):

- `embed.out`: the tokens entering block 0 (CLIP: after its `pre_layrnorm`);
- per layer `norm1`, `attn` (q/k/v, weights, output after `out_proj`), `norm2`, `mlp`, `out`;
- `norm.out`: CLIP normalises only the CLS token it pools (`post_layernorm`); the point shows
  that LayerNorm applied to every token, computed beside the model (an edit there does not
  reach the output: edit `cls`). SigLIP normalises every token, and the point is that output;
- `cls` (CLIP): the post-LayerNorm CLS token the projection reads. SigLIP has no CLS token: it
  pools with an attention head whose one learned query (the probe) attends over the patches;
  its token layout says "no prefix", and `pool.weights` (B×H×1×P) holds that query's attention
  (vitscope.model.adapters.clip.POOL_POINT), the natural stand-in for a CLS row.

The output is the image embedding (CLIP: projected by `visual_projection`; SigLIP: the pooling
head's output), so these are feature models (`num_classes` 0). With the text tower
(`CLIPModel`, `SiglipModel`) `text_embeddings(prompts)` and `text_logits(image, text)` give
what `--target text:...` and `text-classes` explain: the model's own logit, its logit scale
times the cosine similarity (plus SigLIP's bias). The tokenizer's files travel inside the
checkpoint's model config (`tokenizer`: file name -> bytes), so text targets work from the
checkpoint alone, offline.
"""
from __future__ import annotations

import base64
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitscope.errors import ConfigError
from vitscope.layout import TokenLayout
from vitscope.model.adapters.base import AdaptedViT, ForeignConfig, Imported, _Group, require, \
    route_input, route_output, split_heads
from vitscope.model.adapters.clip_names import CLASSES, MODEL_TYPES  # noqa: F401
from vitscope.model.adapters.transformers import ATTENTION, _eager_attention, _flat, \
    _route_attention, _unflat
from vitscope.model.hooks import name_hook_points
from vitscope.names import POOL_WEIGHTS as POOL_POINT  # noqa: F401  (B×H×1×P)

# the tokenizer files a folder may hold (what AutoTokenizer reads), stored in the checkpoint
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")


@dataclass
class ClipConfig(ForeignConfig):
    """`transformers.<name>(<Config>(**kwargs))` for the CLIP and SigLIP classes, and the
    tokenizer's files (name -> base64 text: plain data in a checkpoint) for text targets ({}
    without them). A dump's model_config leaves the tokenizer out (`dump_dict`)."""

    tokenizer: dict[str, str] = field(default_factory=dict)

    def dump_dict(self) -> dict[str, Any]:
        """The config without the tokenizer's files (megabytes: no HDF5 attribute)."""
        return {k: v for k, v in self.to_dict().items() if k != "tokenizer"}

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> "ClipConfig":
        return cls.from_model(_model_class(name)(_config(name, kwargs)))

    @classmethod
    def from_model(cls, model: nn.Module) -> "ClipConfig":
        vision = _vision_config(model.config)
        size = vision.image_size
        h, w = (size, size) if isinstance(size, int) else size
        kwargs = {k: v for k, v in model.config.to_dict().items()
                  if k not in ("transformers_version", "_attn_implementation_autoset",
                               "architectures")}
        return cls(name=type(model).__name__, kwargs=kwargs, image_size=[int(h), int(w)],
                   num_classes=0)


def _model_class(name: str):
    transformers = require("transformers", "Hugging Face")
    if name not in CLASSES:
        raise ConfigError(f"'{name}' is not an image–text class vitscope adapts (it adapts "
                          f"{', '.join(CLASSES)}).")
    return getattr(transformers, name)


def _config(name: str, kwargs: dict):
    """The model's transformers config from plain `kwargs`, its attention vitscope's choice."""
    transformers = require("transformers", "Hugging Face")
    kwargs = {k: v for k, v in kwargs.items()
              if k not in ("attn_implementation", "_attn_implementation",
                           "_attn_implementation_internal", "model_type", "auto_map")}
    config_cls = getattr(transformers, name.replace("Model", "Config"))
    config = config_cls(**kwargs)
    _set_attention(config, "sdpa")
    return config


def _set_attention(config, value: str) -> None:
    config._attn_implementation = value
    for sub in ("vision_config", "text_config"):
        if getattr(config, sub, None) is not None:
            getattr(config, sub)._attn_implementation = value


def _vision_config(config):
    return getattr(config, "vision_config", None) or config


class ClipViT(AdaptedViT):
    """A Hugging Face CLIP or SigLIP model behind vitscope's hook points (module docstring)."""

    family = "hf-clip"
    config_class = ClipConfig

    def __init__(self, cfg: ClipConfig, model: nn.Module | None = None) -> None:
        transformers = require("transformers", "Hugging Face")
        transformers.AttentionInterface.register(ATTENTION, _eager_attention)
        if model is None:
            model = _model_class(cfg.name)(_config(cfg.name, cfg.kwargs))
        super().__init__(cfg, model)
        self.siglip = cfg.name.startswith("Siglip")
        vision = getattr(model, "vision_model", model)
        if not hasattr(vision, "embeddings"):       # older transformers nest it once more
            vision = vision.vision_model
        if self.siglip and getattr(vision, "head", None) is None:
            # transformers' SigLIP without its head returns no pooled output at all
            raise ConfigError(f"This {cfg.name} has no attention-pooling head "
                              f"(vision_use_head=False), so it outputs no image embedding to "
                              f"explain; vitscope adapts SigLIP with its pooling head.")
        self._vision = [vision]                     # a list: not registered twice
        layers = list(vision.encoder.layers)
        self._layers = layers
        head = [getattr(model, n, None) for n in ("visual_projection", "logit_scale")]
        self._finish(len(layers), cls=not self.siglip, blocks=layers,
                     head=[vision.post_layernorm, getattr(vision, "head", None), *head])
        if self.siglip and getattr(vision, "head", None) is not None:
            self.pool = _Group("weights")   # B×H×1×P: the pooling head's query over the patches
            name_hook_points(self)
        self._install()

    def _routes(self):
        vision = self._vision[0]
        emb = vision.embeddings
        yield route_output(emb.patch_embedding, self.patch_embed.out, _flat, _unflat)
        yield route_output(getattr(vision, "pre_layrnorm", None) or emb, self.embed.out)
        for layer, pts in zip(self._layers, self.blocks):
            yield route_input(layer.layer_norm1, getattr(pts.norm1, "in"))
            yield route_output(layer.layer_norm1, pts.norm1.out)
            yield from _route_attention(layer.self_attn, pts)
            yield route_input(layer.self_attn.out_proj, pts.attn.head_out,
                              *split_heads(layer.self_attn.num_heads))
            yield route_input(layer.layer_norm2, getattr(pts.norm2, "in"))
            yield route_output(layer.layer_norm2, pts.norm2.out)
            yield route_input(layer.mlp.fc2, pts.mlp.hidden)
            yield route_output(layer.mlp, pts.mlp.out)
            yield route_output(layer, pts.out)
        if self.siglip:
            yield route_output(vision.post_layernorm, self.norm.out)
            if hasattr(self, "pool"):
                yield from _route_pool(vision.head, self.pool.weights)
        else:
            yield from _route_clip_norm(vision.post_layernorm, self._layers[-1], self.norm.out)
            yield route_output(vision.post_layernorm, self.cls)

    def readout_modules(self) -> dict:
        """The final layernorm and each layer's out_proj (vitscope.model.readout); no class
        head (the output is an embedding) and no layer scale."""
        vision = self._vision[0]
        return {"norm": vision.post_layernorm, "head": None,
                "proj": [layer.self_attn.out_proj for layer in self._layers],
                "ls1": [None] * len(self._layers), "ls2": [None] * len(self._layers)}

    @property
    def token_layout(self) -> TokenLayout:
        c = _vision_config(self.model.config)
        p = c.patch_size
        ph, pw = (p, p) if isinstance(p, int) else tuple(p)
        h, w = self.cfg.image_size
        prefix = [] if self.siglip else [("cls", 1)]
        return TokenLayout.from_prefix(prefix, (h // ph, w // pw), (ph, pw), (h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding, B×E (what the model compares with its text embeddings)."""
        self.check_input(x)
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=x)
        else:
            out = self.model(pixel_values=x)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    # ---------------------------------------------------------------- text targets

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """K×E text embeddings of the prompts, by the model's own text tower and tokenizer."""
        if not hasattr(self.model, "get_text_features"):
            raise ConfigError(f"This {self.cfg.name} has no text tower, so there is nothing to "
                              f"compare a text with; import the full model ({'SiglipModel' if self.siglip else 'CLIPModel'}) "
                              f"or use --target similarity:IMAGE.")
        tokenizer = self.tokenizer()
        text_cfg = self.model.config.text_config
        tokens = tokenizer(list(prompts), padding="max_length" if self.siglip else True,
                           truncation=True, max_length=int(text_cfg.max_position_embeddings),
                           return_tensors="pt")
        device = next(self.model.parameters()).device
        args = {"input_ids": tokens["input_ids"].to(device)}
        if not self.siglip and "attention_mask" in tokens:
            args["attention_mask"] = tokens["attention_mask"].to(device)
        out = self.model.get_text_features(**args)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def text_logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """B×K: the model's logit for each image and text, as its forward computes it."""
        return scaled_cosine(self.model, image, text)

    def tokenizer(self):
        """The tokenizer stored with the model (its files written to a temporary folder and
        read by AutoTokenizer, offline: nothing downloaded, no code from the files run)."""
        if getattr(self, "_tokenizer", None) is not None:
            return self._tokenizer
        if not self.cfg.tokenizer:
            raise ConfigError(f"This {self.cfg.name} was imported without its tokenizer, so "
                              f"prompts cannot be encoded; import it from a folder that holds "
                              f"the tokenizer's files (tokenizer.json, vocab.json…) or use "
                              f"--target similarity:IMAGE.")
        transformers = require("transformers", "Hugging Face")
        from vitscope.model.adapters.hf_folder import offline
        with tempfile.TemporaryDirectory(prefix="vitscope-tokenizer-") as tmp, offline():
            for name, data in self.cfg.tokenizer.items():
                if name in TOKENIZER_FILES:
                    (Path(tmp) / name).write_bytes(base64.b64decode(data))
            self.__dict__["_tokenizer"] = transformers.AutoTokenizer.from_pretrained(
                tmp, local_files_only=True, trust_remote_code=False)
        return self._tokenizer


def scaled_cosine(model, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """B×K logits of an image–text model: exp(logit_scale) × the cosine similarity of each
    image and text embedding, + logit_bias where the model has one (SigLIP)."""
    image = nn.functional.normalize(image.float(), dim=-1)
    text = nn.functional.normalize(text.float(), dim=-1)
    logits = image @ text.T * model.logit_scale.float().exp()
    if getattr(model, "logit_bias", None) is not None:
        logits = logits + model.logit_bias.float()
    return logits


def _route_clip_norm(norm, last_layer, point):
    """norm.out of a model that pools its CLS token before the final LayerNorm `norm` (CLIP):
    that LayerNorm over every token of the last layer's output, computed beside the model
    while the point has hooks."""
    def hook(mod, args, out):
        if point.active:
            hidden = out if isinstance(out, torch.Tensor) else out[0]
            point(norm(hidden))
        return None
    return [last_layer.register_forward_hook(hook).remove]


def _route_pool(head, point):
    """The pooling head's attention weights (B×H×1×P) while `pool.weights` has hooks: its
    nn.MultiheadAttention asked for per-head weights for that forward only."""
    attention = head.attention
    original = attention.forward

    def forward(query, key, value, *args, **kwargs):
        if not point.active:
            return original(query, key, value, *args, **kwargs)
        kwargs.update(need_weights=True, average_attn_weights=False)
        out, weights = original(query, key, value, *args, **kwargs)
        point(weights)
        return out, weights
    attention.forward = forward

    def undo():
        attention.__dict__.pop("forward", None)
    return [undo]


def import_source(folder: str, weights=None, image_size=None, pretrained=False) -> Imported:
    """hf:DIR of a CLIP or SigLIP model (save_pretrained, with its processor's files) -> the
    model with the folder's weights, its image processor's preprocessing, and its tokenizer's
    files. Read as data (vitscope.model.adapters.hf_folder): nothing downloaded, no code run.
    With `pretrained`, `folder` is a hub id ("google/siglip-base-patch16-224") whose snapshot
    (weights, processor and tokenizer files) the hub fetches into its cache first
    (vitscope.model.adapters.hub), then read as that folder."""
    from vitscope.errors import CheckpointError
    from vitscope.model.adapters import hf_folder
    from vitscope.model.adapters.transformers import preprocessing
    from vitscope.model.adapters.weights import load_into, read_weights
    root = Path(folder)
    if pretrained and not root.is_dir():
        from vitscope.model.adapters.hub import hf_snapshot
        root = hf_snapshot(str(folder), TOKENIZER_FILES)
    raw = hf_folder.read_json(root / "config.json", root, "config.json")
    if not isinstance(raw, dict):
        raise CheckpointError(f"config.json of '{root}' holds a JSON {type(raw).__name__}, not "
                              f"an object of model settings.")
    names = raw.get("architectures") if isinstance(raw.get("architectures"), list) else []
    name = MODEL_TYPES.get(raw.get("model_type")) or next(
        (n for n in names if n in CLASSES), None)
    if name is None:
        raise CheckpointError(f"'{root}' holds a '{raw.get('model_type')}' model, not CLIP or "
                              f"SigLIP.")
    if image_size is not None:
        raise ConfigError(f"--image-size is not supported for {name} folders yet; import it at "
                          f"its own size.")
    vision = raw.get("vision_config", raw) if isinstance(raw.get("vision_config", raw), dict) \
        else {}
    hf_folder.check_sizes(vision, f"The vision config of '{root / 'config.json'}'")
    files = hf_folder.weight_files(root)
    model_cls = _model_class(name)
    with hf_folder.offline():
        config = _config(name, {k: v for k, v in raw.items() if k != "model_type"})
        if weights is None and files:
            for f in files:
                read_weights(f)
            model = model_cls.from_pretrained(str(root), config=config, local_files_only=True,
                                              trust_remote_code=False)
            weights = files[0]
        else:
            model = model_cls(config)
            if weights is not None:
                load_into(model, read_weights(weights), weights, f"the {name} of {root}")
    _set_attention(model.config, "sdpa")
    cfg = ClipConfig.from_model(model)
    cfg.tokenizer = {n: base64.b64encode((root / n).read_bytes()).decode("ascii")
                     for n in TOKENIZER_FILES
                     if (root / n).is_file() and hf_folder.inside(root / n, root, n)}
    adapted = ClipViT(cfg, model.eval())
    processor = hf_folder.read_processor(root) or _default_processor(name)
    pp, mean, std = preprocessing(processor, "vit", adapted.cfg.image_size)
    adapted.source_weights = weights
    return Imported(adapted, pp, mean, std, None)


def _default_processor(name: str) -> dict:
    """What CLIPImageProcessor / SiglipImageProcessor do without a preprocessor_config.json."""
    if name.startswith("Siglip"):
        return {"size": {"height": 224, "width": 224}, "resample": 3,
                "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    return {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True, "resample": 3,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711]}

