"""`vitscope.attention`, `vitscope.embed` and `vitscope.view`: the model's insides for a few
images, with the plugins' own figures inline.

    att = vitscope.attention(model, images)     # .weights N×L×H×T×T, .rollout(), views
    att.view("cls-heatmap")                     # any plugin that reads attention
    emb = vitscope.embed(model, images)         # .cls N×D, .tokens N×L×D, .pca(), the view
    vitscope.view(model, images, "norm-activations")   # any plugin, on these images

Each captures what it shows with vitscope.capture into a temporary float32 dump (the dump a
plugin reads; deleted with the result) and renders plugins in this process, static figures
only: the same figure code as `vitscope analyze`, shown as PNG (and GIF) inline.
"""
from __future__ import annotations

import base64
import json
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitscope.api import display as D
from vitscope.errors import ConfigError, PluginError

SHOWN_FILES = (".png", ".gif", ".svg")
ATTENTION = ("blocks.*.attn.weights",)
EMBEDDING = ("blocks.*.out", "cls")


# ------------------------------------------------------------------------------ figures

class Figures:
    """The static figures one plugin rendered, held in memory: `files` {name: bytes},
    `results` (its results.npz as arrays), `summary` (its summary.json)."""

    def __init__(self, plugin: str, files: dict[str, bytes], results: dict[str, np.ndarray],
                 summary: dict[str, Any]) -> None:
        self.plugin, self.files, self.results, self.summary = plugin, files, results, summary

    def __repr__(self) -> str:
        return f"Figures({self.plugin}: {', '.join(self.files) or 'none'})"

    def __getitem__(self, name: str) -> bytes:
        return self.files[name]

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write the figures into `out_dir`; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in self.files.items():
            (out / name).write_bytes(data)
            paths.append(out / name)
        return paths

    def figure(self, name: str | None = None):
        """A matplotlib figure showing one of the PNGs (default the first), at its size."""
        import io

        from PIL import Image

        from vitscope.render import figures as F
        name = name or next((n for n in self.files if n.endswith(".png")), None)
        if name is None:
            raise ConfigError(f"{self.plugin} drew no PNG figure.")
        image = np.asarray(Image.open(io.BytesIO(self.files[name])).convert("RGB"))
        plt = F.pyplot()
        fig = plt.figure(figsize=(image.shape[1] / F.DPI, image.shape[0] / F.DPI), dpi=F.DPI)
        ax = fig.add_axes([0, 0, 1, 1])
        ax.imshow(image)
        ax.set_axis_off()
        return fig

    def show(self, name: str | None = None) -> None:
        self.figure(name)
        D.show()

    def _repr_png_(self) -> bytes | None:
        return next((d for n, d in self.files.items() if n.endswith(".png")), None)

    def _repr_html_(self) -> str:
        parts = []
        for name, data in self.files.items():
            kind = {"png": "image/png", "gif": "image/gif", "svg": "image/svg+xml"}[
                name.rpartition(".")[2]]
            parts.append(f"<figure style='margin:4px 0'><img alt='{D.esc(name)}' "
                         f"src='data:{kind};base64,{base64.b64encode(data).decode('ascii')}'>"
                         f"<figcaption class='note'>{D.esc(name)}</figcaption></figure>")
        rows = [[k, v] for k, v in self.summary.items()]
        summary = D.table(["summary", ""], rows) if rows else ""
        return D.block(f"{self.plugin}", "".join(parts) + summary)


