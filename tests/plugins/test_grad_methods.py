"""grad-rollout, attn-grad and gradcam against direct implementations of their formulas and
against the authors' own computations, on random tensors and on a real tiny ViT."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitscope.capture import capture
from vitscope.data import load_dataset, to_model_input
from vitscope.dump import Dump
from vitscope.model.hooks import attach
from vitscope.model.vit import ModelConfig, ViT
from vitscope.methods import attention_gradient, grad_rollout, gradcam
from vitscope.plugins.grad_rollout import AttnGrad, GradRollout
from vitscope.plugins.gradcam import GradCam
from vitscope.testing import render_options


def random_attention(rng, n, heads, tokens):
    logits = rng.normal(scale=2.0, size=(n, heads, tokens, tokens))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def direct_grad_rollout(layers, grads, cls, prefix):
    """The formula of the issue, one image, layer, head and entry at a time: R = I; per layer
    R <- R + Ā·R with Ā = mean over heads of max(∇A ⊙ A, 0); the CLS row over the patches."""
    n, heads, t, _ = layers[0].shape
    out = []
    for b in range(n):
        r = np.eye(t)
        for attn, grad in zip(layers, grads):
            a = np.zeros((t, t))
            for h in range(heads):
                for i in range(t):
                    for j in range(t):
                        a[i, j] += max(grad[b, h, i, j] * attn[b, h, i, j], 0.0) / heads
            r = r + a @ r
        out.append(r[cls, prefix:])
    return np.array(out)


def chefer_relevance(attns, grads):
    """Transformer-MM-Explainability, Transformer_MM_explainability_ViT.ipynb, `avg_heads`
    (rule 5), `apply_self_attention_rules` (rule 6) and the loop of `generate_relevance`,
    re-implemented for ONE image (their reshape(-1, T, T) merges batch and heads) on the
    1×H×T×T attention maps and gradients of each block, first block first. Returns R[0, 1:]."""
    def avg_heads(cam, grad):
        cam = cam.reshape(-1, cam.shape[-2], cam.shape[-1])
        grad = grad.reshape(-1, grad.shape[-2], grad.shape[-1])
        cam = grad * cam
        return cam.clamp(min=0).mean(dim=0)

    def apply_self_attention_rules(r_ss, cam_ss):
        return torch.matmul(cam_ss, r_ss)

    num_tokens = attns[0].shape[-1]
    r = torch.eye(num_tokens, num_tokens)
    for cam, grad in zip(attns, grads):
        cam = avg_heads(cam, grad)
        r += apply_self_attention_rules(r, cam)
    return r[0, 1:]


def test_grad_rollout_matches_the_formula_with_registers():
    rng = np.random.default_rng(0)
    n, heads, t = 3, 2, 9                    # CLS + 2 registers + 6 patches
    layers = [random_attention(rng, n, heads, t) for _ in range(3)]
    grads = [rng.normal(size=(n, heads, t, t)) for _ in range(3)]
    final, per_layer = grad_rollout(layers, grads, cls_index=0, num_prefix_tokens=3)
    np.testing.assert_allclose(final, direct_grad_rollout(layers, grads, 0, 3), rtol=1e-5)
    assert final.shape == (3, 6) and per_layer.shape == (3, 3, 6)
    for l in range(3):
        np.testing.assert_allclose(per_layer[:, l], direct_grad_rollout(layers[:l + 1],
                                                                          grads[:l + 1], 0, 3),
                                   rtol=1e-5)
    # a CLS token that is not the first token (a layout with the CLS after a register)
    np.testing.assert_allclose(grad_rollout(layers, grads, 1, 3)[0],
                               direct_grad_rollout(layers, grads, 1, 3), rtol=1e-5)


def test_grad_rollout_equals_the_authors_rule_on_random_tensors():
    rng = np.random.default_rng(1)
    n, heads, t = 4, 3, 10
    layers = [random_attention(rng, n, heads, t).astype(np.float32) for _ in range(4)]
    grads = [rng.normal(size=(n, heads, t, t)).astype(np.float32) for _ in range(4)]
    final, _ = grad_rollout(layers, grads)
    for b in range(n):
        ref = chefer_relevance([torch.from_numpy(a[b:b + 1]) for a in layers],
                               [torch.from_numpy(g[b:b + 1]) for g in grads])
        np.testing.assert_allclose(final[b], ref.numpy(), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def grad_dump(tmp_path_factory):
    """A real dump of a tiny random ViT with attention, norm1 outputs and their gradients
    (float32, so the comparison with live autograd is exact up to float rounding)."""
    root = tmp_path_factory.mktemp("grad_dump")
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                      mlp_ratio=2.0, num_classes=10)
    model = ViT(cfg).eval()
    ds = load_dataset("shapes:val=6,train=6", "val", 16)
    hooks = [*GradRollout.requires, *GradCam.requires]
    path = capture(model, ds, root / "g.h5", hooks, classes=ds.classes, batch_size=4,
                   dtype="float32")
    return path, model, ds


def test_grad_rollout_plugin_equals_the_authors_pipeline_on_a_real_vit(grad_dump, tmp_path):
    """Their generate_relevance on the live model: attention maps saved in the forward pass,
    their gradients by register_hook (as `Attention.save_attn_gradients` in their ViT_new.py),
    one-hot of the predicted class times the output, backward; then their loop."""
    path, model, ds = grad_dump
    with Dump.open(path) as dump:
        GradRollout().render(dump, tmp_path, render_options(GradRollout(), static=False,
                                                            interactive=False))
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(ds.images[dump.indices])),
                           [0.5] * 3, [0.5] * 3)
        grid = dump.layout.grid
    maps = np.load(tmp_path / "results.npz")["maps"]
    for b in range(len(x)):
        saved, saved_grads = {}, {}

        def save(t, name):
            saved[name] = t
            t.register_hook(lambda g, name=name: saved_grads.__setitem__(name, g))

        with attach(model, {"blocks.*.attn.weights": save}):
            output = model(x[b:b + 1])
        index = int(output.argmax())
        one_hot = torch.zeros(1, output.shape[-1])
        one_hot[0, index] = 1
        model.zero_grad()
        torch.sum(one_hot * output).backward()
        names = sorted(saved)
        ref = chefer_relevance([saved[n].detach() for n in names], [saved_grads[n] for n in names])
        np.testing.assert_allclose(maps[b], ref.numpy().reshape(grid), rtol=1e-4, atol=1e-7)


def test_attn_grad_is_one_layer_of_attention_times_gradient(grad_dump, tmp_path):
    path, _, _ = grad_dump
    with Dump.open(path) as dump:
        AttnGrad().render(dump, tmp_path / "last", render_options(AttnGrad(), static=False,
                                                                 interactive=False))
        AttnGrad().render(dump, tmp_path / "first", render_options(AttnGrad(), layer="0",
                                                                  static=False, interactive=False))
        attn = [dump[n][:] for n in dump.match("blocks.*.attn.weights")]
        grads = [dump[n][:] for n in dump.match("grad:blocks.*.attn.weights")]
        grid = dump.layout.grid
    for sub, layer in (("last", 1), ("first", 0)):
        got = np.load(tmp_path / sub / "results.npz")["maps"]
        direct = direct_grad_rollout([attn[layer]], [grads[layer]], 0, 1)   # R = I + Ā
        np.testing.assert_allclose(got, direct.reshape(-1, *grid), rtol=1e-5)
        np.testing.assert_allclose(got, attention_gradient(attn[layer], grads[layer])[:, 0, 1:]
                                   .reshape(-1, *grid), rtol=1e-6)


def direct_gradcam(acts, grads, prefix):
    n, t, d = acts.shape
    out = np.zeros((n, t - prefix))
    for b in range(n):
        w = [np.mean(grads[b, prefix:, c]) for c in range(d)]
        for p in range(t - prefix):
            out[b, p] = max(sum(w[c] * acts[b, prefix + p, c] for c in range(d)), 0.0)
    return out


def pytorch_grad_cam(acts, grads, grid):
    """pytorch-grad-cam's GradCAM on a ViT: `reshape_transform` of usage_examples/vit_example.py
    (drop token 0, patches onto the h×w grid, channels first), GradCAM.get_cam_weights
    (np.mean(grads, axis=(2, 3))), BaseCAM.get_cam_image (weights[:, :, None, None] *
    activations, summed over channels), then np.maximum(cam, 0) as in compute_cam_per_layer
    (before its rescaling to [0, 1] for display)."""
    def reshape_transform(tensor, height, width):
        result = tensor[:, 1:, :].reshape(tensor.shape[0], height, width, tensor.shape[2])
        return result.transpose(0, 3, 1, 2)

    a, g = reshape_transform(acts, *grid), reshape_transform(grads, *grid)
    weights = np.mean(g, axis=(2, 3))
    cam = (weights[:, :, None, None] * a).sum(axis=1)
    return np.maximum(cam, 0)


def test_gradcam_matches_direct_and_pytorch_grad_cam():
    rng = np.random.default_rng(2)
    acts, grads = rng.normal(size=(3, 7, 5)), rng.normal(size=(3, 7, 5))   # CLS + 2 registers
    np.testing.assert_allclose(gradcam(acts, grads, 3), direct_gradcam(acts, grads, 3), rtol=1e-5)
    acts, grads = rng.normal(size=(4, 1 + 6, 8)), rng.normal(size=(4, 1 + 6, 8))
    np.testing.assert_allclose(gradcam(acts, grads, 1).reshape(4, 2, 3),
                               pytorch_grad_cam(acts, grads, (2, 3)), rtol=1e-5)


def test_gradcam_plugin_reads_the_last_norm1_output(grad_dump, tmp_path):
    path, _, _ = grad_dump
    with Dump.open(path) as dump:
        files = GradCam().render(dump, tmp_path, render_options(GradCam(), interactive=False))
        acts = dump["blocks.1.norm1.out"][:]
        grads = dump["grad:blocks.1.norm1.out"][:]
        grid = dump.layout.grid
    saved = np.load(tmp_path / "results.npz")
    np.testing.assert_allclose(saved["maps"], pytorch_grad_cam(acts, grads, grid), rtol=1e-5,
                               atol=1e-8)
    assert int(saved["block"]) == 1 and (tmp_path / "gradcam.png") in files


@pytest.mark.parametrize("plugin", [GradRollout(), AttnGrad(), GradCam()])
def test_figures_name_the_target_and_maps_follow_the_contract(grad_dump, tmp_path, plugin):
    from vitscope.plugin.maps import read_maps
    path, _, _ = grad_dump
    with Dump.open(path) as dump:
        files = plugin.render(dump, tmp_path, render_options(plugin, show="3", format="svg"))
        maps = read_maps(tmp_path, dump, plugin.name)
        assert np.array_equal(maps.target, dump.target) and len(maps) == len(dump)
        explained = [dump.classes[t] for t in dump.target[:3]]
    svg = tmp_path / f"{plugin.name}.svg"
    assert svg in files
    text = svg.read_text()                         # svg.fonttype none: captions stay text
    for word in ("original", "overlay", "target: pred", *(f"(explains {c})" for c in explained)):
        assert word in text, word
