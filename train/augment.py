"""The training data pipeline: uint8 images on the device, augmented a batch at a time.

Per batch: one gather does random crop (with reflect or zero padding) and horizontal flip on
the uint8 images; then the RandAugment / TrivialAugment policy, normalisation, and mixup or
cutmix on floats; label smoothing lives in the soft targets. No DataLoader, no PIL.

Every random choice of an epoch (sample order, crop offsets, flips, which op each image gets
and how strongly, mixup/cutmix) is drawn up front on the CPU from a generator seeded by
(seed, epoch, rank). That gives three things: the GPU never waits on the host (the only host
values the loop needs, group sizes and cutmix boxes, are known in advance, so nothing syncs);
exact resume in the middle of an epoch (regenerate the plan, skip the batches already done);
and per-image ops applied to contiguous slices instead of masks: a batch is already in random
order, so giving op k to positions [start_k, end_k) with multinomial group sizes is the same
distribution as drawing an op per image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitscope.train import ops


@dataclass
class BatchPlan:
    index: torch.Tensor          # B sample indices into the (local) training set
    dy: torch.Tensor             # B crop offsets in [0, 2 * pad]
    dx: torch.Tensor
    flip: torch.Tensor           # B bool
    rounds: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, list[int]]]
    # per policy round: (batch permutation or None, op id per position, signed magnitude, group sizes)
    mix: tuple[str, float, tuple[int, int, int, int] | None]  # ("none"|"mixup"|"cutmix", lam, box)


class EpochPlan:
    """All random draws of one epoch for one rank; `batch(i)` gives batch i's share."""

    def __init__(self, cfg, n_samples: int, steps: int, batch: int, epoch: int, rank: int,
                 image_size: int, device: torch.device) -> None:
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        used = steps * batch
        self.steps, self.batch_size, self.device = steps, batch, device
        order = rng.permutation(n_samples)[:used]
        pad = cfg.crop_padding
        crop = rng.integers(0, 2 * pad + 1, size=(2, used)) if pad else np.full((2, used), 0)
        flips = rng.random(used) < 0.5 if cfg.flip else np.zeros(used, bool)
        to_dev = lambda a, dt: torch.as_tensor(a, dtype=dt).to(device, non_blocking=True)  # noqa: E731
        self.order = to_dev(order, torch.long).view(steps, batch)
        self.dy = to_dev(crop[0], torch.long).view(steps, batch)
        self.dx = to_dev(crop[1], torch.long).view(steps, batch)
        self.flip = to_dev(flips, torch.bool).view(steps, batch)

        # Augmentation policy: n_rounds ops per image; op groups are contiguous per round.
        self.n_rounds = 0 if cfg.augment == "none" else (cfg.randaug_ops if cfg.augment == "randaugment" else 1)
        k = len(ops.OPS)
        self.counts = rng.multinomial(batch, np.full(k, 1 / k), size=(steps, self.n_rounds))
        op_ids = np.stack([np.repeat(np.arange(k), c) for c in self.counts.reshape(-1, k)]) \
            if self.n_rounds else np.zeros((0, batch), int)
        if cfg.augment == "randaugment":
            strength = np.full(op_ids.shape, cfg.randaug_magnitude / 30)
        else:  # TrivialAugment: a uniformly random bin of 0..30 for every application
            strength = rng.integers(0, 31, size=op_ids.shape) / 30
        signs = np.where(rng.random(op_ids.shape) < 0.5, -1.0, 1.0)
        # Rounds after the first reshuffle the batch so their groups are independent of round 1.
        perms = np.stack([rng.permutation(batch) for _ in range(op_ids.shape[0])]) \
            if self.n_rounds > 1 else np.zeros((0, batch), int)
        self.op_ids = to_dev(op_ids, torch.long).view(steps, self.n_rounds, batch)
        self.mags = to_dev(strength * signs, torch.float32).view(steps, self.n_rounds, batch)
        self.perms = to_dev(perms, torch.long).view(steps, self.n_rounds, batch) if self.n_rounds > 1 else None

        # Mixup / cutmix: one choice and one lambda per batch.
        self.mix: list[tuple[str, float, tuple[int, int, int, int] | None]] = []
        kinds = [n for n, a in (("mixup", cfg.mixup_alpha), ("cutmix", cfg.cutmix_alpha)) if a > 0]
        for _ in range(steps):
            if not kinds or rng.random() >= cfg.mix_prob:
                self.mix.append(("none", 1.0, None))
                continue
            kind = kinds[rng.integers(len(kinds))]
            lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha) if kind == "mixup"
                        else rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha))
            box = None
            if kind == "cutmix":
                box, lam = _cutmix_box(rng, image_size, lam)
            self.mix.append((kind, lam, box))

    def batch(self, i: int) -> BatchPlan:
        rounds = []
        for r in range(self.n_rounds):
            perm = self.perms[i, r] if (self.perms is not None and r > 0) else None
            rounds.append((perm, self.op_ids[i, r], self.mags[i, r], self.counts[i, r].tolist()))
        return BatchPlan(self.order[i], self.dy[i], self.dx[i], self.flip[i], rounds, self.mix[i])


