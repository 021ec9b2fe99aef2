"""Every built-in plugin reads the dump's token layout: the CLS index, the other prefix tokens
(distillation, registers) and a non-square patch grid, instead of assuming one CLS token and a
square grid. The dumps here come from a real (tiny, random) ViT with extra prefix tokens on a
2×3 grid, captured by the real capture code."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from vitscope.capture import DEFAULT_HOOKS, capture
from vitscope.data.base import ImageDataset
from vitscope.dump import Dump
from vitscope.model.hooks import name_hook_points
from vitscope.layout import TokenLayout
from vitscope.model.vit import ModelConfig, ViT

GRID = (2, 3)
PATCH = 4


class PrefixViT(ViT):
    """vitscope's ViT with distillation and register tokens after CLS, on a non-square input
    (8×12 px, a 2×3 grid of 4-px patches). Test-only: the adapters bring the real ones."""

    def __init__(self, dist: int = 1, registers: int = 2) -> None:
        super().__init__(ModelConfig(image_size=8, patch_size=PATCH, embed_dim=16, depth=2,
                                     num_heads=2, mlp_ratio=2.0, num_classes=3))
        self.extra = nn.Parameter(torch.randn(1, dist + registers, 16))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + dist + registers + 6, 16) * 0.5)
        self._prefix = [("cls", 1), ("dist", dist), ("register", registers)]
        name_hook_points(self)

    def forward_features(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1),
                       self.extra.expand(len(x), -1, -1), x], dim=1)
        x = self.embed.out(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    input_shape = (3, 8, 12)

    @property
    def token_layout(self):
        return TokenLayout.from_prefix(self._prefix, GRID, PATCH, (8, 12))


@pytest.fixture(scope="module")
def prefix_dump(tmp_path_factory):
    torch.manual_seed(0)
    model = PrefixViT().eval()
    rng = np.random.default_rng(0)
    ds = ImageDataset(images=rng.integers(0, 256, (10, 8, 12, 3), dtype=np.uint8),
                      labels=np.arange(10) % 3, classes=["a", "b", "c"], masks=None,
                      spec="test:prefix", split="val", paths=None)
    path = tmp_path_factory.mktemp("prefix") / "prefix.h5"
    from vitscope.testing import BUILTIN_GRADS, BUILTIN_MECH, _builtin_maps   # what the built-ins read
    return capture(model, ds, path, [*DEFAULT_HOOKS, *BUILTIN_MECH, *BUILTIN_GRADS,
                                     *_builtin_maps()],
                   classes=ds.classes,
                   batch_size=5,
                   device="cpu", dtype="float32")


def test_dump_records_the_layout(prefix_dump):
    with Dump.open(prefix_dump) as d:
        assert d.layout.num_prefix_tokens == 4 and d.layout.grid == GRID
        assert d.layout.describe() == "1 CLS + 1 distillation + 2 register tokens, 2×3 patches of 4×4 px"
        assert d["blocks.0.attn.weights"].shape == (10, 2, 10, 10)


def test_every_builtin_plugin_renders_on_prefix_tokens_and_a_wide_grid(prefix_dump, tmp_path):
    from vitscope.analyze.run import render_plugins
    from vitscope.analyze.registry import discover

    registry = discover(autoload=False)
    entries = [e for e in registry.select([], all_=True) if e.builtin]
    assert len(entries) >= 5
    results = render_plugins(prefix_dump, entries, tmp_path / "run",
                             {"cls-embedding": {"umap": False}})   # UMAP: its own test
    bad = {r.name: r.error for r in results if not r.ok}
    assert not bad, bad
    with Dump.open(prefix_dump) as d:
        attn = np.stack([d[f"blocks.{i}.attn.weights"][:] for i in range(2)], axis=1)  # N×L×H×T×T
    # CLS-based maps are on the 2×3 grid, and say how much of the CLS row the other prefix
    # tokens (1 dist + 2 registers) hold: checked against the attention itself.
    z = np.load(tmp_path / "run" / "cls-heatmap" / "results.npz")
    assert z["cls_to_patches"].shape[-2:] == GRID
    np.testing.assert_allclose(z["cls_to_patches"].reshape(*z["cls_to_patches"].shape[:3], -1),
                               attn[:, :, :, 0, 4:], atol=1e-3)
    np.testing.assert_allclose(z["cls_attention_to_other_prefix"], attn[:, :, :, 0, 1:4].sum(-1),
                               atol=1e-5)
    summary = json.loads((tmp_path / "run" / "token-attention" / "summary.json").read_text())
    k = summary["images"]
    assert summary["other_prefix_attention_share"] == pytest.approx(
        attn[:k, :, :, 0, 1:4].sum(-1).mean(), abs=1e-4)
    roll = np.load(tmp_path / "run" / "rollout" / "results.npz")
    assert roll["rollout"].shape == (10, *GRID)
    # the CLS row of the rollout sums to 1 over all tokens: patches drawn + prefix left out + CLS
    assert np.all(roll["rollout_to_other_prefix"] > 0)
    assert np.all(roll["rollout"].reshape(10, -1).sum(-1) + roll["rollout_to_other_prefix"] < 1)
    norms = np.load(tmp_path / "run" / "norm-activations" / "results.npz")
    assert norms["other_prefix_norm_mean"].shape == norms["cls_norm_mean"].shape


def test_cls_token_is_read_where_the_layout_puts_it():
    from vitscope.methods import cls_maps
    from vitscope.methods import attention_rollout, discard_lowest

    rng = np.random.default_rng(1)
    attn = rng.random((2, 3, 7, 7))
    attn /= attn.sum(-1, keepdims=True)
    c2p, p2c = cls_maps(attn, prefix=3, cls=1)
    np.testing.assert_array_equal(c2p, attn[:, :, 1, 3:])
    np.testing.assert_array_equal(p2c, attn[:, :, 3:, 1])
    a = attn.mean(1)
    dropped = discard_lowest(a, 0.9, cls=1)
    np.testing.assert_array_equal(dropped[:, :, 1], a[:, :, 1])   # the CLS column survives
    assert (dropped[:, :, [0, 2, 3, 4, 5, 6]] == 0).mean() > 0.8
    final, _, row = attention_rollout([attn], num_prefix_tokens=3, cls=1, full_row=True)
    np.testing.assert_allclose(final, row[:, 3:])
    np.testing.assert_allclose(row.sum(-1), 1.0)


def test_a_layout_without_cls_is_one_clear_error():
    from vitscope.errors import PluginError
    from vitscope.plugin.tokens import cls_index, prefix_note

    layout = TokenLayout.from_prefix([("register", 2)], (2, 2), 4, 8)
    with pytest.raises(PluginError, match="has none"):
        cls_index(layout, "rollout")
    assert prefix_note(TokenLayout.from_prefix([("cls", 1)], (2, 2), 4, 8)) == ""
    note = prefix_note(TokenLayout.from_prefix([("cls", 1), ("register", 4)], (2, 2), 4, 8), 0.25)
    assert note == "4 register tokens left out of the map (they hold 25.0% of the row)"
