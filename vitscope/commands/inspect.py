"""`vitscope info` and `vitscope hooks`: what a checkpoint holds."""
from __future__ import annotations

import json

import click


@click.command()
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(ckpt: str, as_json: bool) -> None:
    """Model config, parameter count, classes and stored metrics of a checkpoint."""
    from vitscope.checkpoint import load_model
    from vitscope.model import count_parameters

    model, ck = load_model(ckpt)
    data = {
        "path": str(ck.path), "arch": ck.arch, "vitscope_version": ck.vitscope_version,
        "parameters": count_parameters(model), "model_config": ck.model_config.to_dict(),
        "classes": ck.classes, "metrics": ck.metrics,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(f"checkpoint   {ck.path}  (vitscope {ck.vitscope_version or '?'}, arch {ck.arch})")
    click.echo(f"parameters   {data['parameters']:,}")
    click.echo("model_config")
    for k, v in data["model_config"].items():
        click.echo(f"  {k:<16}{v}")
    names = ", ".join(ck.classes) if ck.classes else "(none stored)"
    click.echo(f"classes      {len(ck.classes)}: {names}")
    click.echo("metrics" + ("" if ck.metrics else "      (none stored)"))
    for k, v in ck.metrics.items():
        click.echo(f"  {k:<16}{v:.4f}" if isinstance(v, float) else f"  {k:<16}{v}")


@click.command()
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--match", "pattern", default=None, help="Only hook points matching this glob.")
def hooks(ckpt: str, pattern: str | None) -> None:
    """Every hook point of a checkpoint's model with its shape (B = batch)."""
    from vitscope.checkpoint import load_model
    from vitscope.errors import VitscopeError
    from vitscope.hooks import format_shape, is_hooked, list_hook_points, resolve

    model, ck = load_model(ckpt)
    if not is_hooked(model):
        raise VitscopeError(f"'{ckpt}' holds a {ck.arch} model, which has no hook points; "
                            f"hooks exist on ViT checkpoints only.")
    points = list_hook_points(model)
    keep = set(resolve([n for n, _ in points], pattern)) if pattern else None
    width = max(len(n) for n, _ in points)
    for name, shape in points:
        if keep is None or name in keep:
            click.echo(f"{name:<{width}}  {format_shape(shape)}")
