"""`vitscope import` through the real CLI: timm, torchvision and Hugging Face models from weight
files the tests write, then analyze --all, dump, hooks, info, predict and eval unchanged; the
family's preprocessing (checked against the family's own transforms); hostile weight files
refused with one sentence and no code run; a missing extra is one sentence."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vitscope.cli import main

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

NO_UMAP = ["--opt", "cls-embedding.umap=false"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Run from tmp_path: outputs/dumps lands there, not in the repository."""
    monkeypatch.chdir(tmp_path)


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A labelled folder of 2 classes, images of different sizes and aspect ratios."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    sizes = [(40, 60), (64, 48), (33, 33), (90, 50)]
    for c in ("cat", "dog"):
        (root / c).mkdir()
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / c / f"{c}{i}.{'png' if i % 2 else 'jpg'}")
    return root


def timm_weights(tmp_path, name, **kw):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kw)
    path = tmp_path / f"{name}.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model.eval(), path


def check_analysis(ckpt, images, out, expect_size, prefix_tokens):
    run("analyze", "--all", ckpt, "--data", f"folder:{images}", "-n", 4, "-o", out, *NO_UMAP)
    manifest = json.loads((out / "manifest.json").read_text())
    bad = {n: p["error"] for n, p in manifest["plugins"].items() if not p["ok"]}
    assert not bad, bad
    from vitscope.dump import Dump
    dump_path = manifest["run"]["dump"]
    with Dump.open(dump_path) as d:
        assert d.images.shape[1:] == (*expect_size, 3)          # stored as the model saw them
        assert d.layout.num_prefix_tokens == prefix_tokens
        return dict(d.attrs)


def test_timm_distilled_import_analyze_and_every_command(tmp_path, images):
    model, weights = timm_weights(tmp_path, "deit_tiny_distilled_patch16_224", img_size=32)
    ckpt = tmp_path / "deit.pt"
    r = run("import", "timm:deit_tiny_distilled_patch16_224", "--weights", weights,
            "--image-size", 32, "-o", ckpt)
    assert "1 CLS + 1 distillation tokens, 2×2 patches" in r.output and "RANDOM" not in r.output
    from vitscope.model.checkpoint import load_model
    wrapped, ck = load_model(ckpt)
    assert ck.arch == "timm" and ck.train_config["random_weights"] is False
    assert ck.train_config["preprocess"] == {"resize": [35, 35], "crop": [32, 32],
                                             "mode": "shorter", "interpolation": "bicubic"}
    assert len(ck.classes) == 1000 and ck.classes[0] == "tench"   # ImageNet's names, shipped
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model(x), rtol=0, atol=1e-5)
    attrs = check_analysis(ckpt, images, tmp_path / "out", (32, 32), 2)
    assert attrs["token_layout"]["prefix"] == [["cls", 1], ["dist", 1]]
    hooks = run("hooks", ckpt).output
    assert "blocks.11.attn.weights" in hooks and "B×3×198×198" not in hooks   # 2 + 4 tokens
    assert "B×3×6×6" in hooks
    info = run("info", ckpt).output
    assert "arch timm" in info and "deit_tiny_distilled_patch16_224" in info
    pred = run("predict", ckpt, images / "cat" / "cat0.jpg", "--json").output
    assert len(json.loads(pred)[0]["predictions"]) == 5
    dump = run("dump", ckpt, "--data", f"folder:{images}", "--limit", 2, "--hooks", "cls",
               "-o", tmp_path / "d.h5").output
    assert "kB/image" in dump


def test_timm_preprocessing_is_timms_own_transform(tmp_path, images):
    """The checkpoint's resize/crop/mean/std turn a file into exactly what timm's eval
    transform makes of it (not a hand-written guess)."""
    from vitscope.data import normalization, preprocessing, to_model_input
    from vitscope.model.checkpoint import load_checkpoint
    from vitscope.data.images import decode_image
    _, weights = timm_weights(tmp_path, "vit_tiny_patch16_224")
    ckpt = tmp_path / "vit.pt"
    run("import", "timm:vit_tiny_patch16_224", "--weights", weights, "-o", ckpt)
    ck = load_checkpoint(ckpt)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    for f in sorted(images.rglob("*.*")):
        ours = to_model_input(torch.from_numpy(decode_image(f, preprocessing(ck))),
                              *normalization(ck))[0]
        with Image.open(f) as im:
            theirs = transform(im.convert("RGB"))
        assert ours.shape == theirs.shape == (3, 224, 224)
        assert (ours - theirs).abs().max() < 2.5 / 255 / 0.5   # uint8 rounding of the resize


def test_registers_and_a_wide_grid(tmp_path, images):
    _, weights = timm_weights(tmp_path, "vit_small_patch14_reg4_dinov2", img_size=(28, 42))
    ckpt = tmp_path / "reg.pt"
    r = run("import", "timm:vit_small_patch14_reg4_dinov2", "--weights", weights,
            "--image-size", "28x42", "-o", ckpt)
    assert "1 CLS + 4 register tokens, 2×3 patches of 14×14 px" in r.output
    assert "a feature model" in r.output
    attrs = check_analysis(ckpt, images, tmp_path / "out", (28, 42), 5)
    assert attrs["token_layout"]["grid"] == [2, 3]
    summary = json.loads((tmp_path / "out" / "rollout" / "summary.json").read_text())
    assert 0 < summary["rollout_to_other_prefix"] < 1
    err = run("eval", ckpt, "--data", f"folder:{images}", ok=False)
    assert err.exit_code == 1 and "no classifier head" in err.output


