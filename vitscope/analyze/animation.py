"""Training progress as an animation: one figure of `vitscope train --analyze-every N --plugin
NAME` across its epochs, as a GIF and a self-contained HTML slider.

    frames = epoch_frames(Path("outputs/shapes"), "rollout", figure=None)
    files = write_animation(frames, Path("outputs/shapes/animations"), "rollout")

Training renders each analysed epoch into `<out_root>/<run>/epoch_NNN/<plugin>/`; the frames
are that plugin's figure of the same name in every epoch, in epoch order, each put on one
canvas of the same size (the largest figure, centred on white, scaled to `width`) under a
strip that names the epoch and the run's validation accuracy at that epoch (from the run's
metrics.jsonl). No torch, no model: only the PNGs and the run's history are read.
"""
from __future__ import annotations

import base64
import fnmatch
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitscope.evaluate.compare import read_history
from vitscope.errors import VitscopeError
from vitscope.render.escaping import script_json
from vitscope.render.escaping import text as _e
from vitscope.render.page import page

EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
STATIC = (".png",)          # GIF frames need raster images (SVG figures are skipped)
BACKGROUND = (255, 255, 255)


class AnimationError(VitscopeError):
    """No epoch folders, a plugin or figure that was not rendered, an unreadable frame."""


@dataclass
class Frame:
    epoch: int
    path: Path                  # the plugin's PNG of that epoch
    val_acc: float | None       # the run's validation accuracy at that epoch, when recorded

    @property
    def label(self) -> str:
        acc = "val acc unknown" if self.val_acc is None else f"val acc {100 * self.val_acc:.1f}%"
        return f"epoch {self.epoch} · {acc}"


def epoch_folders(root: Path) -> list[tuple[int, Path]]:
    """(epoch, folder) of every `epoch_NNN` folder under `root`, in epoch order."""
    found = []
    for p in Path(root).iterdir() if Path(root).is_dir() else []:
        m = EPOCH_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_epochs_root(source: Path, out_root: Path = Path("outputs")) -> Path:
    """The folder holding the `epoch_NNN` folders: `source` itself (outputs/<run>), or for a
    run folder (runs/<run>, holding metrics.jsonl), `<out_root>/<run>` where training
    rendered them."""
    source = Path(source)
    if not source.exists():
        raise AnimationError(f"No folder '{source}'; pass the folder `vitscope train "
                             f"--analyze-every` rendered into (outputs/<run>) or the run folder "
                             f"(runs/<run>).")
    if not source.is_dir():
        raise AnimationError(f"'{source}' is a file; pass the folder `vitscope train "
                             f"--analyze-every` rendered into (outputs/<run>) or the run folder "
                             f"(runs/<run>).")
    if epoch_folders(source):
        return source
    beside = Path(out_root) / source.resolve().name
    if (source / "metrics.jsonl").is_file() and epoch_folders(beside):
        return beside
    where = f" nor in '{beside}'" if (source / "metrics.jsonl").is_file() else ""
    run = source.resolve().name
    raise AnimationError(f"No epoch_NNN folders in '{source}'{where}: the run was trained "
                         f"without --analyze-every, so there is nothing to animate; train it "
                         f"again with its command plus --analyze-every N --plugin NAME (e.g. "
                         f"`vitscope train --config shapes-quick --name {run} --overwrite "
                         f"--analyze-every 1 --plugin rollout`), then `vitscope animate "
                         f"outputs/{run} --plugin rollout`.")


def _manifest(folder: Path) -> dict[str, Any]:
    from vitscope.analyze.run import read_manifest
    return read_manifest(folder)


def _figures(folder: Path, plugin: str) -> list[str]:
    """The PNG files (relative to the epoch folder) the plugin wrote there, in the order its
    manifest lists them (the plugin's own order), else sorted."""
    entry = (_manifest(folder).get("plugins") or {}).get(plugin) or {}
    listed = [f for f in entry.get("files") or [] if isinstance(f, str)
              and f.lower().endswith(STATIC) and (folder / f).is_file()]
    if listed:
        return listed
    return sorted(p.relative_to(folder).as_posix() for p in (folder / plugin).glob("*.png"))


