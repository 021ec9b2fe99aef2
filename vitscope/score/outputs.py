"""What `vitscope score` writes: the terminal tables, score.json, PNG and HTML figures, and its
section in the run's index.html (through manifest.json, like the plugins' sections)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vitscope.score.faithfulness import PERTURBATIONS
from vitscope.score.run import RANDOM, jsonable

PERTURBATION_TEXT = {"drop": "removed patch tokens leave the sequence",
                     "grey": "removed patches' pixels set to the normalisation mean (grey)"}
assert set(PERTURBATION_TEXT) == set(PERTURBATIONS)



def quantity(report: dict) -> str:
    """What the faithfulness curves follow: the target class's probability, or the raw score
    of a target that is no class ("similarity to cat.jpg": vitscope.capture.objective)."""
    return report.get("score") or "target probability"

def _ci(e, digits: int = 3) -> str:
    return e.text(digits)


def tables(report: dict) -> str:
    """The report as plain-text tables (what the terminal shows)."""
    methods = report["methods"]
    order = report["ranking"]["order"]
    faith_base = report["baselines"]["faithfulness"]
    lines = [f"vitscope score · {report['checkpoint']} · {report['data']} ({report['split']}, "
             f"{report['images']} images) · target: {report['target']}", ""]

    lines.append(f"Faithfulness: {quantity(report)} as patches are removed in "
                 f"{100 // report['steps']}% steps ({report['perturbation']}: "
                 f"{PERTURBATION_TEXT[report['perturbation']]}); area under the curve")
    w = max(len(n) for n in [*order, *faith_base]) + 2
    lines.append(f"  {'order':<{w}}{'deletion AUC ↓':<24}{'insertion AUC ↑':<24}vs the random order")
    for name in [*order, *faith_base]:
        f = methods[name]["faithfulness"] if name in methods else faith_base[name]
        if name == RANDOM:
            vs = "—"
        else:
            both = [what for what, key in (("deletion", "beats_random_deletion"),
                                           ("insertion", "beats_random_insertion")) if f[key]]
            vs = ("beats it on both" if len(both) == 2 else f"beats it on {both[0]} only" if both
                  else "does not beat it")
        tag = "" if name in methods else " (baseline)"
        lines.append(f"  {name:<{w}}{_ci(f['deletion_auc']):<24}{_ci(f['insertion_auc']):<24}"
                     f"{vs}{tag}")

    lines += _precision_lines(report)
    lines += _ties_lines(report, order, w)
    lines += _randomisation_lines(report, order)
    lines += _class_lines(report, order, w)

    loc = report["baselines"]["localization"]
    if not loc:
        lines += ["", f"Localisation: skipped, {report['data']} has no object masks (shapes "
                      f"has them)."]
    if loc:
        lines += ["", "Localisation on the object masks: share of the map's mass inside the mask; "
                      "pointing game: the map's peak patch on the object"]
        lines.append(f"  {'map':<{w}}{'mass in mask ↑':<24}{'pointing game ↑':<24}")
        for name in order:
            lo = methods[name]["localization"]
            lines.append(f"  {name:<{w}}{_ci(lo['mass_in_mask']):<24}{_ci(lo['pointing']):<24}")
        notes = {"uniform": "(mass = the mask's area; pointing = a random patch)",
                 "centre": "(a centred Gaussian, σ = 2 patches)",
                 "brightness": "(image only: mean luminance per patch)",
                 "edges": "(image only: Sobel magnitude per patch)"}
        for name, lo in loc.items():
            lines.append(f"  {name:<{w}}{_ci(lo['mass_in_mask']):<24}{_ci(lo['pointing']):<24}"
                         f"{notes.get(name, '')}")

    lines += ["", f"Ranking ({report['ranking']['by']}); \"beats\" means the paired 95% CI of the "
                  f"per-image difference excludes 0:"]
    for name in order:
        m = methods[name]
        missing = m["not_beaten"]
        text = ("beats every baseline" if not missing else "does not beat " + "; ".join(
            f"{b} ({', '.join(what)})" for b, what in missing.items()))
        lines.append(f"  {m['rank']}. {name:<{w}}{text}")
    if report.get("pairs"):
        lines += ["", "Maps against each other (paired per-image difference, first − second):"]
        for p in report["pairs"]:
            verdict = f"{p['better']} better" if p["better"] else "no difference at 95%"
            lines.append(f"  {p['first']} − {p['second']}, {p['metric']}: "
                         f"{_ci(p['difference'])}  {verdict}")
    return "\n".join(lines)


def verdict_text(method: dict) -> str:
    """The randomisation verdict and the class-sensitivity verdict of one method."""
    text = method["randomization"]["verdict"]
    cls = method.get("class_sensitivity", {}).get("verdict")
    return text + (f", {cls}" if cls and cls != "not measured" else "")


def _precision_lines(report: dict) -> list[str]:
    p = report.get("precision") or {}
    if p.get("grad_underflow") is None:
        return []
    line = (f"Precision: activations {p['dtype']}, gradients {p['grad_dtype']}; "
            f"{p['grad_underflow']:.2%} of the non-zero gradients flushed to zero in storage "
            f"(float16 would flush {p['grad_fp16_underflow']:.2%})")
    return ["", line] + ([f"  {p['warning']}"] if p.get("warning") else [])


def _ties_lines(report: dict, order: list[str], w: int) -> list[str]:
    lines = ["", "Constant maps and ties: constant maps (no order at all; ρ undefined, so left "
                 "out of the ρ means: see n) and the share of tied patches per map (a map with "
                 "ties is scored over several random tie orders)"]
    base = report["baselines"]["faithfulness"]
    for name in [*order, *[b for b in base if b != RANDOM]]:
        m = report["methods"].get(name)
        f = m["faithfulness"] if m else base[name]
        if "tie_fraction" not in f:
            continue
        const = f"{m['constant_maps']} of {report['images']} constant" if m else "baseline"
        lines.append(f"  {name:<{w}}{const:<22}tied patches {_ci(f['tie_fraction'], 2)}, "
                     f"{f['tie_orders']} tie order{'s' if f['tie_orders'] > 1 else ''}")
    return lines


def _cell(e, digits: int = 2) -> str:
    return f"{_ci(e, digits)} n={e.n}" if np.isfinite(e.mean) else f"— n={e.n}"


def _randomisation_lines(report: dict, order: list[str]) -> list[str]:
    methods = report["methods"]
    draws = report.get("randomization_draws", 1)
    lines = ["", f"Randomisation (cascading, Adebayo et al. 2018) over {draws} independent weight "
                 f"draws: mean Spearman ρ between the trained model's map and the map after "
                 f"randomising, cumulatively; interval over draws and images; n = images × draws "
                 f"with a defined ρ (constant maps have none):"]
    cw = max(31, max(len(n) for n in order) + 2)
    control = report["baselines"]["randomization_control"]
    lines.append(f"  {'randomised':<14}" + "".join(f"{n:<{cw}}" for n in order)
                 + control["map"] + " (control)")
    for k, label in enumerate(report["cascade"]):
        row = "".join(f"{_cell(methods[n]['randomization']['steps'][k]['rho']):<{cw}}"
                      for n in order)
        lines.append(f"  {('+ ' if k else '') + label:<14}{row}1 by construction")
    verdicts = "".join(f"{methods[n]['randomization']['verdict']:<{cw}}" for n in order)
    lines.append(f"  {'verdict':<14}{verdicts}fails (ignores the model)")
    spread = []
    for n in order:
        d = [x for x in methods[n]["randomization"]["steps"][-1].get("draws", []) if np.isfinite(x)]
        if d:
            spread.append(f"{n} {min(d):.2f}–{max(d):.2f}")
    if spread:
        lines.append(f"  spread across draws (mean ρ of each draw, whole model random): "
                     + "; ".join(spread))
    th = report["thresholds"]
    lines.append(f"  passed: ρ < {th['rho_changed']} once the whole model is random; failed: ρ ≥ "
                 f"{th['rho_unchanged']}. The control's ρ is not measured: an image-only map "
                 f"reads no weight.")
    return lines


def _class_lines(report: dict, order: list[str], w: int) -> list[str]:
    methods = report["methods"]
    if not any("class_sensitivity" in methods[n] for n in order):
        return []
    th = report["thresholds"]["rho_unchanged"]
    lines = ["", f"Class sensitivity: Spearman ρ between the map of the target class and the "
                 f"map of another class on the same image; class-sensitive: the interval vs the "
                 f"runner-up lies below {th}; class-agnostic: it lies at or above {th}"]
    lines.append(f"  {'map':<{w}}{'vs the runner-up':<30}{'vs a random other class':<30}verdict")
    for n in order:
        c = methods[n].get("class_sensitivity", {})
        cells = [(_cell(c[k]['rho']) if k in c else "—") for k in ("runner-up", "random class")]
        lines.append(f"  {n:<{w}}{cells[0]:<30}{cells[1]:<30}{c.get('verdict', '—')}")
    return lines


# ------------------------------------------------------------------------------ the files

def write(report: dict, out_dir: Path) -> list[Path]:
    """score.json, score.txt, curves/randomization/localization PNGs and score.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    path = out_dir / "score.json"
    path.write_text(json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n")
    files.append(path)
    path = out_dir / "score.txt"
    path.write_text(tables(report) + "\n", encoding="utf-8")
    files.append(path)
    files += _static(report, out_dir)
    files.append(_interactive(report, out_dir))
    return files


# One colour per map and per baseline, the same in every panel of the PNGs and of score.html:
# the maps take METHOD_COLOURS in the order they were asked for, the baselines keep theirs.
METHOD_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#e377c2",
                  "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d")
