"""TrainConfig: recipes, --set parsing and validation, the optimiser pieces (no training)."""
from __future__ import annotations

import re

import pytest
import torch

from vitscope.model.cnn import CNNConfig, SmallCNN
from vitscope.errors import ConfigError
from vitscope.model.vit import ModelConfig, ViT
from vitscope.train.config import (TrainConfig, find_recipe, make_config, parse_sets,
                                   read_recipe, shipped_recipes)
from vitscope.train.optim import param_groups
from vitscope.train.schedule import WarmupCosine


def test_every_shipped_recipe_builds_a_valid_config():
    names = shipped_recipes()
    assert {"shapes-quick", "cifar10-fast", "cifar10-best", "cifar100", "seed-cifar10",
            "seed-cifar100"} <= set(names)
    for name in names:
        cfg = make_config(read_recipe(name))
        assert cfg.name == name and cfg.epochs >= 1
        assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()  # checkpoint round trip


def test_recipe_by_bare_name_path_and_typo(tmp_path):
    assert find_recipe("shapes-quick").name == "shapes-quick.toml"
    assert find_recipe("shapes-quick.toml").name == "shapes-quick.toml"
    own = tmp_path / "mine.toml"
    own.write_text('preset = "vit-lite"\nepochs = 2\n[model]\ndepth = 2\n')
    cfg = make_config(read_recipe(str(own)))
    assert (cfg.name, cfg.preset, cfg.epochs, cfg.model.depth, cfg.model.embed_dim) == \
        ("mine", "vit-lite", 2, 2, 256)
    with pytest.raises(ConfigError, match="Did you mean 'shapes-quick'"):
        find_recipe("shapes-quik")
    (tmp_path / "bad.toml").write_text("epochs = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_recipe(str(tmp_path / "bad.toml"))


@pytest.mark.parametrize("toml, message", [
    ('epoch = 2\n', r"Unknown setting 'epoch' in recipe '{path}' \(fix or remove it there\)\. "
                    r"Did you mean 'epochs'\? Known: name, .*, \[model\] table\."),
    ('preset = "vit-lite"\n[model]\ndept = 2\n',
     r"Unknown \[model\] field 'dept' in recipe '{path}' \(for preset 'vit-lite'; fix or remove "
     r"it there\)\. Did you mean 'depth'\? Known: image_size, .*depth"),
    ('preset = "cnn"\n"model.chanels" = [8]\n', r"'chanels' in recipe '{path}' .*'channels'"),
])
def test_unknown_recipe_keys_name_the_recipe_file(tmp_path, toml, message):
    recipe = tmp_path / "mine.toml"
    recipe.write_text(toml)
    with pytest.raises(ConfigError, match=message.format(path=re.escape(str(recipe)))):
        make_config(read_recipe(str(recipe)))


def test_set_values_are_typed_and_dotted_keys_reach_the_model():
    cfg = make_config(read_recipe("shapes-quick"), overrides=parse_sets([
        "epochs=3", "lr=5e-4", "ema=yes", "val_split=0.1", "log=tensorboard,wandb",
        "model.depth=2", "model.stem=conv", "model.stem_channels=[8, 16]", "train_subset=none"]))
    assert (cfg.epochs, cfg.lr, cfg.ema, cfg.val_split, cfg.log) == \
        (3, 5e-4, True, 0.1, ["tensorboard", "wandb"])
    assert isinstance(cfg.model, ModelConfig)
    assert (cfg.model.depth, cfg.model.stem, cfg.model.stem_channels) == (2, "conv", [8, 16])
    assert cfg.train_subset is None
    assert cfg.model.embed_dim == read_recipe("shapes-quick")["model"]["embed_dim"]  # recipe kept


@pytest.mark.parametrize("item, message", [
    ("epoch=3", r"Unknown setting 'epoch'\. Did you mean 'epochs'"),
    ("model.dept=3", r"Did you mean 'model.depth'"),
    ("lr=fast", "lr must be a number, got 'fast'"),
    ("epochs=2.5", "epochs must be an integer"),
    ("ema=maybe", "ema must be true or false"),
    ("augment=autoaug", "augment must be one of none, trivial, randaugment"),
    ("device=tpu", "device must be one of auto, cpu, cuda, mps"),
    ("log=mlflow", "log entries must be among tensorboard, wandb"),
    ("model.num_heads=5", r"model.embed_dim \(64\) must be divisible by model.num_heads \(5\)"),
    ("preset=vit-tiyn", "Did you mean 'vit-tiny'"),
    ("label_smoothing=2", r"label_smoothing must be in \[0, 1\]"),
    ("name=a/b", "name must be a plain folder name"),
    ("epochs", "--set expects key=value"),
    ("seed=-1", "seed must be an integer >= 0"),
    ("warmup_epochs=inf", "warmup_epochs must be a finite number, got inf"),
    ("lr=nan", "lr must be a finite number, got nan"),
    ("min_lr=inf", "min_lr must be a finite number"),
    ("weight_decay=inf", "weight_decay must be a finite number"),
    ("mixup_alpha=inf", "mixup_alpha must be a finite number"),
    ("betas=[0.9, nan]", "betas must be a finite number"),
    ("model.in_channels=1", "model.in_channels must be 3: training data are always loaded as RGB"),
    ("model.stem_channels=[0]", r"model.stem_channels must list positive widths .* got \[0\]"),
    ("model.norm_eps=0", "model.norm_eps must be a positive number, got 0.0"),
    ("model.norm_eps=inf", "model.norm_eps must be a finite number, got inf"),
    ("model.mlp_ratio=0.001", r"gives an MLP width of 0; it must be at least 1"),
    ("model.mlp_ratio=inf", "model.mlp_ratio must be a finite number, got inf"),
])
def test_bad_settings_name_the_field_and_the_allowed_values(item, message):
    with pytest.raises(ConfigError, match=message):
        make_config(read_recipe("shapes-quick"), overrides=parse_sets([item]))


def test_model_flag_replaces_the_recipe_model_and_cnn_has_its_own_fields():
    cfg = make_config(read_recipe("shapes-quick"), preset="cnn",
                      overrides=parse_sets(["model.channels=[8,16]"]))
    assert cfg.arch == "cnn" and isinstance(cfg.model, CNNConfig) and cfg.model.channels == [8, 16]
    with pytest.raises(ConfigError, match="model.depth"):
        make_config(preset="cnn", overrides=parse_sets(["model.depth=2"]))
    cfg = make_config(read_recipe("shapes-quick"), preset="seed-cifar10")
    assert (cfg.model.embed_dim, cfg.model.depth) == (128, 6)  # the recipe's [model] is dropped
    assert SmallCNN(CNNConfig(channels=[8, 16], num_classes=3))(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_weight_decay_skips_norms_biases_cls_token_and_pos_embed():
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                            stem="conv", stem_channels=[8]))
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "blocks.0.norm1.weight",
            "blocks.0.attn.qkv.bias", "patch_embed.stem.layers.1.weight"} <= no_decay_names
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay_names == {n for n, p in model.named_parameters() if p.ndim > 1} - {"cls_token", "pos_embed"}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_warmup_then_cosine_per_step():
    s = WarmupCosine(1.0, total_steps=100, warmup_steps=10, min_lr=0.01)
    lrs = [s(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))             # rising warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))              # then decaying
    assert s(55) == pytest.approx(0.01 + 0.99 * 0.5)                    # halfway down the cosine
    assert s(100) == pytest.approx(0.01)
