"""`vitscope score`: token dropping, faithfulness against an oracle, the randomisation test,
localisation baselines, statistics, third-party map plugins and the CLI with bad input."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitscope.cli import main
from vitscope.model.hooks import attach
from vitscope.dump import Dump
from vitscope.model.vit import ModelConfig, ViT
from vitscope.score import faithfulness as FA
from vitscope.score import localization as LO
from vitscope.score.stats import bootstrap, paired, spearman

MAP_PLUGINS = textwrap.dedent('''
    import numpy as np
    from vitscope.render import figures
    from vitscope.plugin.maps import map_arrays

    class GradTimesInput:
        """Gradient × input of the patch tokens after the position embedding."""
        name = "grad-x-input"
        requires = ("embed.out", "grad:embed.out")
        produces = ("maps",)
        def render(self, dump, out_dir, options):
            n = len(dump) if options.limit is None else options.limit
            p = dump.layout.num_prefix_tokens
            a = dump["embed.out"][:n].astype(np.float32)[:, p:]
            g = dump["grad:embed.out"][:n].astype(np.float32)[:, p:]
            maps = np.abs((a * g).sum(-1)).reshape(n, *dump.layout.grid)
            return figures.save_results(out_dir, map_arrays(dump, maps))

    class Brightness:
        """A map that never looks at the model."""
        name = "bright-map"
        requires = ()
        produces = ("maps",)
        def render(self, dump, out_dir, options):
            n = len(dump) if options.limit is None else options.limit
            h, w = dump.layout.grid
            px = dump.images[:n].astype(np.float32).mean(-1)
            maps = px.reshape(n, h, px.shape[1] // h, w, px.shape[2] // w).mean((2, 4))
            return figures.save_results(out_dir, map_arrays(dump, maps))

    class TiedPeaks:
        """Two tied peaks per image: the top-left and the bottom-right patch."""
        name = "tied-peaks"
        requires = ()
        produces = ("maps",)
        def render(self, dump, out_dir, options):
            import json
            from vitscope.plugin import mask_numbers
            n = len(dump) if options.limit is None else options.limit
            maps = np.zeros((n, *dump.layout.grid), np.float32)
            maps[:, 0, 0] = maps[:, -1, -1] = 1.0
            (out_dir / "summary.json").write_text(json.dumps(mask_numbers(dump, maps, n)))
            return figures.save_results(out_dir, map_arrays(dump, maps))

    class NoMaps:
        name = "no-maps"
        requires = ()
        def render(self, dump, out_dir, options):
            return []
''')


@pytest.fixture
def map_plugins(tmp_path, monkeypatch):
    import sys

    from plugin_dists import write_fake_distribution
    module = "fake_map_plugins_score"
    root = write_fake_distribution(tmp_path / "site", module, {
        "grad-x-input": f"{module}:GradTimesInput", "bright-map": f"{module}:Brightness",
        "tied-peaks": f"{module}:TiedPeaks", "no-maps": f"{module}:NoMaps"}, MAP_PLUGINS)
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop(module, None)


def tiny(depth=2, seed=0, classes=10):
    torch.manual_seed(seed)
    return ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=2,
                           mlp_ratio=2.0, num_classes=classes)).eval()


def test_dropping_tokens_through_attention_equals_a_shorter_sequence():
    model = tiny()
    x = torch.randn(5, 3, 16, 16)
    keep = torch.rand(5, 16) > 0.5
    keep[0] = False                                  # every patch gone: CLS alone
    target = torch.arange(5)
    got = FA.Perturber(model, model.token_layout, "drop").probabilities(x, keep, target)
    for i in range(5):                               # the real thing: tokens cut out, one image
        with torch.no_grad():
            t = model.embed.out(model.pos_drop(torch.cat(
                [model.cls_token, model.patch_embed(x[i:i + 1])], 1) + model.pos_embed))
            t = t[:, torch.cat([torch.tensor([True]), keep[i]])]
            for block in model.blocks:
                t = block(t)
            p = model.head(model.norm(t)[:, 0]).softmax(1)[0, target[i]]
        assert torch.allclose(got[i], p, atol=1e-5), i


def test_grey_paints_removed_patches_with_the_mean():
    model = tiny()
    layout = model.token_layout
    x = torch.randn(2, 3, 16, 16)
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[0, 5] = False                               # row 1, column 1 of the 4×4 grid
    out = FA.Perturber(model, layout, "grey")._grey(x, keep)
    assert (out[0, :, 4:8, 4:8] == 0).all()
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, :, 4:8, 4:8] = False
    assert torch.equal(out[mask], x[mask])


def test_the_deletion_curve_of_an_oracle_lies_below_a_random_order():
    """Oracle: the first-order effect of dropping each patch token on the target probability,
    from the model's own gradients (d p / d gate of each key in every attention layer)."""
    model = tiny(depth=2, seed=3)
    torch.manual_seed(1)
    x = torch.randn(48, 3, 16, 16) * 2
    layout = model.token_layout
    with torch.no_grad():
        target = model(x).argmax(1)
    gate = torch.ones(48, 16, requires_grad=True)
    keys = torch.cat([torch.ones(48, 1), gate], 1)[:, None, None, :]

    def gated(a, name):
        kept = a * keys
        return kept / kept.sum(-1, keepdim=True)

    with attach(model, {"blocks.*.attn.weights": gated}):
        p = model(x).softmax(1).gather(1, target[:, None]).sum()
    oracle = torch.autograd.grad(p, gate)[0].numpy().reshape(48, 4, 4)   # high: removal hurts
    rng = np.random.default_rng(0)
    orders = {"oracle": FA.relevance_order(oracle, rng), "random": FA.random_order(48, 16, rng)}
    c = FA.curves(FA.Perturber(model, layout, "drop"), x, target, orders, batch_size=128)
    oracle_del, _ = c["oracle"].auc()
    random_del, _ = c["random"].auc()
    diff = paired(oracle_del, random_del)
    assert diff.hi < 0, diff                          # below random, with 95% confidence
    mean_o, mean_r = c["oracle"].deletion.mean(0), c["random"].deletion.mean(0)
    assert (mean_o[1:-1] < mean_r[1:-1]).all()        # at every interior step
    assert np.allclose(c["oracle"].deletion[:, 0], c["random"].deletion[:, 0])   # same start
    assert np.allclose(c["oracle"].insertion[:, -1], c["oracle"].deletion[:, 0])


