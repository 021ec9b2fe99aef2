"""Planning and running `vitscope analyze`: one `AnalyzeRequest` (what the command line asked
for) in, the rendered run out. The command (vitscope.commands.analyze) only parses flags.

    outcome = run_analysis(AnalyzeRequest(ckpt="runs/shapes/best.pt", names=("rollout",)),
                           contextlib.ExitStack())

In order, so that nothing is captured or written before every input is known good: the
plugins are discovered and their `--opt` values parsed; `--target`, `--device`, `--select` and
the hook points each plugin reads are checked against the model (or the given dump); the
output folder is created and locked; the dump is captured or reused; the plugins render.

Everything that reads the checkpoint or runs the model happens in a child process of its own
(`_ModelSide`, vitscope._internal.worker), which ends once the dump is there: the analyze
process, which waits while every plugin renders in a process of its own, never imports torch
and never holds the model (issue 23, item 5: 0.6 GB of PSS it held through the rendering).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitscope.analyze.isolation import DEFAULT_TIMEOUT
from vitscope.analyze.run import (PluginResult, RenderRequest, missing_hooks, output_folder,
                                  map_options, map_requests, render_plugins, union_requires)

DEFAULT_IMAGES = 256  # enough for class averages and embeddings, a few seconds to capture


def _print(text: str = "", err: bool = False) -> None:
    import sys
    print(text, file=sys.stderr if err else sys.stdout)


@dataclass(frozen=True)
class AnalyzeRequest:
    """What `vitscope analyze` was asked for: its flags, one object (README lists them)."""
    ckpt: str | None = None            # the checkpoint (optional with dump_path)
    names: tuple[str, ...] = ()        # --plugin NAME ...
    all_: bool = False                 # --all
    dump_path: str | None = None       # --dump: render from this dump, capture nothing
    data: str | None = None            # --data SPEC (default: the checkpoint's own data)
    split: str | None = None           # --split (default: val, or all of another folder)
    images: int | None = None          # -n: images to analyse (default DEFAULT_IMAGES)
    image_files: tuple[str, ...] = ()  # --image FILE ...: explain these files
    selects: tuple[str, ...] = ()      # --select ...: which images the figures show
    static: bool = True                # static figures
    interactive: bool = True           # Plotly pages
    smooth: bool = False               # --smooth
    fmt: str = "png"                   # --format
    opts: tuple[str, ...] = ()         # --opt PLUGIN.KEY=VALUE ...
    out_dir: str | None = None         # -o (default outputs/<run>)
    device: str = "auto"
    batch_size: int | None = None      # capture batch (default: sized by memory)
    target: str | None = None          # --target pred|label|INDEX
    plugin_timeout: float | None = DEFAULT_TIMEOUT


@dataclass
class AnalysisOutcome:
    run: Path | None                   # the run folder (None when no plugin could run)
    results: list[PluginResult]

    @property
    def ok(self) -> bool:
        return self.run is not None and all(r.ok for r in self.results)


@dataclass
class _Progress:
    """How far a run got, for the one line Ctrl-C ends it with."""
    run: Path | None = None        # the output folder, once created or locked
    new: bool = False              # created by this run (and removed again when it stops)
    dump: Path | None = None       # the dump captured (not reused) for it
    committed: bool = False        # its figures were swapped in
    rendering: float | None = None  # time.time() when the rendering began

    def interrupted(self) -> str:
        manifest = self.run / "manifest.json" if self.run is not None else None
        if self.rendering is not None and manifest is not None and manifest.is_file() and \
                manifest.stat().st_mtime >= self.rendering:
            self.committed = True       # Ctrl-C landed just after the commit (it is whole)
        if self.committed:
            return f"after the figures were written; open {self.run / 'index.html'}."
        kept = "" if self.run is None or self.new else f" and '{self.run}' is as it was"
        if self.dump is not None:
            return (f"no figure was written{kept}; the dump {self.dump}, captured whole, will "
                    f"be reused.")
        return f"nothing was written{kept}."


class _ModelSide:
    """Where `_analyse` reads the checkpoint, checks the model and captures: a spawned child
    (vitscope._internal.worker) when analyze may capture, this process with --dump (which
    runs no model). `side("_function", ...)` calls that function of this module there;
    errors, warnings and Ctrl-C come back as if it ran here."""

    def __init__(self, child: bool) -> None:
        from vitscope._internal.worker import Worker
        self.worker = Worker() if child else None

    def __call__(self, function: str, *args, **kwargs):
        if self.worker is None:
            return globals()[function](*args, **kwargs)
        return self.worker.call(__name__, function, *args, **kwargs)

    def close(self, stop: bool = False) -> None:
        """End the child (its torch, model and capture memory go with it)."""
        if self.worker is not None:
            self.worker.close(stop=stop)

    def __enter__(self) -> "_ModelSide":
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(stop=kind is not None)


def run_analysis(request: AnalyzeRequest, cleanup: contextlib.ExitStack,
                 echo: Callable[..., None] = _print) -> AnalysisOutcome:
    """Everything `vitscope analyze` does after parsing its flags: check every input before
    any work, capture (or reuse) the dump the chosen plugins need, render them, write the
    run's index.html. `cleanup` unwinds the lock and empty folders; `echo(text, err=False)`
    prints progress. Raises VitscopeError (one sentence) for bad input, and Interrupted, saying
    what was kept, for Ctrl-C (whose cleanup `cleanup` does when it unwinds)."""
    from vitscope.errors import Interrupted
    progress = _Progress()
    try:
        return _analyse(request, cleanup, echo, progress)
    except KeyboardInterrupt:
        raise Interrupted(progress.interrupted()) from None


def _analyse(request: AnalyzeRequest, cleanup: contextlib.ExitStack, echo: Callable[..., None],
             progress: _Progress) -> AnalysisOutcome:
    r = request
    ckpt, names, all_, dump_path, data, split, images = (r.ckpt, r.names, r.all_, r.dump_path,
                                                         r.data, r.split, r.images)
    image_files, selects, static, interactive, smooth, fmt = (r.image_files, r.selects, r.static,
                                                              r.interactive, r.smooth, r.fmt)
    opts, out_dir, device, batch_size, target = r.opts, r.out_dir, r.device, r.batch_size, r.target
    from vitscope.errors import PluginError
    from vitscope.analyze.isolation import warm_up
    from vitscope._internal.locks import hold
    from vitscope.names import summarize_names
    from vitscope._internal.folders import discard_new, make_output_dir
    from vitscope.render.interactive import PLOTLY_JS
    from vitscope.analyze.options import check_options, parse_opts
    from vitscope.analyze.registry import discover
    from vitscope.analyze.staging import LOCK
    from vitscope._internal.files import guard

    # the model's side runs in a child when analyze may capture: see _ModelSide
    side = cleanup.enter_context(_ModelSide(child=dump_path is None and ckpt is not None))
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
    criteria = parse_select(selects, side("_classes", ckpt, dump_path) if selects else None)
    registry = discover()
    for problem in registry.unreadable:
        echo(f"Warning: {problem}", err=True)
    chosen = registry.select(names, all_)
    for entry in chosen:
        if not entry.ok:
            echo(f"Error: {entry.problem()}", err=True)
    working = [e for e in chosen if e.ok]
    values = parse_opts(opts, chosen, registry)   # before any capture: bad options fail fast
    if not working:
        return AnalysisOutcome(None, [])
    if dump_path is not None:   # a bad --target fails before any work
        if target is not None:
            target = _check_target(target, ckpt, Path(dump_path))
        no_target = False
    else:   # `target` stays as given: the model's side parses it where it is used
        no_target = not side("_target_applies", target, ckpt)
        dev = side("_device", device)              # a bad --device fails before any work
    run = Path(out_dir) if out_dir else \
        Path("outputs") / side("_run_name", ckpt, Path(dump_path) if dump_path else None)
    if image_files and not out_dir:   # outputs/<run>/<image>/: beside the run's own figures
        stem = Path(image_files[0]).stem
        run = run / (stem if len(image_files) == 1 else f"{stem}+{len(image_files) - 1}")

    # Plugins that read hook points the model (or the given dump) lacks fail alone, up front.
    if dump_path is not None:
        path = Path(dump_path)
        (available, model_hooks, shape), where = _dump_hooks(path, ckpt), f"dump '{path}'"
    else:
        (available, shape), where = side("_model_hooks", ckpt), f"model of '{ckpt}'"
        model_hooks = available
    # layer and token ranges of --opt, before any folder is touched; plugins that cannot apply
    # to this model at all (a CLS token it lacks) come back
    unfit = check_options(working, values, shape) if shape is not None else {}
    if no_target:    # a feature model without --target (no_target implies no --dump)
        unfit.update(_needs_target(working, values, unfit, side("_target_options")))
    if all_ and dump_path is None:   # methods that run the model per patch or step: by name
        unfit.update(_by_name_only(working, values, unfit, set(names)))
    missing = missing_hooks(available, [e for e in working if e.name not in unfit],
                            model_hooks, values)
    if all_ and dump_path is None:   # "every plugin": the unfit sit out, exit 0; one also
        named = set(names)           # named with -p is refused as if asked for alone
        working = _sit_out(working, {n: e for n, e in unfit.items() if n not in named},
                           {n: p for n, p in missing.items() if n not in named}, where, echo)
        unfit = {n: e for n, e in unfit.items() if n in named}
        missing = {n: p for n, p in missing.items() if n in named}
    if missing and not unfit and len(missing) == len(working):
        what = "; ".join(f"{name} needs {', '.join(p)}" for name, p in missing.items())
        fix = ("capture them with `vitscope dump CKPT --hooks ...` or run analyze without --dump"
               if dump_path is not None else "choose plugins written for this model")
        raise PluginError(f"The {where} lacks hook points the plugins read ({what}); {fix}.")
    if unfit and len(unfit) + len(missing) == len(working):
        if len(unfit) == 1 and not missing:
            raise next(iter(unfit.values()))          # its sentence names what still applies
        what = "; ".join([f"{n} {e.reason}" for n, e in unfit.items()] +
                         [f"{n} needs {', '.join(p)}" for n, p in missing.items()])
        raise PluginError(f"None of the chosen plugins applies to the {where} ({what}); "
                          f"{next(iter(unfit.values())).instead}.")
    refused = {n: str(e) for n, e in unfit.items()}
    refused.update({n: f"needs hook points {', '.join(p)}, which the {where} does not have"
                    for n, p in missing.items()})
    for name, text in refused.items():
        echo(f"FAILED  {name:<18} {text}", err=True)
    working = [e for e in working if e.name not in refused]
    patterns = union_requires(working, values)
    if dump_path is None:   # a data folder that is not here is found before any work
        side("_check_data_for", ckpt, data, split, images or DEFAULT_IMAGES, patterns, target,
             map_requests(working, values))
    # Before a capture whose figures could not be saved; a failed capture leaves no empty folder.
    created = make_output_dir(run, PluginError, "choose another output folder with -o")
    # the plugins write the run's plotly.min.js straight into it: a run that stops takes it too
    cleanup.push(lambda kind, *_: discard_new(created, (PLOTLY_JS,)) if kind is not None
                 else None)
    progress.run, progress.new = run, bool(created)
    # One analyze at a time in OUT, from before the capture to the commit of its figures.
    cleanup.enter_context(hold(run / LOCK, run, PluginError, hint="wait for that analyze to "
                               "finish, or choose another output folder with -o"))
    warm_up()   # the plugins' fork server starts while the dump is captured

    if dump_path is None:
        try:
            path, reused = side("_capture", ckpt, target, data=data, split=split,
                                n=images or DEFAULT_IMAGES, hooks=patterns,
                                batch_size=batch_size, device=dev, progress=True,
                                map_requests=map_requests(working, values))
            progress.dump = None if reused else path
            info = side("_ckpt_info", ckpt)
        except BaseException:
            side.close(stop=True)    # a stopped capture deletes its partial file first
            raise
        side.close()   # torch, the model and the capture's memory end with that process
        from vitscope._internal.memory import give_back
        give_back()   # what this process freed meanwhile, before plugins render beside it
    else:
        info = _ckpt_info(ckpt)
    hooks, size, (grads, target_spec) = _dump_contents(path)
    if dump_path is not None:
        _check_map_options(path, working, values)
    held = summarize_names(hooks) + (f"; gradients of {summarize_names(grads)} for target "
                                     f"{target_spec}" if grads else "")
    echo(f"Using dump {path}" if dump_path is not None else
               f"{'Reusing' if reused else 'Captured'} dump {path} ({held})")
    # What is analysed is never more than the dump holds (a split smaller than -n, say).
    limit = min(images or DEFAULT_IMAGES, size) if dump_path is None else \
        (None if images is None else min(images, size))
    if images is not None and images > size:
        echo(f"The dump holds {size} images; analysing all {size} (asked for {images}).")
    if criteria:   # the figures show the chosen ones among the analysed images
        path = _selected(path, criteria, limit, echo)
        size, limit = _dump_contents(path)[1], None

    # Plugins that failed before rendering are listed in index.html too, with their reason.
    upfront = [PluginResult(e.name, e.source, False, out_dir=run / e.name, error=e.problem())
               for e in chosen if not e.ok]
    keys = {name: output_folder(registry.get(name), values.get(name)) for name in refused}
    upfront += [PluginResult(name, registry.get(name).source, False, out_dir=run / keys[name],
                             error=text, folder=keys[name]) for name, text in refused.items()]
    if all_ and not names:   # chosen as "every plugin": those that need more images sit out
        from vitscope.plugin import member
        few = [e for e in working if int(member(e.plugin, "min_images") or 1) > (limit or size)]
        for e in few:
            echo(f"skipped {e.name:<18} needs at least {e.plugin.min_images} images, "
                 f"{limit or size} analysed")
        working = [e for e in working if e not in few]
    with guard(run, "free some space (or choose another folder with -o) and run analyze "
                    "again"):
        figures = RenderRequest(static=static, interactive=interactive, fmt=fmt, limit=limit,
                                smooth=smooth, timeout=r.plugin_timeout)
        progress.rendering = time.time()
        results = render_plugins(path, working, run, values, figures, echo=echo,
                                 failed=upfront, announce=True, info=info)
        progress.committed = True
        if image_files and not out_dir:
            _link_from_parent(run.parent)
    echo(f"Open {run / 'index.html'}")
    return AnalysisOutcome(run, results)


def _sit_out(working, unfit, missing, where: str, echo) -> list:
    """`analyze --all`: the plugins that cannot apply to this model (NotApplicable from their
    check, or hook points it does not have) are listed as skipped, each with its reason and
    once what still applies, and left out before any capture. The others, or PluginError."""
    reasons = {n: e.reason for n, e in unfit.items()}
    reasons.update({n: f"needs hook points {', '.join(p)}, which the {where} does not have"
                    for n, p in missing.items()})
    for name, reason in reasons.items():
        echo(f"skipped {name:<18} {reason}")
    for instead in dict.fromkeys(e.instead for e in unfit.values() if e.instead):
        echo(f"        {instead[:1].upper() + instead[1:]}.")
    left = [e for e in working if e.name not in reasons]
    if not left:
        from vitscope.errors import PluginError
        raise PluginError(f"No installed plugin applies to the {where} "
                          f"({'; '.join(f'{n} {r}' for n, r in reasons.items())}); choose "
                          f"plugins written for this model.")
    return left


def _link_from_parent(parent: Path) -> None:
    """Rewrite the index.html of the run an `--image` analysis sits in (outputs/<run>/), so it
    links the new sub-folder; skipped while another analyze holds that run (its own index,
    written at its end, lists the sub-folders it finds)."""
    from vitscope.analyze.staging import LOCK
    from vitscope._internal.locks import InUse, hold
    from vitscope.render.index_page import write_index
    if not (parent / "manifest.json").is_file():
        return
    try:
        with hold(parent / LOCK, parent):
            write_index(parent)
    except (InUse, ValueError, OSError):   # the new analysis stands; only the link is missing
        pass


def _check_map_options(path: Path, working, values) -> None:
    """With --dump: an `--opt` of a method run at capture (integrated-gradients.steps=16) must
    be what the dump's maps were made with; PluginError otherwise (options that set only speed
    are not compared)."""
    given = {k: v for k, v in map_options(working, values).items() if v}
    if not given:
        return
    from vitscope.dump import Dump
    from vitscope.errors import PluginError
    from vitscope.methods import get
    with Dump.open(path) as dump:
        for name, options in given.items():
            wanted = get(name).map_deciding(options)
            if name in dump.model_maps and not dump.map_options_agree(name, wanted):
                made = dump.map_options(name)
                made_text = ", ".join(f"{k}={made[k]}" for k in wanted if k in made) \
                    if made is not None else "options it did not record"
                raise PluginError(f"Dump '{path}' holds {name} maps made with {made_text}, not "
                                  f"{', '.join(f'{k}={v}' for k, v in wanted.items())}; leave "
                                  f"out --dump to capture them, or the --opt to use these.")


# ------------------------------------------- run on the model's side (_ModelSide, in a child)


def _target_applies(target, ckpt) -> bool:
    """--target checked against the checkpoint's model (one sentence if wrong); False for a
    feature model without one (its gradient plugins sit out)."""
    return _check_target(target, ckpt, None) is not None


def _device(device) -> str:
    """--device resolved (ConfigError in one sentence if unavailable), as text."""
    from vitscope._internal.devices import resolve_device
    return str(resolve_device(device))


def _target_options() -> str:
    """The targets a feature model takes, as the sentence names them."""
    from vitscope.capture.objective import OPTIONS
    return OPTIONS


def _check_data_for(ckpt, data, split, n, patterns, target, requests=()) -> None:
    """_check_data with --target as given and the options of the maps made with the model
    (analyze.run.map_requests), both turned into objects here, on the model's side."""
    from vitscope.analyze.run import map_options_from
    _check_data(ckpt, data, split, n, patterns, _check_target(target, ckpt, None),
                map_options_from(list(requests)))


