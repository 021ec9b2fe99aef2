"""`logit-lens`: the CLS residual after each block read through the final norm and the head.

At which depth does the class become readable? For every block b, the CLS token of the
residual stream `blocks.{b}.out` is put through the model's own final LayerNorm and linear
head (stored in the dump: vitscope.model.readout), as if the blocks after b were skipped
(nostalgebraist's logit lens; on ViTs, e.g. ViT-Prisma). Per block: accuracy against the
labels and agreement with the model's final prediction (Wilson 95% intervals), the mean
probability of the target class (95% interval), accuracy per class; per image: the block
from which its prediction stays the final one. Chance (the most frequent label's share) is
the baseline every accuracy is drawn against. The last block's lens is the model's own logits
(a test checks it).

For a feature model (no linear head on CLS) the read-out is the cosine similarity of each
block's normalised CLS token with the final embedding (the last block's), per block.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.dump.derive import layer_norm
from vitscope.plugin import n_images
from vitscope.plugin.mech import mean_ci, pooled, require_readout, wilson
from vitscope.render import figures as F
from vitscope.render import interactive as I

NORM = ("norm.weight", "norm.bias", "norm.eps")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def lens_logits(resid_cls: np.ndarray, readout: dict) -> np.ndarray:
    """N×D CLS residual -> N×C logits through the final norm and the head."""
    normed = final_norm(resid_cls, readout)
    return normed @ readout["head.weight"].T + readout.get("head.bias", 0.0)


def final_norm(x: np.ndarray, readout: dict) -> np.ndarray:
    return layer_norm(x, readout.get("norm.weight"), readout.get("norm.bias"),
                      float(readout.get("norm.eps", 1e-6)))


def settle_layer(preds: np.ndarray, final: np.ndarray) -> np.ndarray:
    """N×L predictions by block, N final predictions -> the first block from which every
    later block predicts the final class (L where not even the last one does)."""
    agree = preds == final[:, None]
    L = preds.shape[1]
    # the suffix of blocks that all agree: its start is the settle layer
    tail = np.flip(np.cumprod(np.flip(agree, axis=1), axis=1), axis=1).astype(bool)
    return np.where(tail.any(axis=1), L - tail.sum(axis=1), L)


class LogitLens:
    """The CLS residual after each block through the final norm and head: when the class appears."""

    name = "logit-lens"
    requires = ("blocks.*.out",)
    options = ()

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        readout = require_readout(dump, self.name, NORM)
        blocks = dump.match("blocks.*.out")
        n = n_images(dump, options.limit)
        resid = [pooled(dump, b, n, "cls", self.name) for b in blocks]        # L × N×D
        out_dir = Path(out_dir)
        if "head.weight" in readout:
            return self._classifier(dump, readout, resid, n, out_dir, options)
        return self._features(dump, readout, resid, n, out_dir, options)

    # -------------------------------------------------------------------- classifier models

    def _classifier(self, dump, readout, resid, n, out_dir, options) -> list[Path]:
        L = len(resid)
        logits = np.stack([lens_logits(r, readout) for r in resid], axis=1)     # N×L×C
        C = logits.shape[-1]
        preds = logits.argmax(-1)
        final = np.asarray(dump.logits[:n], np.float32).argmax(-1)
        labels, target = dump.labels[:n], dump.target[:n]
        known = (labels >= 0) & (labels < C)
        correct = (preds == labels[:, None])[known]
        acc = wilson(correct.sum(0), known.sum())
        agree = wilson((preds == final[:, None]).sum(0), n)
        probs = softmax(logits)
        tprob = probs[np.arange(n), :, target] if n else np.zeros((0, L))
        tp = mean_ci(tprob) if n > 1 else (tprob.mean(0), tprob.mean(0), tprob.mean(0))
        chance = float(np.bincount(labels[known], minlength=C).max() / max(known.sum(), 1))
        per_class = np.full((C, L), np.nan)
        for c in range(C):
            rows = labels == c
            if rows.any():
                per_class[c] = (preds[rows] == c).mean(0)
        settle = settle_layer(preds, final)
        readable = next((b for b in range(L) if acc[1][b] > chance), None)
        majority = next((b for b in range(L) if agree[0][b] >= 0.9), None)
        summary = {"images": n, "blocks": L, "chance (most frequent label)": round(chance, 4),
                   "first block above chance (Wilson lower bound)": readable,
                   "first block agreeing with the final prediction on ≥90% of images": majority}
        for b in range(L):
            summary[f"block {b} accuracy"] = f"{acc[0][b]:.3f} [{acc[1][b]:.3f}, {acc[2][b]:.3f}]"
        files = F.save_results(out_dir, {
            "lens_logits": logits.astype(np.float16), "preds_by_block": preds,
            "target_prob": tprob.astype(np.float32), "settle_block": settle,
            "accuracy": np.stack(acc, 1), "agreement": np.stack(agree, 1),
            "target_prob_mean": np.stack(tp, 1), "per_class_accuracy": per_class,
            "chance": np.float64(chance)}, summary)
        x = np.arange(L)
        if options.static:
            with F.style() as plt:
                fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
                ax = axes[0]
                for (m, lo, hi), label, color in ((acc, "accuracy (labels)", "C0"),
                                                  (agree, "agrees with final prediction", "C1")):
                    ax.plot(x, m, marker="o", color=color, label=label)
                    ax.fill_between(x, lo, hi, color=color, alpha=0.2)
                ax.axhline(chance, color="k", ls=":", label="chance (most frequent label)")
                ax.set(xlabel="block", ylabel="share of images", ylim=(0, 1.02),
                       title="Logit lens: accuracy by block (95% Wilson)")
                ax.legend(frameon=False, fontsize=7)
                ax = axes[1]
                ax.plot(x, tp[0], marker="o", color="C2")
                ax.fill_between(x, tp[1], tp[2], color="C2", alpha=0.2)
                ax.axhline(1 / C, color="k", ls=":", label="uniform 1/C")
                ax.set(xlabel="block", ylabel="p(target)", ylim=(0, 1.02),
                       title=f"Target-class probability ({dump.target_spec}), mean ± 95%")
                ax.legend(frameon=False, fontsize=7)
                ax = axes[2]
                im = ax.imshow(per_class, aspect="auto", vmin=0, vmax=1, cmap="viridis")
                ax.set_yticks(range(C), [F.short_name(c, 14) for c in dump.classes[:C]]
                              if dump.classes else range(C))
                ax.set(xlabel="block", title="Accuracy per class by block")
                fig.colorbar(im, ax=ax, fraction=0.05)
                for ax in axes:
                    ax.set_xticks(x)
                fig.suptitle(f"Logit lens over {n} images: the CLS residual after each block "
                             f"through the final norm and head")
                files.append(F.save_static(fig, out_dir / "logit_lens", options))
                fig, ax = plt.subplots(figsize=(5, 3.2))
                ax.hist(settle, bins=np.arange(L + 2) - 0.5, color="C0")
                ax.set(xlabel="block from which the prediction stays the final one "
                              f"({L}: never)", ylabel="images",
                       title="Where each image's prediction settles")
                files.append(F.save_static(fig, out_dir / "settle_block", options))
        if options.interactive:
            import plotly.graph_objects as go
            from plotly.subplots import make_subplots
            fig = make_subplots(rows=1, cols=2, subplot_titles=(
                "accuracy and agreement by block (95% Wilson)", "accuracy per class"))
            for (m, lo, hi), label in ((acc, "accuracy"), (agree, "agrees with final")):
                fig.add_trace(go.Scatter(x=x, y=m, name=label, error_y=dict(
                    type="data", symmetric=False, array=hi - m, arrayminus=m - lo)), 1, 1)
            fig.add_trace(go.Scatter(x=x, y=tp[0], name="p(target)"), 1, 1)
            fig.add_hline(y=chance, line_dash="dot", annotation_text="chance", row=1, col=1)
            fig.add_trace(go.Heatmap(z=per_class, x=list(x), y=list(dump.classes[:C]) or None,
                                     zmin=0, zmax=1, colorscale="Viridis", showscale=True), 1, 2)
            fig.update_layout(title=f"Logit lens over {n} images", height=480, width=1100)
            files.append(I.save_html(fig, out_dir / "logit_lens.html", options))
        return files

    # ----------------------------------------------------------------------- feature models

    def _features(self, dump, readout, resid, n, out_dir, options) -> list[Path]:
        L = len(resid)
        normed = [final_norm(r, readout) for r in resid]
        last = normed[-1] / np.maximum(np.linalg.norm(normed[-1], axis=1, keepdims=True), 1e-12)
        cos = np.stack([(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                         * last).sum(1) for v in normed], axis=1)                # N×L
        ci = mean_ci(cos) if n > 1 else (cos.mean(0),) * 3
        # baseline: the same similarity to another image's final embedding
        other = np.stack([(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                           * np.roll(last, 1, axis=0)).sum(1) for v in normed], axis=1)
        summary = {"images": n, "blocks": L, "model": "feature model (no linear head on CLS)"}
        for b in range(L):
            summary[f"block {b} cosine to final embedding"] = round(float(ci[0][b]), 4)
        files = F.save_results(out_dir, {"cosine_to_final": cos, "cosine_ci": np.stack(ci, 1),
                                         "cosine_other_image": other}, summary)
        x = np.arange(L)
        if options.static:
            with F.style() as plt:
                fig, ax = plt.subplots(figsize=(6, 3.8))
                ax.plot(x, ci[0], marker="o", label="same image")
                ax.fill_between(x, ci[1], ci[2], alpha=0.2)
                ax.plot(x, other.mean(0), ls=":", color="k", label="another image (baseline)")
                ax.set(xlabel="block", ylabel="cosine similarity",
                       title="Logit lens (feature model): CLS vs the final embedding")
                ax.legend(frameon=False)
                files.append(F.save_static(fig, out_dir / "logit_lens", options))
        if options.interactive:
            import plotly.graph_objects as go
            fig = go.Figure([go.Scatter(x=x, y=ci[0], name="same image"),
                             go.Scatter(x=x, y=other.mean(0), name="another image")])
            fig.update_layout(title="Cosine similarity to the final embedding by block")
            files.append(I.save_html(fig, out_dir / "logit_lens.html", options))
        return files
