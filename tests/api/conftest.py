"""Small real models for the API tests: a vitscope checkpoint and timm, torchvision and Hugging
Face ViTs as a user holds them (objects with random, seeded weights; nothing downloaded)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
IMAGES = sorted((ROOT / "examples" / "images").glob("*.jpg"))
SHIPPED = ROOT / "examples" / "checkpoints" / "vit-cifar10.pt"


def _perturbed(model):
    """Random init leaves some weights at exact zeros or ones: nudge every one, so maps and
    gradients are not degenerate."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def timm_vit(num_classes: int = 5):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return _perturbed(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                        patch_size=8, depth=2, embed_dim=48, num_heads=3,
                                        num_classes=num_classes))


def torchvision_vit():
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return _perturbed(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                        hidden_dim=32, mlp_dim=64, num_classes=5))


def hf_vit(headless: bool = False):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, image_size=32, patch_size=8)
    if headless:
        return _perturbed(transformers.Dinov2Model(transformers.Dinov2Config(**small)))
    config = transformers.ViTConfig(**small, num_labels=3,
                                    id2label={0: "cat", 1: "dog", 2: "<b>ship</b>"})
    return _perturbed(transformers.ViTForImageClassification(config))


FOREIGN = {"timm": timm_vit, "torchvision": torchvision_vit, "hf": hf_vit}


@pytest.fixture(scope="session")
def images():
    """Eight of the shipped CIFAR-10 JPEGs (32×32), as file paths."""
    return [str(p) for p in IMAGES[::2][:8]]


@pytest.fixture
def pixels():
    """Four 32×32 RGB images as an N×H×W×3 uint8 array (seeded noise with a bright square)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 120, size=(4, 32, 32, 3), dtype=np.uint8)
    for i in range(4):
        x[i, 4 + 4 * i:14 + 4 * i, 8:20] = 230
    return x
