"""`blocks.{i}.attn.head_out` and `blocks.{i}.mlp.hidden` on vitscope's ViT and every adapted
family: logits unchanged by the hooks; each head's projected output summed over heads plus
the projection's bias is `attn.out`; the block's output is its input plus the layer-scaled
attention and MLP outputs (the scales read by vitscope.model.readout); zeroing a point
changes what follows as it should; the final norm and head from the read-out reproduce the
logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitscope.dump.derive import head_contributions, layer_norm
from vitscope.model.hooks import attach, hook_points, run_with_cache
from vitscope.model.readout import readout_parameters

HF_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, image_size=32, patch_size=8)
# (family, name, kwargs, has a plain linear head on CLS)
MODELS = [
    ("vitscope", None, {}, True),
    ("timm", "vit_tiny_patch16_224", dict(img_size=32, depth=2, init_values=0.3,
                                          num_classes=4), True),
    ("timm", "vit_small_patch14_reg4_dinov2", dict(img_size=28, depth=2), False),
    ("torchvision", "vit_b_16", dict(image_size=32, num_classes=4), True),
    ("hf", "ViTForImageClassification", dict(HF_SMALL, model_type="vit", num_labels=3), True),
    ("hf", "Dinov2Model", dict(HF_SMALL, model_type="dinov2"), False),
    ("hf-clip", "CLIPVisionModel", None, False),
    ("hf-clip", "SiglipModel", None, False),
    ("openclip", "ViT-B-32", None, False),
]
IDS = [f"{f}-{n}" for f, n, _, _ in MODELS]
POINTS = ["blocks.*.norm1.in", "blocks.*.attn.head_out", "blocks.*.attn.out",
          "blocks.*.mlp.hidden", "blocks.*.mlp.out", "blocks.*.out"]


def build(family, name, kwargs):
    torch.manual_seed(0)
    if family == "vitscope":
        from vitscope.model.vit import ModelConfig, ViT
        model = ViT(ModelConfig(image_size=16, depth=2, num_heads=4, embed_dim=32,
                                mlp_ratio=2.0, num_classes=5))
    elif family == "hf-clip":
        pytest.importorskip("transformers")
        from clip_models import hf_model
        from vitscope.model.adapters.clip import ClipViT
        return ClipViT.around(hf_model(name)).eval()
    elif family == "openclip":
        pytest.importorskip("open_clip")
        from clip_models import openclip_model
        from vitscope.model.adapters.openclip import OpenClipViT
        return OpenClipViT.around(openclip_model()).eval()
    else:
        if family != "torchvision":
            pytest.importorskip({"timm": "timm", "hf": "transformers"}[family])
        from vitscope.model.adapters import build as build_adapted
        model = build_adapted(family, name, **kwargs)
    with torch.no_grad():   # random init leaves biases and some heads at zero: perturb all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("family,name,kwargs,linear_head", MODELS, ids=IDS)
def test_head_and_mlp_points_add_up(family, name, kwargs, linear_head):
    model = build(family, name, kwargs)
    torch.manual_seed(1)
    x = torch.randn(2, *model.input_shape)
    names = list(hook_points(model))
    assert "blocks.1.attn.head_out" in names and "blocks.1.mlp.hidden" in names
    with torch.no_grad():
        plain = model(x)
        logits, cache = run_with_cache(model, x, POINTS)
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)
    params = readout_parameters(model)
    depth = len(model.blocks)
    for i in range(depth):
        z = cache[f"blocks.{i}.attn.head_out"].numpy()
        out = cache[f"blocks.{i}.attn.out"].numpy()
        H = z.shape[1]
        assert z.ndim == 4 and z.shape[1] * z.shape[3] == out.shape[-1]
        heads = head_contributions(z, params[f"blocks.{i}.attn.proj.weight"])
        assert heads.shape == (2, H, *out.shape[1:])
        np.testing.assert_allclose(heads.sum(1) + params[f"blocks.{i}.attn.proj.bias"], out,
                                   rtol=1e-4, atol=1e-4)
        ls1 = params.get(f"blocks.{i}.ls1", 1.0)
        ls2 = params.get(f"blocks.{i}.ls2", 1.0)
        resid = cache[f"blocks.{i}.norm1.in"].numpy() + ls1 * out \
            + ls2 * cache[f"blocks.{i}.mlp.out"].numpy()
        np.testing.assert_allclose(resid, cache[f"blocks.{i}.out"].numpy(), rtol=1e-4, atol=1e-4)
        assert cache[f"blocks.{i}.mlp.hidden"].shape[:2] == out.shape[:2]
    if "timm" in family and kwargs.get("init_values"):
        assert "blocks.0.ls1" in params and not np.allclose(params["blocks.0.ls1"], 1.0)
    assert ("head.weight" in params) == linear_head
    if linear_head:   # the stored read-out alone turns the last residual into the logits
        final = cache[f"blocks.{depth - 1}.out"].numpy()[:, 0]
        normed = layer_norm(final, params.get("norm.weight"), params.get("norm.bias"),
                            float(params["norm.eps"]))
        np.testing.assert_allclose(normed @ params["head.weight"].T + params["head.bias"],
                                   plain.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family,name,kwargs,linear_head", MODELS[:2] + MODELS[3:5],
                         ids=IDS[:2] + IDS[3:5])
def test_zeroing_the_points_is_an_ablation(family, name, kwargs, linear_head):
    """All heads zeroed: attn.out is the projection's bias on every token; all neurons
    zeroed: mlp.out is the same vector on every token. The logits change."""
    model = build(family, name, kwargs)
    x = torch.randn(2, *model.input_shape)
    params = readout_parameters(model)
    zero = lambda t, n: torch.zeros_like(t)   # noqa: E731
    with torch.no_grad():
        plain = model(x)
        with attach(model, {"blocks.0.attn.head_out": zero, "blocks.0.mlp.hidden": zero}):
            edited, cache = run_with_cache(model, x, ["blocks.0.attn.out", "blocks.0.mlp.out"])
    bias = torch.as_tensor(params["blocks.0.attn.proj.bias"])
    torch.testing.assert_close(cache["blocks.0.attn.out"], bias.expand_as(
        cache["blocks.0.attn.out"]), rtol=1e-5, atol=1e-5)
    mlp = cache["blocks.0.mlp.out"]
    torch.testing.assert_close(mlp, mlp[:1, :1].expand_as(mlp), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(edited, plain)


def test_a_dump_keeps_the_readout_and_head_contributions_add_up(tmp_path):
    """The dump stores head_out (N×H×T×dh) and the read-out weights; per-head contributions
    computed from the dump alone sum (plus the bias) to the stored attn.out, to fp16."""
    from vitscope.dump import Dump
    from vitscope.testing import make_dump
    path = make_dump(tmp_path / "d.h5", n=4, hooks=["blocks.*.attn.head_out",
                                                    "blocks.*.attn.out", "blocks.*.mlp.hidden"])
    with Dump.open(path) as dump:
        r = dump.readout
        assert {"norm.weight", "norm.bias", "norm.eps", "head.weight", "head.bias",
                "blocks.1.attn.proj.weight"} <= set(r)
        assert list(dump["blocks.0.attn.head_out"].attrs["dims"]) == ["N", "H", "T", "Dh"]
        z = np.asarray(dump["blocks.1.attn.head_out"][:], np.float32)
        total = head_contributions(z, r["blocks.1.attn.proj.weight"]).sum(1) \
            + r["blocks.1.attn.proj.bias"]
        np.testing.assert_allclose(total, dump["blocks.1.attn.out"][:], rtol=2e-2, atol=2e-2)
        assert dump["blocks.0.mlp.hidden"].shape[-1] == 64


def test_a_merged_dump_links_the_readout_of_its_shards(tmp_path):
    from vitscope.capture import capture
    from vitscope.data import load_dataset
    from vitscope.dump import Dump
    from vitscope.dump.merge import merge
    from vitscope.model.vit import ModelConfig, ViT
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, depth=2, num_heads=2, embed_dim=32)).eval()
    ds = load_dataset("shapes:val=8", "val", 16)
    shards = [capture(model, ds, tmp_path / f"s{i}.h5", "blocks.*.out", shard=f"{i}/2",
                      batch_size=4) for i in (0, 1)]
    merged = merge(shards, tmp_path / "m.h5")
    with Dump.open(merged) as m, Dump.open(shards[0]) as s:
        assert m.readout.keys() == s.readout.keys() == set(readout_parameters(model))
        for k, v in readout_parameters(model).items():
            np.testing.assert_array_equal(m.readout[k], v)
