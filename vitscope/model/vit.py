"""The Vision Transformer: one config dataclass, named presets, and a ViT with hook points.

Parameter names follow timm (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.norm1`,
`blocks.N.attn.qkv`, `blocks.N.attn.proj`, `blocks.N.mlp.fc1`, `norm`, `head`) so a timm
state_dict maps onto ours. Hook points are parameter-free identity modules named by their
module path (TransformerLens style); attaching hooks never changes the state_dict.

Shapes: B batch, H heads, T tokens (1 CLS + P patches), D width, dh = D / H.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitscope.errors import ConfigError
from vitscope.model.hooks import HookPoint, hook_points, name_hook_points, run_with_cache
from vitscope.layout import TokenLayout

STEMS = ("patch", "conv")
STEM_PADDINGS = ("zeros", "circular")

# Sane bounds, checked from the config alone before anything is allocated: a mistyped or hostile
# checkpoint must get one sentence, not a 13 TB allocation. ViT-G/14 has 1.8 billion parameters
# (8 GB in fp32 at the limit); 4,096 px and 65,536 patch tokens are far beyond any published ViT
# input (DINOv2: 518 px, 1,369 tokens; SAM's encoder: 1,024 px, 4,096 tokens); a ConvStem runs at
# full resolution, so its widths are bounded too (published ones use 24 to 512).
MAX_PARAMETERS = 2_000_000_000
MAX_IMAGE_SIZE = 4096
MAX_PATCHES = 65_536
MAX_STEM_WIDTH = 4096


def check_field_types(cfg: Any, prefix: str = "model") -> None:
    """Each field of a config dataclass holds its declared type, strictly: a bool is not an
    int, 2.0 is not an int, a float field takes an int but only finite numbers, and a
    list[int] field holds ints only. ConfigError names the first field that does not."""
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), f.type
        hint = hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))
        if hint == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            what = "an integer"
        elif hint == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value)
            what = "a finite number"
        elif hint == "bool":
            ok, what = isinstance(value, bool), "true or false"
        elif hint == "str":
            ok, what = isinstance(value, str), "a string"
        elif hint == "list[int]":
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)
            what = "a list of integers"
        else:
            continue
        if not ok:
            raise ConfigError(f"{prefix}.{f.name} must be {what}, got {value!r} "
                              f"({type(value).__name__}).")


def check_size(subject: str, value: int, limit: int, unit: str) -> None:
    """ConfigError when a config's size exceeds a sane bound, with both numbers."""
    if value > limit:
        raise ConfigError(f"{subject} {value:,} {unit}, over vitscope's limit of {limit:,}, so it "
                          f"is refused before anything is allocated (a typo or a damaged config).")


