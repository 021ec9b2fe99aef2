"""Learning rate per optimizer step: linear warmup from ~0 to the peak, then cosine to min_lr.

Stepping per optimizer step (not per epoch) keeps the curve smooth for short runs with few
epochs; the only state is the step count, which the trainer saves for --resume.
"""
from __future__ import annotations

import math


class WarmupCosine:
    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0):
        self.peak_lr = peak_lr
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(max(0, warmup_steps), self.total_steps)
        self.min_lr = min(min_lr, peak_lr)

    def __call__(self, step: int) -> float:
        """The learning rate for optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1 + math.cos(math.pi * progress))
