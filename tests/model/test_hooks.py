"""Hooks API: attach/remove, run_with_cache shapes, errors, listing."""
from __future__ import annotations

import pytest
import torch

from vitscope.errors import HookError
from vitscope.model.hooks import attach, hook_points, list_hook_points, resolve, run_with_cache

BLOCK_HOOKS = ["norm1.in", "norm1.out", "attn.q", "attn.k", "attn.v", "attn.weights", "attn.head_out",
               "attn.out",
               "norm2.in", "norm2.out", "mlp.hidden", "mlp.out", "out"]


def expected_names(depth):
    return (["patch_embed.out", "embed.out"]
            + [f"blocks.{i}.{h}" for i in range(depth) for h in BLOCK_HOOKS]
            + ["norm.in", "norm.out", "cls"])


def test_hook_names_are_pinned(tiny_vit):
    assert list(hook_points(tiny_vit)) == expected_names(2)
    assert all(not list(m.parameters()) for m in hook_points(tiny_vit).values())


def test_hooks_never_change_the_state_dict(tiny_vit):
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    with attach(tiny_vit, {"*": lambda t, n: None}):
        assert list(tiny_vit.state_dict()) == list(before)
        tiny_vit(torch.randn(1, 3, 16, 16))
    after = tiny_vit.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def no_hooks_left(model):
    return all(not m._forward_hooks for m in model.modules())


def test_hooks_are_removed_on_exit_and_on_error(tiny_vit):
    seen = []
    with attach(tiny_vit, {"blocks.*.out": lambda t, n: seen.append(n)}) as names:
        assert names == ["blocks.0.out", "blocks.1.out"]
        assert not no_hooks_left(tiny_vit)
        tiny_vit(torch.randn(1, 3, 16, 16))
    assert seen == ["blocks.0.out", "blocks.1.out"]
    assert no_hooks_left(tiny_vit)

    def boom(t, n):
        raise RuntimeError("inside forward")

    with pytest.raises(RuntimeError, match="inside forward"):
        with attach(tiny_vit, {"cls": boom, "blocks.0.attn.weights": lambda t, n: None}):
            tiny_vit(torch.randn(1, 3, 16, 16))
    assert no_hooks_left(tiny_vit)
    # Back on the fused path once the weights hook is gone.
    assert not tiny_vit.blocks[0].attn.weights.active


def test_bad_pattern_attaches_nothing(tiny_vit):
    with pytest.raises(HookError):
        with attach(tiny_vit, {"cls": lambda t, n: None, "blocks.9.out": lambda t, n: None}):
            pass
    assert no_hooks_left(tiny_vit)


def test_run_with_cache_shapes_and_attention_rows(tiny_vit):
    B, T, D, H = 3, 17, 32, 4
    x = torch.randn(B, 3, 16, 16)
    logits, cache = run_with_cache(tiny_vit, x, names=["*"])
    assert logits.shape == (B, 5)
    assert list(cache) == expected_names(2)
    assert cache["patch_embed.out"].shape == (B, T - 1, D)
    assert cache["embed.out"].shape == (B, T, D)
    assert cache["blocks.1.attn.weights"].shape == (B, H, T, T)
    assert cache["blocks.1.attn.v"].shape == (B, H, T, D // H)
    assert cache["cls"].shape == (B, D)
    for name in ("blocks.0.norm1.in", "blocks.0.attn.out", "blocks.1.out", "norm.out"):
        assert cache[name].shape == (B, T, D)
    for i in range(2):
        rows = cache[f"blocks.{i}.attn.weights"].sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows))
    torch.testing.assert_close(cache["cls"], cache["norm.out"][:, 0])
    torch.testing.assert_close(logits, tiny_vit(x), atol=1e-5, rtol=0)


def test_run_with_cache_selects_only_what_is_asked(tiny_vit):
    _, cache = tiny_vit.run_with_cache(torch.randn(2, 3, 16, 16), names=["cls", "blocks.1.attn.*"])
    assert list(cache) == ["blocks.1.attn.q", "blocks.1.attn.k", "blocks.1.attn.v",
                           "blocks.1.attn.weights", "blocks.1.attn.head_out", "blocks.1.attn.out",
                           "cls"]


