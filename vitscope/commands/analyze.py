"""`vitscope analyze` (render plugins on a checkpoint's dump) and `vitscope plugins` (list them)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from vitscope.commands.common import threads_option

DEFAULT_IMAGES = 256  # enough for class averages and embeddings, a few seconds to capture
DEFAULT_TIMEOUT = 3600.0  # = vitscope.analyze.isolation.DEFAULT_TIMEOUT (not imported: --help stays light)


@click.command()
@click.argument("ckpt", required=False, type=click.Path(dir_okay=False))
@click.option("--plugin", "-p", "names", multiple=True, metavar="NAME",
              help="Plugin to run (repeatable); `vitscope plugins` lists them.")
@click.option("--all", "all_", is_flag=True, help="Run every installed plugin.")
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
@click.option("--opt", "opts", multiple=True, metavar="PLUGIN.KEY=VALUE",
              help="A plugin option, e.g. --opt rollout.discard_ratio=0.9 (repeatable).")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Output folder (default: outputs/<run>).")
@click.option("--device", default="auto", show_default=True,
              help="Device for capturing: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass (default: as many as fit in 1 GiB of capture memory, "
                   "at most 64; a ViT-S/16 at 224 px with gradients gets a few).")
@click.option("--target", default=None, metavar="pred|label|INDEX",
              help="Class the gradient methods explain: the prediction (default), the label, "
                   "or a class index.")
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
    # SIGTERM like Ctrl-C: the exit stack (lock, empty folders) and the staging unwind.
    with terminate_as_exception(), contextlib.ExitStack() as cleanup:
        _analyze(cleanup, ckpt, names, all_, dump_path, data, split, images, image_files,
                 selects, static, interactive, both, smooth, fmt, opts, out_dir, device,
                 batch_size, target, plugin_timeout)


def _analyze(cleanup, ckpt, names, all_, dump_path, data, split, images, image_files, selects,
             static, interactive, both, smooth, fmt, opts, out_dir, device, batch_size, target,
             plugin_timeout) -> None:
    from vitscope.analyze.run import (PluginResult, missing_hooks, output_folder, render_plugins,
                                   union_requires)
    from vitscope.errors import PluginError
    from vitscope.analyze.isolation import warm_up
    from vitscope._internal.locks import hold
    from vitscope.names import summarize_names
    from vitscope._internal.folders import make_output_dir, remove_empty
    from vitscope.plugin import check_options, discover, parse_opts
    from vitscope.analyze.staging import LOCK
    from vitscope._internal.files import guard

    if both or static == interactive:    # neither flag, or both: every kind of figure
        static = interactive = True
    by_default = bool(image_files) and not names and not all_   # --image: every plugin that fits
    if image_files:
        if data is not None or dump_path is not None:
            raise PluginError("--image names the images itself; leave out --data and --dump "
                              "(or analyse a folder with --data folder:PATH).")
        from vitscope.data import files_spec
        data, split, all_ = files_spec(image_files), "all", all_ or by_default
        images = len(image_files)
    if not names and not all_:
        raise PluginError("No plugin chosen; pass --plugin NAME (repeatable) or --all "
                          "(`vitscope plugins` lists them).")
    if ckpt is None and dump_path is None:
        raise PluginError("Nothing to analyse; pass a checkpoint (vitscope analyze CKPT ...) or "
                          "an existing dump with --dump FILE.h5.")
    if ckpt is not None and dump_path is not None:
        from vitscope.model.checkpoint import read_raw
        read_raw(ckpt)  # a CKPT named beside --dump must exist: it is checked against the dump
    from vitscope.analyze.selection import parse_select
    criteria = parse_select(selects, _classes(ckpt, dump_path))   # before any work
    registry = discover()
    for problem in registry.unreadable:
        click.echo(f"Warning: {problem}", err=True)
    chosen = registry.select(names, all_)
    for entry in chosen:
        if not entry.ok:
            click.echo(f"Error: {entry.problem()}", err=True)
    working = [e for e in chosen if e.ok]
    values = parse_opts(opts, chosen, registry)   # before any capture: bad options fail fast
    if not working:
        raise SystemExit(1)
    if target is not None or dump_path is None:   # a bad --target fails before any work
        target = _check_target(target, ckpt, Path(dump_path) if dump_path else None)
    if dump_path is None:
        from vitscope.capture import capture_device
        dev = capture_device(device)               # a bad --device fails before any work
    run = Path(out_dir) if out_dir else \
        Path("outputs") / _run_name(ckpt, Path(dump_path) if dump_path else None)
    if image_files and not out_dir:   # outputs/<run>/<image>/: beside the run's own figures
        stem = Path(image_files[0]).stem
        run = run / (stem if len(image_files) == 1 else f"{stem}+{len(image_files) - 1}")

    # Plugins that read hook points the model (or the given dump) lacks fail alone, up front.
    if dump_path is not None:
        path = Path(dump_path)
        (available, model_hooks, shape), where = _dump_hooks(path, ckpt), f"dump '{path}'"
    else:
        (available, shape), where = _model_hooks(ckpt), f"model of '{ckpt}'"
        model_hooks = available
    if shape is not None:   # layer and token ranges of --opt, before any folder is touched
        check_options(working, values, shape)
    missing = missing_hooks(available, working, model_hooks, values)
    if missing and len(missing) == len(working):
        what = "; ".join(f"{name} needs {', '.join(p)}" for name, p in missing.items())
        fix = ("capture them with `vitscope dump CKPT --hooks ...` or run analyze without --dump"
               if dump_path is not None else "choose plugins written for this model")
        raise PluginError(f"The {where} lacks hook points the plugins read ({what}); {fix}.")
    for name, patterns in missing.items():
        click.echo(f"FAILED  {name:<18} needs hook points {', '.join(patterns)}, which the "
                   f"{where} does not have", err=True)
    working = [e for e in working if e.name not in missing]
    patterns = union_requires(working, values)
    # Before a capture whose figures could not be saved; a failed capture leaves no empty folder.
    created = make_output_dir(run, PluginError, "choose another output folder with -o")
    cleanup.push(lambda kind, *_: remove_empty(created) if kind is not None else None)
    # One analyze at a time in OUT, from before the capture to the commit of its figures.
    cleanup.enter_context(hold(run / LOCK, run, PluginError, hint="wait for that analyze to "
                               "finish, or choose another output folder with -o"))
    warm_up()   # the plugins' fork server starts while the dump is captured

    if dump_path is None:
        from vitscope.capture import ensure_dump
        path, reused = ensure_dump(ckpt, data=data, split=split, n=images or DEFAULT_IMAGES,
                                   hooks=patterns, batch_size=batch_size, device=dev,
                                   progress=True, target=target)
    hooks, size, (grads, target_spec) = _dump_contents(path)
    held = summarize_names(hooks) + (f"; gradients of {summarize_names(grads)} for target "
                                     f"{target_spec}" if grads else "")
    click.echo(f"Using dump {path}" if dump_path is not None else
               f"{'Reusing' if reused else 'Captured'} dump {path} ({held})")
    # What is analysed is never more than the dump holds (a split smaller than -n, say).
    limit = min(images or DEFAULT_IMAGES, size) if dump_path is None else \
        (None if images is None else min(images, size))
    if images is not None and images > size:
        click.echo(f"The dump holds {size} images; analysing all {size} (asked for {images}).")
    if criteria:   # the figures show the chosen ones among the analysed images
        path = _selected(path, criteria, limit)
        size, limit = _dump_contents(path)[1], None

    # Plugins that failed before rendering are listed in index.html too, with their reason.
    upfront = [PluginResult(e.name, e.source, False, out_dir=run / e.name, error=e.problem())
               for e in chosen if not e.ok]
    keys = {name: output_folder(registry.get(name), values.get(name)) for name in missing}
    upfront += [PluginResult(name, registry.get(name).source, False, out_dir=run / keys[name],
                             error=f"needs hook points {', '.join(p)}, which the {where} does "
                                   f"not have", folder=keys[name]) for name, p in missing.items()]
    if all_ and not names:   # chosen as "every plugin": those that need more images sit out
        few = [e for e in working if int(getattr(e.plugin, "min_images", 1) or 1) > (limit or size)]
        for e in few:
            click.echo(f"skipped {e.name:<18} needs at least {e.plugin.min_images} images, "
                       f"{limit or size} analysed")
        working = [e for e in working if e not in few]
    with guard(run, "free some space (or choose another folder with -o) and run analyze "
                    "again"):
        results = render_plugins(path, working, run, values, static=static,
                                 interactive=interactive, fmt=fmt, limit=limit,
                                 echo=click.echo, failed=upfront, timeout=plugin_timeout,
                                 announce=True, smooth=smooth, info=_ckpt_info(ckpt))
    click.echo(f"Open {run / 'index.html'}")
    if any(not r.ok for r in results):
        raise SystemExit(1)


def _ckpt_info(ckpt) -> dict:
    """What index.html states about the checkpoint besides the dump: its stored accuracy."""
    if ckpt is None:
        return {}
    from vitscope.model.checkpoint import load_checkpoint
    metrics = load_checkpoint(ckpt).metrics or {}
    keep = {k: metrics[k] for k in ("val_acc", "epoch", "best_val_acc") if k in metrics}
    return {"checkpoint_metrics": keep} if keep else {}


def _classes(ckpt, dump_path) -> list[str] | None:
    """The model's class names, from the checkpoint or the --dump (None when neither says)."""
    try:
        if dump_path is not None:
            from vitscope.dump import Dump
            with Dump.open(dump_path) as d:
                return list(d.classes) or None
        if ckpt is not None:
            from vitscope.model.checkpoint import load_checkpoint
            return list(load_checkpoint(ckpt).classes or []) or None
    except Exception:   # the later steps name what is wrong with the file
        return None
    return None


