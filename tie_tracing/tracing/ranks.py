"""This process's place in a ``torchrun`` launch, and the barrier that orders the ranks.

Used by the TIE engine (rank 0 prepares a shared output directory first) and by
:mod:`.distributed` (fact-sharded sweeps). Without ``torchrun`` every function describes a
single process: rank 0 of 1, no barrier.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from torch.distributed once initialised, else
    from ``torchrun``'s ``RANK``/``WORLD_SIZE`` environment, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device() -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. creating the output directory), then the others."""
    rank, size = world()
    if size > 1 and rank != 0:
        _barrier()
    try:
        yield
    finally:
        if size > 1 and rank == 0:
            _barrier()