def _capture(ckpt, target, map_requests=(), **request) -> tuple[Path, bool]:
    """ensure_dump for --target as given and the options of the maps made with the model
    (analyze.run.map_requests): (path, reused)."""
    from vitscope.analyze.run import map_options_from
    from vitscope.capture import ensure_dump
    return ensure_dump(ckpt, target=_check_target(target, ckpt, None),
                       map_options=map_options_from(list(map_requests)), **request)


def _check_data(ckpt, data, split, n, patterns, target, run_options=None) -> None:
    """DataError when the data to capture is a folder or files missing here, unless a finished
    dump serves the request anyway (ensure_dump then reuses it, with a warning)."""
    from vitscope.capture import check_data, covering_dump
    from vitscope.errors import DataError
    from vitscope.model.checkpoint import load_checkpoint
    try:
        check_data(load_checkpoint(ckpt), data)
    except DataError:
        if covering_dump(ckpt, data=data, split=split, n=n, hooks=patterns,
                         target=target, map_options=run_options) is None:
            raise


def _ckpt_info(ckpt) -> dict:
    """What index.html states about the checkpoint besides the dump: its stored accuracy."""
    if ckpt is None:
        return {}
    from vitscope.model.checkpoint import load_checkpoint
    ck = load_checkpoint(ckpt)
    metrics = ck.metrics or {}
    keep = {k: metrics[k] for k in ("val_acc", "epoch", "best_val_acc") if k in metrics}
    info: dict = {"checkpoint_metrics": keep} if keep else {}
    if (ck.train_config or {}).get("random_weights") is True:   # `vitscope import` without weights
        info["random_weights"] = True
    return info


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


