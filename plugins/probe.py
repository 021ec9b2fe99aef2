"""`probe`: a linear probe (scikit-learn logistic regression) on the CLS token and on the
mean-pooled patch tokens after every block: at which depth the class is linearly readable.

The dump's images are split once (seeded, stratified by label) into a training and a held-out
half; each layer's probe is fitted on the first and scored on the second, with a Wilson 95%
interval on the held-out accuracy. Baselines at every layer: chance (the most frequent
training label, scored on the held-out images) and the same probe trained on shuffled labels
(what a linear probe reads from features alone, with no class in them). "Readable from" is
the first block whose interval lies wholly above both baselines' accuracies. Labels are the
dump's (images without a known label are left out); a dump with no labels at all is probed
for the model's own predictions (is the decision linearly readable before the head?).

Cost: 2 (pools) × 2 (real, shuffled) × blocks fits of an L2 logistic regression on N/2 × D
standardised features; the features of one layer (N×D) are what is held in memory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.errors import NotApplicable, PluginError
from vitscope.plugin import Option, n_images
from vitscope.plugin.mech import POOLS, pooled, wilson
from vitscope.render import figures as F
from vitscope.render import interactive as I


def split(labels: np.ndarray, test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices, stratified by label: each class split in the same proportion."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * test_share))
        k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1 if len(idx) > 1 else 0)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def fit_score(x: np.ndarray, y: np.ndarray, train, test, c: float) -> int:
    """Held-out correct count of a standardised L2 logistic regression fitted on `train`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500))
    model.fit(x[train], y[train])
    return int((model.predict(x[test]) == y[test]).sum())


class Probe:
    """Linear probes on CLS and mean-pooled patches at every block, held-out accuracy with intervals."""

    name = "probe"
    requires = ("blocks.*.out",)
    min_images = 10       # fewer leave nothing to hold out (`analyze --all` skips it)
    options = (
        Option("test_share", float, 0.5, "share of the images held out to score the probes",
               min=0.1, max=0.9),
        Option("c", float, 1.0, "inverse L2 strength of the logistic regression (scikit-learn C)",
               min=1e-6, max=1e6),
        Option("seed", int, 0, "seed of the train/held-out split and the shuffled labels"),
    )

    def check(self, options, shape) -> None:
        if not shape.classes:
            raise NotApplicable(f"{self.name} probes for the model's classes, and this feature "
                                f"model has none.", "needs a classifier's classes (this is a "
                                f"feature model)", "cka compares its layers instead")

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        blocks = dump.match("blocks.*.out")
        n = n_images(dump, options.limit)
        labels = dump.labels[:n]
        # unlabelled images: probe for the model's own prediction (is the decision readable?)
        by_label = bool((labels >= 0).any())
        if not by_label:
            labels = dump.preds[:n]
        keep = np.flatnonzero(labels >= 0)
        y = labels[keep]
        classes, counts = np.unique(y, return_counts=True)
        what = "labels" if by_label else "the model's predictions (no labels)"
        if len(classes) < 2 or (counts >= 2).sum() < 2:
            raise PluginError(f"probe needs at least two classes with two images each to fit "
                              f"and score a probe; '{dump.path}' has {len(keep)} images in "
                              f"{len(classes)} classes of {what}; use more images (-n).")
        train, test = split(y, options.test_share, options.seed)
        shuffled = np.random.default_rng(options.seed + 1).permutation(y[train])
        y_shuf = y.copy()
        y_shuf[train] = shuffled
        pools = [p for p in POOLS if p != "cls" or dump.layout.cls_index is not None]
        L = len(blocks)
        correct = {p: np.zeros(L, int) for p in pools}
        correct_shuf = {p: np.zeros(L, int) for p in pools}
        for b, name in enumerate(blocks):
            for p in pools:
                x = pooled(dump, name, n, p, self.name)[keep]
                correct[p][b] = fit_score(x, y, train, test, options.c)
                correct_shuf[p][b] = fit_score(x, y_shuf, train, test, options.c)
        m = len(test)
        majority = classes[np.argmax(np.bincount(np.searchsorted(classes, y[train]),
                                                 minlength=len(classes)))]
        chance = float((y[test] == majority).mean())
        acc = {p: wilson(correct[p], m) for p in pools}
        shuf = {p: wilson(correct_shuf[p], m) for p in pools}
        readable = {p: next((b for b in range(L) if acc[p][1][b] > max(chance, shuf[p][0][b])),
                            None) for p in pools}
        summary = {"images": n, "probed for": what, "train / held out": f"{len(train)} / {m}",
                   "chance (most frequent training label)": round(chance, 4)}
        for p in pools:
            summary[f"{p}: readable from block (interval above both baselines)"] = readable[p]
            best = int(np.argmax(acc[p][0]))
            summary[f"{p}: best block"] = (f"{best}: {acc[p][0][best]:.3f} "
                                           f"[{acc[p][1][best]:.3f}, {acc[p][2][best]:.3f}]")
        arrays = {"blocks": np.arange(L), "chance": np.float64(chance), "train": keep[train],
                  "test": keep[test]}
        for p in pools:
            arrays[f"{p}_accuracy"] = np.stack(acc[p], 1)
            arrays[f"{p}_shuffled_accuracy"] = np.stack(shuf[p], 1)
        files = F.save_results(Path(out_dir), arrays, summary)
        out_dir = Path(out_dir)
        x = np.arange(L)
        titles = {"cls": "CLS token", "mean": "mean of patch tokens"}
        if options.static:
            with F.style() as plt:
                fig, ax = plt.subplots(figsize=(7, 4))
                for i, p in enumerate(pools):
                    a, s = acc[p], shuf[p]
                    ax.plot(x, a[0], marker="o", color=f"C{i}", label=f"probe on {titles[p]}")
                    ax.fill_between(x, a[1], a[2], color=f"C{i}", alpha=0.2)
                    ax.plot(x, s[0], ls="--", color=f"C{i}", alpha=0.7,
                            label=f"shuffled labels ({titles[p]})")
                ax.axhline(chance, color="k", ls=":", label="chance (most frequent label)")
                ax.set(xlabel="block", ylabel="held-out accuracy", ylim=(0, 1.02),
                       title=f"Linear probes for {what} by block: {len(train)} images to fit, "
                             f"{m} held out (95% Wilson)")
                ax.set_xticks(x)
                ax.legend(frameon=False, fontsize=7)
                files.append(F.save_static(fig, out_dir / "probe", options))
        if options.interactive:
            import plotly.graph_objects as go
            fig = go.Figure()
            for p in pools:
                a = acc[p]
                fig.add_trace(go.Scatter(x=x, y=a[0], name=f"probe on {titles[p]}", error_y=dict(
                    type="data", symmetric=False, array=a[2] - a[0], arrayminus=a[0] - a[1])))
                fig.add_trace(go.Scatter(x=x, y=shuf[p][0], name=f"shuffled labels ({titles[p]})",
                                         line=dict(dash="dash")))
            fig.add_hline(y=chance, line_dash="dot", annotation_text="chance")
            fig.update_layout(title="Linear probe accuracy by block (held out, 95% Wilson)",
                              xaxis_title="block", yaxis_title="accuracy", yaxis_range=[0, 1.02])
            files.append(I.save_html(fig, out_dir / "probe.html", options))
        return files
