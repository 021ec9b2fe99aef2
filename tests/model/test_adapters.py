"""Adapters: timm, torchvision and Hugging Face ViTs through vitscope's hook points.

For each family, on random weights made here (small configurations): logits equal to the
unwrapped model's with and without hooks; attention rows sum to 1 and weights @ v, heads
merged and projected, reproduces attn.out; explicit attention only in hooked blocks; hooks
that edit an activation change what follows, and gradients reach the points; the prefix
tokens and the patch grid are right (distillation and register tokens, non-square grids)."""
from __future__ import annotations

import pytest
import torch

from vitscope.model.hooks import attach, hook_points, run_with_cache

pytest.importorskip("timm")
pytest.importorskip("transformers")

HF_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, image_size=32, patch_size=8)
# (family, name, kwargs, prefix kinds, grid)
MODELS = [
    ("timm", "vit_tiny_patch16_224", dict(img_size=32, depth=2), [("cls", 1)], (2, 2)),
    ("timm", "deit_tiny_distilled_patch16_224", dict(img_size=32, depth=2),
     [("cls", 1), ("dist", 1)], (2, 2)),
    ("timm", "vit_small_patch14_reg4_dinov2", dict(img_size=28, depth=2),
     [("cls", 1), ("register", 4)], (2, 2)),
    ("timm", "vit_tiny_patch16_224", dict(img_size=(32, 48), depth=2), [("cls", 1)], (2, 3)),
    ("torchvision", "vit_b_16", dict(image_size=32), [("cls", 1)], (2, 2)),
    ("hf", "ViTForImageClassification", dict(HF_SMALL, model_type="vit", num_labels=3),
     [("cls", 1)], (4, 4)),
    ("hf", "ViTForImageClassification",
     dict(HF_SMALL, model_type="vit", num_labels=3, image_size=[32, 48]), [("cls", 1)], (4, 6)),
    ("hf", "DeiTForImageClassificationWithTeacher", dict(HF_SMALL, model_type="deit", num_labels=3),
     [("cls", 1), ("dist", 1)], (4, 4)),
    ("hf", "Dinov2Model", dict(HF_SMALL, model_type="dinov2"), [("cls", 1)], (4, 4)),
    ("hf", "Dinov2WithRegistersModel",
     dict(HF_SMALL, model_type="dinov2_with_registers", num_register_tokens=4),
     [("cls", 1), ("register", 4)], (4, 4)),
]
IDS = [f"{f}-{n}-{'x'.join(map(str, g))}" for f, n, _, _, g in MODELS]


def adapted(family, name, kwargs):
    from vitscope.model.adapters import build
    torch.manual_seed(0)
    model = build(family, name, **kwargs).eval()
    with torch.no_grad():   # random init leaves some heads at zero (torchvision): perturb all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def raw_output(model, x):
    out = model.model(pixel_values=x) if model.family == "hf" else model.model(x)
    if model.family == "hf":
        out = out.logits if getattr(out, "logits", None) is not None else out.pooler_output
    return out


def attention_module(model, i):
    m = model.model
    if model.family == "timm":
        return m.blocks[i].attn
    if model.family == "torchvision":
        return m.encoder.layers[i].self_attention
    base = m.base_model
    return (base.layers if hasattr(base, "layers") else base.encoder.layer)[i].attention


def projection(model, i):
    a = attention_module(model, i)
    return {"timm": lambda: a.proj, "torchvision": lambda: a.out_proj, "hf": lambda: a.o_proj}[
        model.family]()


def ran_explicit(model, i) -> list[bool]:
    """Record, per forward, whether block i's attention ran its explicit branch."""
    a = attention_module(model, i)
    seen: list[bool] = []
    if model.family == "timm":
        a.register_forward_pre_hook(lambda m, args: seen.append(not m.fused_attn))
    elif model.family == "hf":
        a.register_forward_pre_hook(
            lambda m, args: seen.append(m.config._attn_implementation == "vitscope_eager"))
    else:
        original = a._explicit
        def spy(*args, **kw):
            seen[-1] = True          # this forward (recorded False by the pre-hook) went explicit
            return original(*args, **kw)
        a._explicit = spy
        a.register_forward_pre_hook(lambda m, args: seen.append(False))
    return seen


