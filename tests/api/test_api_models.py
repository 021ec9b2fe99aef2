"""The user's model object comes back as it was: after explain, attention, score and save,
and after an error before or in the middle of a forward pass (hooks removed, swapped classes
and fused-attention flags put back, requires_grad and training as they were, weights
untouched). Models of an unknown family, and class targets for a model without a head, are
one sentence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitscope
from vitscope.errors import ConfigError, VitscopeError

from conftest import FOREIGN, hf_vit, timm_vit, torchvision_vit


def snapshot(model: torch.nn.Module) -> dict:
    """Everything of a module tree the API could change."""
    mods = list(model.named_modules())
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modules": [(n, type(m), m.training, len(m._forward_hooks), len(m._forward_pre_hooks),
                     len(m._backward_hooks), sorted(k for k in vars(m) if not k.startswith("__")))
                    for n, m in mods],
        "grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "fused": [(n, m.fused_attn) for n, m in mods if hasattr(m, "fused_attn")],
        "config": [(n, id(m.config)) for n, m in mods if hasattr(m, "config")],
    }


def assert_unchanged(model, before) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for key in ("modules", "grad", "fused", "config"):
        assert after[key] == before[key], key


def user_state(model):
    """A model as a user may hold it mid-training: train mode, one block frozen."""
    model.train()
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("family", sorted(FOREIGN))
def test_the_model_comes_back_unchanged(family, pixels):
    model = user_state(FOREIGN[family]())
    before = snapshot(model)
    ex = vitscope.explain(model, pixels, methods=["rollout", "grad-rollout", "gradcam"])
    assert_unchanged(model, before)
    assert all(np.isfinite(m).all() and m.shape == (4, 4, 4) for m in ex.maps.values())
    assert ex.maps["grad-rollout"].max() > 0
    att = vitscope.attention(model, pixels)
    assert att.weights.shape[:3] == (4, 2, model_heads(model))
    np.testing.assert_allclose(att.weights.sum(-1), 1, atol=1e-5)
    assert_unchanged(model, before)


def model_heads(model) -> int:
    for name in ("num_heads", "num_attention_heads"):
        for m in model.modules():
            if hasattr(m, name):
                return int(getattr(m, name))
    return int(model.config.num_attention_heads)


def raising_inside_attention(model, family):
    """A user's own hook that raises in block 1, inside the attention (after the adapter has
    switched it to its explicit branch, before the adapter's after-hook restores it)."""
    if family == "timm":
        where = model.blocks[1].attn.attn_drop
    elif family == "torchvision":
        where = model.encoder.layers[1].self_attention.out_proj
    else:
        base = model.base_model
        layers = base.layers if hasattr(base, "layers") else base.encoder.layer
        where = layers[1].attention.q_proj

    def boom(*args):
        raise RuntimeError("the user's hook failed")
    return where.register_forward_hook(boom)


