"""`outputs/<run>/index.html`: one offline page that shows every figure of a run.

Built from `manifest.json` (written by vitscope.analyze.run), so plugins rendered by earlier
`analyze` calls into the same folder stay listed. Static figures and GIFs are embedded,
interactive figures open in place (lazy iframes) or in a new tab, and each plugin's
`summary.json` numbers are shown as a table. All links are relative; nothing is fetched.
Every string on the page is escaped (vitscope.render.escaping): class names, file names and summary
values come from checkpoints, dumps and plugins, which anyone can write.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitscope import __version__
from vitscope.render.escaping import href as _href
from vitscope.render.escaping import text as _e
from vitscope._internal.files import write_atomic
from vitscope.render.page import page
from vitscope.render.setting_folders import folder_problem, plugin_of

IMAGE_SUFFIXES = (".png", ".svg", ".gif", ".jpg", ".jpeg")
PAGE_SUFFIXES = (".html",)
DOC_SUFFIXES = (".pdf",)

def write_index(run_dir: str | Path) -> Path:
    """(Re)write run_dir/index.html from run_dir/manifest.json."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    plugins: dict[str, Any] = manifest.get("plugins", {})
    run = manifest.get("run", {})
    parts = [_random_warning(run), _run_section(run), _mixed_warning(plugins, run),
             _nav(plugins), _epochs(run_dir), _other_runs(run_dir),
             _score_section(manifest.get("score"), run)]
    for name in plugin_order(plugins):
        parts.append(_plugin_section(run_dir, name, plugins[name], run))
    parts.append(f"<p class='foot'>vitscope {__version__} · generated "
                 f"{_e(run.get('updated', ''))}</p>")
    html = page(f"vitscope · {run_dir.name}", "\n".join(parts), subtitle=_subtitle(run))
    # a reader sees the old page or the new one, never half
    return write_atomic(run_dir / "index.html", html)


SHOWN_CLASSES = 20   # class names listed in the run table (ImageNet has 1,000)


def _random_warning(run: dict) -> str:
    if not run.get("random_weights"):
        return ""
    return ("<section class='error'><p>⚠ This checkpoint has RANDOM weights (imported without "
            "--weights): every figure and number on this page describes an untrained model, "
            "not what a trained one does.</p></section>")


def _other_runs(run_dir: Path) -> str:
    """Links to analyses written into sub-folders of this one (`analyze --image FILE` puts
    them in outputs/<run>/<image>/), each with what it analysed."""
    found = []
    for page_path in sorted(run_dir.glob("*/index.html")):
        folder = page_path.parent
        if folder.name.startswith(("epoch_", ".")) or not (folder / "manifest.json").is_file():
            continue
        try:
            run = json.loads((folder / "manifest.json").read_text()).get("run") or {}
        except (ValueError, OSError, AttributeError):
            run = {}
        what = f"{run.get('images', '?')} image{'' if run.get('images') == 1 else 's'}" \
            if isinstance(run, dict) else "?"
        found.append(f"<li><a href='{_href(folder.name + '/index.html')}'>{_e(folder.name)}</a> "
                     f"<span class='tag'>{_e(what)}</span></li>")
    if not found:
        return ""
    return ("<section><h2>Other analyses in this folder</h2><ul>" + "".join(found) +
            "</ul></section>")


def _score_section(score: dict | None, run: dict) -> str:
    """What `vitscope score` measured (its table as text, and its figures)."""
    if not score:
        return ""
    tag = (f"{_e(score.get('images', '?'))} images of {_e(score.get('data', '?'))} · target "
           f"{_e(score.get('target', '?'))} · {_e(score.get('perturbation', '?'))}")
    body = [f"<section id='score'><h2>Score: evidence for the maps <span class='tag'>{tag}"
            f"</span></h2>"]
    if (score.get("checkpoint_sha256") or "") != (run.get("checkpoint_sha256") or ""):
        body.append(f"<p class='error'>⚠ scored on another checkpoint than the run above: "
                    f"{_e(score.get('checkpoint'))}</p>")
    elif (score.get("data"), score.get("images")) != (run.get("data"), run.get("images")):
        body.append(f"<p class='tag'>scored on other images than the figures of this page: "
                    f"{_e(score.get('images', '?'))} images of {_e(score.get('data', '?'))} "
                    f"(the figures: {_e(run.get('images', '?'))} of {_e(run.get('data', '?'))})"
                    f"</p>")
    body.append(f"<pre style='font-size:12px;overflow-x:auto'>{_e(score.get('table', ''))}</pre>")
    files = score.get("files") or []
    images = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if images:
        body.append("<div class='figs'>" + "".join(
            f"<figure><a href='{_href(f)}'><img loading='lazy' src='{_href(f)}' alt='{_e(f)}'></a>"
            f"<figcaption>{_e(Path(f).name)}</figcaption></figure>" for f in images) + "</div>")
    for f in (f for f in files if f.lower().endswith(PAGE_SUFFIXES)):
        body.append(f"<details><summary>interactive: {_e(Path(f).name)} (<a href='{_href(f)}' "
                    f"target='_blank'>open in a new tab</a>)</summary><iframe loading='lazy' "
                    f"src='{_href(f)}' title='{_e(f)}'></iframe></details>")
    rest = [f for f in files if not f.lower().endswith(IMAGE_SUFFIXES + PAGE_SUFFIXES)]
    if rest:
        body.append("<p>files: " + " · ".join(f"<a href='{_href(f)}'><code>{_e(Path(f).name)}</code>"
                                             f"</a>" for f in rest) + "</p>")
    return "".join(body) + "</section>"


