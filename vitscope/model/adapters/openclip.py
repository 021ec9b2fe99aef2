"""open_clip's CLIP models (`open_clip.model.CLIP`, its `VisionTransformer` image tower) through
vitscope's hook points; `vitscope import openclip:ViT-B-32 --weights FILE`.

The image tower's modules feed the points: `conv1` (patch_embed.out), `ln_pre` (embed.out:
the tokens entering block 0), per residual block `ln_1`, `attn` (an nn.MultiheadAttention,
given torchvision's adapter's explicit branch in hooked blocks: vitscope.model.adapters.
torchvision.ExplicitMHA), `ln_2`, `mlp` and the block, then `ln_post` (norm.out, and its CLS
token as `cls`; a model that normalises after pooling shows the LayerNorm of every token
computed beside it, its output feeding `cls`). The output is the image embedding (`proj`
applied): a feature model. With the text tower, `text_embeddings` and `text_logits` give the
model's own logits (`logit_scale` × cosine, + `logit_bias` for SigLIP-style models), the
prompts tokenised by open_clip's bundled BPE tokenizer: nothing downloaded.

The checkpoint records the model's open_clip config (`embed_dim`, `vision_cfg`, `text_cfg`),
so it rebuilds without open_clip's registry; `import` looks the name up there (a config added
with `open_clip.add_model_config` too).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitscope.errors import ConfigError
from vitscope.layout import TokenLayout
from vitscope.model.adapters.base import AdaptedViT, ForeignConfig, Imported, \
    route_input, route_output, set_attribute
from vitscope.model.adapters.torchvision import ExplicitMHA, _Points, _swap_class

def _open_clip():
    try:
        import open_clip
    except ImportError:
        from vitscope.model.adapters.base import MissingExtra
        raise MissingExtra("open_clip models need the open-clip-torch package, which is not "
                           "installed; run `pip install 'vitscope[clip]'`.") from None
    return open_clip


@dataclass
class OpenClipConfig(ForeignConfig):
    """`open_clip.model.CLIP(**kwargs)`: kwargs is the model's open_clip config."""

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> "OpenClipConfig":
        """The registry's config of `name` (e.g. "ViT-B-32"), `kwargs` merged into it."""
        config = model_config(name)
        config.update(kwargs)
        size = config["vision_cfg"].get("image_size", 224)
        h, w = (size, size) if isinstance(size, int) else size
        return cls(name=name, kwargs=config, image_size=[int(h), int(w)], num_classes=0)

    @classmethod
    def from_model(cls, model: nn.Module) -> "OpenClipConfig":
        visual = getattr(model, "visual", model)
        h, w = visual.image_size
        return cls(name=type(model).__name__, kwargs={}, image_size=[int(h), int(w)],
                   num_classes=0)


def model_config(name: str) -> dict:
    open_clip = _open_clip()
    config = open_clip.get_model_config(name)
    if config is None:
        known = [n for n in open_clip.list_models() if n.startswith("ViT")][:8]
        raise ConfigError(f"open_clip has no model '{name}'; use one of its names, e.g. "
                          f"{', '.join(known)} (open_clip.list_models()).")
    return _checked(name, config)


def _checked(name: str, config: dict) -> dict:
    """A copy of an open_clip model config that vitscope adapts (its own text tower, a ViT
    image tower); ConfigError otherwise."""
    if not isinstance(config.get("vision_cfg"), dict) or not isinstance(
            config.get("text_cfg", {}), dict):
        raise ConfigError(f"open_clip's config of '{name}' has no vision_cfg and text_cfg "
                          f"objects, so it is not a CLIP model's config.")
    if "hf_model_name" in config.get("text_cfg", {}) or config.get("custom_text"):
        raise ConfigError(f"open_clip's '{name}' has a Hugging Face text tower, which vitscope "
                          f"does not adapt yet; choose a model with open_clip's own text tower.")
    return dict(config)