def _selected(path: Path, criteria, pool: int | None, echo: Callable[..., None]) -> Path:
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
    echo(f"Selected {len(positions)} of {total} images ({what}).")
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
    if target is None and count == 0:   # a feature model: gradient plugins sit out instead
        return None
    return parse_target("pred" if target is None else target, count)


def _needs_target(working, values, unfit, options: str) -> dict:
    """On a feature model without --target: the plugins that read gradients (or maps the
    capture makes with the model, integrated gradients, occlusion, Score-CAM), which would
    otherwise explain an arbitrary feature, as NotApplicable naming the targets that apply."""
    from vitscope.errors import NotApplicable
    from vitscope.names import split_grads, split_maps
    out = {}
    for e in working:
        if e.name in unfit or not e.ok:
            continue
        rest, maps = split_maps(list(e.requires_for(values.get(e.name))))
        if not split_grads(rest)[1] and not maps:   # maps made with the model explain a target too
            continue
        what = "a score's gradient" if split_grads(rest)[1] else "a score"
        out[e.name] = NotApplicable(
            f"{e.name} explains {what}, and this model has no class head (it outputs "
            f"features); pass {options}.",
            reason=f"explains {what}, and this model has no class head to explain",
            instead=f"give gradient plugins a target: {options}")
    return out


