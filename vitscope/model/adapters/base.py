"""What every adapter shares: the hook-point tree, routing a foreign module's activations
through it, and the config every family's checkpoint records.

An adapter holds the foreign model as `self.model` (its parameters, untouched) and, beside
it, a parameter-free tree of HookPoints named like vitscope's ViT (`blocks.3.attn.weights`).
Forward hooks and pre-hooks installed once on the foreign modules pass their activations
through those points: a point without hooks costs one `active` check, and whatever a hook
returns replaces the activation downstream, so interventions and gradients (tensor hooks on a
point's output) work as they do on vitscope's own ViT. Explicit attention is switched on per
block, at forward time, only while that block's `attn.weights` point has a hook (each family
module does it its own way: timm `fused_attn`, torchvision/transformers an explicit branch).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitscope.errors import ConfigError, VitscopeError
from vitscope.model.hooks import HookPoint, name_hook_points
from vitscope.layout import TokenLayout

EXTRAS = {"timm": "timm", "torchvision": None, "transformers": "hf", "safetensors": None}


class MissingExtra(VitscopeError):
    """The family's package is not installed."""


def require(package: str, family: str):
    """Import `package` or say in one sentence which pip command installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        extra = EXTRAS.get(package)
        cmd = f"pip install 'vitscope[{extra}]'" if extra else f"pip install {package}"
        raise MissingExtra(f"{family} models need the {package} package, which is not "
                           f"installed; run `{cmd}`.") from None


@contextlib.contextmanager
def building(family: str, name: str, kwargs: dict[str, Any]) -> Iterator[None]:
    """A family's constructor refusing the model or a size (an image size its patches do not
    divide, an option the model lacks) as one ConfigError sentence instead of its assert."""
    try:
        yield
    except VitscopeError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError, ZeroDivisionError) as e:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"{family} cannot build '{name}'{f' with {given}' if given else ''} "
                          f"({reason}); choose a size and options the model supports.") from None


@dataclass
class ForeignConfig:
    """The family's own description of a model, enough to rebuild it without weights."""

    name: str                                  # the family's model name, e.g. "vit_tiny_patch16_224"
    kwargs: dict[str, Any] = field(default_factory=dict)   # what its constructor also takes
    image_size: list[int] = field(default_factory=list)    # input [height, width] in pixels
    num_classes: int = 0                       # outputs of the classifier (0: a feature model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ForeignConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1))
                     else k for k in unknown]
            raise ConfigError(f"Unknown model config field(s): {', '.join(hints)}. Known "
                              f"fields: {', '.join(sorted(known))}.")
        if not isinstance(data.get("name"), str) or not isinstance(data.get("kwargs", {}), dict):
            raise ConfigError("model_config needs a model 'name' (a string) and 'kwargs' (a dict).")
        return cls(**data)


class _Group(nn.Module):
    """A parameter-free container so a point can be named `<group>.out`."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        for n in names:
            self.add_module(n, HookPoint())


class BlockPoints(nn.Module):
    """The hook points of one transformer block, in forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = _Group("in", "out")             # B×T×D before / after the first LayerNorm
        self.attn = _Group("q", "k", "v", "weights", "out")  # B×H×T×dh ×3, B×H×T×T, B×T×D
        self.norm2 = _Group("in", "out")             # B×T×D before / after the second LayerNorm
        self.mlp = _Group("out")                     # B×T×D, MLP output (before layer scale)
        self.out = HookPoint()                       # B×T×D, residual stream after the block

    @property
    def explicit(self) -> bool:
        """Whether the attention must be computed explicitly (weights are hooked)."""
        return self.attn.weights.active

    @property
    def qkv_active(self) -> bool:
        a = self.attn
        return a.q.active or a.k.active or a.v.active


