"""The one HTML page shell of vitscope: index.html, compare.html and the animation slider
share its head, style sheet and header, so they look alike and escape alike.

    html = page("vitscope · run", body_html, subtitle="20 images of folder:…")

`title` and `subtitle` are plain text, escaped here; `body` is HTML the caller built with
vitscope.render.escaping. The page is self-contained: no file, font or script is fetched.
"""
from __future__ import annotations

from vitscope.render.escaping import text as _e

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2937;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px} header p{margin:0;color:#cbd5e1}
main{padding:8px 28px 40px;max-width:1500px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:14px 18px;margin:18px 0}
h2{margin:0 0 8px;font-size:18px} h2 .tag{font-size:12px;font-weight:normal;color:#6b7280}
table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top} th{color:#6b7280;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv td{padding:2px 12px 2px 0} table.kv td:first-child{color:#6b7280;white-space:nowrap}
.figs{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0;border:1px solid #eee;border-radius:6px;padding:6px;background:#fff;max-width:100%}
figure img{max-width:100%;max-height:900px;display:block} figcaption{font-size:12px;color:#555;margin-top:4px}
img{max-width:100%;display:block}
details{margin:8px 0} summary{cursor:pointer;color:#1d4ed8}
iframe{width:100%;height:760px;border:1px solid #ddd;border-radius:6px;margin-top:6px}
.error{background:#fef2f2;border-color:#fecaca;color:#991b1b}
.warn{background:#fffbeb;border:1px solid #fde68a;border-radius:6px;color:#92400e;padding:4px 8px}
.ok,.shown{color:#15803d} .shown{font-weight:600} .bad{color:#b91c1c} .none{color:#6b7280}
nav a{margin-right:14px} code{font-size:12px} .foot{color:#888;font-size:12px}
"""


def page(title: str, body: str, *, subtitle: str = "", css: str = "") -> str:
    """A whole HTML document: head (title, CSS plus `css`), a header naming the page, and
    `body` inside <main>."""
    sub = f"<p>{_e(subtitle)}</p>" if subtitle else ""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{CSS}{css}</style></head><body>"
            f"<header><h1>{_e(title)}</h1>{sub}</header><main>{body}</main></body></html>\n")
