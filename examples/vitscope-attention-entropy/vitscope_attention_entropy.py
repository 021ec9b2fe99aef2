"""A third-party vitscope plugin: attention entropy per layer and head.

The entropy of an attention row, H = -sum_j p_j log p_j (nats), is log(T) when a query
attends uniformly to all T tokens and 0 when it attends to one token. Averaged over queries
and images it tells which heads look broadly and which focus, layer by layer.

Registered in setup.cfg under the `vitscope.plugins` entry-point group; uses only vitscope's
public API (the Dump it is handed, `vitscope.plugin.Option`, `vitscope.figures`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope import figures
from vitscope.plugin import Option

CHUNK = 256  # images read at a time: memory stays bounded for any dump size


def attention_entropy(attn: np.ndarray) -> np.ndarray:
    """N×H×T×T attention (rows sum to 1) -> N×H×T entropy of each query row, in nats."""
    p = np.asarray(attn, dtype=np.float64)
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1)


class AttentionEntropy:
    """Entropy of the attention rows per layer and head (all queries, and the CLS query)."""

    name = "attention-entropy"
    requires = ("blocks.*.attn.weights",)
    options = (Option("annotate", bool, True, "write the value in each heatmap cell"),)

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        names = dump.match("blocks.*.attn.weights")
        n = len(dump) if options.limit is None else min(len(dump), options.limit)
        mean_all, mean_cls = [], []
        # the CLS query's row (the first prefix token for a model without CLS)
        cls = dump.layout.cls_index if dump.layout.cls_index is not None else 0
        for name in names:
            total = total_cls = 0.0
            for start in range(0, n, CHUNK):
                ent = attention_entropy(dump[name][start:min(n, start + CHUNK)])   # B×H×T
                total = total + ent.mean(axis=2).sum(axis=0)
                total_cls = total_cls + ent[:, :, cls].sum(axis=0)
            mean_all.append(total / n)
            mean_cls.append(total_cls / n)
        mean_all, mean_cls = np.array(mean_all), np.array(mean_cls)          # L×H
        T = dump.layout.num_tokens
        out_dir = Path(out_dir)
        files = figures.save_results(out_dir, {"entropy": mean_all, "entropy_cls": mean_cls,
                                               "max_entropy": np.log(T), "images": n},
                                     {"images": n, "max_entropy_nats": round(float(np.log(T)), 4),
                                      "lowest_head": _lowest(mean_all)})
        if options.static:
            files.append(self._static(mean_all, mean_cls, np.log(T), out_dir, options))
        if options.interactive:
            files.append(self._interactive(mean_all, mean_cls, np.log(T), out_dir, options))
        return files

    @staticmethod
    def _static(ent, ent_cls, max_ent, out_dir, options) -> Path:
        L, H = ent.shape
        with figures.style() as plt:
            fig, (ax, ax2) = plt.subplots(1, 2, figsize=(4 + 0.55 * H + 4.5, 1.2 + 0.35 * L),
                                          gridspec_kw={"width_ratios": [0.4 + 0.55 * H, 4.5]})
            im = ax.imshow(ent, cmap="viridis", vmin=0, vmax=max_ent, aspect="auto")
            if options.annotate and L * H <= 400:
                for (l, h), v in np.ndenumerate(ent):
                    ax.text(h, l, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 * max_ent else "black")
            ax.set(xlabel="head", ylabel="layer", title="mean entropy (nats)",
                   xticks=range(H), yticks=range(L))
            fig.colorbar(im, ax=ax, fraction=0.05, label=f"0 = one token, {max_ent:.2f} = uniform")
            x = np.arange(L)
            ax2.plot(x, ent.mean(axis=1), "o-", ms=3, label="all queries (mean of heads)")
            ax2.plot(x, ent_cls.mean(axis=1), "s-", ms=3, label="CLS query (mean of heads)")
            ax2.fill_between(x, ent.min(axis=1), ent.max(axis=1), alpha=0.15, lw=0,
                             label="range over heads")
            ax2.axhline(max_ent, color="gray", ls="--", lw=1, label="uniform attention")
            ax2.set(xlabel="layer", ylabel="entropy (nats)", ylim=(0, max_ent * 1.05),
                    title="attention entropy vs depth")
            ax2.xaxis.set_major_locator(plt.MaxNLocator(integer=True))   # layers, never 0.5
            ax2.legend(frameon=False, fontsize=7)
            fig.tight_layout()
            return figures.save_static(fig, out_dir / "attention_entropy", options)

    @staticmethod
    def _interactive(ent, ent_cls, max_ent, out_dir, options) -> Path:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        fig = make_subplots(rows=1, cols=2, subplot_titles=("all queries", "CLS query"))
        for col, values in ((1, ent), (2, ent_cls)):
            fig.add_trace(go.Heatmap(z=values, zmin=0, zmax=max_ent, colorscale="Viridis",
                                     showscale=col == 2,
                                     hovertemplate="layer %{y} head %{x}: %{z:.3f} nats"
                                                   "<extra></extra>"), row=1, col=col)
        fig.update_yaxes(autorange="reversed", title="layer")
        fig.update_xaxes(title="head")
        fig.update_layout(title=f"Attention entropy per layer and head (uniform = {max_ent:.2f})",
                          height=max(360, 40 * ent.shape[0] + 160), width=900)
        return figures.save_html(fig, out_dir / "attention_entropy.html", options)


def _lowest(ent: np.ndarray) -> str:
    l, h = np.unravel_index(np.argmin(ent), ent.shape)
    return f"layer {l} head {h} ({ent[l, h]:.3f} nats)"