def render(plugin: str | Any, dump_path: Path, options: dict[str, Any] | None = None,
           files: Sequence[str] | None = None) -> Figures:
    """Render one plugin (a name from the registry, or a plugin object) on a dump in this
    process, static figures only; `files`: keep only figures whose name starts with these."""
    from vitscope.analyze.registry import discover
    from vitscope.analyze.run import missing_hooks
    from vitscope.dump import Dump
    entry = discover().get(plugin) if isinstance(plugin, str) else _entry(plugin)
    if not entry.ok:
        raise PluginError(entry.problem())
    from vitscope.api.options import plugin_options
    values = plugin_options(entry, options)
    with Dump.open(dump_path) as dump, tempfile.TemporaryDirectory(prefix="vitscope-view-") as tmp:
        gone = missing_hooks(dump.names, [entry], dump.model_names, {entry.name: values})
        if gone:
            raise PluginError(f"Plugin '{entry.name}' reads {', '.join(gone[entry.name])}, which "
                              f"this result did not capture; use vitscope.view(model, images, "
                              f"'{entry.name}').")
        out = Path(tmp) / entry.name
        out.mkdir()
        opts = entry.render_options(values, static=True, interactive=False, format="png",
                                    limit=None, run_dir=Path(tmp), smooth=False)
        written = entry.plugin.render(dump, out, opts) or []
        shown = {}
        for path in sorted(Path(p) for p in written):
            if path.suffix.lower() in SHOWN_FILES and path.is_file() and (
                    files is None or path.name.startswith(tuple(files))):
                shown[path.name] = path.read_bytes()
        results = {}
        if (out / "results.npz").is_file():
            with np.load(out / "results.npz", allow_pickle=False) as f:
                results = {k: f[k] for k in f.files}
        summary = json.loads((out / "summary.json").read_text()) \
            if (out / "summary.json").is_file() else {}
    return Figures(entry.name, shown, results, summary)


def _entry(plugin: Any):
    """A registry entry for a plugin object that is not (yet) registered, checked against
    the protocol as an installed one is."""
    from vitscope.analyze.registry import PluginEntry, _Malformed, _validate
    name = str(getattr(plugin, "name", type(plugin).__name__))
    entry = PluginEntry(name, f"{type(plugin).__module__}:{type(plugin).__name__}",
                        "(not installed)", "", False, loaded=True)
    try:
        entry._requires, entry._produces, entry._options, entry._description = \
            _validate(plugin, name)
        entry.plugin = plugin
    except _Malformed as e:
        entry.error, entry.fix = str(e), "fix it to follow the protocol in vitscope.plugin"
    return entry


# ------------------------------------------------------------------------ captured runs

class _Captured:
    """A temporary float32 dump of some images through a model, with what it holds: the
    base of Attention and Embedding (deleted when the object goes)."""

    def __init__(self, model, images, hooks: Sequence[str], *, target: Any = "pred",
                 labels=None, classes=None, n=None, split="val", preprocessed=False,
                 batch_size=None, preprocess=None, normalize=None, processor=None,
                 device=None) -> None:
        from vitscope.api.explaining import resolve_targets
        from vitscope.api.images import load_images
        from vitscope.api.models import ModelSource
        from vitscope.capture import capture
        from vitscope.dump import Dump
        source = ModelSource(model, classes=classes, preprocess=preprocess,
                             normalize=normalize, processor=processor, device=device)
        self._tmp = tempfile.TemporaryDirectory(prefix="vitscope-")
        self._finalizer = weakref.finalize(self, self._tmp.cleanup)
        with source.open() as m:
            batch = load_images(images, m, labels=labels, n=n, split=split,
                                preprocessed=preprocessed)
            spec = resolve_targets(target, m, batch, [])
            spec = "pred" if isinstance(spec, str) or m.num_classes == 0 else spec
            self.path = capture(m.hooked, batch.dataset(m.classes), Path(self._tmp.name) /
                                "view.h5", list(hooks), normalize=(m.mean, m.std),
                                classes=m.classes, dtype="float32", compression="none",
                                seed=None, target=spec, derive=False, batch_size=batch_size,
                                force=True)
            self.model_name, self.classes, self.layout = m.name, list(m.classes), m.layout
            self.headless = m.num_classes == 0
        self._batch = batch
        self.images, self.labels = batch.pixels, batch.labels
        with Dump.open(self.path) as dump:
            self.logits = np.asarray(dump.logits[:], np.float32)
            self.preds = dump.preds
            self._read(dump)
        if self.headless:
            self.probs = None
        else:
            z = np.exp(self.logits - self.logits.max(axis=1, keepdims=True))
            self.probs = z / z.sum(axis=1, keepdims=True)

    def _read(self, dump) -> None:  # pragma: no cover - each kind reads its own
        pass

    @property
    def file_names(self) -> list[str] | None:
        return self._batch.file_names

    def __len__(self) -> int:
        return len(self.images)

    def captions(self) -> list[str]:
        from vitscope.dump import Dump
        from vitscope.render import figures as F
        with Dump.open(self.path) as dump:
            return F.captions(dump, len(dump))

    def view(self, plugin: str | Any, **options) -> Figures:
        """The static figures of `plugin` (a name or a plugin object) on these images,
        with its options as keywords: `att.view("cls-heatmap", layers="last")`."""
        return render(plugin, self.path, options)

    def close(self) -> None:
        """Delete the temporary dump now (views need it; arrays stay)."""
        self._finalizer()


