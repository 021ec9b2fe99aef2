"""`vitscope import SOURCE --weights FILE -o OUT.pt`: a timm, torchvision or Hugging Face ViT as
a vitscope checkpoint, so analyze, dump, hooks, info, predict and eval work on it unchanged.

The checkpoint is checked before it is written (vitscope.model.adapters.verify), written to a
partial file of this process, loaded back as every other command will load it, and only then
renamed into place, under a lock on OUT: two imports to one path never mix, a kill leaves at
most a partial file that the next import beside it removes, SIGTERM removes it at once."""
from __future__ import annotations

import re
from pathlib import Path

import click

SOURCES = "timm:NAME, torchvision:NAME, openclip:NAME or hf:DIR"


def parse_source(source: str) -> tuple[str, str]:
    from vitscope.errors import ConfigError
    family, _, name = source.partition(":")
    family = {"huggingface": "hf", "transformers": "hf", "tv": "torchvision",
              "open_clip": "openclip"}.get(family, family)
    if family not in ("timm", "torchvision", "hf", "openclip") or not name:
        raise ConfigError(f"Unknown model source '{source}'; use {SOURCES}, e.g. "
                          f"timm:vit_small_patch16_224 or hf:./my-vit-folder.")
    return family, name


def parse_size(text: str | None) -> tuple[int, int] | None:
    """"224" or "224x320" (height x width), each side 1 to vitscope's MAX_IMAGE_SIZE."""
    from vitscope.model.vit import MAX_IMAGE_SIZE
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d{1,9})\s*(?:[x×,]\s*(\d{1,9}))?\s*", str(text))
    if not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(2)) < 1):
        raise click.BadParameter(f"expected a size such as 224 or 224x320, got {text!r}")
    h = int(m.group(1))
    w = int(m.group(2) or h)
    if max(h, w) > MAX_IMAGE_SIZE:
        raise click.BadParameter(f"{text!r} is over vitscope's limit of {MAX_IMAGE_SIZE:,} "
                                 f"pixels a side")
    return h, w


