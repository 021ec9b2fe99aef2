"""`vitscope score CKPT --plugin rollout --plugin grad-rollout ...`: evidence for every map."""
from __future__ import annotations

from pathlib import Path

import click

from vitscope.commands.common import device_option, opt_option

DEFAULT_IMAGES = 256


@click.command()
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--plugin", "-p", "names", multiple=True, required=True, metavar="NAME",
              help="Map plugin to score (repeatable), e.g. rollout, grad-rollout, attn-grad, "
                   "gradcam, or any third-party plugin that declares produces=('maps',).")
@click.option("--images", "-n", type=click.IntRange(min=2), default=DEFAULT_IMAGES,
              show_default=True, help="Images scored (the first of the seed-0 shuffle, as analyze).")
@click.option("--data", default=None, metavar="SPEC",
              help="Dataset (default: the checkpoint's training data); localisation needs masks "
                   "(shapes, shapes:distractors, folder:PATH with masks/, "
                   "imagenet-seg:PATH/gtsegs_ijcv.mat).")
@click.option("--split", default="val", show_default=True, help="Split to score on.")
@click.option("--target", default="pred", show_default=True, metavar="TARGET",
              help="Class explained and whose probability the curves follow (pred, label, "
                   "INDEX), or a score they follow: similarity:IMAGE, text:PROMPT, "
                   "text-classes.")
@click.option("--perturbation", type=click.Choice(["drop", "grey"]), default="drop",
              show_default=True,
              help="drop: removed patch tokens leave the sequence; grey: their pixels are set to "
                   "the normalisation mean.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True,
              help="Storage of activations and gradients in score's captures (float16 flushes "
                   "small gradients to zero; the report says how many).")
@click.option("--draws", type=click.IntRange(min=1), default=5, show_default=True,
              help="Independent weight draws of the randomisation cascade.")
@opt_option
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Run folder (default: outputs/<run>); the score goes to OUT/score/.")
@device_option
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per forward pass.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random order, tie breaks, weight randomisation and bootstrap.")
def score(ckpt, names, images, data, split, target, perturbation, dtype, draws, opts, out_dir,
          device, batch_size, seed) -> None:
    """Score map plugins on CKPT: faithfulness, the randomisation test and localisation.

    Deletion and insertion curves (patch tokens removed in 10% steps, most relevant first,
    beside a random order and image-only baselines), the cascading model-randomisation test
    (Spearman ρ with the trained map as the head, then each block, then the embedding is
    randomised; over --draws weight draws), class sensitivity (ρ with the maps of the
    runner-up and a random other class) and, on data with object masks, mass in mask and the
    pointing game beside a uniform map, a centred Gaussian, brightness and edges. Every figure
    has a 95% interval (BCa bootstrap over images; Wilson for proportions; draws and images
    for the randomisation). Writes OUT/score/ (score.json, score.txt, PNG and HTML figures) and a Score
    section in OUT/index.html.
    """
    import time

    from vitscope._internal.devices import resolve_device
    from vitscope.capture import check_data, parse_target, run_name
    from vitscope.model.checkpoint import load_checkpoint
    from vitscope.errors import PluginError
    from vitscope._internal.folders import discard_new, make_output_dir
    from vitscope._internal.locks import hold
    from vitscope._internal.signals import terminate_as_exception
    from vitscope.analyze.staging import LOCK
    from vitscope.errors import Interrupted
    from vitscope.render.interactive import PLOTLY_JS
    from vitscope.analyze.registry import discover
    from vitscope.analyze.options import parse_opts
    from vitscope.score import outputs as R
    from vitscope.score.run import check_map_plugins, score_checkpoint

    # Everything that can be wrong with the request fails here, before anything is written.
    ck = load_checkpoint(ckpt)
    check_data(ck, data)   # the data is read again for the randomisation: it must be here
    classes = int(getattr(ck.model_config, "num_classes", 0) or len(ck.classes or ()))
    target = parse_target(target, classes)
    registry = discover()
    entries = registry.select(names)
    check_map_plugins(entries)
    values = parse_opts(opts, entries, registry)
    dev = resolve_device(device)
    model = ck.build_model()
    from vitscope.analyze.run import missing_hooks
    from vitscope.model.hooks import is_hooked, offered_names
    if not is_hooked(model):
        raise PluginError(f"'{ckpt}' holds a {ck.arch} model without hook points; score needs a "
                          f"ViT checkpoint.")
    from vitscope.capture.model_maps import model_map_names
    gone = missing_hooks(offered_names(model) + model_map_names(), entries)
    if gone:
        what = "; ".join(f"{n} needs {', '.join(p)}" for n, p in gone.items())
        raise PluginError(f"The model of '{ckpt}' lacks hook points the plugins read ({what}).")
    from vitscope.score.faithfulness import check_perturbation
    check_perturbation(model, perturbation)
    run = Path(out_dir) if out_dir else Path("outputs") / run_name(ckpt)
    created = make_output_dir(run, PluginError, "choose another output folder with -o")

    t0 = time.perf_counter()
    try:
        # One score (or analyze) at a time in a run folder, from the start: a second one is
        # told at once instead of mixing its files with this one's.
        with terminate_as_exception(), hold(run / LOCK, run, PluginError,
                                            hint="wait for it to finish, or choose another "
                                                 "output folder with -o"):
            report = score_checkpoint(ckpt, entries, values, images=images, data=data,
                                      split=split, target=target, perturbation=perturbation,
                                      batch_size=batch_size, device=dev, seed=seed,
                                      dtype=dtype, draws=draws, echo=click.echo)
            index, files = publish(run, report)
    except BaseException as e:
        discard_new(created, (PLOTLY_JS,))   # written into a new run folder for score.html
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted("nothing was written." if created else
                              f"nothing was written and '{run / 'score'}' is as it was.") \
                from None
        raise
    click.echo("")
    click.echo(R.tables(report))
    click.echo("")
    click.echo(f"Scored {len(entries)} map plugin{'s' if len(entries) > 1 else ''} on "
               f"{report['images']} images in {time.perf_counter() - t0:.1f} s; wrote "
               f"{run / 'score'} ({', '.join(f.name for f in files)}). Open {index}")


def publish(run: Path, report: dict) -> tuple[Path, list[Path]]:
    """Write OUT/score/ and the Score section of OUT/index.html like analyze writes a plugin:
    rendered into a staging folder, swapped in by one journalled commit with manifest.json
    and index.html (vitscope.analyze.staging), so a failure or a kill at any moment leaves
    the earlier score whole, never a mix of two."""
    from vitscope._internal.files import guard
    from vitscope.analyze.staging import MARKER, Staging
    from vitscope.render.index_page import write_index
    from vitscope.score import outputs as R

    old = run / "score"
    if old.is_dir() and not old.is_symlink() and (old / "score.json").is_file() \
            and not (old / MARKER).exists():
        (old / MARKER).touch()     # a score folder written before scores were staged
    with Staging(run, pages=write_index) as stage:
        folder = stage.folder("score")
        with guard(old, hint=f"the score in '{run}' is as it was; free some space or choose "
                             f"another output folder with -o"):
            written = R.write(report, folder)
            files = [old / f.relative_to(folder) for f in written]
            stage.commit(["score"], manifest=R.score_manifest(run, report, files))
    return run / "index.html", files
