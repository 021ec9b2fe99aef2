"""Helpers for testing plugins: a small, real dump in a second.

    from vitscope.testing import make_dump

    def test_my_plugin(tmp_path):
        dump_path = make_dump(tmp_path / "tiny.h5")              # 8 shapes images, tiny ViT
        with Dump.open(dump_path) as dump:
            files = MyPlugin().render(dump, tmp_path / "out", render_options(MyPlugin()))

The dump is captured by the real capture code from a randomly initialised ViT (seeded, so
the numbers are the same every run) on the built-in `shapes` data, masks included. Pass
`checkpoint=` to also save that model as a checkpoint, e.g. to drive `vitscope analyze CKPT
--dump FILE` end to end.
"""
from __future__ import annotations

from vitscope.plugin.protocol import member

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The gradients the built-in gradient plugins read (grad-rollout, attn-grad, gradcam).
__all__ = ["make_dump", "render_options", "BUILTIN_GRADS", "BUILTIN_MECH"]

BUILTIN_GRADS = ("grad:blocks.*.attn.weights", "grad:blocks.*.norm1.out")
# The maps the built-in plugins of methods that need the model read, stored at capture time
# (vitscope.capture.model_maps; the first two need Captum, so only where it is installed).
BUILTIN_MAPS = ("map:integrated-gradients", "map:occlusion", "map:scorecam", "map:attnlrp",
                "map:cp-lrp")


def _builtin_maps() -> tuple[str, ...]:
    import importlib.util
    captum = importlib.util.find_spec("captum") is not None
    return BUILTIN_MAPS if captum else ("map:scorecam", "map:attnlrp", "map:cp-lrp")
# What logit-attribution reads beyond the default hooks (the per-head and MLP outputs).
BUILTIN_MECH = ("embed.out", "blocks.*.attn.head_out", "blocks.*.mlp.out")


def make_dump(path: str | Path, *, n: int = 8, image_size: int = 16, patch_size: int = 4,
              depth: int = 2, num_heads: int = 2, embed_dim: int = 32,
              hooks: str | Iterable[str] | None = None, seed: int = 0,
              checkpoint: str | Path | None = None, dtype: str = "float16") -> Path:
    """Capture `n` shapes validation images through a tiny random ViT into the dump `path`
    (overwritten if it exists). `hooks` defaults to every hook the built-in plugins read,
    gradients (of the predicted class) and, with Captum installed, the stored maps of
    integrated-gradients and occlusion included."""
    import torch

    from vitscope.capture import DEFAULT_HOOKS, capture
    from vitscope.model.checkpoint import load_checkpoint, save_checkpoint
    from vitscope.data import load_dataset
    from vitscope.model.vit import ModelConfig, ViT

    spec = f"shapes:val={n},train={n}"
    dataset = load_dataset(spec, "val", image_size, seed=seed)
    cfg = ModelConfig(image_size=image_size, patch_size=patch_size, embed_dim=embed_dim,
                      depth=depth, num_heads=num_heads, mlp_ratio=2.0,
                      num_classes=len(dataset.classes))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViT(cfg).eval()
    normalize = ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    ckpt = None
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, classes=dataset.classes,
                        train_config={"data": spec, "image_size": image_size,
                                      "normalize": {"mean": normalize[0], "std": normalize[1]}},
                        metrics={"epoch": 0})
        ckpt = load_checkpoint(checkpoint)
    hooks = [*DEFAULT_HOOKS, *BUILTIN_MECH, *BUILTIN_GRADS, *_builtin_maps()] if hooks is None \
        else hooks
    return capture(model, dataset, path, hooks, ckpt=ckpt,
                   normalize=normalize, classes=dataset.classes, batch_size=max(1, n),
                   dtype=dtype, force=True, device="cpu", seed=seed)


def render_options(plugin: Any, **values: Any):
    """The RenderOptions `vitscope analyze` would pass: the plugin's defaults, overridden by
    `values` (converted and validated like `--opt`), plus static, interactive, format, limit,
    run_dir (the output folder's parent, where plotly.min.js is written) and smooth."""
    from vitscope.plugin import RenderOptions

    declared = {o.name: o for o in member(plugin, "options") or ()}
    common = {"static": True, "interactive": True, "format": "png", "limit": None,
              "run_dir": None, "smooth": False}
    out = {name: opt.default for name, opt in declared.items()}
    for key, value in values.items():
        if key in declared:
            out[key] = declared[key].convert(value)
        elif key in common:
            common[key] = value
        else:
            raise KeyError(f"{getattr(plugin, 'name', plugin)!r} has no option {key!r}")
    return RenderOptions({**out, **common})
