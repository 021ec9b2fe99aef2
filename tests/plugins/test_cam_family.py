"""The CAM family (gradcam-pp, hirescam, layercam, eigencam, scorecam, and gradcam beside
them) against pytorch-grad-cam itself, run on the same live model and images: a timm ViT with a CLS token and
two registers (three prefix tokens), a batch of four images, target = the prediction. The
plugins render from a real float32 dump; pytorch-grad-cam's outputs are min-max scaled and
resized to the image, so ours go through its own `scale_cam_image` (twice, as it does) before
comparing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitscope.capture import capture
from vitscope.data import load_dataset, to_model_input
from vitscope.dump import Dump
from vitscope.plugin.maps import read_maps
from vitscope.score.stats import spearman
from vitscope.testing import render_options

pytest.importorskip("timm")
cams = pytest.importorskip("pytorch_grad_cam", reason="pip install 'vitscope[cam]'")

from vitscope.plugins.cams import EigenCam, GradCamPlusPlus, HiResCam, LayerCam  # noqa: E402
from vitscope.plugins.gradcam import GradCam  # noqa: E402

from vitscope.plugins.model_maps import ScoreCam  # noqa: E402

PLUGINS = {"gradcam": (GradCam, "GradCAM"), "gradcam-pp": (GradCamPlusPlus, "GradCAMPlusPlus"),
           "hirescam": (HiResCam, "HiResCAM"), "layercam": (LayerCam, "LayerCAM"),
           "eigencam": (EigenCam, "EigenCAM"),
           "scorecam": (ScoreCam, "ScoreCAM")}     # stored in the dump at capture time


@pytest.fixture(scope="module")
def registers_dump(tmp_path_factory):
    from vitscope.model.adapters import build
    root = tmp_path_factory.mktemp("cams")
    torch.manual_seed(0)
    model = build("timm", "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                  num_classes=10, reg_tokens=2, no_embed_class=True).eval()
    with torch.no_grad():       # away from the initialisation's symmetric, near-zero head
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert model.token_layout.num_prefix_tokens == 3 and model.token_layout.grid == (4, 4)
    ds = load_dataset("shapes:val=4,train=4", "val", 32)
    hooks = ["blocks.*.norm1.out", "grad:blocks.*.norm1.out", "map:scorecam"]
    path = capture(model, ds, root / "d.h5", hooks, classes=ds.classes, batch_size=4,
                   dtype="float32", derive=False)
    return path, model, ds


def reference(model, x, target, cls_name):
    """pytorch-grad-cam on the live timm model: blocks[-1].norm1, prefix tokens dropped."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    prefix, (h, w) = model.token_layout.num_prefix_tokens, model.token_layout.grid

    def reshape_transform(t):
        return t[:, prefix:, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    timm_model = model.model
    cam = getattr(cams, cls_name)(model=timm_model, target_layers=[timm_model.blocks[-1].norm1],
                                  reshape_transform=reshape_transform)
    return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])


@pytest.mark.parametrize("name", list(PLUGINS))
def test_each_cam_equals_pytorch_grad_cam(registers_dump, tmp_path, name):
    from pytorch_grad_cam.utils.image import scale_cam_image
    path, model, ds = registers_dump
    plugin_cls, cls_name = PLUGINS[name]
    plugin = plugin_cls()
    with Dump.open(path) as dump:
        plugin.render(dump, tmp_path, render_options(plugin, static=False, interactive=False))
        ours = read_maps(tmp_path, dump, name, len(dump)).maps
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(ds.images[dump.indices])),
                           [0.5] * 3, [0.5] * 3)
        target = dump.target
    want = reference(model, x, target, cls_name)                  # N×32×32 in [0, 1]
    # pytorch-grad-cam scales each layer's map (min-max, resized to the image), then scales
    # the mean over layers once more (aggregate_multi_layers): the same two steps here
    got = scale_cam_image(scale_cam_image(np.asarray(ours, np.float32), (32, 32)))
    assert got.shape == want.shape == (4, 32, 32)
    assert np.abs(got - want).max() < 1e-4, name
    varied = [np.ptp(m) > 0 for m in want]        # an all-zero map after the ReLU has no ρ
    assert sum(varied) >= 3, name                  # most maps say something: not vacuous
    rho = spearman(got[varied], want[varied])
    assert rho.min() > 0.999, (name, rho)
