"""`logit-attribution`: direct logit attribution (DLA) of every head and every MLP to the target
logit, through the final norm linearised at each image's own scale (as TransformerLens does).

The final CLS residual is a sum of parts: the embedding (the direct path), each head's
projected output (`attn.head_out` through the output projection, times the layer scale),
each block's projection bias and each MLP's output (times its layer scale). The final
LayerNorm is LN(x) = (x − mean(x)) / σ · γ + β; with σ fixed at the image's own value it is
linear, so the target logit is exactly

    logit[t] = Σ_parts (W[t] ⊙ γ − mean(W[t] ⊙ γ)) · part / σ  +  W[t] · β + b[t]

and each term is that part's direct contribution: what it writes straight into the logit,
not what it does through later blocks (ablation, `vitscope ablate`, measures that). The
parts plus the constant sum to the logit (a test checks it; fp16 storage bounds the error).
Shown: a layer × head heatmap of the mean over images with the per-image spread, the MLPs,
the direct path, and as the baseline the same attribution to the mean over all classes (what
a component adds to every class alike, not to the target in particular).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitscope.dump.derive import head_contributions
from vitscope.errors import NotApplicable
from vitscope.plugin import n_images, rows_per_read
from vitscope.plugin.mech import Moments, require_readout
from vitscope.plugin.tokens import cls_index
from vitscope.render import figures as F
from vitscope.render import interactive as I

READOUT = ("norm.weight", "head.weight")


def attribute(parts: dict, final: np.ndarray, readout: dict, classes: np.ndarray
              ) -> tuple[dict, np.ndarray, np.ndarray]:
    """Direct logit attribution of N×...×D CLS parts to the logits of `classes` (N).

    `parts` maps a name to an N×...×D array (the residual contributions), `final` is the N×D
    final CLS residual (its σ linearises the norm). Returns ({name: N×... attributions},
    the N constant term W[t]·β + b[t], the N logits the read-out gives for `final`)."""
    final = np.asarray(final, np.float64)
    eps = float(readout.get("norm.eps", 1e-6))
    sigma = np.sqrt(final.var(axis=1) + eps)                                   # N
    gamma = readout.get("norm.weight", np.ones(final.shape[1], np.float32))
    beta = readout.get("norm.bias", np.zeros(final.shape[1], np.float32))
    W, b = readout["head.weight"].astype(np.float64), readout.get("head.bias")
    u = W[classes] * gamma                                                      # N×D
    u = u - u.mean(axis=1, keepdims=True)          # the norm's centring, moved onto u
    const = W[classes] @ beta + (b[classes] if b is not None else 0.0)
    out = {}
    for name, part in parts.items():
        p = np.asarray(part, np.float64)
        shape = (len(u),) + (1,) * (p.ndim - 2) + (u.shape[1],)
        out[name] = (p * u.reshape(shape)).sum(-1) / sigma.reshape((-1,) + (1,) * (p.ndim - 2))
    normed = (final - final.mean(1, keepdims=True)) / sigma[:, None] * gamma + beta
    logits = (normed * W[classes]).sum(1) + (b[classes] if b is not None else 0.0)
    return out, const, logits


class LogitAttribution:
    """Direct logit attribution of each head and MLP to the target logit (final norm linearised)."""

    name = "logit-attribution"
    requires = ("embed.out", "blocks.*.attn.head_out", "blocks.*.mlp.out", "blocks.*.out")
    options = ()

    def check(self, options, shape) -> None:
        """Not for a feature model (no logits to attribute) or a distilled one (its logit is
        the mean of two heads on two tokens), nor without a CLS token."""
        cls_index(shape.layout, self.name)
        if not shape.classes:
            raise NotApplicable(f"{self.name} attributes a class logit, and this feature model "
                                f"has no classifier head.", "needs a classifier head (this is "
                                f"a feature model)", "logit-lens compares each block with the "
                                f"final embedding instead")
        if shape.layout.count("dist"):
            raise NotApplicable(f"{self.name} reads one linear head on CLS, and this distilled "
                                f"model averages two heads (CLS and distillation token).",
                                "needs one linear head on CLS (this model averages two)")

    def render(self, dump, out_dir: Path, options) -> list[Path]:
        readout = require_readout(dump, self.name, READOUT)
        heads = dump.match("blocks.*.attn.head_out")
        mlps = dump.match("blocks.*.mlp.out")
        L = len(heads)
        cls = cls_index(dump.layout, self.name)
        n = n_images(dump, options.limit)
        target = dump.target[:n]
        C = readout["head.weight"].shape[0]
        final_name = dump.match("blocks.*.out")[-1]
        H = dump[heads[0]].shape[1]
        # chunks of images sized by the widest read (one block's CLS of every head)
        step = min(rows_per_read(dump[h], (slice(None), cls)) for h in heads)
        heads_m, mlp_m, direct_m = Moments(), Moments(), Moments()
        base_heads, base_mlp = np.zeros((L, H)), np.zeros(L)   # attribution to the mean class
        worst = 0.0
        out_dir = Path(out_dir)
        with F.Results(out_dir) as results:
            for s in range(0, n, step):
                e = min(n, s + step)
                final = np.asarray(dump[final_name][s:e, cls], np.float32)
                parts = {"embed": np.asarray(dump["embed.out"][s:e, cls], np.float32)}
                for i in range(L):
                    ls1 = readout.get(f"blocks.{i}.ls1")
                    ls2 = readout.get(f"blocks.{i}.ls2")
                    z = np.asarray(dump[heads[i]][s:e, :, cls], np.float32)       # m×H×dh
                    parts[f"heads{i}"] = head_contributions(
                        z, readout[f"blocks.{i}.attn.proj.weight"], ls1)
                    bias = readout.get(f"blocks.{i}.attn.proj.bias", np.zeros(final.shape[1]))
                    parts[f"bias{i}"] = np.broadcast_to(
                        bias * (ls1 if ls1 is not None else 1.0), final.shape)
                    m = np.asarray(dump[mlps[i]][s:e, cls], np.float32)
                    parts[f"mlp{i}"] = m * ls2 if ls2 is not None else m
                attr, const, _ = attribute(parts, final, readout, target[s:e])
                head_attr = np.stack([attr[f"heads{i}"] for i in range(L)], axis=1)   # m×L×H
                mlp_attr = np.stack([attr[f"mlp{i}"] for i in range(L)], axis=1)      # m×L
                bias_attr = np.stack([attr[f"bias{i}"] for i in range(L)], axis=1)
                total = attr["embed"] + const + head_attr.sum((1, 2)) + mlp_attr.sum(1) \
                    + bias_attr.sum(1)
                stored = np.asarray(dump.logits[s:e], np.float32)[np.arange(e - s), target[s:e]]
                worst = max(worst, float(np.abs(total - stored).max()))
                heads_m.add(head_attr)
                mlp_m.add(mlp_attr)
                direct_m.add(attr["embed"])
                # baseline: the same parts' attribution to each class, averaged over classes
                every = [attribute(parts, final, readout, np.full(e - s, c))[0] for c in range(C)]
                for i in range(L):
                    base_heads[i] += np.mean([a[f"heads{i}"] for a in every], axis=0).sum(0)
                    base_mlp[i] += np.mean([a[f"mlp{i}"] for a in every], axis=0).sum()
                for key, value in (("head_dla", head_attr), ("mlp_dla", mlp_attr),
                                   ("bias_dla", bias_attr), ("direct_dla", attr["embed"]),
                                   ("constant", const), ("sum_of_parts", total),
                                   ("logit", stored)):
                    results.append(key, np.asarray(value, np.float32 if key.endswith("dla")
                                                   else np.float64))
            base_heads /= max(n, 1)
            base_mlp /= max(n, 1)
            hm, hlo, hhi = heads_m.ci()
            mm, mlo, mhi = mlp_m.ci()
            spread = heads_m.std
            direct_mean = float(direct_m.mean) if n else float("nan")
            ranked = sorted(((hm[i, h], f"L{i}H{h}") for i in range(L) for h in range(H)),
                            key=lambda t: -abs(t[0]))
            summary = {"images": n, "target": dump.target_spec,
                       "sum of parts vs logit (max |error|)": round(worst, 5),
                       "direct path (embedding), mean": round(direct_mean, 4),
                       "top heads (mean DLA)": ", ".join(f"{nm} {v:+.3f}" for v, nm in ranked[:5]),
                       "MLPs (mean DLA by block)": ", ".join(f"{v:+.3f}" for v in mm)}
            results["head_mean_ci"] = np.stack([hm, hlo, hhi])
            results["mlp_mean_ci"] = np.stack([mm, mlo, mhi])
            results["baseline_head_mean_class"] = base_heads
            results["baseline_mlp_mean_class"] = base_mlp
            files = results.save(summary)
        if options.static:
            files.append(self._figure(hm, spread, mm, mlo, mhi, base_heads, base_mlp, direct_mean,
                                      n, dump.target_spec, out_dir, options))
        if options.interactive:
            import plotly.graph_objects as go
            from plotly.subplots import make_subplots
            fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], subplot_titles=(
                "mean DLA per head (hover: 95% interval, spread)", "MLPs and baseline"))
            text = [[f"{hm[i, h]:+.3f} [{hlo[i, h]:+.3f}, {hhi[i, h]:+.3f}], sd {spread[i, h]:.3f}"
                     for h in range(H)] for i in range(L)]
            lim = float(np.abs(hm).max()) or 1.0
            fig.add_trace(go.Heatmap(z=hm, x=[f"head {h}" for h in range(H)],
                                     y=[f"block {i}" for i in range(L)], text=text,
                                     hoverinfo="text+x+y", colorscale="RdBu", zmid=0,
                                     zmin=-lim, zmax=lim), 1, 1)
            fig.add_trace(go.Bar(x=[f"block {i}" for i in range(L)], y=mm, name="MLP (target)",
                                 error_y=dict(type="data", symmetric=False, array=mhi - mm,
                                              arrayminus=mm - mlo)), 1, 2)
            fig.add_trace(go.Bar(x=[f"block {i}" for i in range(L)], y=base_mlp,
                                 name="MLP (mean class, baseline)"), 1, 2)
            fig.update_layout(title=f"Direct logit attribution to the target logit "
                                    f"({dump.target_spec}), {n} images", height=520, width=1100)
            files.append(I.save_html(fig, out_dir / "logit_attribution.html", options))
        return files

    @staticmethod
    def _figure(hm, spread, mm, mlo, mhi, base_heads, base_mlp, direct, n, target, out_dir,
                options) -> Path:
        L, H = hm.shape
        with F.style() as plt:
            fig, axes = plt.subplots(1, 3, figsize=(13, 0.5 * L + 2.8),
                                     gridspec_kw={"width_ratios": [H + 1, H + 1, 4]})
            lim = float(np.abs(hm).max()) or 1.0
            for ax, values, title, cmap, lo in (
                    (axes[0], hm, "mean DLA per head", "RdBu_r", -lim),
                    (axes[1], spread, "per-image spread (sd)", "viridis", 0)):
                im = ax.imshow(values, cmap=cmap, vmin=lo, vmax=lim if lo else None,
                               aspect="auto")
                ax.set_xticks(range(H))
                ax.set_yticks(range(L))
                ax.set(xlabel="head", ylabel="block" if lo else "", title=title)
                if not lo:   # the same rows as the first panel: its block labels serve both,
                    ax.tick_params(labelleft=False)   # and they would meet its colour bar
                for i in range(L):
                    for h in range(H):
                        ax.text(h, i, f"{values[i, h]:.2f}", ha="center", va="center", fontsize=6)
                fig.colorbar(im, ax=ax, fraction=0.05)
            ax = axes[2]
            y = np.arange(L)
            ax.barh(y - 0.2, mm, 0.4, xerr=[mm - mlo, mhi - mm], label="MLP → target", color="C0")
            ax.barh(y + 0.2, base_mlp, 0.4, label="MLP → mean class (baseline)", color="#9ca3af")
            ax.axvline(0, color="k", lw=0.6)
            ax.invert_yaxis()
            ax.set_yticks(y)
            # block labels on the right: on the left they would meet the colour bar beside it
            ax.yaxis.tick_right()
            ax.set(xlabel="logit", title=f"MLPs; direct path {direct:+.2f}")
            ax.legend(frameon=False, fontsize=7)
            fig.suptitle(f"Direct logit attribution to the target logit ({target}), {n} images, "
                         f"final norm linearised per image")
            return F.save_static(fig, out_dir / "logit_attribution", options)
