"""Targets that are no class of the model: the scalar a gradient explains on a feature model
(no class head) or an image–text model.

    --target similarity:IMAGE          cosine similarity of each image's output embedding to
                                       IMAGE's (any model: the output is its embedding)
    --target text:"a photo of a cat"   the model's own scaled cosine similarity of the image and
                                       text embeddings (CLIP, SigLIP: the logit it scores with)
    --target text-classes              zero-shot over the class names, one prompt per class
                                       ("a photo of a {name}."); each image explains its best

An Objective turns the model's output (B×D) into B×K scores; while it is `applied` a forward
hook on the model's top module hands those scores on as the model's output, so the capture,
the Python API and `vitscope score` differentiate, pick and perturb them exactly as they do a
class head's logits: one code path. The dump records the target's text (`target`), what each
of the K scores is (`target_names`, shown in captions and titles) and `outputs`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vitscope.errors import DumpError

KINDS = ("similarity", "text", "text-classes")
PROMPT = "a photo of a {}."
OPTIONS = ("--target similarity:IMAGE (any model: similarity of each image's embedding to "
           "IMAGE's), or for an image–text model (CLIP, SigLIP) --target text:\"a photo of a "
           "cat\" or --target text-classes")


def feature_model_sentence(target) -> str:
    """Why a class target cannot apply to a model without a class head, and what can."""
    return (f"This model has no class head (it outputs features), so --target {target} has no "
            f"class logit to explain; use {OPTIONS}.")


@dataclass
class Objective:
    """What a gradient explains when it is not a class logit (module docstring)."""

    kind: str                              # one of KINDS
    argument: str = ""                     # the image path or the prompt
    names: list[str] = field(default_factory=list)   # what each of the K scores is
    _reference: torch.Tensor | None = None             # 1×D: similarity's reference embedding
    _texts: torch.Tensor | None = None                 # K×E: the prompts' text embeddings

    @property
    def spec(self) -> str:
        """The target as the dump records it and every title shows it."""
        return "text-classes" if self.kind == "text-classes" else f"{self.kind}:{self.argument}"

    @property
    def outputs(self) -> str:
        """What the dump's /logits hold: zero-shot logits (predictions) or one score each."""
        return "zero-shot" if self.kind == "text-classes" else "scores"

    def __str__(self) -> str:   # how ensure_dump keys a target and Dump.covers compares it
        return self.spec

    @property
    def prepared(self) -> bool:
        return self._reference is not None or self._texts is not None

    def prepare(self, model, load_image: Callable[[str], torch.Tensor],
                classes: Sequence[str] = ()) -> None:
        """Compute what the scores compare with, on `model` as it is (no hooks): the
        reference image's embedding, or the prompts' text embeddings. `load_image(path)` is
        the 1×C×H×W model input of a file; `classes` name the prompts of text-classes."""
        if self.kind == "similarity":
            path = Path(self.argument)
            if not path.is_file():
                raise DumpError(f"--target similarity:{self.argument} names no image file here; "
                                f"give the path of the reference image, e.g. "
                                f"--target similarity:photos/cat.jpg.")
            with torch.no_grad():
                self._reference = _embedding(model(load_image(str(path)))).detach()
            self.names = [f"similarity to {path.name}"]
            return
        if not callable(getattr(model, "text_embeddings", None)):
            raise DumpError(f"--target {self.spec} needs an image–text model (CLIP or SigLIP, "
                            f"imported with its text tower), and this {type(model).__name__} "
                            f"has none; use --target similarity:IMAGE.")
        if self.kind == "text-classes":
            if not classes:
                raise DumpError("--target text-classes needs class names, and neither the "
                                "model nor the data has any; use a folder with one sub-folder "
                                "per class (classes=[...] in vitscope.explain), or "
                                "--target text:\"a photo of a cat\".")
            self.names = list(classes)
            prompts = [PROMPT.format(c) for c in classes]
        else:
            self.names = [self.argument]
            prompts = [self.argument]
        with torch.no_grad():
            self._texts = model.text_embeddings(prompts).detach()

    def scores(self, model, outputs: torch.Tensor) -> torch.Tensor:
        """B×K scores of the model's outputs (B×D embeddings)."""
        emb = _embedding(outputs)
        if self.kind == "similarity":
            ref = self._reference.to(emb.device, emb.dtype)
            return torch.nn.functional.cosine_similarity(emb, ref, dim=-1)[:, None]
        return model.text_logits(emb, self._texts.to(emb.device, emb.dtype))

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """The score each image explains: its best zero-shot class, else the one score."""
        if self.kind == "text-classes":
            return scores.detach().argmax(dim=1)
        return torch.zeros(len(scores), dtype=torch.long, device=scores.device)

    @contextlib.contextmanager
    def applied(self, model) -> Iterator[None]:
        """While inside, `model(x)` returns the B×K scores instead of its embeddings."""
        handle = model.register_forward_hook(lambda mod, args, out: self.scores(mod, out))
        model.__dict__["_vitscope_objective"] = self
        try:
            yield
        finally:
            handle.remove()
            model.__dict__.pop("_vitscope_objective", None)


def applied_objective(model) -> Objective | None:
    """The Objective applied to `model` right now (score's perturbation reads raw scores)."""
    return model.__dict__.get("_vitscope_objective")


def parse_objective(target) -> Objective | None:
    """`similarity:IMAGE`, `text:PROMPT` or `text-classes` -> an Objective; None for anything
    else (a class target); DumpError for one of these kinds without its argument."""
    if isinstance(target, Objective):
        return target
    if not isinstance(target, str):
        return None
    text = target.strip()
    kind, sep, argument = text.partition(":")
    kind = kind.strip().lower()
    if kind == "text-classes" and not argument.strip():
        return Objective("text-classes")
    if kind not in ("similarity", "text") or not sep:
        return None
    argument = argument.strip()
    if not argument:
        example = "photos/cat.jpg" if kind == "similarity" else '"a photo of a cat"'
        raise DumpError(f"--target {kind}: needs {'an image' if kind == 'similarity' else 'a prompt'}"
                        f" after the colon, e.g. --target {kind}:{example}.")
    return Objective(kind, argument)


def is_class_target(target) -> bool:
    """Whether a --target names a class of a head (pred, label, an index or an array)."""
    return parse_objective(target) is None


def _embedding(out) -> torch.Tensor:
    """B×D float of a model's output (a feature model's pooled features)."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DumpError(f"The model's output is {shape}, not one embedding per image, so a "
                        f"similarity or text target cannot score it.")
    return out.float()


def reference_loader(model, ckpt, mean, std, device) -> Callable[[str], torch.Tensor]:
    """`path -> 1×C×H×W` input, decoded as the capture's data was (the checkpoint's
    preprocessing, else vitscope's own policy at the model's size) and normalised alike."""
    from vitscope.data import preprocessing, to_model_input
    from vitscope.data.images import decode_image
    from vitscope.errors import DataError

    size = preprocessing(ckpt) if ckpt is not None else int(model.input_shape[1])

    def load(path: str) -> torch.Tensor:
        try:
            pixels = decode_image(path, size)
        except DataError:
            raise
        except Exception as e:   # PIL's many errors: one sentence naming the file
            raise DumpError(f"--target similarity:{path} is not an image vitscope can read "
                            f"({type(e).__name__}: {str(e)[:120]}).") from None
        u8 = torch.from_numpy(np.ascontiguousarray(pixels))[None].to(device)
        return to_model_input(u8, mean, std)
    return load
