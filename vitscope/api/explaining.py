"""`vitscope.explain`: maps for images, from any ViT, in memory, by the plugins' own arithmetic.

    ex = vitscope.explain(model, ["cat.jpg", "dog.jpg"], methods=["grad-rollout", "gradcam"])
    ex.maps["grad-rollout"]        # N×h×w, the patch grid
    ex.score(); ex.save("outputs/cats")

The model, images and targets are checked before any forward pass (one sentence each, the
model untouched); the maps come from vitscope.api.capture (only the hook points the methods
read) and vitscope.methods (the arithmetic the plugins run on dumps).
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import numpy as np

from vitscope.api.options import convert_options
from vitscope.errors import ConfigError, DataError
from vitscope.methods import METHODS, MapMethod
from vitscope.methods import get as get_method


def explain(model: Any, images: Any, methods: str | Sequence[str] | None = None, *,
            target: Any = "pred", options: dict[str, dict[str, Any]] | None = None,
            labels: Sequence | None = None, classes: Sequence[str] | None = None,
            n: int | None = None, split: str = "val", preprocessed: bool = False,
            batch_size: int | None = None, preprocess=None, normalize=None, processor=None,
            device: str | None = None):
    """Explain `images` with each of `methods` on `model`; returns an Explanation.

    model       a vitscope ViT, a checkpoint path, or a timm / torchvision / Hugging Face ViT
                object (wrapped in place while it runs, then handed back unchanged), or a
                model name, "timm:NAME" or "hf:ORG/NAME", fetched pretrained through the
                family's hub cache (as `vitscope import --pretrained`)
    images      PIL images, file paths, a folder, a --data spec, or a uint8 / float array or
                tensor (vitscope.api.images)
    methods     map methods by plugin name (default: every one that needs no more than one
                forward and backward pass: vitscope.methods.METHODS)
    target      "pred", "label", a class index, a class name, or one of these per image;
                for any model "similarity:IMAGE" (cosine similarity of each image's embedding
                to IMAGE's), for CLIP/SigLIP "text:a photo of a cat" or "text-classes"
    options     per method, its plugin's options: {"rollout": {"discard_ratio": 0.9}}
    labels      one label per image (index or name), where the images carry none
    classes     class names, for a model that has none (or to rename them)
    n, split    how many images of a folder or --data spec, and which split of a spec
    preprocessed   the array is already the model's normalised input
    batch_size  images per forward pass (default: sized by memory, as `vitscope dump` does)
    preprocess, normalize, processor   override the model's preprocessing: a
                vitscope.data.Preprocess, (mean, std), a Hugging Face image processor
    device      where a model loaded from a checkpoint path runs (default cpu)
    """
    from vitscope.api.capture import run_maps
    from vitscope.api.images import load_images
    from vitscope.api.models import ModelSource
    from vitscope.api.results import Explanation

    chosen = choose_methods(methods)
    given = method_options(chosen, options)
    source = ModelSource(model, classes=classes, preprocess=preprocess, normalize=normalize,
                         processor=processor, device=device)
    with source.open() as m:
        settings = {k.name: k.options(given[k.name]) for k in chosen}
        for k in chosen:                    # a layer or block option outside the model: now
            k.reads(settings[k.name], m.depth)
            if k.needs_cls and m.layout.cls_index is None and not (
                    k.pooling_head and _has_pooling_head(m.hooked)):
                raise ConfigError(f"{k.name} reads the CLS token, and this model has none "
                                  f"({m.layout.describe()}); use a method that reads the patch "
                                  f"tokens, such as gradcam.")
        batch = load_images(images, m, labels=labels, n=n, split=split,
                            preprocessed=preprocessed)
        objective = _objective(target, m, batch)
        if objective is not None:    # the model's output becomes the target's scores
            with objective.applied(m.hooked):
                run = run_maps(m, batch, chosen, settings, objective, batch_size=batch_size)
        else:
            targets = resolve_targets(target, m, batch, chosen)
            run = run_maps(m, batch, chosen, settings, targets, batch_size=batch_size)
        return Explanation(source, m, batch, chosen, settings, given, run,
                           objective if objective is not None else target)


def _has_pooling_head(hooked) -> bool:
    """Whether the model exposes an attention-pooling head's query (SigLIP), which methods
    with `pooling_head` read where there is no CLS token."""
    from vitscope.model.hooks import hook_points
    from vitscope.names import POOL_WEIGHTS
    return POOL_WEIGHTS in hook_points(hooked)


def _objective(target: Any, m, batch):
    """target="similarity:IMAGE", "text:PROMPT" or "text-classes" as an Objective prepared on
    the model (vitscope.capture.objective), else None; one sentence (ConfigError) for what
    cannot be prepared: a missing image, a model without a text tower."""
    from vitscope.api.images import load_images
    from vitscope.capture.objective import parse_objective
    from vitscope.errors import DumpError
    try:
        objective = parse_objective(target) if isinstance(target, str) else None
        if objective is None:
            return None

        def load(path: str):
            one = load_images([path], m)
            return one.model_inputs(m.mean, m.std, 0, 1, m.device, m.dtype)
        classes = list(m.classes) or list(getattr(batch, "classes", None) or [])
        objective.prepare(m.hooked, load, classes)
        objective.load = load   # Explanation.score() prepares it again on randomised copies
    except DumpError as e:
        raise ConfigError(str(e).replace("--target ", "target=")) from None
    return objective


def choose_methods(methods: str | Sequence[str] | None) -> list[MapMethod]:
    """The methods by name (default: every one computed from hook points), each once."""
    if methods is None:
        return [m for m in METHODS.values() if not m.needs_model]
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise ConfigError(f"methods= is empty; name at least one of {', '.join(METHODS)}.")
    return [get_method(str(name)) for name in dict.fromkeys(names)]


def method_options(methods: list[MapMethod], options: dict | None) -> dict[str, dict[str, Any]]:
    """The options given for each method, converted and checked by its plugin's declared
    options (as `--opt` is), or by the method's own defaults where no plugin declares it."""
    options = dict(options or {})
    names = [m.name for m in methods]
    stray = [k for k in options if k not in names]
    if stray:
        raise ConfigError(f"options= names {', '.join(map(repr, stray))}, which is not among the "
                          f"methods asked for ({', '.join(names)}); add it to methods=.")
    declared = _declared_options([n for n in names if options.get(n)])
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        given = options.get(m.name) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"options['{m.name}'] must be a dict of option values, got a "
                              f"{type(given).__name__}.")
        out[m.name] = convert_options(f"Method '{m.name}'", declared.get(m.name) or {},
                                      given, also=tuple(m.defaults))
    return out


