"""Inline display: self-contained HTML (nothing fetched, every string escaped), real PNGs,
matplotlib figures; attention and embedding views drawn by the plugins' own figure code; any
plugin object rendered on a model's images without installing it."""
from __future__ import annotations

import io
import re
import numpy as np
import pytest
from PIL import Image

import vitscope
from vitscope.errors import ConfigError, PluginError

from conftest import SHIPPED, hf_vit, timm_vit

HOSTILE = "<img src=x onerror=alert(1)>"


def assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    for url in re.findall(r"""(?:src|href)=['"]([^'"]*)""", html):
        assert url.startswith("data:image/"), url


def assert_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    assert min(image.size) > 50
    return image


def test_an_explanation_displays_inline_and_escapes_names(tmp_path, pixels):
    """A class named like markup (the model's id2label) and a file named like it show as text."""
    path = tmp_path / f"{HOSTILE}.png"
    Image.fromarray(pixels[0]).save(path)
    Image.fromarray(pixels[1]).save(tmp_path / "b.png")
    model = hf_vit()
    ex = vitscope.explain(model, [path, tmp_path / "b.png"], methods=["rollout", "gradcam"],
                          target="<b>ship</b>")
    html = ex._repr_html_()
    assert_self_contained(html)
    assert "<b>ship</b>" not in html and "&lt;b&gt;ship&lt;/b&gt;" in html
    assert HOSTILE not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert html.count("<img ") == 1          # the figure, inlined
    assert_png(ex._repr_png_())
    fig = ex.figure(methods="gradcam", scale="shared")
    assert fig.axes and fig.get_size_inches()[0] > 1
    with pytest.raises(ConfigError, match="has no maps of grad-rollout; it has rollout, gradcam"):
        ex.figure(methods="grad-rollout")
    assert "Explanation(2 images, methods: rollout, gradcam; target: explicit" in repr(ex)


def test_evidence_displays_as_tables_and_the_model_is_untouched(pixels, tmp_path):
    """score() perturbs the user's object and randomises a copy of it: the object is as it
    was afterwards; the evidence shows as tables and saves as `vitscope score` does."""
    from test_api_models import assert_unchanged, snapshot, user_state
    model = user_state(timm_vit())
    before = snapshot(model)
    ex = vitscope.explain(model, pixels, methods=["attn-grad", "rollout"])
    ev = ex.score(seed=1)
    assert_unchanged(model, before)
    assert set(ev.ranking) == {"attn-grad", "rollout"}
    assert ev.report["cascade"] == ["head", "blocks.1", "blocks.0", "embedding"]
    html = ev._repr_html_()
    assert_self_contained(html)
    assert "attn-grad" in html and "random order (baseline)" in html and "<table>" in html
    text = str(ev)
    assert "Faithfulness" in text and "Randomisation" in text and "attn-grad" in text
    assert ev.to_dict()["methods"]["attn-grad"]["faithfulness"]["deletion_auc"]["ci95"]
    files = ev.save(tmp_path / "score")
    assert {f.name for f in files} >= {"score.json", "curves.png", "randomization.png"}


def test_attention_and_embedding_views(images):
    att = vitscope.attention(SHIPPED, images[:4])
    n, L, H, T, _ = att.weights.shape
    assert (n, L, H, T) == (4, 4, 4, 65)
    np.testing.assert_allclose(att.weights.sum(-1), 1, atol=1e-5)
    assert att.cls_to_patches.shape == (4, 4, 4, 8, 8)
    np.testing.assert_array_equal(att.patches_to_cls[:, 1, 2].reshape(4, -1),
                                  att.weights[:, 1, 2, 1:, 0])
    ex = vitscope.explain(SHIPPED, images[:4], methods=["rollout"],
                          options={"rollout": {"discard_ratio": 0.3}})
    np.testing.assert_allclose(att.rollout(discard_ratio=0.3), ex.maps["rollout"], atol=1e-6)
    heads = att.view("cls-heatmap", layers="last", per_head=1)
    assert {"cls_to_patches.png", "heads_img0.png"} <= set(heads.files)
    assert heads.results["cls_to_patches"].shape[:3] == (4, 1, 4)
    html = att._repr_html_()
    assert_self_contained(html)
    for shown in ("token_attention_img0.png", "cls_to_patches.png", "patches_to_cls.png",
                  "rollout_evolution.png"):
        assert shown in html
    assert "rollout.png" not in html and "class_average_cls_to_patches.png" not in html
    with pytest.raises(PluginError, match="did not capture; use vitscope.view"):
        att.view("gradcam")
    emb = vitscope.embed(SHIPPED, images[:6])
    assert emb.tokens.shape == (6, 4, 128) and emb.cls.shape == (6, 128)
    assert emb.pca().shape == (6, 2) and emb.pca(layer=0).shape == (6, 2)
    view = emb.view()
    assert any(name.startswith("cls_embedding") for name in view.files), view.files
    assert_png(view._repr_png_())
    att.close()


class MeanAttention:
    """Mean attention each patch receives, per layer (docs/plugins.md's example)."""
    name = "mean-attention"
    requires = ("blocks.*.attn.weights",)

    def render(self, dump, out_dir, options):
        from vitscope.render import figures
        attn = dump[dump.match("blocks.*.attn.weights")[-1]][:].astype(np.float32)
        p = dump.layout.num_prefix_tokens
        received = attn[..., p:].mean(axis=(1, 2)).reshape(len(attn), *dump.layout.grid)
        files = figures.save_results(out_dir, {"received": received}, {"images": len(attn)})
        with figures.style() as plt:
            fig, ax = plt.subplots()
            figures.show_overlay(ax, dump.images[0], received[0])
            files.append(figures.save_static(fig, out_dir / "received", options))
        return files


def test_a_plugin_object_renders_without_being_installed(images):
    figs = vitscope.view(SHIPPED, images[:2], MeanAttention())
    assert list(figs.files) == ["received.png"] and figs.summary == {"images": 2}
    assert figs.results["received"].shape == (2, 8, 8)
    assert_png(figs["received.png"])
    assert_self_contained(figs._repr_html_())
    norms = vitscope.view(SHIPPED, images[:2], "norm-activations", options={"gif": False})
    assert norms.files and all(n.endswith(".png") for n in norms.files)
