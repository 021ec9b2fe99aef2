"""The images the API explains, whatever the user holds, as the model's inputs.

    PIL images, file paths           resized and cropped by the model's preprocessing
    a folder                         every image in it; labels from its class sub-folders, as
                                     `--data folder:PATH` reads them (in a flat folder, and for
                                     files, from names that start with a class: cat_0001.jpg)
    a --data spec ("shapes", ...)    the first `n` images of the split, in the same seeded
                                     order `vitscope analyze` takes them (with masks)
    uint8 arrays or tensors          N×H×W×3 or N×3×H×W (or one image) at the model's size
    float arrays or tensors          pixels in [0, 1]; or, with preprocessed=True, the model's
                                     input as is (already normalised)

Every image must be RGB: a greyscale or RGBA array is refused in one sentence, as is an array
of another size (files and PIL images are resized; an array is taken as the model's input,
and resizing it silently would change what the model sees). Labels are the model's class
indices (-1 unknown): folder and dataset classes are matched to the model's by name.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitscope.data import ImageDataset
from vitscope.errors import DataError

DEFAULT_SPEC_IMAGES = 16    # images taken from a --data spec when n is not given


@dataclass
class Batch:
    """Images ready for a model."""
    pixels: np.ndarray                  # N×H×W×3 uint8 at the model's input size (what is shown)
    labels: np.ndarray                  # N int64 model class indices, -1 unknown
    spec: str                           # where they came from (a --data spec, or a description)
    split: str = "all"
    paths: list[str] | None = None      # the file of each image
    masks: np.ndarray | None = None     # N×H×W bool object masks (shapes)
    inputs: np.ndarray | None = None    # N×C×H×W float32 given preprocessed, else None

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def file_names(self) -> list[str] | None:
        return None if self.paths is None else [Path(p).name for p in self.paths]

    @property
    def description(self) -> str:
        """What the images are, short enough for a title: a files: spec becomes "20 files in
        examples/images"."""
        if not self.spec.startswith("files:") or not self.paths:
            return self.spec
        folders = sorted({str(Path(p).parent) for p in self.paths})
        where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
        return f"{len(self)} file{'s' if len(self) > 1 else ''} in {where}"

    def model_inputs(self, mean, std, start: int = 0, stop: int | None = None,
                     device=None, dtype=torch.float32) -> torch.Tensor:
        """Images start..stop as the normalised B×C×H×W tensor the model takes."""
        from vitscope.data import to_model_input
        if self.inputs is not None:
            x = torch.as_tensor(self.inputs[start:stop])
        else:
            x = to_model_input(torch.from_numpy(np.ascontiguousarray(self.pixels[start:stop])),
                               mean, std)
        return x.to(device=device, dtype=dtype)

    def dataset(self, classes: list[str]) -> ImageDataset:
        """An ImageDataset of these images (labels already the model's classes): what
        vitscope.capture takes to write a dump of them."""
        return ImageDataset(images=self.pixels, labels=self.labels, classes=list(classes),
                            masks=self.masks, spec=self.spec, split=self.split,
                            paths=self.paths, inputs=self.inputs)


