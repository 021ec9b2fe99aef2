"""Reading a foreign model's weight file without running any code from it.

`.safetensors` files are read with safetensors (a header and raw tensors: nothing to
execute); `.pth`/`.pt`/`.bin` files with `torch.load(weights_only=True)`, which refuses any
pickled object other than tensors and plain containers. Whatever is refused is one sentence.
Common wrappers are unwrapped: {"state_dict": ...}, {"model": ...}, {"module": ...},
and a DataParallel "module." prefix.
"""
from __future__ import annotations

import pickle
import struct
import warnings
from pathlib import Path

import torch

from vitscope.errors import CheckpointError

WRAPPERS = ("state_dict", "model", "module", "model_state_dict", "state_dict_ema", "model_ema")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in `path` (module docstring); CheckpointError says what is wrong."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"No weights file at '{p}': the file does not exist.")
    if p.is_dir():
        raise CheckpointError(f"'{p}' is a folder; --weights takes one file (.safetensors, .pth "
                              f"or .bin); a saved Hugging Face folder goes in the source: hf:{p}.")
    if p.stat().st_size == 0:
        raise CheckpointError(f"'{p}' is empty (0 bytes), so it holds no weights.")
    with open(p, "rb") as f:
        head = f.read(9)
    if p.suffix == ".safetensors" or _looks_safetensors(head):
        obj = _read_safetensors(p)
    elif head.startswith((b"PK", b"\x80")):
        obj = _read_torch(p)
    else:
        raise CheckpointError(f"'{p}' is neither a safetensors file nor a torch file (it starts "
                              f"with {head[:8]!r}); give --weights a .safetensors, .pth or .bin "
                              f"file of the model's state_dict.")
    return _unwrap(obj, p)


def _looks_safetensors(head: bytes) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then '{'."""
    return len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < 1 << 30


def _read_safetensors(p: Path) -> dict:
    from vitscope.model.adapters.base import require
    st = require("safetensors.torch", "Reading .safetensors weights")
    try:
        return st.load_file(str(p), device="cpu")
    except Exception as e:  # safetensors raises SafetensorError / OSError for damaged files
        raise CheckpointError(f"'{p}' is a damaged safetensors file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''}).") from None


def _read_torch(p: Path) -> object:
    from vitscope.model.checkpoint import _unsafe_reason
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"'{p}' holds pickled Python objects ({_unsafe_reason(e)}), which vitscope "
                f"refuses to load because unpickling can run arbitrary code; use a "
                f".safetensors file or a plain state_dict of tensors.") from None
        raise CheckpointError(f"'{p}' is truncated or corrupt (it cannot be read as a torch "
                              f"file).") from None
    except Exception as e:
        raise CheckpointError(f"'{p}' is truncated or corrupt (it cannot be read as a torch file: "
                              f"{type(e).__name__}).") from None


def _unwrap(obj: object, p: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and not _is_state_dict(obj):
            inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        what = type(obj).__name__ if not isinstance(obj, dict) else \
            f"a dict with keys {', '.join(map(str, list(obj)[:5]))}"
        raise CheckpointError(f"'{p}' holds {what}, not a state_dict of tensors; save the "
                              f"model's state_dict() (or a safetensors file).")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_state_dict(d: dict) -> bool:
    tensors = sum(isinstance(v, torch.Tensor) for v in d.values())
    return bool(d) and tensors >= max(1, len(d) // 2) and all(isinstance(k, str) for k in d)


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path,
              what: str) -> None:
    """`module.load_state_dict(state)` (strict), refusing a mismatch in one sentence."""
    from vitscope.model.checkpoint import _state_dict_mismatch
    reason = _state_dict_mismatch(module.state_dict(), state)
    if not reason:
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[0]
    if reason:
        raise CheckpointError(f"The weights in '{path}' do not fit {what} ({reason}); check that "
                              f"the file is this model's (and its image size and classes).")
