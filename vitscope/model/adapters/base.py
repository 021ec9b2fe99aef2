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

Everything an adapter does to the foreign model is undone by `release()`: its hooks removed,
swapped classes, attributes and flags put back. So a model object a user already holds can be
wrapped in place (`TimmViT.around(model)`, what `vitscope.explain` does) and handed back as it
was, and a copy (`copy.deepcopy`, which `vitscope score` randomises) is made of the foreign
model with nothing of vitscope on it, then wrapped again.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator
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
        # B×H×T×dh ×3, B×H×T×T, head_out B×H×T×dh (each head before the projection), B×T×D
        self.attn = _Group("q", "k", "v", "weights", "head_out", "out")
        self.norm2 = _Group("in", "out")             # B×T×D before / after the second LayerNorm
        # hidden: B×T×F after the nonlinearity (fc2's input); out: B×T×D (before layer scale)
        self.mlp = _Group("hidden", "out")
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

    Subclasses take the foreign model (or build it from the config), call `_finish(depth)`,
    then `_install()`, which routes activations through `_routes()` (each `route_output` /
    `route_input` and whatever else it changes on the foreign model, as undo callables);
    they define `token_layout` and `forward`.
    """

    family = ""
    config_class: type = ForeignConfig

    def __init__(self, cfg: ForeignConfig, model: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model            # first child: its parameters are the state_dict
        self._undo: list[Callable[[], None]] = []

    @classmethod
    def around(cls, model: nn.Module) -> "AdaptedViT":
        """Wrap a foreign model object in place (no copy of its weights); `release()` gives it
        back as it was. Its config is read off the object (`config_class.from_model`)."""
        return cls(cls.config_class.from_model(model), model)

    def _routes(self) -> Iterable[Callable[[], None]]:  # pragma: no cover - every family
        raise NotImplementedError

    def _install(self) -> None:
        """Feed the hook points from the foreign model's modules (once); a route that fails
        leaves nothing of the others behind."""
        if self._undo:
            return
        undo: list[Callable[[], None]] = []
        try:
            for fn in self._routes():
                undo.append(fn)
        except BaseException:
            for fn in reversed(undo):
                fn()
            raise
        self._undo = undo

    def release(self) -> None:
        """Undo everything `_install` did to the foreign model, latest first; idempotent. The
        hook points stay, and receive nothing until `_install()` runs again."""
        undo, self._undo = self._undo, []
        for fn in reversed(undo):
            fn()

    @contextlib.contextmanager
    def _released(self) -> Iterator[None]:
        installed = bool(self._undo)
        self.release()
        try:
            yield
        finally:
            if installed:
                self._install()

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
        """The foreign model is copied with vitscope's hooks taken off (they close over this
        model's points: copied, they would feed the original's points), then wrapped again
        (vitscope score randomises a deep copy)."""
        with self._released():
            model = copy.deepcopy(self.model, memo)
        new = type(self)(copy.deepcopy(self.cfg, memo), model)
        memo[id(self)] = new
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


def route_output(module: nn.Module, point: HookPoint, to_point=None,
                 from_point=None) -> Callable[[], None]:
    """Pass `module`'s output through `point` (only while the point has hooks). `to_point`
    and `from_point` convert between the module's layout and the point's shape. Returns what
    removes the route."""
    def hook(mod, args, out):
        if not point.active:
            return None
        shown = to_point(out) if to_point else out
        new = point(shown)
        if new is shown:
            return None
        return from_point(new, out) if from_point else new
    return module.register_forward_hook(hook).remove


def route_input(module: nn.Module, point: HookPoint, to_point=None,
                from_point=None) -> Callable[[], None]:
    """Pass `module`'s first positional input through `point` (only while hooked), converted
    like `route_output`'s. Returns what removes the route."""
    def hook(mod, args):
        if not point.active or not args:
            return None
        shown = to_point(args[0]) if to_point else args[0]
        new = point(shown)
        if new is shown:
            return None
        return ((from_point(new, args[0]) if from_point else new), *args[1:])
    return module.register_forward_pre_hook(hook).remove


def set_attribute(obj: Any, name: str, value: Any) -> Callable[[], None]:
    """`obj.name = value`; returns what puts the attribute back as it was (or deletes it)."""
    missing = object()
    old = obj.__dict__.get(name, missing)

    def undo() -> None:
        if old is missing:
            obj.__dict__.pop(name, None)
        else:
            obj.__dict__[name] = old
    obj.__dict__[name] = value
    return undo


def heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """B×T×(H·dh) -> B×H×T×dh."""
    B, T, _ = x.shape
    return x.view(B, T, num_heads, -1).transpose(1, 2)


def split_heads(num_heads: int):
    """(to_point, from_point) showing a B×T×(H·dh) tensor as B×H×T×dh and back, for routing a
    projection's input through `attn.head_out`."""
    return (lambda x: heads(x, num_heads)), (lambda new, like: merge_heads(new).view(like.shape))


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
