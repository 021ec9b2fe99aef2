"""AttnLRP and CP-LRP (vitscope.capture.lrp) against the authors' own `lxt` on the same models
and inputs: lxt's shipped CP-LRP setting for torchvision's ViT, and lxt's AttnLRP and CP-LRP
attention wrappers with its LayerNorm and activation patches on a Hugging Face DINOv2 with two
registers and layer-scale (three prefix tokens), batch 4. lxt patches classes for the whole
process, so it runs in a child process; vitscope computes the maps through `vitscope.explain`
on a fresh copy of the same weights. Then: the model comes back unchanged, the maps are the
target's, and `vitscope score` scores them through the dump."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import vitscope
from vitscope.score.stats import spearman

pytest.importorskip("lxt", reason="pip install 'vitscope[lrp]'")

# lxt 2.1 imports transformers' BERT helpers that transformers 5 removed, from a model file it
# does not use here: a stand-in module lets `lxt.efficient` import.
_LXT = """
import sys, types
import numpy as np, torch
import transformers.models.bert.modeling_bert as mb
stub = types.ModuleType("lxt.efficient.models.bert")
stub.modeling_bert, stub.attnLRP = mb, {}
sys.modules["lxt.efficient.models.bert"] = stub
from functools import partial
from lxt.efficient import monkey_patch
from lxt.efficient import patches as P
"""

_TORCHVISION = """
def build():
    from torchvision.models import vision_transformer
    torch.manual_seed(0)
    m = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
        num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m

def reference(rule, x):
    from torchvision.models import vision_transformer
    assert rule == "cp-lrp"
    monkey_patch(vision_transformer)          # lxt's own map for torchvision's ViT (CP-LRP)
    return build(), lambda m, x: m(x)
"""

_DINOV2 = """
def build():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification
    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(image_size=32, patch_size=8, num_hidden_layers=2,
        num_attention_heads=2, hidden_size=32, mlp_ratio=2, num_register_tokens=2,
        num_labels=5, layerscale_value=0.5, attn_implementation="eager")
    m = Dinov2WithRegistersForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m

def reference(rule, x):
    from transformers.activations import GELUActivation
    from transformers.models.dinov2_with_registers import modeling_dinov2_with_registers as md
    monkey_patch(md, {torch.nn.LayerNorm: partial(P.patch_method, P.layer_norm_forward),
                      GELUActivation: partial(P.patch_method, P.non_linear_forward,
                                              keep_original=True)})
    # lxt's patch_attention swaps ALL_ATTENTION_FUNCTIONS for a dict, which transformers 5 no
    # longer takes; it wraps the eager function, which is the one this model calls
    wrap = P.wrap_attention_forward if rule == "attnlrp" else P.cp_wrap_attention_forward
    md.eager_attention_forward = wrap(md.eager_attention_forward)
    return build(), lambda m, x: m(pixel_values=x).logits
"""

_RUN = """
if __name__ == "__main__":
    rule, folder = sys.argv[1], sys.argv[2]
    x = torch.from_numpy(np.load(folder + "/x.npy")).requires_grad_(True)
    t = torch.from_numpy(np.load(folder + "/t.npy"))
    model, logits = reference(rule, x)
    logits(model, x).gather(1, t[:, None]).sum().backward()
    r = (x * x.grad).sum(1).reshape(len(x), 4, 8, 4, 8).sum((2, 4))
    np.save(folder + "/ref.npy", r.detach().numpy())
