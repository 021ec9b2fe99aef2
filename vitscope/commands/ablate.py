"""`vitscope ablate CKPT`: zero- and mean-ablation of every head and MLP on a data set
(vitscope.evaluate.ablation), a layer × head heatmap and the most important heads named."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from vitscope.commands.common import threads_option
from vitscope._internal.devices import DEVICES as DEVICE_CHOICES


@click.command("ablate")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--data", "spec", default=None, metavar="SPEC",
              help="shapes | cifar10 | folder:PATH (default: the checkpoint's training data).")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--data-dir", default=None, help="Where CIFAR files are (default: as in training).")
@click.option("--limit", type=click.IntRange(min=1), default=256, show_default=True,
              help="Ablate on the first N images.")
@click.option("--mode", "modes", type=click.Choice(["zero", "mean"]), multiple=True,
              default=("zero", "mean"), show_default=True, help="Ablation kind (repeatable).")
@click.option("--target", type=click.Choice(["label", "pred"]), default=None,
              help="Whose probability is measured: the label's, or the clean prediction's "
                   "(default: label where the data have labels, else pred; without labels, "
                   "accuracy is agreement with the clean prediction).")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many of the most important heads to name.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for ablation.json and the heatmaps (default: outputs/<run>/ablate).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@threads_option
def ablate_cmd(ckpt: str, spec: str | None, split: str, data_dir: str | None, limit: int,
               modes: tuple[str, ...], target: str | None, top: int, batch_size: int, device: str,
               out_dir: str | None, as_json: bool) -> None:
    """Which heads and MLPs the model needs: ablate each in turn, with bootstrap intervals."""
    from vitscope._internal.devices import resolve_device
    from vitscope._internal.folders import output_folder
    from vitscope.capture import run_name
    from vitscope.commands.evaluate import _refuse_feature_model, eval_dataset
    from vitscope.data import normalization
    from vitscope.errors import ConfigError
    from vitscope.evaluate.ablation import ablate
    from vitscope.evaluate.ablation_figures import heatmap_html, heatmap_png
    from vitscope.evaluate.classify import _map_labels
    from vitscope.model.checkpoint import load_model

    model, ck = load_model(ckpt)
    _refuse_feature_model(ck, "ablate")
    out = Path(out_dir) if out_dir else Path("outputs") / run_name(ck.path) / "ablate"
    with output_folder(out, ConfigError, "choose a writable folder with -o"):
        dataset, spec, _ = eval_dataset(model, ck, spec, split, data_dir=data_dir)
        classes = list(ck.classes or dataset.classes)
        labels = _map_labels(dataset, classes)[:limit] if dataset.labeled else None
        if labels is None and target == "label":
            raise ConfigError(f"'{spec}' has no labels; use --target pred.")
        target = target or ("label" if labels is not None else "pred")
        mean, std = normalization(ck)
        started = time.perf_counter()
        with click.progressbar(length=1, label="ablating", file=sys.stderr,
                               show_eta=True) as bar:
            def progress(done, total):
                bar.length = total
                bar.update(done - bar.pos)
            result = ablate(model, dataset.images[:limit], labels, mean, std, modes=modes,
                            target=target, batch_size=batch_size, device=resolve_device(device),
                            progress=progress)
        seconds = time.perf_counter() - started
        title = (f"{Path(ckpt).name} on {spec} ({split}, {result.n} images): ablating each head "
                 f"and MLP (* interval excludes 0)")
        data = {**result.to_dict(), "checkpoint": str(ck.path), "data": spec, "split": split,
                "seconds": round(seconds, 2),
                "top_heads": {m: [n for n, _, _ in result.top(top, m)] for m in modes}}
        (out / "ablation.json").write_text(json.dumps(data, indent=2) + "\n")
        png = heatmap_png(result, out / "ablation.png", title)
        html = heatmap_html(result, out / "ablation.html", title)
    if as_json:
        click.echo(json.dumps({**data, "files": [str(out / "ablation.json"), str(png),
                                                 str(html)]}, indent=2))
        return
    what = "accuracy" if labels is not None else "agreement with the clean prediction (no labels)"
    click.echo(f"{spec} ({split}, {result.n} images): clean {what} {result.clean_accuracy:.2%}, "
               f"mean p({target}) {result.clean_target_prob:.3f}; {len(modes)} mode(s) × "
               f"{result.depth * (result.heads + 1)} components in {seconds:.1f} s")
    for mode in modes:
        click.echo(f"most important heads ({mode}-ablation; Δ p({target}) and Δ accuracy, "
                   f"95% bootstrap intervals):")
        for name, dp, da in result.top(top, mode):
            click.echo(f"  {name:<6} Δp {dp.text()}   Δacc {da.text()}")
    click.echo(f"wrote {out / 'ablation.json'}, {png} and {html}")
