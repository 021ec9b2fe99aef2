"""`vitscope analyze` end to end: capture or reuse a dump, render, isolate failures, index.html,
and the training-time analyzer."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitscope.cli import main
from vitscope.errors import PluginError

NO_UMAP = ["--opt", "cls-embedding.umap=false"]
NO_UMAP_FOLDER = "cls-embedding@umap=false"      # a setting's own folder (vitscope.render.setting_folders)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run from tmp_path: default outputs/ and outputs/dumps land there, not in the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_analyze_all_then_reuse_the_dump_without_running_the_model(shapes_ckpt, in_tmp,
                                                                   monkeypatch):
    res = run("analyze", shapes_ckpt, "--all", "--images", 12, *NO_UMAP)
    assert res.exit_code == 0, res.output
    assert "Captured dump outputs/dumps/run-val-12-" in res.output
    run_dir = in_tmp / "outputs" / "run"          # runs/<run>/best.pt -> outputs/<run>
    for name in ("rollout", "cls-heatmap", "token-attention", NO_UMAP_FOLDER, "norm-activations"):
        assert any(l.startswith("ok") and name in l for l in res.output.splitlines()), name
        assert (run_dir / name / "results.npz").is_file()
    index = (run_dir / "index.html").read_text()
    assert str(shapes_ckpt) in index and "shapes:val=48" in index and "12" in index
    assert (run_dir / "plotly.min.js").is_file()

    # the capture runs in a process of its own (no monkeypatch reaches it): a reused dump is
    # the same file, untouched, and no other is written
    (captured,) = (in_tmp / "outputs" / "dumps").glob("*.h5")
    stamp = captured.stat().st_mtime_ns
    res = run("analyze", shapes_ckpt, "--plugin", "rollout", "--images", 8, "--static")
    assert res.exit_code == 0, res.output
    assert "Reusing dump outputs/dumps/run-val-12-" in res.output
    assert list((in_tmp / "outputs" / "dumps").glob("*.h5")) == [captured]
    assert captured.stat().st_mtime_ns == stamp
    assert not (run_dir / "rollout" / "rollout.html").exists()   # --static: re-rendered alone
    assert (run_dir / "rollout" / "rollout.png").is_file()
    assert "token-attention" in (run_dir / "index.html").read_text()  # earlier plugins stay

    # Dumps an earlier version captured into the hidden outputs/.dumps are still reused, and
    # nothing new is written beside them.
    legacy = in_tmp / "outputs" / ".dumps"
    legacy.mkdir()
    (made,) = (in_tmp / "outputs" / "dumps").glob("*.h5")
    made.rename(legacy / made.name)
    res = run("analyze", shapes_ckpt, "--plugin", "rollout", "--images", 8, "--static")
    assert res.exit_code == 0, res.output
    assert f"Reusing dump outputs/.dumps/{made.name}" in res.output
    assert not list((in_tmp / "outputs" / "dumps").glob("*.h5"))


def test_one_failing_plugin_does_not_stop_the_others(small_dump, tmp_path, monkeypatch):
    from plugin_dists import FAKE_ENTRY_POINTS, write_fake_distribution
    root = write_fake_distribution(tmp_path / "site", "fake_analyze_plugins", FAKE_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(root))
    dump_path, ckpt = small_dump
    out = tmp_path / "out"
    try:
        res = run("analyze", ckpt, "--dump", dump_path, "--plugin", "fake-explodes",
                  "--plugin", "fake-good", "--plugin", "rollout", "--plugin", "fake-no-render",
                  "--opt", "fake-good.level=3", "-o", out)
    finally:
        sys.modules.pop("fake_analyze_plugins", None)
    assert res.exit_code == 1, res.output
    assert "Error: Plugin 'fake-no-render' (package fake-vitscope-plugins 0.3) is broken" in res.output
    failed = next(l for l in res.output.splitlines() if l.startswith("FAILED"))
    assert "fake-explodes" in failed and "raised RuntimeError: kaboom" in failed
    assert "error.log" in failed
    assert "Traceback" in (out / "fake-explodes" / "error.log").read_text()
    assert (out / "fake-good@level=3" / "good.txt").read_text() == "12 images, level 3"
    assert (out / "rollout" / "rollout.png").is_file()
    index = (out / "index.html").read_text()
    assert "This plugin failed" in index and "kaboom" in index
    assert "fake-no-render" in index       # broken before rendering: listed with its reason too


FIGURE_KINDS_MODULE = """
from pathlib import Path
from vitscope.render import figures