def run_folder(epochs: list[tuple[int, Path]], run: Path | None) -> Path | None:
    """The training run folder whose metrics.jsonl has the val accuracies: `run` when given,
    else what the epoch manifests record (`run_dir`, or the run named in `checkpoint`)."""
    if run is not None:
        return Path(run)
    for _, folder in reversed(epochs):
        info = _manifest(folder).get("run") or {}
        for candidate in (info.get("run_dir"),
                          str(info.get("checkpoint") or "").split(" (model at epoch")[0]):
            if candidate and (Path(candidate) / "metrics.jsonl").is_file():
                return Path(candidate)
    return None


def epoch_frames(root: Path, plugin: str, figure: str | None = None,
                 run: Path | None = None) -> tuple[list[Frame], list[str], Path | None]:
    """(frames in epoch order, warnings, the run folder read for val accuracies).

    `figure`: a file name, stem or glob of the plugin's figures (default: the first PNG it
    wrote). An epoch where the plugin failed or did not write that figure is left out with a
    warning; none at all is an AnimationError listing what there is."""
    epochs = epoch_folders(root)
    if not epochs:
        raise AnimationError(f"No epoch_NNN folders in '{root}'; train with --analyze-every N "
                             f"--plugin {plugin} first.")
    rendered = {e: _figures(folder, plugin) for e, folder in epochs}
    if not any(rendered.values()):
        others = sorted({p for _, f in epochs for p, v in (_manifest(f).get("plugins") or {}).items()
                         if isinstance(v, dict) and v.get("ok")})
        hint = (f"the plugins rendered there: {', '.join(others)}" if others else
                "no plugin rendered a PNG there")
        raise AnimationError(f"Plugin '{plugin}' has no PNG figures in the {len(epochs)} epoch "
                             f"folders of '{root}' ({hint}); pass --plugin with one of them, or "
                             f"train with --plugin {plugin}.")
    every = sorted({f for files in rendered.values() for f in files})
    if figure is None:
        # the first figure the plugin wrote, in the latest epoch that rendered it
        figure_of = next(files for _, files in sorted(rendered.items(), reverse=True) if files)[0]
        chosen = lambda f: f == figure_of   # noqa: E731
        shown = Path(figure_of).name
    else:
        pattern = figure if any(c in figure for c in "*?[") else None

        def chosen(f: str) -> bool:
            name = Path(f).name
            return (fnmatch.fnmatch(name, pattern) if pattern else
                    name == figure or Path(f).stem == figure or f == figure)
        matches = sorted({f for f in every if chosen(f)})
        if not matches:
            raise AnimationError(f"Plugin '{plugin}' wrote no figure '{figure}' in '{root}'; its "
                                 f"figures: {', '.join(Path(f).name for f in every)}.")
        if len(matches) > 1:
            raise AnimationError(f"--figure '{figure}' matches {len(matches)} figures of "
                                 f"'{plugin}' ({', '.join(Path(f).name for f in matches)}); "
                                 f"name one of them.")
        shown = Path(matches[0]).name
    run_dir = run_folder(epochs, run)
    history = read_history(run_dir) if run_dir is not None else None
    acc = {h["epoch"]: h.get("val_acc") for h in history or []}
    warnings: list[str] = []
    if history is None:
        warnings.append(f"no metrics.jsonl of the training run found (looked in "
                        f"{run_dir or 'the epoch manifests'}), so frames say 'val acc unknown'; "
                        f"pass --run runs/<run>")
    frames = []
    for e, folder in epochs:
        hit = [f for f in rendered[e] if chosen(f)]
        if not hit:
            warnings.append(f"epoch {e}: no {shown} from {plugin} (it failed "
                            f"or was not run then); left out")
            continue
        frames.append(Frame(e, folder / hit[0], acc.get(e) if history is not None else None))
    return frames, warnings, run_dir


