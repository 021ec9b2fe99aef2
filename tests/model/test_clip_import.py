"""`vitscope import hf:DIR` of a CLIP or SigLIP folder (random weights, a tokenizer and an image
processor written here), then dump, analyze and score with text targets: the dump's scores are
the model's own logits_per_image, the target is recorded and shown in the titles, class
targets are one sentence naming the text and similarity targets. Real CLI, HDF5, PNG, HTML."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitscope.cli import main
from vitscope.dump import Dump

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from clip_models import pet_folder, save_folder, tokenizer  # noqa: E402


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def pets(tmp_path):
    """A folder with cat/ and dog/ sub-folders, three 40×40 images each."""
    return pet_folder(tmp_path / "pets")


def imported(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hf = save_folder(name, tmp_path / name)
    res = run("import", f"hf:{tmp_path / name}", "-o", tmp_path / f"{name}.pt")
    assert res.exit_code == 0, res.output
    assert "a feature model" in res.output
    return hf, tmp_path / f"{name}.pt"


def test_clip_text_classes_and_text_prompt(tmp_path, monkeypatch, pets):
    hf, ckpt = imported("CLIPModel", tmp_path, monkeypatch)
    res = run("analyze", ckpt, "-p", "gradcam", "-p", "rollout", "--data", f"folder:{pets}",
              "--target", "text-classes", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    dump_path = next((tmp_path / "outputs" / "dumps").glob("*.h5"))
    with Dump.open(dump_path) as d:
        assert d.target_spec == "text-classes" and d.classes == ["cat", "dog"]
        scores = np.asarray(d.logits[:])
        assert scores.shape == (6, 2) and (d.preds == scores.argmax(1)).all()
        assert (d.target == d.preds).all() and sorted(d.labels.tolist()) == [0, 0, 0, 1, 1, 1]
        # the scores are the model's own zero-shot logits of the stored pixels
        from vitscope.data import normalization, to_model_input
        from vitscope.model.checkpoint import load_checkpoint
        mean, std = normalization(load_checkpoint(ckpt))
        x = to_model_input(torch.from_numpy(np.asarray(d.images[:])), mean, std)
        tokens = tokenizer()(["a photo of a cat.", "a photo of a dog."], padding=True,
                             return_tensors="pt")
        with torch.no_grad():
            want = hf(pixel_values=x, **tokens).logits_per_image.numpy()
        np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-4)
    summary = json.loads((tmp_path / "out" / "gradcam" / "summary.json").read_text())
    assert summary["target"] == "text-classes"
    assert "target: text-classes" in (tmp_path / "out" / "gradcam" / "gradcam.html").read_text()

    res = run("analyze", ckpt, "-p", "grad-rollout", "--data", f"folder:{pets}",
              "--target", "text:a photo of a dog", "-o", tmp_path / "out2")
    assert res.exit_code == 0, res.output
    page = (tmp_path / "out2" / "grad-rollout" / "grad-rollout.html").read_text()
    assert "target: text:a photo of a dog" in page

    bad = run("analyze", ckpt, "-p", "gradcam", "--data", f"folder:{pets}", "--target", "1",
              "-o", tmp_path / "out3")
    assert bad.exit_code != 0 and "text:" in bad.output and "Traceback" not in bad.output
    unnamed = run("analyze", ckpt, "-p", "gradcam", "--data", f"folder:{pets / 'cat'}",
                  "--target", "text-classes", "-o", tmp_path / "out4")   # no class folders
    assert unnamed.exit_code != 0 and "needs class names" in unnamed.output, unnamed.output


def test_clip_scored_with_a_text_target(tmp_path, monkeypatch, pets):
    _, ckpt = imported("CLIPModel", tmp_path, monkeypatch)
    res = run("score", ckpt, "-p", "gradcam", "--data", f"folder:{pets}", "-n", "6",
              "--target", "text:a photo of a cat", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "score" / "score.json").read_text())
    assert report["target"] == "text:a photo of a cat"
    assert report["score"] == "a photo of a cat"
    assert "random order" in res.output        # the baseline the map is measured against


def test_siglip_has_no_cls_token_and_explains_a_text(tmp_path, monkeypatch, pets):
    _, ckpt = imported("SiglipModel", tmp_path, monkeypatch)
    res = run("analyze", ckpt, "--all", "--data", f"folder:{pets}",
              "--target", "text:a photo of a cat", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "skipped attn-grad" in res.output and "CLS" in res.output   # says why
    # the CLS-based maps with a natural analogue read the pooling head's query instead
    assert "FAILED" not in res.output, res.output
    for name in ("gradcam", "norm-activations", "rollout", "cls-heatmap"):
        assert (tmp_path / "out" / name / "summary.json").is_file(), res.output
    dump_path = next((tmp_path / "outputs" / "dumps").glob("*.h5"))
    with Dump.open(dump_path) as d:
        assert d.layout.cls_index is None and d.layout.num_prefix_tokens == 0
        assert d.target_spec == "text:a photo of a cat" and (d.preds == -1).all()


def test_openclip_import_with_weights_and_a_text_target(tmp_path, monkeypatch, pets):
    pytest.importorskip("open_clip")
    from safetensors.torch import save_file
    from clip_models import openclip_model, register_openclip
    monkeypatch.chdir(tmp_path)
    name = register_openclip(tmp_path)
    oc = openclip_model()
    save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, tmp_path / "w.safetensors")
    res = run("import", f"openclip:{name}", "--weights", tmp_path / "w.safetensors", "-o",
              tmp_path / "oc.pt")
    assert res.exit_code == 0, res.output
    assert "RANDOM" not in res.output and "a feature model" in res.output
    res = run("analyze", tmp_path / "oc.pt", "-p", "gradcam", "-p", "cls-embedding", "--data",
              f"folder:{pets}", "--target", "text-classes", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    dump_path = next((tmp_path / "outputs" / "dumps").glob("*.h5"))
    with Dump.open(dump_path) as d:
        assert d.attrs["arch"] == "openclip" and d.classes == ["cat", "dog"]
        assert np.asarray(d.logits[:]).shape == (6, 2)
    bad = run("import", "openclip:No-Such-Model", "-o", tmp_path / "x.pt")
    assert bad.exit_code != 0 and "open_clip has no model 'No-Such-Model'" in bad.output
