"""A saved Hugging Face model folder read as data, and checked, before transformers sees it.

    config = read_config(root)            # a dict: validated, attention choice removed
    files = weight_files(root)            # the weight files transformers would read
    processor = read_processor(root)      # preprocessor_config.json as checked data, or None
    with offline():                       # the hub unreachable while the folder loads
        ...

A folder is data written by someone else. transformers would run Python files from it
(`auto_map` in config.json, after asking on the terminal), reach the Hugging Face Hub for an
attention kernel named in it (`attn_implementation`), follow a weight index out of it, and
allocate whatever sizes it states (10^7 layers: a hang; a hidden size of 10^9: 4 GB per
matrix). So nothing here executes or downloads anything: JSON is read with vitscope's capped
parser (size, nesting, strict UTF-8), a folder asking for its own code or naming a model type
vitscope does not adapt is refused, the attention implementation is vitscope's choice (sdpa,
eager where hooked), and sizes are checked against the bounds vitscope's own ViT has
(vitscope.model.vit) before a single tensor exists. Every refusal is one ConfigError sentence.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitscope._internal.bounded import loads_json
from vitscope.errors import ConfigError
from vitscope.model.vit import MAX_IMAGE_SIZE, MAX_PARAMETERS, MAX_PATCHES, check_size

MODEL_TYPES = ("vit", "deit", "dinov2", "dinov2_with_registers")
MAX_CONFIG_BYTES = 8 << 20        # id2label of 21k classes is about 1 MB
# Keys that choose transformers' attention function: a kernel repository on the Hub, flash
# attention... vitscope picks the attention itself (module docstring).
ATTENTION_KEYS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal",
                  "_attn_implementation_autoset")
# Keys that make transformers import code from the folder or the Hub.
CODE_KEYS = ("auto_map", "custom_pipelines")
MAX_LAYERS = 1024                 # ViT-22B has 48; 10^7 would take hours before failing
MAX_WIDTH = 1 << 16               # hidden size; ViT-22B: 6,144
MAX_LABELS = 1 << 20
PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def read_json(path: Path, root: Path, what: str) -> Any:
    """The JSON in `path`, a file of the folder `root`: ConfigError for a link leading out of
    it, a file over MAX_CONFIG_BYTES, text that is not UTF-8, nested too deep or not JSON."""
    inside(path, root, what)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"Cannot read {what} '{path}' ({e.strerror or type(e).__name__}).") \
            from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} '{path}' is larger than {MAX_CONFIG_BYTES >> 20} MB, far more "
                          f"than a model's settings take; it is not a saved model's file.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} '{path}' is not UTF-8 text (byte {data[e.start]:#04x} at "
                          f"position {e.start}); it is damaged or not a saved model's file.") \
            from None
    try:
        return loads_json(text, f"{what} '{path}'")
    except ValueError as e:
        raise ConfigError(f"{e}; save the model again with save_pretrained(DIR).") from None


def inside(path: Path, root: Path, what: str) -> Path:
    """`path` resolved, when it is a regular file inside `root` (a link may point within the
    folder, or into a hub cache's `blobs/` beside `snapshots/`); ConfigError otherwise."""
    root = Path(root).resolve()
    target = Path(path).resolve()
    allowed = [root]
    if root.parent.name == "snapshots":          # ~/.cache/huggingface/hub/models--x/snapshots/REV
        allowed.append(root.parent.parent / "blobs")
    if not any(target.is_relative_to(a) for a in allowed):
        raise ConfigError(f"{what} '{path}' is a link to '{target}', outside the model folder "
                          f"'{root}'; vitscope reads a model folder's own files only.")
    if not target.is_file():
        raise ConfigError(f"{what} '{path}' is not a regular file.")
    return target


def read_config(root: Path) -> dict[str, Any]:
    """config.json of the folder, checked (module docstring): a dict of a model type vitscope
    adapts, without code to run, without an attention choice, with sane sizes."""
    path = Path(root) / "config.json"
    config = read_json(path, root, "config.json")
    if not isinstance(config, dict):
        raise ConfigError(f"config.json '{path}' holds a JSON {type(config).__name__}, not an "
                          f"object of model settings; save the model again with "
                          f"save_pretrained(DIR).")
    code = [k for k in CODE_KEYS if config.get(k)]
    if code:
        shown = ", ".join(sorted(map(str, config[code[0]].values())))[:120] \
            if isinstance(config[code[0]], dict) else str(config[code[0]])[:120]
        raise ConfigError(f"'{path}' asks to run Python code from the folder ({code[0]}: "
                          f"{shown}); vitscope never runs a model folder's code, so it imports "
                          f"only model types transformers ships ({', '.join(MODEL_TYPES)}).")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"'{path}' holds a model of type {model_type!r}; vitscope's Hugging "
                          f"Face adapter reads {', '.join(MODEL_TYPES)}.")
    names = config.get("architectures")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str)
                                                                   for n in names)):
        raise ConfigError(f"'{path}' has architectures {str(names)[:60]}, not a list of class "
                          f"names.")
    clean = {k: v for k, v in config.items() if k not in ATTENTION_KEYS}
    check_sizes(clean, f"'{path}'")
    return clean


