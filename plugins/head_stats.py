"""`head-stats`: what each attention head does, over the whole dump, as layer × head figures.

- Mean attention distance (the ViT paper's Figure 7; Dosovitskiy et al. 2021): for each patch
  query, the distance to each patch key weighted by the attention it pays it (renormalised
  over the patch keys), averaged over queries and images; in patches (between patch centres
  on the grid) and in pixels (times the patch size, per axis). The baseline is a head that
  attends uniformly: the mean distance between two patches of the grid.
- Attention entropy (nats) of each query's row over all tokens, against the uniform row's
  log T.
- How much of a patch query's attention goes to CLS, to itself, and to all prefix tokens
  (CLS, distillation, registers).
Streaming over the dump one block and a chunk of images at a time, vectorised (no loop over
tokens); memory bounded by the chunk. (The example plugin vitscope-attention-entropy stays
the example of a third-party plugin.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.plugin import n_images, read_chunks
from vitscope.render import figures as F
from vitscope.render import interactive as I

STATS = (("distance_px", "mean attention distance (pixels)"),
         ("entropy", "attention entropy (nats)"),
         ("to_cls", "attention to CLS"), ("to_self", "attention to itself"),
         ("to_prefix", "attention to prefix tokens"))


def patch_distances(grid: tuple[int, int], patch: tuple[int, int] = (1, 1)) -> np.ndarray:
    """P×P Euclidean distances between patch centres (row-major grid), in units of `patch`
    (h, w) per axis: (1, 1) gives patches, the patch size in pixels gives pixels."""
    gh, gw = grid
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    dy = (rows[:, None] - rows[None, :]) * float(patch[0])
    dx = (cols[:, None] - cols[None, :]) * float(patch[1])
    return np.sqrt(dy * dy + dx * dx)


def mean_distance(weights: np.ndarray, prefix: int, dist: np.ndarray) -> np.ndarray:
    """N×H×T×T attention -> N×H mean attention distance over the patch queries, each row's
    weights on the patch keys renormalised to sum to 1 (rows with no patch mass count 0)."""
    a = np.asarray(weights, np.float32)[:, :, prefix:, prefix:]
    mass = a.sum(-1, keepdims=True)
    a = np.divide(a, mass, out=np.zeros_like(a), where=mass > 0)
    return np.einsum("nhqk,qk->nhq", a, dist.astype(np.float32), optimize=True).mean(-1)


def entropy(weights: np.ndarray) -> np.ndarray:
    """N×H×T×T -> N×H mean entropy (nats) of the query rows."""
    a = np.asarray(weights, np.float32)
    return -(a * np.log(np.clip(a, 1e-12, None))).sum(-1).mean(-1)


class HeadStats:
    """Per head over the dump: mean attention distance, entropy, attention to CLS/self/prefix."""

    name = "head-stats"
    requires = ("blocks.*.attn.weights",)
    options = ()

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        names = dump.match("blocks.*.attn.weights")
        layout = dump.layout
        prefix = layout.num_prefix_tokens
        grid = tuple(layout.grid)
        patch = tuple(layout.patch_size)          # (height, width) pixels per patch
        d_patch = patch_distances(grid)
        d_px = patch_distances(grid, patch)
        n = n_images(dump, options.limit)
        L, H = len(names), dump[names[0]].shape[1]
        sums = {k: np.zeros((L, H)) for k, _ in STATS}
        sums["distance_patches"] = np.zeros((L, H))
        cls = layout.cls_index
        for i, name in enumerate(names):
            for s, a in read_chunks(dump[name], n):
                dp = mean_distance(a, prefix, d_patch)
                dx = dp if patch == (1, 1) else mean_distance(a, prefix, d_px)
                sums["distance_patches"][i] += dp.sum(0)
                sums["distance_px"][i] += dx.sum(0)
                sums["entropy"][i] += entropy(a).sum(0)
                q = a[:, :, prefix:]                                   # patch queries
                if cls is not None:
                    sums["to_cls"][i] += q[..., cls].mean(-1).sum(0)
                sums["to_prefix"][i] += q[..., :prefix].sum(-1).mean(-1).sum(0)
                sums["to_self"][i] += np.diagonal(a, axis1=2, axis2=3).mean(-1).sum(0)
        means = {k: v / max(n, 1) for k, v in sums.items()}
        uniform_px = float(d_px.mean()) if d_px.size else 0.0
        uniform_patches = float(d_patch.mean()) if d_patch.size else 0.0
        log_t = float(np.log(layout.num_tokens))
        local = [(means["distance_px"][i, h], f"L{i}H{h}") for i in range(L) for h in range(H)]
        local.sort()
        summary = {"images": n, "heads": f"{L} blocks × {H}",
                   "uniform-attention distance (baseline)": f"{uniform_px:.2f} px "
                                                            f"({uniform_patches:.2f} patches)",
                   "uniform entropy log T": round(log_t, 3),
                   "most local heads (px)": ", ".join(f"{nm} {v:.1f}" for v, nm in local[:3]),
                   "most global heads (px)": ", ".join(f"{nm} {v:.1f}" for v, nm in local[-3:])}
        for i in range(L):
            summary[f"block {i} mean distance px (min–max over heads)"] = \
                f"{means['distance_px'][i].min():.1f}–{means['distance_px'][i].max():.1f}"
        files = F.save_results(Path(out_dir), {
            **{k: v.astype(np.float32) for k, v in means.items()},
            "uniform_distance_px": np.float64(uniform_px),
            "uniform_distance_patches": np.float64(uniform_patches),
            "uniform_entropy": np.float64(log_t)}, summary)
        out_dir = Path(out_dir)
        shown = [(k, t) for k, t in STATS if k != "to_cls" or cls is not None]
        if options.static:
            with F.style() as plt:
                fig, grid_axes = plt.subplots(2, 3, figsize=(12, 0.7 * L + 5.0))
                axes = grid_axes.ravel()
                for ax in axes[len(shown) + 1:]:
                    ax.axis("off")
                ax = axes[0]
                for i in range(L):
                    ax.scatter(np.full(H, i), means["distance_px"][i], s=14, color="C0")
                ax.axhline(uniform_px, color="k", ls=":", label="uniform attention")
                ax.set(xlabel="block", ylabel="pixels", title="Mean attention distance per head")
                ax.set_xticks(range(L))
                ax.legend(frameon=False, fontsize=7)
                for ax, (key, title) in zip(axes[1:], shown):
                    im = ax.imshow(means[key], aspect="auto", cmap="viridis")
                    ax.set(xlabel="head", ylabel="block", title=title)
                    ax.set_xticks(range(H))
                    ax.set_yticks(range(L))
                    fig.colorbar(im, ax=ax, fraction=0.05, format="%.3g")
                fig.suptitle(f"Attention heads over {n} images (patch queries; entropy over all "
                             f"{layout.num_tokens} tokens, uniform = {log_t:.2f})")
                fig.subplots_adjust(hspace=0.45, wspace=0.35)
                files.append(F.save_static(fig, out_dir / "head_stats", options))
        if options.interactive:
            import plotly.graph_objects as go
            from plotly.subplots import make_subplots
            fig = make_subplots(rows=1, cols=len(shown), subplot_titles=[t for _, t in shown])
            for c, (key, _) in enumerate(shown):
                fig.add_trace(go.Heatmap(z=means[key], x=[f"head {h}" for h in range(H)],
                                         y=[f"block {i}" for i in range(L)], showscale=False,
                                         colorscale="Viridis"), 1, c + 1)
            fig.update_layout(title=f"Attention heads over {n} images (uniform-attention "
                                    f"distance {uniform_px:.1f} px)", height=450,
                              width=320 * len(shown))
            files.append(I.save_html(fig, out_dir / "head_stats.html", options))
        return files
