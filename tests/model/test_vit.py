"""The ViT: fused vs explicit attention, pinned names, init, presets."""
from __future__ import annotations

import pytest
import torch

from vitscope.errors import ConfigError
from vitscope.model.hooks import attach
from vitscope.model.vit import PRESETS, ModelConfig, ViT, count_parameters, preset

CONFIGS = {
    "patch": dict(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4),
    "conv-stem": dict(image_size=16, patch_size=2, embed_dim=48, depth=2, num_heads=3,
                      stem="conv", stem_channels=[8, 16]),
    "no-qkv-bias": dict(image_size=24, patch_size=8, embed_dim=64, depth=3, num_heads=8,
                        qkv_bias=False, mlp_ratio=3.0, num_classes=7),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_fused_and_explicit_attention_agree(name):
    torch.manual_seed(0)
    model = ViT(ModelConfig(**CONFIGS[name])).eval()
    x = torch.randn(3, 3, model.cfg.image_size, model.cfg.image_size)
    with torch.no_grad():
        fused = model(x)
        model.set_fused_attn(False)
        explicit = model(x)
        model.set_fused_attn(True)
        # A hook on the attention weights also switches to the explicit branch.
        with attach(model, {"blocks.*.attn.weights": lambda t, n: None}):
            hooked = model(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused, hooked, atol=1e-5, rtol=0)
    assert not torch.allclose(fused[0], fused[1])  # the test is not vacuous


def test_explicit_branch_runs_only_when_weights_are_hooked(tiny_vit, monkeypatch):
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real_sdpa(*a, **k))
    x = torch.randn(2, 3, 16, 16)
    tiny_vit(x)
    assert len(calls) == tiny_vit.cfg.depth
    calls.clear()
    with attach(tiny_vit, {"blocks.0.attn.weights": lambda t, n: None}):
        tiny_vit(x)
    assert len(calls) == tiny_vit.cfg.depth - 1  # only block 0 went explicit


def test_state_dict_keys_are_timm_style_and_pinned(tiny_vit):
    keys = list(tiny_vit.state_dict())
    head = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias"]
    expected = head + [f"blocks.{i}.{k}" for i in range(2) for k in block] + [
        "norm.weight", "norm.bias", "head.weight", "head.bias"]
    assert keys == expected


def test_conv_stem_parameters_live_under_patch_embed():
    model = ViT(ModelConfig(**CONFIGS["conv-stem"]))
    stem = [k for k in model.state_dict() if k.startswith("patch_embed.stem.")]
    assert "patch_embed.stem.layers.0.weight" in stem and "patch_embed.stem.layers.1.running_mean" in stem
    assert "patch_embed.proj.weight" in model.state_dict()


def test_init_follows_vit_conventions(tiny_vit):
    sd = tiny_vit.state_dict()
    for k, v in sd.items():
        if k.endswith(".bias"):
            assert torch.count_nonzero(v) == 0, k
        if k.startswith(("norm", "blocks.0.norm")) and k.endswith(".weight"):
            assert torch.all(v == 1), k
    w = sd["blocks.0.mlp.fc1.weight"]
    assert 0.015 < w.std().item() < 0.025 and w.abs().max().item() <= 0.04 + 1e-6  # trunc normal


def test_presets_match_published_sizes():
    expect = {"vit-tiny": (192, 12, 3, 768), "vit-small": (384, 12, 6, 1536),
              "vit-base": (768, 12, 12, 3072), "vit-lite": (256, 7, 4, 512),
              "seed-cifar10": (128, 6, 4, 256), "seed-cifar100": (768, 12, 8, 3072)}
    assert set(expect) <= set(PRESETS)
    for name, (d, depth, heads, mlp) in expect.items():
        cfg = preset(name)
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim) == (d, depth, heads, mlp)
    assert preset("seed-cifar10").patch_size == 4
    assert preset("seed-cifar100").stem == "conv"
    assert 5_000_000 < count_parameters(ViT(preset("vit-tiny"))) < 6_000_000


def test_bad_config_and_preset_errors_name_the_field():
    with pytest.raises(ConfigError, match="image_size.*divisible.*patch_size"):
        ModelConfig(image_size=30, patch_size=4)
    with pytest.raises(ConfigError, match="model.stem must be one of patch, conv"):
        ModelConfig(stem="resnet")
    with pytest.raises(ConfigError, match="Did you mean 'vit-tiny'"):
        preset("vit-tiny2")
    with pytest.raises(ConfigError, match="did you mean embed_dim"):
        ModelConfig.from_dict({"embed_dimm": 3})


def test_wrong_input_size_is_a_clear_error(tiny_vit):
    with pytest.raises(ValueError, match="resize the input"):
        tiny_vit(torch.randn(1, 3, 32, 32))


def test_a_circular_stem_sees_images_on_the_torus():
    """With stem_padding="circular", shifting the image by whole patches (wrapping around)
    shifts the patch embeddings the same way; zero padding breaks that at the edges."""
    x = torch.randn(2, 3, 16, 16)
    shifted = torch.roll(x, shifts=(4, 8), dims=(2, 3))     # 1 and 2 patches of 4 px
    out = {}
    for padding in ("circular", "zeros"):
        torch.manual_seed(0)
        model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                                stem="conv", stem_channels=[8], stem_padding=padding)).eval()
        with torch.no_grad():
            a = model.patch_embed(x).reshape(2, 4, 4, 16)
            b = model.patch_embed(shifted).reshape(2, 4, 4, 16)
        out[padding] = torch.allclose(torch.roll(a, shifts=(1, 2), dims=(1, 2)), b, atol=1e-5)
    assert out == {"circular": True, "zeros": False}
    with pytest.raises(ConfigError, match="model.stem_padding must be one of zeros, circular"):
        ModelConfig(stem_padding="reflect")


def test_parameter_count_from_the_config_alone_is_exact():
    """ModelConfig.num_parameters is what the size bound checks before anything is allocated:
    it must equal the built model's count for every preset and both stems."""
    from vitscope.model.cnn import CNNConfig, SmallCNN
    from vitscope.model.vit import PRESETS, count_parameters, preset
    configs = [preset(name, depth=1) for name in PRESETS] + [
        ModelConfig(image_size=24, patch_size=4, embed_dim=24, depth=2, num_heads=3,
                    qkv_bias=False, stem="conv", stem_channels=[8, 16], num_classes=7)]
    for cfg in configs:
        assert cfg.num_parameters == count_parameters(ViT(cfg)), cfg
    # timm's ViT-B/16 at 224 px with 1000 classes: 86,567,656 parameters
    assert ModelConfig(image_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                       num_classes=1000).num_parameters == 86_567_656
    for cfg in (CNNConfig(), CNNConfig(channels=[8, 16], convs_per_stage=3, num_classes=4,
                                       image_size=8)):
        assert cfg.num_parameters == count_parameters(SmallCNN(cfg)), cfg
