"""vitscope.explain on a model without a class head: target="similarity:IMAGE" gives the
gradient methods a scalar that means something (the cosine similarity of each image's
embedding to the reference's), recorded as the target; class targets say what applies
instead; score() follows the similarity; the model is handed back unchanged."""
from __future__ import annotations

import numpy as np
import pytest

import vitscope
from vitscope.errors import ConfigError

from conftest import hf_vit


def snapshot(model) -> dict:
    """The weights, and the hooks on each module (the objective hooks the top one)."""
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "hooks": [(n, len(m._forward_hooks), len(m._forward_pre_hooks))
                      for n, m in model.named_modules()],
            "attrs": sorted(vars(model))}


def assert_unchanged(model, before) -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"] and after["attrs"] == before["attrs"]
    for k, v in before["state"].items():
        assert (after["state"][k] == v).all(), k


def test_similarity_target_on_a_feature_model(images, tmp_path):
    model = hf_vit(headless=True)
    before = snapshot(model)
    ref = images[2]
    ex = vitscope.explain(model, images[:4], methods=["gradcam", "grad-rollout"],
                          target=f"similarity:{ref}")
    assert ex.target_spec == f"similarity:{ref}" and list(ex.targets) == [0] * 4
    assert ex.probs is None and (ex.preds == -1).all()
    # the logits are the scores: image 2 is the reference itself
    assert ex.logits.shape == (4, 1) and ex.logits[2, 0] == pytest.approx(1.0, abs=1e-5)
    assert (np.delete(ex.logits[:, 0], 2) < 1 - 1e-4).all()
    for name in ("gradcam", "grad-rollout"):
        assert ex.maps[name].shape == (4, 4, 4) and np.isfinite(ex.maps[name]).all()
    # another image's map is not the reference's (whose gradient at cosine 1 is ~0)
    assert ex.maps["gradcam"][0].max() > 0
    assert all(c.endswith(f"(explains similarity to {ref.rsplit('/', 1)[-1]})")
               for c in ex.captions(4))
    assert f"target: similarity:{ref}" in ex._repr_html_()
    assert_unchanged(model, before)


def test_similarity_scored_and_saved(images, tmp_path):
    model = hf_vit(headless=True)
    ex = vitscope.explain(model, images[:4], methods=["gradcam"], target=f"similarity:{images[0]}")
    evidence = ex.score()
    report = evidence.report
    assert report["target"] == f"similarity:{images[0]}"
    assert report["score"].startswith("similarity to")
    index = ex.save(tmp_path / "out")
    assert index.is_file() and (tmp_path / "out" / "gradcam" / "gradcam.png").is_file()


def test_class_targets_on_a_feature_model_name_the_options(images):
    model = hf_vit(headless=True)
    with pytest.raises(ConfigError, match=r"no class head .*similarity:IMAGE"):
        vitscope.explain(model, images[:2], methods=["gradcam"])
    with pytest.raises(ConfigError, match=r"names no image file"):
        vitscope.explain(model, images[:2], methods=["gradcam"], target="similarity:nowhere.jpg")
    with pytest.raises(ConfigError, match=r"needs an image–text model \(CLIP or SigLIP"):
        vitscope.explain(model, images[:2], methods=["gradcam"], target="text:a photo of a cat")


def test_text_targets_on_an_open_clip_object(images):
    pytest.importorskip("open_clip")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
    from clip_models import openclip_model
    oc = openclip_model()
    before = snapshot(oc)
    ex = vitscope.explain(oc, images[:3], methods=["gradcam"], target="text:a photo of a cat")
    assert ex.target_spec == "text:a photo of a cat" and ex.logits.shape == (3, 1)
    assert ex.family == "openclip" and np.isfinite(ex.maps["gradcam"]).all()
    zs = vitscope.explain(oc, images[:3], methods=["gradcam"], target="text-classes",
                          classes=["cat", "dog", "ship"])
    assert zs.classes == ["cat", "dog", "ship"] and zs.logits.shape == (3, 3)
    assert list(zs.targets) == list(zs.preds) == list(zs.logits.argmax(1))
    assert_unchanged(oc, before)
