"""`vitscope dump CKPT ...` (capture activations) and `vitscope dump merge SHARDS... -o OUT.h5`.

`dump` is a click group whose default command is the capture: when the first argument is not
a subcommand (`merge`, `info`), it is a checkpoint and the capture runs.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

from vitscope.commands.common import threads_option

SUBCOMMAND_USAGE = {
    "merge": "merge SHARD.h5... -o OUT.h5 [--force]",
    "info": "info DUMP.h5",
}


class DefaultGroup(click.Group):
    """A group that runs `default` when the first argument names no subcommand."""

    default = "capture"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "CKPT [OPTIONS]")
        for usage in SUBCOMMAND_USAGE.values():
            formatter.write_usage(ctx.command_path, usage, prefix="   or: ")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        default = self.commands[self.default]
        with click.Context(default, info_name=self.default, parent=ctx) as sub:
            default.format_options(sub, formatter)
        self.format_commands(ctx, formatter)


class DefaultCommand(click.Command):
    """The capture command, whose usage reads `vitscope dump CKPT [OPTIONS]`."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        path = ctx.parent.command_path if ctx.parent is not None else ctx.command_path
        formatter.write_usage(path, "CKPT [OPTIONS]")


@click.group(cls=DefaultGroup)
def dump() -> None:
    """Capture a checkpoint's activations on a dataset into an HDF5 dump.

    Defaults come from the checkpoint: its dataset and image size, the val split, and the hook
    points the built-in analyses need. Images go in a seeded shuffle of the split, so --limit N
    keeps a mixed sample. The file appears only when complete (written under a partial name of
    its own, renamed at the end; two dumps to one OUT never mix). Use --shard i/n on several machines or GPUs, then `dump merge`.
    """


@dump.command("capture", cls=DefaultCommand, hidden=True)
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--data", default=None, metavar="SPEC",
              help="Dataset spec (default: the checkpoint's training data), e.g. shapes, cifar10, "
                   "folder:PATH.")
@click.option("--data-dir", default=None, help="Where cifar10/cifar100 live (default: as in training).")
@click.option("--split", default=None, type=click.Choice(["train", "val", "all"]),
              help="all = every image, no val carve-out (default: val of the checkpoint's data "
                   "or of data with a val split; all of another folder).")
@click.option("--limit", "--images", "-n", "limit", type=int, default=None, metavar="N",
              help="Dump only the first N images of the (shuffled) order (--images / -n: the "
                   "same, as in `vitscope analyze`).")
@click.option("--hooks", multiple=True, metavar="PATTERNS",
              help="Hook names or globs, comma-separated or repeated (default: what the built-in "
                   "analyses need; `vitscope hooks CKPT` lists them); grad:PATTERN stores the "
                   "gradient of the target logit there.")
@click.option("--batch-size", type=int, default=None,
              help="Images per forward pass (default: as many as fit in 1 GiB of capture memory, "
                   "at most 64; a ViT-S/16 at 224 px with gradients gets a few).")
@click.option("--dtype", default="float16", show_default=True,
              type=click.Choice(["float16", "float32"]), help="Storage type of activations.")
@click.option("--grad-dtype", default="float32", show_default=True,
              type=click.Choice(["float16", "float32"]),
              help="Storage type of gradients (float16 flushes small gradients to zero).")
@click.option("--compression", default="auto", show_default=True,
              type=click.Choice(["auto", "lzf", "gzip", "none"]),
              help="auto: lzf where it shrinks a hook point by 10% and costs the capture under "
                   "2% of its pace on a CPU (measured on the first batch), raw elsewhere; lzf: "
                   "lzf wherever it shrinks by 10%; gzip; none.")
@click.option("--shard", default=None, metavar="i/n",
              help="Write shard i of n (contiguous ranges of the order); under torchrun the "
                   "default is RANK/WORLD_SIZE.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2 ** 63 - 1),
              help="Seed of the image order (0 to 2**63 - 1).")
@click.option("--in-order", is_flag=True, help="Keep the split's own order instead of shuffling.")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Output file (default: outputs/dumps/<run>-<split>-<N>.h5).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda, then mps, then cpu; cuda:LOCAL_RANK under torchrun), cpu, cuda, "
                   "cuda:1, mps.")
