"""Figures: what plugins and the host draw with. Imports no torch.

    from vitscope.render import figures, interactive, mosaic, escaping

- `figures`: overlays, static files (PNG/SVG/PDF), animated GIFs, results.npz;
- `mosaic`: grids of image tiles drawn as one image, fast for any model size;
- `interactive`: Plotly HTML that works offline, and the map viewers plugins share;
- `escaping`: every string that goes into HTML, scripts or Plotly text;
- `page`: the one HTML page shell (style, header, escaping) of every page vitscope writes;
- `index_page`: outputs/<run>/index.html, linking every figure of a run;
- `setting_folders`: the folder each plugin setting renders into, read by the index page;
- `umap_cache`: numba's compiled UMAP code kept across runs.
"""

__all__ = ["figures", "mosaic", "interactive", "escaping", "page", "index_page",
           "setting_folders", "umap_cache"]
