"""Two or more classifiers on the same images: accuracy with paired bootstrap CIs of the
differences, per-class accuracy, and the training curves each run recorded. Imports no torch.

    result = compare_predictions(["vit", "cnn"], labels, {"vit": pred_a, "cnn": pred_b}, classes)
    print(table(result))

Images are the unit of replication (vitscope.score.stats): the difference of two models is
the mean of the per-image difference of their correctness (1 right, 0 wrong), with a
percentile bootstrap CI over images, so both models are always resampled on the same images.
A difference is reported as shown only when its 95% CI excludes 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitscope.score.stats import BOOTSTRAP, LEVEL, Estimate, bootstrap, paired

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


def compare_predictions(names: list[str], labels: np.ndarray, preds: dict[str, np.ndarray],
                        classes: list[str], seed: int = 0) -> dict[str, Any]:
    """Overall and per-class accuracy of every model, and for every pair (a before b in
    `names`) the paired difference a − b, overall and per class. Plain data, JSON-ready."""
    labels = np.asarray(labels, np.int64)
    correct = {n: (np.asarray(preds[n], np.int64) == labels).astype(np.float64) for n in names}
    models = {}
    for n in names:
        per_class = {c: bootstrap(correct[n][labels == i], seed).to_dict()
                     for i, c in enumerate(classes)}
        models[n] = {"accuracy": bootstrap(correct[n], seed).to_dict(), "per_class": per_class,
                     "correct": int(correct[n].sum())}
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = paired(correct[a], correct[b], seed)
            per_class = {c: paired(correct[a][labels == k], correct[b][labels == k], seed).to_dict()
                         for k, c in enumerate(classes)}
            pairs.append({"a": a, "b": b, "difference": diff.to_dict(),
                          "ci_excludes_zero": excludes_zero(diff), "verdict": verdict(a, b, diff),
                          "only_a_correct": int(((correct[a] == 1) & (correct[b] == 0)).sum()),
                          "only_b_correct": int(((correct[a] == 0) & (correct[b] == 1)).sum()),
                          "per_class": per_class})
    return {"n": int(len(labels)), "classes": list(classes),
            "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
            "bootstrap": {"resamples": BOOTSTRAP, "level": LEVEL, "seed": seed,
                          "unit": "image (paired: both models resampled on the same images)"},
            "models": models, "differences": pairs}


def excludes_zero(diff: Estimate) -> bool:
    return diff.n > 0 and np.isfinite(diff.lo) and (diff.lo > 0 or diff.hi < 0)


def verdict(a: str, b: str, diff: Estimate) -> str:
    """One sentence on what the CI of a − b shows."""
    ci = f"{points(diff.mean)} points, 95% CI [{points(diff.lo)}, {points(diff.hi)}]"
    if diff.n == 0:
        return "no images to compare"
    if excludes_zero(diff):
        better, worse = (a, b) if diff.lo > 0 else (b, a)
        return f"{better} is more accurate than {worse}: {a} − {b} = {ci}, which excludes 0"
    return (f"no difference shown: {a} − {b} = {ci}, which includes 0 (these images do not "
            f"tell the two apart)")


def points(x: float) -> str:
    """A difference of accuracies in percentage points, signed: +1.2, −0.4."""
    if not np.isfinite(x):
        return "—"
    v = round(100 * x, 1)
    return f"{'+' if v > 0 else '−' if v < 0 else '±'}{abs(v):.1f}"


def pct(est: dict[str, Any]) -> str:
    """`{"mean", "ci95"}` as "96.8% [95.7, 97.8]" ("—" without images)."""
    if not est.get("n"):
        return "—"
    lo, hi = est["ci95"]
    return f"{100 * est['mean']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def diff_text(est: dict[str, Any]) -> str:
    if not est.get("n"):
        return "—"
    lo, hi = est["ci95"]
    return f"{points(est['mean'])} [{points(lo)}, {points(hi)}]"


# ------------------------------------------------------------------- training histories

def read_history(run_dir: Path) -> list[dict[str, Any]] | None:
    """The per-epoch metrics `vitscope train` wrote beside a checkpoint (run_dir/metrics.jsonl),
    one entry per epoch (the last line of each: a resumed run may repeat one), or None when
    the file is missing. Unreadable lines are skipped."""
    from vitscope.train.run_log import METRICS, read_metrics
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return None
    by_epoch = {m["epoch"]: {k: m[k] for k in HISTORY_KEYS if isinstance(m.get(k), (int, float))}
                for m in read_metrics(path)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def history_matches(history: list[dict[str, Any]] | None, metrics: dict[str, Any]) -> bool:
    """Whether a history holds the checkpoint's own epoch with its recorded val_acc (else the
    metrics.jsonl beside it belongs to another run, e.g. a checkpoint copied into a folder)."""
    epoch, acc = metrics.get("epoch"), metrics.get("val_acc")
    if not history or not isinstance(epoch, int) or not isinstance(acc, (int, float)):
        return bool(history)
    return any(h.get("epoch") == epoch and abs(h.get("val_acc", -1) - acc) < 1e-9
               for h in history)


# ------------------------------------------------------------------------ the table

def table(result: dict[str, Any]) -> str:
    """The terminal report: one row per model, every pair's difference, per-class accuracy."""
    models = result["model_info"]
    names = [m["name"] for m in models]
    w = max(len(n) for n in names + ["model"])
    lines = [f"{result['n']} images of {result['data']} ({result['split']}), every model on the "
             f"same images at its own input size and normalisation",
             f"  {'model':<{w}}  {'arch':<11} {'params':>11}  {'epoch':>5}  "
             f"{'accuracy [95% CI]':<22} recorded val_acc"]
    for m in models:
        acc = result["models"][m["name"]]["accuracy"]
        rec = m.get("recorded_val_acc")
        lines.append(f"  {m['name']:<{w}}  {m['arch_text']:<11} {m['parameters']:>11,}  "
                     f"{m.get('epoch') if m.get('epoch') is not None else '—':>5}  "
                     f"{pct(acc):<22} {f'{100 * rec:.1f}%' if rec is not None else '—'}"
                     f"{'  (flip TTA)' if m.get('tta') else ''}")
    lines.append("")
    for d in result["differences"]:
        lines.append(f"{d['verdict']}.")
        lines.append(f"  only {d['a']} right: {d['only_a_correct']} images; only {d['b']} right: "
                     f"{d['only_b_correct']}")
    cw = max(len(c) for c in result["classes"] + ["class"])
    two = result["differences"][0] if len(names) == 2 else None
    head = f"  {'class':<{cw}} {'n':>5}  " + "  ".join(f"{n:<22}" for n in names)
    if two:
        head += f"  {two['a']} − {two['b']} (points)"
    lines += ["", "per-class accuracy [95% CI]:", head.rstrip()]
    for c in result["classes"]:
        row = f"  {c:<{cw}} {result['class_counts'][c]:>5}  " + "  ".join(
            f"{pct(result['models'][n]['per_class'][c]):<22}" for n in names)
        if two:
            row += f"  {diff_text(two['per_class'][c])}"
        lines.append(row.rstrip())
    if edge_note(result):
        lines += ["", edge_note(result)]
    return "\n".join(lines)


def edge_note(result: dict[str, Any]) -> str:
    """A percentile bootstrap cannot leave 0% or 100%: say so where an estimate sits there."""
    ests = [e for m in result["models"].values()
            for e in [m["accuracy"], *m["per_class"].values()] if e.get("n")]
    if not any(e["mean"] in (0.0, 1.0) for e in ests):
        return ""
    return ("note: an accuracy of 0% or 100% has a zero-width bootstrap interval; with n images "
            "all right the error rate can still be up to about 3/n (95%, the rule of three).")