class Attention(_Captured):
    """Per-layer, per-head attention of N images (rows are queries and sum to 1).

    weights          N×L×H×T×T float32 (token order: vitscope.layout, `layout`)
    cls_to_patches   N×L×H×h×w: where the CLS token reads from, on the patch grid
    patches_to_cls   N×L×H×h×w: how much each patch reads from CLS
    rollout(...)     N×h×w attention rollout (the rollout plugin's arithmetic and options)
    view(plugin)     the figures of token-attention, cls-heatmap, rollout, or any plugin that
                     reads attention
    In a notebook: the CLS token's attention by layer and head, CLS to and from the patches
    by layer, and the rollout up to each layer.
    """

    def _read(self, dump) -> None:
        names = dump.match("blocks.*.attn.weights")
        self.weights = np.stack([np.asarray(dump[n][:], np.float32) for n in names], axis=1)

    def __repr__(self) -> str:
        n, L, H, T, _ = self.weights.shape
        return f"Attention({n} images, {L} layers × {H} heads, {T} tokens; {self.model_name})"

    def _cls(self, what: str) -> int:
        if self.layout.cls_index is None:
            raise ConfigError(f"{what} reads the CLS token, and this model has none "
                              f"({self.layout.describe()}).")
        return self.layout.cls_index

    @property
    def cls_to_patches(self) -> np.ndarray:
        from vitscope.methods import cls_maps
        row, _ = cls_maps(self.weights.reshape(-1, *self.weights.shape[2:]),
                          self.layout.num_prefix_tokens, self._cls("cls_to_patches"))
        return row.reshape(*self.weights.shape[:3], *self.layout.grid)

    @property
    def patches_to_cls(self) -> np.ndarray:
        from vitscope.methods import cls_maps
        _, col = cls_maps(self.weights.reshape(-1, *self.weights.shape[2:]),
                          self.layout.num_prefix_tokens, self._cls("patches_to_cls"))
        return col.reshape(*self.weights.shape[:3], *self.layout.grid)

    def rollout(self, **options) -> np.ndarray:
        """N×h×w attention rollout with the rollout plugin's options (fusion, discard_ratio,
        start_layer, end_layer)."""
        from vitscope.api.explaining import method_options
        from vitscope.methods import get
        method = get("rollout")
        settings = method.options(method_options([method], {"rollout": options})["rollout"])
        L = self.weights.shape[1]
        arrays = {f"blocks.{l}.attn.weights": self.weights[:, l] for l in range(L)}
        return method.compute(arrays, self.layout, settings, L).maps.astype(np.float32)

    def _views(self) -> list[Figures]:
        """What a notebook shows, rendered once (Jupyter asks for HTML and PNG)."""
        if getattr(self, "_shown", None) is None:
            k = min(len(self), 4)
            self._shown = [
                render("token-attention", self.path, {"show": 1, "gif": False}),
                render("cls-heatmap", self.path, {"show": k, "per_head": 0},
                       files=("cls_to_patches", "patches_to_cls")),
                render("rollout", self.path, {"show": k}, files=("rollout_evolution",))]
        return self._shown

    def _repr_png_(self) -> bytes | None:
        return self._views()[0]._repr_png_()

    def _repr_html_(self) -> str:
        """The CLS token's attention by layer and head (image 0), CLS to and from the patches
        per layer (head mean), and the rollout up to each layer."""
        n, L, H, T, _ = self.weights.shape
        body = "".join(v._repr_html_() for v in self._views())
        more = D.esc(f".weights is N×L×H×T×T = {n}×{L}×{H}×{T}×{T}; .view('cls-heatmap'), "
                     f".view('token-attention', query='top') and .rollout() give more.")
        body += f"<div class='note'>{more}</div>"
        return D.block(f"vitscope.attention · {self.model_name} · {n} images", body)