def _declared_options(names: list[str]) -> dict[str, dict]:
    """name -> {option name: Option} of the plugins of those names that load."""
    if not names:
        return {}
    from vitscope.analyze.registry import discover
    registry = discover()
    out = {}
    for name in names:
        entry = registry.first(name)
        if entry is not None and entry.load().ok:
            out[name] = entry.option_map()
    return out


def resolve_targets(target: Any, model, batch, methods: list[MapMethod]) -> np.ndarray | str:
    """"pred", or the class each image explains as an N int64 array (-1 for none)."""
    n, C, classes = len(batch), model.num_classes, model.classes
    if C == 0:
        specific = [m.name for m in methods if m.class_specific]
        if specific:
            raise ConfigError(f"This model has no class head (it outputs features), so "
                              f"{', '.join(specific)} has no class logit to explain; use "
                              f"methods=['rollout'], or give a target that is no class: "
                              f"target='similarity:IMAGE' (text targets: CLIP, SigLIP).")
        if not (isinstance(target, str) and target == "pred"):
            raise ConfigError(f"target={target!r} asks for a class, but this model has no class "
                              f"head (it outputs features); leave target out, or use "
                              f"target='similarity:IMAGE' (text targets: CLIP, SigLIP).")
        return np.full(n, -1, np.int64)
    if isinstance(target, str) and target in ("pred", "label"):
        if target == "pred":
            return "pred"
        missing = int((batch.labels < 0).sum())
        if missing:
            raise DataError(f"target='label' needs a label for every image, but {missing} of "
                            f"the {n} have none the model knows; pass labels=[...] or use "
                            f"target='pred'.")
        return batch.labels.astype(np.int64)
    if _is_sequence(target):
        values = target.tolist() if hasattr(target, "tolist") else list(target)
        if len(values) != n:
            raise ConfigError(f"target= gives {len(values)} classes for {n} images; give one "
                              f"per image (or one for all).")
        return np.asarray([_one_class(v, C, classes) for v in values], np.int64)
    return np.full(n, _one_class(target, C, classes), np.int64)


def _is_sequence(x: Any) -> bool:
    return isinstance(x, (list, tuple)) or (hasattr(x, "ndim") and getattr(x, "ndim", 0) == 1)


def _one_class(value: Any, C: int, classes: list[str]) -> int:
    if isinstance(value, str):
        if value in classes:
            return classes.index(value)
        close = difflib.get_close_matches(value, classes, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        shown = ", ".join(classes[:12]) + (f", … ({len(classes)} in all)" if len(classes) > 12
                                           else "")
        names = f"its classes: {shown}" if classes else "it has no class names (pass classes=)"
        raise ConfigError(f"target '{value}' is not a class of this model.{hint} Use 'pred', "
                          f"'label', a class index or a class name ({names}).")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"target={value!r} is not a class; use 'pred', 'label', a class "
                          f"index, a class name, or one of these per image.")
    if not 0 <= int(value) < C:
        raise ConfigError(f"target={int(value)} is not a class of this model, which has {C} "
                          f"classes (0–{C - 1}); use 'pred', 'label' or an index in that range.")
    return int(value)