@click.option("--target", default="pred", show_default=True, metavar="TARGET",
              help="What the grad: hooks differentiate (stored per image in /target): pred, "
                   "label or a class INDEX; for a model without a class head "
                   "similarity:IMAGE, and for CLIP/SigLIP text:PROMPT or text-classes.")
@click.option("--derive/--no-derive", default=True, show_default=True,
              help="Keep LayerNorm outputs whose input is stored as the norm's parameters and "
                   "compute them on read (--no-derive: store every hook point as captured).")
@click.option("--opt", "opts", multiple=True, metavar="METHOD.KEY=VALUE",
              help="An option of a map:METHOD hook, run at capture (repeatable), e.g. "
                   "integrated-gradients.steps=16; recorded in the dump beside its maps.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@threads_option
def capture_cmd(ckpt, data, data_dir, split, limit, hooks, batch_size, dtype, grad_dtype,
                compression, shard,
                seed, in_order, output, force, device, target, derive, opts, quiet) -> None:
    """Capture activations of CKPT into an HDF5 dump (and gradients for `grad:` hooks)."""
    from vitscope._internal.devices import resolve_device
    from vitscope.capture import (DEFAULT_DUMP_DIR, DEFAULT_HOOKS, CaptureRequest, capture,
                                  check_limit, dataset_for, num_classes, parse_shard,
                                  parse_target, resolve_request, run_name, shard_range)
    from vitscope.capture.objective import is_class_target
    from vitscope.model.checkpoint import load_model
    from vitscope.errors import DumpError
    from vitscope.model.hooks import is_hooked

    check_limit(limit)
    patterns = [p.strip() for item in hooks for p in item.split(",") if p.strip()] or list(DEFAULT_HOOKS)
    run_options = None
    if opts:   # checked before the model loads
        from vitscope.capture.model_maps import parse_map_opts
        from vitscope.names import split_maps
        run_options = parse_map_opts(opts, split_maps(patterns)[1])
    parsed = parse_shard(shard) if shard is not None else _torchrun_shard()
    dev = resolve_device(device)  # a bad --device fails before anything is loaded
    model, ck = load_model(ckpt)
    if not is_hooked(model):
        raise DumpError(f"'{ckpt}' holds a {ck.arch} model, which has no hook points; dumps are "
                        f"made from ViT checkpoints.")
    acts, grads = resolve_request(model, patterns)  # a bad pattern fails before loading data
    if num_classes(model) or grads or not is_class_target(target):
        target = parse_target(target, num_classes(model))   # a feature model: none needed
    dataset = dataset_for(ck, data, split, data_dir)
    split = dataset.split
    n = min(limit or len(dataset), len(dataset))
    out = Path(output) if output else DEFAULT_DUMP_DIR / f"{run_name(ck.path)}-{split}-{n}.h5"
    merged = out
    if parsed is not None:  # one file per shard, so shards on one filesystem never collide
        suffix = f"-shard{parsed[0]}of{parsed[1]}"
        if out.stem.endswith(suffix):
            merged = out.with_name(f"{out.stem[:-len(suffix)]}{out.suffix}")
        else:
            out = out.with_name(f"{out.stem}{suffix}{out.suffix}")
    t0 = time.perf_counter()
    request = CaptureRequest(patterns, ckpt=ck, limit=limit, batch_size=batch_size, dtype=dtype,
                             grad_dtype=grad_dtype, compression=compression, shard=parsed, force=force, device=dev,
                             progress=not quiet, seed=None if in_order else seed,
                             target=target, derive=derive, map_options=run_options)
    path = capture(model, dataset, out, request=request)
    seconds = time.perf_counter() - t0
    start, stop = shard_range(n, *parsed) if parsed is not None else (0, n)
    count, size = stop - start, path.stat().st_size
    extra = f" + {len(grads)} gradients (target {target})" if grads else ""
    click.echo(f"Wrote {path}: {count} images, {len(acts)} hook points{extra}, "
               f"{size / 1e6:,.1f} MB ({size / count / 1e3:,.1f} kB/image) in {seconds:.1f} s "
               f"({count / seconds:,.1f} images/s).")
    if parsed is not None:
        pattern = out.with_name(f"{merged.stem}-shard*of{parsed[1]}{out.suffix}")
        click.echo(f"When all {parsed[1]} shards are done: vitscope dump merge {pattern} -o {merged}")


def _torchrun_shard() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) under torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else None


