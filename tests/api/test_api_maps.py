"""The API's maps are the plugins' maps: every map method, on the same images, equal to the
`maps` the plugin saves in results.npz (exactly, on a float32 dump; within float16 precision
on the fp16 dump `vitscope analyze` makes), and index.html is the one `analyze` writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vitscope
from vitscope.methods import METHODS

from conftest import SHIPPED, timm_vit

MAP_METHODS = [m for m, method in METHODS.items() if not method.needs_model]
# a setting other than the defaults for each, so the options reach the arithmetic
OPTIONS = {"rollout": {"discard_ratio": 0.5, "fusion": "max"}, "grad-rollout": {"start_layer": 1},
           "attn-grad": {"layer": 1}, "gradcam": {"block": 2},
           **{cam: {"block": 2} for cam in ("gradcam-pp", "hirescam", "layercam", "eigencam")}}


def saved_maps(run: Path, folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(run / folder / "results.npz") as f:
        return f["maps"], f["image_indices"], f["target"]


def assert_same(saved: np.ndarray, mine: np.ndarray, rtol: float) -> None:
    assert saved.shape == mine.shape
    scale = np.abs(mine).max()
    assert scale > 0
    np.testing.assert_allclose(saved, mine, rtol=0, atol=rtol * scale)


def test_api_maps_equal_the_plugins_maps_on_a_float32_dump(tmp_path, images):
    """ex.save renders the plugins on a float32 dump of the same images: the maps each saves
    are ex.maps to 1e-6, for every map method, with options; index.html links them."""
    labels = [Path(p).name.split("_")[0] for p in images]
    ex = vitscope.explain(SHIPPED, images, methods=MAP_METHODS, options=OPTIONS,
                          target="label")
    assert set(ex.maps) == set(MAP_METHODS) and list(ex.labels) != [-1] * len(images)
    assert [ex.classes[t] for t in ex.targets] == labels        # labelled by file name
    index = ex.save(tmp_path / "run", interactive=False)
    page = index.read_text()
    for name in MAP_METHODS:
        folder = name + "@" + ",".join(f"{k}={v}" for k, v in sorted(OPTIONS[name].items()))
        assert (tmp_path / "run" / folder).is_dir(), sorted(p.name for p in (tmp_path / "run").iterdir())
        maps, indices, target = saved_maps(tmp_path / "run", folder)
        assert_same(maps, ex.maps[name], 1e-6)
        assert list(indices) == list(range(len(images)))           # the images in order
        assert np.array_equal(target, ex.targets)
        assert name in page and any(f.suffix == ".png" for f in (tmp_path / "run" / folder).iterdir())


def test_api_maps_match_vitscope_analyze_within_fp16(tmp_path, images, monkeypatch):
    """The CLI on the same files (an fp16 dump, its own image order) gives the same maps
    to fp16 precision, for every map method at its defaults."""
    from vitscope.cli import main
    monkeypatch.chdir(tmp_path)
    args = ["analyze", str(SHIPPED), "-o", "run", "--static", "--device", "cpu"]
    for p in images:
        args += ["--image", p]
    for name in MAP_METHODS:
        args += ["-p", name]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ex = vitscope.explain(SHIPPED, images, methods=MAP_METHODS)
    for name in MAP_METHODS:
        maps, indices, target = saved_maps(tmp_path / "run", name)
        assert np.array_equal(target, ex.targets[indices])
        assert_same(maps, ex.maps[name][indices], 5e-3)


def test_a_foreign_model_saves_what_it_explains(tmp_path, pixels):
    """A timm object: its maps from the API and from its plugins agree too."""
    model = timm_vit()
    ex = vitscope.explain(model, pixels, methods=["grad-rollout", "gradcam"], target=3)
    assert list(ex.targets) == [3] * 4 and ex.target_spec == "3"
    ex.save(tmp_path / "run", static=False)
    for name in ("grad-rollout", "gradcam"):
        maps, _, target = saved_maps(tmp_path / "run", name)
        assert_same(maps, ex.maps[name], 1e-6)
        assert list(target) == [3] * 4
        assert (tmp_path / "run" / name / f"{name}.html").is_file()
