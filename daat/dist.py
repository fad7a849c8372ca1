"""torch.distributed set-up shared by every stage (torchrun env vars; gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist

from daat.errors import DaatError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device: torch.device | None = None) -> DistInfo:
    """Join the process group torchrun describes; a no-op in a plain single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not torch_dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        torch_dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(
        torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


@contextmanager
def session(device_name: str) -> Iterator[tuple[torch.device, DistInfo]]:
    """``(device, DistInfo)`` for one stage: the device ``device_name`` picks (``auto``, ``cpu``
    or ``cuda``; the local rank's GPU under torchrun) and the process group torchrun describes,
    joined here if no one has joined it yet. The one clean-up rule: the group is left on exit
    only by the session that joined it, so a stage called inside another (the ``run:standard``
    run a fine-tune starts from, tests that set up the group themselves) leaves it alone."""
    device = pick_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    joined_here = not torch_dist.is_initialized()
    info = init(device)
    try:
        yield device, info
    finally:
        if joined_here:
            cleanup()


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def all_gather_objects(obj):
    """Every rank's ``obj`` in rank order (``[obj]`` when not distributed)."""
    if not torch_dist.is_initialized():
        return [obj]
    out = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def main_first(fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 only, then every rank learns how it went: rank 0 gets fn's value, the
    others None; if fn raised, every rank raises (the others a ``DaatError`` quoting it) instead
    of waiting at the next collective for a rank that has gone."""
    if not torch_dist.is_initialized():
        return fn()
    value, failure = None, None
    if torch_dist.get_rank() == 0:
        try:
            value = fn()
        except Exception as e:  # shared with the other ranks below, then re-raised
            failure = e
    message = all_gather_objects(None if failure is None else str(failure))[0]
    if failure is not None:
        raise failure
    if message is not None:
        raise DaatError(f"rank 0 failed: {message}")
    return value


def problems_everywhere(local: list[str]) -> list[str]:
    """Every rank's problem lines, in rank order (each rank checked its own share)."""
    return [line for part in all_gather_objects(list(local)) for line in part]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if torch_dist.is_initialized():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def cleanup() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


CUDA_PATHS_ON_CPU = "DAAT_CUDA_PATHS_ON_CPU"


def cuda_paths(device: torch.device | str) -> bool:
    """Whether the CUDA code paths apply on ``device``: bf16 autocast (PGD, the update, the depth
    model), fused AdamW, channels_last depth models, pinned-memory loading, E computed next to the
    depth model and several writer processes in preprocess. Always on CUDA; on CPU only when the
    environment variable ``DAAT_CUDA_PATHS_ON_CPU=1`` is set, so tests run the logic of those
    branches without a GPU (torch runs all of them on CPU). What needs the CUDA runtime itself
    (NCCL, ``set_device``, CUDA RNG state, DDP ``device_ids``) keeps testing ``device.type``."""
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and os.environ.get(CUDA_PATHS_ON_CPU) == "1")


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but CUDA is not available")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)