BASELINE_COLOURS = {RANDOM: "#7f7f7f", "centre": "#bcbd22", "brightness": "#8c564b",
                    "edges": "#17becf", "uniform": "#a0a0a0"}


def colours(report: dict) -> dict[str, str]:
    """name -> colour of every map and baseline in the report (hex, for matplotlib and Plotly)."""
    out = {name: METHOD_COLOURS[k % len(METHOD_COLOURS)]
           for k, name in enumerate(report["methods"])}
    for name in [*report["baselines"]["faithfulness"], *report["baselines"]["localization"],
                 report["baselines"]["randomization_control"]["map"]]:
        out[name] = BASELINE_COLOURS.get(name, "#7f7f7f")
    return out


def _series(report: dict):
    """(name, kind, faithfulness row) for every curve: methods, the random order, baselines."""
    out = [(n, "method", report["methods"][n]["faithfulness"]) for n in report["ranking"]["order"]]
    out += [(n, "random" if n == RANDOM else "baseline", f)
            for n, f in report["baselines"]["faithfulness"].items()]
    return out


def _static(report: dict, out_dir: Path) -> list[Path]:
    from vitscope.render import figures as F
    files = []
    x = np.linspace(0, 1, report["steps"] + 1)
    styles = {"method": "-", "random": "--", "baseline": ":"}
    palette = colours(report)
    control = report["baselines"]["randomization_control"]["map"]
    with F.style() as plt:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"wspace": 0.25})
        for ax, curve, title in ((axes[0], "deletion", "Deletion: most relevant patches first"),
                                 (axes[1], "insertion", "Insertion: most relevant patches first")):
            for name, kind, f in _series(report):
                est = f[f"{curve}_curve"]
                mean = np.array([e.mean for e in est])
                lo, hi = np.array([e.lo for e in est]), np.array([e.hi for e in est])
                color = palette[name]
                auc = f[f"{curve}_auc"].mean
                ax.plot(x, mean, styles[kind], color=color, lw=1.6 if kind == "method" else 1.1,
                        label=f"{name} (AUC {auc:.3f})")
                ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
            ax.set(xlabel=f"fraction of patches {'removed' if curve == 'deletion' else 'kept'}",
                   ylabel=quantity(report), title=title,
                   ylim=(0, 1.02) if "score" not in report else None)
            ax.legend(frameon=False, fontsize=7)
        fig.suptitle(f"Faithfulness ({report['perturbation']}: "
                     f"{PERTURBATION_TEXT[report['perturbation']]}), mean and 95% CI over "
                     f"{report['images']} images", fontsize=9)
        files.append(F.save_static(fig, out_dir / "curves", _Png()))

        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        steps = report["cascade"]
        lowest = 0.0
        for name in report["ranking"]["order"]:
            est = [s["rho"] for s in report["methods"][name]["randomization"]["steps"]]
            mean = np.array([e.mean for e in est])
            err = np.array([[e.mean - e.lo for e in est], [e.hi - e.mean for e in est]])
            ax.errorbar(range(len(steps)), mean, yerr=bar_lengths(err), fmt="o-", ms=3,
                        capsize=2, color=palette[name], label=name)
            lowest = np.nanmin([lowest, *[e.lo for e in est], *mean])
        ax.plot(range(len(steps)), np.ones(len(steps)), ":", color=palette[control],
                label=f"{control} (image only: ρ = 1 by construction)")
        th = report["thresholds"]
        ax.axhspan(th["rho_unchanged"], 1.05, color="red", alpha=0.06, lw=0)
        ax.set_xticks(range(len(steps)), [("+ " if i else "") + s for i, s in enumerate(steps)],
                      rotation=30, ha="right")
        # ρ reaches -1: the floor follows the lowest point and interval end, never cutting one
        ax.set(ylim=(rho_floor(lowest), 1.05), ylabel="Spearman ρ with the trained map",
               xlabel="randomised (cumulative, from the head down)",
               title="Model-randomisation test (shaded: ρ ≥ 0.9, the map barely changed)")
        ax.legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        files.append(F.save_static(fig, out_dir / "randomization", _Png()))

        loc = report["baselines"]["localization"]
        if loc:
            names = list(report["ranking"]["order"]) + list(loc)
            rows = [report["methods"][n]["localization"] for n in report["ranking"]["order"]]
            rows += [loc[n] for n in loc]
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"wspace": 0.3})
            for ax, key, title in ((axes[0], "mass_in_mask", "mass of the map in the mask"),
                                   (axes[1], "pointing", "pointing game")):
                mean = np.array([r[key].mean for r in rows])
                err = np.array([[r[key].mean - r[key].lo for r in rows],
                                [r[key].hi - r[key].mean for r in rows]])
                bars = ax.bar(range(len(names)), mean, yerr=bar_lengths(err),
                              color=[palette[n] for n in names], capsize=3)
                for bar in bars[len(report["ranking"]["order"]):]:
                    bar.set_hatch("//")
                    bar.set_edgecolor("white")
                ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
                ax.set(ylim=(0, 1), ylabel="mean over images (95% CI)",
                       title=f"{title} (hatched: baselines)")
            files.append(F.save_static(fig, out_dir / "localization", _Png()))
    return files