def read_classes(path: str) -> list[str]:
    from vitscope.errors import ConfigError
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--classes '{p}' is not a file; give a text file with one class name "
                          f"per line.")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--classes '{p}' is not UTF-8 text (byte {data[e.start]:#04x} at "
                          f"position {e.start}); save it as UTF-8, one class name per "
                          f"line.") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
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
@click.option("--num-classes", type=click.IntRange(0, 1 << 20), default=None,
              help="Outputs of the classifier head (timm, hf). Default: read from --weights' "
                   "head when it differs from the model's default (a fine-tuned head).")
@click.option("--pretrained", is_flag=True,
              help="Fetch the family's pretrained weights through its own hub code into its "
                   "normal cache (timm pretrained=True; hf:ORG/NAME from the Hugging Face hub; "
                   "openclip:NAME[@TAG] or openclip:hf-hub:ORG/NAME through open_clip). "
                   "Offline (HF_HUB_OFFLINE=1) it reads that cache only.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def import_cmd(source, weights, output, classes_file, image_size, num_classes, pretrained,
               force) -> None:
    """Import a timm, torchvision or Hugging Face ViT as a vitscope checkpoint.

    SOURCE is timm:NAME (e.g. timm:vit_small_patch16_224), torchvision:NAME (e.g.
    torchvision:vit_b_16), openclip:NAME (e.g. openclip:ViT-B-32, with its text tower) or
    hf:DIR (a folder written by save_pretrained; CLIP and SigLIP folders keep their text
    tower and tokenizer), or with --pretrained hf:ORG/NAME (a hub id). The checkpoint
    records the family and model name, the family's preprocessing (input size, resize, crop,
    mean, std), the class names and the weights. Nothing is downloaded without --pretrained.
    """
    from vitscope._internal.folders import make_output_dir, remove_empty
    from vitscope._internal.locks import hold
    from vitscope._internal.signals import terminate_as_exception
    from vitscope.errors import ConfigError

    family, name = parse_source(source)
    if pretrained and weights:
        raise ConfigError("--pretrained fetches the weights and --weights gives them; pass one "
                          "of the two.")
    if (pretrained or num_classes is not None) and family == "torchvision":
        raise ConfigError(f"--pretrained and --num-classes take timm: or hf: sources; for "
                          f"{source} pass its weights file with --weights FILE.")
    out = Path(output)
    size = parse_size(image_size)
    classes = read_classes(classes_file) if classes_file else None
    if out.exists() and not force:
        raise ConfigError(f"'{out}' already exists; pass --force to overwrite it or choose "
                          f"another path with -o.")
    created = make_output_dir(out.parent, ConfigError, "choose another path with -o")
    try:
        with terminate_as_exception(), hold(out.parent / f".{out.name}.lock", out, ConfigError,
                                            hint="wait for that import to finish or choose "
                                                 "another path with -o"):
            if out.exists() and not force:
                raise ConfigError(f"'{out}' already exists; pass --force to overwrite it or "
                                  f"choose another path with -o.")
            model, imported, classes = _import(family, name, source, weights, size, classes,
                                               classes_file, out, force, num_classes,
                                               pretrained)
    except BaseException:
        remove_empty(created)
        raise
    cfg, pp = model.cfg, imported.preprocess
    used = getattr(model, "source_weights", None) or (Path(weights) if weights else None)
    layout = model.token_layout
    click.echo(f"Wrote {out}: {family} {cfg.name}, {sum(p.numel() for p in model.parameters()):,} "
               f"parameters, {layout.describe()}; input {pp.describe()}, mean "
               f"{[round(m, 3) for m in imported.mean]}, std {[round(s, 3) for s in imported.std]}; "
               f"{len(classes) or 'no'} class names" +
               ("" if cfg.num_classes else " (a feature model: no classifier head)") + ".")
    if used is None and not pretrained:
        click.secho(f"WARNING: {cfg.name} has RANDOM weights (no --weights given): every figure "
                    f"and score of this checkpoint describes an untrained model. The checkpoint "
                    f"records it (train_config.random_weights).", err=True, fg="red", bold=True)


def _adapter_family(family: str, name: str, pretrained: bool = False) -> str:
    """hf:DIR of a CLIP or SigLIP folder, or with --pretrained hf:ORG/NAME of such a hub
    repository (its config.json fetched first), goes to the image–text adapter ("hf-clip")."""
    if family != "hf":
        return family
    from vitscope.model.adapters.hub import hf_adapter
    return hf_adapter(name, pretrained)


def _import(family, name, source, weights, size, classes, classes_file, out, force,
            num_classes=None, pretrained=False):
    """Build the model, check it, write the checkpoint whole (module docstring)."""
    import contextlib
    import importlib

    from vitscope._internal.files import partial_path, publish
    from vitscope.capture import file_sha256
    from vitscope.errors import CheckpointError, ConfigError
    from vitscope.model.adapters import FAMILIES
    from vitscope.model.adapters.hf_folder import offline
    from vitscope.model.adapters.verify import verify
    from vitscope.model.checkpoint import load_checkpoint, save_checkpoint

    adapter = _adapter_family(family, name, pretrained)
    module = importlib.import_module(FAMILIES[adapter][0])
    # fine-tuned heads and the hub: the timm and transformers loaders take both, the CLIP and
    # SigLIP ones (transformers, open_clip) the hub (an image–text model has no head to fit)
    extra = ({"num_classes": num_classes, "pretrained": pretrained}
             if adapter in ("timm", "hf") else
             {"pretrained": pretrained} if adapter in ("hf-clip", "openclip") else {})
    if num_classes is not None and adapter in ("hf-clip", "openclip"):
        raise ConfigError(f"{source} is an image–text model (CLIP or SigLIP) with no classifier "
                          f"head, so --num-classes does not apply; leave it out.")
    # nothing is downloaded, whatever a folder or a library asks for, unless --pretrained asks
    with contextlib.nullcontext() if pretrained else offline():
        imported = module.import_source(name, Path(weights) if weights else None, size, **extra)
    model = imported.model
    verify(imported, f"{family}:{name}")
    used = getattr(model, "source_weights", None) or (Path(weights) if weights else None)
    cfg = model.cfg
    if classes is not None:
        if not cfg.num_classes:
            raise ConfigError(f"{cfg.name} has no classifier head (a feature model), so there "
                              f"are no outputs for --classes '{classes_file}' to name; leave "
                              f"--classes out.")
        if len(classes) != cfg.num_classes:
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
        "random_weights": used is None and not pretrained,
        "pretrained": getattr(model, "hub_id", None) or (name if pretrained else None),
        "preprocess": pp.to_dict(),
        "normalize": {"mean": imported.mean, "std": imported.std},
    }
    if pp.crop[0] == pp.crop[1]:     # train_config.image_size is one side (preprocess has both)
        train_config["image_size"] = int(pp.crop[0])
    partial = partial_path(out)
    try:
        # the adapter's own family: hf:DIR of a CLIP or SigLIP folder is "hf-clip"
        save_checkpoint(partial, model, model_config=cfg, arch=getattr(model, "family", family),
                        classes=classes,
                        train_config=train_config)
        try:     # what every other command does with the file, before it is published
            load_checkpoint(partial).build_model()
        except CheckpointError as e:
            reason = str(e).replace(f"'{partial}'", "the checkpoint")
            raise ConfigError(f"{source} cannot be imported: {reason[0].lower()}{reason[1:]}") \
                from None
        publish(partial, out, force=force, error=ConfigError,
                hint="pass --force to overwrite it or choose another path with -o")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return model, imported, classes

