"""Hooks and the token layout on any hooked model, not only vitscope's ViT: a model with a CLS
and a register token before a 2×3 grid of patches."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vitscope.errors import HookError
from vitscope.layout import TokenLayout
from vitscope.model.hooks import (HookPoint, attach, is_hooked, list_hook_points, name_hook_points,
                                  run_with_cache)


class TwoTokenNet(nn.Module):
    """Not a vitscope ViT: a CLS and a register token before a 2×3 grid of patches."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, 2, 8))
        self.embed = nn.Module()
        self.embed.out = HookPoint()
        self.mix = nn.Linear(8, 8)
        self.cls = HookPoint()
        self.head = nn.Linear(8, 5)
        name_hook_points(self)

    input_shape = (3, 8, 12)
    token_layout = TokenLayout.from_prefix([("cls", 1), ("register", 1)], (2, 3), 4, (8, 12))

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = self.embed.out(torch.cat([self.prefix.expand(len(x), -1, -1), t], 1))
        return self.head(self.cls(self.mix(t)[:, 0]))


def test_hooks_work_on_any_hooked_model():
    net = TwoTokenNet().eval()
    assert is_hooked(net) and not is_hooked(nn.Linear(2, 2))
    assert list_hook_points(net) == [("embed.out", ("B", 8, 8)), ("cls", ("B", 8))]
    x = torch.randn(2, 3, 8, 12)
    logits, cache = run_with_cache(net, x, names=["embed.*"])
    assert list(cache) == ["embed.out"] and cache["embed.out"].shape == (2, 8, 8)
    with attach(net, {"cls": lambda t, name: torch.zeros_like(t)}):
        assert torch.allclose(net(x), net.head.bias.expand(2, -1))
    assert torch.equal(net(x), logits)  # removed on exit
    with pytest.raises(HookError, match="takes 8×12 images"):
        list_hook_points(net, image_size=8)


def test_token_layout_kinds_and_version1_dicts():
    reg = TokenLayout.from_prefix([("cls", 1), ("register", 4)], (16, 16), 14, 224)
    assert reg.num_prefix_tokens == 5 and reg.num_tokens == 261 and reg.cls_index == 0
    assert reg.count("register") == 4 and reg.patches == slice(5, None)
    assert reg.describe() == "1 CLS + 4 register tokens, 16×16 patches of 14×14 px"
    assert TokenLayout.from_dict(reg.to_dict()) == reg
    deit = TokenLayout.from_prefix([("cls", 1), ("dist", 1)], (14, 14), 16, 224)
    assert deit.index_of("dist") == 1 and deit.num_patches == 196
    # what version-1 dumps stored: ints, no kinds
    old = TokenLayout.from_dict({"num_prefix_tokens": 1, "grid": [4, 4], "patch_size": 8,
                                 "image_size": 32})
    assert old == TokenLayout(1, (4, 4), 8, 32) and old.prefix == (("cls", 1),)
    assert old.image_size == (32, 32) and old.patch_size == (8, 8)
    wide = TokenLayout.from_prefix([("cls", 1)], (2, 4), (16, 16), (32, 64))
    assert not wide.square and wide.num_patches == 8
    with pytest.raises(ValueError, match="does not add up"):
        TokenLayout(2, (2, 2), 4, 8, (("cls", 1),))
    with pytest.raises(ValueError, match="positive integers"):
        TokenLayout(1, (2, 2), 4.5, 8)