def _build(cfg: OpenClipConfig) -> nn.Module:
    open_clip = _open_clip()
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("custom_text",)}
    try:
        return open_clip.model.CLIP(**kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(f"open_clip cannot build '{cfg.name}' from its config ({e}).") from None


class OpenClipViT(AdaptedViT):
    """An open_clip CLIP (or a bare VisionTransformer) behind vitscope's hook points."""

    family = "openclip"
    config_class = OpenClipConfig

    def __init__(self, cfg: OpenClipConfig, model: nn.Module | None = None) -> None:
        if model is None:
            model = _build(cfg)
        super().__init__(cfg, model)
        visual = getattr(model, "visual", model)
        if type(visual).__name__ != "VisionTransformer" or visual.attn_pool is not None \
                or visual.pool_type != "tok":
            raise ConfigError(f"open_clip model '{cfg.name}' has an image tower vitscope does not "
                              f"adapt ({type(visual).__name__}, pooling "
                              f"{getattr(visual, 'pool_type', '?')}); ViT towers pooling their "
                              f"CLS token are adapted.")
        blocks = list(visual.transformer.resblocks)
        for b in blocks:
            if type(b.attn) not in (nn.MultiheadAttention, ExplicitMHA) or not b.attn.batch_first:
                raise ConfigError(f"open_clip model '{cfg.name}' has an attention module "
                                  f"vitscope does not adapt ({type(b.attn).__name__}).")
        self._visual = [visual]          # a list: its parameters are registered once, as model.*
        self._finish(len(blocks), blocks=blocks, head=[visual.ln_post])
        self._install()

    def _routes(self):
        visual = self._visual[0]
        from vitscope.model.adapters.transformers import _cls_token, _flat, _put_cls, _unflat
        yield route_output(visual.conv1, self.patch_embed.out, _flat, _unflat)
        yield route_output(visual.ln_pre, self.embed.out)
        for block, pts in zip(visual.transformer.resblocks, self.blocks):
            yield route_input(block.ln_1, getattr(pts.norm1, "in"))
            yield route_output(block.ln_1, pts.norm1.out)
            yield _swap_class(block.attn, ExplicitMHA)
            yield set_attribute(block.attn, "_vitscope", _Points(pts))
            yield route_input(block.ln_2, getattr(pts.norm2, "in"))
            yield route_output(block.ln_2, pts.norm2.out)
            yield route_input(block.mlp.c_proj, pts.mlp.hidden)   # after c_fc and the GELU
            yield route_output(block.mlp, pts.mlp.out)
            yield route_output(block, pts.out)
        if visual.final_ln_after_pool:    # ln_post sees the pooled CLS token only
            from vitscope.model.adapters.clip import _route_clip_norm
            yield from _route_clip_norm(visual.ln_post, visual.transformer.resblocks[-1],
                                        self.norm.out)
            yield route_output(visual.ln_post, self.cls)
        else:
            yield route_output(visual.ln_post, self.norm.out)
            yield route_output(visual.ln_post, self.cls, _cls_token, _put_cls)

    def readout_modules(self) -> dict:
        """ln_post, each block's out_proj and layer scales (vitscope.model.readout); no class
        head (the output is an embedding)."""
        visual = self._visual[0]
        blocks = list(visual.transformer.resblocks)

        def gamma(block, name):
            return getattr(getattr(block, name, None), "gamma", None)
        return {"norm": visual.ln_post, "head": None,
                "proj": [b.attn.out_proj for b in blocks],
                "ls1": [gamma(b, "ls_1") for b in blocks],
                "ls2": [gamma(b, "ls_2") for b in blocks]}

    @property
    def token_layout(self) -> TokenLayout:
        visual = self._visual[0]
        gh, gw = visual.grid_size
        ph, pw = visual.patch_size
        return TokenLayout.from_prefix([("cls", 1)], (gh, gw), (ph, pw), tuple(visual.image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding (B×E), as `encode_image` gives it."""
        self.check_input(x)
        if hasattr(self.model, "encode_image"):
            return self.model.encode_image(x)
        return self.model(x)

    # ---------------------------------------------------------------- text targets

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        if not hasattr(self.model, "encode_text"):
            raise ConfigError("This open_clip image tower has no text tower, so there is "
                              "nothing to compare a text with; use --target similarity:IMAGE.")
        open_clip = _open_clip()
        context = int(getattr(self.model, "context_length", 77))
        tokens = open_clip.tokenizer.SimpleTokenizer(context_length=context)(list(prompts))
        return self.model.encode_text(tokens.to(next(self.model.parameters()).device))

    def text_logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """B×K: the model's logit for each image and text (`get_logits`' image side)."""
        from vitscope.model.adapters.clip import scaled_cosine
        return scaled_cosine(self.model, image, text)


HF_HUB = "hf-hub:"      # open_clip's own prefix for a model whose config and weights are a hub repo


def pretrained_weights(name: str) -> tuple[dict, str, dict, str]:
    """(open_clip config, weight file, preprocessing, what was fetched) through open_clip's
    own download code and cache (huggingface_hub's cache for hub-hosted weights):

    - `hf-hub:ORG/NAME`: the repository's open_clip_config.json (`model_cfg`, `preprocess_cfg`)
      and its weights, the two files `open_clip.create_model("hf-hub:ORG/NAME")` reads;
    - `NAME` or `NAME@TAG`: the registry's config and the weights of open_clip's pretrained tag
      (without one, the first tag open_clip lists for NAME), with the tag's preprocessing and
      its `quick_gelu` (what the weights were trained with; open_clip itself only warns).

    The weights are then read by vitscope (safetensors, or torch.load with weights_only), so
    nothing in a downloaded file runs."""
    from open_clip import pretrained as oc_pretrained

    from vitscope.model.adapters import hub
    from vitscope.model.adapters.hf_folder import read_json
    open_clip = _open_clip()
    try:
        with hub._hub_mode():
            if name.startswith(HF_HUB):
                repo = name[len(HF_HUB):]
                path = Path(oc_pretrained.download_pretrained_from_hf(
                    repo, filename="open_clip_config.json"))
                raw = read_json(path, path.parent, "open_clip_config.json")
                if not isinstance(raw, dict) or not isinstance(raw.get("model_cfg"), dict):
                    raise ConfigError(f"The open_clip_config.json of '{repo}' has no model_cfg "
                                      f"object, so it is not an open_clip model repository.")
                config = _checked(name, raw["model_cfg"])
                _check_sizes(config, f"The open_clip_config.json of '{repo}'")
                preprocess = raw.get("preprocess_cfg") if isinstance(
                    raw.get("preprocess_cfg"), dict) else {}
                return config, oc_pretrained.download_pretrained_from_hf(repo), preprocess, repo
            arch, _, tag = name.partition("@")
            config = model_config(arch)
            tags = open_clip.list_pretrained_tags_by_model(arch)
            tag = tag or (tags[0] if tags else "")
            if tag not in tags:
                raise ConfigError(
                    f"open_clip lists no pretrained weights '{tag}' for '{arch}'" +
                    (f"; its tags are {', '.join(tags)} (openclip:{arch}@TAG)." if tags else
                     "; pass the weights with --weights FILE instead."))
            cfg = open_clip.get_pretrained_cfg(arch, tag)
            if "quick_gelu" in cfg:
                config["quick_gelu"] = bool(cfg["quick_gelu"])
            preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation") if k in cfg}
            return config, oc_pretrained.download_pretrained(cfg), preprocess, f"{arch}@{tag}"
    except ConfigError:
        raise
    except Exception as e:
        if hub._is_missing(e):
            raise hub.unreachable(f"'{name}'", f"openclip:{name}", e) from None
        raise ConfigError(f"open_clip could not fetch the pretrained weights of '{name}' "
                          f"({type(e).__name__}); pass them with --weights FILE "
                          f"instead.") from None


def _check_sizes(config: dict, where: str) -> None:
    """A downloaded config is data written by someone else: its image tower's sizes within
    the bounds a Hugging Face folder gets (hf_folder.check_sizes), and the text tower's width
    and depth within the same, before anything is allocated."""
    from vitscope.model.adapters.hf_folder import MAX_LAYERS, MAX_WIDTH, _count, check_sizes
    vision, text = config["vision_cfg"], config.get("text_cfg", {})
    width = _count(vision, "width", where, 1, MAX_WIDTH, 768)
    head = _count(vision, "head_width", where, 1, width, 64)
    check_sizes({"hidden_size": width, "num_hidden_layers": vision.get("layers", 12),
                 "num_attention_heads": max(width // head, 1),
                 "intermediate_size": int(width * float(vision.get("mlp_ratio", 4.0))),
                 "image_size": vision.get("image_size", 224),
                 "patch_size": vision.get("patch_size", 16), "num_labels": 0}, where)
    _count(text, "width", where, 1, MAX_WIDTH, 512)
    _count(text, "layers", where, 1, MAX_LAYERS, 12)
    _count(text, "vocab_size", where, 1, 1 << 22, 49408)
    _count(text, "context_length", where, 1, 1 << 16, 77)


def import_source(name: str, weights=None, image_size=None, pretrained=False) -> Imported:
    """openclip:NAME -> the model (weights from --weights, an open_clip state_dict, else random;
    with `pretrained`, open_clip's own download: `pretrained()`) and open_clip's preprocessing
    for it (shorter side resized, centre crop, its mean/std)."""
    from vitscope.data.images import Preprocess
    from vitscope.model.adapters.weights import load_into, read_weights
    kwargs, pp_cfg, hub_id = {}, {}, None
    if pretrained:
        if image_size is not None:
            raise ConfigError("--image-size is not supported with --pretrained for openclip: "
                              "sources; import the model at its own size.")
        config, weights, pp_cfg, hub_id = pretrained_weights(name)
        size = config["vision_cfg"].get("image_size", 224)
        h, w = (size, size) if isinstance(size, int) else size
        model = OpenClipViT(OpenClipConfig(name=name, kwargs=config, image_size=[int(h), int(w)],
                                           num_classes=0))
    else:
        if image_size is not None:
            config = model_config(name)
            kwargs["vision_cfg"] = dict(config["vision_cfg"], image_size=list(image_size))
        model = OpenClipViT(OpenClipConfig.create(name, **kwargs))
    if weights is not None:
        state = read_weights(weights)
        state = state.get("state_dict", state) if isinstance(state.get("state_dict"), dict) \
            else state
        state = {k.removeprefix("module."): v for k, v in state.items()}
        load_into(model.model, state, weights, f"open_clip's {name}")
        model.source_weights = Path(weights)
    if hub_id is not None:
        model.hub_id = hub_id
    visual = model.model.visual
    pp_cfg = pp_cfg or getattr(visual, "preprocess_cfg", {}) or {}
    mean = [float(v) for v in pp_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))]
    std = [float(v) for v in pp_cfg.get("std", (0.26862954, 0.26130258, 0.27577711))]
    h, w = visual.image_size
    interp = pp_cfg.get("interpolation", "bicubic")
    if h == w:
        pp = Preprocess((h, h), (h, w), "shorter", interp)
    else:
        pp = Preprocess((h, w), (h, w), "cover", interp)
    return Imported(model, pp, mean, std, None)