def _by_name_only(working, values, unfit, named: set[str]) -> dict:
    """`analyze --all`: the plugins whose maps the capture makes by running the model many
    times per image (integrated gradients, occlusion, Score-CAM: tens to hundreds of passes
    per image, minutes on a 224-px ViT) sit out unless named with -p."""
    from vitscope.errors import NotApplicable
    from vitscope.methods.registry import ONE_PASS
    from vitscope.names import split_maps
    out = {}
    for e in working:
        if e.name in unfit or e.name in named or not e.ok:
            continue
        if set(split_maps(list(e.requires_for(values.get(e.name))))[1]) - ONE_PASS:
            out[e.name] = NotApplicable(
                f"{e.name} runs the model many times per image; name it with -p {e.name}.",
                reason="runs the model many times per image: name it with -p to run it",
                instead="methods that run the model per patch or step (integrated-gradients, "
                        "occlusion, scorecam) run when named with -p")
    return out


def _model_hooks(ckpt):
    """Names the checkpoint's model offers to `requires` (its hook points and `grad:` of each;
    empty for models without hook points), and its ModelShape (None without hook points)."""
    from vitscope.model.checkpoint import load_checkpoint
    from vitscope.model.hooks import hook_points, is_hooked, offered_names
    ck = load_checkpoint(ckpt)
    model = ck.build_model()
    if not is_hooked(model):
        return [], None
    from vitscope.capture.model_maps import model_map_names   # map:<method>, stored at capture
    return (offered_names(model) + model_map_names(),
            _shape(hook_points(model), model.token_layout, ck.classes))


def _shape(hooks, layout, classes):
    from vitscope.names import match_names
    from vitscope.plugin import ModelShape
    hooks = list(hooks)
    return ModelShape(depth=len(match_names("blocks.*.attn.weights", hooks)),
                      layout=layout, classes=tuple(classes or ()), hooks=tuple(hooks))


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