def test_torchvision_import_analyze(tmp_path, images):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(image_size=32).eval()
    weights = tmp_path / "vit_b_16.pth"
    torch.save(model.state_dict(), weights)
    ckpt = tmp_path / "tv.pt"
    r = run("import", "torchvision:vit_b_16", "--weights", weights, "--image-size", 32, "-o", ckpt)
    assert "1 CLS token, 2×2 patches of 16×16 px" in r.output
    from vitscope.model.checkpoint import load_checkpoint
    ck = load_checkpoint(ckpt)
    assert ck.train_config["preprocess"]["interpolation"] == "bilinear"
    assert ck.train_config["normalize"]["mean"] == [0.485, 0.456, 0.406]
    check_analysis(ckpt, images, tmp_path / "out", (32, 32), 1)


def hf_folder(tmp_path, with_processor=True):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8,
                                    num_labels=2, id2label={0: "cat", 1: "dog"},
                                    label2id={"cat": 0, "dog": 1})
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    folder = tmp_path / "hf-vit"
    model.save_pretrained(folder)
    if with_processor:
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}, resample=2).save_pretrained(
            folder)
    return model, folder


def test_hf_import_analyze_eval(tmp_path, images):
    model, folder = hf_folder(tmp_path)
    ckpt = tmp_path / "hf.pt"
    r = run("import", f"hf:{folder}", "-o", ckpt)
    assert "2 class names" in r.output and "RANDOM" not in r.output
    from vitscope.model.checkpoint import load_model
    from vitscope.data import normalization, preprocessing, to_model_input
    from vitscope.data.images import decode_image
    wrapped, ck = load_model(ckpt)
    assert ck.classes == ["cat", "dog"] and ck.arch == "hf"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model(pixel_values=x).logits, rtol=0, atol=1e-5)
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    f = images / "dog" / "dog3.png"
    ours = to_model_input(torch.from_numpy(decode_image(f, preprocessing(ck))), *normalization(ck))
    with Image.open(f) as im:
        theirs = processor(im.convert("RGB"), return_tensors="pt")["pixel_values"]
    assert (ours - theirs).abs().max() < 2.5 / 255 / 0.5
    check_analysis(ckpt, images, tmp_path / "out", (32, 32), 1)
    metrics = json.loads(run("eval", ckpt, "--data", f"folder:{images}", "--json",
                             "-o", tmp_path / "eval").output)
    assert metrics["n"] == 8 and metrics["classes"] == ["cat", "dog"]
    # vitscope score runs on the wrapped model too (its randomisation cascade on a deep copy)
    r = run("score", ckpt, "-p", "rollout", "-n", 4, "--data", f"folder:{images}",
            "-o", tmp_path / "out")
    assert "+ blocks.0" in r.output and (tmp_path / "out" / "score" / "score.json").is_file()


def test_hf_folder_without_processor_config_uses_the_types_default_at_the_models_size(
        tmp_path):
    _, folder = hf_folder(tmp_path, with_processor=False)
    ckpt = tmp_path / "hf.pt"
    run("import", f"hf:{folder}", "-o", ckpt)
    from vitscope.model.checkpoint import load_checkpoint
    tc = load_checkpoint(ckpt).train_config
    assert tc["preprocess"] == {"resize": [32, 32], "crop": [32, 32], "mode": "squash",
                                "interpolation": "bilinear"}       # ViT's 224 -> 224, at 32
    assert tc["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}


def test_random_import_says_so_loudly(tmp_path):
    ckpt = tmp_path / "r.pt"
    r = CliRunner().invoke(main, ["import", "timm:vit_tiny_patch16_224",
                                                  "--image-size", "32", "-o", str(ckpt)])
    assert r.exit_code == 0, r.output
    assert "RANDOM weights" in r.stderr
    from vitscope.model.checkpoint import load_checkpoint
    assert load_checkpoint(ckpt).train_config["random_weights"] is True
    assert "random weights" in run("info", ckpt).output


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_hostile_weight_files_are_refused_with_one_sentence(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": Evil(marker)}}, evil)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    for weights in (evil, bad):
        r = run("import", "timm:vit_tiny_patch16_224", "--image-size", 32, "--weights", weights,
                "-o", tmp_path / "x.pt", ok=False)
        assert r.exit_code == 1 and r.output.startswith("Error: ")
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert "refuses" in run("import", "timm:vit_tiny_patch16_224", "--weights", evil,
                            "-o", tmp_path / "x.pt", ok=False).output
    # a hostile pytorch_model.bin in a Hugging Face folder: refused before transformers reads it
    _, folder = hf_folder(tmp_path, with_processor=False)
    (folder / "model.safetensors").unlink()
    torch.save({"w": Evil(marker)}, folder / "pytorch_model.bin")
    r = run("import", f"hf:{folder}", "-o", tmp_path / "h.pt", ok=False)
    assert r.exit_code == 1 and "refuses" in r.output
    assert not marker.exists() and not (tmp_path / "x.pt").exists()


def test_a_missing_extra_is_one_sentence(tmp_path, monkeypatch):
    _, weights = timm_weights(tmp_path, "vit_tiny_patch16_224", img_size=32)
    ckpt = tmp_path / "t.pt"
    run("import", "timm:vit_tiny_patch16_224", "--weights", weights, "--image-size", 32, "-o", ckpt)
    monkeypatch.setitem(sys.modules, "timm", None)          # as if timm were not installed
    for args in (["info", ckpt], ["import", "timm:vit_tiny_patch16_224", "-o", tmp_path / "y.pt"]):
        r = run(*args, ok=False)
        assert r.exit_code == 1 and "pip install 'vitscope[timm]'" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "transformers", None)
    r = run("import", f"hf:{tmp_path}", "-o", tmp_path / "z.pt", ok=False)
    assert "pip install 'vitscope[hf]'" in r.output
