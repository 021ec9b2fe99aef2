"""What `vitscope.explain` returns (`Explanation`) and what its `score()` returns (`Evidence`).

Both display themselves in a notebook (`_repr_html_`, `_repr_png_`), hold their numbers as
numpy arrays and plain dicts, and write the same files the CLI writes: `Explanation.save`
renders the plugins of its methods into a run folder with index.html, exactly as `vitscope
analyze` does; `Evidence.save` writes what `vitscope score` writes (score.json, figures).
"""
from __future__ import annotations

import dataclasses
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitscope.api import display as D
from vitscope.errors import ConfigError, PluginError
from vitscope.render import figures as F

SHOWN = 8            # images drawn inline (all are in .maps; .figure(images=...) picks others)


class Explanation:
    """Maps of N images by one or more methods, with the model's outputs beside them.

    maps       {method: N×h×w float32} on the patch grid (`layout.grid`), higher = more relevant
    per_layer  {method: N×L×h×w} the map up to each layer (rollouts), where a method has one
    layout     the token layout (prefix tokens, patch grid, patch and image size)
    targets    N int64: the class each map explains (-1: a model without a class head)
    probs      N×C softmax probabilities (None for a model without a class head)
    logits, preds, labels, images (N×H×W×3 uint8, as the model saw them), classes
    """

    def __init__(self, source, model, batch, methods, settings, given, run, target) -> None:
        self._source, self._batch, self._methods = source, batch, list(methods)
        self.model_name, self.family = model.name, model.family
        self.classes = list(model.classes)
        self.layout, self.depth = model.layout, model.depth
        self.methods = [m.name for m in methods]
        self.options = {k: dict(v) for k, v in settings.items()}
        self._given = {k: dict(v) for k, v in given.items()}
        self.maps = dict(run.maps)
        self.per_layer = dict(run.steps)
        self.logits = run.logits
        self.targets = run.targets
        self.batch_size = run.batch_size
        # a target that is no class (vitscope.capture.objective): the logits are its scores,
        # which name themselves; zero-shot ones over class names predict, others do not
        from vitscope.capture.objective import Objective
        self._objective = target if isinstance(target, Objective) else None
        zero_shot = self._objective is not None and self._objective.kind == "text-classes"
        self.target_names = list(self._objective.names) if self._objective is not None else None
        if zero_shot:
            self.classes = list(self._objective.names)
        self.headless = (model.num_classes == 0 or self._objective is not None) and not zero_shot
        if self.headless:
            self.probs, self.preds = None, np.full(len(batch), -1, np.int64)
        else:
            z = self.logits - self.logits.max(axis=1, keepdims=True)
            e = np.exp(z)
            self.probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
            self.preds = self.logits.argmax(axis=1).astype(np.int64)
        self.labels = batch.labels
        self.images = batch.pixels
        self.target_spec = target if isinstance(target, str) and target in ("pred", "label") \
            else str(target) if isinstance(target, (int, np.integer)) and not isinstance(target, bool) \
            else self._objective.spec if self._objective is not None else "explicit"

    # the names vitscope.render.figures.captions reads
    @property
    def target(self) -> np.ndarray:
        return self.targets

    @property
    def file_names(self) -> list[str] | None:
        return self._batch.file_names

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (f"Explanation({len(self)} images, methods: {', '.join(self.methods)}; target: "
                f"{self.target_spec}; {self.model_name})")

    def captions(self, k: int | None = None) -> list[str]:
        """Each image's caption, as the plugins' figures write it (file, label, prediction,
        the class explained)."""
        k = len(self) if k is None else k
        return F.captions(self, k, target=not self.headless or self._objective is not None)

    # ------------------------------------------------------------------------- display

    def figure(self, methods: str | Sequence[str] | None = None,
               images: Sequence[int] | slice | None = None, scale: str = "tile"):
        """A matplotlib figure: each image, then each method's map and overlay. `images`:
        which (indices or a slice; default the first 8); `scale`: "tile" or "shared"."""
        names = self.methods if methods is None else [methods] if isinstance(methods, str) \
            else list(methods)
        unknown = [m for m in names if m not in self.maps]
        if unknown:
            raise ConfigError(f"This explanation has no maps of {', '.join(unknown)}; it has "
                              f"{', '.join(self.methods)}.")
        if scale not in ("tile", "shared"):
            raise ConfigError(f"scale must be 'tile' or 'shared', got {scale!r}.")
        index = np.arange(len(self))[slice(0, SHOWN) if images is None else images] \
            if images is None or isinstance(images, slice) else np.asarray(images, int)
        captions = np.asarray(self.captions(), dtype=object)[index]
        return D.maps_figure(self.images[index], {m: self.maps[m][index] for m in names},
                             list(captions), title=self._title(), scale=scale)

    def show(self, **kwargs) -> None:
        """Draw `figure(**kwargs)` with matplotlib."""
        self.figure(**kwargs)
        D.show()

    def _title(self) -> str:
        return f"{self.model_name} · target: {self.target_spec}"

    def _repr_png_(self) -> bytes:
        # Jupyter asks for every format it knows (HTML and PNG): drawn once, kept
        if getattr(self, "_png", None) is None:
            self._png = D.png_bytes(self.figure())
        return self._png

    def _repr_html_(self) -> str:
        rows = []
        for i in range(len(self)):
            name = (self.file_names or [""] * len(self))[i]
            row = [i, name, _name(self.classes, self.labels[i])]
            if not self.headless:
                p, t = self.preds[i], self.targets[i]
                row += [f"{_name(self.classes, p)} ({self.probs[i, p]:.1%})",
                        f"{_name(self.classes, t)} ({self.probs[i, t]:.1%})"]
            rows.append(row)
        header = ["#", "file", "label"] + ([] if self.headless else ["prediction", "explains"])
        more = (f"<div class='note'>Drawn: the first {SHOWN} of {len(self)} images "
                f"(.figure(images=...) draws others).</div>" if len(self) > SHOWN else "")
        body = (D.img_tag(self._repr_png_(), "maps") + more + D.table(header, rows, (0,)) +
                f"<div class='note'>{D.esc(self._hint())}</div>")
        return D.block(f"vitscope.explain · {self.model_name} · {len(self)} images · "
                       f"methods: {', '.join(self.methods)} · target: {self.target_spec}", body)

    def _hint(self) -> str:
        grid = "×".join(map(str, self.layout.grid))
        return (f".maps[method] holds the N×{grid} maps; .score() measures them; "
                f".save(folder) writes the figures and index.html of `vitscope analyze`.")

    # ---------------------------------------------------------------------- evidence

    def score(self, *, perturbation: str = "drop", seed: int = 0, batch_size: int = 256,
              draws: int = 5, echo=None) -> "Evidence":
        """Faithfulness (deletion and insertion beside a random order and image-only
        baselines), the model-randomisation test, and localisation where the images have
        object masks, each with a bootstrap 95% CI over images: what `vitscope score`
        computes, on these maps and images (vitscope.score.run.evaluate_maps)."""
        from vitscope.api.capture import run_maps
        from vitscope.score.run import evaluate_maps
        if self.headless and self._objective is None:
            raise ConfigError("score() measures how the target class's probability falls as "
                              "patches are removed; this model has no class head.")
        if len(self) < 2:
            raise ConfigError("score() gives means with confidence intervals over images; "
                              "explain at least 2 images (20 or more for useful intervals).")
        b = self._batch
        info = {"checkpoint": self.model_name, "checkpoint_sha256": "", "data": b.description,
                "split": b.split, "images": len(self), "target": self.target_spec,
                "dump": "in memory (vitscope.explain)", "classes": self.classes,
                "grid": list(self.layout.grid)}
        with self._source.open() as m:
            x = b.model_inputs(m.mean, m.std, device=m.device, dtype=m.dtype)

            objective = self._objective

            def recompute(some_model, targets) -> dict[str, np.ndarray]:
                other = dataclasses.replace(m, hooked=some_model)
                if objective is None:
                    return run_maps(other, b, self._methods, self.options, np.asarray(targets),
                                    batch_size=self.batch_size).maps
                # the same target on this model: its own reference or text embeddings
                fresh = type(objective)(objective.kind, objective.argument)
                fresh.prepare(some_model, objective.load, objective.names)
                with fresh.applied(some_model):
                    return run_maps(other, b, self._methods, self.options, fresh,
                                    batch_size=self.batch_size).maps

            if objective is not None:
                info["score"] = objective.names[0] if objective.kind != "text-classes" else \
                    "zero-shot logit of the explained class"
            report = evaluate_maps(m.hooked, x, self.images, self.targets, self.maps,
                                   m.layout, b.masks, recompute, info,
                                   perturbation=perturbation, batch_size=batch_size, seed=seed,
                                   draws=draws, echo=echo or (lambda s: None),
                                   objective=objective)
        return Evidence(report)

    # -------------------------------------------------------------------------- files

    def save(self, out_dir: str | Path, *, plugins: Sequence[str] | dict = (),
             static: bool = True, interactive: bool = True, format: str = "png",
             echo=None) -> Path:
        """Render the plugins of this explanation's methods (and `plugins`: more names, or
        {name: options}) into `out_dir` as `vitscope analyze` does: one folder per plugin,
        manifest.json and index.html. The images go through the model once more, into a
        temporary float32 dump of everything the plugins read; the maps the plugins save are
        checked against `.maps`. Returns the path of index.html."""
        from vitscope.analyze.registry import discover
        from vitscope.analyze.run import render_plugins, union_requires
        from vitscope.capture import capture
        extra = dict(plugins) if isinstance(plugins, dict) else {p: {} for p in plugins}
        registry = discover()
        entries = registry.select([*self.methods, *extra])
        broken = [e.problem() for e in entries if not e.ok]
        if broken:
            raise PluginError(broken[0])
        values = {**self._given}
        if extra:
            from vitscope.api.options import plugin_options
            for name, opts in extra.items():
                values[name] = plugin_options(registry.get(name), opts)
        out_dir = Path(out_dir)
        hooks = union_requires(entries, values)
        with tempfile.TemporaryDirectory(prefix="vitscope-explain-") as tmp, \
                self._source.open() as m:
            target = self._objective if self._objective is not None else \
                self.targets if self.target_spec == "explicit" else (
                int(self.target_spec) if self.target_spec.isdigit() else self.target_spec)
            dump = capture(m.hooked, self._batch.dataset(m.classes), Path(tmp) / "explain.h5",
                           hooks, normalize=(m.mean, m.std), classes=m.classes,
                           dtype="float32", compression="none", seed=None, target=target,
                           derive=False, batch_size=self.batch_size or None, force=True)
            results = render_plugins(dump, entries, out_dir, values, static=static,
                                     interactive=interactive, fmt=format, echo=echo,
                                     info={"checkpoint": self.model_name,
                                           "data": self._batch.description,
                                           "dump": "in memory (vitscope.explain), not kept"})
        failed = [f"{r.name}: {r.error}" for r in results if not r.ok]
        if failed:
            raise PluginError(f"Saving to '{out_dir}' failed for {'; '.join(failed)}.")
        self._check_saved(out_dir, results)
        return out_dir / "index.html"

    def _check_saved(self, out_dir: Path, results) -> None:
        """The plugins' maps are these maps (same images, same arithmetic, a float32 dump):
        a difference means the model changed since explain() ran."""
        for r in results:
            path = out_dir / r.key / "results.npz"
            if r.name not in self.maps or not path.is_file():
                continue
            with np.load(path) as f:
                saved = f["maps"] if "maps" in f.files else None
            mine = self.maps[r.name]
            if saved is None or saved.shape != mine.shape:
                continue
            scale = max(float(np.abs(mine).max()), 1e-12)
            diff = float(np.abs(saved - mine).max()) / scale
            if diff > 1e-3:
                warnings.warn(f"The {r.name} maps saved in {path.parent} differ from .maps by "
                              f"{diff:.2g} of their maximum; did the model change since "
                              f"explain() ran?", stacklevel=3)