def test_step_counts_and_auc():
    assert FA.step_counts(64).tolist() == [0, 6, 13, 19, 26, 32, 38, 45, 51, 58, 64]
    curves = np.tile(np.linspace(1, 0, 11), (3, 1))
    np.testing.assert_allclose(FA.trapezoid(curves), 0.5)


def test_localisation_baselines_and_pointing_ties():
    cov = np.zeros((2, 4, 4))
    cov[0, 0, 0] = 1.0
    cov[1, :2, :2] = 0.6
    flat = np.ones((2, 4, 4))
    assert np.allclose(LO.pointing(flat, cov), [1 / 16, 4 / 16])   # a random patch's chance
    np.testing.assert_allclose(LO.mass_in_mask(flat, cov), cov.mean(axis=(1, 2)))
    peak = np.zeros((2, 4, 4))
    peak[:, 0, 0] = 1
    assert LO.pointing(peak, cov).tolist() == [1.0, 1.0]
    assert np.isnan(LO.mass_in_mask(-flat, cov)).all()               # no positive mass
    g = LO.centred_gaussian((8, 8))
    assert g.argmax() in (27, 28, 35, 36) and np.isclose(g[3, 3], g[4, 4])
    images = np.zeros((1, 16, 16, 3), np.uint8)
    images[0, :4, :4] = 255                          # a white corner in patch (0, 0) of 2×2
    maps = LO.baseline_maps(images, (2, 2))
    assert np.allclose(maps["brightness"][0], [[0.25, 0.0], [0.0, 0.0]])
    assert maps["edges"][0, 0, 0] > 0 and (maps["edges"][0].ravel()[1:] == 0).all()


