"""Shared fixtures: real, tiny models and checkpoints (no mocks of the model)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))

from vitscope.checkpoint import save_checkpoint  # noqa: E402
from vitscope.model import ModelConfig, ViT  # noqa: E402

TINY = dict(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
            num_classes=5)


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return ModelConfig(**TINY)


@pytest.fixture
def tiny_vit(tiny_cfg) -> ViT:
    torch.manual_seed(0)
    return ViT(tiny_cfg).eval()


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_vit):
    return save_checkpoint(tmp_path / "tiny.pt", tiny_vit, classes=list("abcde"),
                           metrics={"epoch": 3, "val_acc": 0.5})