"""

FAMILIES = {"torchvision": _TORCHVISION, "dinov2-registers": _DINOV2}


def _family(name: str, folder: Path):
    """The family's build() (same weights as in the child) and the child's script."""
    script = folder / f"ref_{name.replace('-', '_')}.py"
    script.write_text(textwrap.dedent(_LXT + FAMILIES[name] + _RUN))
    space: dict = {}
    exec(compile(_TORCHVISION if name == "torchvision" else _DINOV2, str(script), "exec"),
         {"torch": torch, "np": np}, space)
    return space["build"], script


def _lxt(script: Path, rule: str, folder: Path, x: np.ndarray, targets) -> np.ndarray:
    np.save(folder / "x.npy", x)
    np.save(folder / "t.npy", np.asarray(targets, np.int64))
    subprocess.run([sys.executable, str(script), rule, str(folder)], check=True,
                   capture_output=True, timeout=300)
    return np.load(folder / "ref.npy")


@pytest.mark.parametrize("family,rule", [("torchvision", "cp-lrp"),
                                         ("dinov2-registers", "attnlrp"),
                                         ("dinov2-registers", "cp-lrp")])
def test_lrp_equals_lxt(tmp_path, family, rule):
    pytest.importorskip("transformers")
    build, script = _family(family, tmp_path)
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    model = build()
    ex = vitscope.explain(model, x.transpose(0, 2, 3, 1), methods=[rule], preprocessed=True)
    assert ex.layout.num_prefix_tokens == (1 if family == "torchvision" else 3)
    ours, ref = ex.maps[rule], _lxt(script, rule, tmp_path, x, ex.targets)
    assert ours.shape == ref.shape == (4, 4, 4)
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()
    assert spearman(ours, ref).min() > 0.9999


def test_the_rules_change_the_gradient_and_leave_the_model_as_it_was():
    """LRP is not gradient × input: the maps differ from it, from each other, and the model's
    outputs and hooks are the same before and after."""
    from vitscope.model.hooks import hook_points
    from vitscope.model.vit import ModelConfig, ViT
    torch.manual_seed(1)
    model = ViT(ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            num_classes=5)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    hooks = [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()]
    ex = vitscope.explain(model, x.permute(0, 2, 3, 1).numpy(),
                          methods=["attnlrp", "cp-lrp"], preprocessed=True)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert hooks == [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()]
    assert list(hook_points(model))
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    out.gather(1, torch.as_tensor(ex.targets)[:, None]).sum().backward()
    plain = (xg * xg.grad).sum(1).reshape(3, 4, 8, 4, 8).sum((2, 4)).detach().numpy()
    a, c = ex.maps["attnlrp"], ex.maps["cp-lrp"]
    assert np.isfinite(a).all() and np.isfinite(c).all()
    assert np.abs(a - plain).max() > 1e-4 * np.abs(plain).max()
    assert np.abs(a - c).max() > 1e-4 * np.abs(a).max()
    # the target's map: explaining another class gives another map
    other = (np.asarray(ex.targets) + 1) % 5
    ex2 = vitscope.explain(model, x.permute(0, 2, 3, 1).numpy(), methods=["attnlrp"],
                           target=other.tolist(), preprocessed=True)
    assert np.abs(ex2.maps["attnlrp"] - a).max() > 1e-4 * np.abs(a).max()


def test_score_reads_the_stored_lrp_maps(shapes_ckpt, tmp_path, monkeypatch):
    """`vitscope score -p attnlrp -p cp-lrp` captures /maps/<method> and scores it; the stored
    maps equal the API's on the same checkpoint and images."""
    from click.testing import CliRunner

    from vitscope.cli import main
    from vitscope.dump import Dump
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["score", str(shapes_ckpt), "-p", "attnlrp", "-p", "cp-lrp",
                                    "-n", "6", "--draws", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "outputs" / "run" / "score" / "score.json").read_text())
    assert set(report["methods"]) == {"attnlrp", "cp-lrp"}
    for m in report["methods"].values():
        assert m["faithfulness"]["deletion_auc"]["n"] == 6
        assert m["class_sensitivity"]["runner-up"]["rho"]["n"] >= 1
    with Dump.open(report["dump"]) as dump:
        assert sorted(dump.model_maps) == ["attnlrp", "cp-lrp"]
        stored = {m: dump[f"map:{m}"][:] for m in dump.model_maps}
        pixels, target = np.asarray(dump.images[:]), dump.target
    ex = vitscope.explain(str(shapes_ckpt), pixels, methods=["attnlrp", "cp-lrp"],
                          target=target.tolist())
    for name, maps in stored.items():
        assert maps.shape == (6, 4, 4) and np.ptp(maps) > 0
        np.testing.assert_allclose(maps, ex.maps[name], rtol=1e-4, atol=1e-6, err_msg=name)
