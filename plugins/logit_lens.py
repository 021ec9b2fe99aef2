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
from vitscope.plugin import n_images, rows_per_read
from vitscope.plugin.mech import Moments, require_readout, wilson
from vitscope.plugin.tokens import cls_index
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

    def check(self, options, shape) -> None:
        """It reads the CLS residual: a model without a CLS token is told before capture."""
        cls_index(shape.layout, self.name)

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        readout = require_readout(dump, self.name, NORM)
        blocks = dump.match("blocks.*.out")
        n = n_images(dump, options.limit)
        cls = cls_index(dump.layout, self.name)
        # chunks of images, every block's CLS per chunk: per-image arrays go to results.npz
        # as they come, so memory is one chunk whatever N is
        step = min(rows_per_read(dump[b], (cls,)) for b in blocks)
        chunks = [(s, min(n, s + step)) for s in range(0, n, step)]
        out_dir = Path(out_dir)

        def read(s, e):
            return [np.asarray(dump[b][s:e, cls], np.float32) for b in blocks]
        if "head.weight" in readout:
            return self._classifier(dump, readout, read, chunks, len(blocks), n, out_dir,
                                    options)
        return self._features(dump, readout, read, chunks, len(blocks), n, out_dir, options)

    # -------------------------------------------------------------------- classifier models

    def _classifier(self, dump, readout, read, chunks, L, n, out_dir, options) -> list[Path]:
        C = readout["head.weight"].shape[0]
        known_n, correct, agree = 0, np.zeros(L), np.zeros(L)
        tp = Moments()
        class_correct, class_count = np.zeros((C, L)), np.zeros(C)
        label_count = np.zeros(C)
        settle_hist = np.zeros(L + 1, np.int64)
        with F.Results(out_dir) as results:
            for s, e in chunks:
                logits = np.stack([lens_logits(r, readout) for r in read(s, e)], axis=1)
                preds = logits.argmax(-1)                                         # m×L
                final = np.asarray(dump.logits[s:e], np.float32).argmax(-1)
                labels, target = dump.labels[s:e], dump.target[s:e]
                known = (labels >= 0) & (labels < C)
                known_n += int(known.sum())
                correct += (preds == labels[:, None])[known].sum(0)
                agree += (preds == final[:, None]).sum(0)
                tprob = softmax(logits)[np.arange(e - s), :, target]              # m×L
                tp.add(tprob)
                lab = labels[known]
                np.add.at(class_correct, lab, preds[known] == lab[:, None])
                class_count += np.bincount(lab, minlength=C)
                label_count += np.bincount(lab, minlength=C)
                settle = settle_layer(preds, final)
                settle_hist += np.bincount(settle, minlength=L + 1)
                results.append("lens_logits", logits.astype(np.float32))
                results.append("preds_by_block", preds)
                results.append("target_prob", tprob.astype(np.float32))
                results.append("settle_block", settle)
            acc = wilson(correct, known_n)
            agree = wilson(agree, n)
            tp = tp.ci()
            chance = float(label_count.max() / max(known_n, 1))
            with np.errstate(invalid="ignore", divide="ignore"):
                per_class = class_correct / class_count[:, None]
            readable = next((b for b in range(L) if acc[1][b] > chance), None)
            majority = next((b for b in range(L) if agree[0][b] >= 0.9), None)
            summary = {"images": n, "blocks": L, "chance (most frequent label)": round(chance, 4),
                       "first block above chance (Wilson lower bound)": readable,
                       "first block agreeing with the final prediction on ≥90% of images":
                           majority}
            for b in range(L):
                summary[f"block {b} accuracy"] = (f"{acc[0][b]:.3f} [{acc[1][b]:.3f}, "
                                                  f"{acc[2][b]:.3f}]")
            results["accuracy"] = np.stack(acc, 1)
            results["agreement"] = np.stack(agree, 1)
            results["target_prob_mean"] = np.stack(tp, 1)
            results["per_class_accuracy"] = per_class
            results["settle_histogram"] = settle_hist
            results["chance"] = np.float64(chance)
            files = results.save(summary)
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
                ax.bar(np.arange(L + 1), settle_hist, color="C0")
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

    def _features(self, dump, readout, read, chunks, L, n, out_dir, options) -> list[Path]:
        def unit(v):
            v = final_norm(v, readout)
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        same, other = Moments(), Moments()
        # baseline: each image against the previous image's final embedding (image 0 against
        # the last one): a pairing that does not depend on how the images are chunked
        prev = unit(read(n - 1, n)[-1]) if n else None
        with F.Results(out_dir) as results:
            for s, e in chunks:
                normed = [unit(r) for r in read(s, e)]
                last = normed[-1]
                shifted = np.concatenate([prev, last[:-1]])
                prev = last[-1:]
                cos = np.stack([(v * last).sum(1) for v in normed], axis=1)          # m×L
                cos_other = np.stack([(v * shifted).sum(1) for v in normed], axis=1)
                same.add(cos)
                other.add(cos_other)
                results.append("cosine_to_final", cos.astype(np.float32))
            ci = same.ci()
            other_mean = other.mean
            summary = {"images": n, "blocks": L,
                       "model": "feature model (no linear head on CLS)"}
            for b in range(L):
                summary[f"block {b} cosine to final embedding"] = round(float(ci[0][b]), 4)
            results["cosine_ci"] = np.stack(ci, 1)
            results["cosine_other_image_mean"] = other_mean
            files = results.save(summary)
        x = np.arange(L)
        if options.static:
            with F.style() as plt:
                fig, ax = plt.subplots(figsize=(6, 3.8))
                ax.plot(x, ci[0], marker="o", label="same image")
                ax.fill_between(x, ci[1], ci[2], alpha=0.2)
                ax.plot(x, other_mean, ls=":", color="k", label="another image (baseline)")
                ax.set(xlabel="block", ylabel="cosine similarity",
                       title="Logit lens (feature model): CLS vs the final embedding")
                ax.legend(frameon=False)
                files.append(F.save_static(fig, out_dir / "logit_lens", options))
        if options.interactive:
            import plotly.graph_objects as go
            fig = go.Figure([go.Scatter(x=x, y=ci[0], name="same image"),
                             go.Scatter(x=x, y=other_mean, name="another image")])
            fig.update_layout(title="Cosine similarity to the final embedding by block")
            files.append(I.save_html(fig, out_dir / "logit_lens.html", options))
        return files
