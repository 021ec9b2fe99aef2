"""`vitscope animate`: one figure of `vitscope train --analyze-every` across the epochs, as a
GIF and an HTML slider, each frame labelled with its epoch and val accuracy
(vitscope.analyze.animation)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("source", type=click.Path(), metavar="OUTPUT_OR_RUN_DIR")
@click.option("--plugin", "-p", required=True, metavar="NAME",
              help="The plugin whose figure is animated (one that --plugin rendered in training).")
@click.option("--figure", "-f", default=None, metavar="NAME",
              help="Which of its figures: a file name, stem or glob (default: the first PNG it "
                   "writes, e.g. rollout.png).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="The training run folder whose metrics.jsonl gives the val accuracies "
                   "(default: the one the epoch folders record).")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the GIF, HTML and JSON (default: OUTPUT_DIR/animations).")
@click.option("--width", type=click.IntRange(min=0), default=960, show_default=True,
              help="Frame width in pixels (larger figures are scaled down; 0: as rendered).")
@click.option("--duration", "duration_ms", type=click.IntRange(min=20), default=700,
              show_default=True, help="Milliseconds per frame (the last is held 2 s).")
def animate(source: str, plugin: str, figure: str | None, run_dir: str | None,
            out_dir: str | None, width: int, duration_ms: int) -> None:
    """A GIF and an HTML slider of one plugin figure across the epochs that
    `vitscope train --analyze-every N --plugin NAME` rendered.

    \b
    Examples:
      vitscope train --config shapes-quick --analyze-every 1 --plugin rollout
      vitscope animate outputs/shapes-quick --plugin rollout
      vitscope animate runs/shapes-quick --plugin rollout --figure rollout_mask
    """
    from vitscope._internal.signals import terminate_as_exception
    from vitscope.analyze.animation import animate as make, find_epochs_root

    root = find_epochs_root(Path(source))
    with terminate_as_exception():   # SIGTERM unwinds like Ctrl-C: no temporary file is left
        info, frames, warnings, run = make(root, plugin, figure,
                                           run=Path(run_dir) if run_dir else None,
                                           out_dir=Path(out_dir) if out_dir else None,
                                           width=width or None, duration_ms=duration_ms)
    for w in warnings:
        click.echo(f"Warning: {w}.", err=True)
    click.echo(f"{len(frames)} frames ({info['size'][0]}×{info['size'][1]} px), epochs "
               f"{', '.join(str(f.epoch) for f in frames)}; val acc from "
               f"{run / 'metrics.jsonl' if run else '(not found)'}")
    for f in frames:
        click.echo(f"  {f.label}")
    click.echo(f"wrote {', '.join(info['files'])}")