def _subtitle(run: dict) -> str:
    data = f"{run.get('data', '?')} ({run.get('split', '?')}, {run.get('images', '?')} images)"
    return f"checkpoint {run.get('checkpoint') or '?'} · data {data}"


def _run_section(run: dict) -> str:
    cfg = run.get("model_config") or {}
    model = ", ".join(f"{k} {cfg[k]}" for k in ("image_size", "patch_size", "embed_dim", "depth",
                                                   "num_heads", "num_classes") if k in cfg)
    classes = run.get("classes") or []
    rows = [("checkpoint", run.get("checkpoint") or "(none recorded)"),
            ("checkpoint SHA-256", run.get("checkpoint_sha256") or "—"),
            ("data", f"{run.get('data', '?')}, split {run.get('split', '?')}"),
            ("images analysed", run.get("images", "?")),
            ("checkpoint accuracy", _accuracy(run.get("checkpoint_metrics"))),
            ("ground-truth masks", "yes" if run.get("has_masks") else "no"),
            ("model", model or "—"),
            ("classes", _classes(classes)),
            ("dump", run.get("dump", "—"))]
    if "epoch" in run:
        rows.insert(0, ("epoch", run["epoch"]))
    if run.get("random_weights"):
        rows.insert(0, ("weights", "RANDOM (imported without --weights)"))
    return "<section><h2>Run</h2>" + _kv(rows) + "</section>"


def _classes(classes: list) -> str:
    """"10: airplane, automobile, …"; past SHOWN_CLASSES names, the first ones and the count."""
    if not classes:
        return "—"
    shown = ", ".join(map(str, classes[:SHOWN_CLASSES]))
    more = len(classes) - SHOWN_CLASSES
    return f"{len(classes)}: {shown}" + (f", … and {more} more" if more > 0 else "")


