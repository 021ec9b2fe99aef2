"""SmallCNN: the convolutional baseline (`vitscope train --model cnn`).

A plain VGG-style net like the seed projects' comparison CNN: stages of 3x3 conv-BN-ReLU
followed by 2x2 max-pooling, then global average pooling and a linear head. It trains
through the same pipeline as the ViT so the two are compared on equal terms.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitscope.errors import ConfigError
from vitscope.model.vit import (MAX_IMAGE_SIZE, MAX_PARAMETERS, ModelConfig, check_field_types,
                            check_size)


@dataclass
class CNNConfig:
    image_size: int = 32          # input height = width in pixels (any size: the net pools globally)
    in_channels: int = 3          # input channels (3 for RGB)
    num_classes: int = 10         # outputs of the linear head
    channels: list[int] = field(default_factory=lambda: [64, 128, 256])  # width of each stage
    convs_per_stage: int = 2      # 3x3 conv-BN-ReLU layers per stage, before its 2x2 max-pool
    drop_rate: float = 0.0        # dropout before the head

    def __post_init__(self) -> None:
        self.validate()
        self.channels = list(self.channels)

    def validate(self) -> None:
        check_field_types(self)
        for name in ("image_size", "in_channels", "num_classes", "convs_per_stage"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}.")
        check_size("model.image_size is", self.image_size, MAX_IMAGE_SIZE, "pixels")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ConfigError(f"model.channels must list positive stage widths, got {self.channels!r}.")
        if self.image_size < 2 ** len(self.channels):
            raise ConfigError(f"model.image_size ({self.image_size}) is too small for "
                              f"{len(self.channels)} pooling stages; use at least "
                              f"{2 ** len(self.channels)} or fewer model.channels.")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"model.drop_rate must be in [0, 1), got {self.drop_rate!r}.")
        check_size("the model would have", self.num_parameters, MAX_PARAMETERS, "parameters")

    @property
    def num_parameters(self) -> int:
        """Parameters of the SmallCNN this config builds, from the config alone."""
        n, in_ch = 0, self.in_channels
        for width in self.channels:
            for _ in range(self.convs_per_stage):
                n += 9 * in_ch * width + 2 * width   # 3x3 conv without bias, BatchNorm
                in_ch = width
        return n + in_ch * self.num_classes + self.num_classes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Unknown fields are rejected with close-match hints exactly as for the ViT's config.
    from_dict = classmethod(ModelConfig.from_dict.__func__)


class SmallCNN(nn.Module):
    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        in_ch = cfg.in_channels
        for width in cfg.channels:
            for _ in range(cfg.convs_per_stage):
                layers += [nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                in_ch = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(in_ch, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.pool(self.features(x)).flatten(1)))
