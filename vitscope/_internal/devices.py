"""Which torch device a command runs on: one rule for train, capture, score, eval and the API.

"auto" takes cuda, then mps, then cpu; an explicit choice that is not available is one
sentence. Under torchrun (LOCAL_RANK set) a CUDA device without an index becomes this process's
own GPU, cuda:(LOCAL_RANK mod GPUs), so ranks never share one. torch is imported only when a
device is resolved.
"""
from __future__ import annotations

import os

from vitscope.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")   # what --device offers (plus cuda:N)


def resolve_device(name: str | None = "auto", local_rank: int | None = None):
    """The torch.device for `name` ("auto"/None, "cpu", "cuda", "cuda:N", "mps").

    `local_rank` (default: the LOCAL_RANK torchrun sets, else none) picks the GPU for a CUDA
    device given without an index."""
    import torch

    name = "auto" if name is None else str(name)
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"Unknown device '{name}'; use one of {', '.join(DEVICES)}.")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if name.startswith("cuda") and not cuda:
        raise ConfigError(f"--device {name} was asked for but this torch sees no CUDA GPU; "
                          f"use --device cpu (or auto).")
    if name.startswith("cuda:"):
        index, count = name[5:], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise ConfigError(f"--device {name} names no GPU here; this machine has {count} "
                              f"(cuda:0 to cuda:{count - 1}).")
    if name == "mps" and not mps:
        raise ConfigError("--device mps was asked for but MPS is not available here; "
                          "use --device cpu (or auto).")
    if name == "cuda":
        if local_rank is None and os.environ.get("LOCAL_RANK", "").isdigit():
            local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank is not None:
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)
