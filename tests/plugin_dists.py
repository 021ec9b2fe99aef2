"""Real installed plugin distributions for tests: a *.dist-info folder (METADATA,
entry_points.txt) and a module, on a folder that the test puts on sys.path or PYTHONPATH, found
by importlib.metadata exactly as a `pip install` would be."""
from __future__ import annotations

import textwrap
from pathlib import Path


def write_distribution(root: Path, dist: str, module: str | None, source: str | None,
                       entry_points: dict[str, str], *, metadata: bytes | None = None,
                       entry_text: bytes | None = None) -> Path:
    """A real installed distribution `dist` 0.1 under root (put root on sys.path)."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_bytes(metadata if metadata is not None else
                                    f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n".encode())
    lines = [f"{name} = {value.format(mod=module)}" for name, value in entry_points.items()]
    (info / "entry_points.txt").write_bytes(
        entry_text if entry_text is not None else
        ("[vitscope.plugins]\n" + "\n".join(lines) + "\n").encode())
    if module and source:
        (root / f"{module}.py").write_text(source)
    return root


# A distribution of plugins that break the protocol in every way the host must survive.
FAKE_MODULE = textwrap.dedent('''
    from pathlib import Path
    from vitscope.plugin import Option

    class Good:
        """A working third-party plugin."""
        name = "fake-good"
        requires = ("blocks.*.attn.weights",)
        options = (Option("level", int, 1, "how much", min=0, max=5),)
        def render(self, dump, out_dir, options):
            p = Path(out_dir) / "good.txt"
            p.write_text(f"{len(dump)} images, level {options.level}")
            return [p]

    class NoRender:
        name = "fake-no-render"
        requires = ()

    class BadSignature:
        name = "fake-bad-signature"
        requires = ()
        def render(self, dump):
            return []

    class Explodes:
        name = "fake-explodes"
        requires = ("blocks.*.attn.weights",)
        def render(self, dump, out_dir, options):
            raise RuntimeError("kaboom")

    class NeedsMissing:
        name = "fake-needs-missing"
        requires = ("blocks.*.mlp.gate",)        # no ViT hook point has this name
        def render(self, dump, out_dir, options):
            raise AssertionError("never called: the hook points are missing")

    class BadDefault:
        name = "fake-bad-default"
        requires = ()
        options = (Option("ratio", float, 2.0, "a fraction", max=1.0),)
        def render(self, dump, out_dir, options):
            return []
''')

FAKE_ENTRY_POINTS = {
    "fake-good": "{mod}:Good",
    "fake-no-render": "{mod}:NoRender",
    "fake-bad-signature": "{mod}:BadSignature",
    "fake-explodes": "{mod}:Explodes",
    "fake-bad-default": "{mod}:BadDefault",
    "fake-needs-missing": "{mod}:NeedsMissing",
    "fake-import-error": "fake_module_that_does_not_exist_xyz:Plugin",
    "rollout": "{mod}:Good",   # a name clash with a built-in
}


def write_fake_distribution(root: Path, module: str, entry_points: dict[str, str],
                            source: str = FAKE_MODULE) -> Path:
    """A real installed distribution `fake-vitscope-plugins` under root (add root to sys.path)
    whose module `module` holds `source`."""
    info = root / "fake_vitscope_plugins-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-vitscope-plugins\n"
                                   "Version: 0.3\n")
    lines = [f"{name} = {value.format(mod=module)}" for name, value in entry_points.items()]
    (info / "entry_points.txt").write_text("[vitscope.plugins]\n" + "\n".join(lines) + "\n")
    (root / f"{module}.py").write_text(source)
    return root
