"""Models with hook points: vitscope's ViT (`vit`), the CNN baseline (`cnn`), hook points and
attaching hooks by name (`hooks`), checkpoints (`checkpoint`), and foreign ViTs behind the
same hook points (`adapters`: timm, torchvision, Hugging Face).

    from vitscope.model import ViT, ModelConfig, run_with_cache
    from vitscope.model.checkpoint import load_model
"""
from vitscope.model.hooks import HookPoint, attach, hook_points, list_hook_points, run_with_cache
from vitscope.model.vit import PRESETS, ModelConfig, ViT, build_model, count_parameters, preset

__all__ = ["ViT", "ModelConfig", "PRESETS", "preset", "build_model", "count_parameters",
           "HookPoint", "attach", "hook_points", "list_hook_points", "run_with_cache",
           "load_model", "load_checkpoint", "save_checkpoint"]


def __getattr__(name: str):
    # checkpoint imports the adapters' registry; loaded when first asked for
    if name in ("load_model", "load_checkpoint", "save_checkpoint"):
        from vitscope.model import checkpoint
        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