def test_statistics():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 3, 3)), rng.normal(size=(6, 3, 3))
    b[0] = a[0] ** 3                                 # monotone: ρ = 1
    b[1, 0, 0] = b[1, 0, 1]                          # ties
    rho = spearman(a, b)
    for i in range(6):
        assert np.isclose(rho[i], spearmanr(a[i].ravel(), b[i].ravel())[0])
    assert np.isclose(rho[0], 1) and np.isnan(spearman(a[:1], np.ones((1, 3, 3)))[0])
    values = rng.normal(loc=2.0, size=400)
    e = bootstrap(values)
    assert e.lo < 2.0 < e.hi and e.lo < e.mean < e.hi and e.n == 400
    assert bootstrap(np.array([np.nan, 1.0, 1.0])).n == 2
    # BCa from scipy, seeded: the same numbers as scipy.stats.bootstrap itself
    from scipy.stats import bootstrap as scipy_bootstrap
    ref = scipy_bootstrap((values,), np.mean, n_resamples=1000, method="BCa",
                          random_state=np.random.default_rng(0)).confidence_interval
    assert (e.lo, e.hi) == pytest.approx((ref.low, ref.high))
    d = paired(values, values - 0.1)
    assert (d.mean, d.lo, d.hi) == pytest.approx((0.1, 0.1, 0.1))


def test_wilson_interval_of_proportions():
    from scipy.stats import binomtest

    from vitscope.score.stats import wilson
    hits = np.r_[np.ones(13), np.zeros(7)]
    ref = binomtest(13, 20).proportion_ci(method="wilson")
    e = wilson(hits)
    assert (e.mean, e.lo, e.hi) == pytest.approx((0.65, ref.low, ref.high))
    every = wilson(np.ones(20))        # a percentile bootstrap says [1, 1]; Wilson does not
    assert every.hi == 1.0 and every.lo == pytest.approx(0.8389, abs=1e-4)


def test_two_level_interval_covers_the_spread_between_draws():
    from vitscope.score.stats import two_level
    rng = np.random.default_rng(0)
    # five draws whose means differ far more than images within a draw do
    grid = rng.normal(size=(5, 1))[:, :1] * 0.2 + 0.5 + rng.normal(size=(5, 200)) * 0.05
    both = two_level(grid)
    images_only = bootstrap(grid[0])
    assert both.estimate.n == 1000 and len(both.draws) == 5
    assert both.estimate.hi - both.estimate.lo > 4 * (images_only.hi - images_only.lo)
    assert both.estimate.lo <= min(both.draws) + 0.1 and both.estimate.hi >= max(both.draws) - 0.1
    grid[1, :3] = np.nan                        # constant maps: counted, not silently gone
    assert two_level(grid).per_draw_n[1] == 197


def test_ties_and_constant_maps_are_counted():
    from vitscope.score.stats import constant, tie_fraction
    maps = np.array([[[0, 0], [0, 1]], [[1, 2], [3, 4]], [[5, 5], [5, 5]]], float)
    assert tie_fraction(maps).tolist() == [0.75, 0.0, 1.0]
    assert constant(maps).tolist() == [False, False, True]
    # the mean over tie orders is each order's curves averaged
    a = FA.Curves(np.zeros((1, 3)), np.ones((1, 3)))
    b = FA.Curves(np.ones((1, 3)), np.ones((1, 3)))
    assert FA.Curves.average([a, b]).auc()[0].tolist() == [0.5]


