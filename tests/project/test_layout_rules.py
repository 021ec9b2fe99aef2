"""The walls between the parts, as folder rules: which packages may import what, no import
circles, a torch-free reading side, the stage packages that `ls vitscope/` shows, and an
`import vitscope` that changes nothing in the host process."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vitscope"

# Packages (and loose modules) that never import torch, not even lazily: a dump made on a GPU
# renders on a laptop, and plugin authors' imports stay light.
TORCH_FREE = ("vitscope/dump", "vitscope/plugin", "vitscope/render", "vitscope/methods",
              "vitscope/names.py",
              "vitscope/layout.py", "vitscope/errors.py", "vitscope/_internal/bounded.py",
              "vitscope/_internal/files.py", "vitscope/_internal/folders.py",
              "vitscope/_internal/text.py", "vitscope/_internal/compat.py", "plugins")
# What a plugin may import from vitscope: exactly what a third-party plugin is told to use.
PLUGIN_API = ("vitscope.dump", "vitscope.plugin", "vitscope.render", "vitscope.methods",
              "vitscope.errors", "vitscope.testing", "vitscope.plugins")
# Layers: a package may import the ones listed for it (and anything torch-free below them).
LOW = ("vitscope", "vitscope.errors", "vitscope.names", "vitscope.layout", "vitscope._internal")
MAY_IMPORT = {
    "vitscope._internal": ("vitscope", "vitscope.errors", "vitscope._internal"),
    "vitscope.dump": LOW + ("vitscope.dump",),
    "vitscope.plugin": LOW + ("vitscope.plugin",),
    "vitscope.methods": LOW + ("vitscope.methods",),
    "vitscope.render": LOW + ("vitscope.render", "vitscope.plugin", "vitscope.plugins"),
    "vitscope.data": LOW + ("vitscope.data",),
    "vitscope.model": LOW + ("vitscope.model", "vitscope.data"),
    # capture runs the map methods that need the model and stores their maps (DESIGN §2)
    "vitscope.capture": LOW + ("vitscope.capture", "vitscope.model", "vitscope.data",
                               "vitscope.dump", "vitscope.methods"),
    # the notebook API: in-memory captures, the map methods, figures, and the host's
    # plugin rendering and scoring (one implementation of each), never the CLI or training
    "vitscope.api": LOW + ("vitscope.api", "vitscope.model", "vitscope.data", "vitscope.capture",
                           "vitscope.dump", "vitscope.methods", "vitscope.plugin",
                           "vitscope.render", "vitscope.analyze", "vitscope.score"),
}
STAGES = ("data", "model", "capture", "dump", "plugin", "methods", "render", "analyze", "evaluate",
          "score", "api", "commands", "_internal")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("plugins", "train"):
        parts = ["vitscope", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(*where: str) -> list[Path]:
    out = []
    for w in where:
        p = ROOT / w
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


MODULES = {_module(p): p for p in _files("vitscope", "plugins", "train")}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (a lazy import is how a
    dependency hides). `from pkg import sub` counts as importing pkg.sub where sub is a module."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in MODULES]
            deps |= set(subs) if subs and len(subs) == len(node.names) else {node.module, *subs}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names}
    return deps


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    """`module` is one of `prefixes` or inside one ("vitscope" itself names only the top
    package's __init__, e.g. `from vitscope import __version__`)."""
    return any(module == p or (p != "vitscope" and module.startswith(p + "."))
               for p in prefixes)


def test_vitscope_lists_the_stages():
    """`ls vitscope/` reads as the flow: the stage packages and a handful of loose modules."""
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert set(STAGES) <= packages, set(STAGES) - packages
    assert len(loose) <= 8, loose


@pytest.mark.parametrize("where", TORCH_FREE)
def test_reading_side_never_imports_torch(where):
    """Checked twice: no import statement names torch (lazy ones included), and importing
    the modules in a fresh interpreter loads no torch."""
    files = _files(where)
    named = {str(p.relative_to(ROOT)): sorted(d for d in _imports(p)
                                              if d.split(".")[0] in ("torch", "torchvision"))
             for p in files}
    assert not {k: v for k, v in named.items() if v}
    mods = [_module(p) for p in files if _module(p) != "vitscope.plugins.__main__"]
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {mods!r}]; "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'); "
            f"assert not bad, bad[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_plugins_import_only_the_plugin_api():
    bad = {}
    for p in _files("plugins"):
        wrong = sorted(d for d in _imports(p)
                       if d.startswith("vitscope") and not _within(d, PLUGIN_API))
        if wrong:
            bad[p.name] = wrong
    assert not bad, f"built-in plugins must import only {PLUGIN_API}: {bad}"


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_lower_layers_never_import_higher_ones(package):
    bad = {}
    for mod, p in MODULES.items():
        if not _within(mod, (package,)):
            continue
        wrong = sorted(d for d in _imports(p)
                       if d.startswith("vitscope") and not _within(d, MAY_IMPORT[package]))
        if wrong:
            bad[mod] = wrong
    assert not bad, bad


def test_training_never_imports_the_analysis_host_or_plugins():
    """train/ reaches plugins only through the registry that commands/train hands it."""
    bad = {str(p.relative_to(ROOT)): sorted(d for d in _imports(p)
                                           if _within(d, ("vitscope.analyze", "vitscope.plugins",
                                                          "vitscope.commands")))
           for p in _files("train")}
    assert not {k: v for k, v in bad.items() if v}


def test_no_import_circles():
    graph = {m: {d for d in _imports(p) if d in MODULES and d != m} for m, p in MODULES.items()}
    # a package's __init__ re-exporting its own modules is not a circle through them
    for m in graph:
        graph[m] = {d for d in graph[m] if not (d == m.rpartition(".")[0] and
                                                 MODULES[d].name == "__init__.py" and
                                                 _reexports_only(MODULES[d], m))}
    circles = []

    def walk(start, node, path):
        for d in graph[node]:
            if d == start:
                circles.append(" -> ".join(path + [d]))
            elif d > start and d not in path:
                walk(start, d, path + [d])

    for m in graph:
        walk(m, m, [m])
    assert not circles, circles


def _reexports_only(init: Path, child: str) -> bool:
    """Whether a package __init__ imports `child` only to re-export it (it defines nothing
    that `child` could need from it)."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    return not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name != "__getattr__"
                   for n in tree.body)


def test_public_packages_declare_all():
    """What a plugin author imports says what it exports."""
    import importlib
    for name in ("vitscope.dump", "vitscope.plugin", "vitscope.render", "vitscope.methods",
                 "vitscope.testing", "vitscope.errors"):
        module = importlib.import_module(name)
        assert isinstance(getattr(module, "__all__", None), list), name
        for member in module.__all__:
            assert hasattr(module, member) or importlib.import_module(f"{name}.{member}"), \
                (name, member)


def test_import_vitscope_has_no_side_effects():
    """A library leaves its host alone: no thread settings, no environment variables, no
    torch, and no module of the analysis host loaded by `import vitscope`."""
    code = ("import os, sys; before = dict(os.environ); import vitscope; "
            "assert 'OMP_NUM_THREADS' not in os.environ; assert dict(os.environ) == before; "
            "assert 'torch' not in sys.modules; "
            "assert not [m for m in sys.modules if m.startswith(('vitscope.analyze', "
            "'vitscope.api'))]; "
            # the notebook API is there, loaded only when first used (torch: when it runs)
            "assert 'explain' in dir(vitscope) and 'torch' not in sys.modules; "
            "f = vitscope.explain; assert callable(f); "
            "assert f is sys.modules['vitscope.api'].explain")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
