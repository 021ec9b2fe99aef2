"""Old import paths, kept for one release after the layout moved modules into stage packages.

`import vitscope.figures` (or `from vitscope import figures`) still works: a finder on
sys.meta_path answers for the old names only, imports the new module, registers it under the
old name as well (so both names are one module object and monkeypatching either works) and
raises a DeprecationWarning naming the new path, as timm and TransformerLens did when they
moved code. Nothing else on the import system changes.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old module -> new module
MOVED_MODULES: dict[str, str] = {
    "vitscope.adapters": "vitscope.model.adapters",
    "vitscope.adapters.base": "vitscope.model.adapters.base",
    "vitscope.adapters.timm": "vitscope.model.adapters.timm",
    "vitscope.adapters.torchvision": "vitscope.model.adapters.torchvision",
    "vitscope.adapters.transformers": "vitscope.model.adapters.transformers",
    "vitscope.adapters.weights": "vitscope.model.adapters.weights",
    "vitscope.analysis": "vitscope.analyze",
    "vitscope.animation": "vitscope.analyze.animation",
    "vitscope.bounded": "vitscope._internal.bounded",
    "vitscope.checkpoint": "vitscope.model.checkpoint",
    "vitscope.cnn": "vitscope.model.cnn",
    "vitscope.commands.inspect": "vitscope.commands.info",
    "vitscope.comparison": "vitscope.evaluate.compare",
    "vitscope.comparison_report": "vitscope.evaluate.compare_page",
    "vitscope.datasets": "vitscope.data",
    "vitscope.datasets.base": "vitscope.data.base",
    "vitscope.datasets.cifar": "vitscope.data.cifar",
    "vitscope.datasets.folder": "vitscope.data.folder",
    "vitscope.datasets.images": "vitscope.data.images",
    "vitscope.datasets.shapes": "vitscope.data.shapes",
    "vitscope.derive": "vitscope.dump.derive",
    "vitscope.dumpcheck": "vitscope.dump.check",
    "vitscope.escaping": "vitscope.render.escaping",
    "vitscope.evaluation": "vitscope.evaluate.classify",
    "vitscope.figures": "vitscope.render.figures",
    "vitscope.hooks": "vitscope.model.hooks",
    "vitscope.interactive": "vitscope.render.interactive",
    "vitscope.isolation": "vitscope.analyze.isolation",
    "vitscope.jit": "vitscope.render.umap_cache",
    "vitscope.locks": "vitscope._internal.locks",
    "vitscope.maps": "vitscope.plugin",
    "vitscope.mapset": "vitscope.plugin.maps",
    "vitscope.mosaic": "vitscope.render.mosaic",
    "vitscope.paths": "vitscope._internal.folders",
    "vitscope.report": "vitscope.render.index_page",
    "vitscope.score.report": "vitscope.score.outputs",
    "vitscope.selection": "vitscope.analyze.selection",
    "vitscope.settings": "vitscope.render.setting_folders",
    "vitscope.signals": "vitscope._internal.signals",
    "vitscope.staging": "vitscope.analyze.staging",
    "vitscope.threads": "vitscope._internal.threads",
    "vitscope.train.logging": "vitscope.train.run_log",
    "vitscope.writing": "vitscope._internal.files",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; import it from there (the old path goes away in "
                  f"the next release).", DeprecationWarning, stacklevel=4)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def create_module(self, spec):
        _warn(self.old, self.new)
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        # The new module is already executed; make `vitscope.figures` and the attribute on
        # the parent package point at it, so the two names are one object.
        sys.modules[self.old] = module
        parent, _, child = self.old.rpartition(".")
        setattr(sys.modules[parent], child, module)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(fullname, new))


def install() -> None:
    """Put the finder first on sys.meta_path, once. It answers for MOVED_MODULES only; first,
    because `vitscope.adapters.base` would otherwise be found again by the path finder inside
    the aliased package's folder and loaded a second time as another module object."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())


def moved_attribute(module: str, name: str, new_module: str, new_name: str | None = None):
    """`module.name`, which now lives at `new_module.new_name`: the object, with a warning."""
    warnings.warn(f"{module}.{name} moved to {new_module}.{new_name or name}; import it from "
                  f"there (the old name goes away in the next release).", DeprecationWarning,
                  stacklevel=3)
    return getattr(importlib.import_module(new_module), new_name or name)
