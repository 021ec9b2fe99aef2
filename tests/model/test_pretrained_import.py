"""Importing real models through the real CLI: fine-tuned heads (the number of classes read off
the weights, --num-classes, --classes), Hugging Face weight files under the older and the newer
key names, --image-size on hf: folders (position embeddings resampled as transformers does at
run time), and --pretrained through each family's own hub code from a hub cache the test builds
(random weights, offline), or one sentence when there is neither network nor cache."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from vitscope.cli import main

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
hub_constants = pytest.importorskip("huggingface_hub.constants")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    return result


def save(state, path):
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def one_sentence(result) -> str:
    text = result.output.strip().splitlines()[-1]
    assert text.startswith("Error:") and text.count(". ") <= 2, result.output
    return text


# -- fine-tuned heads -----------------------------------------------------------------------------

def test_a_fine_tuned_ten_class_deit_imports_with_its_classes(tmp_path):
    torch.manual_seed(0)
    tuned = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32,
                              num_classes=10).eval()
    weights = save(tuned.state_dict(), tmp_path / "w.safetensors")
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"class{i}" for i in range(10)))
    ckpt = tmp_path / "tuned.pt"
    r = run("import", "timm:deit_tiny_distilled_patch16_224", "--weights", weights,
            "--image-size", 32, "--classes", names, "-o", ckpt)
    assert "10 class names" in r.output and "RANDOM" not in r.output
    from vitscope.model.checkpoint import load_model
    wrapped, ck = load_model(ckpt)
    assert ck.classes[9] == "class9" and wrapped.cfg.num_classes == 10
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), tuned(x), rtol=0, atol=1e-5)
    # every built-in plugin renders on it (a folder of its own classes' images)
    import numpy as np
    from PIL import Image
    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("class3", "class7"):
        (folder / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(
                folder / c / f"{i}.png")
    r = run("analyze", "--all", ckpt, "--data", f"folder:{folder}", "-n", 4, "-o",
            tmp_path / "out", "--opt", "cls-embedding.umap=false")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    from vitscope.plugins import BUILTINS
    # all but two: logit-attribution reads one linear head on CLS (a distilled DeiT averages
    # two) and probe needs 10 images; each is skipped before capture with its reason
    skipped = {"logit-attribution": "needs one linear head on CLS", "probe": "needs at least 10",
               **{n: "runs the model many times per image"
                  for n in ("integrated-gradients", "occlusion", "scorecam")}}
    assert set(BUILTINS) - set(skipped) <= {key.split("@")[0] for key in manifest["plugins"]}, \
        r.output
    for name, reason in skipped.items():
        assert any(line.startswith("skipped") and f" {name} " in line and reason in line
                   for line in r.output.splitlines()), r.output
    assert all(p["ok"] for p in manifest["plugins"].values()), manifest["plugins"]
    # without --classes it still imports (no names), and a wrong count is one sentence
    run("import", "timm:deit_tiny_distilled_patch16_224", "--weights", weights,
        "--image-size", 32, "-o", tmp_path / "unnamed.pt")
    names.write_text("a\nb\nc\n")
    bad = run("import", "timm:deit_tiny_distilled_patch16_224", "--weights", weights,
              "--image-size", 32, "--classes", names, "-o", tmp_path / "bad.pt", ok=False)
    assert "names 3 classes but the model has 10 outputs" in one_sentence(bad)


def test_num_classes_that_the_weights_contradict_is_refused(tmp_path):
    tuned = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              num_classes=10)
    weights = save(tuned.state_dict(), tmp_path / "w.safetensors")
    bad = run("import", "timm:vit_tiny_patch16_224", "--weights", weights, "--image-size", 32,
              "--num-classes", 7, "-o", tmp_path / "x.pt", ok=False)
    text = one_sentence(bad)
    assert "do not fit timm's vit_tiny_patch16_224 with 7 classes" in text and "head" in text
    assert not (tmp_path / "x.pt").exists()
    # a head-less feature model from a file without a head
    feats = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              num_classes=0)
    weights = save(feats.state_dict(), tmp_path / "f.safetensors")
    r = run("import", "timm:vit_tiny_patch16_224", "--weights", weights, "--image-size", 32,
            "--num-classes", 0, "-o", tmp_path / "f.pt")
    assert "a feature model" in r.output


# -- Hugging Face weight files and sizes ----------------------------------------------------------

def tiny_hf(model_type, cls, **kw):
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(
        model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, **kw)
    return getattr(transformers, cls)(config).eval()


@pytest.mark.parametrize("names", ["older", "newer"])
def test_hf_weights_under_older_and_newer_key_names_with_a_fine_tuned_head(tmp_path, names):
    base = tiny_hf("vit", "ViTForImageClassification", image_size=32, patch_size=8,
                   num_labels=2)
    folder = tmp_path / "base"
    base.save_pretrained(folder)                      # the folder says 2 labels
    tuned = tiny_hf("vit", "ViTForImageClassification", image_size=32, patch_size=8,
                    num_labels=5)
    if names == "older":                              # what save_pretrained writes
        tuned.save_pretrained(tmp_path / "tuned")
        weights = tmp_path / "tuned" / "model.safetensors"
        assert any("attention.attention.query" in k for k in
                   safetensors_torch.load_file(weights))
    else:                                             # the model's own state_dict names
        weights = save(tuned.state_dict(), tmp_path / "tuned.safetensors")
    ckpt = tmp_path / "hf.pt"
    run("import", f"hf:{folder}", "--weights", weights, "-o", ckpt)
    from vitscope.model.checkpoint import load_model
    wrapped, ck = load_model(ckpt)
    assert wrapped.cfg.num_classes == 5 and ck.classes == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), tuned(pixel_values=x).logits, rtol=0, atol=1e-5)


def test_hf_weights_that_do_not_fit_are_one_sentence(tmp_path):
    base = tiny_hf("vit", "ViTForImageClassification", image_size=32, patch_size=8)
    base.save_pretrained(tmp_path / "base")
    other = tiny_hf("vit", "ViTForImageClassification", image_size=32, patch_size=4)
    weights = save(other.state_dict(), tmp_path / "other.safetensors")
    bad = run("import", f"hf:{tmp_path / 'base'}", "--weights", weights, "-o",
              tmp_path / "x.pt", ok=False)
    assert "do not fit the ViTForImageClassification" in one_sentence(bad)


@pytest.mark.parametrize("model_type,cls,kw", [
    ("dinov2", "Dinov2Model", {"image_size": 28, "patch_size": 7, "layerscale_value": 0.5}),
    ("vit", "ViTForImageClassification", {"image_size": 32, "patch_size": 8}),
])
def test_image_size_resamples_an_hf_folders_position_embedding(tmp_path, model_type, cls, kw):
    """The imported model at the new size computes what the original computes when it
    resamples its own position embedding at run time for that size."""
    original = tiny_hf(model_type, cls, **kw)
    folder = tmp_path / "folder"
    original.save_pretrained(folder)
    side = kw["patch_size"] * 3
    ckpt = tmp_path / "resized.pt"
    r = run("import", f"hf:{folder}", "--image-size", side, "-o", ckpt)
    assert "3×3 patches" in r.output, r.output
    from vitscope.model.checkpoint import load_model
    wrapped, _ = load_model(ckpt)
    assert wrapped.input_shape == (3, side, side)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        theirs = original(pixel_values=x, **({} if model_type == "dinov2" else
                                             {"interpolate_pos_encoding": True}))
        want = getattr(theirs, "logits", None)
        want = theirs.pooler_output if want is None else want
        torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-4)


# -- --pretrained through the hub cache -----------------------------------------------------------

def hub_cache(root, repo_id, files: dict[str, bytes]):
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/REV/...}."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty hub cache, the hub offline (environment and huggingface_hub's constants, which
    it reads at import)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    for var, value in (("HF_HUB_CACHE", str(cache)), ("HF_HOME", str(tmp_path / "hf-home")),
                       ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def state_bytes(state) -> bytes:
    from safetensors.torch import save
    return save({k: v.contiguous() for k, v in state.items()})


def test_pretrained_timm_loads_from_the_hub_cache_offline(tmp_path, offline_cache):
    torch.manual_seed(1)
    model = timm.create_model("test_vit", pretrained=False).eval()   # 0.4M parameters, 160 px
    hub_cache(offline_cache, "timm/test_vit.r160_in1k",
              {"model.safetensors": state_bytes(model.state_dict())})
    ckpt = tmp_path / "pre.pt"
    r = run("import", "timm:test_vit.r160_in1k", "--pretrained", "-o", ckpt)
    assert "RANDOM" not in r.output and "1000 class names" in r.output
    from vitscope.model.checkpoint import load_checkpoint, load_model
    wrapped, _ = load_model(ckpt)
    tc = load_checkpoint(ckpt).train_config
    assert tc["pretrained"] == "timm/test_vit.r160_in1k" and tc["random_weights"] is False
    assert str(offline_cache) in tc["weights"]
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model(x), rtol=0, atol=1e-5)


def test_pretrained_hf_loads_a_snapshot_offline_with_the_folder_checks(tmp_path, offline_cache):
    model = tiny_hf("dinov2", "Dinov2Model", image_size=28, patch_size=7)
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    files = {p.name: p.read_bytes() for p in saved.iterdir()}
    hub_cache(offline_cache, "someorg/tiny-dinov2", files)
    ckpt = tmp_path / "pre.pt"
    r = run("import", "hf:someorg/tiny-dinov2", "--pretrained", "-o", ckpt)
    assert "a feature model" in r.output and "RANDOM" not in r.output
    from vitscope.model.checkpoint import load_model
    wrapped, _ = load_model(ckpt)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model(pixel_values=x).pooler_output, rtol=0,
                                   atol=1e-5)
    # a hub snapshot is checked like any folder: code it asks to run is refused
    config = json.loads(files["config.json"])
    config["auto_map"] = {"AutoModel": "evil.Model"}
    files["config.json"] = json.dumps(config).encode()
    hub_cache(offline_cache, "someorg/evil", files)
    bad = run("import", "hf:someorg/evil", "--pretrained", "-o", tmp_path / "e.pt", ok=False)
    assert "never runs a model folder's code" in one_sentence(bad)


@pytest.mark.parametrize("source", ["timm:test_vit.r160_in1k", "hf:someorg/not-cached"])
def test_no_network_and_no_cache_is_one_sentence(tmp_path, offline_cache, source):
    bad = run("import", source, "--pretrained", "-o", tmp_path / "x.pt", ok=False)
    text = one_sentence(bad)
    assert "not in the hub cache" in text and str(offline_cache) in text
    assert "--weights FILE" in text and not (tmp_path / "x.pt").exists()


def test_the_python_api_given_a_model_name_fetches_it_pretrained(tmp_path, offline_cache):
    import numpy as np

    import vitscope
    torch.manual_seed(2)
    model = timm.create_model("test_vit", pretrained=False).eval()
    hub_cache(offline_cache, "timm/test_vit.r160_in1k",
              {"model.safetensors": state_bytes(model.state_dict())})
    pixels = np.random.default_rng(0).integers(0, 256, (2, 160, 160, 3), dtype=np.uint8)
    ex = vitscope.explain("timm:test_vit.r160_in1k", pixels, methods=["rollout"])
    assert ex.maps["rollout"].shape == (2, 10, 10)
    assert np.isfinite(ex.maps["rollout"]).all()
    with pytest.raises(vitscope.errors.ConfigError, match="not in the hub cache"):
        vitscope.explain("hf:someorg/absent", pixels, methods=["rollout"])


def test_an_unreachable_hub_reads_the_cache_at_once(tmp_path, offline_cache, monkeypatch):
    """No HF_HUB_OFFLINE, but no network: vitscope asks once, then reads the cache only
    (huggingface_hub would retry each file for about a minute)."""
    from vitscope.model.adapters import hub
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    bad = run("import", "hf:someorg/not-cached", "--pretrained", "-o", tmp_path / "x.pt",
              ok=False)
    assert "the hub cannot be reached" in one_sentence(bad)
    torch.manual_seed(3)
    model = timm.create_model("test_vit", pretrained=False).eval()
    hub_cache(offline_cache, "timm/test_vit.r160_in1k",
              {"model.safetensors": state_bytes(model.state_dict())})
    run("import", "timm:test_vit.r160_in1k", "--pretrained", "-o", tmp_path / "pre.pt")


def test_num_classes_against_an_hf_folders_own_head_is_one_sentence(tmp_path):
    base = tiny_hf("vit", "ViTForImageClassification", image_size=32, patch_size=8,
                   num_labels=2)
    base.save_pretrained(tmp_path / "base")
    bad = run("import", f"hf:{tmp_path / 'base'}", "--num-classes", 5, "-o", tmp_path / "x.pt",
              ok=False)
    assert "with 5 classes" in one_sentence(bad) and not (tmp_path / "x.pt").exists()