@pytest.mark.parametrize("family,name,kwargs,prefix,grid", MODELS, ids=IDS)
def test_adapter_contract(family, name, kwargs, prefix, grid):
    model = adapted(family, name, kwargs)
    layout = model.token_layout
    assert layout.prefix == tuple(prefix) and layout.grid == grid
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        ref = raw_output(model, x)
        plain = model(x)
        logits, cache = run_with_cache(model, x)           # every point: explicit everywhere
    assert ref.abs().max() > 0
    torch.testing.assert_close(plain, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
    names = list(hook_points(model))
    assert names[:2] == ["patch_embed.out", "embed.out"] and "blocks.1.attn.weights" in names
    T, D = layout.num_tokens, cache["embed.out"].shape[-1]
    assert cache["patch_embed.out"].shape == (2, layout.num_patches, D)
    for i in range(2):
        w, v = cache[f"blocks.{i}.attn.weights"], cache[f"blocks.{i}.attn.v"]
        assert w.shape[-2:] == (T, T) and w.shape[1] == v.shape[1]
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), rtol=0, atol=1e-5)
        with torch.no_grad():
            out = projection(model, i)((w @ v).transpose(1, 2).flatten(2))
        torch.testing.assert_close(out, cache[f"blocks.{i}.attn.out"], rtol=0, atol=1e-5)
        for p in ("norm1.in", "norm1.out", "norm2.in", "norm2.out", "mlp.out", "out"):
            assert cache[f"blocks.{i}.{p}"].shape == (2, T, D), p
    assert cache["norm.out"].shape == (2, T, D)
    if "cls" in cache:
        torch.testing.assert_close(cache["cls"], cache["norm.out"][:, layout.cls_index])


@pytest.mark.parametrize("family,name,kwargs,prefix,grid", MODELS[:1] + MODELS[4:6], ids=[
    IDS[0], IDS[4], IDS[5]])
def test_explicit_attention_only_in_hooked_blocks_and_edits_reach_the_output(
        family, name, kwargs, prefix, grid):
    model = adapted(family, name, kwargs)
    x = torch.randn(2, *model.input_shape)
    block0, block1 = ran_explicit(model, 0), ran_explicit(model, 1)
    with torch.no_grad():
        ref = model(x)
        _, cache = run_with_cache(model, x, names=["blocks.1.attn.weights"])
        assert (block0, block1) == ([False, False], [False, True])
        uniform = lambda t, n: torch.full_like(t, 1.0 / t.shape[-1])   # noqa: E731
        with attach(model, {"blocks.0.attn.weights": uniform}):
            edited = model(x)
    assert block0[-1] is True and not torch.allclose(edited, ref, atol=1e-4)
    with torch.no_grad():
        assert torch.equal(model(x), ref)                   # hooks gone, fused again
    assert block0[-1] is False


@pytest.mark.parametrize("family,name,kwargs,prefix,grid", MODELS[:1] + MODELS[4:6], ids=[
    IDS[0], IDS[4], IDS[5]])
def test_gradients_reach_adapted_hook_points(family, name, kwargs, prefix, grid):
    model = adapted(family, name, kwargs)
    x = torch.randn(1, *model.input_shape)
    kept = {}

    def keep(t, n):
        t.retain_grad()
        kept[n] = t
    with attach(model, {"blocks.*.attn.weights": keep, "blocks.0.norm1.out": keep}):
        model(x)[0].max().backward()
    depth = len(model.blocks)      # torchvision's vit_b_16 keeps its 12 blocks
    assert set(kept) == {f"blocks.{i}.attn.weights" for i in range(depth)} | {"blocks.0.norm1.out"}
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in kept.values())


def test_vit_b_16_at_224_keeps_its_logits():
    """torchvision's vit_b_16 at its real size (14×14 grid), one image: heavy on 2 cores."""
    model = adapted("torchvision", "vit_b_16", {})
    assert model.token_layout.grid == (14, 14) and model.input_shape == (3, 224, 224)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = raw_output(model, x)
        logits, cache = run_with_cache(model, x, names=["blocks.11.attn.weights", "cls"])
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
    assert cache["blocks.11.attn.weights"].shape == (1, 12, 197, 197)


def test_torchvision_explicit_weights_are_multihead_attentions_own():
    """The explicit branch gives what torchvision's module returns with need_weights=True,
    average_attn_weights=False (per head), and the same output."""
    model = adapted("torchvision", "vit_b_16", dict(image_size=32))
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        _, cache = run_with_cache(model, x, names=["blocks.3.norm1.out", "blocks.3.attn.weights",
                                                   "blocks.3.attn.out"])
        h = cache["blocks.3.norm1.out"]
        mha = attention_module(model, 3)
        out, weights = torch.nn.MultiheadAttention.forward(mha, h, h, h, need_weights=True,
                                                           average_attn_weights=False)
    torch.testing.assert_close(cache["blocks.3.attn.weights"], weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(cache["blocks.3.attn.out"], out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type,cls_name", [("vit", "ViTForImageClassification"),
                                                 ("dinov2_with_registers",
                                                  "Dinov2WithRegistersModel")])