def test_randomization_flags_a_map_that_ignores_the_model(shapes_ckpt, map_plugins, tmp_path,
                                                          monkeypatch):
    from vitscope.analyze.registry import discover
    from vitscope.score.run import score_checkpoint
    monkeypatch.chdir(tmp_path)
    entries = discover().select(["grad-x-input", "bright-map", "rollout"])
    report = score_checkpoint(shapes_ckpt, entries, images=16, batch_size=64, device="cpu")
    methods = report["methods"]
    assert report["cascade"] == ["head", "blocks.1", "blocks.0", "embedding"]
    bright = methods["bright-map"]["randomization"]
    assert [s["rho"].mean for s in bright["steps"]] == pytest.approx([1.0] * 4)
    assert bright["verdict"] == "failed"
    # five independent weight draws, each image's ρ in each: n = 5 × 16
    assert report["randomization_draws"] == 5 and bright["steps"][0]["rho"].n == 80
    assert len(bright["steps"][-1]["draws"]) == 5
    gxi = methods["grad-x-input"]["randomization"]
    assert gxi["verdict"] == "passed"
    assert gxi["steps"][-1]["rho"].hi < 0.5
    roll = methods["rollout"]["randomization"]        # attention does not read the head
    assert roll["steps"][0]["rho"].mean == pytest.approx(1.0)
    assert roll["steps"][-1]["rho"].mean < 0.9
    # class sensitivity, measured: rollout and the image-only map are the same for every class
    for name in ("rollout", "bright-map"):
        cls = methods[name]["class_sensitivity"]
        assert cls["verdict"] == "class-agnostic", name
        assert cls["runner-up"]["rho"].mean == pytest.approx(1.0), name
    gxi_cls = methods["grad-x-input"]["class_sensitivity"]
    assert gxi_cls["verdict"] == "class-sensitive"
    assert gxi_cls["runner-up"]["rho"].hi < 0.9 and gxi_cls["random class"]["rho"].n == 16
    # ties and constant maps are reported per method; the control is labelled, not measured
    assert methods["grad-x-input"]["constant_maps"] == 0
    assert methods["grad-x-input"]["faithfulness"]["tie_orders"] in (1, 4)
    centre = report["baselines"]["faithfulness"]["centre"]
    assert centre["tie_orders"] == 4 and centre["tie_fraction"].mean == 1.0   # symmetric
    assert report["baselines"]["randomization_control"]["measured"] is False
    # the per-image arrays hold each method's own ρ (draws × images), not the whole step's dict
    assert report["_arrays"]["rho/grad-x-input/head"].shape == (5, 16)
    # the shapes data has masks: localisation with every baseline, "beats" from paired CIs
    loc = methods["bright-map"]["localization"]
    assert set(loc["vs"]) == {"uniform", "centre", "brightness", "edges"}
    assert not loc["vs"]["brightness"]["beats_mass_in_mask"]   # it IS the brightness baseline
    assert "mass in mask" in methods["bright-map"]["not_beaten"]["brightness"]
    assert sorted(m["rank"] for m in methods.values()) == [1, 2, 3]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_score_cli_end_to_end(shapes_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run("score", shapes_ckpt, "--plugin", "rollout", "--plugin", "grad-rollout",
              "--images", 12, "--batch-size", 64, "--device", "cpu")
    assert res.exit_code == 0, res.output
    for text in ("Faithfulness", "deletion AUC", "random order", "Randomisation", "+ blocks.0",
                 "class-agnostic", "Localisation", "over 5 independent weight draws", "n=60",
                 "1 by construction", "spread across draws", "Class sensitivity",
                 "vs the runner-up", "0 of 12 constant", "tied patches", "centre", "brightness", "Ranking", "1. ",
                 "Maps against each other", "rollout, deletion AUC: "):
        assert text in res.output, text
    out = tmp_path / "outputs" / "run" / "score"
    report = json.loads((out / "score.json").read_text())
    assert report["images"] == 12 and report["perturbation"] == "drop"
    assert set(report["methods"]) == {"rollout", "grad-rollout"}
    assert {p["metric"] for p in report["pairs"]} == {"deletion AUC", "insertion AUC",
                                                      "mass in mask", "pointing game"}
    est = report["methods"]["grad-rollout"]["faithfulness"]["deletion_auc"]
    assert est["ci95"][0] <= est["mean"] <= est["ci95"][1] and est["n"] == 12
    for name in ("curves.png", "randomization.png", "localization.png"):
        assert (out / name).stat().st_size > 10_000, name
    html = (out / "score.html").read_text()
    assert "plotly.min.js" in html and "grad-rollout" in html
    assert (tmp_path / "outputs" / "run" / "plotly.min.js").is_file()
    index = (tmp_path / "outputs" / "run" / "index.html").read_text()
    assert "Score: evidence for the maps" in index and "score/curves.png" in index
    # the grey perturbation is the other choice, and says so
    res = run("score", shapes_ckpt, "-p", "rollout", "-n", 6, "--perturbation", "grey",
              "-o", tmp_path / "grey")
    assert res.exit_code == 0, res.output
    assert "grey: removed patches' pixels set to the normalisation mean" in res.output


@pytest.mark.parametrize("args, message", [
    (["-p", "rolout"], "No plugin 'rolout'. Did you mean 'rollout'?"),
    (["-p", "cls-heatmap"], "Plugin 'cls-heatmap' makes no maps"),
    (["-p", "no-maps"], "Plugin 'no-maps' makes no maps"),
    (["-p", "rollout", "--target", "99"],
     "--target 99 is not a class of this model, which has 10 classes"),
    (["-p", "rollout", "--opt", "rollout.fusion=median"], "--opt rollout.fusion=median is invalid"),
])
def test_score_cli_bad_input_is_one_sentence_and_writes_nothing(shapes_ckpt, tmp_path,
                                                                monkeypatch, map_plugins,
                                                                args, message):
    monkeypatch.chdir(tmp_path)
    res = run("score", shapes_ckpt, *args)
    assert res.exit_code != 0 and message in res.output, res.output
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    assert not (tmp_path / "outputs").exists()


def test_a_third_party_map_plugin_is_scored_through_the_cli(shapes_ckpt, tmp_path, monkeypatch,
                                                           map_plugins):
    monkeypatch.chdir(tmp_path)
    res = run("score", shapes_ckpt, "-p", "grad-x-input", "-n", 8)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "outputs" / "run" / "score" / "score.json").read_text())
    assert list(report["methods"]) == ["grad-x-input"]
    assert "grad-x-input" in res.output and "passed" in res.output