def test_hook_can_edit_activations(tiny_vit):
    x = torch.randn(2, 3, 16, 16)
    with attach(tiny_vit, {"cls": lambda t, n: torch.zeros_like(t)}):
        out = tiny_vit(x)
    torch.testing.assert_close(out, tiny_vit.head.bias.expand(2, -1))


def test_unknown_name_error_names_request_and_what_exists(tiny_vit):
    with pytest.raises(HookError) as err:
        resolve(tiny_vit, ["blocks.7.attn.weights"])
    msg = str(err.value)
    assert "'blocks.7.attn.weights'" in msg
    assert "blocks.0–1.attn.weights" in msg and "patch_embed.out" in msg
    with pytest.raises(HookError, match="Did you mean 'cls'"):
        resolve(tiny_vit, "clss")


def test_list_hook_points_gives_shapes(tiny_vit):
    points = dict(list_hook_points(tiny_vit))
    assert points["blocks.0.attn.weights"] == ("B", 4, 17, 17)
    assert points["patch_embed.out"] == ("B", 16, 32)
    assert points["cls"] == ("B", 32)
    assert no_hooks_left(tiny_vit)


def test_glob_star_stays_within_one_segment(tiny_vit):
    names = list(hook_points(tiny_vit))
    from vitscope.model.hooks import match_names
    assert match_names("blocks.*.out", names) == ["blocks.0.out", "blocks.1.out"]
    assert "blocks.0.norm1.out" in match_names("blocks.**.out", names)
    assert match_names("blocks.[1].attn.weights", names) == ["blocks.1.attn.weights"]
    assert match_names("*", names) == names
    assert match_names("norm?.out", names) == []


def test_list_hook_points_refuses_another_image_size(tiny_vit):
    assert dict(list_hook_points(tiny_vit, image_size=16))["cls"] == ("B", 32)
    with pytest.raises(HookError, match=r"takes 16×16 images .* not 32×32; leave image_size out"):
        list_hook_points(tiny_vit, image_size=32)


@pytest.mark.parametrize("pattern", ["blocks.[].out", "blocks.[!].out", "blocks.[z-a].out"])
def test_a_malformed_bracket_set_is_a_hook_error(tiny_vit, pattern):
    with pytest.raises(HookError, match=r"is not a valid hook pattern .* such as \[0-3\]"):
        resolve(tiny_vit, pattern)


def test_bracket_sets_and_an_empty_name_list(tiny_vit):
    assert resolve(tiny_vit, "blocks.[!0].out") == ["blocks.1.out"]
    logits, cache = run_with_cache(tiny_vit, torch.zeros(1, 3, 16, 16), names=[])
    assert cache == {} and logits.shape == (1, 5)


def test_summaries_keep_gaps_between_blocks():
    from vitscope.model.hooks import summarize_names
    names = [f"blocks.{i}.out" for i in (0, 1, 2, 5, 7, 8)] + ["cls"]
    assert summarize_names(names) == "blocks.0–2,5,7–8.out, cls"


def test_overlapping_patterns_run_a_hook_once_and_bad_returns_are_named(tiny_vit):
    calls = []

    def halve(t, name):
        calls.append(name)
        return t * 0.5
    x = torch.randn(2, 3, 16, 16)
    with attach(tiny_vit, {"blocks.0.out": halve, "blocks.*.out": halve}) as names:
        once = tiny_vit(x)
    assert names == ["blocks.0.out", "blocks.1.out"] and sorted(calls) == names
    with attach(tiny_vit, {"blocks.*.out": halve}):
        torch.testing.assert_close(tiny_vit(x), once)
    with pytest.raises(HookError, match="The hook on 'cls' returned a value of type int; a hook returns None"):
        with attach(tiny_vit, {"cls": lambda t, n: 5}):
            tiny_vit(x)
    with pytest.raises(HookError, match=r"returned a tensor of shape \(2,\) for an activation"):
        with attach(tiny_vit, {"cls": lambda t, n: t[:, 0]}):
            tiny_vit(x)


def test_the_model_names_a_wrong_channel_count(tiny_vit):
    with pytest.raises(ValueError, match=r"got \(1, 1, 16, 16\).*give it 3 channels"):
        tiny_vit(torch.zeros(1, 1, 16, 16))