def bar_lengths(err) -> np.ndarray:
    """Error-bar lengths from mean − lo and hi − mean: NaN as 0, and never negative (a BCa or
    Wilson interval of a few images may lie on one side of the mean; the bar then stops at
    the mean, the interval itself is in score.json and score.txt)."""
    return np.maximum(np.nan_to_num(np.asarray(err, np.float64)), 0)


def rho_floor(lowest: float) -> float:
    """The randomisation plot's lower y limit: -0.2, or below the lowest point or interval
    end with a margin (ρ reaches -1)."""
    return float(max(-1.05, min(-0.2, np.floor((lowest - 0.05) * 10) / 10)))


class _Png:
    """The options save_static reads: PNG figures."""
    format = "png"


def _interactive(report: dict, out_dir: Path) -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from vitscope.render.interactive import plotly_text, save_html
    x = np.linspace(0, 1, report["steps"] + 1)
    loc = report["baselines"]["localization"]
    palette = colours(report)
    cols = 4 if loc else 3
    titles = ["deletion", "insertion", "randomisation: Spearman ρ"] + (["mass in mask"] if loc else [])
    fig = make_subplots(rows=1, cols=cols, subplot_titles=titles)

    def interval(est):
        return {"type": "data", "symmetric": False,
                "array": bar_lengths([e.hi - e.mean for e in est]).tolist(),
                "arrayminus": bar_lengths([e.mean - e.lo for e in est]).tolist()}

    # Every trace of one name has that name's colour and legend group: the legend (one entry a
    # name, from the deletion panel) says truly what each line in every panel is.
    for name, kind, f in _series(report):
        for col, curve in ((1, "deletion"), (2, "insertion")):
            est = f[f"{curve}_curve"]
            fig.add_trace(go.Scatter(
                x=x, y=[e.mean for e in est], name=name, legendgroup=name, showlegend=col == 1,
                line={"dash": {"method": "solid", "random": "dash", "baseline": "dot"}[kind],
                      "color": palette[name]},
                marker={"color": palette[name]}, error_y={**interval(est), "color": palette[name]},
                hovertemplate=f"{name}<br>%{{x:.0%}} {'removed' if curve == 'deletion' else 'kept'}"
                              f": p=%{{y:.3f}}<extra></extra>"), row=1, col=col)
    steps = [("+ " if i else "") + s for i, s in enumerate(report["cascade"])]
    for name in report["ranking"]["order"]:
        est = [s["rho"] for s in report["methods"][name]["randomization"]["steps"]]
        fig.add_trace(go.Scatter(x=steps, y=[e.mean for e in est], name=name, legendgroup=name,
                                 showlegend=False, mode="lines+markers",
                                 line={"color": palette[name]}, marker={"color": palette[name]},
                                 error_y={**interval(est), "color": palette[name]}),
                      row=1, col=3)
    control = report["baselines"]["randomization_control"]["map"]
    fig.add_trace(go.Scatter(x=steps, y=[1.0] * len(steps), name=control, legendgroup=control,
                             showlegend=control not in {n for n, _, _ in _series(report)},
                             mode="lines", line={"color": palette[control], "dash": "dot"},
                             hovertemplate=f"{control} (image only): ρ = 1 by construction"
                                           f"<extra></extra>"), row=1, col=3)
    if loc:
        rows = [(n, report["methods"][n]["localization"]["mass_in_mask"])
                for n in report["ranking"]["order"]] + [(n, v["mass_in_mask"]) for n, v in loc.items()]
        fig.add_trace(go.Bar(x=[n for n, _ in rows], y=[e.mean for _, e in rows], showlegend=False,
                             marker={"color": [palette[n] for n, _ in rows],
                                     "pattern": {"shape": ["" if n in report["methods"] else "/"
                                                           for n, _ in rows]}},
                             error_y=interval([e for _, e in rows])),
                      row=1, col=4)
    axes = [("fraction of patches removed", quantity(report)),
            ("fraction of patches kept", quantity(report)),
            ("randomised (cumulative, from the head down)", "Spearman ρ with the trained map"),
            ("map (hatched: baselines)", "mass of the map in the mask")]
    for col, (xtitle, ytitle) in enumerate(axes[:cols], start=1):
        fig.update_xaxes(title_text=xtitle, row=1, col=col)
        fig.update_yaxes(title_text=ytitle, row=1, col=col)
    fig.update_xaxes(tickformat=".0%", row=1, col=1)
    fig.update_xaxes(tickformat=".0%", row=1, col=2)
    # The checkpoint path and method names come from the user: shown as text, not Plotly markup.
    fig.update_layout(title=plotly_text(f"vitscope score: {report['checkpoint']} "
                                        f"({report['images']} images, target "
                                        f"{report['target']}, {report['perturbation']})"),
                      height=520, template="plotly_white")
    return save_html(fig, out_dir / "score.html", _Run(out_dir.parent))