def load_images(images: Any, model, *, labels: Sequence | None = None, n: int | None = None,
                split: str = "val", preprocessed: bool = False) -> Batch:
    """`images` (module docstring) as a Batch for `model` (vitscope.api.models.Model)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise DataError(f"n must be a positive number of images, got {n!r}.")
    if preprocessed and not _is_array(images):
        raise DataError("preprocessed=True is for a float tensor that is already the model's "
                        "input; files, folders and PIL images are preprocessed by vitscope.")
    if isinstance(images, (str, Path)):
        batch = _from_text(images, model, split, n)
    elif _is_array(images):
        batch = _from_array(images, model, preprocessed)
    elif _is_pil(images):
        batch = _from_items([images], model)
    elif isinstance(images, Sequence) and images:
        if all(_is_array(i) for i in images):
            batch = _from_array(_stack(images), model, preprocessed)
        else:
            batch = _from_items(list(images), model)
    else:
        raise DataError(f"vitscope cannot read images from a {type(images).__name__}; pass PIL "
                        f"images, file paths, a folder, a --data spec such as 'shapes', or a "
                        f"uint8 or float array or tensor.")
    if n is not None and len(batch) > n:
        batch = _first(batch, n)
    if len(batch) == 0:
        raise DataError(f"No images in {batch.spec}; give at least one.")
    if labels is not None:
        batch.labels = _labels(labels, len(batch), model.classes)
    return batch


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def _is_pil(x: Any) -> bool:
    from PIL import Image
    return isinstance(x, Image.Image)


def _stack(items: Sequence) -> np.ndarray | torch.Tensor:
    shapes = {tuple(i.shape) for i in items}
    if len(shapes) > 1:
        raise DataError(f"The arrays have different shapes ({', '.join(map(str, sorted(shapes)))}); "
                        f"give images of the model's size.")
    if all(isinstance(i, torch.Tensor) for i in items):
        return torch.stack(list(items))
    return np.stack([i.detach().cpu().numpy() if isinstance(i, torch.Tensor) else i
                     for i in items])


def _first(batch: Batch, n: int) -> Batch:
    cut = (lambda a: None if a is None else a[:n])
    return Batch(batch.pixels[:n], batch.labels[:n], batch.spec, batch.split,
                 cut(batch.paths), cut(batch.masks), cut(batch.inputs))


def _from_text(source: str | Path, model, split: str, n: int | None) -> Batch:
    from vitscope.data import load_dataset, parse_spec
    path = Path(source).expanduser()
    if path.is_file():
        return _from_items([path], model)
    if path.is_dir():
        ds = load_dataset(f"folder:{path.absolute()}", "all", model.preprocess)
        return _from_dataset(ds, model)
    try:
        parse_spec(str(source))
    except DataError:
        raise DataError(f"No image file, folder or dataset '{source}': give an existing file "
                        f"or folder, or a --data spec such as shapes or folder:PATH.") from None
    from vitscope.capture import CAPTURE_SEED, image_order
    ds = load_dataset(str(source), split, model.preprocess)
    order = image_order(len(ds), CAPTURE_SEED)[:n or DEFAULT_SPEC_IMAGES]
    return _from_dataset(ds.subset(order), model)


def _from_dataset(ds: ImageDataset, model) -> Batch:
    from vitscope.capture.stream import _labels_for   # by class name, as a capture maps them
    from vitscope.data.folder import label_from_file_names
    ds, _ = label_from_file_names(ds, model.classes)  # a flat folder: cat_0001.jpg is a cat
    labels, _ = _labels_for(ds, model.classes)
    return Batch(ds.images, labels, ds.spec, ds.split, ds.paths, ds.masks)


def _from_items(items: list, model) -> Batch:
    """Files and PIL images (each resized and cropped by the model's preprocessing)."""
    from PIL import Image

    from vitscope.data.images import decode_image, describe_error, prepare_image
    pixels, paths = [], []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            try:
                pixels.append(decode_image(Path(item).expanduser(), model.preprocess))
            except Exception as e:   # PIL raises OSError, SyntaxError, ValueError, ...
                raise DataError(f"Cannot read image '{item}' ({describe_error(e)}); give image "
                                f"files PIL can open.") from None
            paths.append(str(Path(item).expanduser().absolute()))
        elif isinstance(item, Image.Image):
            pixels.append(prepare_image(item, model.preprocess))
            paths.append(None)
        else:
            raise DataError(f"Image {i} is a {type(item).__name__}; a list of images holds PIL "
                            f"images or file paths (or only arrays of the model's size).")
    from vitscope.data.folder import class_of_name
    have_paths = all(p is not None for p in paths)
    spec = (_files_spec(paths) if have_paths else
            f"{len(items)} image{'s' if len(items) > 1 else ''} given in Python")
    # a file named after a class (cat_0001.jpg) is labelled, as `vitscope analyze --image`
    labels = [class_of_name(Path(p).stem, list(model.classes)) if p and model.classes else -1
              for p in paths]
    return Batch(np.stack(pixels), np.asarray(labels, np.int64), spec, "all",
                 paths if have_paths else None)


def _files_spec(paths: list[str]) -> str:
    from vitscope.data import files_spec
    return files_spec(paths)


def _from_array(array, model, preprocessed: bool) -> Batch:
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise DataError(f"Images as an array must be N×H×W×3 or N×3×H×W (or one image), got "
                        f"shape {tuple(a.shape)}.")
    h, w = model.input_size
    if a.shape[-1] != 3 and a.shape[1] in (1, 3, 4) and a.shape[-1] not in (1, 4):
        a = a.transpose(0, 2, 3, 1)                              # N×C×H×W -> N×H×W×C
    if a.shape[-1] != 3:
        raise DataError(f"The images have {a.shape[-1]} channels (shape {tuple(array.shape)}); "
                        f"vitscope takes RGB images with 3 channels (convert greyscale or RGBA "
                        f"first, e.g. PIL's image.convert('RGB')).")
    if tuple(a.shape[1:3]) != (h, w):
        raise DataError(f"The images are {a.shape[1]}×{a.shape[2]} but the model takes {h}×{w}; "
                        f"resize them, or pass PIL images or files, which are resized and "
                        f"cropped as the model's preprocessing says.")
    spec = f"{len(a)} image{'s' if len(a) > 1 else ''} given as an array"
    labels = np.full(len(a), -1, np.int64)
    if preprocessed:
        if not np.issubdtype(a.dtype, np.floating):
            raise DataError(f"preprocessed=True takes the model's float input, not {a.dtype} "
                            f"pixels; leave it out for uint8 images.")
        inputs = np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32)
        mean = np.asarray(model.mean, np.float32)
        std = np.asarray(model.std, np.float32)
        shown = np.clip(np.rint((a * std + mean) * 255), 0, 255).astype(np.uint8)
        return Batch(shown, labels, spec, inputs=inputs)
    if a.dtype == np.uint8:
        return Batch(np.ascontiguousarray(a), labels, spec)
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if not (np.isfinite(a).all() and lo >= -1e-6 and hi <= 1 + 1e-6):
            raise DataError(f"Float images hold values from {lo:.3g} to {hi:.3g}, not pixels in "
                            f"[0, 1]; pass preprocessed=True if they are already normalised "
                            f"for the model.")
        return Batch(np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8), labels, spec)
    if np.issubdtype(a.dtype, np.integer) and a.min() >= 0 and a.max() <= 255:
        return Batch(a.astype(np.uint8), labels, spec)
    raise DataError(f"Images of type {a.dtype} are not pixels; give uint8 (0–255) or float "
                    f"(0–1) images.")


def _labels(labels: Sequence, n: int, classes: list[str]) -> np.ndarray:
    """One label per image, as class indices or names."""
    values = labels.tolist() if hasattr(labels, "tolist") else list(labels)
    if len(values) != n:
        raise DataError(f"labels= gives {len(values)} labels for {n} images; give one per image.")
    out = []
    for v in values:
        if isinstance(v, str):
            if v not in classes:
                raise DataError(f"Label '{v}' is not a class of this model"
                                f"{_class_list(classes)}.")
            out.append(classes.index(v))
        else:
            out.append(int(v))
    return np.asarray(out, np.int64)


def _class_list(classes: list[str], shown: int = 12) -> str:
    if not classes:
        return " (it has no class names: pass classes=[...])"
    more = f", … ({len(classes)} in all)" if len(classes) > shown else ""
    return f" (classes: {', '.join(classes[:shown])}{more})"