def _count(config: dict[str, Any], key: str, where: str, lo: int, hi: int,
           default: Any = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where} has {key} {value!r}, not a whole number; save the model "
                          f"again with save_pretrained(DIR).")
    if not lo <= value <= hi:
        raise ConfigError(f"{where} has {key} {value:,}, outside {lo:,}–{hi:,}, so it is "
                          f"refused before anything is allocated (a typo or a damaged file).")
    return value


def _pair(config: dict[str, Any], key: str, where: str, default: int) -> tuple[int, int]:
    value = config.get(key, default)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        h = _count({key: value[0]}, key, where, 1, MAX_IMAGE_SIZE)
        return h, _count({key: value[1]}, key, where, 1, MAX_IMAGE_SIZE)
    side = _count({key: value}, key, where, 1, MAX_IMAGE_SIZE)
    return side, side


def check_sizes(config: dict[str, Any], where: str) -> None:
    """ConfigError unless the sizes a Hugging Face ViT config states are whole numbers within
    vitscope's bounds (those of its own ViT): width, depth, heads, MLP, input, patches and
    the parameter count, all from the config alone."""
    D = _count(config, "hidden_size", where, 1, MAX_WIDTH, 768)
    depth = _count(config, "num_hidden_layers", where, 1, MAX_LAYERS, 12)
    heads = _count(config, "num_attention_heads", where, 1, D, 12)
    if D % heads:
        raise ConfigError(f"{where} has hidden_size {D} and num_attention_heads {heads}; the "
                          f"width must be divisible by the number of heads.")
    mlp = config.get("intermediate_size")
    if mlp is None:
        mlp = int(D * float(config.get("mlp_ratio", 4)))
    mlp = _count({"intermediate_size": mlp}, "intermediate_size", where, 1, MAX_WIDTH * 16)
    h, w = _pair(config, "image_size", where, 224)
    ph, pw = _pair(config, "patch_size", where, 16)
    if ph > h or pw > w:
        raise ConfigError(f"{where} has patch_size {ph}×{pw}, larger than its image_size "
                          f"{h}×{w}, so an image would have no patches.")
    _count(config, "num_channels", where, 3, 3, 3)
    registers = _count(config, "num_register_tokens", where, 0, 4096, 0)
    labels = config.get("id2label")
    n_labels = len(labels) if isinstance(labels, dict) else config.get("num_labels", 2)
    n_labels = _count({"num_labels": n_labels}, "num_labels", where, 0, MAX_LABELS)
    patches = (h // ph) * (w // pw)
    check_size(f"{where}: the patch grid has", patches, MAX_PATCHES, "patches")
    tokens = patches + 2 + registers
    block = 4 * D * D + 2 * D * mlp + 9 * D + mlp
    params = depth * block + 3 * D * ph * pw + tokens * D + (D + 1) * n_labels
    check_size(f"{where}: the model would have", params, MAX_PARAMETERS, "parameters")


def weight_files(root: Path) -> list[Path]:
    """The weight files of the folder that transformers would read (checked: inside it; a
    shard index names files of the folder itself), safetensors first."""
    root = Path(root)
    files = sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin"))
    for f in files:
        inside(f, root, "The weight file")
    for index in sorted(root.glob("*.index.json")):
        data = read_json(index, root, "The weight index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise ConfigError(f"The weight index '{index}' has no weight_map object; save the "
                              f"model again with save_pretrained(DIR).")
        for name in sorted(set(map(str, weight_map.values()))):
            if Path(name).name != name or name in ("", ".", ".."):
                raise ConfigError(f"The weight index '{index}' names the shard '{name}', which "
                                  f"is not a file directly in the model folder '{root}'; "
                                  f"vitscope reads the folder's own files only.")
            if not (root / name).is_file():
                raise ConfigError(f"The weight index '{index}' names the shard '{name}', which "
                                  f"is missing from '{root}'.")
    return files


def read_processor(root: Path) -> dict[str, Any] | None:
    """preprocessor_config.json as checked data (None without one): sizes positive whole
    numbers, the crop with its height and width, `resample` one of PIL's filters (number or
    name, returned as the number), mean and std three finite numbers, std positive."""
    path = Path(root) / "preprocessor_config.json"
    if not path.exists() and not path.is_symlink():
        return None
    cfg = read_json(path, root, "preprocessor_config.json")
    where = f"'{path}'"
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} holds a JSON {type(cfg).__name__}, not an object of "
                          f"preprocessing settings.")
    out = dict(cfg)
    resample = cfg.get("resample", 2)
    if isinstance(resample, str) and resample.lower() in PIL_FILTERS:
        resample = PIL_FILTERS[resample.lower()]
    if not isinstance(resample, int) or isinstance(resample, bool) or \
            resample not in PIL_FILTERS.values():
        raise ConfigError(f"{where} has resample {resample!r}; expected one of PIL's filters "
                          f"({', '.join(f'{v} ({k})' for k, v in PIL_FILTERS.items())}).")
    out["resample"] = resample
    size = cfg.get("size")
    if size is not None:
        out["size"] = _size_dict(size, "size", where)
    if cfg.get("do_center_crop"):
        crop = _size_dict(cfg.get("crop_size"), "crop_size", where)
        if not {"height", "width"} <= set(crop):
            raise ConfigError(f"{where} crops (do_center_crop) but its crop_size "
                              f"{cfg.get('crop_size')!r} lacks a height and a width.")
        out["crop_size"] = crop
    for key, positive in (("image_mean", False), ("image_std", True)):
        if key in cfg:
            v = cfg[key]
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = [v] * 3
            if not (isinstance(v, list) and len(v) == 3 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    for x in v)):
                raise ConfigError(f"{where} has {key} {str(cfg[key])[:60]}; expected three "
                                  f"finite numbers (one per RGB channel).")
            if positive and min(v) <= 0:
                raise ConfigError(f"{where} has {key} {v}; a standard deviation must be "
                                  f"positive, or every normalised input is infinite or NaN.")
            out[key] = [float(x) for x in v]
    return out


def _size_dict(value: Any, key: str, where: str) -> dict[str, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"height": value, "width": value}
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where} has {key} {str(value)[:60]}; expected sizes such as "
                          f'{{"height": 224, "width": 224}} or {{"shortest_edge": 256}}.')
    known = {k: v for k, v in value.items() if k in ("height", "width", "shortest_edge")}
    if not ({"height", "width"} <= set(known) or "shortest_edge" in known):
        raise ConfigError(f"{where} has {key} {str(value)[:60]}; expected a height and a "
                          f"width, or a shortest_edge.")
    for k, v in known.items():
        _count({f"{key}.{k}": v}, f"{key}.{k}", where, 1, MAX_IMAGE_SIZE)
    return known


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """The Hugging Face libraries in offline mode for the block (environment and, where
    already imported, huggingface_hub's constant), restored afterwards."""
    saved = {k: os.environ.get(k) for k in HUB_OFFLINE}
    os.environ.update(HUB_OFFLINE)
    constants = None
    try:
        import huggingface_hub.constants as constants   # transformers' dependency
        before = getattr(constants, "HF_HUB_OFFLINE", None)
        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = before
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