class _Run:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir


def score_manifest(run_dir: Path, report: dict, files: list[Path]) -> dict:
    """The run's manifest.json with this score in it (read under the run folder's lock)."""
    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        manifest = {}
    if not isinstance(manifest, dict):
        manifest = {}
    manifest.setdefault("plugins", {})
    manifest.setdefault("run", {k: report[k] for k in ("checkpoint", "checkpoint_sha256",
                                                          "data", "split", "images", "dump")})
    manifest["score"] = {"files": [f.relative_to(run_dir).as_posix() for f in files],
                         "table": tables(report), "checkpoint": report["checkpoint"],
                         "checkpoint_sha256": report["checkpoint_sha256"],
                         "data": report["data"], "images": report["images"],
                         "target": report["target"], "perturbation": report["perturbation"]}
    return manifest


def record(run_dir: Path, report: dict, files: list[Path]) -> Path:
    """Add the score to the run's manifest.json and rewrite index.html (its Score section),
    under the run folder's lock (an analyze writing into it finishes first), atomically."""
    from vitscope.errors import PluginError
    from vitscope._internal.locks import hold
    from vitscope.render.index_page import write_index
    from vitscope.analyze.staging import LOCK
    from vitscope._internal.files import replacing
    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    with hold(run_dir / LOCK, run_dir, PluginError, wait=True):
        manifest = score_manifest(run_dir, report, files)
        with replacing(path) as (tmp,):
            tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        return write_index(run_dir)
