"""`vitscope train`: train a ViT (or the CNN baseline) from a recipe, flags and --set overrides."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from vitscope.commands.common import threads_option

# flag name -> TrainConfig field, for the common flags (None = not given on the command line)
FLAG_FIELDS = {"data": "data", "data_dir": "data_dir", "val_split": "val_split",
               "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "device": "device",
               "seed": "seed", "compile_": "compile", "ema": "ema", "patience": "patience",
               "name": "name", "runs_dir": "runs_dir", "quiet": "quiet", "log": "log"}


@click.command(context_settings={"show_default": True})
@click.option("--config", "-c", "recipe", metavar="RECIPE",
              help="A recipe TOML, or the name of a shipped one (shapes-quick, cifar10-fast, ...).")
@click.option("--model", "-m", "preset", metavar="PRESET|cnn",
              help="Model preset (vit-tiny, vit-small, vit-lite, seed-cifar10, ...) or 'cnn'.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Set any config field, e.g. --set epochs=5 --set model.depth=4 (repeatable).")
@click.option("--data", help="shapes | cifar10 | cifar100 | folder:PATH  [default: shapes]")
@click.option("--data-dir", help="Where cifar10/cifar100 live or are downloaded  [default: ./data]")
@click.option("--val-split", type=float, help="Carve this fraction of train as validation.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int, help="Global batch size (split across DDP ranks).")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]),
              help="auto = cuda, then mps, then cpu.")
@click.option("--seed", type=int)
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model.")
@click.option("--ema/--no-ema", default=None, help="Evaluate and save an EMA of the weights.")
@click.option("--patience", type=int, help="Stop after N epochs without a better val_acc.")
@click.option("--name", help="Run folder name under --runs-dir.")
@click.option("--runs-dir", help="Parent of run folders  [default: runs]")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing run folder of the same name (the old one is kept until "
                   "the new run writes its first checkpoint).")
@click.option("--resume", "resume_path", type=click.Path(dir_okay=False),
              help="Continue a run exactly from its last.pt.")
@click.option("--quiet/--no-quiet", "-q", default=None,
              help="No progress bar or epoch lines (--no-quiet: show them again on --resume).")
@click.option("--log", multiple=True, type=click.Choice(["tensorboard", "wandb"]),
              help="Also log to TensorBoard and/or Weights & Biases (offline by default).")
@click.option("--analyze-every", type=click.IntRange(min=1), metavar="N",
              help="Every N epochs, render the --plugin analyses of the current model.")
@click.option("--plugin", "plugins", multiple=True, metavar="NAME",
              help="Analysis plugin run by --analyze-every (repeatable).")
@threads_option
def train(recipe, preset, sets, resume_path, overwrite, analyze_every, plugins, **flags) -> None:
    """Train a ViT or the CNN baseline; writes runs/<name>/{best,last}.pt, metrics, curves.

    \b
    Examples:
      vitscope train --config shapes-quick
      vitscope train --config cifar10-fast --set data=folder:/tmp/vitscope-data/cifar10-jpeg
      vitscope train --model cnn --data shapes --epochs 5
      torchrun --nproc_per_node 2 -m vitscope train --config shapes-quick --device cpu
      vitscope train --resume runs/shapes-quick/last.pt
    """
    from vitscope.errors import ConfigError, TrainingInterrupted
    from vitscope.train.config import make_config, parse_sets, read_recipe
    from vitscope.train.runner import resume_config, run

    overrides = {FLAG_FIELDS[k]: v for k, v in flags.items() if v not in (None, ())}
    if "log" in overrides:
        overrides["log"] = list(overrides["log"])
    overrides.update(parse_sets(sets))
    if plugins and not analyze_every:
        raise ConfigError("--plugin runs only with --analyze-every N (e.g. --analyze-every 5 "
                          "--plugin rollout); or render afterwards with `vitscope analyze`.")
    if analyze_every and not plugins:
        raise ConfigError("--analyze-every needs at least one --plugin NAME (e.g. --plugin "
                          "rollout); `vitscope plugins` lists them.")
    resume = None
    if resume_path:
        if recipe is not None or preset or overwrite:
            raise ConfigError("--resume continues the run in its own folder with its own "
                              "settings, so --config, --model and --overwrite cannot be combined "
                              "with it.")
        cfg, resume = resume_config(resume_path, overrides)
    else:
        cfg = make_config(read_recipe(recipe) if recipe is not None else None, preset=preset,
                          overrides=overrides)
    make_callbacks = _analysis_callbacks(list(plugins), analyze_every) if analyze_every else None
    try:
        summary = run(cfg, overwrite=overwrite, resume=resume, make_callbacks=make_callbacks)
    except TrainingInterrupted as e:
        if _is_main():  # every rank stopped at the same step; one message is enough
            click.echo(str(e), err=True)
        sys.exit(130)
    if not cfg.quiet and _is_main():
        click.echo(f"done: best val_acc {summary['best_val_acc']:.4f} at epoch "
                   f"{summary['best_epoch']}; checkpoints in {summary['run_dir']}/ (best.pt, last.pt)")
        if analyze_every:
            from vitscope.analyze.epochs import epoch_analyses_dir
            click.echo(f"epoch analyses: {epoch_analyses_dir(Path(summary['run_dir']).name)}/"
                       f"epoch_NNN/index.html")
    if analyze_every and _is_main():
        _animate(list(plugins), Path(summary["run_dir"]), quiet=bool(cfg.quiet))


def _animate(plugins: list[str], run_dir: Path, quiet: bool) -> None:
    """The training-progress animation of each --plugin's first figure (vitscope.analyze.animation),
    once at least two epochs were analysed; a failure is a warning, never a failed run."""
    from vitscope.analyze.epochs import epoch_analyses_dir
    from vitscope.analyze.animation import animate, epoch_folders
    from vitscope.errors import VitscopeError

    root = epoch_analyses_dir(run_dir.name)
    if len(epoch_folders(root)) < 2:
        return
    for plugin in plugins:
        try:
            info, frames, _, _ = animate(root, plugin, run=run_dir)
        except (VitscopeError, OSError) as e:
            click.echo(f"Warning: no training animation of {plugin}: {e}", err=True)
            continue
        if not quiet:
            click.echo(f"animation of {plugin} over {len(frames)} epochs: {info['files'][0]} "
                       f"(slider: {info['files'][1]}; other figures: vitscope animate {root} "
                       f"--plugin {plugin} --figure NAME)")


def _is_main() -> bool:
    import os
    return os.environ.get("RANK", "0") == "0"


def _analysis_callbacks(plugins: list[str], every: int):
    """The factory of the epoch-end analysis callback, built once the validation data are
    loaded. vitscope.analyze.run belongs to the plugins side and is imported only here (never by
    vitscope.train), before any training starts."""
    from vitscope.errors import VitscopeError
    try:
        from vitscope.analyze.epochs import make_epoch_analyzer
    except ImportError as e:
        raise VitscopeError(f"--analyze-every needs vitscope.analyze.epochs, which could not be "
                            f"imported ({e}); reinstall vitscope or drop --analyze-every.") from None

    def make(val_ds, classes, normalize, run_name):
        analyze = make_epoch_analyzer(plugins, val_ds, run_name=run_name, classes=classes,
                                      normalize=normalize)

        def every_n(model, epoch, run_dir):
            return analyze(model, epoch, run_dir) if epoch % every == 0 else None
        return [every_n]
    return make