class StaticOnly:
    name = "static-only"
    requires = ("blocks.*.attn.weights",)
    def render(self, dump, out_dir, options):
        files = figures.save_results(out_dir, {"n": len(dump)})
        if options.static:
            with figures.style() as plt:
                fig, ax = plt.subplots()
                ax.imshow(dump.images[0])
                files.append(figures.save_static(fig, Path(out_dir) / "image", options))
        return files

class ResultsOnly:
    name = "results-only"
    requires = ("blocks.*.attn.weights",)
    def render(self, dump, out_dir, options):
        return figures.save_results(out_dir, {"n": len(dump)})
"""


def _section(index: str, name: str) -> str:
    start = index.index(f"<section id='{name}'")
    return index[start:index.index("</section>", start)]


def test_ok_says_which_figures_asked_for_a_plugin_did_not_write(small_dump, tmp_path,
                                                                 monkeypatch):
    """A plugin with no HTML output, run with --interactive (or the default), is not
    a plain "ok"; one that writes only results is fine where no figure is asked for (score)."""
    from plugin_dists import write_fake_distribution

    from vitscope.analyze.run import render_plugin
    from vitscope.analyze.registry import discover
    root = write_fake_distribution(tmp_path / "site", "fake_figure_kinds",
                                   {"static-only": "{mod}:StaticOnly",
                                    "results-only": "{mod}:ResultsOnly"},
                                   source=FIGURE_KINDS_MODULE)
    monkeypatch.syspath_prepend(str(root))
    dump_path, ckpt = small_dump
    out = tmp_path / "out"
    try:
        res = run("analyze", ckpt, "--dump", dump_path, "-p", "static-only", "-p",
                  "results-only", "-p", "rollout", "-o", out)          # both kinds asked
        assert res.exit_code == 0, res.output
        text = res.output.split("\nok      ")
        said = {chunk.split()[0]: chunk for chunk in text[1:]}
        assert "warning: wrote no interactive figure (no .html file) though one was asked " \
               "for" in said["static-only"]
        assert "warning: wrote no figure, static or interactive" in said["results-only"]
        assert "wrote no" not in said["rollout"]                      # it writes both kinds
        manifest = json.loads((out / "manifest.json").read_text())["plugins"]
        assert manifest["static-only"]["missing_outputs"] == ["interactive"]
        assert manifest["results-only"]["missing_outputs"] == ["static", "interactive"]
        assert manifest["rollout"]["missing_outputs"] == [] == manifest["rollout"]["warnings"]
        index = (out / "index.html").read_text()
        assert "wrote no interactive figure" in _section(index, "static-only")
        assert "wrote no" not in _section(index, "rollout")

        res = run("analyze", ckpt, "--dump", dump_path, "-p", "static-only", "-p",
                  "results-only", "--static", "-o", out)
        assert res.exit_code == 0, res.output
        assert "wrote no" not in res.output.split("results-only")[0]  # static-only: all there
        assert "wrote no static figure (no PNG, SVG, PDF or GIF file)" in res.output
        manifest = json.loads((out / "manifest.json").read_text())["plugins"]
        assert manifest["static-only"]["missing_outputs"] == []
        assert "wrote no" not in _section((out / "index.html").read_text(), "static-only")

        # `vitscope score` asks for no figure: results alone are all a map plugin owes it.
        entry = discover().get("results-only")
        quiet = render_plugin(entry, dump_path, tmp_path / "score", static=False,
                              interactive=False)
        assert quiet.ok and quiet.missing == [] and quiet.warnings == []
        assert "no figure" not in quiet.line()
    finally:
        sys.modules.pop("fake_figure_kinds", None)


def test_a_plugin_needing_hooks_the_model_lacks_fails_alone(shapes_ckpt, in_tmp, monkeypatch,
                                                             tmp_path):
    from plugin_dists import FAKE_ENTRY_POINTS, write_fake_distribution
    root = write_fake_distribution(tmp_path / "site", "fake_missing_hooks", FAKE_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(root))
    try:
        res = run("analyze", shapes_ckpt, "--plugin", "fake-needs-missing", "--plugin",
                  "fake-good", "--images", 4)
    finally:
        sys.modules.pop("fake_missing_hooks", None)
    assert res.exit_code == 1, res.output
    assert "FAILED  fake-needs-missing" in res.output and "blocks.*.mlp.gate" in res.output
    assert (in_tmp / "outputs" / "run" / "fake-good" / "good.txt").read_text() == \
        "4 images, level 1"


def test_typo_and_bad_options_fail_before_any_capture(shapes_ckpt, in_tmp):
    res = run("analyze", shapes_ckpt, "--plugin", "rolout")
    assert res.exit_code == 1
    assert res.output.startswith("Error: No plugin 'rolout'. Did you mean 'rollout'? Installed:")
    res = run("analyze", shapes_ckpt, "--plugin", "rollout", "--opt", "rollout.fusion=median")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "Error: --opt rollout.fusion=median is invalid: expected one of mean, max, min" \
        in res.output
    res = run("analyze", shapes_ckpt, "--plugin", "rollout", "--opt", "cls-heatmap.layers=all")
    assert "not selected; add --plugin cls-heatmap" in res.output
    assert not (in_tmp / "outputs").exists()                    # nothing was captured
    res = run("analyze", shapes_ckpt)
    assert res.exit_code == 1 and "No plugin chosen" in res.output


def test_a_given_dump_must_cover_the_plugins_and_match_the_checkpoint(small_dump, tmp_path,
                                                                      in_tmp):
    from vitscope.testing import make_dump
    only_cls = make_dump(tmp_path / "cls.h5", n=4, hooks=["cls"])
    res = run("analyze", "--dump", only_cls, "--plugin", "rollout", "-o", tmp_path / "o")
    assert res.exit_code == 1
    assert "lacks hook points the plugins read (rollout needs blocks.*.attn.weights)" in res.output
    _, ckpt = small_dump
    other = make_dump(tmp_path / "other.h5", n=4, seed=1, checkpoint=tmp_path / "other.pt")
    res = run("analyze", ckpt, "--dump", other, "--plugin", "rollout", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "captured from another checkpoint" in res.output
    res = run("analyze", "--dump", other, "--plugin", "rollout", "--images", 3, "--interactive")
    assert res.exit_code == 0, res.output
    assert "Open outputs/other/index.html" in res.output      # no CKPT: named after the dump
    assert (in_tmp / "outputs" / "other" / "rollout" / "rollout.html").is_file()


def test_epoch_analyzer_renders_into_epoch_folders(tmp_path):
    from vitscope.analyze.epochs import make_epoch_analyzer
    from vitscope.data import load_dataset
    from vitscope.model.vit import ModelConfig, ViT

    data = load_dataset("shapes:val=20,train=20", "val", 16)
    with pytest.raises(PluginError, match="Did you mean 'rollout'"):
        make_epoch_analyzer(["rolout"], data, run_name="r", classes=data.classes,
                            normalize=([0.5] * 3, [0.25] * 3), out_root=tmp_path)
    analyze = make_epoch_analyzer(["rollout", "cls-heatmap"], data, run_name="r",
                                  classes=data.classes, normalize=([0.5] * 3, [0.25] * 3),
                                  out_root=tmp_path, n_images=4)
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            num_classes=len(data.classes))).train()
    files = analyze(model, 3, tmp_path / "runs" / "r")
    analyze(model, 4, tmp_path / "runs" / "r")
    epoch_dir = tmp_path / "r" / "epoch_003"
    assert model.training                                   # the trainer's mode is restored
    assert epoch_dir / "rollout" / "rollout.png" in files
    assert (epoch_dir / "cls-heatmap" / "cls_to_patches.png").is_file()
    index = (epoch_dir / "index.html").read_text()
    assert "model at epoch 3" in index and "epoch" in index
    assert not list(epoch_dir.rglob("*.h5"))               # the small dump is temporary
    assert (tmp_path / "r" / "epoch_004" / "rollout" / "rollout.png").is_file()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("plotly.min.js")) \
        == ["r/plotly.min.js"]                              # one plotly.js for all epochs


def test_the_example_third_party_plugin_through_the_cli(small_dump, tmp_path):
    """examples/vitscope-attention-entropy, installed by `make install` like any package."""
    pytest.importorskip("vitscope_attention_entropy",
                        reason="pip install -e examples/vitscope-attention-entropy")
    dump_path, ckpt = small_dump
    res = run("analyze", ckpt, "--dump", dump_path, "--plugin", "attention-entropy", "-o",
              tmp_path)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "attention-entropy" / "attention_entropy.png").is_file()
    assert "vitscope-attention-entropy 0.1.0" in (tmp_path / "index.html").read_text()


def test_more_images_than_the_dump_holds_and_a_missing_checkpoint(small_dump, tmp_path, in_tmp):
    dump_path, ckpt = small_dump                                    # 12 images
    res = run("analyze", ckpt, "--dump", dump_path, "--plugin", "rollout", "-n", 500,
              "--static", "-o", tmp_path / "o")
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["run"]["images"] == 12
    with np.load(tmp_path / "o" / "rollout" / "results.npz") as r:
        assert max(v.shape[0] for v in r.values() if v.ndim) == 12
    res = run("analyze", tmp_path / "nope.pt", "--dump", dump_path, "--plugin", "rollout")
    assert res.exit_code == 1 and f"No checkpoint at '{tmp_path / 'nope.pt'}'" in res.output
    assert "Traceback" not in res.output


def test_bad_device_fails_before_capturing(shapes_ckpt, in_tmp):
    res = run("analyze", shapes_ckpt, "--plugin", "rollout", "--device", "gpu0")
    assert res.exit_code == 1 and "Unknown device 'gpu0'" in res.output, res.output
    assert not (in_tmp / "outputs" / "dumps").exists()


def test_a_dump_with_some_blocks_only_does_not_serve_every_block(tmp_path, in_tmp):
    from vitscope.testing import make_dump
    part = make_dump(tmp_path / "part.h5", n=4, depth=3,
                     hooks=["blocks.[12].attn.weights", "blocks.*.out", "cls"])
    res = run("analyze", "--dump", part, "--plugin", "rollout", "--plugin", "cls-embedding",
              "-o", tmp_path / "o", *NO_UMAP)
    assert res.exit_code == 1, res.output
    assert "FAILED  rollout" in res.output
    assert "blocks.*.attn.weights (lacks blocks.0.attn.weights)" in res.output
    assert any(l.startswith("ok") and "cls-embedding" in l for l in res.output.splitlines())
    assert not (tmp_path / "o" / "rollout" / "results.npz").exists()
    assert "lacks blocks.0.attn.weights" in (tmp_path / "o" / "index.html").read_text()


def test_an_output_folder_that_cannot_be_made_is_one_line(small_dump, tmp_path, in_tmp):
    dump_path, _ = small_dump
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    res = run("analyze", "--dump", dump_path, "--plugin", "rollout", "-o", blocker / "sub")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"Error: Cannot write to the folder '{blocker / 'sub'}'" in res.output
    assert blocker.read_text() == "keep me"


def test_index_warns_when_figures_come_from_another_checkpoint(tmp_path, in_tmp):
    from vitscope.testing import make_dump
    first = make_dump(tmp_path / "a.h5", n=4, checkpoint=tmp_path / "m" / "best.pt")
    out = tmp_path / "o"
    assert run("analyze", "--dump", first, "--plugin", "token-attention", "--static",
               "-o", out).exit_code == 0
    assert "mixes figures" not in (out / "index.html").read_text()
    # the same path, retrained: another SHA-256
    second = make_dump(tmp_path / "b.h5", n=4, seed=1, checkpoint=tmp_path / "m" / "best.pt")
    res = run("analyze", "--dump", second, "--plugin", "rollout", "--static", "-o", out)
    assert res.exit_code == 0, res.output
    index = (out / "index.html").read_text()
    assert "This page mixes figures of different models or data: token-attention was" in index
    assert "rendered earlier from another model or data" in index


def test_options_must_be_finite_and_both_figure_flags_mean_both(small_dump, tmp_path, in_tmp):
    dump_path, _ = small_dump
    res = run("analyze", "--dump", dump_path, "--plugin", "rollout", "--opt",
              "rollout.discard_ratio=nan", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "expected a finite number" in res.output, res.output
    res = run("analyze", "--dump", dump_path, "--plugin", "rollout", "--static", "--interactive",
              "-n", 500, "-o", tmp_path / "b")
    assert res.exit_code == 0, res.output
    assert "The dump holds 12 images; analysing all 12 (asked for 500)." in res.output
    assert (tmp_path / "b/rollout/rollout.png").is_file()
    assert (tmp_path / "b/rollout/rollout.html").is_file()


def test_a_failing_epoch_analysis_does_not_stop_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import vitscope.analyze.epochs as analysis
    real = analysis.render_plugins

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(analysis, "render_plugins", disk_full)
    res = run("train", "--data", "shapes:train=64,val=32", "--epochs", "2", "--batch-size", "16",
              "--device", "cpu", "--set", "model.image_size=16", "--set", "model.depth=1",
              "--set", "model.embed_dim=32", "--set", "model.num_heads=2", "--name", "r",
              "--analyze-every", "1", "--plugin", "rollout")
    monkeypatch.setattr(analysis, "render_plugins", real)
    assert res.exit_code == 0, res.output
    assert "epoch 1: the analyses failed (OSError: [Errno 28] No space left on device)" in res.output
    assert "epoch   2/2" in res.output and (tmp_path / "runs/r/last.pt").is_file()
    assert "epoch analyses: outputs/r/epoch_NNN/index.html" in res.output
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "outputs").write_text("a file where the folder should be")
    monkeypatch.chdir(tmp_path / "elsewhere")
    res = run("train", "--data", "shapes:train=64,val=32", "--epochs", "1", "--batch-size", "16",
              "--device", "cpu", "--name", "r2", "--analyze-every", "1", "--plugin", "rollout")
    assert res.exit_code == 1 and "Error: Cannot write to the folder 'outputs/r2'" in res.output
    assert not (tmp_path / "elsewhere" / "runs").exists()


def test_all_runs_the_model_per_patch_or_step_only_for_the_methods_named(tmp_path,
                                                                         monkeypatch):
    """`--all` leaves out the methods whose capture runs the model many times per image
    (integrated gradients, occlusion, Score-CAM), each listed as skipped with how to run it;
    one named with -p beside --all runs."""
    from pathlib import Path
    pytest.importorskip("captum")
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)                   # the dump cache: outputs/dumps/ here
    res = run("analyze", "--all", root / "examples/checkpoints/vit-cifar10.pt", "--data",
              f"folder:{root / 'examples/images'}", "-p", "occlusion", "--static",
              "-o", tmp_path / "out", "--opt", "cls-embedding.umap=false")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for name in ("integrated-gradients", "scorecam"):
        assert any(l.startswith("skipped") and f" {name} " in l and "name it with -p" in l
                   for l in lines), res.output
    assert any(l.startswith("ok") and " occlusion " in l for l in lines), res.output
    assert not (tmp_path / "out" / "scorecam").exists()
