"""The map methods by name: which hook points each reads and the arithmetic that turns them
into one N×h×w map per image. No torch.

    method = get("grad-rollout")
    names = method.reads(options, depth)      # ("blocks.0.attn.weights", "grad:blocks.0...", ...)
    out = method.compute(arrays, layout, options, depth)   # arrays: {name: N×... array}
    out.maps                                  # N×h×w on layout.grid

The plugin of the same name calls `compute` on dump chunks and the Python API (`vitscope.api`)
on in-memory captures, so both give the same numbers. A method reads exactly the hook points
`reads` names for one setting (gradcam: one block's norm1 output and its gradient, not every
block's), which is what the API captures.

A method that needs the model itself (integrated gradients, occlusion, Score-CAM, ...) sets
`needs_model` and gives `run(model, x, target, layout, options) -> N×h×w` instead of
`compute`: the API calls it batch by batch with the hooked model, the normalised inputs and
the class explained per image. `register` adds one; `METHODS` lists them in order.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitscope.errors import ConfigError
from vitscope.methods.cams import cam
from vitscope.methods.grad_rollout import grad_rollout
from vitscope.methods.gradcam import gradcam
from vitscope.methods.rollout import FUSIONS, attention_rollout, fuse_heads
from vitscope.names import OPTIONAL_PREFIX
from vitscope.names import POOL_WEIGHTS as POOL_POINT   # an attention-pooling head's query

ATTENTION = "blocks.{}.attn.weights"
GRADCAM_POINT = "blocks.{}.norm1.out"   # pytorch-grad-cam's ViT target: blocks[-1].norm1's output


# Methods that need the model but cost one forward and one backward pass per batch (LRP), not
# tens to hundreds (IG, occlusion, Score-CAM): `analyze --all` runs them. Named here, without
# torch, because analyze plans in a process that never imports it.
ONE_PASS = frozenset({"attnlrp", "cp-lrp"})


@dataclass(frozen=True)
class MapOutput:
    """What a method computes for N images."""
    maps: np.ndarray                      # N×h×w, higher = more relevant
    steps: np.ndarray | None = None       # N×L×h×w: the map up to each layer (rollouts)
    extra: dict[str, np.ndarray] = field(default_factory=dict)   # method-specific arrays


@dataclass(frozen=True)
class MapMethod:
    """One map method (see the module docstring)."""
    name: str                             # the plugin name, e.g. "grad-rollout"
    description: str
    defaults: Mapping[str, Any]           # the options the arithmetic reads, as the plugin's
    reads: Callable[[Mapping[str, Any], int], tuple[str, ...]] = lambda options, depth: ()
    compute: Callable[..., MapOutput] | None = None
    # with needs_cls: reads, on a model without a CLS token, its pooling head's query instead
    # (POOL_POINT), where the model has one
    pooling_head: bool = False
    needs_model: bool = False             # computed with the model: `run`, not `compute`
    run: Callable[..., np.ndarray] | None = None
    class_specific: bool = False          # explains the target class (reads its gradients)
    needs_cls: bool = False               # reads the CLS token (a model without one cannot)
    # options that set only speed or memory (a batch size), never the maps: a stored map made
    # with other values of these still serves (Dump.covers compares the rest)
    speed_options: tuple[str, ...] = ()

    def options(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults, overridden by `given` (keys the method does not read are kept)."""
        return {**self.defaults, **(given or {})}

    def map_deciding(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options among `options` that decide the maps (all but `speed_options`)."""
        return {k: v for k, v in options.items() if k not in self.speed_options}


class LazyArrays(Mapping):
    """{hook name: array} that reads each array only when asked (`read(name)`), so a method
    holds one layer of a chunk at a time, as the plugins read dumps."""

    def __init__(self, names: Iterable[str], read: Callable[[str], np.ndarray]) -> None:
        self._names = list(names)
        self._read = read

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return self._read(name)

    def __contains__(self, name: object) -> bool:   # without reading it
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def block(spec: int | None, depth: int, default: int, what: str) -> int:
    """One block index (negative counts from the end), `default` for None."""
    if spec is None:
        return default
    if not -depth <= int(spec) < depth:
        raise ConfigError(f"{what}={spec} is outside the model's blocks 0–{depth - 1}; pick one "
                          f"within them (negative counts from the end).")
    return int(spec) % depth


def span(options: Mapping[str, Any], depth: int, name: str) -> list[int]:
    """The blocks start_layer..end_layer of a rollout-like method."""
    start = block(options.get("start_layer"), depth, 0, f"{name}.start_layer")
    end = block(options.get("end_layer"), depth, depth - 1, f"{name}.end_layer")
    if end < start:
        raise ConfigError(f"{name}.end_layer ({end}) is before {name}.start_layer ({start}); "
                          f"choose end_layer >= start_layer.")
    return list(range(start, end + 1))


def to_grid(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """...×P patch values -> ...×h×w on the patch grid (row-major)."""
    return values.reshape(*values.shape[:-1], *grid)


def _cls(layout, name: str) -> int:
    if layout.cls_index is None:
        raise ConfigError(f"This model has no CLS token ({layout.describe()}); {name} reads the "
                          f"CLS row, so it needs one.")
    return layout.cls_index


# ------------------------------------------------------------------------------ the methods

def _rollout_reads(options, depth):
    # the pooling head's attention where the model has one (SigLIP: no CLS row to read)
    return (*(ATTENTION.format(l) for l in span(options, depth, "rollout")),
            f"{OPTIONAL_PREFIX}{POOL_POINT}")


def _rollout(arrays, layout, options, depth) -> MapOutput:
    """Rollout read out at the CLS row, or, for a model without a CLS token that pools with
    an attention head, at that head's query (its head-fused attention over the final tokens,
    carried back through the rollout: the natural analogue of the CLS row, which is also the
    final read-out's view of the tokens); `extra["readout"]` says which."""
    fusion = options["fusion"]
    if fusion not in FUSIONS:
        raise ConfigError(f"rollout.fusion '{fusion}' is not one of {', '.join(FUSIONS)}.")
    cls, query = layout.cls_index, None
    if cls is None and POOL_POINT in arrays:
        query = fuse_heads(np.asarray(arrays[POOL_POINT]), fusion)[:, 0].astype(np.float64)
    else:
        cls = _cls(layout, "rollout")
    layers = (arrays[ATTENTION.format(l)] for l in span(options, depth, "rollout"))  # one at a time
    final, steps, row = attention_rollout(layers, fusion, float(options["discard_ratio"]),
                                          layout.num_prefix_tokens, cls, full_row=True,
                                          query=query)
    return MapOutput(to_grid(final, layout.grid), to_grid(steps, layout.grid),
                     {"cls_row": row, "readout": np.array("cls" if query is None else "pool")})


def _grad_reads(layers: Callable[[Mapping, int], list[int]]):
    def reads(options, depth):
        names = [ATTENTION.format(l) for l in layers(options, depth)]
        return (*names, *(f"grad:{n}" for n in names))
    return reads


def _grad_layers(options, depth):
    return span(options, depth, "grad-rollout")


def _one_layer(options, depth):
    return [block(options.get("layer"), depth, depth - 1, "attn-grad.layer")]


def _weighted(layers: Callable[[Mapping, int], list[int]], name: str):
    def compute(arrays, layout, options, depth) -> MapOutput:
        names = [ATTENTION.format(l) for l in layers(options, depth)]
        attn = (np.asarray(arrays[n], np.float32) for n in names)
        grads = (np.asarray(arrays[f"grad:{n}"], np.float32) for n in names)
        final, steps = grad_rollout(attn, grads, _cls(layout, name), layout.num_prefix_tokens)
        return MapOutput(to_grid(final, layout.grid), to_grid(steps, layout.grid))
    return compute


def _gradcam_reads(options, depth):
    point = GRADCAM_POINT.format(block(options.get("block"), depth, depth - 1, "gradcam.block"))
    return (point, f"grad:{point}")


def _gradcam(arrays, layout, options, depth) -> MapOutput:
    point, grad = _gradcam_reads(options, depth)
    return MapOutput(to_grid(gradcam(arrays[point], arrays[grad], layout.num_prefix_tokens),
                             layout.grid))


def _cam_reads(name: str, gradients: bool = True):
    def reads(options, depth):
        point = GRADCAM_POINT.format(block(options.get("block"), depth, depth - 1,
                                           f"{name}.block"))
        return (point, f"grad:{point}") if gradients else (point,)
    return reads


def _cam(name: str):
    """A member of the CAM family (vitscope.methods.cams) on the gradcam target."""
    def compute(arrays, layout, options, depth) -> MapOutput:
        point, *grad = _cam_reads(name, name != "eigencam")(options, depth)
        maps = cam(arrays[point], arrays[grad[0]] if grad else None, name,
                   layout.num_prefix_tokens)
        return MapOutput(to_grid(maps, layout.grid))
    return compute


METHODS: dict[str, MapMethod] = {}


def register(method: MapMethod) -> MapMethod:
    """Add a method (replacing one of the same name); returns it."""
    if (method.compute is None) == (method.run is None) or method.needs_model != (method.run is not None):
        raise ConfigError(f"Map method '{method.name}' must give either compute (from hook "
                          f"points) or run with needs_model=True (from the model), not both.")
    METHODS[method.name] = method
    return method


def get(name: str) -> MapMethod:
    """The method called `name`; ConfigError listing the methods otherwise."""
    method = METHODS.get(name)
    if method is None:
        import difflib
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"No map method '{name}'.{hint} Methods: {', '.join(METHODS)}.")
    return method


