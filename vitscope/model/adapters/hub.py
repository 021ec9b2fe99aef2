"""Pretrained weights through each family's own hub code, into the family's normal cache.

    model = timm_pretrained("vit_small_patch16_224", {})      # timm.create_model(pretrained=True)
    folder = hf_snapshot("facebook/dinov2-small")              # the hub cache's snapshot folder

`vitscope import --pretrained` and the Python API given a model name ("timm:NAME",
"hf:ORG/NAME") come here. For a Hugging Face name the repository's config.json is fetched
alone first (`hf_adapter`), so that a CLIP or SigLIP repository goes to the image–text adapter
(vitscope.model.adapters.clip, which then fetches its tokenizer's files too) and any other to
the ViT adapter, as a folder on disk is dispatched by its config.json. Nothing is fetched by vitscope itself: timm downloads through
huggingface_hub as `timm.create_model(name, pretrained=True)` always does, and a Hugging Face
repository is fetched with `huggingface_hub.snapshot_download` (what transformers'
`from_pretrained` uses) into the same cache, then read as a folder by hf_folder with every check
a folder on disk gets (no code from it runs; `auto_map` and unknown model types refused).
Offline (`HF_HUB_OFFLINE=1`) both read the cache only. With neither network nor a cached copy
the failure is one sentence saying so and how to pass weights instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vitscope.errors import ConfigError

# Only what a ViT folder needs; never a repository's Python files.
HF_PATTERNS = ["config.json", "preprocessor_config.json", "*.safetensors",
               "*.safetensors.index.json"]


def cache_dir() -> str:
    """Where huggingface_hub keeps downloads (HF_HUB_CACHE, else HF_HOME/hub, else its
    default), for the sentence that says where nothing was found."""
    try:
        import huggingface_hub.constants as c
        return str(os.environ.get("HF_HUB_CACHE") or c.HF_HUB_CACHE)
    except ImportError:
        return os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub"


def unreachable(what: str, source: str, error: BaseException) -> ConfigError:
    """The one sentence for weights that can be neither downloaded nor found in the cache."""
    why = "the hub is switched off (HF_HUB_OFFLINE)" if _offline_env() else \
        "the hub cannot be reached"
    return ConfigError(
        f"Cannot fetch the pretrained weights of {source}: {why} and {what} is not in the hub "
        f"cache '{cache_dir()}' ({type(error).__name__}); connect to the internet once, or "
        f"download the weights yourself and pass them with --weights FILE.")


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within `timeout` seconds. Without a
    network huggingface_hub retries each file with back-off (about a minute for timm's two
    candidate files) before it looks in the cache; vitscope asks once and then reads the cache
    only."""
    import socket
    from urllib.parse import urlparse
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_mode():
    """The hub as it is when online; offline (the cache only) when switched off or when its
    host cannot be reached."""
    import contextlib

    from vitscope.model.adapters.hf_folder import offline
    return contextlib.nullcontext() if not _offline_env() and reachable() else offline()


def _is_missing(error: BaseException) -> bool:
    """Whether `error` (or its cause) is the hub saying: not downloadable, not cached."""
    names = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError",
             "ConnectTimeout", "ProxyError", "RepositoryNotFoundError", "EntryNotFoundError",
             "GatedRepoError", "HfHubHTTPError", "HTTPError", "OSError", "MaxRetryError")
    seen = 0
    while error is not None and seen < 5:
        if type(error).__name__ in names or isinstance(error, (OSError, ConnectionError)):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def timm_pretrained(name: str, kwargs: dict[str, Any]):
    """`timm.create_model(name, pretrained=True, **kwargs)`: timm's own download, cache and
    conversion (its checkpoint filter resamples position embeddings for another img_size; a
    num_classes other than the pretrained one gets a new head, as in timm)."""
    from vitscope.model.adapters.base import building, require
    timm = require("timm", "timm")
    cfg = timm.models.get_pretrained_cfg(name.split(".")[0]) if "." not in name else None
    try:
        with _hub_mode(), building("timm", name, kwargs):
            return timm.create_model(name, pretrained=True, **kwargs)
    except ConfigError:
        raise
    except Exception as e:
        if _is_missing(e):
            hub_id = getattr(cfg, "hf_hub_id", None) or name
            raise unreachable(f"'{hub_id}'", f"timm:{name}", e) from None
        raise ConfigError(f"timm could not load the pretrained weights of '{name}' "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
                          f"; pass the weights with --weights FILE instead.") from None


