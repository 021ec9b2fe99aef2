"""`vitscope eval` and `vitscope predict`: score a checkpoint on a dataset, classify images.

Both feed the model exactly as training did: the checkpoint's image size and normalisation
(`vitscope.data.normalization`), the folder resize policy for loose files, `to_model_input`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from vitscope.commands.common import threads_option

from vitscope._internal.devices import DEVICES as DEVICE_CHOICES  # noqa: E402


def _image_size(model, ckpt):
    """How files become the model's input: an imported model's recorded Preprocess (its
    family's resize and crop), else the side the model takes its images at: its own input
    size, whatever the train_config says (files of any size are resized to it, as the folder
    data in training were)."""
    from vitscope.data import preprocessing
    tc = ckpt.train_config if isinstance(ckpt.train_config, dict) else {}
    if isinstance(tc.get("preprocess"), dict):
        return preprocessing(ckpt)
    shape = getattr(model, "input_shape", None)
    return int(shape[-1]) if shape else int(ckpt.model_config.image_size)


def _refuse_feature_model(ckpt, what: str) -> None:
    """An imported model without a classifier head (e.g. DINOv2) outputs features, not
    classes: there is nothing to score or predict."""
    from vitscope.errors import DataError
    if getattr(ckpt.model_config, "num_classes", 1) == 0:
        raise DataError(f"'{ckpt.path}' is a feature model with no classifier head, so it has no "
                        f"classes to {what}; look inside it with `vitscope analyze` or "
                        f"`vitscope dump` instead.")


def _classes(ckpt, num_outputs: int | None = None) -> list[str]:
    if ckpt.classes:
        return list(ckpt.classes)
    return [f"class {i}" for i in range(num_outputs or getattr(ckpt.model_config, "num_classes", 0))]


def default_out_dir(ckpt_path: str | Path) -> Path:
    """outputs/<run>/eval, beside what `vitscope analyze` writes for the same checkpoint (and
    never inside the run folder, which holds only what training wrote)."""
    from vitscope.capture import run_name
    return Path("outputs") / run_name(ckpt_path) / "eval"


def eval_dataset(model, ck, spec: str | None, split: str, *, data_dir: str | None = None,
                 val_split: float | None = None, image_size=None, whole_folder: bool | None = None,
                 seed: int | None = None):
    """The images `vitscope eval` scores: `(dataset, spec, subset)`.

    Without `spec`, the checkpoint's own data, carved and subset exactly as training did
    (`subset` is then the number of images of the runner's seeded subset, else None), and an
    error that says where the spec came from when it cannot be loaded here. `image_size`
    (default: the model's, `_image_size`), `whole_folder` (default: whether the checkpoint
    was imported) and `seed` (of a --val-split carve-out; default the checkpoint's) let
    `vitscope compare` load the same images for several models."""
    from vitscope.data import is_imported, load_dataset, training_data_gone
    from vitscope.errors import DataError

    tc = ck.train_config
    own_data = spec is None
    if own_data:
        spec = tc.get("data")
        if not spec:
            raise DataError(f"'{ck.path}' does not record the dataset it was trained on; pass "
                            f"--data SPEC (e.g. --data cifar10 or --data folder:PATH).")
        if val_split is None:  # the checkpoint's own validation images, carved the same way
            val_split = tc.get("val_split")
    seed = int(tc.get("seed", 0)) if seed is None or own_data else seed
    try:
        dataset = load_dataset(spec, split, image_size or _image_size(model, ck),
                               data_dir=data_dir or tc.get("data_dir", "./data"),
                               val_split=val_split, seed=seed,
                               whole_folder=is_imported(ck) if whole_folder is None else whole_folder)
    except DataError as e:
        if not own_data:
            raise
        raise training_data_gone(ck.path, spec, e) from None
    subset = None
    if own_data and val_split == tc.get("val_split"):
        # exactly the images training scored (or trained on): the runner's seeded subset
        from vitscope.train.runner import seeded_subset
        kept = seeded_subset(dataset, tc.get(f"{split}_subset"), seed)
        subset, dataset = (len(kept) if len(kept) < len(dataset) else None), kept
    return dataset, spec, subset


@click.command("eval")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--data", "spec", default=None, metavar="SPEC",
              help="shapes | cifar10 | cifar100 | folder:PATH (default: the checkpoint's training data).")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True,
              help="Which split to score.")
@click.option("--data-dir", default=None, help="Where CIFAR files are (default: as in training, ./data).")
@click.option("--val-split", type=float, default=None,
              help="Score a fraction carved from train (default: as in training when --data is not given).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option("--tta/--no-tta", default=None,
              help="Average the logits of each image and its mirror image (default: as the "
                   "checkpoint's training evaluated, so its recorded val_acc is reproduced).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N images.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for metrics and the confusion matrix (default: outputs/<run>/eval: "
                   "runs/shapes/best.pt -> outputs/shapes/eval, models/vit3.pt -> "
                   "outputs/vit3/eval).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@threads_option
def eval_cmd(ckpt: str, spec: str | None, split: str, data_dir: str | None, val_split: float | None,
             batch_size: int, device: str, tta: bool, limit: int | None, out_dir: str | None,
             as_json: bool) -> None:
    """Accuracy, loss, per-class accuracy and a confusion-matrix PNG of a checkpoint."""
    from vitscope.model.checkpoint import load_model
    from vitscope.data import normalization
    from vitscope.errors import ConfigError
    from vitscope._internal.devices import resolve_device
    from vitscope.evaluate.classify import evaluate, plot_confusion
    from vitscope._internal.folders import output_folder
    from vitscope._internal.files import replacing

    model, ck = load_model(ckpt)
    _refuse_feature_model(ck, "score")
    tc = ck.train_config
    if tta is None:
        tta = bool(tc.get("eval_flip_tta", False))
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir else default_out_dir(ck.path)
    # Checked before the evaluation, removed again if it fails before writing anything.
    with output_folder(out, ConfigError, "choose a writable folder with -o"):
        dataset, spec, subset = eval_dataset(model, ck, spec, split, data_dir=data_dir,
                                             val_split=val_split)
        mean, std = normalization(ck)
        result = evaluate(model, dataset, mean, std, classes=ck.classes or None,
                          batch_size=batch_size, device=dev, tta=tta, limit=limit)
        result.update(checkpoint=str(ck.path), data=spec, split=split, device=str(dev))
        if subset is not None:
            result[f"{split}_subset"] = subset

        png, metrics = out / f"confusion_{split}.png", out / f"metrics_{split}.json"
        # Both or neither: a full disk leaves the results of an earlier eval as they were.
        with replacing(png, metrics, hint=f"nothing in '{out}' changed; free some space or choose "
                                          f"another folder with -o") as (png_tmp, metrics_tmp):
            plot_confusion(result, png_tmp,
                           title=f"{Path(ckpt).name} on {spec} ({split}): accuracy "
                                 f"{result['accuracy']:.2%}" + (" with flip TTA" if tta else ""))
            metrics_tmp.write_text(json.dumps(result, indent=2) + "\n")
    result["files"] = [str(metrics), str(png)]
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    as_trained = f", {split}_subset as in training" if f"{split}_subset" in result else ""
    click.echo(f"{spec} ({split}, {result['n']} images{as_trained}{', flip TTA' if tta else ''}): accuracy "
               f"{result['accuracy']:.2%}  loss {result['loss']:.4f}")
    width = max(len(c) for c in result["classes"])
    for name, acc in result["per_class_accuracy"].items():
        click.echo(f"  {name:<{width}}  {'-' if acc is None else f'{acc:.2%}'}")
    click.echo(f"wrote {metrics} and {png}")


@click.command()
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list instead of text.")
@click.option("--tta", is_flag=True, help="Average the logits of each image and its mirror image.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@threads_option
def predict(ckpt: str, images: tuple[str, ...], top_k: int, as_json: bool, tta: bool, device: str,
            batch_size: int) -> None:
    """Top-k classes with probabilities for image files of any size or format.

    A file that cannot be read gets one error line on stderr; the others are still predicted,
    and the exit code is 1.
    """
    import numpy as np
    import torch

    from vitscope.model.checkpoint import load_model
    from vitscope.data import normalization
    from vitscope.data.images import decode_image, describe_error
    from vitscope._internal.devices import resolve_device
    from vitscope.evaluate.classify import predict_logits

    model, ck = load_model(ckpt)
    _refuse_feature_model(ck, "predict")
    size = _image_size(model, ck)
    decoded: list[Any] = []
    errors: dict[str, str] = {}
    for path in images:
        reason = _unreadable(Path(path))
        if reason is None:
            try:
                decoded.append((path, decode_image(path, size)))
                continue
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
                reason = describe_error(e)
        errors[path] = reason
        click.echo(f"Error: cannot predict '{path}': {reason}; skipped.", err=True)

    results: dict[str, list[dict[str, Any]]] = {}
    if decoded:
        logits = predict_logits(model, np.stack([img for _, img in decoded]), *normalization(ck),
                                batch_size=batch_size, device=resolve_device(device), tta=tta)
        classes = _classes(ck, logits.shape[1])
        probs = torch.softmax(logits, dim=1)
        k = min(top_k, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        for (path, _), p_row, i_row in zip(decoded, top_p.tolist(), top_i.tolist()):
            results[path] = [{"class": classes[i], "index": i, "probability": p}
                             for p, i in zip(p_row, i_row)]

    if as_json:
        rows = [{"path": p, "predictions": results[p]} if p in results else {"path": p, "error": errors[p]}
                for p in images]
        click.echo(json.dumps(rows, indent=2))
    else:
        for path in images:
            if path in results:
                click.echo(path)
                for row in results[path]:
                    click.echo(f"  {row['probability']:7.2%}  {row['class']}")
    if errors:
        raise SystemExit(1)


def _unreadable(path: Path) -> str | None:
    """Why `path` cannot be an image file, or None when it is worth trying to decode."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "it is a folder (pass image files, or use `vitscope eval --data folder:PATH`)"
    return None
