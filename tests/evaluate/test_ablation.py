"""`vitscope ablate` and vitscope.evaluate.ablation: each head and MLP ablated against a direct
computation, intervals, the CLI's files and named heads, and the model left as it was (also
when a run fails midway)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vitscope.cli import main
from vitscope.data import load_dataset, to_model_input
from vitscope.errors import ConfigError
from vitscope.evaluate.ablation import _resumable, ablate
from vitscope.model.checkpoint import load_model

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_ablation_matches_a_direct_computation(shapes_ckpt):
    model, _ = load_model(shapes_ckpt)
    model.train()                                       # left in training mode: restored after
    ds = load_dataset("shapes:val=48", "val", 16)
    images, labels = ds.images[:20], ds.labels[:20]
    before = snapshot(model)
    result = ablate(model, images, labels, MEAN, STD, batch_size=7)
    assert model.training and no_hooks(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(result.effects) == {"zero", "mean"} and result.grid("zero").shape == (2, 5)
    # head 2 of block 1 zeroed by hand: its slice of the projection's input set to 0
    model.eval()
    x = to_model_input(torch.from_numpy(images), MEAN, STD)
    attn = model.blocks[1].attn
    dh = attn.head_dim
    with torch.no_grad():
        clean = model(x).softmax(1)
        w = attn.proj.weight.data.clone()
        attn.proj.weight.data[:, 2 * dh:3 * dh] = 0
        ablated = model(x).softmax(1)
        attn.proj.weight.data.copy_(w)
    idx = torch.from_numpy(labels)[:, None]
    expected = (ablated.gather(1, idx) - clean.gather(1, idx)).mean().item()
    dp, da = result.effects["zero"]["L1H2"]
    assert dp.mean == pytest.approx(expected, abs=1e-5)
    assert dp.lo <= dp.mean <= dp.hi and dp.n == 20
    # the MLP zeroed: its output replaced by 0
    with torch.no_grad():
        fc2 = model.blocks[0].mlp.fc2
        saved = (fc2.weight.data.clone(), fc2.bias.data.clone())
        fc2.weight.data.zero_(), fc2.bias.data.zero_()
        no_mlp = model(x).softmax(1)
        fc2.weight.data.copy_(saved[0]), fc2.bias.data.copy_(saved[1])
    want = (no_mlp.gather(1, idx) - clean.gather(1, idx)).mean().item()
    assert result.effects["zero"]["MLP0"][0].mean == pytest.approx(want, abs=1e-5)
    top = result.top(3)
    assert len(top) == 3 and top[0][1].mean <= top[1][1].mean <= top[2][1].mean


def test_the_model_is_left_unchanged_when_a_run_fails(shapes_ckpt):
    model, _ = load_model(shapes_ckpt)
    before = snapshot(model)
    ds = load_dataset("shapes:val=48", "val", 16)

    def interrupt(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ablate(model, ds.images[:8], ds.labels[:8], MEAN, STD, batch_size=4, progress=interrupt)
    assert no_hooks(model) and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="mode"):
        ablate(model, ds.images[:4], ds.labels[:4], MEAN, STD, modes=("resample",))


def test_ablate_command_writes_heatmaps_and_names_heads(shapes_ckpt, tmp_path):
    out = tmp_path / "abl"
    result = CliRunner().invoke(main, ["ablate", str(shapes_ckpt), "--limit", "12", "-o", str(out),
                                       "--mode", "zero", "--top", "2"])
    assert result.exit_code == 0, result.output
    assert "most important heads (zero-ablation" in result.output
    data = json.loads((out / "ablation.json").read_text())
    assert len(data["top_heads"]["zero"]) == 2 and data["images"] == 12
    assert data["effects"]["zero"]["L0H0"]["delta_target_prob"]["ci95"][0] <= \
        data["effects"]["zero"]["L0H0"]["delta_target_prob"]["mean"]
    with Image.open(out / "ablation.png") as im:
        assert im.size[0] > 300
    assert "Plotly.newPlot" in (out / "ablation.html").read_text()


def test_ablate_on_unlabelled_files_uses_the_prediction(shapes_ckpt, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = CliRunner().invoke(main, ["ablate", str(shapes_ckpt), "--data", f"folder:{folder}",
                                       "--mode", "mean", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "agreement with the clean prediction" in result.output
    bad = CliRunner().invoke(main, ["ablate", str(shapes_ckpt), "--data", f"folder:{folder}",
                                    "--target", "label", "-o", str(tmp_path / "o2")])
    assert bad.exit_code != 0 and "has no labels" in bad.output and "Traceback" not in bad.output


def test_resuming_at_the_ablated_block_gives_the_whole_models_numbers(shapes_ckpt):
    model, _ = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=48", "val", 16)
    assert _resumable(model)
    fast = ablate(model, ds.images[:10], ds.labels[:10], MEAN, STD, batch_size=6)
    whole = ablate(model, ds.images[:10], ds.labels[:10], MEAN, STD, batch_size=6,
                   resume=False)
    for mode in ("zero", "mean"):
        np.testing.assert_allclose(fast.grid(mode), whole.grid(mode), atol=1e-6)
        np.testing.assert_allclose(fast.grid(mode, 1), whole.grid(mode, 1), atol=1e-9)
