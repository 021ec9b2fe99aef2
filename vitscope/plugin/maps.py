"""The map contract: how a map plugin hands its maps to `vitscope score`. Imports no torch.

A plugin that explains images with one map each declares it and saves the maps in its
`results.npz` beside its other numbers:

    class MyMap:
        name = "my-map"
        requires = ("blocks.*.attn.weights",)
        produces = ("maps",)                      # the declaration `vitscope score` looks for

        def render(self, dump, out_dir, options):
            maps = ...                             # N×h×w on dump.layout.grid, N = first images
            return figures.save_results(out_dir, {**map_arrays(dump, maps), ...}, summary)

`map_arrays` adds three arrays: `maps` (N×h×w float32, row-major on the patch grid, higher =
more relevant), `image_indices` (N: each image's index in its split, `dump.indices`) and
`target` (N: the class each map explains, `dump.target`; for class-agnostic maps that is the
class the dump records, usually the prediction). `read_maps` checks all of that against the
dump the plugin rendered, so `score` can rely on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitscope.plugin.protocol import member
from vitscope.errors import PluginError

PRODUCES = "maps"          # what a map plugin lists in `produces`
RESULTS = "results.npz"


def produces_maps(plugin: Any) -> bool:
    """Whether a (loaded) plugin declares that it produces maps."""
    produced = member(plugin, "produces") or ()
    return not isinstance(produced, str) and PRODUCES in tuple(produced)


def map_arrays(dump, maps: np.ndarray, n: int | None = None) -> dict[str, np.ndarray]:
    """The contract's three arrays for the first n images of `dump` (n = len(maps))."""
    maps = np.asarray(maps, dtype=np.float32)
    n = len(maps) if n is None else n
    return {"maps": maps[:n], "image_indices": np.asarray(dump.indices[:n], dtype=np.int64),
            "target": np.asarray(dump.target[:n], dtype=np.int64)}


def append_maps(results, dump, maps: np.ndarray, start: int) -> None:
    """`map_arrays` chunk by chunk: append the maps of images start..start+len(maps), with
    their image indices and targets, to a `figures.Results` (memory bounded by the chunk)."""
    stop = start + len(maps)
    results.append("maps", np.asarray(maps, dtype=np.float32))
    results.append("image_indices", np.asarray(dump.indices[start:stop], dtype=np.int64))
    results.append("target", np.asarray(dump.target[start:stop], dtype=np.int64))


class MaskTally:
    """`mask_numbers` chunk by chunk: keeps three numbers per image (mass in mask, mask area,
    pointing hit), never the maps. `add` does nothing on a dump without masks."""

    def __init__(self, dump) -> None:
        self.dump = dump
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, maps: np.ndarray, start: int) -> None:
        if self.dump.masks is None:
            return
        from vitscope.plugin.masks import mask_area, mass_in_mask, patch_coverage, pointing
        cov = patch_coverage(np.asarray(self.dump.masks[start:start + len(maps)]),
                             self.dump.layout.grid)
        self.parts.append((mass_in_mask(maps, cov), mask_area(cov), pointing(maps, cov)))

    def numbers(self) -> dict[str, float]:
        if not self.parts:
            return {}
        from vitscope.plugin.masks import mask_summary_from
        inside, area, hits = (np.concatenate(x) for x in zip(*self.parts))
        return {k: round(v, 4) for k, v in mask_summary_from(inside, area, hits).items()}


def mask_numbers(dump, maps: np.ndarray, n: int) -> dict[str, float]:
    """Headline localisation numbers of N×h×w maps for a summary.json (mass in mask, mask
    area, their ratio, pointing game), rounded; {} when the dump has no masks."""
    tally = MaskTally(dump)
    tally.add(np.asarray(maps)[:n], 0)
    return tally.numbers()


@dataclass
class MapSet:
    """The maps of one plugin on the first len(maps) images of a dump."""
    plugin: str
    maps: np.ndarray           # N×h×w float32
    image_indices: np.ndarray  # N int64, index in the split
    target: np.ndarray         # N int64

    def __len__(self) -> int:
        return len(self.maps)


def read_maps(out_dir: str | Path, dump, plugin: str, n: int | None = None) -> MapSet:
    """The maps a plugin saved in out_dir/results.npz after rendering `dump`, checked against
    it (grid, images, target); PluginError in one sentence naming what is wrong. `n`: how many
    images it was asked to render (all of them must have a map)."""
    path = Path(out_dir) / RESULTS
    fix = ("a map plugin saves `maps`, `image_indices` and `target` with "
           "vitscope.plugin.maps.map_arrays (docs/plugins.md, 'Map plugins')")
    if not path.is_file():
        raise PluginError(f"Plugin '{plugin}' wrote no {RESULTS}; {fix}.")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("maps", "image_indices", "target") if k not in f.files]
            if missing:
                raise PluginError(f"Plugin '{plugin}' declares maps but its {RESULTS} lacks "
                                  f"{', '.join(missing)}; {fix}.")
            maps = np.asarray(f["maps"], dtype=np.float32)
            indices = np.asarray(f["image_indices"])
            target = np.asarray(f["target"])
    except (OSError, ValueError) as e:
        raise PluginError(f"Plugin '{plugin}' wrote an unreadable {RESULTS} ({e}); {fix}.") from None
    grid = tuple(dump.layout.grid)
    want = len(dump) if n is None else n
    if maps.ndim != 3 or tuple(maps.shape[1:]) != grid:
        raise PluginError(f"Plugin '{plugin}' saved maps of shape {maps.shape}, not N×"
                          f"{grid[0]}×{grid[1]} on the dump's patch grid; {fix}.")
    if len(maps) != want or indices.shape != (want,) or target.shape != (want,):
        raise PluginError(f"Plugin '{plugin}' saved {len(maps)} maps ({indices.shape[0] if indices.ndim else 0} "
                          f"image indices, {target.shape[0] if target.ndim else 0} targets) for "
                          f"the {want} images it was given; save one of each per image.")
    if not np.array_equal(indices, dump.indices[:want]):
        raise PluginError(f"Plugin '{plugin}' saved image indices that are not the dump's first "
                          f"{want} images in order; save dump.indices[:n].")
    if not np.array_equal(target, dump.target[:want]):
        raise PluginError(f"Plugin '{plugin}' saved targets that differ from the dump's "
                          f"(dump.target); each map must name the class the dump explains.")
    if not np.isfinite(maps).all():
        bad = int((~np.isfinite(maps).all(axis=(1, 2))).sum())
        raise PluginError(f"Plugin '{plugin}' saved maps with NaN or infinite values for {bad} "
                          f"images; maps must be finite.")
    return MapSet(plugin, maps, indices.astype(np.int64), target.astype(np.int64))
