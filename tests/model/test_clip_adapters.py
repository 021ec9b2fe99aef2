"""CLIP and SigLIP (transformers) through vitscope's hook points, on small random models:
the image embedding unchanged with and without hooks; captured weights @ v, projected,
reproduce attn.out; explicit attention only in hooked blocks; the model handed back as it
was; SigLIP's token layout has no CLS token and its pooling head's query attention is a
hook point; the text logits are the model's own (logit_scale × cosine, + SigLIP's bias)."""
from __future__ import annotations

import pytest
import torch

from vitscope.model.hooks import attach, hook_points, run_with_cache

pytest.importorskip("transformers")
from clip_models import KWARGS, hf_model, tokenizer  # noqa: E402

NAMES = list(KWARGS)


def adapted(name):
    from vitscope.model.adapters.clip import ClipViT
    return ClipViT.around(hf_model(name))


def raw_embedding(model, x):
    """The embedding as transformers computes it, vitscope nowhere involved."""
    m = model.model
    out = m.get_image_features(pixel_values=x) if hasattr(m, "get_image_features") else \
        m(pixel_values=x)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def attention(model, i):
    return model._layers[i].self_attn


@pytest.mark.parametrize("name", NAMES)
def test_clip_adapter_contract(name):
    model = adapted(name)
    siglip = name.startswith("Siglip")
    layout = model.token_layout
    assert layout.prefix == (() if siglip else (("cls", 1),)) and layout.grid == (4, 4)
    assert layout.cls_index is None if siglip else layout.cls_index == 0
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        ref = raw_embedding(model, x)
        plain = model(x)
        out, cache = run_with_cache(model, x)            # every point: explicit everywhere
    torch.testing.assert_close(plain, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    names = list(hook_points(model))
    assert names[:2] == ["patch_embed.out", "embed.out"]
    T = layout.num_tokens
    for i in range(2):
        w, v = cache[f"blocks.{i}.attn.weights"], cache[f"blocks.{i}.attn.v"]
        assert w.shape[-2:] == (T, T)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), rtol=0, atol=1e-5)
        with torch.no_grad():
            projected = attention(model, i).out_proj((w @ v).transpose(1, 2).flatten(2))
        torch.testing.assert_close(projected, cache[f"blocks.{i}.attn.out"], rtol=0, atol=1e-5)
    assert cache["norm.out"].shape[:2] == (2, T)
    if siglip:
        pool = cache["pool.weights"]                     # the probe's attention over patches
        assert pool.shape == (2, 2, 1, T) and "cls" not in cache
        torch.testing.assert_close(pool.sum(-1), torch.ones(2, 2, 1), rtol=0, atol=1e-5)
    else:   # cls: the post-LayerNorm CLS token, the same LayerNorm norm.out shows per token
        torch.testing.assert_close(cache["cls"], cache["norm.out"][:, 0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["CLIPModel", "SiglipModel"])
def test_explicit_attention_only_in_hooked_blocks_and_the_model_handed_back(name):
    hf = hf_model(name)
    layers = (hf.vision_model if hasattr(hf.vision_model, "encoder") else
              hf.vision_model.vision_model).encoder.layers
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in hf.modules()]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = raw_embedding(type("M", (), {"model": hf})(), x)
    from vitscope.model.adapters.clip import ClipViT
    model = ClipViT.around(hf)
    seen = {i: [] for i in range(2)}
    for i in range(2):
        layers[i].self_attn.register_forward_pre_hook(
            lambda m, a, i=i: seen[i].append(m.config._attn_implementation == "vitscope_eager"))
    with torch.no_grad():
        run_with_cache(model, x, names=["blocks.1.attn.weights"])
        assert (seen[0], seen[1]) == ([False], [True])
        uniform = lambda t, n: torch.full_like(t, 1.0 / t.shape[-1])   # noqa: E731
        with attach(model, {"blocks.0.attn.weights": uniform}):
            edited = model(x)
        assert not torch.allclose(edited, ref, atol=1e-4)
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
    model.release()
    for layer in layers:
        layer.self_attn._forward_pre_hooks.clear()
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in hf.modules()] == \
        hooks_before
    assert all(torch.equal(hf.state_dict()[k], v) for k, v in before.items())
    assert all(m.config._attn_implementation == "sdpa" for m in
               (layer.self_attn for layer in layers))


@pytest.mark.parametrize("name", ["CLIPModel", "SiglipModel"])
def test_text_logits_are_the_models_own(name, tmp_path):
    hf = hf_model(name)
    tok = tokenizer()
    tok.save_pretrained(tmp_path)
    from vitscope.model.adapters.clip import ClipConfig, ClipViT, TOKENIZER_FILES
    import base64
    cfg = ClipConfig.from_model(hf)
    cfg.tokenizer = {n: base64.b64encode((tmp_path / n).read_bytes()).decode()
                     for n in TOKENIZER_FILES if (tmp_path / n).is_file()}
    model = ClipViT(cfg, hf)
    prompts = ["a photo of a cat .", "a photo of a dog ."]
    x = torch.randn(3, 3, 32, 32)
    siglip = name.startswith("Siglip")
    tokens = tok(prompts, padding="max_length" if siglip else True, max_length=16,
                 return_tensors="pt")
    with torch.no_grad():
        args = dict(input_ids=tokens["input_ids"], pixel_values=x)
        if not siglip:
            args["attention_mask"] = tokens["attention_mask"]
        want = hf(**args).logits_per_image                   # 3×2, as the model scores
        got = model.text_logits(model(x), model.text_embeddings(prompts))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_openclip_adapter_contract_and_text_logits():
    pytest.importorskip("open_clip")
    from clip_models import openclip_model
    from vitscope.model.adapters.openclip import OpenClipViT
    import open_clip
    oc = openclip_model()
    hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in oc.modules()]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = oc.encode_image(x)
    model = OpenClipViT.around(oc)
    assert model.token_layout.prefix == (("cls", 1),) and model.token_layout.grid == (4, 4)
    blocks = oc.visual.transformer.resblocks
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
        out, cache = run_with_cache(model, x)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        for i in range(2):
            w, v = cache[f"blocks.{i}.attn.weights"], cache[f"blocks.{i}.attn.v"]
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), rtol=0, atol=1e-5)
            projected = blocks[i].attn.out_proj((w @ v).transpose(1, 2).flatten(2))
            torch.testing.assert_close(projected, cache[f"blocks.{i}.attn.out"], rtol=0,
                                       atol=1e-5)
        torch.testing.assert_close(cache["cls"], cache["norm.out"][:, 0], rtol=0, atol=1e-6)
        # explicit attention only where weights are hooked: an edit there changes the output
        uniform = lambda t, n: torch.full_like(t, 1.0 / t.shape[-1])   # noqa: E731
        with attach(model, {"blocks.0.attn.weights": uniform}):
            assert not torch.allclose(model(x), ref, atol=1e-4)
        tokens = open_clip.tokenizer.SimpleTokenizer(context_length=16)(["a photo of a cat"])
        image_logits, _ = oc.get_logits(x, tokens)
        got = model.text_logits(model(x), model.text_embeddings(["a photo of a cat"]))
    torch.testing.assert_close(got, image_logits, rtol=1e-5, atol=1e-5)
    model.release()
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in oc.modules()] == \
        hooks_before
    assert all(type(b.attn) is torch.nn.MultiheadAttention for b in blocks)
