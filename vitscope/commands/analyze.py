"""`vitscope analyze` (render plugins on a checkpoint's dump) and `vitscope plugins` (list them)."""
from __future__ import annotations

import contextlib
import json

import click

from vitscope.commands.common import device_option, opt_option, threads_option

DEFAULT_IMAGES = 256  # = vitscope.analyze.plan.DEFAULT_IMAGES (not imported: --help stays light)
DEFAULT_TIMEOUT = 3600.0  # = vitscope.analyze.isolation.DEFAULT_TIMEOUT (not imported: --help stays light)


@click.command()
@click.argument("ckpt", required=False, type=click.Path(dir_okay=False))
@click.option("--plugin", "-p", "names", multiple=True, metavar="NAME",
              help="Plugin to run (repeatable); `vitscope plugins` lists them.")
@click.option("--all", "all_", is_flag=True, help="Run every installed plugin (those that run the model many times per image, integrated-gradients, occlusion, scorecam, only when also named with -p).")
@click.option("--dump", "dump_path", type=click.Path(dir_okay=False),
              help="Render from this dump instead of capturing (CKPT is then optional).")
@click.option("--data", default=None, metavar="SPEC",
              help="Dataset to capture (default: the checkpoint's training data).")
@click.option("--split", default=None, type=click.Choice(["train", "val", "all"]),
              help="Split to capture: all = every image, no val carve-out (default: val of the "
                   "checkpoint's data or of data with a val split; all of another folder).")
@click.option("--images", "-n", "--limit", "images", type=click.IntRange(min=1), default=None,
              help=f"Images to analyse (default {DEFAULT_IMAGES}, or the whole --dump); "
                   f"--limit is the same (as in `vitscope dump`).")
@click.option("--image", "image_files", multiple=True, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="Explain this image file (repeatable): every plugin that works on it, "
                   "unless --plugin names some; labelled when its name starts with a class.")
@click.option("--select", "selects", multiple=True, metavar="WHICH",
              help="Which images the figures show: misclassified, correct, class:NAME[,NAME], "
                   "positions 3,7,12, or name:FILE[,GLOB] (repeatable: each narrows).")
@click.option("--static", is_flag=True, help="Static figures (alone: only those).")
@click.option("--interactive", is_flag=True, help="Interactive HTML (alone: only that).")
@click.option("--both", is_flag=True, help="Both (the default; same as --static --interactive).")
@click.option("--smooth", is_flag=True,
              help="Smooth maps bilinearly (default: the patch grid, as the model sees it and "
                   "the HTML shows it).")
@click.option("--format", "fmt", type=click.Choice(["png", "svg", "pdf"]), default="png",
              show_default=True, help="Static figure format.")
@opt_option
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Output folder (default: outputs/<run>).")
@device_option
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass (default: as many as fit in 1 GiB of capture memory, "
                   "at most 64; a ViT-S/16 at 224 px with gradients gets a few).")
@click.option("--target", default=None, metavar="TARGET",
              help="What the gradient methods explain: pred (default), label or a class INDEX; "
                   "similarity:IMAGE (cosine similarity to that image's embedding, any model); "
                   "text:PROMPT or text-classes (CLIP, SigLIP).")
@click.option("--plugin-timeout", type=click.FloatRange(min=0), default=DEFAULT_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="Time limit of each plugin; one that takes longer is stopped and reported "
                   "as failed (0: no limit).")
@threads_option
def analyze(ckpt, names, all_, dump_path, data, split, images, image_files, selects, static,
            interactive, both, smooth, fmt, opts, out_dir, device, batch_size, target,
            plugin_timeout) -> None:
    """Render interpretability figures for CKPT with the chosen plugins.

    Captures only the hook points the plugins need (or reuses a dump that covers them), renders
    each plugin into OUT/<plugin>/ in a process of its own, and writes OUT/index.html. A
    failing plugin is reported and the others still run; the exit code is 1 if any chosen
    plugin failed. Figures are swapped in only when the run completes: Ctrl-C, SIGTERM or a
    failure leaves OUT as it was. One analyze at a time writes into OUT.
    """
    from vitscope._internal.signals import terminate_as_exception
    from vitscope.analyze.plan import AnalyzeRequest, run_analysis

    if both or static == interactive:    # neither flag, or both: every kind of figure
        static = interactive = True
    request = AnalyzeRequest(ckpt, tuple(names), all_, dump_path, data, split, images,
                             tuple(image_files), tuple(selects), static, interactive, smooth,
                             fmt, tuple(opts), out_dir, device, batch_size, target,
                             plugin_timeout)
    # SIGTERM like Ctrl-C: the exit stack (lock, empty folders) and the staging unwind.
    with terminate_as_exception(), contextlib.ExitStack() as cleanup:
        outcome = run_analysis(request, cleanup, echo=click.echo)
    if not outcome.ok:
        raise SystemExit(1)




@click.command(name="plugins")
@click.option("--verbose", "-v", is_flag=True, help="Also show each plugin's options.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list instead of text.")
def plugins(verbose: bool, as_json: bool) -> None:
    """List installed plugins: name, package and version, requires, status."""
    from vitscope.analyze.registry import AUTOLOAD_ENV, discover

    registry = discover()
    entries = [e.load() for e in registry.entries]
    if as_json:
        for problem in registry.unreadable:   # stdout stays one JSON list
            click.echo(f"Warning: {problem}", err=True)
        click.echo(json.dumps([{
            "name": e.name, "package": e.package, "version": e.version, "entry_point": e.value,
            "builtin": e.builtin, "requires": list(e.requires), "produces": list(e.produces),
            "status": "ok" if e.ok else "broken",
            "error": e.error, "fix": e.fix, "description": e.description,
            "options": [{"name": o.name, "type": o.type_name, "default": o.default, "help": o.help}
                        for o in e.options]} for e in entries], indent=2, default=str))
        return
    width = max([len(e.name) for e in entries] + [4])
    pkg_width = max([len(e.source) for e in entries] + [7])
    click.echo(f"{'NAME':<{width}}  {'PACKAGE':<{pkg_width}}  STATUS  REQUIRES")
    for e in entries:
        status = "ok" if e.ok else "broken"
        click.echo(f"{e.name:<{width}}  {e.source:<{pkg_width}}  {status:<6}  "
                   f"{', '.join(e.requires) or '-'}")
        if not e.ok:
            click.echo(f"{'':<{width}}  reason: {e.error}")
            click.echo(f"{'':<{width}}  fix:    {e.fix}")
        elif verbose:
            if e.description:
                click.echo(f"{'':<{width}}  {e.description}")
            if e.produces:
                click.echo(f"{'':<{width}}  produces: {', '.join(e.produces)} (vitscope score "
                           f"can evaluate it)")
            for o in e.options:
                click.echo(f"{'':<{width}}    --opt {e.name}.{o.describe()}")
    if registry.skipped:
        click.echo(f"({AUTOLOAD_ENV}=1: not loaded: {', '.join(sorted(set(registry.skipped)))})")
    for problem in registry.unreadable:
        click.echo(f"unreadable: {problem}")
