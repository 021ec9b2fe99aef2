"""vitscope: train Vision Transformers, capture their activations, and look inside them.

The packages follow the data: data -> model -> capture -> dump -> plugin/render (figures) ->
analyze (the host that runs plugins) -> evaluate / score; commands/ holds the thin CLI. The
notebook API is `vitscope.api`, its functions also here, loaded when first used:

    import vitscope
    ex = vitscope.explain(model, ["cat.jpg"], methods=["grad-rollout", "gradcam"])
    vitscope.attention(model, images); vitscope.embed(model, images)

Importing vitscope changes nothing in the host process: no threads or environment variables
are set (the CLI configures threads itself). Old module paths of earlier versions keep
working for one release, with a DeprecationWarning (vitscope._internal.compat).
"""

__version__ = "0.2.0"

from vitscope._internal import compat as _compat  # noqa: E402

_compat.install()

# The notebook API, imported (with torch) when first used, so `import vitscope` stays light.
_API = ("explain", "attention", "embed", "view", "patch", "Explanation", "Evidence", "Attention",
        "Embedding", "Figures", "Patching")


def __getattr__(name: str):
    if name in _API:
        import importlib
        return getattr(importlib.import_module("vitscope.api"), name)
    raise AttributeError(f"module 'vitscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])