@dataclass
class ModelConfig:
    image_size: int = 32          # input height = width in pixels; must be divisible by patch_size
    patch_size: int = 4           # side of each square patch; tokens = (image_size / patch_size)**2 + 1
    in_channels: int = 3          # input channels (3 for RGB)
    num_classes: int = 10         # outputs of the linear head
    embed_dim: int = 192          # D, the width of the residual stream
    depth: int = 12               # number of transformer blocks
    num_heads: int = 3            # attention heads per block; embed_dim must be divisible by it
    mlp_ratio: float = 4.0        # MLP hidden width = mlp_ratio * embed_dim
    qkv_bias: bool = True         # bias on the fused query/key/value projection
    drop_rate: float = 0.0        # dropout after the embedding, in the MLP and after projections
    attn_drop_rate: float = 0.0   # dropout on the attention weights (training only)
    drop_path_rate: float = 0.0   # stochastic depth, linearly increasing to this over the blocks
    stem: str = "patch"           # "patch": one patchify conv; "conv": 3x3 convs, then patchify
    stem_channels: list[int] = field(default_factory=lambda: [64])  # widths of the ConvStem's 3x3 convs
    stem_padding: str = "zeros"   # ConvStem padding: "zeros", or "circular" for images that wrap around (shapes)
    norm_eps: float = 1e-6        # LayerNorm epsilon (timm's value for ViTs)

    def __post_init__(self) -> None:
        self.validate()
        self.stem_channels = list(self.stem_channels)

    def validate(self) -> None:
        """Raise ConfigError naming the field and the allowed values: types first (strictly),
        then values, then the size bounds, all before any tensor exists."""
        check_field_types(self)
        for name in ("image_size", "patch_size", "in_channels", "num_classes", "embed_dim",
                     "depth", "num_heads", "mlp_ratio", "norm_eps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be a positive number, got "
                                  f"{getattr(self, name)!r}.")
        check_size("model.image_size is", self.image_size, MAX_IMAGE_SIZE, "pixels")
        if self.mlp_dim < 1:
            raise ConfigError(f"model.mlp_ratio ({self.mlp_ratio}) times model.embed_dim "
                              f"({self.embed_dim}) gives an MLP width of {self.mlp_dim}; it must be "
                              f"at least 1, so use mlp_ratio >= {1 / self.embed_dim:.3g}.")
        if any(c <= 0 for c in self.stem_channels):
            raise ConfigError(f"model.stem_channels must list positive widths (e.g. [64, 128]), "
                              f"got {self.stem_channels!r}.")
        check_size("a model.stem_channels width is", max(self.stem_channels, default=0),
                   MAX_STEM_WIDTH, "channels")
        if self.stem not in STEMS:
            raise ConfigError(f"model.stem must be one of {', '.join(STEMS)}, got {self.stem!r}.")
        if self.image_size % self.patch_size:
            raise ConfigError(f"model.image_size ({self.image_size}) must be divisible by "
                              f"model.patch_size ({self.patch_size}).")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.embed_dim ({self.embed_dim}) must be divisible by "
                              f"model.num_heads ({self.num_heads}).")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)!r}.")
        if self.stem_padding not in STEM_PADDINGS:
            raise ConfigError(f"model.stem_padding must be one of {', '.join(STEM_PADDINGS)}, got "
                              f"{self.stem_padding!r}.")
        if self.stem == "conv" and not self.stem_channels:
            raise ConfigError("model.stem_channels must list at least one width when model.stem='conv'.")
        check_size("the patch grid has", self.num_patches, MAX_PATCHES, "patches")
        check_size("the model would have", self.num_parameters, MAX_PARAMETERS, "parameters")

    @property
    def num_parameters(self) -> int:
        """Parameters of the ViT this config builds (what count_parameters reports), computed
        from the config alone, so absurd sizes are refused before anything is allocated."""
        D, M, p = self.embed_dim, self.mlp_dim, self.patch_size
        n, in_ch = 0, self.in_channels
        if self.stem == "conv":
            for c in self.stem_channels:
                n += 9 * in_ch * c + 2 * c          # 3x3 conv without bias, BatchNorm weight+bias
                in_ch = c
        n += in_ch * D * p * p + D                  # patchify conv
        n += D + self.num_tokens * D                # cls_token, pos_embed
        block = (2 * D                              # norm1
                 + 3 * D * D + (3 * D if self.qkv_bias else 0) + D * D + D   # qkv, proj
                 + 2 * D                            # norm2
                 + D * M + M + M * D + D)           # mlp.fc1, mlp.fc2
        return n + self.depth * block + 2 * D + D * self.num_classes + self.num_classes

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def num_tokens(self) -> int:
        """T: the CLS token plus one token per patch."""
        return self.num_patches + 1

    @property
    def mlp_dim(self) -> int:
        return int(round(self.embed_dim * self.mlp_ratio))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k
                     for k in unknown]
            raise ConfigError(f"Unknown model config field(s): {', '.join(hints)}. "
                              f"Known fields: {', '.join(sorted(known))}.")
        return cls(**data)


# Presets: widths/depths/heads as published (ViT-Ti/S/B; ViT-Lite from the CCT paper) with
# CIFAR-sized defaults (32x32 input, 4x4 patches). Override any field with --set model.x=...
PRESETS: dict[str, dict[str, Any]] = {
    "vit-tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "vit-small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "vit-base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "vit-lite": dict(embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0),
    # The seed projects' configurations, kept so results can be compared with them.
    "seed-cifar10": dict(embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0, patch_size=4),
    "seed-cifar100": dict(embed_dim=768, depth=12, num_heads=8, mlp_ratio=4.0, patch_size=4,
                          num_classes=100, stem="conv", stem_channels=[64, 128]),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named preset, with field overrides."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, 1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"No model preset '{name}'.{hint} Available: {', '.join(PRESETS)}.")
    return ModelConfig(**{**PRESETS[name], **overrides})


class HookedLayerNorm(nn.LayerNorm):
    """LayerNorm with hook points on its input and output (`<path>.in`, `<path>.out`).

    The sub-modules hold no parameters, so the state_dict keys stay `<path>.weight/bias`.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__(dim, eps=eps)
        self.add_module("in", HookPoint())   # B×T×D, before normalisation
        self.add_module("out", HookPoint())  # B×T×D, after normalisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, "in")(x)
        return self.out(super().forward(x))


class ConvStem(nn.Module):
    """3x3 conv-BN-ReLU layers at full resolution; the patchify conv follows in PatchEmbed."""

    def __init__(self, in_channels: int, channels: list[int], padding: str = "zeros") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c in channels:
            layers += [nn.Conv2d(in_channels, c, 3, padding=1, padding_mode=padding, bias=False),
                       nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            in_channels = c
        self.layers = nn.Sequential(*layers)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        in_ch = cfg.in_channels
        self.stem: nn.Module | None = None
        if cfg.stem == "conv":
            self.stem = ConvStem(in_ch, cfg.stem_channels, cfg.stem_padding)
            in_ch = self.stem.out_channels
        self.proj = nn.Conv2d(in_ch, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        self.out = HookPoint()  # B×(T-1)×D, patch projections before the position embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        x = self.proj(x)                      # B×D×h×w
        return self.out(x.flatten(2).transpose(1, 2))  # row-major patches: index = row*w + col


class Attention(nn.Module):
    """Multi-head self-attention with a fused branch (SDPA) and an explicit branch.

    The explicit branch runs only when a hook is attached to `weights` (or `fused` is False),
    because materialising B×H×T×T costs memory and time that training should not pay.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.embed_dim // cfg.num_heads
        self.scale = self.head_dim ** -0.5
        self.fused = True
        self.attn_drop_rate = cfg.attn_drop_rate
        self.qkv = nn.Linear(cfg.embed_dim, cfg.embed_dim * 3, bias=cfg.qkv_bias)
        self.q = HookPoint()        # B×H×T×dh
        self.k = HookPoint()        # B×H×T×dh
        self.v = HookPoint()        # B×H×T×dh
        self.weights = HookPoint()  # B×H×T×T, post-softmax; rows are queries and sum to 1
        # B×H×T×dh, each head's output before the projection: head h adds
        # head_out[:, h] @ proj.weight[:, h·dh:(h+1)·dh].T to the stream (vitscope.dump.derive)
        self.head_out = HookPoint()
        self.attn_drop = nn.Dropout(cfg.attn_drop_rate)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate)
        self.out = HookPoint()      # B×T×D, after the output projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = self.q(qkv[0]), self.k(qkv[1]), self.v(qkv[2])
        if self.fused and not self.weights.active:
            drop = self.attn_drop_rate if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = self.weights(attn.softmax(dim=-1))
            x = self.attn_drop(attn) @ v
        x = self.head_out(x).transpose(1, 2).reshape(B, T, D)
        return self.out(self.proj_drop(self.proj(x)))