def _repo(repo_id: str) -> tuple[str, str | None]:
    """("org/name", revision or None) of "org/name" or "org/name@revision"; ConfigError for
    anything that is not a hub model id."""
    repo, _, revision = repo_id.partition("@")
    if repo.count("/") > 1 or not repo.strip("/") or repo.startswith((".", "/")):
        raise ConfigError(f"'{repo_id}' is neither a model folder nor a Hugging Face model id "
                          f"such as facebook/dinov2-small.")
    return repo, revision or None


def _fetching(repo_id: str, fetch):
    """`fetch()` in the hub's mode (_hub_mode), its failures as one sentence."""
    try:
        with _hub_mode():
            return fetch()
    except ConfigError:
        raise
    except Exception as e:
        if _is_missing(e) or type(e).__name__.endswith("ValidationError"):
            raise unreachable(f"'{_repo(repo_id)[0]}'", f"hf:{repo_id}", e) from None
        raise ConfigError(f"The Hugging Face hub could not provide '{repo_id}' "
                          f"({type(e).__name__}); pass a saved folder as hf:DIR or the weights "
                          f"with --weights FILE instead.") from None


def hf_snapshot(repo_id: str, extra_patterns: tuple[str, ...] = ()) -> Path:
    """The local snapshot folder of the Hugging Face repository `repo_id` ("org/name" or
    "org/name@revision"), downloaded into the hub cache when online and not there yet: the
    files a ViT folder needs (HF_PATTERNS) and `extra_patterns` (a tokenizer's files)."""
    from vitscope.model.adapters.base import require
    hub = require("huggingface_hub", "Hugging Face")
    repo, revision = _repo(repo_id)
    return _fetching(repo_id, lambda: Path(hub.snapshot_download(
        repo, revision=revision, allow_patterns=HF_PATTERNS + list(extra_patterns))))


def hf_config(repo_id: str) -> Any:
    """The repository's config.json alone, fetched into the hub cache (or read from it
    offline) and parsed as data with vitscope's capped JSON reader (hf_folder.read_json)."""
    from vitscope.model.adapters import hf_folder
    from vitscope.model.adapters.base import require
    hub = require("huggingface_hub", "Hugging Face")
    repo, revision = _repo(repo_id)
    path = Path(_fetching(repo_id, lambda: hub.hf_hub_download(repo, "config.json",
                                                                revision=revision)))
    return hf_folder.read_json(path, path.parent, "config.json")


def hf_adapter(name: str, pretrained: bool = False) -> str:
    """Which adapter reads the hf: source `name`: "hf-clip" for a CLIP or SigLIP model
    (config.json's model_type, else a class in its architectures), "hf" otherwise. A folder's
    config.json is read where it is; with `pretrained`, a hub id's is fetched first (hf_config),
    before any weights, so the adapter is chosen as for a folder."""
    from vitscope.model.adapters.clip_names import CLASSES, MODEL_TYPES
    from vitscope.model.adapters.hf_folder import read_json
    folder = Path(name)
    if (folder / "config.json").is_file():
        raw = read_json(folder / "config.json", folder, "config.json")
    elif pretrained and not folder.exists():
        raw = hf_config(name)
    else:
        return "hf"                 # the ViT adapter says what is missing
    if not isinstance(raw, dict):
        return "hf"
    names = raw.get("architectures")
    names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    clip = raw.get("model_type") in MODEL_TYPES or (
        "model_type" not in raw and any(n in CLASSES for n in names))
    return "hf-clip" if clip else "hf"
