"""`vitscope info` and `vitscope hooks`: what a checkpoint holds."""
from __future__ import annotations

import json

import click


@click.command()
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(ckpt: str, as_json: bool) -> None:
    """Model config, parameter count, classes and stored metrics of a checkpoint."""
    from vitscope.model.checkpoint import load_model
    from vitscope.model.vit import count_parameters

    model, ck = load_model(ckpt)
    data = {
        "path": str(ck.path), "arch": ck.arch, "vitscope_version": ck.vitscope_version,
        "parameters": count_parameters(model), "model_config": (  # without data such as a tokenizer's files
            ck.model_config.dump_dict() if hasattr(ck.model_config, "dump_dict")
            else ck.model_config.to_dict()),
        "classes": ck.classes, "metrics": ck.metrics, "train_config": ck.train_config,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(f"checkpoint   {ck.path}  (vitscope {ck.vitscope_version or '?'}, arch {ck.arch})")
    click.echo(f"parameters   {data['parameters']:,}")
    click.echo("model_config")
    for k, v in data["model_config"].items():
        click.echo(f"  {k:<16}{v}")
    source = ck.train_config.get("source") if isinstance(ck.train_config, dict) else None
    if source:  # written by `vitscope import`
        weights = ck.train_config.get("weights")
        click.echo(f"imported     {source}, " + (f"weights {weights}" if weights else
                                                 "random weights (imported without --weights)"))
    shown = ck.classes if len(ck.classes) <= 20 else ck.classes[:20] + ["..."]
    names = ", ".join(shown) if ck.classes else "(none stored)"
    click.echo(f"classes      {len(ck.classes)}: {names}")
    tc = ck.train_config or {}
    if tc:
        click.echo("training")
        for line in training_lines(tc):
            click.echo(f"  {line}")
    click.echo("metrics" + ("" if ck.metrics else "      (none stored)"))
    for k, v in ck.metrics.items():
        click.echo(f"  {k:<16}{number(v)}")


def number(v) -> str:
    """A metric as people read it: 0.7824, 1e-05 (not 0.0000), 25, 496.3."""
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.3g}"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"


def training_lines(tc: dict) -> list[str]:
    """The data and recipe a checkpoint was trained with, from its train_config."""
    out = []
    if tc.get("data"):
        sizes = " / ".join(f"{tc[k]:,} {w}" for k, w in (("n_train", "train"), ("n_val", "val"))
                           if isinstance(tc.get(k), int))
        carve = f", val carved {tc['val_split']:g}" if tc.get("val_split") else ""
        out.append(f"{'data':<16}{tc['data']}" + (f"  ({sizes}{carve})" if sizes else carve))
    if tc.get("name") or tc.get("preset"):
        out.append(f"{'run, preset':<16}{tc.get('name') or '-'}, {tc.get('preset', '-')}")
    keys = [("epochs", "epochs"), ("batch_size", "batch"), ("lr", "lr"), ("min_lr", "min lr"),
            ("weight_decay", "wd"), ("warmup_epochs", "warmup"), ("augment", "augment"),
            ("label_smoothing", "smoothing"), ("ema", "ema"), ("precision", "precision"),
            ("seed", "seed"), ("cpu_threads", "CPU threads")]
    parts = [f"{label} {tc[k]:g}" if isinstance(tc[k], float) else f"{label} {tc[k]}"
             for k, label in keys if k in tc]
    if parts:
        out.append(f"{'recipe':<16}{', '.join(parts)}")
    return out


@click.command()
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--match", "pattern", default=None, help="Only hook points matching this glob.")
def hooks(ckpt: str, pattern: str | None) -> None:
    """Every hook point of a checkpoint's model with its shape (B = batch)."""
    from vitscope.model.checkpoint import load_model
    from vitscope.errors import VitscopeError
    from vitscope.model.hooks import format_shape, is_hooked, list_hook_points, resolve

    model, ck = load_model(ckpt)
    if not is_hooked(model):
        raise VitscopeError(f"'{ckpt}' holds a {ck.arch} model, which has no hook points; "
                            f"hooks exist on ViT checkpoints only.")
    points = list_hook_points(model, slices=True)
    keep = set(resolve([n for n, _ in points], pattern)) if pattern else None
    width = max(len(n) for n, _ in points)
    for name, shape in points:
        if keep is None or name in keep:
            click.echo(f"{name:<{width}}  {format_shape(shape)}")