class Mlp(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_dim)
        self.act = nn.GELU()
        self.hidden = HookPoint()  # B×T×(mlp_ratio·D), after the nonlinearity: the neurons
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.embed_dim)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.out = HookPoint()  # B×T×D, MLP output before the residual add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.fc2(self.drop(self.hidden(self.act(self.fc1(x)))))))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample during training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = HookedLayerNorm(cfg.embed_dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = HookedLayerNorm(cfg.embed_dim, cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.drop_path = DropPath(drop_path)
        self.out = HookPoint()  # B×T×D, the residual stream after this block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return self.out(x)


class _HookGroup(nn.Module):
    """A parameter-free container so a hook can be named `<group>.out` (e.g. `embed.out`)."""

    def __init__(self) -> None:
        super().__init__()
        self.out = HookPoint()


class ViT(nn.Module):
    """Vision Transformer with a CLS token, learned position embedding and pre-norm blocks."""

    num_prefix_tokens = 1  # the CLS token; patches follow in row-major order

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, D))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.embed = _HookGroup()  # embed.out: B×T×D, tokens after CLS and position embedding
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = HookedLayerNorm(D, cfg.norm_eps)
        self.cls = HookPoint()     # B×D, the CLS token fed to the head
        self.head = nn.Linear(D, cfg.num_classes)
        self._init_weights()
        name_hook_points(self)

    def _init_weights(self) -> None:
        def trunc_normal(t: torch.Tensor) -> None:  # std 0.02, truncated at two std
            nn.init.trunc_normal_(t, std=0.02, a=-0.04, b=0.04)

        trunc_normal(self.pos_embed)
        trunc_normal(self.cls_token)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images B×C×H×W (normalised) to the final-norm tokens B×T×D."""
        c, size = self.cfg.in_channels, self.cfg.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, size, size):
            raise ValueError(f"ViT expects images B×{c}×{size}×{size}, got {tuple(x.shape)}; "
                             f"resize the input to the model's image_size (and give it {c} "
                             f"channels).")
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.embed.out(self.pos_drop(x + self.pos_embed))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cls(self.forward_features(x)[:, 0]))

    def readout_modules(self) -> dict:
        """The final norm, the head, each block's output projection; no layer scale
        (vitscope.model.readout stores them in a dump)."""
        n = len(self.blocks)
        return {"norm": self.norm, "head": self.head,
                "proj": [b.attn.proj for b in self.blocks], "ls1": [None] * n, "ls2": [None] * n}

    def set_fused_attn(self, fused: bool) -> None:
        """Force the explicit attention branch everywhere (fused=False), e.g. for baselines."""
        for m in self.modules():
            if isinstance(m, Attention):
                m.fused = fused

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """C×H×W of the images the model takes."""
        return (self.cfg.in_channels, self.cfg.image_size, self.cfg.image_size)

    @property
    def token_layout(self) -> TokenLayout:
        """One CLS token, then the patches in row-major order."""
        cfg = self.cfg
        return TokenLayout.from_prefix([("cls", 1)], (cfg.grid_size, cfg.grid_size),
                                       cfg.patch_size, cfg.image_size)

    def hook_points(self) -> dict[str, HookPoint]:
        return hook_points(self)

    def run_with_cache(self, x: torch.Tensor, names: Any = None) -> tuple[torch.Tensor, dict]:
        """See vitscope.model.hooks.run_with_cache."""
        return run_with_cache(self, x, names=names)


def build_model(cfg: ModelConfig) -> ViT:
    return ViT(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