def _selected(path: Path, criteria, pool: int | None) -> Path:
    """The dump of the images `criteria` choose among the first `pool` of `path`."""
    from vitscope.errors import PluginError
    from vitscope.analyze.selection import describe, select_dump, select_positions
    from vitscope.dump import Dump
    with Dump.open(path) as dump:
        total = len(dump) if pool is None else min(pool, len(dump))
        positions = select_positions(dump, criteria, total)   # errors: the exit stack cleans up
    what = describe(criteria)
    if not len(positions):
        raise PluginError(f"No image of the {total} analysed matches --select {what}; analyse "
                          f"more images with --images N or choose another selection.")
    click.echo(f"Selected {len(positions)} of {total} images ({what}).")
    return select_dump(path, positions, what)


def _run_name(ckpt, dump_path: Path | None) -> str:
    if ckpt is not None:
        from vitscope.capture import run_name
        return run_name(ckpt)
    return dump_path.stem


def _dump_contents(path: Path) -> tuple[list[str], int, tuple[list[str], str]]:
    """The hook points a dump holds, its number of images, and (gradient hooks, target)."""
    from vitscope.dump import Dump
    with Dump.open(path) as dump:
        return dump.hooks, len(dump), (dump.grad_hooks, dump.target_spec)


def _check_target(target, ckpt, dump_path: Path | None):
    """--target checked against the model's classes (from the checkpoint or the --dump); with
    --dump, it must be the target the dump's gradients were taken for."""
    from vitscope.capture import parse_target
    from vitscope.errors import PluginError
    if dump_path is not None:
        from vitscope.dump import Dump
        with Dump.open(dump_path) as dump:
            count = len(dump.classes) or int(dump.model_config.get("num_classes", 0))
            spec, has_grads = dump.target_spec, bool(dump.grad_hooks)
        parsed = parse_target(target, count)
        if has_grads and str(parsed) != spec:
            raise PluginError(f"Dump '{dump_path}' holds gradients for --target {spec}, not "
                              f"{parsed}; leave out --target or --dump, or capture a dump for "
                              f"that target.")
        return parsed
    from vitscope.model.checkpoint import load_checkpoint
    ck = load_checkpoint(ckpt)
    count = int(getattr(ck.model_config, "num_classes", 0) or len(ck.classes or ()))
    return parse_target("pred" if target is None else target, count)


