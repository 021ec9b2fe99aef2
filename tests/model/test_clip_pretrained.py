"""`vitscope import hf:ORG/NAME --pretrained` and `vitscope.explain("hf:ORG/NAME", ...)` for CLIP
and SigLIP: the repository's config.json is fetched first and picks the image–text adapter,
then the snapshot (weights, processor, tokenizer) is read like a folder. Offline, from a hub
cache the test builds with random small models saved by save_pretrained; a text target then
works on the imported checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitscope.cli import main

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("huggingface_hub")
from clip_models import save_folder  # noqa: E402
from test_pretrained_import import hub_cache, offline_cache  # noqa: E402,F401,F811  (fixture)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def cached(name: str, repo: str, tmp_path, cache):
    """A CLIP or SigLIP saved with its tokenizer and processor, put into the hub cache as
    `repo`; returns the transformers model."""
    model = save_folder(name, tmp_path / name)
    hub_cache(cache, repo, {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()})
    return model


@pytest.mark.parametrize("name,repo", [("SiglipModel", "someorg/tiny-siglip"),
                                       ("CLIPModel", "someorg/tiny-clip")])
def test_pretrained_clip_and_siglip_import_from_the_hub_cache(tmp_path, offline_cache,
                                                              monkeypatch, name, repo):
    monkeypatch.chdir(tmp_path)
    hf = cached(name, repo, tmp_path, offline_cache)
    ckpt = tmp_path / "pre.pt"
    res = run("import", f"hf:{repo}", "--pretrained", "-o", ckpt)
    assert res.exit_code == 0, res.output
    assert "a feature model" in res.output and "RANDOM" not in res.output
    from vitscope.model.checkpoint import load_checkpoint, load_model
    wrapped, ck = load_model(ckpt)
    assert ck.arch == "hf-clip" and wrapped.cfg.tokenizer            # text tower and tokenizer
    assert ck.train_config["pretrained"] == repo and not ck.train_config["random_weights"]
    assert str(offline_cache) in load_checkpoint(ckpt).train_config["weights"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf.get_image_features(pixel_values=x)
        want = want if isinstance(want, torch.Tensor) else want.pooler_output
        torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-5)
    if name != "SiglipModel":
        return
    # a text target on what was imported: the model's own text tower and tokenizer
    from clip_models import pet_folder
    res = run("analyze", ckpt, "-p", "gradcam", "--data",
              f"folder:{pet_folder(tmp_path / 'imgs', per_class=1)}",
              "--target", "text:a photo of a cat", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "gradcam" / "summary.json").read_text())
    assert summary["target"] == "text:a photo of a cat"


def test_the_python_api_given_a_siglip_hub_name(tmp_path, offline_cache):
    import vitscope
    hf = cached("SiglipModel", "someorg/tiny-siglip", tmp_path, offline_cache)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ex = vitscope.explain("hf:someorg/tiny-siglip", pixels, methods=["gradcam"],
                          target="text:a photo of a dog")
    assert ex.maps["gradcam"].shape == (2, 4, 4) and np.isfinite(ex.maps["gradcam"]).all()
    assert ex.family == "hf-clip"
    # the score explained is the model's own image–text logit
    from clip_models import tokenizer
    tokens = tokenizer()(["a photo of a dog"], padding="max_length", max_length=16,
                         return_tensors="pt")
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        want = hf(pixel_values=x, input_ids=tokens["input_ids"]).logits_per_image.numpy()
    np.testing.assert_allclose(ex.logits, want, rtol=1e-4, atol=1e-4)


def test_pretrained_openclip_through_its_own_hub_files(tmp_path, offline_cache, monkeypatch):
    """openclip:hf-hub:ORG/NAME --pretrained: the two files open_clip reads for such a name
    (open_clip_config.json and its weights), fetched by open_clip into the hub cache."""
    pytest.importorskip("open_clip")
    from safetensors.torch import save
    from clip_models import OPENCLIP_CONFIG, openclip_model
    monkeypatch.chdir(tmp_path)
    oc = openclip_model()
    config = {"model_cfg": OPENCLIP_CONFIG,
              "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    hub_cache(offline_cache, "someorg/tiny-openclip", {
        "open_clip_config.json": json.dumps(config).encode(),
        "open_clip_model.safetensors": save({k: v.contiguous()
                                             for k, v in oc.state_dict().items()})})
    ckpt = tmp_path / "oc.pt"
    res = run("import", "openclip:hf-hub:someorg/tiny-openclip", "--pretrained", "-o", ckpt)
    assert res.exit_code == 0, res.output
    assert "RANDOM" not in res.output and "std [0.25, 0.25, 0.25]" in res.output
    from vitscope.model.checkpoint import load_checkpoint, load_model
    wrapped, ck = load_model(ckpt)           # rebuilt from the checkpoint's config alone
    assert ck.arch == "openclip" and ck.train_config["pretrained"] == "someorg/tiny-openclip"
    assert str(offline_cache) in load_checkpoint(ckpt).train_config["weights"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), oc.encode_image(x), rtol=0, atol=1e-5)
    # not cached, or a registry name without pretrained tags: one sentence each
    bad = run("import", "openclip:hf-hub:someorg/absent", "--pretrained", "-o", tmp_path / "x.pt")
    assert bad.exit_code != 0 and "not in the hub cache" in bad.output, bad.output
    from clip_models import register_openclip
    name = register_openclip(tmp_path)
    bad = run("import", f"openclip:{name}", "--pretrained", "-o", tmp_path / "y.pt")
    assert bad.exit_code != 0 and "open_clip lists no pretrained weights" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "y.pt").exists()

    # NAME@TAG: a pretrained tag in open_clip's own registry (added here as open_clip's
    # pretrained.py lists its tags), its weights hub-hosted like most of open_clip's
    import open_clip
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {"tiny": {
        "hf_hub": "someorg/tiny-openclip/", "quick_gelu": False, "mean": (0.5,) * 3,
        "std": (0.5,) * 3}})
    res = run("import", f"openclip:{name}@tiny", "--pretrained", "-o", tmp_path / "tag.pt")
    assert res.exit_code == 0 and "std [0.5, 0.5, 0.5]" in res.output, res.output
    wrapped, ck = load_model(tmp_path / "tag.pt")
    assert ck.train_config["pretrained"] == f"{name}@tiny"
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), oc.encode_image(x), rtol=0, atol=1e-5)
    bad = run("import", f"openclip:{name}@nope", "--pretrained", "-o", tmp_path / "z.pt")
    assert bad.exit_code != 0 and f"its tags are tiny (openclip:{name}@TAG)" in bad.output
