"""The whole evaluation of a checkpoint's map plugins: what `vitscope score` runs.

    report = score_checkpoint("runs/quickstart/best.pt", registry.select(["rollout"]), images=256)

1. One dump with what the plugins read (reused from outputs/dumps like `analyze`), each
   plugin rendered on it (no figures), its maps read through the map contract.
2. Faithfulness: deletion and insertion curves of each map, of a random order and of the
   image-only and centre baselines, on the same images and targets.
3. Randomisation: for each step of the cascade, a dump of the randomised model (same images,
   the trained model's targets), the plugins rendered again, ρ with the trained maps.
4. Localisation (data with masks): mass in mask and pointing game of maps and baselines.
Every number is a mean over images with a bootstrap 95% CI; "beats" needs the CI of the paired
per-image difference on the better side of 0.

Steps 2-4 are `evaluate_maps`, given the maps and a way to recompute them on a randomised
model: here through dumps and the plugins, in the Python API (`Explanation.score()`) through
in-memory captures and the same map methods.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitscope.errors import PluginError
from vitscope.score import classes as CL
from vitscope.score import faithfulness as FA
from vitscope.score import localization as LO
from vitscope.score import randomization as RA
from vitscope.score.stats import (BOOTSTRAP, Estimate, better, bootstrap, constant, paired, spearman,
                                  tie_fraction, two_level, wilson)

RANDOM = "random order"
FAITHFULNESS_BASELINES = ("centre", "brightness", "edges")   # uniform's order is random
INTERVALS = ("95% intervals. Means over images: BCa bootstrap over images "
             "(scipy.stats.bootstrap), paired for differences; proportions (pointing game): "
             "Wilson score interval; randomisation: percentile bootstrap resampling the "
             "weight draws and the images independently (two levels).")
CONTROL = "brightness"   # the image-only map of the randomisation table: ρ = 1 by construction


def check_map_plugins(entries) -> None:
    """PluginError, in one sentence, for a broken plugin or one that produces no maps."""
    from vitscope.plugin.maps import produces_maps
    for e in entries:
        if not e.ok:
            raise PluginError(e.problem())
    plain = [e.name for e in entries if not produces_maps(e.plugin)]
    if plain:
        raise PluginError(f"Plugin{'s' if len(plain) > 1 else ''} {', '.join(repr(p) for p in plain)} "
                          f"make{'s' if len(plain) == 1 else ''} no maps (no produces=('maps',)); "
                          f"score evaluates map plugins (docs/plugins.md, 'Map plugins'); "
                          f"`vitscope plugins` lists what each produces.")


def score_checkpoint(ckpt_path: str | Path, entries, values: dict | None = None, *,
                     images: int = 256, data: str | None = None, split: str = "val",
                     target: str | int = "pred", perturbation: str = "drop",
                     batch_size: int = 256, device=None, seed: int = 0,
                     dtype: str = "float32", draws: int = RA.DRAWS,
                     tie_draws: int = FA.TIE_DRAWS, also: Sequence[str] = (),
                     echo: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Score the map plugins `entries` on `images` images of the checkpoint's data. Returns
    the report (what score.json holds) plus `_arrays` with per-image numbers for figures.
    `dtype` stores activations and gradients of every capture (float32: nothing underflows;
    float16: what the report's `precision` says was lost). `also`: further perturbations whose
    deletion and insertion curves are measured on the same orders (the report's
    `faithfulness_by_perturbation`); `perturbation` alone ranks."""
    import torch

    from vitscope._internal.devices import resolve_device
    from vitscope.capture import (CAPTURE_SEED, DEFAULT_BATCH, capture, check_data,
                                  dataset_for, ensure_dump, file_sha256)
    from vitscope.analyze.run import map_options, union_requires
    from vitscope.capture.objective import Objective, reference_loader
    from vitscope.model.checkpoint import load_checkpoint
    from vitscope.data import normalization, to_model_input
    from vitscope.dump import Dump

    check_map_plugins(entries)
    t_all = time.perf_counter()
    seconds: dict[str, float] = {}
    ckpt = load_checkpoint(ckpt_path)
    check_data(ckpt, data)   # before any work: the randomisation reads the data again
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = ckpt.build_model().to(dev).eval()
    for p in (perturbation, *also):
        FA.check_perturbation(model, p)
    values = values or {}
    patterns = union_requires(entries, values)
    run_options = map_options(entries, values)   # --opt of the methods run at capture
    # captures: memory-sized (capture.auto_batch_size, at most 64) unless asked for fewer
    capture_batch = None if batch_size >= DEFAULT_BATCH else batch_size

    t0 = time.perf_counter()
    dump_path, reused = ensure_dump(ckpt.path, data=data, split=split, n=images, hooks=patterns,
                                    batch_size=capture_batch, device=dev, target=target,
                                    dtype=dtype, grad_dtype=dtype, map_options=run_options)
    echo(f"{'Reusing' if reused else 'Captured'} dump {dump_path}")
    with tempfile.TemporaryDirectory(prefix="vitscope-score-") as tmp, Dump.open(dump_path) as dump:
        n = min(images, len(dump))
        maps = {name: m.maps for name, m in
                _render_maps(dump, entries, values, n, Path(tmp) / "trained").items()}
        pixels = np.asarray(dump.images[:n])
        tgt = np.asarray(dump.target[:n])
        indices = np.asarray(dump.indices[:n])
        layout = dump.layout
        masks = np.asarray(dump.masks[:n]) if dump.masks is not None else None
        info = {"checkpoint": str(ckpt.path), "checkpoint_sha256": file_sha256(ckpt.path),
                "data": dump.attrs.get("dataset"), "split": dump.attrs.get("split"),
                "images": n, "target": dump.target_spec, "dump": str(Path(dump_path).resolve()),
                "classes": dump.classes, "grid": list(layout.grid),
                "precision": precision_of(dump, dtype)}
        if dump.model_maps:   # the options the methods that run the model ran with
            info["map_options"] = {m: dump.map_options(m) for m in dump.model_maps}
        if info["precision"]["warning"]:
            echo(info["precision"]["warning"])
        seconds["maps"] = time.perf_counter() - t0
        mean, std = normalization(ckpt)
        x = to_model_input(torch.from_numpy(pixels).to(dev), mean, std)
        dataset = dataset_for(ckpt, data, split)
        objective = target if isinstance(target, Objective) else None
        if objective is not None:   # what the curves follow: its score on this model
            objective.prepare(model, reference_loader(model, ckpt, mean, std, dev),
                              list(dump.classes) or list(dataset.classes))
            info["score"] = objective.names[0] if objective.kind != "text-classes" else \
                "zero-shot logit of the explained class"
        steps = iter(range(1 << 30))

        def recompute(some_model, targets) -> dict[str, np.ndarray]:
            """The plugins' maps on a dump of `some_model` (randomised, or the trained one
            explaining other classes): same images, the classes `targets`."""
            k = next(steps)
            explicit = np.full(len(dataset), -1, np.int64)
            explicit[indices] = targets
            path = capture(some_model, dataset, Path(tmp) / f"recompute-{k}.h5", patterns,
                           ckpt=None, normalize=(mean, std), classes=list(dump.classes),
                           limit=n, batch_size=capture_batch, device=dev,
                           seed=CAPTURE_SEED, force=True, dtype=dtype, grad_dtype=dtype,
                           map_options=run_options,
                           # the same target: its reference or texts from this model
                           target=explicit if objective is None else
                           Objective(objective.kind, objective.argument))
            with Dump.open(path) as rdump:
                if not np.array_equal(rdump.indices, indices):
                    raise PluginError("The randomised model's dump holds other images than the "
                                      "trained one's; this is a bug in vitscope score.")
                rmaps = _render_maps(rdump, entries, values, n, Path(tmp) / f"recompute-{k}")
            path.unlink()
            return {name: m.maps for name, m in rmaps.items()}

        report = evaluate_maps(model, x, pixels, tgt, maps, layout, masks, recompute, info,
                               perturbation=perturbation, batch_size=batch_size, seed=seed,
                               draws=draws, tie_draws=tie_draws, echo=echo, seconds=seconds,
                               objective=objective, also=also)
    seconds["total"] = time.perf_counter() - t_all
    report["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return report


def evaluate_maps(model, x, pixels: np.ndarray, target: np.ndarray,
                  maps: dict[str, np.ndarray], layout, masks: np.ndarray | None,
                  recompute: Callable[[Any, np.ndarray], dict[str, np.ndarray]],
                  info: dict[str, Any], *, perturbation: str = "drop", batch_size: int = 256,
                  seed: int = 0, draws: int = RA.DRAWS, tie_draws: int = FA.TIE_DRAWS,
                  echo: Callable[[str], None] = lambda s: None,
                  seconds: dict[str, float] | None = None, objective=None,
                  also: Sequence[str] = ()) -> dict[str, Any]:
    """Steps 2-4 of the module docstring for N×h×w `maps` (name -> array) of the images
    `x` (N×C×H×W model inputs on the model's device; `pixels` N×H×W×3 uint8) and the class
    each explains (`target`, N). `recompute(model, targets)` returns the same maps for a model
    (the trained one or a randomised copy) explaining `targets` (N class indices) on the same
    images. `draws` independent weight draws of the randomisation cascade; a map with tied
    patches is scored over `tie_draws` random tie orders. Returns the report; `seconds`, when
    given, receives the time of each step. `objective` (vitscope.capture.objective, prepared on
    `model`): the curves follow its raw score instead of a class probability, and class
    sensitivity is not measured (the objective's score has no other classes to compare)."""
    import torch

    seconds = {} if seconds is None else seconds
    n = len(pixels)
    target = np.asarray(target, np.int64)
    # ---- faithfulness
    t0 = time.perf_counter()
    target_t = torch.as_tensor(target, dtype=torch.long, device=x.device)
    rng = np.random.default_rng(seed)
    baselines = LO.baseline_maps(pixels, layout.grid)
    ranked = {**maps, **{b: baselines[b] for b in FAITHFULNESS_BASELINES}}
    ties = {name: tie_fraction(m) for name, m in ranked.items()}
    orders: dict[tuple[str, int], np.ndarray] = {}
    for name, m in ranked.items():
        # ties have no order: average over several random tie orders where there are any
        for k in range(tie_draws if ties[name].any() else 1):
            orders[(name, k)] = FA.relevance_order(m, rng)
    orders[(RANDOM, 0)] = FA.random_order(n, layout.num_patches, rng)
    perturber = FA.Perturber(model, layout, perturbation, objective)
    raw = FA.curves(perturber, x, target_t, orders, batch_size)
    curves = {name: FA.Curves.average([c for (other, _), c in raw.items() if other == name])
              for name in [*maps, RANDOM, *FAITHFULNESS_BASELINES]}
    seconds["faithfulness"] = time.perf_counter() - t0
    echo(f"faithfulness: {len(orders)} orders × {2 * (FA.STEPS - 1) + 2} steps on {n} images "
         f"({seconds['faithfulness']:.1f} s)")
    also_rows: dict[str, dict[str, dict]] = {}
    for p in dict.fromkeys(a for a in also if a != perturbation):   # the same orders, other pixels
        t0 = time.perf_counter()
        raw = FA.curves(FA.Perturber(model, layout, p, objective), x, target_t, orders, batch_size)
        also_rows[p] = faithfulness_rows(
            {name: FA.Curves.average([c for (other, _), c in raw.items() if other == name])
             for name in [*maps, RANDOM, *FAITHFULNESS_BASELINES]}, seed)
        seconds[f"faithfulness_{p}"] = time.perf_counter() - t0
        echo(f"faithfulness with {p}: {seconds[f'faithfulness_{p}']:.1f} s")

    # ---- randomisation: the cascade over `draws` independent weight draws
    t0 = time.perf_counter()
    rho: dict[str, dict[str, list[np.ndarray]]] = {}     # step -> method -> one N per draw
    for d in range(draws):
        for label, random_model in RA.cascade(model, RA.draw_seed(seed, d)):
            rmaps = recompute(random_model, target)
            for name in maps:
                rho.setdefault(label, {}).setdefault(name, []).append(
                    spearman(maps[name], rmaps[name]))
        echo(f"randomisation draw {d + 1}/{draws}, whole model random: " + "  ".join(
            f"{name} ρ={np.nanmean(r[-1]):.2f}" for name, r in rho[label].items()))
    rho_steps = [(label, {name: np.stack(v) for name, v in per.items()})
                 for label, per in rho.items()]
    seconds["randomization"] = time.perf_counter() - t0

    # ---- class sensitivity: the same model explaining other classes
    t0 = time.perf_counter()
    others = {} if objective is not None else \
        CL.other_classes(CL.logits_of(model, x, batch_size), target, seed)
    other_maps = {what: recompute(model, cls) for what, cls in others.items()}
    seconds["class_sensitivity"] = time.perf_counter() - t0
    echo(f"class sensitivity: maps of {', '.join(others) or 'no other class'} "
         f"({seconds['class_sensitivity']:.1f} s)")

    # ---- localisation
    t0 = time.perf_counter()
    coverage = LO.patch_coverage(masks, layout.grid) if masks is not None else None
    seconds["localization"] = time.perf_counter() - t0
    report = _report(info, maps, curves, rho_steps, baselines, coverage, perturbation, seed)
    report["randomization_draws"] = draws
    if also_rows:   # the same orders under other perturbations; `perturbation` ranks
        for name in maps:
            report["methods"][name]["faithfulness_by_perturbation"] = {
                p: rows[name] for p, rows in also_rows.items()}
        report["baselines"]["faithfulness_by_perturbation"] = {
            p: {b: rows[b] for b in (RANDOM, *FAITHFULNESS_BASELINES)}
            for p, rows in also_rows.items()}
    for name, entry in [*report["methods"].items(), *report["baselines"]["faithfulness"].items()]:
        if name in ties:
            faith = entry["faithfulness"] if "faithfulness" in entry else entry
            faith["tie_fraction"] = bootstrap(ties[name], seed)
            faith["tie_orders"] = tie_draws if ties[name].any() else 1
        if name in maps:
            entry["constant_maps"] = int(constant(maps[name]).sum())
            entry["class_sensitivity"] = CL.sensitivity(
                maps[name], {w: om[name] for w, om in other_maps.items()}, seed)
    return report


UNDERFLOW_WARN = 0.01      # a share of lost non-zero gradients worth a warning


def precision_of(dump, dtype: str) -> dict[str, Any]:
    """How the scored dump stores activations and gradients and what storing the gradients
    lost (shares of their non-zero values), with a warning sentence when it matters."""
    lost = dump.grad_precision() if dump.grad_hooks else None
    out: dict[str, Any] = {"dtype": dump.attrs.get("dtype", dtype),
                           "grad_dtype": dump.grad_dtype if dump.grad_hooks else None,
                           "grad_underflow": None if lost is None else lost["underflow"],
                           "grad_overflow": None if lost is None else lost["overflow"],
                           "grad_fp16_underflow": None if lost is None else lost["fp16_underflow"],
                           "warning": None}
    if lost is not None and (lost["underflow"] > UNDERFLOW_WARN or lost["overflow"] > 0):
        out["warning"] = (f"Warning: {lost['underflow']:.1%} of the non-zero gradients flushed "
                          f"to zero in {dump.grad_dtype} (and {lost['overflow']:.1%} overflowed); "
                          f"the gradient maps rest on what is left. Score with --dtype float32.")
    return out


def _render_maps(dump, entries, values, n, folder: Path):
    """Render each plugin on `dump` without figures and read its maps (the map contract)."""
    from vitscope.analyze.run import render_plugin
    from vitscope.plugin.maps import read_maps
    out = {}
    for e in entries:
        res = render_plugin(e, dump, folder, values.get(e.name), static=False, interactive=False,
                            limit=n)
        if not res.ok:
            raise PluginError(f"Plugin '{e.name}' failed on {dump.path.name}: {res.error}")
        out[e.name] = read_maps(folder / res.key, dump, e.name, n)
    return out


# ------------------------------------------------------------------------------- the report

def faithfulness_rows(curves: dict, seed: int) -> dict[str, dict]:
    """Per order (maps, the random order, the image-only baselines): deletion and insertion
    AUCs and curves with intervals, and each map against the random order and the baselines."""
    r_del, r_ins = curves[RANDOM].auc()
    faith_rows = {}
    for name, c in curves.items():
        d, i = c.auc()
        row = {"deletion_auc": bootstrap(d, seed), "insertion_auc": bootstrap(i, seed),
               "deletion_curve": [bootstrap(c.deletion[:, k], seed) for k in range(c.deletion.shape[1])],
               "insertion_curve": [bootstrap(c.insertion[:, k], seed) for k in range(c.insertion.shape[1])]}
        if name != RANDOM:
            row["deletion_vs_random"] = paired(d, r_del, seed)
            row["insertion_vs_random"] = paired(i, r_ins, seed)
            row["beats_random_deletion"] = better(row["deletion_vs_random"], higher_is_better=False)
            row["beats_random_insertion"] = better(row["insertion_vs_random"], higher_is_better=True)
        if name not in (RANDOM, *FAITHFULNESS_BASELINES):   # a map against the other orders too
            row["vs_baselines"] = {}
            for b in FAITHFULNESS_BASELINES:
                bd, bi = curves[b].auc()
                dd, di = paired(d, bd, seed), paired(i, bi, seed)
                row["vs_baselines"][b] = {"deletion": dd, "insertion": di,
                                          "beats_deletion": better(dd, False),
                                          "beats_insertion": better(di, True)}
        faith_rows[name] = row
    return faith_rows


def _report(info, maps, curves, rho_steps, baselines, coverage, perturbation, seed) -> dict:
    random = curves[RANDOM]
    methods: dict[str, dict] = {}
    arrays: dict[str, np.ndarray] = {"fractions": random.fractions}
    for name, c in curves.items():
        arrays[f"deletion/{name}"], arrays[f"insertion/{name}"] = c.deletion, c.insertion
    faith_rows = faithfulness_rows(curves, seed)

    loc_base: dict[str, dict] = {}
    loc_vals: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if coverage is not None:
        for b, m in baselines.items():
            loc_vals[b] = (LO.mass_in_mask(m, coverage), LO.pointing(m, coverage))
            loc_base[b] = {"mass_in_mask": bootstrap(loc_vals[b][0], seed),
                           "pointing": wilson(loc_vals[b][1])}
        loc_base["uniform"]["mask_area"] = bootstrap(coverage.mean(axis=(1, 2)), seed)

    for name, m in maps.items():
        entry: dict[str, Any] = {"faithfulness": faith_rows[name]}
        steps = []
        for label, rhos in rho_steps:
            both = two_level(rhos[name], seed)     # draws × images
            steps.append({"randomized": label, "rho": both.estimate, "draws": both.draws,
                          "per_draw_n": both.per_draw_n})
        last = steps[-1]["rho"].mean if steps else float("nan")
        verdict = ("failed" if last >= RA.RHO_SAME else "passed" if last < RA.RHO_CHANGED
                   else "inconclusive")
        entry["randomization"] = {"steps": steps, "verdict": verdict}
        # baseline -> the metrics on which this map does not beat it
        not_beaten: dict[str, list[str]] = {}
        faith = faith_rows[name]
        for curve in ("deletion", "insertion"):
            if not faith[f"beats_random_{curve}"]:
                not_beaten.setdefault(RANDOM, []).append(curve)
        for b, vs in faith["vs_baselines"].items():
            for curve in ("deletion", "insertion"):
                if not vs[f"beats_{curve}"]:
                    not_beaten.setdefault(b, []).append(curve)
        if coverage is not None:
            mass, point = LO.mass_in_mask(m, coverage), LO.pointing(m, coverage)
            vs = {}
            for b, (bm, bp) in loc_vals.items():
                dm, dp = paired(mass, bm, seed), paired(point, bp, seed)
                vs[b] = {"mass_in_mask": dm, "pointing": dp,
                         "beats_mass_in_mask": better(dm, True), "beats_pointing": better(dp, True)}
                for what, key in (("mass in mask", "beats_mass_in_mask"),
                                  ("pointing", "beats_pointing")):
                    if not vs[b][key]:
                        not_beaten.setdefault(b, []).append(what)
            entry["localization"] = {"mass_in_mask": bootstrap(mass, seed),
                                     "pointing": wilson(point), "vs": vs}
            arrays[f"mass_in_mask/{name}"], arrays[f"pointing/{name}"] = mass, point
        entry["not_beaten"] = not_beaten
        methods[name] = entry
        for label, rhos in rho_steps:
            arrays[f"rho/{name}/{label}"] = rhos[name]     # draws × images

    ranking = _rank(methods, coverage is not None)
    for k, name in enumerate(ranking["order"]):
        methods[name]["rank"] = k + 1
    pairs = _pairs(ranking["order"], curves, arrays, seed)
    return {"format": "vitscope-score", "version": 1, **info, "perturbation": perturbation,
            "steps": FA.STEPS, "bootstrap_resamples": BOOTSTRAP, "seed": seed,
            "intervals": INTERVALS,
            "methods": methods,
            "baselines": {"faithfulness": {b: faith_rows[b] for b in (RANDOM, *FAITHFULNESS_BASELINES)},
                          "localization": loc_base,
                          "randomization_control": {
                              "map": CONTROL, "rho": 1.0, "measured": False,
                              "note": "true by construction, not measured: an image-only map "
                                      "reads no weight, so no randomisation changes it"}},
            "cascade": [label for label, _ in rho_steps],
            "thresholds": {"rho_unchanged": RA.RHO_SAME, "rho_changed": RA.RHO_CHANGED},
            "ranking": ranking, "pairs": pairs, "_arrays": arrays}


def _pairs(order: list[str], curves, arrays, seed) -> list[dict]:
    """Each pair of maps (better-ranked first) compared on each metric by the paired per-image
    difference first − second, with which one is better where the CI excludes 0."""
    def values(name):
        d, i = curves[name].auc()
        out = {"deletion AUC": (d, False), "insertion AUC": (i, True)}
        if f"mass_in_mask/{name}" in arrays:
            out["mass in mask"] = (arrays[f"mass_in_mask/{name}"], True)
            out["pointing game"] = (arrays[f"pointing/{name}"], True)
        return out
    rows = []
    for k, a in enumerate(order):
        for b in order[k + 1:]:
            va, vb = values(a), values(b)
            for metric, (x, higher) in va.items():
                diff = paired(x, vb[metric][0], seed)
                winner = a if better(diff, higher) else b if better(
                    Estimate(-diff.mean, -diff.hi, -diff.lo, diff.n), higher) else None
                rows.append({"first": a, "second": b, "metric": metric, "difference": diff,
                             "better": winner})
    return rows


def _rank(methods: dict, localization: bool) -> dict:
    """Mean rank over the metrics each method has (deletion AUC: lower is better; insertion
    AUC, mass in mask, pointing game: higher is better); ties broken by deletion AUC."""
    metrics: list[tuple[str, Callable[[dict], float], bool]] = [
        ("deletion AUC", lambda m: m["faithfulness"]["deletion_auc"].mean, False),
        ("insertion AUC", lambda m: m["faithfulness"]["insertion_auc"].mean, True)]
    if localization:
        metrics += [("mass in mask", lambda m: m["localization"]["mass_in_mask"].mean, True),
                    ("pointing game", lambda m: m["localization"]["pointing"].mean, True)]
    names = list(methods)
    mean_rank = {n: 0.0 for n in names}
    for _, get, higher in metrics:
        vals = np.array([get(methods[n]) for n in names], np.float64)
        vals = np.where(np.isfinite(vals), vals, -np.inf if higher else np.inf)
        order = np.argsort(-vals if higher else vals, kind="stable")
        for r, i in enumerate(order):
            mean_rank[names[i]] += (r + 1) / len(metrics)
    order = sorted(names, key=lambda n: (mean_rank[n],
                                         methods[n]["faithfulness"]["deletion_auc"].mean))
    return {"by": f"mean rank over {', '.join(m[0] for m in metrics)}",
            "order": order, "mean_rank": {n: round(mean_rank[n], 3) for n in order}}


def jsonable(value: Any) -> Any:
    """The report without `_arrays`, Estimates as {mean, ci95, n}, NaN as null."""
    from vitscope.render.figures import json_safe
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Estimate):
        return json_safe(value.to_dict())
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items() if k != "_arrays"}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return json_safe(value)