def _model_hooks(ckpt):
    """Names the checkpoint's model offers to `requires` (its hook points and `grad:` of each;
    empty for models without hook points), and its ModelShape (None without hook points)."""
    from vitscope.model.checkpoint import load_checkpoint
    from vitscope.model.hooks import hook_points, is_hooked, offered_names
    ck = load_checkpoint(ckpt)
    model = ck.build_model()
    if not is_hooked(model):
        return [], None
    return offered_names(model), _shape(hook_points(model), model.token_layout, ck.classes)


def _shape(hooks, layout, classes):
    from vitscope.names import match_names
    from vitscope.plugin import ModelShape
    return ModelShape(depth=len(match_names("blocks.*.attn.weights", list(hooks))),
                      layout=layout, classes=tuple(classes or ()))


def _dump_hooks(path: Path, ckpt) -> tuple[list[str], list[str]]:
    """What a given --dump holds, and every hook point of its model; the dump must come from
    CKPT when both are given."""
    from vitscope.dump import Dump
    from vitscope.errors import PluginError
    with Dump.open(path) as dump:
        hooks, sha = dump.names, dump.attrs.get("checkpoint_sha256")
        model_hooks = dump.model_names
        shape = _shape(dump.model_names, dump.layout, dump.classes)
    if ckpt is not None and sha:
        from vitscope.capture import file_sha256
        if file_sha256(ckpt) != sha:
            raise PluginError(f"Dump '{path}' was captured from another checkpoint than "
                              f"'{ckpt}' (SHA-256 differs); pass the matching checkpoint or "
                              f"leave out --dump to capture a new dump.")
    return hooks, model_hooks, shape


@click.command(name="plugins")
@click.option("--verbose", "-v", is_flag=True, help="Also show each plugin's options.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list instead of text.")
def plugins(verbose: bool, as_json: bool) -> None:
    """List installed plugins: name, package and version, requires, status."""
    from vitscope.plugin import AUTOLOAD_ENV, discover

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
