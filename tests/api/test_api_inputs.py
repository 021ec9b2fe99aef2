"""Images as a user holds them all reach the model as the same input: files, PIL images, a
folder (labels from its class folders), a --data spec, uint8 arrays either way round, float
pixels, and a tensor already preprocessed; the in-memory capture reads only what the methods
need; a map method that needs the model plugs into the registry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitscope
from vitscope.methods import METHODS, MapMethod, register

from conftest import SHIPPED, timm_vit


def test_every_kind_of_image_gives_the_same_maps(tmp_path, images):
    files = images[:3]
    by_path = vitscope.explain(SHIPPED, files, methods=["grad-rollout"])
    pil = [Image.open(p) for p in files]
    u8 = by_path.images                                      # N×H×W×3, as the model saw them
    kinds = {
        "pil": pil,
        "nhwc uint8": u8,
        "nchw tensor": torch.from_numpy(u8).permute(0, 3, 1, 2),
        "one by one": [torch.from_numpy(u8[i]) for i in range(3)],
        "float pixels": torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255,
    }
    for kind, given in kinds.items():
        ex = vitscope.explain(SHIPPED, given, methods=["grad-rollout"])
        np.testing.assert_array_equal(ex.images, u8, err_msg=kind)
        np.testing.assert_allclose(ex.maps["grad-rollout"], by_path.maps["grad-rollout"],
                                   atol=1e-6, err_msg=kind)
    from vitscope.data import normalization
    from vitscope.model.checkpoint import load_checkpoint
    mean, std = normalization(load_checkpoint(SHIPPED))
    x = (torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
         - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    ex = vitscope.explain(SHIPPED, x, methods=["grad-rollout"], preprocessed=True)
    np.testing.assert_allclose(ex.maps["grad-rollout"], by_path.maps["grad-rollout"], atol=1e-5)
    assert np.abs(ex.images.astype(int) - u8).max() <= 1          # shown: the inputs, denormalised


def test_a_folder_and_a_data_spec(tmp_path, images):
    """Class sub-folders label the images (matched to the model's classes by name); a spec
    gives its first n images in the order `vitscope analyze` takes them."""
    for p in images[:4]:
        cls = Path(p).name.split("_")[0]
        (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
        Image.open(p).save(tmp_path / "data" / cls / f"x{Path(p).name}")
    ex = vitscope.explain(SHIPPED, tmp_path / "data", methods=["rollout"])
    assert len(ex) == 4 and sorted(ex.classes[i] for i in ex.labels) == sorted(
        Path(p).name.split("_")[0] for p in images[:4])
    assert ex.file_names == sorted(ex.file_names)
    spec = vitscope.explain(SHIPPED, "shapes:val=40", n=6, methods=["rollout"])
    assert len(spec) == 6 and spec.images.shape == (6, 32, 32, 3)
    assert (spec.labels == -1).all()                # shapes' classes are not CIFAR-10's


def test_only_what_the_methods_read_is_captured(pixels, monkeypatch):
    """gradcam at the last block hooks that block's norm1 output alone: every attention stays
    fused, and no other hook point is touched."""
    from vitscope.api import capture as C
    seen = []
    real = C.attach

    def spy(model, hooks):
        seen.append(sorted(hooks))
        return real(model, hooks)
    monkeypatch.setattr(C, "attach", spy)
    model = timm_vit()
    vitscope.explain(model, pixels, methods=["gradcam"])
    assert seen == [["blocks.1.norm1.out"]]
    seen.clear()
    vitscope.explain(model, pixels, methods=["rollout"], options={"rollout": {"start_layer": 1}})
    assert seen == [["blocks.1.attn.weights"]]


def test_a_method_that_needs_the_model_plugs_into_the_registry(pixels):
    """What issue #24's methods do: `run(model, x, target, layout, options)` per batch, with
    the hooked model; here the gradient of the target logit w.r.t. the input pixels, summed
    over channels and pooled to the patch grid."""
    def run(model, x, target, layout, options):
        x = x.clone().requires_grad_(True)
        model(x).gather(1, target[:, None]).sum().backward()
        g = x.grad.abs().sum(1)                                           # B×H×W
        (h, w), (ph, pw) = layout.grid, layout.patch_size
        return g.reshape(len(g), h, ph, w, pw).sum((2, 4)).numpy() * options["scale"]

    register(MapMethod("test-input-gradient", "test", {"scale": 1.0}, needs_model=True,
                       run=run, class_specific=True))
    try:
        ex = vitscope.explain(timm_vit(), pixels, methods=["test-input-gradient", "gradcam"],
                              options={"test-input-gradient": {"scale": 2.0}}, batch_size=3)
        m = ex.maps["test-input-gradient"]
        assert m.shape == (4, 4, 4) and (m > 0).all()
        from vitscope.api.explaining import choose_methods
        assert "test-input-gradient" not in [k.name for k in choose_methods(None)]
    finally:
        METHODS.pop("test-input-gradient")


def test_method_defaults_are_the_plugins_defaults():
    """The registry's defaults are the plugin options of the same name, so explain() with no
    options computes what `vitscope analyze` computes with none."""
    from vitscope.analyze.registry import discover
    registry = discover(autoload=False)
    for name, method in METHODS.items():
        if method.needs_model:   # run at capture time: its settings are the capture's, not
            continue             # options of the plugin that draws the stored maps
        options = registry.get(name).option_map()
        assert {k: options[k].default for k in method.defaults} == dict(method.defaults), name