class AdaptedViT(nn.Module):
    """A foreign ViT exposing vitscope's hook points (module docstring).

    Subclasses build `self.model` and call `_finish(depth)`, then route activations with
    `route_output` / `route_input`; they define `token_layout` and `forward`.
    """

    family = ""

    def __init__(self, cfg: ForeignConfig, model: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model            # first child: its parameters are the state_dict

    def _finish(self, depth: int, cls: bool = True, *, blocks=(), head=()) -> None:
        """Register the point tree in forward order, then name the points. `blocks` are the
        foreign model's transformer blocks and `head` its classifier and final norm modules
        (for `randomization_groups`)."""
        paths = {id(m): name for name, m in self.named_modules()}
        # parameter-name prefixes (module paths, as the state_dict names them), kept as plain
        # strings so the foreign modules are not registered twice
        self._block_prefixes = [paths[id(b)] + "." for b in blocks]
        self._head_prefixes = [paths[id(h)] + "." for h in head if h is not None and
                               id(h) in paths]
        self.patch_embed = _Group("out")      # B×P×D, patch projections before the position embedding
        self.embed = _Group("out")            # B×T×D, tokens entering block 0
        self.blocks = nn.ModuleList(BlockPoints() for _ in range(depth))
        self.norm = _Group("out")             # B×T×D, the final norm
        if cls:
            self.cls = HookPoint()            # B×D, the CLS token the classifier reads
        name_hook_points(self)
        self.model.eval()

    def __deepcopy__(self, memo) -> "AdaptedViT":
        """A copy is rebuilt from the config, then given these weights: the hooks on the
        foreign modules close over this model's points, so copying them would leave the copy
        feeding the original's points (vitscope score randomises a deep copy)."""
        new = type(self)(copy.deepcopy(self.cfg, memo))
        memo[id(self)] = new
        p = next(self.parameters(), None)
        if p is not None:
            new.to(device=p.device, dtype=p.dtype)
        new.load_state_dict(self.state_dict())
        new.train(self.training)
        for k, v in self.__dict__.items():     # plain attributes (e.g. source_weights)
            if not k.startswith("_") and k not in new.__dict__ and k != "training":
                new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    def randomization_groups(self) -> list[tuple[str, list[str]]]:
        """(label, parameter names) for `vitscope score`'s cascading randomisation, head first:
        the classifier and final norm, each block from the last down, then the embedding."""
        names = [n for n, _ in self.named_parameters()]
        head = [n for n in names if n.startswith(tuple(self._head_prefixes))]
        blocks = [[n for n in names if n.startswith(p)] for p in self._block_prefixes]
        taken = set(head).union(*map(set, blocks))
        rest = [n for n in names if n not in taken]
        groups = [("head", head)] if head else []
        groups += [(f"blocks.{i}", blocks[i]) for i in reversed(range(len(blocks)))]
        return groups + ([("embedding", rest)] if rest else [])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w = self.cfg.image_size
        return (3, int(h), int(w))

    @property
    def token_layout(self) -> TokenLayout:  # pragma: no cover - every family defines it
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        c, h, w = self.input_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise ValueError(f"This {self.family} model expects images B×{c}×{h}×{w}, got "
                             f"{tuple(x.shape)}; resize the input to the model's size.")


def route_output(module: nn.Module, point: HookPoint, to_point=None, from_point=None) -> None:
    """Pass `module`'s output through `point` (only while the point has hooks). `to_point`
    and `from_point` convert between the module's layout and the point's shape."""
    def hook(mod, args, out):
        if not point.active:
            return None
        shown = to_point(out) if to_point else out
        new = point(shown)
        if new is shown:
            return None
        return from_point(new, out) if from_point else new
    module.register_forward_hook(hook)


def route_input(module: nn.Module, point: HookPoint) -> None:
    """Pass `module`'s first positional input through `point` (only while hooked)."""
    def hook(mod, args):
        if not point.active or not args:
            return None
        new = point(args[0])
        return None if new is args[0] else (new, *args[1:])
    module.register_forward_pre_hook(hook)


def heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """B×T×(H·dh) -> B×H×T×dh."""
    B, T, _ = x.shape
    return x.view(B, T, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """B×H×T×dh -> B×T×(H·dh)."""
    B, H, T, dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * dh)


@dataclass
class Imported:
    """What `vitscope import` writes: the model with its weights, and the family's input
    pipeline and class names (None where the family gives none)."""

    model: AdaptedViT
    preprocess: Any                  # vitscope.data.images.Preprocess
    mean: list[float]
    std: list[float]
    classes: list[str] | None = None


def scaled(resize: int, crop: int, size: int) -> int:
    """The resize a family uses for `crop`, scaled to another input `size` (e.g. 256/224)."""
    return max(size, int(round(size * resize / crop)))