def _name(classes: list[str], index) -> str:
    index = int(index)
    if index < 0:
        return "—"
    return classes[index] if index < len(classes) else f"#{index}"


class Evidence:
    """What `Explanation.score()` measured: `report` is the dict `vitscope score` writes as
    score.json (Estimates: mean with a 95% CI over images); printing it gives the terminal
    tables, and a notebook shows the tables as HTML."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    @property
    def ranking(self) -> list[str]:
        return list(self.report["ranking"]["order"])

    def __str__(self) -> str:
        from vitscope.score.outputs import tables
        return tables(self.report)

    def __repr__(self) -> str:
        return f"Evidence({len(self.ranking)} methods on {self.report['images']} images)"

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON data (what score.json holds)."""
        from vitscope.score.run import jsonable
        return jsonable(self.report)

    def save(self, out_dir: str | Path) -> list[Path]:
        """score.json, score.txt, the PNG figures and score.html, as `vitscope score` writes."""
        from vitscope.score.outputs import write
        return write(self.report, Path(out_dir))

    def _repr_html_(self) -> str:
        from vitscope.score.outputs import verdict_text
        r = self.report
        methods, base = r["methods"], r["baselines"]["faithfulness"]
        rows = []
        for name in [*self.ranking, *base]:
            f = methods[name]["faithfulness"] if name in methods else base[name]
            beats = "—" if "beats_random_deletion" not in f else ", ".join(
                w for w, k in (("deletion", "beats_random_deletion"),
                               ("insertion", "beats_random_insertion")) if f[k]) or "neither"
            rand = methods[name]["randomization"] if name in methods else None
            rows.append([name if name in methods else f"{name} (baseline)",
                         f["deletion_auc"].text(), f["insertion_auc"].text(), beats,
                         "—" if rand is None else rand["steps"][-1]["rho"].text(2),
                         "—" if rand is None else verdict_text(methods[name])])
        header = ["map", "deletion AUC ↓ [95% CI]", "insertion AUC ↑ [95% CI]",
                  "beats the random order on", "ρ after randomising all", "randomisation"]
        body = D.table(header, rows)
        loc = r["baselines"]["localization"]
        if loc:
            lrows = [[n, methods[n]["localization"]["mass_in_mask"].text(),
                      methods[n]["localization"]["pointing"].text()] for n in self.ranking]
            lrows += [[f"{n} (baseline)", v["mass_in_mask"].text(), v["pointing"].text()]
                      for n, v in loc.items()]
            body += D.table(["map", "mass in mask ↑", "pointing game ↑"], lrows)
        notes = []
        for name in self.ranking:
            missing = methods[name]["not_beaten"]
            notes.append(f"{methods[name]['rank']}. {name}: " + (
                "beats every baseline" if not missing else "does not beat " + "; ".join(
                    f"{b} ({', '.join(w)})" for b, w in missing.items())))
        body += "".join(f"<div>{D.esc(t)}</div>" for t in notes)
        body += (f"<div class='note'>{D.esc(r['perturbation'])} perturbation, "
                 f"{r['images']} images; \"beats\": the paired 95% CI of the per-image "
                 f"difference excludes 0. print() gives the full tables.</div>")
        return D.block(f"vitscope score · {r['checkpoint']} · target: {r['target']}", body)
