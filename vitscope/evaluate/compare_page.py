"""The figures and the page of `vitscope compare` (vitscope.evaluate.compare computes the numbers).

    accuracy_figure(result, "compare_accuracy.png")   # overall and per-class, with 95% CIs
    curves_figure(result, "compare_curves.png")       # every run's recorded curves overlaid
    html_page(result, {"accuracy": png, ...})         # one self-contained page (PNGs inlined)

Every string on the page (model names, paths, class names) goes through vitscope.render.escaping:
they come from checkpoints and folder names, which anyone can write.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np

from vitscope import __version__
from vitscope.evaluate.compare import diff_text, edge_note, pct
from vitscope.render.escaping import text as _e
from vitscope.render.page import page

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _bars(ax, centers, est: list[dict[str, Any]], color, label, width):
    means = np.array([e["mean"] if e.get("n") else np.nan for e in est])
    lo = np.array([e["ci95"][0] if e.get("n") else np.nan for e in est])
    hi = np.array([e["ci95"][1] if e.get("n") else np.nan for e in est])
    ax.bar(centers, means, width, color=color, label=label, alpha=0.85)
    ax.errorbar(centers, means, yerr=[means - lo, hi - means], fmt="none", ecolor="black",
                elinewidth=1, capsize=2)


def accuracy_figure(result: dict[str, Any], path: str | Path) -> Path:
    """Overall accuracy per model and per-class accuracy, each bar with its 95% bootstrap CI;
    the title states every pair's difference and whether its CI excludes 0."""
    plt = _plt()
    names = [m["name"] for m in result["model_info"]]
    classes = result["classes"]
    k, C = len(names), len(classes)
    wide = min(3 + 0.25 * k * C, 24)
    fig, (ax_all, ax_cls) = plt.subplots(1, 2, figsize=(3 + 0.7 * k + wide, 4.8),
                                         gridspec_kw={"width_ratios": [1 + 0.5 * k, wide]})
    for i, n in enumerate(names):
        color = COLORS[i % len(COLORS)]
        _bars(ax_all, [i], [result["models"][n]["accuracy"]], color, n, 0.7)
        width = 0.8 / k
        _bars(ax_cls, np.arange(C) - 0.4 + width * (i + 0.5),
              [result["models"][n]["per_class"][c] for c in classes], color, n, width)
        acc = result["models"][n]["accuracy"]
        ax_all.text(i, min(acc["ci95"][1] + 0.02, 1.02), f"{100 * acc['mean']:.1f}%",
                    ha="center", va="bottom", fontsize=9)
    ax_all.set_xticks(range(k), names, rotation=20 if k > 2 else 0)
    ax_all.set(ylim=(0, 1.1), ylabel="accuracy", title=f"all {result['n']} images")
    ax_cls.set(ylim=(0, 1.1), ylabel="accuracy", title="per class (95% bootstrap CI)")
    if C <= 40:
        ax_cls.set_xticks(range(C), classes, rotation=45 if C > 6 else 0,
                          ha="right" if C > 6 else "center", fontsize=8 if C > 20 else 9)
    else:
        ax_cls.set_xlabel(f"{C} classes, in the checkpoints' order")
    ax_cls.legend(fontsize=8, loc="lower right")
    for ax in (ax_all, ax_cls):
        ax.grid(axis="y", alpha=0.3)
    lines = [_short_verdict(d) for d in result["differences"][:4]]
    more = len(result["differences"]) - 4
    fig.suptitle("\n".join(lines + ([f"(+{more} more pairs in compare.json)"] if more > 0 else [])),
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _short_verdict(d: dict[str, Any]) -> str:
    shown = "excludes 0" if d["ci_excludes_zero"] else "includes 0: no difference shown"
    return f"{d['a']} − {d['b']}: {diff_text(d['difference'])} points (95% CI {shown})"


def curves_figure(result: dict[str, Any], path: str | Path) -> Path | None:
    """Validation and training accuracy and loss against epoch, every run that recorded a
    history overlaid (a star marks the epoch each compared checkpoint is from). None when no
    model has a history."""
    models = [m for m in result["model_info"] if m.get("history")]
    if not models:
        return None
    plt = _plt()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, m in enumerate(result["model_info"]):
        if not m.get("history"):
            continue
        color, h = COLORS[i % len(COLORS)], m["history"]
        ep = [r["epoch"] for r in h]
        for key, style, split in (("val", "-", "val"), ("train", ":", "train")):
            ax_acc.plot(ep, [r.get(f"{key}_acc", np.nan) for r in h], style, color=color,
                        label=f"{m['name']} {split}")
            ax_loss.plot(ep, [r.get(f"{key}_loss", np.nan) for r in h], style, color=color,
                         label=f"{m['name']} {split}")
        at = [r for r in h if r["epoch"] == m.get("epoch")]
        if at:
            ax_acc.plot([at[0]["epoch"]], [at[0].get("val_acc", np.nan)], "*", color=color,
                        markersize=12, markeredgecolor="black")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy (★ = the checkpoint compared)",
               ylim=(0, 1.02))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    from matplotlib.ticker import MaxNLocator
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    missing = [m["name"] for m in result["model_info"] if not m.get("history")]
    fig.suptitle("training curves as each run recorded them (its own validation images)"
                 + (f"; no history for {', '.join(missing)}" if missing else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    try:
        fig.savefig(path, dpi=110)
    finally:
        _plt().close(fig)
    return path


def html_page(result: dict[str, Any], figures: dict[str, Path]) -> str:
    """One self-contained page: the numbers as tables and the PNGs inlined (data: URIs), so
    the file can be mailed or moved alone."""
    names = [m["name"] for m in result["model_info"]]
    title = " vs ".join(names)
    rows = "".join(
        f"<tr><td>{_e(m['name'])}</td><td><code>{_e(m['checkpoint'])}</code></td>"
        f"<td>{_e(m['arch_text'])}</td><td class='num'>{m['parameters']:,}</td>"
        f"<td class='num'>{_e(m.get('epoch') if m.get('epoch') is not None else '—')}</td>"
        f"<td class='num'>{_e(pct(result['models'][m['name']]['accuracy']))}</td>"
        f"<td class='num'>{_e(_recorded(m))}</td><td>{'flip TTA' if m.get('tta') else ''}</td></tr>"
        for m in result["model_info"])
    models = (f"<section><h2>Accuracy</h2><table><tr><th>model</th><th>checkpoint</th><th>arch</th>"
              f"<th>params</th><th>epoch</th><th>accuracy [95% CI]</th><th>recorded val_acc</th>"
              f"<th></th></tr>{rows}</table></section>")
    diffs = "".join(
        f"<tr><td>{_e(d['a'])} − {_e(d['b'])}</td><td class='num'>"
        f"{_e(diff_text(d['difference']))}</td><td class='{'shown' if d['ci_excludes_zero'] else 'none'}'>"
        f"{_e(d['verdict'])}</td><td class='num'>{d['only_a_correct']}</td>"
        f"<td class='num'>{d['only_b_correct']}</td></tr>" for d in result["differences"])
    differences = (f"<section><h2>Differences (paired bootstrap over images)</h2><table><tr>"
                   f"<th>pair</th><th>points [95% CI]</th><th>what it shows</th>"
                   f"<th>only first right</th><th>only second right</th></tr>{diffs}</table>"
                   f"<p class='none'>{result['bootstrap']['resamples']} resamples of the "
                   f"{result['n']} images, percentile interval; a difference is shown only where "
                   f"the interval excludes 0.</p></section>")
    two = result["differences"][0] if len(names) == 2 else None
    head = "".join(f"<th>{_e(n)}</th>" for n in names) + (
        f"<th>{_e(two['a'])} − {_e(two['b'])} (points)</th>" if two else "")
    body = "".join(
        f"<tr><td>{_e(c)}</td><td class='num'>{result['class_counts'][c]}</td>" + "".join(
            f"<td class='num'>{_e(pct(result['models'][n]['per_class'][c]))}</td>" for n in names)
        + (f"<td class='num'>{_e(diff_text(two['per_class'][c]))}</td>" if two else "") + "</tr>"
        for c in result["classes"])
    note_edge = f"<p class='none'>{_e(edge_note(result))}</p>" if edge_note(result) else ""
    per_class = (f"<section><h2>Per-class accuracy [95% CI]</h2><table><tr><th>class</th>"
                 f"<th>images</th>{head}</tr>{body}</table>{note_edge}</section>")
    figs = "".join(f"<section><h2>{_e(label)}</h2><img alt='{_e(label)}' src='data:image/png;"
                   f"base64,{base64.b64encode(Path(p).read_bytes()).decode('ascii')}'></section>"
                   for label, p in figures.items() if p is not None)
    missing = [m["name"] for m in result["model_info"] if not m.get("history")]
    note = (f"<p class='none'>No training history for {_e(', '.join(missing))} (no "
            f"metrics.jsonl of its run beside the checkpoint).</p>" if missing else "")
    sub = (f"{result['n']} images of {result['data']} ({result['split']}), every model on the same "
           f"images at its own input size and normalisation")
    return page(f"vitscope compare · {title}",
                f"{models}{differences}{figs}{note}{per_class}"
                f"<p class='foot'>vitscope {_e(__version__)}</p>", subtitle=sub)


def _recorded(m: dict[str, Any]) -> str:
    rec = m.get("recorded_val_acc")
    return f"{100 * rec:.1f}%" if isinstance(rec, (int, float)) else "—"