# ----------------------------------------------------------------------------- drawing

def _font(size: int):
    from PIL import ImageFont
    try:   # matplotlib ships DejaVu Sans: the same text on every machine
        from matplotlib import font_manager
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:
        return ImageFont.load_default()


def strip_height(width: int) -> int:
    return max(28, round(width / 28))


def label_strip(text: str, width: int):
    """A white strip `width` wide with `text` centred in black."""
    from PIL import Image, ImageDraw
    h = strip_height(width)
    strip = Image.new("RGB", (width, h), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    font = _font(round(h * 0.62))
    box = draw.textbbox((0, 0), text, font=font)
    draw.text(((width - (box[2] - box[0])) / 2 - box[0], (h - (box[3] - box[1])) / 2 - box[1]),
              text, fill=(0, 0, 0), font=font)
    return strip


def compose(frames: list[Frame], width: int | None = 960) -> list:
    """Every frame on one canvas size: the largest figure's, centred on white, scaled so the
    canvas is at most `width` pixels wide (None: as rendered), the label strip on top."""
    from PIL import Image
    images = []
    for f in frames:
        try:
            with Image.open(f.path) as im:
                im.load()
                rgba = im.convert("RGBA")
        except Exception as e:   # PIL raises OSError, SyntaxError, ValueError for bad files
            raise AnimationError(f"Cannot read the figure '{f.path}' ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:120] if str(e) else ''}); re-render "
                                 f"that epoch or leave it out.") from None
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.split()[3])
        images.append(flat)
    W, H = max(i.width for i in images), max(i.height for i in images)
    scale = min(1.0, width / W) if width else 1.0
    cw, ch = max(1, round(W * scale)), max(1, round(H * scale))
    out = []
    for f, im in zip(frames, images):
        body = Image.new("RGB", (W, H), BACKGROUND)
        body.paste(im, ((W - im.width) // 2, (H - im.height) // 2))
        if scale != 1.0:
            body = body.resize((cw, ch), Image.LANCZOS)
        strip = label_strip(f.label, cw)
        canvas = Image.new("RGB", (cw, ch + strip.height), BACKGROUND)
        canvas.paste(strip, (0, 0))
        canvas.paste(body, (0, strip.height))
        out.append(canvas)
    return out


def write_gif(images: list, path: Path, duration_ms: int, hold_last_ms: int) -> Path:
    """An endlessly looping GIF; the last frame stays `hold_last_ms` before the loop restarts."""
    durations = [duration_ms] * len(images)
    durations[-1] = max(duration_ms, hold_last_ms)
    # one adaptive palette per frame; disposal 1 keeps frames whole (they are full canvases)
    frames = [im.quantize(colors=255, method=2, dither=0) for im in images]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                   duration=durations, disposal=1, optimize=False)
    return path


SLIDER_JS = """
const frames = %s, labels = %s, img = document.getElementById('frame'),
  slider = document.getElementById('slider'), label = document.getElementById('label'),
  play = document.getElementById('play');
let timer = null;
function show(i) { slider.value = i; img.src = frames[i]; label.textContent = labels[i]; }
slider.addEventListener('input', () => show(+slider.value));
play.addEventListener('click', () => {
  if (timer) { clearInterval(timer); timer = null; play.textContent = '▶ play'; return; }
  play.textContent = '❚❚ pause';
  timer = setInterval(() => show((+slider.value + 1) %% frames.length), %d);
});
document.addEventListener('keydown', e => {
  if (e.key === 'ArrowRight') show(Math.min(+slider.value + 1, frames.length - 1));
  if (e.key === 'ArrowLeft') show(Math.max(+slider.value - 1, 0));
});
show(frames.length - 1);
"""


def slider_page(images: list, frames: list[Frame], title: str, duration_ms: int) -> str:
    """A self-contained page: the frames inlined as PNG data URIs, a slider and a play button;
    the label above the image says the frame's epoch and val accuracy."""
    uris = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        uris.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    labels = [f.label for f in frames]
    body = (f"<section><div><button id='play' type='button'>▶ play</button> "
            f"<input id='slider' type='range' min='0' max='{len(frames) - 1}' step='1' "
            f"value='{len(frames) - 1}' aria-label='epoch'><span id='label'>"
            f"{_e(labels[-1])}</span></div>"
            f"<img id='frame' alt='{_e(title)}' src='{uris[-1]}'>"
            f"<p class='none'>{len(frames)} frames: {_e(', '.join(labels))}</p></section>"
            f"<script>{SLIDER_JS % (script_json(uris), script_json(labels), duration_ms)}"
            f"</script>")
    return page(title, body, css="#frame{margin-top:8px} input{width:min(600px,90vw)} "
                                 "#label{font-weight:600;margin-left:12px}")


def write_animation(frames: list[Frame], out_dir: Path, name: str, *, title: str,
                    width: int | None = 960, duration_ms: int = 700,
                    hold_last_ms: int = 2000) -> dict[str, Any]:
    """`<name>.gif`, `<name>.html` and `<name>.json` (the frames: epoch, val_acc, source) in
    `out_dir`, all or none (vitscope._internal.files.replacing). Returns the JSON record."""
    from vitscope._internal.files import replacing
    if not frames:
        raise AnimationError("No frames to animate.")
    images = compose(frames, width)
    out_dir = Path(out_dir)
    gif, page, record = (out_dir / f"{name}.gif", out_dir / f"{name}.html",
                         out_dir / f"{name}.json")
    info = {"title": title, "size": list(images[0].size), "duration_ms": duration_ms,
            "frames": [{"epoch": f.epoch, "val_acc": f.val_acc, "label": f.label,
                        "source": str(f.path)} for f in frames],
            "files": [str(gif), str(page), str(record)]}
    with replacing(gif, page, record, hint=f"nothing in '{out_dir}' changed; free some space "
                                           f"or choose another folder with -o") as (g, p, r):
        write_gif(images, g, duration_ms, hold_last_ms)
        p.write_text(slider_page(images, frames, title, duration_ms), encoding="utf-8")
        r.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


def animate(root: Path, plugin: str, figure: str | None = None, *, run: Path | None = None,
            out_dir: Path | None = None, width: int | None = 960,
            duration_ms: int = 700) -> tuple[dict[str, Any], list[Frame], list[str], Path | None]:
    """What `vitscope animate` (and the end of `vitscope train --analyze-every`) does: the
    frames of `plugin`'s figure under `root` written to `out_dir` (default
    root/animations). Returns (record, frames, warnings, the run folder read)."""
    from vitscope._internal.folders import output_folder
    from vitscope._internal.locks import hold
    from vitscope.analyze.staging import LOCK
    frames, warnings, run_dir = epoch_frames(root, plugin, figure, run)
    if not frames:
        raise AnimationError(f"None of the epochs of '{root}' has that figure of '{plugin}'; "
                             f"nothing to animate.")
    out = Path(out_dir) if out_dir else Path(root) / "animations"
    stem = Path(frames[0].path).stem
    name = stem if stem.startswith(plugin) else f"{plugin}-{stem}"
    with output_folder(out, AnimationError, "choose a writable folder with -o"), \
            hold(out / LOCK, out, AnimationError, hint="wait for it to finish or choose another "
                                                       "folder with -o"):
        info = write_animation(frames, out, name, width=width, duration_ms=duration_ms,
                               title=f"{Path(root).resolve().name}: {plugin} · "
                                     f"{Path(frames[0].path).name} across {len(frames)} epochs")
    return info, frames, warnings, run_dir
