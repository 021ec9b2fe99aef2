"""The figures of `vitscope ablate`: a layer × head heatmap (the MLP as the last column) of the
mean change in p(target) per mode, as PNG and as interactive HTML with the intervals."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.render import figures as F
from vitscope.render import interactive as I


def _labels(result) -> list[str]:
    return [f"head {h}" for h in range(result.heads)] + ["MLP"]


def heatmap_png(result, path: Path, title: str) -> Path:
    modes = list(result.effects)
    with F.style() as plt:
        fig, axes = plt.subplots(1, len(modes), figsize=(1.0 + 0.75 * (result.heads + 1) * len(modes)
                                                         + 1.4 * len(modes), 0.5 * result.depth + 2.2),
                                 squeeze=False)
        grids = [result.grid(m) for m in modes]
        lim = max(float(np.nanmax(np.abs(g))) for g in grids) or 1.0
        for ax, mode, grid in zip(axes[0], modes, grids):
            im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
            ax.set_xticks(range(result.heads + 1), _labels(result), rotation=45, ha="right")
            ax.set_yticks(range(result.depth), [f"block {i}" for i in range(result.depth)])
            ax.axvline(result.heads - 0.5, color="k", lw=0.8)
            for i in range(result.depth):
                for h in range(result.heads + 1):
                    name = f"L{i}H{h}" if h < result.heads else f"MLP{i}"
                    dp = result.effects[mode][name][0]
                    star = "*" if dp.hi < 0 or dp.lo > 0 else ""   # interval excludes 0
                    ax.text(h, i, f"{grid[i, h]:+.2f}{star}", ha="center", va="center",
                            fontsize=6)
            ax.set_title(f"{mode}-ablation: Δ p(target)")
            fig.colorbar(im, ax=ax, fraction=0.05)
        fig.suptitle(title)
        fig.subplots_adjust(wspace=0.4)
        return F.save_static(fig, Path(path), None)


def heatmap_html(result, path: Path, title: str) -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    modes = list(result.effects)
    fig = make_subplots(rows=1, cols=len(modes),
                        subplot_titles=[f"{m}-ablation: Δ p(target)" for m in modes])
    for c, mode in enumerate(modes):
        text = []
        for i in range(result.depth):
            row = []
            for h in range(result.heads + 1):
                name = f"L{i}H{h}" if h < result.heads else f"MLP{i}"
                dp, da = result.effects[mode][name]
                row.append(f"{name}: Δp {dp.text()}<br>Δaccuracy {da.text()}")
            text.append(row)
        fig.add_trace(go.Heatmap(z=result.grid(mode), x=_labels(result),
                                 y=[f"block {i}" for i in range(result.depth)], text=text,
                                 hoverinfo="text", colorscale="RdBu", zmid=0,
                                 showscale=c == 0), 1, c + 1)
    fig.update_layout(title=title, height=300 + 30 * result.depth, width=450 * len(modes) + 100)
    return I.save_html(fig, Path(path))
