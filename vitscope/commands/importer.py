"""`vitscope import SOURCE --weights FILE -o OUT.pt`: a timm, torchvision or Hugging Face ViT as
a vitscope checkpoint, so analyze, dump, hooks, info, predict and eval work on it unchanged."""
from __future__ import annotations

import re
from pathlib import Path

import click

SOURCES = "timm:NAME, torchvision:NAME or hf:DIR"


def parse_source(source: str) -> tuple[str, str]:
    from vitscope.errors import ConfigError
    family, _, name = source.partition(":")
    family = {"huggingface": "hf", "transformers": "hf", "tv": "torchvision"}.get(family, family)
    if family not in ("timm", "torchvision", "hf") or not name:
        raise ConfigError(f"Unknown model source '{source}'; use {SOURCES}, e.g. "
                          f"timm:vit_small_patch16_224 or hf:./my-vit-folder.")
    return family, name


def parse_size(text: str | None) -> tuple[int, int] | None:
    """"224" or "224x320" (height x width)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x×,]\s*(\d+))?\s*", str(text))
    if not m or int(m.group(1)) < 1:
        raise click.BadParameter(f"expected a size such as 224 or 224x320, got {text!r}")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def read_classes(path: str) -> list[str]:
    from vitscope.errors import ConfigError
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--classes '{p}' is not a file; give a text file with one class name "
                          f"per line.")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"--classes '{p}' holds no class names (one per line).")
    return names


def imagenet_classes() -> list[str]:
    """ImageNet-1k's class names in index order, shipped with vitscope."""
    from importlib import resources
    text = resources.files("vitscope").joinpath("imagenet_classes.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line]


@click.command("import")
@click.argument("source")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="The model's weights: .safetensors, .pth or .bin (a state_dict). Without it "
                   "(and for hf: without weights in the folder) the model is RANDOM.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The vitscope checkpoint to write, e.g. vit_s.pt.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), default=None,
              help="Text file with one class name per line (default: the Hugging Face config's "
                   "labels, or ImageNet's 1,000 names for a 1,000-class model).")
@click.option("--image-size", default=None, metavar="H[xW]",
              help="Input size other than the model's default, e.g. 224x320 (timm, hf; the "
                   "position embedding is resampled when loading --weights where timm can).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def import_cmd(source, weights, output, classes_file, image_size, force) -> None:
    """Import a timm, torchvision or Hugging Face ViT as a vitscope checkpoint.

    SOURCE is timm:NAME (e.g. timm:vit_small_patch16_224), torchvision:NAME (e.g.
    torchvision:vit_b_16) or hf:DIR (a folder written by save_pretrained). The checkpoint
    records the family and model name, the family's preprocessing (input size, resize, crop,
    mean, std), the class names and the weights. Nothing is downloaded.
    """
    import importlib

    from vitscope.model.adapters import FAMILIES
    from vitscope.capture import file_sha256
    from vitscope.model.checkpoint import save_checkpoint
    from vitscope.errors import ConfigError

    family, name = parse_source(source)
    out = Path(output)
    if out.exists() and not force:
        raise ConfigError(f"'{out}' already exists; pass --force to overwrite it or choose "
                          f"another path with -o.")
    size = parse_size(image_size)
    module = importlib.import_module(FAMILIES[family][0])
    imported = module.import_source(name, Path(weights) if weights else None, size)
    model = imported.model
    used = getattr(model, "source_weights", None) or (Path(weights) if weights else None)
    cfg = model.cfg
    if classes_file:
        if not cfg.num_classes:
            raise ConfigError(f"{cfg.name} has no classifier head (a feature model), so there "
                              f"are no outputs for --classes '{classes_file}' to name; leave "
                              f"--classes out.")
        classes = read_classes(classes_file)
        if cfg.num_classes and len(classes) != cfg.num_classes:
            raise ConfigError(f"--classes '{classes_file}' names {len(classes)} classes but the "
                              f"model has {cfg.num_classes} outputs.")
    elif imported.classes:
        classes = imported.classes
    elif cfg.num_classes == 1000:
        classes = imagenet_classes()
    else:
        classes = []
    pp = imported.preprocess
    train_config = {
        "source": f"{family}:{name}",
        "weights": str(Path(used).resolve()) if used else None,
        "weights_sha256": file_sha256(used) if used else None,
        "random_weights": used is None,
        "preprocess": pp.to_dict(),
        "normalize": {"mean": imported.mean, "std": imported.std},
    }
    if pp.crop[0] == pp.crop[1]:     # train_config.image_size is one side (preprocess has both)
        train_config["image_size"] = int(pp.crop[0])
    save_checkpoint(out, model, model_config=cfg, arch=family, classes=classes,
                    train_config=train_config)
    layout = model.token_layout
    click.echo(f"Wrote {out}: {family} {cfg.name}, {sum(p.numel() for p in model.parameters()):,} "
               f"parameters, {layout.describe()}; input {pp.describe()}, mean "
               f"{[round(m, 3) for m in imported.mean]}, std {[round(s, 3) for s in imported.std]}; "
               f"{len(classes) or 'no'} class names" +
               ("" if cfg.num_classes else " (a feature model: no classifier head)") + ".")
    if used is None:
        click.secho(f"WARNING: {cfg.name} has RANDOM weights (no --weights given): every figure "
                    f"and score of this checkpoint describes an untrained model. The checkpoint "
                    f"records it (train_config.random_weights).", err=True, fg="red", bold=True)
