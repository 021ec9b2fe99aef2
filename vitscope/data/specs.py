"""Datasets: every `--data` spec becomes one in-memory `ImageDataset` of uint8 images.

Specs (see docs/data.md):

    shapes[:train=N,val=N,seed=S]   built-in procedural shapes with object masks (offline)
    shapes:distractors[,train=N,...]  a class shape beside a distractor shape (vitscope.data.distractors)
    cifar10 | cifar100              torchvision's CIFAR files in data_dir (downloaded if absent)
    folder:PATH                     an ImageFolder tree, a single class tree, or a flat folder
    files:PATH[:PATH...]            image files (what `vitscope analyze --image FILE` reads)
    imagenet-seg:PATH               Chefer et al.'s ImageNet-segmentation benchmark, from its
                                    gtsegs_ijcv.mat (images with masks, read lazily)

Everything is decoded once to an N×H×W×3 uint8 array at the requested size, so a trainer
can put the whole set on the device and augment there; `to_model_input` is the one place
where uint8 pixels become the normalised floats the model sees (training, eval, capture and
predict all use it with `normalization(ckpt)`).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitscope.data.base import ImageDataset, carve_split, concat
from vitscope.data.images import Preprocess
from vitscope.errors import ConfigError, DataError
from vitscope._internal.folders import resolve_cache_dir

SPLITS = ("train", "val", "all")   # all: every image of the data, for analysis (never training)
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
VALID_SPECS = "shapes[:train=N,val=N,seed=S], shapes:distractors, cifar10, cifar100, folder:PATH, files:PATH[:PATH...], imagenet-seg:PATH/gtsegs_ijcv.mat"


def load_dataset(spec: str, split: str = "val", image_size: int | Preprocess = 32, *,
                 data_dir="./data",
                 val_split: float | None = None, seed: int = 0, cache_dir=None,
                 download: bool = True, whole_folder: bool = False) -> ImageDataset:
    """Load one split of a `--data` spec as uint8 images of `image_size`×`image_size`, or
    as a Preprocess says (an imported model's resize and crop; `preprocessing(ckpt)`).

    `val_split` (0 < f < 1) carves "val" out of the train split with `seed` instead of using
    the dataset's own validation split; the two parts are disjoint and always the same for a
    given `seed` (which only drives this carving: shapes take their seed from the spec).
    `cache_dir` (folder data) defaults to $VITSCOPE_CACHE or ~/.cache/vitscope.
    `split="all"` is every image of the data (train and val together, no carve-out): for a
    folder meant only for analysis.
    """
    if split not in SPLITS:
        raise ConfigError(f"Unknown split '{split}'; use one of {', '.join(SPLITS)}.")
    if isinstance(image_size, Preprocess):
        pp, image_size = image_size, max(image_size.resize)
    elif not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 4:
        raise ConfigError(f"image_size must be an integer of at least 4, got {image_size!r}.")
    else:
        pp = None
    if val_split is not None and not (isinstance(val_split, (int, float)) and 0 < val_split < 1):
        raise ConfigError(f"val_split must be a fraction between 0 and 1 (e.g. 0.1), "
                          f"got {val_split!r}.")
    kind, arg = parse_spec(spec)

    if kind == "shapes":
        from vitscope.data import distractors, shapes
        source = shapes
        first, _, rest = arg.partition(",")
        if first.strip().lower() == "distractors":   # shapes:distractors[,train=N,...]
            source, arg = distractors, rest          # the same generate() signature
        # The data seed is the spec's own `seed=` (default 0), not the `seed` argument: runs
        # with different training seeds must still see the same images.
        opts = shapes.parse_options(arg, spec)
        if split == "all":
            ds = concat([source.generate(s, image_size, spec=spec, **opts)
                         for s in ("train", "val")], "all")
            return ds if pp is None else resize_dataset(ds, pp)
        if val_split is None:
            ds = source.generate(split, image_size, spec=spec, **opts)
        else:
            ds = carve_split(source.generate("train", image_size, spec=spec, **opts), split,
                             val_split, seed)
        return ds if pp is None else resize_dataset(ds, pp)

    if kind in ("cifar10", "cifar100"):
        from vitscope.data import cifar
        if split == "all":
            return resize_dataset(concat([cifar.load(kind, s, data_dir=data_dir,
                                                     download=download)
                                          for s in ("train", "val")], "all"), pp or image_size)
        if val_split is None:
            ds = cifar.load(kind, split, data_dir=data_dir, download=download)
        else:
            ds = carve_split(cifar.load(kind, "train", data_dir=data_dir, download=download),
                             split, val_split, seed)
        return resize_dataset(ds, pp or image_size)

    if kind == "imagenet-seg":   # one set of images, whichever split is asked: nothing to carve
        from vitscope.data import imagenet_seg
        return imagenet_seg.load(arg, split, pp or image_size, spec=spec)

    from vitscope.data import folder
    if kind == "files":     # every file, whichever split is asked for: nothing to carve
        return folder.load_files(split_files(arg), pp or image_size, spec=spec)
    return folder.load(arg, split, pp or image_size, spec=spec, val_split=val_split, seed=seed,
                       cache_dir=resolve_cache_dir(cache_dir), whole=whole_folder)


def missing_data(spec: str) -> DataError | None:
    """The DataError loading `spec` would end in when it names a folder or image files that
    are not on this machine, found without decoding anything (None when they are there, and
    for specs that are not paths). Commands call it before any capture or scoring starts."""
    kind, arg = parse_spec(spec)
    if kind == "folder":
        root = Path(arg).expanduser().absolute()
        if not root.exists():
            return DataError(f"The folder '{root}' of --data {spec} does not exist; check the "
                             f"path, or use --data shapes for the built-in dataset.")
    elif kind == "imagenet-seg":
        file = Path(arg).expanduser().absolute()
        if not file.is_file():
            return DataError(f"The file '{file}' of --data {spec} does not exist; download the "
                             f"benchmark's gtsegs_ijcv.mat (docs/score.md, 'ImageNet "
                             f"segmentation') and pass its path.")
    elif kind == "files":
        for f in (Path(p).expanduser().absolute() for p in split_files(arg)):
            if not f.exists():
                return DataError(f"The image file '{f}' is missing.")
    return None


def training_data_gone(ckpt_path, spec: str, error: DataError) -> DataError:
    """The error for a checkpoint's own training data that cannot be loaded here: the user
    never typed that spec, so say where it came from and how to choose other images."""
    reason = str(error).split(";")[0].rstrip(".")
    return DataError(f"'{ckpt_path}' was trained on --data {spec}, which cannot be loaded here "
                     f"({reason[:1].lower() + reason[1:]}); pass --data with images of the "
                     f"model's classes, e.g. --data folder:PATH.")


def absolute_spec(spec: str) -> str:
    """`folder:imgs` -> `folder:/abs/path/imgs`; other specs unchanged. What a checkpoint
    records, so eval, dump, analyze and --resume find the data from any working folder."""
    kind, _, arg = spec.strip().partition(":")
    if kind.lower() == "folder" and arg:
        return f"folder:{Path(arg).expanduser().absolute()}"
    if kind.lower() == "imagenet-seg" and arg:
        return f"imagenet-seg:{Path(arg).expanduser().absolute()}"
    if kind.lower() == "files" and arg:
        return files_spec(split_files(arg))
    return spec


def files_spec(paths) -> str:
    """The `files:` spec of image files (absolute, joined by os.pathsep like PATH)."""
    return "files:" + os.pathsep.join(str(Path(p).expanduser().absolute()) for p in paths)


def split_files(arg: str) -> list[str]:
    return [p for p in arg.split(os.pathsep) if p]


def parse_spec(spec: str) -> tuple[str, str]:
    """`"shapes:train=100"` -> `("shapes", "train=100")`; raise DataError for unknown specs."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"No dataset given ({spec!r}); use --data with one of: {VALID_SPECS}.")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "folder":
        if not arg:
            raise DataError("The dataset spec 'folder:' names no folder; write folder:PATH, "
                            "e.g. folder:/data/my-images.")
        return kind, arg
    if kind == "shapes":
        return kind, arg
    if kind == "files":
        if not split_files(arg):
            raise DataError("The dataset spec 'files:' names no file; write files:PATH, e.g. "
                            "files:cat.jpg (several joined by ':').")
        return kind, arg
    if kind in ("cifar10", "cifar100") and not arg:
        return kind, ""
    if kind == "imagenet-seg":
        if not arg:
            raise DataError("The dataset spec 'imagenet-seg:' names no file; write "
                            "imagenet-seg:PATH/gtsegs_ijcv.mat.")
        return kind, arg
    hint = ""
    if Path(spec).expanduser().is_dir():
        hint = f" Did you mean 'folder:{spec}'?"
    elif close := difflib.get_close_matches(kind, ["shapes", "cifar10", "cifar100", "folder",
                                                     "imagenet-seg"], 1):
        hint = f" Did you mean '{close[0]}'?"
    raise DataError(f"Unknown dataset '{spec}'.{hint} Valid: {VALID_SPECS}.")


def resize_dataset(ds: ImageDataset, image_size: int | Preprocess) -> ImageDataset:
    """Resize every image (antialiased bilinear) when the stored size differs; a Preprocess
    resizes (its interpolation, antialiased) and centre-crops as it says."""
    if isinstance(image_size, Preprocess):
        return _preprocess_dataset(ds, image_size)
    if ds.image_size == image_size and ds.images.shape[2] == image_size:
        return ds
    ds.images = resize_images(ds.images, image_size)
    if ds.masks is not None:
        ds.masks = resize_images(ds.masks[..., None].astype(np.uint8) * 255, image_size)[..., 0] >= 128
    return ds


def resize_images(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """N×H×W×C uint8 -> N×size×size×C uint8, in chunks so memory stays bounded."""
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + chunk])).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
        out[i:i + chunk] = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def _preprocess_dataset(ds: ImageDataset, pp: Preprocess) -> ImageDataset:
    """In-memory images (CIFAR, shapes) through `pp`, in chunks; masks follow (nearest)."""
    n, h, w = ds.images.shape[:3]
    rh, rw = pp.resized_size(h, w)
    (ch, cw), (top, left) = pp.crop, ((rh - pp.crop[0]) // 2, (rw - pp.crop[1]) // 2)
    mode = {"nearest": "nearest", "bilinear": "bilinear"}.get(pp.interpolation, "bicubic")

    def run(arr: np.ndarray, how: str) -> np.ndarray:
        out = np.empty((len(arr), ch, cw, arr.shape[-1]), dtype=np.uint8)
        for i in range(0, len(arr), 1024):
            x = torch.from_numpy(np.ascontiguousarray(arr[i:i + 1024])).permute(0, 3, 1, 2).float()
            if (rh, rw) != (h, w):
                x = torch.nn.functional.interpolate(
                    x, size=(rh, rw), mode=how, antialias=how != "nearest" and (rh < h or rw < w),
                    **({} if how == "nearest" else {"align_corners": False}))
            x = x[:, :, top:top + ch, left:left + cw]
            out[i:i + 1024] = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return out

    ds.images = run(ds.images, mode)
    if ds.masks is not None:
        ds.masks = run(ds.masks[..., None].astype(np.uint8), "nearest")[..., 0] > 0
    return ds


def is_imported(ckpt) -> bool:
    """Whether the checkpoint was written by `vitscope import` (a model vitscope did not train:
    a folder with one split on disk is analysed whole, since none of it was training data)."""
    tc = getattr(ckpt, "train_config", None) or {}
    return isinstance(tc, dict) and bool(tc.get("source"))


def preprocessing(ckpt) -> Preprocess:
    """How images become the model's input for this checkpoint: its recorded Preprocess
    (`train_config["preprocess"]`, written by `vitscope import`), else vitscope's own policy
    at the model's input size (its model_config, whatever the train_config says)."""
    tc = getattr(ckpt, "train_config", None) or {}
    pp = tc.get("preprocess")
    if isinstance(pp, dict):
        try:
            return Preprocess.from_dict(pp)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"'{getattr(ckpt, 'path', 'the checkpoint')}' has an invalid "
                            f"train_config['preprocess'] ({e}); re-import the model with "
                            f"`vitscope import`.") from None
    size = getattr(getattr(ckpt, "model_config", None), "image_size", None) or \
        tc.get("image_size") or (tc.get("model") or {}).get("image_size") or 32
    if isinstance(size, (list, tuple)):          # (height, width)
        return Preprocess(tuple(size), tuple(size))
    return Preprocess.square(int(size))


