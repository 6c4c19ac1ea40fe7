"""Fact-sharded TIE sweeps over several processes (``torchrun``), merged bit for bit.

Facts are independent, so a sweep of many facts splits across processes by fact: rank ``r``
of ``W`` traces the facts ``i`` with ``i % W == r`` (``trace_tie(..., shard=(r, W))``) into
the shared resumable output directory (one file per fact, see ``trace_tie(out=...)``); after
a barrier, rank 0 resumes the directory, which reads every fact back, and returns the merged
result. Each fact is traced exactly as a single process would trace it (its noise is keyed by
its id, ``ν`` is resolved on the whole fact set by every rank, and the files round-trip
exactly), so the merged tensors equal the single-process ones bit for bit on the same device
type. An interrupted run resumes where it stopped, with any number of processes.

Launch (CPU, ``gloo``; on GPUs ``nccl`` and one GPU per process, ``cuda:LOCAL_RANK``)::

    torchrun --nproc-per-node 4 -m tie_tracing.cli trace --model PATH \\
        --facts facts.jsonl --out sweep/

or from Python, inside a script started by ``torchrun``: :func:`trace_sharded`.

Limits: the output directory must be visible to every rank (one machine, or a shared file
system); ranks share no tensors, only files and barriers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from .facts import Fact


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


def trace_sharded(model, facts: Sequence[Fact], *, out, progress: bool | str = False, **kwargs):
    """Trace ``facts`` across the ranks of a ``torchrun`` launch; rank 0 returns the merge.

    Args:
        model: This rank's :class:`~tie_tracing.model.TracedModel` (on its own device).
        facts: All facts, in the same order on every rank.
        out: The shared output directory (resumable; see ``trace_tie(out=...)``).
        progress: Progress bar over this rank's facts.
        **kwargs: Settings of :func:`~tie_tracing.tie.trace_tie` (the same on every rank).

    Returns:
        On rank 0 the merged :class:`~tie_tracing.results.TIEResult` of all facts, with
        ``config["world_size"]``; ``None`` on the other ranks.

    The process group is initialised here when it is not already (``nccl`` for a CUDA model,
    else ``gloo``) and destroyed again on the way out.
    """
    import torch.distributed as dist

    from .tie import trace_tie

    facts = list(facts)
    created = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        backend = "nccl" if model.param_device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        created = True
    try:
        rank, size = world()
        if rank < len(facts):
            trace_tie(model, facts, out=out, shard=(rank, size), progress=progress, **kwargs)
        else:  # more ranks than facts: still take part in the directory's creation barrier
            with rank_zero_first():
                pass
        _barrier()
        if rank != 0:
            result = None
        else:
            result = trace_tie(model, facts, out=out, progress=False, **kwargs)
            result = dataclasses.replace(result, config=result.config | {"world_size": size})
        _barrier()
        return result
    finally:
        if created:
            dist.destroy_process_group()