def test_data_without_masks_skips_localisation(shapes_ckpt, tmp_path, monkeypatch):
    from PIL import Image

    from vitscope.data.shapes import CLASSES
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in CLASSES[:3]:
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / c / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    res = run("score", shapes_ckpt, "-p", "rollout", "-n", 9, "--data", f"folder:{tmp_path / 'imgs'}")
    assert res.exit_code == 0, res.output
    assert "Localisation: skipped" in res.output and "has no object masks" in res.output
    report = json.loads((tmp_path / "outputs" / "run" / "score" / "score.json").read_text())
    assert report["baselines"]["localization"] == {} and "localization" not in report["methods"]["rollout"]
    assert not (tmp_path / "outputs" / "run" / "score" / "localization.png").exists()


def test_pointing_game_on_tied_peaks_is_the_same_in_summary_and_score(shapes_ckpt, map_plugins,
                                                                      tmp_path, monkeypatch):
    """One implementation (vitscope.plugin.masks): a map with two tied peaks scores the
    expected hit of a random pick among them, in the plugin's summary.json and in `vitscope
    score` alike (they once disagreed: the summary took the first tied peak)."""
    monkeypatch.chdir(tmp_path)
    res = run("analyze", shapes_ckpt, "-p", "tied-peaks", "-n", 16, "--static")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "outputs" / "run" / "tied-peaks" / "summary.json").read_text())
    res = run("score", shapes_ckpt, "-p", "tied-peaks", "-n", 16, "--device", "cpu")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "outputs" / "run" / "score" / "score.json").read_text())
    scored = report["methods"]["tied-peaks"]["localization"]["pointing"]["mean"]
    with Dump.open(next((tmp_path / "outputs" / "dumps").glob("*.h5"))) as dump:
        cov = LO.patch_coverage(np.asarray(dump.masks[:16]), dump.layout.grid)
    hit = cov.reshape(16, -1)[:, [0, -1]] >= 0.5                      # the two peaks
    assert summary["pointing_game"] == pytest.approx(hit.mean(), abs=1e-4)
    assert scored == pytest.approx(summary["pointing_game"], abs=1e-4)


