"""Fact-sharded TIE sweeps over several processes (``torchrun``), merged bit for bit.

Facts are independent, so a sweep of many facts splits across processes by fact: rank ``r``
of ``W`` traces the facts ``i`` with ``i % W == r`` (``trace_tie(..., shard=(r, W))``, or
``trace_positional``) into
the shared resumable output directory (one file per fact, see ``trace_tie(out=...)``); after
a barrier, rank 0 resumes the directory, which reads every fact back, and returns the merged
result. Each fact is traced exactly as a single process would trace it (its noise is keyed by
its id, ``ν`` is resolved on the whole fact set by every rank, and the files round-trip
exactly), so the merged tensors equal the single-process ones bit for bit on the same device
type. An interrupted run resumes where it stopped, with any number of processes.

Launch (CPU, ``gloo``; on GPUs ``nccl`` and one GPU per process, ``cuda:LOCAL_RANK``)::

    torchrun --nproc-per-node 4 -m tie_tracing.cli trace --model PATH \\
        --facts facts.jsonl --out sweep/

or from Python, inside a script started by ``torchrun``: :func:`trace_sharded` (TIE, or
positional tracing with ``trace=trace_positional``).

Limits: the output directory must be visible to every rank (one machine, or a shared file
system); ranks share no tensors, only files and barriers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from ..core.defaults import PROGRESS
from ..core.facts import Fact
from .ranks import _barrier, rank_zero_first, world


def trace_sharded(
    model,
    facts: Sequence[Fact],
    config=None,
    *,
    out,
    trace=None,
    progress: bool | str = PROGRESS,
    **overrides,
):
    """Trace ``facts`` across the ranks of a ``torchrun`` launch; rank 0 returns the merge.

    Args:
        model: This rank's :class:`~tie_tracing.core.model.TracedModel` (on its own device).
        facts: All facts, in the same order on every rank.
        config: The trace's config (the same on every rank).
        out: The shared output directory (resumable; see ``trace_tie(out=...)``).
        trace: The trace function (default :func:`~tie_tracing.tracing.tie.trace_tie`;
            :func:`~tie_tracing.tracing.positional.trace_positional` shards alike).
        progress: Progress bar over this rank's facts.
        **overrides: Settings of the trace (the same on every rank), ``overwrite`` included.

    Returns:
        On rank 0 the merged result of all facts, with ``config["world_size"]``; ``None`` on
        the other ranks.

    The process group is initialised here when it is not already (``nccl`` for a CUDA model,
    else ``gloo``) and destroyed again on the way out.
    """
    import torch.distributed as dist

    if trace is None:
        from .tie import trace_tie as trace

    facts = list(facts)
    created = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        backend = "nccl" if model.param_device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        created = True
    try:
        rank, size = world()
        if rank < len(facts):
            trace(model, facts, config, out=out, shard=(rank, size), progress=progress, **overrides)
        else:  # more ranks than facts: still take part in the directory's creation barrier
            with rank_zero_first():
                pass
        _barrier()
        if rank != 0:
            result = None
        else:
            result = trace(model, facts, config, out=out, progress=False, **overrides)
            result = dataclasses.replace(result, config=result.config | {"world_size": size})
        _barrier()
        return result
    finally:
        if created:
            dist.destroy_process_group()