@dump.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The merged dump (virtual datasets over the shards; keep them beside it).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def merge_cmd(shards, output, force) -> None:
    """Join the shard files of one `--shard i/n` capture into one dump, without copying data."""
    from vitscope._internal.signals import terminate_as_exception
    from vitscope.dump import Dump, merge

    with terminate_as_exception():   # SIGTERM unwinds like Ctrl-C: the partial file goes
        path = merge(shards, output, force=force)
    with Dump.open(path) as d:
        click.echo(f"Wrote {path}: {len(d)} images from {len(shards)} shards "
                   f"(virtual datasets, {path.stat().st_size / 1e3:,.1f} kB).")


@dump.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
def info_cmd(path) -> None:
    """What a dump holds: source, images, token layout and every captured hook with its shape."""
    from vitscope.dump import Dump
    from vitscope.names import format_shape

    with Dump.open(path) as d:
        a = d.attrs
        click.echo(f"dump         {d.path}  (format {a['format']} v{a['version']}, vitscope "
                   f"{a.get('vitscope_version', '?')}, created {a.get('created', '?')})")
        click.echo(f"checkpoint   {a.get('checkpoint_path') or '-'}  sha256 "
                   f"{(a.get('checkpoint_sha256') or '-')[:16]}")
        click.echo(f"data         {a.get('dataset')} ({a.get('split')}), {len(d)} of "
                   f"{a.get('split_size')} images, order {a.get('order')} (seed {a.get('seed')})")
        lay = d.layout
        click.echo(f"layout       {lay.describe()} ({lay.image_size[0]}×{lay.image_size[1]} px "
                   f"images)")
        click.echo(f"classes      {len(d.classes)}: {', '.join(d.classes)}")
        if d.grad_hooks:
            click.echo(f"target       {d.target_spec}: gradients of the target logit at "
                       f"{len(d.grad_hooks)} hook points (grad: names below)")
            lost = d.grad_precision()
            if lost is not None:
                click.echo(f"gradients    stored in {d.grad_dtype}; {lost['underflow']:.2%} of "
                           f"the non-zero values flushed to zero in storage (float16 would "
                           f"flush {lost['fp16_underflow']:.2%})")
        if d.model_maps:   # made by running the model: with which options, for which target
            made = [(m, d.map_options(m)) for m in d.model_maps]
            click.echo("maps         " + "; ".join(
                f"{m} ({', '.join(f'{k}={v}' for k, v in o.items()) if o is not None else 'options not recorded'})"
                for m, o in made) + f", explaining target {d.target_spec}")
        filters = {h: _filter(d[h]) for h in d.names if h not in d.derived and h not in d.sliced}
        asked = a.get("compression")
        used = sum(f == ("lzf" if asked == "auto" else asked) for f in filters.values())
        if "virtual" in filters.values():  # merged: the shards say how they are stored
            asked = used = None
        click.echo(f"storage      {a.get('dtype')}, {asked or 'virtual datasets'}" +
                   (f" on {used} of {len(filters)} hook points (the rest stay raw: lzf would not shrink "
                    f"them by 10%)" if asked == "lzf" and used < len(filters)
                    else f": lzf on {used} of {len(filters)} hook points (the rest stay raw: lzf "
                         f"would not shrink them by 10% or would slow the capture)"
                    if asked == "auto" else "") +
                   f", {d.path.stat().st_size / 1e6:,.1f} MB" +
                   (f", merged from {len(a['merged_from'])} shards" if a.get("merged_from") else ""))
        if d.derived:
            click.echo(f"derived      {len(d.derived)} hook points computed on read from a stored "
                       f"one (LayerNorm outputs: the norms' weights are in the dump)")
            filters.update({h: f"derived: {s['function']} of {s['source']}"
                            for h, s in d.derived.items()})
        filters.update({h: f"read from {s}" for h, s in d.sliced.items()})
        width = max((len(h) for h in d.names), default=0)
        for h in d.names:
            ds = d[h]
            click.echo(f"  {h:<{width}}  {format_shape(ds.shape)}  {'×'.join(d.dims(h))}  "
                       f"{ds.dtype}  {filters[h]}")


def _filter(ds) -> str:
    """How one dataset is stored: its compression filter, "raw", or "virtual" (merged)."""
    if ds.is_virtual:
        return "virtual"
    return ds.compression or "raw"