def plotly_figure(html: str) -> tuple[list[dict], dict]:
    """The traces and layout a page hands to Plotly.newPlot (its figure JSON)."""
    rest = html[html.index("Plotly.newPlot(") + len("Plotly.newPlot("):]
    rest = rest[rest.index(",") + 1:].lstrip()           # after the div's id
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(rest)
    layout, _ = decoder.raw_decode(rest[end:].lstrip()[1:].lstrip())
    return data, layout


def test_one_colour_per_map_in_every_panel_of_the_png_and_html(shapes_ckpt, tmp_path,
                                                               monkeypatch):
    """The legend tells the truth: every trace of a name has that name's colour in every
    panel (a second panel once drew rollout in the random order's colour), the same colour
    in the PNGs; every panel has axis titles; no PNG text leaves its canvas."""
    from matplotlib.colors import to_hex

    from figure_text import saved_figures
    monkeypatch.chdir(tmp_path)
    with saved_figures() as figures:
        res = run("score", shapes_ckpt, "-p", "rollout", "-p", "grad-rollout", "-n", 6,
                  "--device", "cpu")
    assert res.exit_code == 0, res.output
    out = tmp_path / "outputs" / "run" / "score"
    data, layout = plotly_figure((out / "score.html").read_text())

    def colour(trace):
        return (trace.get("line") or {}).get("color") or (trace.get("marker") or {}).get("color")
    lines = [t for t in data if t["type"] == "scatter"]
    legend = {t["legendgroup"]: colour(t) for t in lines if t.get("showlegend", True)}
    assert {"rollout", "grad-rollout", "random order", "centre", "brightness", "edges"} <= set(legend)
    assert len(legend) == len({t["legendgroup"] for t in lines})     # one entry a name
    assert len(set(legend.values())) == len(legend), legend         # each its own colour
    for t in lines:
        assert colour(t) == legend[t["legendgroup"]], t["name"]
        assert t.get("error_y", {}).get("color", colour(t)) == colour(t), t["name"]
    assert {t["xaxis"] for t in lines if t["legendgroup"] == "rollout"} == {"x", "x2", "x3"}
    bars = [t for t in data if t["type"] == "bar"]
    assert bars and all(c == legend.get(x, c) for t in bars
                        for x, c in zip(t["x"], t["marker"]["color"]))
    assert [layout[a]["title"]["text"] for a in ("xaxis", "yaxis3")] == [
        "fraction of patches removed", "Spearman ρ with the trained map"]
    assert all(layout[f"{a}axis{k}"]["title"]["text"] for a in "xy" for k in ("", 2, 3, 4))

    png = {}
    for f in figures:
        for ax in f.figure.axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                line = handle.lines[0] if hasattr(handle, "lines") else handle
                png.setdefault(label.split(" (")[0], set()).add(to_hex(line.get_color()))
    assert {name: c.pop() for name, c in png.items() if len(c) == 1} == \
        {name: legend[name] for name in png}
    assert [f"{f.name}: {p}" for f in figures for p in f.problems] == []
    # the randomisation plot's floor is below every point and interval end
    report = json.loads((out / "score.json").read_text())
    lowest = min(s["rho"]["ci95"][0] for m in report["methods"].values()
                 for s in m["randomization"]["steps"])
    rand = next(f.figure for f in figures if f.name == "randomization.png")
    assert rand.axes[0].get_ylim()[0] <= min(lowest, -0.2)


def test_the_randomisation_floor_follows_the_lowest_interval():
    from vitscope.score.outputs import rho_floor
    assert rho_floor(0.3) == rho_floor(-0.1) == -0.2
    assert rho_floor(-0.29) == -0.4 and rho_floor(-0.21) == -0.3
    assert rho_floor(-1.0) == -1.05

