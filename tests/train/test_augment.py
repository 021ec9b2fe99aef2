"""The batched device augmentation against per-image references (torchvision, plain torch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from vitscope.data import to_model_input
from vitscope.train import ops
from vitscope.train.augment import Augmenter, BatchPlan, EpochPlan, crop_flip
from vitscope.train.config import make_config

RA = ops.RANGES["randaugment"]


def images(n=6, size=8, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3),
                                                                  dtype=np.uint8))


def plan_for(index, dy, dx, flip) -> BatchPlan:
    t = lambda v, dt=torch.long: torch.tensor(v, dtype=dt)  # noqa: E731
    return BatchPlan(t(index), t(dy), t(dx), t(flip, torch.bool), [], ("none", 1.0, None))


@pytest.mark.parametrize("pad_mode, torch_mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_crop_flip_matches_pad_crop_flip_per_image(pad_mode, torch_mode):
    imgs, pad = images(), 3
    index, dy, dx, flip = [4, 0, 2, 2, 5], [0, 6, 3, 1, 5], [6, 0, 2, 4, 3], [True, False, True, False, True]
    got = crop_flip(imgs, plan_for(index, dy, dx, flip), pad, pad_mode)
    for b, i in enumerate(index):
        padded = F.pad(imgs[i].permute(2, 0, 1)[None].float(), (pad,) * 4, mode=torch_mode)[0]
        ref = padded[:, dy[b]:dy[b] + 8, dx[b]:dx[b] + 8]
        if flip[b]:
            ref = ref.flip(-1)
        torch.testing.assert_close(got[b], ref.permute(1, 2, 0).to(torch.uint8))


def test_unaugmented_batch_is_exactly_to_model_input():
    cfg = make_config(overrides={"crop_padding": 0, "flip": False, "label_smoothing": 0.0})
    imgs, labels = images(5, 32), torch.arange(5)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    aug = Augmenter(cfg, mean, std, num_classes=5, device=torch.device("cpu"))
    plan = plan_for([3, 1, 4, 0, 2], [0] * 5, [0] * 5, [False] * 5)
    x, targets, y = aug(imgs, labels, plan)
    torch.testing.assert_close(x, to_model_input(imgs[[3, 1, 4, 0, 2]], mean, std))
    assert y.tolist() == [3, 1, 4, 0, 2]
    torch.testing.assert_close(targets, F.one_hot(y, 5).float())


def float_batch(n=4, size=8, seed=1) -> torch.Tensor:
    return images(n, size, seed).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("name, reference, factor", [
    ("brightness", TF.adjust_brightness, 1 + 0.5 * RA["enhance"]),
    ("color", TF.adjust_saturation, 1 + 0.5 * RA["enhance"]),
    ("contrast", TF.adjust_contrast, 1 + 0.5 * RA["enhance"]),
    ("sharpness", TF.adjust_sharpness, 1 + 0.5 * RA["enhance"]),
])
def test_enhance_ops_match_torchvision(name, reference, factor):
    x = float_batch()
    got = ops.COLOR_OPS[name](x, torch.full((len(x),), 0.5), RA)
    for i in range(len(x)):
        torch.testing.assert_close(got[i], reference(x[i], factor), atol=1e-5, rtol=0)


def test_integer_ops_match_torchvision():
    u8 = images(4, 8, seed=2).permute(0, 3, 1, 2).contiguous()
    u8[1] = u8[1] // 4 + 60  # a low-contrast image, where equalize and autocontrast matter
    x = u8.float() / 255
    m = torch.full((4,), 0.5)
    posterized = ops.posterize(x, m, RA)      # 8 - round(0.5 * 4) = 6 bits
    solarized = ops.solarize(x, m, RA)        # threshold 1 - 0.5
    equalized = ops.equalize(x, m, RA)
    stretched = ops.autocontrast(x, m, RA)
    for i in range(4):
        torch.testing.assert_close(posterized[i], TF.posterize(u8[i], 6).float() / 255)
        torch.testing.assert_close(solarized[i], TF.solarize(x[i], 0.5))
        torch.testing.assert_close(equalized[i], TF.equalize(u8[i]).float() / 255)
        torch.testing.assert_close(stretched[i], TF.autocontrast(x[i]), atol=1e-6, rtol=0)


def test_affine_rotates_and_translates_exactly():
    x = float_batch(3, 8)
    rot = ops.affine(x, torch.full((3,), ops.OPS.index("rotate")), torch.ones(3),
                     {**RA, "rotate": 90.0})
    assert any(torch.equal(rot, torch.rot90(x, k, dims=(2, 3))) for k in (1, 3))
    shift = ops.affine(x, torch.full((3,), ops.OPS.index("translate_x")), torch.ones(3),
                       {**RA, "translate": 0.25})  # 2 of 8 pixels, black fill
    moved = [torch.cat([torch.zeros_like(x[..., :2]), x[..., :-2]], -1),
             torch.cat([x[..., 2:], torch.zeros_like(x[..., :2])], -1)]
    assert any(torch.equal(shift, m) for m in moved)
    ident = ops.affine(x, torch.full((3,), ops.OPS.index("shear_x")), torch.zeros(3), RA)
    assert torch.equal(ident, x)


def test_epoch_plan_is_deterministic_and_varies_by_epoch_and_rank():
    cfg = make_config(overrides={"augment": "randaugment", "mixup_alpha": 0.8, "cutmix_alpha": 1.0})
    args = dict(n_samples=100, steps=3, batch=16, image_size=32, device=torch.device("cpu"))
    a, b = EpochPlan(cfg, epoch=1, rank=0, **args), EpochPlan(cfg, epoch=1, rank=0, **args)
    assert torch.equal(a.order, b.order) and torch.equal(a.mags, b.mags) and a.mix == b.mix
    assert not torch.equal(a.order, EpochPlan(cfg, epoch=2, rank=0, **args).order)
    assert not torch.equal(a.order, EpochPlan(cfg, epoch=1, rank=1, **args).order)
    assert len(set(a.order.flatten().tolist())) == 48  # no sample twice in an epoch
    assert a.counts.sum(-1).tolist() == [[16, 16]] * 3  # every image gets an op in each round


def test_full_policy_keeps_labels_with_their_images_and_targets_normalised():
    cfg = make_config(overrides={"augment": "randaugment", "randaug_ops": 2, "mixup_alpha": 0.0,
                                 "cutmix_alpha": 1.0, "label_smoothing": 0.1})
    n = 64
    imgs = images(n, 32, seed=3)
    labels = torch.arange(n) % 10
    # Encode the label in the image: a constant image whose red value is the label; every
    # policy op keeps a constant image constant-ish, so the label must follow its image.
    imgs = torch.zeros(n, 32, 32, 3, dtype=torch.uint8)
    imgs[..., 0] = (labels * 20 + 30).to(torch.uint8)[:, None, None]
    plan = EpochPlan(cfg, n, 2, 32, epoch=1, rank=0, image_size=32, device=torch.device("cpu"))
    aug = Augmenter(cfg, [0.0] * 3, [1.0] * 3, num_classes=10, device=torch.device("cpu"))
    for i in range(2):
        bp = plan.batch(i)
        x, targets, y = aug(imgs, labels, bp)
        assert x.shape == (32, 3, 32, 32) and torch.isfinite(x).all()
        torch.testing.assert_close(targets.sum(1), torch.ones(32))
        assert sorted(y.tolist()) == sorted(labels[bp.index].tolist())
        kind, lam, _ = bp.mix
        top = targets.argmax(1)
        if kind == "none" or lam > 0.5:
            assert torch.equal(top, y)
