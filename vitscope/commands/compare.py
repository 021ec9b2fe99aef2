"""`vitscope compare`: two or more checkpoints (a ViT and the CNN baseline, two recipes, an
imported model) scored on exactly the same images, with paired bootstrap CIs.

Each model sees the images at its own input size and normalisation (as `vitscope eval` feeds
it); the images, their order and their labels are checked to be the same for every model
before anything is scored. The numbers come from vitscope.evaluate.compare, the figures and the
page from vitscope.evaluate.compare_page.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from vitscope.commands.common import threads_option
from vitscope.commands.evaluate import DEVICE_CHOICES

COMPARE_JSON, ACCURACY_PNG, CURVES_PNG, PAGE = ("compare.json", "compare_accuracy.png",
                                                "compare_curves.png", "compare.html")


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(dir_okay=False),
                metavar="CKPT CKPT [CKPT...]")
@click.option("--data", "spec", default=None, metavar="SPEC",
              help="shapes | cifar10 | cifar100 | folder:PATH (default: the checkpoints' own "
                   "training data, which must then be the same for all).")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--data-dir", default=None, help="Where CIFAR files are (default: as in training).")
@click.option("--val-split", type=float, default=None,
              help="Score a fraction carved from train (with --data; the first checkpoint's "
                   "seed carves it).")
@click.option("-n", "--images", "limit", type=click.IntRange(min=1), default=None,
              help="Score a seeded random sample of N images (the same for every model).")
@click.option("--tta/--no-tta", default=None,
              help="Mirror-image averaging for every model (default: each as its training "
                   "evaluated).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for compare.json, the PNGs and compare.html (default: "
                   "outputs/compare/<run>-vs-<run>).")
@click.option("--json", "as_json", is_flag=True, help="Print compare.json instead of the table.")
@threads_option
def compare(checkpoints: tuple[str, ...], spec: str | None, split: str, data_dir: str | None,
            val_split: float | None, limit: int | None, tta: bool | None, batch_size: int,
            device: str, out_dir: str | None, as_json: bool) -> None:
    """Accuracy of two or more checkpoints on the same images: the difference with a paired
    bootstrap CI, per-class accuracy, training curves overlaid (PNG, HTML, JSON).

    \b
    Examples:
      vitscope compare runs/vit-shapes/best.pt runs/cnn-shapes/best.pt
      vitscope compare runs/a/best.pt runs/b/best.pt models/c.pt --data folder:imgs -o cmp
    """
    from vitscope.evaluate.compare import compare_predictions, history_matches, read_history, table
    from vitscope.evaluate.compare_page import accuracy_figure, curves_figure, html_page
    from vitscope.errors import ConfigError
    from vitscope._internal.folders import output_folder
    from vitscope._internal.files import replacing
    from vitscope._internal.locks import hold
    from vitscope._internal.signals import terminate_as_exception
    from vitscope.analyze.staging import LOCK

    if len(checkpoints) < 2:
        raise ConfigError("vitscope compare needs at least two checkpoints (e.g. "
                          "runs/vit/best.pt runs/cnn/best.pt).")
    if val_split is not None and spec is None:
        raise ConfigError("--val-split carves images out of --data; without --data each "
                          "checkpoint's own validation images are used, so give --data too.")
    loaded = [_load(p) for p in checkpoints]
    classes = _common_classes(loaded)
    names = _names(checkpoints)
    out = Path(out_dir) if out_dir else Path("outputs") / "compare" / "-vs-".join(names)
    # One writer per folder (a second compare, analyze or score into it is told at once);
    # SIGTERM unwinds like Ctrl-C, so no temporary file stays behind.
    with terminate_as_exception(), output_folder(out, ConfigError,
                                                 "choose a writable folder with -o"), \
            hold(out / LOCK, out, ConfigError, hint="wait for it to finish or choose another "
                                                    "folder with -o"):
        labels, preds, info, used_spec = _score(loaded, names, classes, spec, split, data_dir,
                                                val_split, limit, tta, batch_size, device)
        result = compare_predictions(names, labels, preds, classes)
        for m, (model, ck) in zip(info, loaded):
            history = read_history(ck.path.parent)
            if history is not None and not history_matches(history, ck.metrics):
                click.echo(f"Warning: the metrics.jsonl beside '{ck.path}' does not hold its "
                           f"epoch {ck.metrics.get('epoch')} with val_acc "
                           f"{ck.metrics.get('val_acc')}, so it is another run's; its curves "
                           f"are left out.", err=True)
                history = None
            m["history"] = history
        result.update(data=used_spec, split=split, model_info=info, labels=labels.tolist(),
                      predictions={n: preds[n].tolist() for n in names})
        files = [out / COMPARE_JSON, out / ACCURACY_PNG, out / PAGE]
        has_curves = any(m["history"] for m in info)
        if has_curves:
            files.insert(2, out / CURVES_PNG)
        result["files"] = [str(f) for f in files]
        # All or none: a failure leaves an earlier comparison in the folder as it was.
        with replacing(*files, hint=f"nothing in '{out}' changed; free some space or choose "
                                    f"another folder with -o") as temps:
            tmp = dict(zip((f.name for f in files), temps))
            figures = {"accuracy": accuracy_figure(result, tmp[ACCURACY_PNG])}
            if has_curves:
                figures["training curves"] = curves_figure(result, tmp[CURVES_PNG])
            tmp[PAGE].write_text(html_page(result, figures), encoding="utf-8")
            tmp[COMPARE_JSON].write_text(json.dumps(result, indent=1) + "\n")
        if not has_curves:
            (out / CURVES_PNG).unlink(missing_ok=True)   # an earlier comparison's, now stale
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(table(result))
    missing = [m["name"] for m in info if not m["history"]]
    if missing:
        click.echo(f"\nno training curves for {', '.join(missing)}: no metrics.jsonl of its run "
                   f"beside the checkpoint")
    click.echo(f"\nwrote {', '.join(str(f) for f in files)}")


def _load(path: str):
    from vitscope.model.checkpoint import load_model
    from vitscope.commands.evaluate import _refuse_feature_model
    model, ck = load_model(path)
    _refuse_feature_model(ck, "compare")
    return model, ck


def _classes_of(ck) -> list[str]:
    from vitscope.commands.evaluate import _classes
    return _classes(ck)


def _common_classes(loaded) -> list[str]:
    """The first checkpoint's classes, once every other one is known to have the same set
    (in any order: predictions are matched by class name)."""
    from vitscope.errors import DataError
    first_ck = loaded[0][1]
    first = _classes_of(first_ck)
    for _, ck in loaded[1:]:
        other = _classes_of(ck)
        if sorted(other) != sorted(first):
            def show(c):
                return ", ".join(c[:6]) + (", ..." if len(c) > 6 else "")
            raise DataError(f"'{first_ck.path}' has {len(first)} classes ({show(first)}) but "
                            f"'{ck.path}' has {len(other)} ({show(other)}), so their accuracies "
                            f"are not comparable; compare checkpoints trained for the same "
                            f"classes.")
    return first


def _names(paths: tuple[str, ...]) -> list[str]:
    """Short names: the run folder (runs/vit/best.pt -> vit) or the file's stem; numbered
    where two would be the same."""
    from vitscope.capture import run_name
    names = [run_name(p) for p in paths]
    return [f"{n}#{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _score(loaded, names, classes, spec, split, data_dir, val_split, limit, tta, batch_size,
           device) -> tuple[Any, dict, list[dict], str]:
    """(labels in `classes` order, name -> predictions, per-model info, the data spec): every
    model predicts the same images, checked before any is scored."""
    import numpy as np

    from vitscope.commands.evaluate import _image_size, eval_dataset
    from vitscope.data import is_imported, normalization
    from vitscope._internal.devices import resolve_device
    from vitscope.evaluate.classify import predictions
    from vitscope.train.runner import seeded_subset

    dev = resolve_device(device)
    seed = int(loaded[0][1].train_config.get("seed", 0))
    whole = all(is_imported(ck) for _, ck in loaded)
    sets, cache = [], {}
    for model, ck in loaded:
        size = _image_size(model, ck)
        tc = ck.train_config
        key = (str(size),) + ((spec, val_split) if spec is not None else
                              (tc.get("data"), tc.get("val_split"), tc.get(f"{split}_subset"),
                               tc.get("seed", 0), tc.get("data_dir")))
        if key not in cache:
            cache[key] = eval_dataset(model, ck, spec, split, data_dir=data_dir,
                                      val_split=val_split, image_size=size,
                                      whole_folder=whole if spec is not None else None,
                                      seed=seed if spec is not None else None)
        sets.append(cache[key])
    _same_images(loaded, sets, split, given=spec is not None)
    index = {c: i for i, c in enumerate(classes)}
    labels, preds, info = None, {}, []
    for name, (model, ck), (dataset, used, _) in zip(names, loaded, sets):
        if limit is not None:
            dataset = seeded_subset(dataset, limit, 0)
        own = _classes_of(ck)
        use_tta = bool(ck.train_config.get("eval_flip_tta", False)) if tta is None else tta
        mean, std = normalization(ck)
        lab, logits = predictions(model, dataset, mean, std, classes=own, batch_size=batch_size,
                                  device=dev, tta=use_tta)
        to_common = np.asarray([index[c] for c in own], np.int64)   # the model's order -> ours
        lab, pred = to_common[lab], to_common[logits.argmax(1).numpy()]
        if labels is None:
            labels = lab
        preds[name] = pred
        info.append(_model_info(name, model, ck, use_tta, dataset))
    return labels, preds, info, sets[0][1]


def _same_images(loaded, sets, split: str, given: bool) -> None:
    """Every model's dataset holds the same images in the same order with the same labels:
    the same count, class names per image, file paths (folder data) and, where two models
    take the same input size, the same pixels."""
    from vitscope.errors import DataError
    for ds, used, _ in sets:
        if not ds.labeled:   # e.g. a folder of images without class folders
            raise DataError(f"--data {used} ({split}) has no labels (no class folders), so "
                            f"accuracy cannot be compared; give a folder with one sub-folder "
                            f"per class, or use `vitscope predict` for unlabeled images.")
    (ref, ref_spec, _), ref_ck = sets[0], loaded[0][1]
    ref_names = [ref.classes[i] for i in ref.labels]
    for (ds, used, _), (_, ck) in zip(sets[1:], loaded[1:]):
        same = (len(ds) == len(ref) and [ds.classes[i] for i in ds.labels] == ref_names
                and (ds.paths is None or ref.paths is None or ds.paths == ref.paths)
                and (ds.images.shape != ref.images.shape
                     or ds.fingerprint() == ref.fingerprint()))
        if same:
            continue
        if given:
            raise DataError(f"--data {used} gives different images for '{ref_ck.path}' and "
                            f"'{ck.path}' ({len(ref)} and {len(ds)} {split} images); compare "
                            f"them on data both read the same way.")
        raise DataError(f"'{ck.path}' was trained on --data {used} ({len(ds)} {split} images) "
                        f"and '{ref_ck.path}' on --data {ref_spec} ({len(ref)}), so their own "
                        f"{split} images differ; pass --data SPEC to score all of them on the "
                        f"same images.")


def _model_info(name: str, model, ck, tta: bool, dataset) -> dict[str, Any]:
    m = ck.metrics
    arch = ck.arch if ck.arch in ("vit", "cnn") else f"{ck.arch}"
    return {"name": name, "checkpoint": str(ck.path), "arch": ck.arch,
            "arch_text": arch, "parameters": int(sum(p.numel() for p in model.parameters())),
            "epoch": m.get("epoch") if isinstance(m.get("epoch"), int) else None,
            "recorded_val_acc": m.get("val_acc") if isinstance(m.get("val_acc"), (int, float))
            else None, "train_data": ck.train_config.get("data"), "tta": tta,
            "input_size": list(dataset.images.shape[1:3])}