@pytest.mark.parametrize("family", sorted(FOREIGN))
def test_an_error_in_the_middle_of_a_forward_pass_leaves_the_model_as_it_was(family, pixels):
    model = user_state(FOREIGN[family]())
    handle = raising_inside_attention(model, family)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="the user's hook failed"):
        vitscope.explain(model, pixels, methods=["grad-rollout"])
    assert_unchanged(model, before)
    handle.remove()
    fresh = FOREIGN[family]().eval()
    with torch.no_grad():     # and it computes what an untouched copy computes
        x = torch.randn(2, 3, 32, 32)
        out = model.eval()(x) if family != "hf" else model.eval()(pixel_values=x).logits
        ref = fresh(x) if family != "hf" else fresh(pixel_values=x).logits
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("bad,message", [
    (dict(target=7), "target=7 is not a class of this model, which has 5 classes"),
    (dict(target="zebra"), "target 'zebra' is not a class of this model"),
    (dict(target=[0, 1]), "target= gives 2 classes for 4 images"),
    (dict(methods=["rolout"]), "No map method 'rolout'. Did you mean 'rollout'? Methods: "),
    (dict(options={"rollout": {"fusoin": "max"}}), "has no option 'fusoin'. Did you mean 'fusion'"),
    (dict(options={"rollout": {"fusion": "median"}}), "is invalid: expected one of mean, max, min"),
    (dict(options={"gradcam": {"block": 9}}), "gradcam.block=9 is outside the model's blocks 0–1"),
    (dict(target="label"), "target='label' needs a label for every image"),
])
def test_bad_input_is_one_sentence_and_the_model_unchanged(bad, message, pixels):
    model = user_state(timm_vit())
    before = snapshot(model)
    kwargs = {"methods": ["rollout", "gradcam"], **bad}
    with pytest.raises(VitscopeError) as err:
        vitscope.explain(model, pixels, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("images,message", [
    (np.zeros((2, 24, 24, 3), np.uint8), "The images are 24×24 but the model takes 32×32"),
    (np.zeros((2, 32, 32, 4), np.uint8), "The images have 4 channels"),
    (np.zeros((2, 1, 32, 32), np.float32), "The images have 1 channels"),
    (torch.full((2, 3, 32, 32), 3.0), "pass preprocessed=True if they are already normalised"),
    ("no-such-folder", "No image file, folder or dataset 'no-such-folder'"),
    ([np.zeros((32, 32, 3), np.uint8), np.zeros((24, 24, 3), np.uint8)], "different shapes"),
])
def test_bad_images_are_one_sentence(images, message):
    model = user_state(torchvision_vit())
    before = snapshot(model)
    with pytest.raises(VitscopeError, match=message.replace("(", r"\(").replace("=", "=")):
        vitscope.explain(model, images, methods=["rollout"])
    assert_unchanged(model, before)


def test_an_unknown_family_names_the_supported_ones(pixels):
    from torchvision.models import resnet18
    with pytest.raises(ConfigError, match=r"cannot explain a ResNet from torchvision, which is "
                                          r"not a ViT: .* \(families: vitscope, timm, "
                                          r"torchvision, hf, hf-clip, openclip\)"):
        vitscope.explain(resnet18(), pixels)
    with pytest.raises(ConfigError, match="takes a model as a checkpoint path or a torch module"):
        vitscope.explain(42, pixels)


def test_a_model_without_a_class_head(pixels):
    """Dinov2Model outputs features: rollout works, class targets and gradients say why not."""
    model = hf_vit(headless=True)
    before = snapshot(model)
    with pytest.raises(ConfigError, match="no class head .* grad-rollout has no class logit"):
        vitscope.explain(model, pixels, methods=["rollout", "grad-rollout"])
    with pytest.raises(ConfigError, match="asks for a class, but this model has no class head"):
        vitscope.explain(model, pixels, methods=["rollout"], target=1)
    ex = vitscope.explain(model, pixels, methods=["rollout"])
    assert ex.probs is None and list(ex.targets) == [-1] * 4 and ex.maps["rollout"].shape == (4, 4, 4)
    assert "explains" not in ex._repr_html_()
    assert_unchanged(model, before)


def test_class_names_and_targets_per_image(pixels):
    """A Hugging Face model's id2label names its classes; targets by name, one per image."""
    model = hf_vit()
    ex = vitscope.explain(model, pixels, methods=["gradcam"], target=["dog", 0, "cat", 2])
    assert ex.classes == ["cat", "dog", "<b>ship</b>"] and list(ex.targets) == [1, 0, 0, 2]
    by_index = vitscope.explain(model, pixels, methods=["gradcam"], target=[1, 0, 0, 2])
    np.testing.assert_array_equal(ex.maps["gradcam"], by_index.maps["gradcam"])
    pred = vitscope.explain(model, pixels, methods=["gradcam"])
    assert list(pred.targets) == list(pred.probs.argmax(1))
