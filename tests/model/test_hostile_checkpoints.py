"""Fault suite, checkpoints: hostile and malformed checkpoints built here, each read by every
command that loads one. One validated reading (vitscope.model.checkpoint.load_checkpoint with the
config dataclasses' strict types and size bounds) turns each into one sentence before anything
is allocated; nothing is written."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from faultkit import cli, one_error_line, snapshot
from vitscope.model.checkpoint import load_checkpoint

NAN = float("nan")


def model_config(key, value):
    return lambda raw: raw["model_config"].__setitem__(key, value)


def train_config(key, value):
    return lambda raw: raw["train_config"].__setitem__(key, value)


def nan_weight(raw):
    raw["state_dict"]["blocks.1.attn.qkv.weight"][0, 0] = NAN


def inf_weight(raw):
    raw["state_dict"]["head.bias"][2] = float("inf")


def nan_std(raw):
    raw["train_config"]["normalize"]["std"][0] = NAN


def zero_std(raw):
    raw["train_config"]["normalize"]["std"][1] = 0.0


def short_classes(raw):
    raw["classes"] = raw["classes"][:3]


# (id, edit, words the one error line must hold). The first 14 are the tracebacks.
CASES = [
    ("depth-bool", model_config("depth", True), "model.depth must be an integer, got True"),
    ("depth-float", model_config("depth", 2.0), "model.depth must be an integer, got 2.0"),
    ("image-size-float", model_config("image_size", 16.0), "model.image_size must be an integer"),
    ("embed-dim-huge", model_config("embed_dim", 2 ** 22), "over vitscope's limit of 2,000,000,000"),
    ("image-size-huge", model_config("image_size", 2 ** 20), "1,048,576 pixels, over vitscope's limit"),
    ("patches-huge", model_config("image_size", 4096), "the patch grid has 1,048,576 patches"),
    ("stem-huge", lambda raw: raw["model_config"].update(stem="conv", stem_channels=[2 ** 30]),
     "a model.stem_channels width is 1,073,741,824 channels"),
    ("stem-not-ints", model_config("stem_channels", ["x"]), "model.stem_channels must be a list of integers"),
    ("classes-short", short_classes, "lists 3 class names but its model has 10 outputs"),
    ("tc-image-size-str", train_config("image_size", "big"), "train_config['image_size'] ('big'"),
    ("tc-subset-str", train_config("val_subset", "x"), "train_config['val_subset'] ('x'"),
    ("tc-seed-str", train_config("seed", "x"), "train_config['seed'] ('x'"),
    ("tc-seed-negative", train_config("seed", -1), "train_config['seed'] (-1"),
    ("tc-val-split", train_config("val_split", 1.5), "train_config['val_split'] (1.5"),
    # numbers that silently turn every output into NaN
    ("nan-weight", nan_weight, "non-finite weights (NaN or infinite values in blocks.1.attn.qkv.weight)"),
    ("inf-weight", inf_weight, "non-finite weights (NaN or infinite values in head.bias)"),
    ("nan-std", nan_std, "train_config['normalize'] (std [nan, 0.25, 0.3] is not finite)"),
    ("zero-std", zero_std, "(std [0.2, 0.0, 0.3] is not positive)"),
    ("qkv-bias-int", model_config("qkv_bias", 1), "model.qkv_bias must be true or false, got 1"),
    ("mlp-ratio-nan", model_config("mlp_ratio", NAN), "model.mlp_ratio must be a finite number"),
]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


def hostile(tmp_path, good, edit, name="hostile"):
    raw = torch.load(good, weights_only=True)
    edit(raw)
    path = tmp_path / name / "best.pt"
    path.parent.mkdir()
    torch.save(raw, path)
    return path


COMMANDS = {
    "info": lambda ckpt, image, out: ["info", ckpt],
    "hooks": lambda ckpt, image, out: ["hooks", ckpt],
    "predict": lambda ckpt, image, out: ["predict", ckpt, image],
    "eval": lambda ckpt, image, out: ["eval", ckpt, "-o", out / "eval"],
    "dump": lambda ckpt, image, out: ["dump", ckpt, "-o", out / "d.h5", "-q"],
    "analyze": lambda ckpt, image, out: ["analyze", ckpt, "--plugin", "rollout", "-o", out / "fig"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case, edit, words", CASES, ids=[c[0] for c in CASES])
def test_every_command_refuses_it_in_one_sentence_and_writes_nothing(
        tmp_path, shapes_ckpt, image, case, edit, words, command):
    path = hostile(tmp_path, shapes_ckpt, edit)
    before = snapshot(tmp_path)
    line = one_error_line(cli(*COMMANDS[command](path, image, tmp_path / "out")), words, str(path))
    assert line.count(". ") == 0, line  # one sentence
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


def test_predict_resizes_files_of_any_size_to_the_model_even_when_train_config_differs(
        tmp_path, shapes_ckpt, image):
    """What `predict` promises: image files of any size. The model's own input size decides,
    not a train_config['image_size'] that disagrees with it."""
    path = hostile(tmp_path, shapes_ckpt, train_config("image_size", 32))
    big = tmp_path / "big.jpg"
    Image.new("RGB", (333, 97), (20, 90, 200)).save(big)
    result = cli("predict", path, image, big, "--json")
    assert result.exit_code == 0, result.output
    assert result.output.count('"probability"') == 2 * 5


def test_a_valid_checkpoint_still_loads_and_the_bounds_are_not_tight(tmp_path, shapes_ckpt):
    """The limits refuse absurd sizes, not big real models: ViT-L/16 at 224 px passes."""
    from vitscope.model.vit import ModelConfig, preset
    assert load_checkpoint(shapes_ckpt).model_config.depth == 2
    large = ModelConfig(image_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                        num_classes=1000)
    assert 300e6 < large.num_parameters < 310e6
    assert preset("vit-base", image_size=1024, patch_size=4).num_patches == 65_536
