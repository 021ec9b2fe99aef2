"""What a plugin author imports: the protocol, and the helpers that read a dump. No torch.

    from vitscope.plugin import Option, read_chunks, select_layers, to_grid, map_arrays

- `protocol`: `Plugin` (every member typed and documented), `Option`, `RenderOptions`,
  `ModelShape`;
- `reading`: layer specs and dump chunks sized for memory, running means by class;
- `tokens`: the token layout's CLS and prefix tokens, patch values as the image's grid;
- `masks`: is a map on the object (mass in mask, pointing game): the one implementation that
  plugins' summaries and `vitscope score` share;
- `maps`: the map contract, how a map plugin hands its N×h×w maps to `vitscope score`.

Figures are in vitscope.render, the dump in vitscope.dump, a test dump in vitscope.testing.
"""
from vitscope.plugin.maps import (PRODUCES, RESULTS, MapSet, MaskTally, append_maps,
                                  map_arrays, mask_numbers, produces_maps, read_maps)
from vitscope.plugin.masks import (HIT_COVERAGE, mask_area, mask_summary, mask_summary_from,
                                   mass_in_mask, patch_coverage, pointing)
from vitscope.plugin.protocol import (OPTIONAL, REQUIRED, RESERVED, STATIC_FORMATS, ModelShape,
                                      Option, Plugin, RenderOptions, check_name, member,
                                      name_problem)
from vitscope.plugin.reading import (READ_BYTES, READ_ROWS, ClassMeans, NanMean, block_index,
                                     layer_spec, n_images, read_chunks, rows_for, rows_per_read,
                                     select_layers)
from vitscope.plugin.tokens import (POOL_POINT, POOL_READOUT, cls_index, other_prefix,
                                    other_prefix_names, prefix_note, readout_query,
                                    to_grid)

__all__ = [
    # protocol
    "Plugin", "Option", "RenderOptions", "ModelShape", "member", "REQUIRED", "OPTIONAL",
    "RESERVED", "STATIC_FORMATS", "name_problem", "check_name",
    # reading a dump
    "layer_spec", "select_layers", "block_index", "n_images", "rows_for", "rows_per_read",
    "read_chunks", "ClassMeans", "NanMean", "READ_BYTES", "READ_ROWS",
    # tokens
    "cls_index", "other_prefix", "other_prefix_names", "prefix_note", "to_grid",
    "readout_query", "POOL_POINT", "POOL_READOUT",
    # masks
    "patch_coverage", "mass_in_mask", "mask_area", "pointing", "mask_summary",
    "mask_summary_from", "HIT_COVERAGE",
    # the map contract
    "produces_maps", "map_arrays", "append_maps", "MaskTally", "mask_numbers", "MapSet",
    "read_maps", "PRODUCES", "RESULTS",
]

# Names this module held before the host's parts moved to vitscope.analyze: still served, with
# a DeprecationWarning naming the new home, for one release.
_MOVED = {
    "discover": "vitscope.analyze.registry", "Registry": "vitscope.analyze.registry",
    "PluginEntry": "vitscope.analyze.registry", "GROUP": "vitscope.analyze.registry",
    "AUTOLOAD_ENV": "vitscope.analyze.registry", "autoload_enabled": "vitscope.analyze.registry",
    "guard_torch_import": "vitscope.analyze.registry",
    "TORCH_AUTOLOAD_ENV": "vitscope.analyze.registry",
    "parse_opts": "vitscope.analyze.options", "check_options": "vitscope.analyze.options",
    "BUILTINS": "vitscope.plugins",
}


def __getattr__(name: str):
    from vitscope._internal.compat import moved_attribute
    if name == "pointing_hits":     # vitscope.maps.pointing_hits, now the tie-aware `pointing`
        return moved_attribute(__name__, name, "vitscope.plugin.masks", "pointing")
    if name in _MOVED:
        return moved_attribute(__name__, name, _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