def dataset_stats(ds) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the pixels in [0, 1] (an ImageDataset or N×H×W×3 uint8)."""
    images = ds.images if isinstance(ds, ImageDataset) else np.asarray(ds)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise DataError(f"dataset_stats needs N×H×W×3 images with N > 0, got shape "
                        f"{tuple(images.shape)}.")
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for i in range(0, len(images), 4096):  # float64 sums over chunks: exact enough, bounded memory
        x = images[i:i + 4096].reshape(-1, 3).astype(np.float64)
        total += x.sum(0)
        total_sq += np.square(x).sum(0)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return [float(m / 255) for m in mean], [float(max(s / 255, 1e-6)) for s in std]


def normalization(ckpt) -> tuple[list[float], list[float]]:
    """The (mean, std) a checkpoint was trained with: `train_config["normalize"]`.

    Accepts a Checkpoint, a train_config dict or None; falls back to (0.5,)*3, (0.5,)*3.
    """
    train_config = getattr(ckpt, "train_config", ckpt)
    norm = train_config.get("normalize") if isinstance(train_config, dict) else None
    if norm is None:
        return list(DEFAULT_MEAN), list(DEFAULT_STD)
    try:
        return parse_normalize(norm)
    except ValueError as e:
        where = getattr(ckpt, "path", "the checkpoint")
        raise DataError(f"'{where}' has an invalid train_config['normalize'] ({e}); expected "
                        f"{{'mean': [r, g, b], 'std': [r, g, b]}} with finite numbers and a "
                        f"positive std.") from None


def parse_normalize(norm: Any) -> tuple[list[float], list[float]]:
    """{"mean": [r, g, b], "std": [r, g, b]} as two float lists. ValueError says what is wrong:
    a NaN or infinite value, or a std <= 0, would make every input NaN or infinite, and the
    model's outputs silently meaningless."""
    if not isinstance(norm, dict):
        raise ValueError(f"a {type(norm).__name__}, not a mapping")
    out = []
    for key in ("mean", "std"):
        v = norm.get(key)
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise ValueError(f"{key} is {v!r}, not three numbers")
        if not all(np.isfinite(x) for x in v):
            raise ValueError(f"{key} {list(v)} is not finite")
        out.append([float(x) for x in v])
    if any(s <= 0 for s in out[1]):
        raise ValueError(f"std {out[1]} is not positive")
    return out[0], out[1]


def to_model_input(images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """B×H×W×3 uint8 (any device) -> B×3×H×W float32 normalised, on the same device."""
    x = torch.as_tensor(images_u8)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"to_model_input expects B×H×W×3 uint8 images, got shape {tuple(x.shape)}.")
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    return x.sub_(m).div_(s).contiguous()
