"""AdamW with the usual ViT weight-decay exclusions, and the mixed-precision settings."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from vitscope.errors import ConfigError

NO_DECAY_NAMES = ("cls_token", "pos_embed")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only weight matrices and conv kernels: never norms, biases (1-d tensors),
    cls_token or pos_embed, whose decay towards zero only hurts."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg, device: torch.device) -> torch.optim.AdamW:
    """AdamW; the fused CUDA kernel on GPUs (one launch for all parameters)."""
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=tuple(cfg.betas), **extra)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on CUDA GPUs that support it, else fp16 (with GradScaler); fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision 'fp16' needs a GPU (cuda or mps); use fp32 or bf16 on the CPU.")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision 'bf16' is not supported by this GPU; use fp16 or auto.")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
