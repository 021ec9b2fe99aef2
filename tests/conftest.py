"""Shared fixtures: real, tiny models and checkpoints (no mocks of the model)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))

from vitscope.model.checkpoint import save_checkpoint  # noqa: E402
from vitscope.model.vit import ModelConfig, ViT  # noqa: E402

TINY = dict(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
            num_classes=5)


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_repository():
    """Tests write under tmp_path only: a command run with a default output location from the
    repository root would leave results in its outputs/ or runs/ (and in a user's checkout)."""
    root = Path(__file__).resolve().parent.parent

    def listing():
        return {str(p.relative_to(root)) for d in ("outputs", "runs") if (root / d).is_dir()
                for p in (root / d).rglob("*")}
    before = listing()
    yield
    assert listing() == before, f"tests wrote into the repository: {sorted(listing() - before)}"


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return ModelConfig(**TINY)


@pytest.fixture
def tiny_vit(tiny_cfg) -> ViT:
    torch.manual_seed(0)
    return ViT(tiny_cfg).eval()


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_vit):
    return save_checkpoint(tmp_path / "tiny.pt", tiny_vit, classes=list("abcde"),
                           metrics={"epoch": 3, "val_acc": 0.5})


@pytest.fixture
def shapes_ckpt(tmp_path):
    """A tiny ViT checkpoint whose train_config names a small `shapes` set (dump/capture tests)."""
    from vitscope.data.shapes import CLASSES
    torch.manual_seed(0)
    model = ViT(ModelConfig(**{**TINY, "num_classes": len(CLASSES)})).eval()
    return save_checkpoint(tmp_path / "run" / "best.pt", model, classes=list(CLASSES),
                           train_config={"data": "shapes:val=48", "image_size": 16,
                                         "normalize": {"mean": [0.4, 0.5, 0.6],
                                                       "std": [0.2, 0.25, 0.3]}})


@pytest.fixture(scope="session")
def small_dump(tmp_path_factory):
    """(dump path, checkpoint path): a real 12-image dump of a tiny random ViT on `shapes`
    (masks included), shared by the plugin and analyze tests."""
    from vitscope.testing import make_dump
    root = tmp_path_factory.mktemp("small_dump")
    ckpt = root / "tiny" / "best.pt"
    return make_dump(root / "small.h5", n=12, checkpoint=ckpt), ckpt


# ------------------------------------------------------------------- headless Chromium
# tests/browser.py drives a real Chromium. Without one the tests that ask for it FAIL (CI
# installs it); VITSCOPE_SKIP_BROWSER_TESTS=1 skips them on a dev machine instead.

@pytest.fixture(scope="session")
def browser_factory():
    """browser_factory(*extra_flags) -> a started Browser, e.g. browser_factory("--disable-webgl").
    Browsers with the same flags are shared for the session and closed at its end."""
    from browser import SKIP_ENV, Browser, BrowserUnavailable, find_chromium
    started: dict[tuple[str, ...], Browser] = {}
    try:
        binary = find_chromium()
    except BrowserUnavailable as e:
        binary, missing = None, str(e)

    def make(*flags: str) -> Browser:
        if binary is None:
            if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
                pytest.skip(f"{SKIP_ENV} is set: {missing}")
            pytest.fail(missing, pytrace=False)
        if flags not in started:
            started[flags] = Browser(flags, binary=binary)
        return started[flags]

    yield make
    for b in started.values():
        b.close()


@pytest.fixture
def browser(browser_factory):
    """The shared headless Chromium with the default flags (tests/browser.py)."""
    return browser_factory()