def _accuracy(metrics) -> str:
    """"78.2% val accuracy (epoch 25)" from the checkpoint's metrics, "—" without them."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("val_acc"), (int, float)):
        return "—"
    epoch = f" (epoch {metrics['epoch']})" if metrics.get("epoch") is not None else ""
    return f"{100 * metrics['val_acc']:.1f}% val accuracy when trained{epoch}"


def _epochs(run_dir: Path) -> str:
    """Links to training-time figures (`vitscope train --analyze-every`), if any."""
    pages = sorted(p.parent.name for p in run_dir.glob("epoch_*/index.html"))
    if not pages:
        return ""
    links = " · ".join(f"<a href='{_href(p + '/index.html')}'>{_e(p.replace('_', ' '))}</a>"
                       for p in pages)
    # what `vitscope animate` (or the end of training) made of them
    gifs = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.glob("animations/*.gif"))
    figs = "".join(f"<figure><a href='{_href(g[:-4] + '.html')}'><img loading='lazy' "
                   f"src='{_href(g)}' alt='{_e(g)}'></a><figcaption>{_e(Path(g).name)} (click: "
                   f"slider)</figcaption></figure>" for g in gifs)
    return (f"<section><h2>During training</h2><p>{links}</p>"
            f"{f'<div class=figs>{figs}</div>' if figs else ''}</section>")


def plugin_order(plugins: dict) -> list[str]:
    """Built-in plugins first, in the order of vitscope.plugins.BUILTINS, then the others by
    name: a third-party plugin called "aaa" does not open the page. A plugin's settings
    (`rollout@fusion=max`, vitscope.render.setting_folders) follow its default folder."""
    from vitscope.plugins import BUILTINS
    rank = {n: i for i, n in enumerate(BUILTINS)}

    def order(key: str):
        plugin = plugin_of(key)
        return (0, rank[plugin], plugin, key) if plugin in rank else (1, 0, plugin, key)
    return sorted(plugins, key=order)


def _nav(plugins: dict) -> str:
    links = [f"<a href='#{_e(n)}' class='{'ok' if plugins[n].get('ok') else 'bad'}'>"
             f"{'✓' if plugins[n].get('ok') else '✗'} {_e(n)}</a>" for n in plugin_order(plugins)]
    return "<nav>" + "".join(links) + "</nav>"


def _plugin_section(run_dir: Path, name: str, info: dict, run: dict) -> str:
    tag = f"{_e(info.get('package', ''))} · {info.get('seconds', 0):.1f} s"
    opts = info.get("options") or {}
    if opts:
        tag += " · " + ", ".join(f"{_e(k)}={_e(v)}" for k, v in opts.items())
    head = f"<section id='{_e(name)}'{' class=error' if not info.get('ok') else ''}>" \
           f"<h2>{_e(name)} <span class='tag'>{tag}</span></h2>"
    if info.get("description"):
        head += f"<p class='tag'>{_e(info['description'])}</p>"
    if not info.get("ok"):
        return head + f"<p>This plugin failed: {_e(info.get('error'))}</p></section>"
    files = info.get("files") or []
    body = [head]
    own = info.get("run") or {}
    if info.get("rerun_error"):
        body.append(f"<p class='error'>⚠ the latest re-run ({_e(info.get('rerun_at', '?'))}) "
                    f"failed: {_e(info['rerun_error'])}; the figures below are from the run "
                    f"before it.</p>")
    warnings = info.get("warnings")
    for warning in warnings if isinstance(warnings, list) else ():   # "wrote no ... figure"
        body.append(f"<p class='warn'>⚠ {_e(warning)}</p>")
    if _other_source(own, run):
        body.append(f"<p class='error'>⚠ rendered earlier from another model or data than "
                    f"the run above: {_e(_source(own))}</p>")
    elif any(own.get(k) != run.get(k) for k in ("dump", "images", "checkpoint")):
        body.append(f"<p class='tag'>rendered earlier from {_e(own.get('checkpoint') or '?')}, "
                    f"{_e(own.get('images', '?'))} images of {_e(own.get('data', '?'))} "
                    f"(dump {_e(own.get('dump', '?'))})</p>")
    summary = run_dir / name / "summary.json"
    if folder_problem(name) is None and summary.exists():   # names come from the manifest
        try:
            numbers = json.loads(summary.read_text(encoding="utf-8"))
        except ValueError:   # UnicodeDecodeError included
            numbers = None
        if isinstance(numbers, dict):
            body.append(_kv([(readable_key(k), _fmt(v)) for k, v in numbers.items()
                             if not _all_empty(v)]))
        else:   # checked when the plugin ran; a file changed since is only mentioned
            body.append("<p class='tag'>summary.json is not a JSON object of numbers</p>")
    images = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    pages = [f for f in files if f.lower().endswith(PAGE_SUFFIXES)]
    docs = [f for f in files if f.lower().endswith(DOC_SUFFIXES)]
    data = [f for f in files if f not in images + pages + docs]
    if images:
        body.append("<div class='figs'>" + "".join(
            f"<figure><a href='{_href(f)}'><img loading='lazy' src='{_href(f)}' "
            f"alt='{_e(f)}'></a>"
            f"<figcaption>{_e(Path(f).name)}</figcaption></figure>" for f in images) + "</div>")
    for f in pages:
        body.append(f"<details><summary>interactive: {_e(Path(f).name)} "
                    f"(<a href='{_href(f)}' target='_blank'>open in a new tab</a>)</summary>"
                    f"<iframe loading='lazy' src='{_href(f)}' title='{_e(f)}'></iframe></details>")
    links = docs + data
    if links:
        body.append("<p>files: " + " · ".join(
            f"<a href='{_href(f)}'><code>{_e(Path(f).name)}</code></a>" for f in links) + "</p>")
    return "".join(body) + "</section>"


UNITS = {"nats": "nats", "bits": "bits", "px": "px", "s": "s", "pct": "%"}


def readable_key(key: str) -> str:
    """A summary key as words: "max_entropy_nats" -> "max entropy (nats)"."""
    words = str(key).replace("-", "_").split("_")
    unit = UNITS.get(words[-1]) if len(words) > 1 else None
    text = " ".join(w for w in (words[:-1] if unit else words) if w)
    return f"{text} ({unit})" if unit else text


def _all_empty(value) -> bool:
    """A list of nothing but None (e.g. no query patch per image): not worth a row."""
    return isinstance(value, list) and bool(value) and all(v is None for v in value)


def _other_source(own: dict, run: dict) -> bool:
    """Whether a plugin's figures come from another checkpoint (by SHA-256, so a retrained
    run under the same path counts) or other data than the latest run of the page."""
    return (own.get("checkpoint_sha256") or "") != (run.get("checkpoint_sha256") or "") or \
        (own.get("data"), own.get("split")) != (run.get("data"), run.get("split"))


def _source(own: dict) -> str:
    sha = (own.get("checkpoint_sha256") or "")[:12]
    return (f"{own.get('checkpoint') or '?'} (SHA-256 {sha or '?'}…), {own.get('images', '?')} "
            f"images of {own.get('data', '?')} ({own.get('split', '?')}), rendered "
            f"{own.get('updated', '?')}; run analyze again to refresh it")


def _mixed_warning(plugins: dict, run: dict) -> str:
    stale = sorted(n for n, p in plugins.items() if _other_source(p.get("run") or {}, run))
    if not stale:
        return ""
    return (f"<section class='error'><p>⚠ This page mixes figures of different models or data: "
            f"{_e(', '.join(stale))} {'was' if len(stale) == 1 else 'were'} rendered from "
            f"another checkpoint or dataset than the run above (see each section).</p></section>")


def _kv(rows) -> str:
    return "<table class='kv'>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>"
                                         for k, v in rows) + "</table>"


def _fmt(v: Any) -> str:
    if v is None:  # summary.json writes null for "not computed" (e.g. silhouette without labels)
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)

