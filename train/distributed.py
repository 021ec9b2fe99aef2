"""Process group and device set-up for single-process and DDP (torchrun) training.

`torchrun --nproc_per_node N -m vitscope train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; we
then use NCCL on CUDA (one GPU per local rank) and gloo on the CPU. Without those variables
everything runs in one process and the collectives below are no-ops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from vitscope.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """This rank's device (vitscope._internal.devices: auto = cuda, then mps, then cpu; each
    local rank its own GPU)."""
    from vitscope._internal.devices import resolve_device
    return resolve_device(pref, local_rank)


def setup(device_pref: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = pick_device(device_pref, info.local_rank)
    if info.enabled and not dist.is_initialized():
        if device.type == "mps":
            raise ConfigError("DDP over torchrun supports cuda (nccl) and cpu (gloo), not mps; "
                              "use --device cpu or run a single process.")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=info.rank, world_size=info.world_size,
                                device_id=device if device.type == "cuda" else None)
    return info, device


def cleanup(sync: bool = True) -> None:
    """Leave the process group. With `sync` (a rank that finished normally) the ranks first
    meet at a barrier, so none destroys the group while another's collectives are still in
    flight: a gloo worker thread left holding such work aborts its process at exit
    ("terminate called without an active exception", seen once in a 2-rank CPU resume under
    load). After a failure the other ranks may be gone, so no barrier then."""
    if not dist.is_initialized():
        return
    if sync:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=120))  # raises, never hangs
            else:
                dist.barrier()
        except Exception:   # a rank that is gone: leave anyway, the launcher reports it
            pass
    dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_to_main(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (on every rank; the list is used on rank 0)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(n: int, info: DistInfo) -> slice:
    """This rank's share of n items: every world_size-th item from its rank (class-balanced
    even for folder data sorted by class)."""
    return slice(info.rank, n, info.world_size)