def test_hf_weights_are_transformers_eager_attentions(model_type, cls_name):
    """Captured weights equal transformers' own eager attention (output_attentions) of the same
    weights, while the adapted model itself runs sdpa where nothing is hooked."""
    import transformers
    kwargs = dict(HF_SMALL, num_labels=3) if model_type == "vit" else \
        dict(HF_SMALL, num_register_tokens=2)
    model = adapted("hf", cls_name, dict(kwargs, model_type=model_type))
    assert model.model.config._attn_implementation == "sdpa"
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    eager = getattr(transformers, cls_name)._from_config(config, attn_implementation="eager")
    eager.load_state_dict(model.model.state_dict())
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        _, cache = run_with_cache(model, x, names=["blocks.*.attn.weights"])
        theirs = eager.eval()(pixel_values=x, output_attentions=True).attentions
    for i, w in enumerate(theirs):
        torch.testing.assert_close(cache[f"blocks.{i}.attn.weights"], w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family,name,kwargs", [
    ("timm", "deit_tiny_distilled_patch16_224", dict(img_size=32, depth=2)),
    ("torchvision", "vit_b_16", dict(image_size=32)),
    ("hf", "ViTForImageClassification", dict(HF_SMALL, model_type="vit", num_labels=3))])
def test_dump_gradients_of_adapted_models_equal_autograd(tmp_path, family, name, kwargs):
    """capture's grad:<pattern> on a wrapped model: d logit[pred] / d hook output, against
    autograd on a leaf tensor put in the hook point's place, one image at a time."""
    import numpy as np

    from vitscope.capture import capture
    from vitscope.data import load_dataset, to_model_input
    from vitscope.dump import Dump
    model = adapted(family, name, kwargs)
    ds = load_dataset("shapes:val=3,train=3", "val", 32)
    names = ["blocks.1.attn.weights", "blocks.0.norm1.out", "blocks.0.attn.v"]
    path = capture(model, ds, tmp_path / "g.h5", ["cls", *[f"grad:{n}" for n in names]],
                   classes=[f"c{i}" for i in range(model.cfg.num_classes)], batch_size=2,
                   dtype="float32")
    with Dump.open(path) as dump:
        assert dump.layout.to_dict() == model.token_layout.to_dict()
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(ds.images[dump.indices])),
                           [0.5] * 3, [0.5] * 3)
        for n in names:
            ref = []
            for i in range(len(x)):
                values = {}
                with torch.no_grad(), attach(model, {n: lambda t, _: values.setdefault(0, t.clone())}):
                    model(x[i:i + 1])
                leaf = values[0].requires_grad_(True)
                with attach(model, {n: lambda t, _: leaf}):
                    logit = model(x[i:i + 1])[0, int(dump.target[i])]
                ref.append(torch.autograd.grad(logit, leaf)[0][0].numpy())
            ref = np.stack(ref)
            assert np.abs(ref).max() > 0, n
            np.testing.assert_allclose(dump[f"grad:{n}"][:], ref, rtol=1e-4,
                                       atol=1e-5 * np.abs(ref).max(), err_msg=n)


@pytest.mark.parametrize("family,name,kwargs,prefix,grid", [MODELS[1], MODELS[4], MODELS[7]],
                         ids=[IDS[1], IDS[4], IDS[7]])
def test_randomization_groups_cover_every_parameter_once(family, name, kwargs, prefix, grid):
    """vitscope score's cascade on a wrapped model: head (classifier + final norm), each block
    from the last down, then the embedding; every parameter in exactly one group."""
    model = adapted(family, name, kwargs)
    groups = model.randomization_groups()
    labels = [g for g, _ in groups]
    depth = len(model.blocks)
    assert labels == ["head", *[f"blocks.{i}" for i in reversed(range(depth))], "embedding"]
    names = [n for _, ns in groups for n in ns]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    head = dict(groups)["head"]
    assert any("head" in n or "classifier" in n for n in head) and \
        any("norm" in n or "ln" in n for n in head)
    assert all(n.split(".")[0] == "model" for n in names)


@pytest.mark.parametrize("family,name,kwargs,prefix,grid", [MODELS[2], MODELS[4], MODELS[9]],
                         ids=[IDS[2], IDS[4], IDS[9]])
def test_a_deep_copy_feeds_its_own_hook_points(family, name, kwargs, prefix, grid):
    """copy.deepcopy (vitscope score randomises a copy) gives a model whose hooks reach the
    copy's points, with the same weights and outputs; the original is untouched."""
    import copy
    model = adapted(family, name, kwargs)
    twin = copy.deepcopy(model)
    x = torch.randn(1, *model.input_shape)
    with torch.no_grad():
        ref, cache = run_with_cache(model, x, names=["blocks.0.attn.weights"])
        out, twin_cache = run_with_cache(twin, x, names=["blocks.0.attn.weights"])
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(twin_cache["blocks.0.attn.weights"],
                                   cache["blocks.0.attn.weights"], rtol=0, atol=1e-6)
        for p in twin.parameters():
            p.mul_(0.5)
        seen = []
        with attach(model, {"blocks.0.out": lambda t, n: seen.append(n)}):
            twin(x)
        assert seen == []
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
