"""Training-time analysis: `vitscope train --analyze-every N` renders plugins on a small fixed dump
after every N epochs, into outputs/<run>/epoch_<k>/ (the frames of `vitscope animate`)."""
from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitscope._internal.folders import make_output_dir
from vitscope._internal.text import first_line
from vitscope.analyze.run import render_plugins, union_requires
from vitscope.analyze.staging import ERROR_LOG, MANIFEST, MARKER, Staging  # noqa: F401 (MARKER re-exported)
from vitscope.errors import PluginError
from vitscope.analyze.registry import discover


def epoch_analyses_dir(run_name: str, out_root: str | Path = "outputs") -> Path:
    """Where `vitscope train --analyze-every` renders: <out_root>/<run>/epoch_NNN/."""
    return Path(out_root) / run_name


def make_epoch_analyzer(plugins: list[str], dataset, *, run_name: str, classes: list[str],
                        normalize: tuple[list, list], out_root: str | Path = "outputs",
                        n_images: int = 16, static: bool = True, interactive: bool = True,
                        echo: Callable[[str], None] | None = None
                        ) -> Callable[[Any, int, Any], list[Path]]:
    """For `vitscope train --analyze-every N --plugin NAME`: a function
    `analyze(model, epoch, run_dir) -> files` that captures the same `n_images` images of
    `dataset` (a seeded sample) with the model as it is now and renders `plugins` into
    `<out_root>/<run_name>/epoch_XXX/`. Unknown or broken plugins fail here, before training.
    A plugin failing at some epoch is reported through `echo` (default: stderr), never raised.
    """
    registry = discover()
    entries = registry.select(plugins)
    for e in entries:
        if not e.ok:
            raise PluginError(e.problem())
    patterns = union_requires(entries)
    if not isinstance(n_images, int) or n_images < 1:
        raise PluginError(f"n_images must be a positive number of images, got {n_images!r}.")
    say = echo or (lambda msg: print(msg, file=sys.stderr))
    root = epoch_analyses_dir(run_name, out_root)
    make_output_dir(root, PluginError, "run from a folder where outputs/ can be written")

    def analyze(model, epoch: int, run_dir=None) -> list[Path]:
        try:
            return _analyze(model, epoch, run_dir)
        except Exception as e:   # a full disk at epoch 40 must not end the training run
            say(f"epoch {epoch}: the analyses failed ({type(e).__name__}: {first_line(e)}); "
                f"training goes on")
            return []

    def _analyze(model, epoch: int, run_dir=None) -> list[Path]:
        from vitscope.capture import capture
        from vitscope.model.checkpoint import _unwrap

        epoch_dir = root / f"epoch_{int(epoch):03d}"
        with tempfile.TemporaryDirectory(prefix="vitscope-epoch-") as tmp:
            dump_path = capture(_unwrap(model), dataset, Path(tmp) / "epoch.h5", patterns,
                                ckpt=None, normalize=normalize, classes=list(classes),
                                limit=min(n_images, len(dataset)), batch_size=n_images,
                                progress=False, seed=0)
            info = {"checkpoint": f"{run_dir or run_name} (model at epoch {epoch}, in training)",
                    "epoch": int(epoch)}
            if run_dir is not None:   # its metrics.jsonl: `vitscope animate` labels frames
                info["run_dir"] = str(Path(run_dir).absolute())
            results = render_plugins(dump_path, entries, epoch_dir, static=static,
                                     interactive=interactive, info=info,
                                     assets_dir=root)   # plotly.js once for all epochs
        for r in results:
            if not r.ok:
                say(f"epoch {epoch}: plugin {r.name} failed: {r.error}")
        return [f for r in results for f in r.files] + [epoch_dir / "index.html"]

    return analyze