register(MapMethod("rollout", "attention rollout (Abnar & Zuidema 2020), class-agnostic",
                   {"fusion": "mean", "discard_ratio": 0.0, "start_layer": 0, "end_layer": None},
                   _rollout_reads, _rollout, needs_cls=True, pooling_head=True))
register(MapMethod("grad-rollout", "gradient-weighted attention rollout (Chefer et al. 2021)",
                   {"start_layer": 0, "end_layer": None}, _grad_reads(_grad_layers),
                   _weighted(_grad_layers, "grad-rollout"), class_specific=True, needs_cls=True))
register(MapMethod("attn-grad", "attention × gradient of one layer (default the last)",
                   {"layer": -1}, _grad_reads(_one_layer), _weighted(_one_layer, "attn-grad"),
                   class_specific=True, needs_cls=True))
register(MapMethod("gradcam", "Grad-CAM on the patch tokens of one block's norm1 output",
                   {"block": -1}, _gradcam_reads, _gradcam, class_specific=True))
for _name, _what in (("gradcam-pp", "Grad-CAM++ (Chattopadhay et al. 2018)"),
                     ("hirescam", "HiResCAM (Draelos & Carin 2020)"),
                     ("layercam", "LayerCAM (Jiang et al. 2021)")):
    register(MapMethod(_name, f"{_what} on the patch tokens of one block's norm1 output",
                       {"block": -1}, _cam_reads(_name), _cam(_name), class_specific=True))
register(MapMethod("eigencam", "Eigen-CAM (Muhammad & Yeasin 2020): first principal component "
                   "of one block's norm1 output, class-agnostic", {"block": -1},
                   _cam_reads("eigencam", gradients=False), _cam("eigencam")))