def _cutmix_box(rng: np.random.Generator, size: int, lam: float):
    """A box of area (1 - lam) at a uniform centre, clipped; lam is corrected for clipping."""
    cut = int(size * np.sqrt(1 - lam))
    cy, cx = rng.integers(size), rng.integers(size)
    y0, y1 = np.clip(cy - cut // 2, 0, size), np.clip(cy + cut // 2, 0, size)
    x0, x1 = np.clip(cx - cut // 2, 0, size), np.clip(cx + cut // 2, 0, size)
    lam = 1 - (y1 - y0) * (x1 - x0) / (size * size)
    return (int(y0), int(y1), int(x0), int(x1)), float(lam)


def crop_flip(images: torch.Tensor, plan: BatchPlan, pad: int, pad_mode: str) -> torch.Tensor:
    """Gather the batch's images with random crop and flip in one indexing op.

    images: N×H×W×3 uint8 on the device. Returns B×H×W×3 uint8. Output pixel (i, j) comes from
    padded pixel (dy + i, dx + j') with j' = W - 1 - j when flipped; the padding is never
    materialised: reflect maps out-of-range indices back inside, zeros masks them.
    """
    _, h, w, _ = images.shape
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = plan.dy[:, None] + ar_h - pad                                           # B×H
    cols = plan.dx[:, None] + torch.where(plan.flip[:, None], w - 1 - ar_w, ar_w) - pad  # B×W
    if pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
        return images[plan.index[:, None, None], rows[:, :, None], cols[:, None, :]]
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    out = images[plan.index[:, None, None], rows.clamp(0, h - 1)[:, :, None],
                 cols.clamp(0, w - 1)[:, None, :]]
    return out * valid[..., None].to(out.dtype)


def _reflect(idx: torch.Tensor, n: int) -> torch.Tensor:
    idx = idx.abs()
    return torch.where(idx >= n, 2 * (n - 1) - idx, idx)


def apply_policy(x: torch.Tensor, rounds, ranges: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply each round's ops to contiguous groups. Returns the batch and the composed
    permutation of its positions (None when no round reshuffled), for the labels."""
    order = None
    g0, g1 = ops.GEOMETRIC_IDS
    for perm, op_ids, mags, counts in rounds:
        if perm is not None:
            x = x[perm]
            order = perm if order is None else order[perm]
        starts = np.concatenate([[0], np.cumsum(counts)])
        out = x.clone()
        a, b = int(starts[g0]), int(starts[g1])  # all geometric groups form one slice
        if b > a:
            out[a:b] = ops.affine(x[a:b], op_ids[a:b], mags[a:b], ranges)
        for k, name in enumerate(ops.OPS):
            s, e = int(starts[k]), int(starts[k + 1])
            if e > s and name in ops.COLOR_OPS:
                out[s:e] = ops.COLOR_OPS[name](x[s:e], mags[s:e], ranges)
        x = out
    return x, order


class Augmenter:
    """Turns a BatchPlan into a normalised float batch and soft targets on the device."""

    def __init__(self, cfg, mean: list[float], std: list[float], num_classes: int,
                 device: torch.device) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.ranges = ops.RANGES.get(cfg.augment, ops.RANGES["randaugment"])
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, plan: BatchPlan):
        """images: N×H×W×3 uint8, labels: N int64 (both on the device) ->
        (x: B×3×H×W float32 normalised, targets: B×C soft labels, y: B hard labels)."""
        x = crop_flip(images, plan, self.cfg.crop_padding, self.cfg.pad_mode)
        y = labels[plan.index]
        x = x.permute(0, 3, 1, 2).contiguous().float().div_(255)
        if plan.rounds:
            x, order = apply_policy(x, plan.rounds, self.ranges)
            if order is not None:
                y = y[order]
        x = (x - self.mean) / self.std
        eps = self.cfg.label_smoothing
        targets = torch.full((y.shape[0], self.num_classes), eps / self.num_classes,
                             device=x.device, dtype=torch.float32)
        targets.scatter_(1, y[:, None], 1 - eps + eps / self.num_classes)
        kind, lam, box = plan.mix
        if kind == "mixup":
            x = x.mul(lam).add_(x.flip(0), alpha=1 - lam)
        elif kind == "cutmix":
            y0, y1, x0, x1 = box
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        if kind != "none":
            targets = targets.mul(lam).add_(targets.flip(0), alpha=1 - lam)
        return x.contiguous(), targets, y