class Embedding(_Captured):
    """The CLS token of N images through the model.

    cls       N×D: the token the classifier reads (after the final norm)
    tokens    N×L×D: the CLS token of the residual stream after each block
    pca(layer)  N×2 principal components of one block's CLS tokens (None: the head's)
    view()    the cls-embedding plugin's figures: PCA (and UMAP) coloured by class,
              silhouette by depth
    """

    def __init__(self, *args, umap: bool = False, **kwargs) -> None:
        self.umap = umap
        super().__init__(*args, **kwargs)

    def _read(self, dump) -> None:
        cls = self.layout.cls_index if self.layout.cls_index is not None else 0
        self.tokens = np.stack([np.asarray(dump[n][:, cls], np.float32)
                                for n in dump.match("blocks.*.out")], axis=1)
        self.cls = np.asarray(dump["cls"][:], np.float32)

    def __repr__(self) -> str:
        n, L, D_ = self.tokens.shape
        return f"Embedding({n} images, {L} blocks, width {D_}; {self.model_name})"

    def pca(self, layer: int | None = None) -> np.ndarray:
        """N×2: the first two principal components of the CLS tokens after block `layer`
        (negative counts from the end; None: the head token)."""
        x = self.cls if layer is None else self.tokens[:, layer]
        x = np.asarray(x, np.float64) - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        return (x @ vt[:2].T).astype(np.float32)

    def view(self, plugin: str | Any = "cls-embedding", **options) -> Figures:
        if plugin == "cls-embedding":
            options.setdefault("umap", self.umap)
        return super().view(plugin, **options)

    def _view(self) -> Figures:
        """What a notebook shows, rendered once (Jupyter asks for HTML and PNG)."""
        if getattr(self, "_shown", None) is None:
            self._shown = self.view()
        return self._shown

    def _repr_png_(self) -> bytes | None:
        return self._view()._repr_png_()

    def _repr_html_(self) -> str:
        n, L, D_ = self.tokens.shape
        return D.block(f"vitscope.embed · {self.model_name} · {n} images",
                       self._view()._repr_html_() +
                       f"<div class='note'>.tokens is N×L×D = {n}×{L}×{D_}; .cls N×D.</div>")


def attention(model: Any, images: Any, **kwargs) -> Attention:
    """Per-layer, per-head attention of `images` (see `Attention`). Keywords as for
    vitscope.explain: labels, classes, n, split, preprocessed, batch_size, preprocess,
    normalize, processor, device."""
    return Attention(model, images, ATTENTION, **kwargs)


def embed(model: Any, images: Any, *, umap: bool = False, **kwargs) -> Embedding:
    """The CLS token of `images` at every depth (see `Embedding`); `umap` adds the UMAP
    projection to the view (slower: numba compiles it the first time). Keywords as for
    vitscope.attention."""
    return Embedding(model, images, EMBEDDING, umap=umap, **kwargs)


def view(model: Any, images: Any, plugin: str | Any, *, options: dict[str, Any] | None = None,
         **kwargs) -> Figures:
    """The static figures of any plugin (a name, or a plugin object not yet registered) on
    `images`: what it reads is captured into a temporary dump, then it renders in this
    process. Keywords as for vitscope.explain (target for gradient plugins)."""
    from vitscope.analyze.registry import discover
    if isinstance(plugin, str):
        entry = discover().get(plugin)
        if not entry.ok:
            raise PluginError(entry.problem())
        from vitscope.api.options import plugin_options
        hooks = entry.requires_for(plugin_options(entry, options))
    else:
        hooks = tuple(getattr(plugin, "requires", ()))
    run = _Captured(model, images, hooks, **kwargs)
    try:
        return render(plugin, run.path, options)
    finally:
        run.close()
