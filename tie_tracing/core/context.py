"""The context of a forward: which denoising step it is and where its answer span begins.

Interventions that act differently by step or by position (the edit memory's step set and
its token gate) need to know, for the forward now running, its denoising step and the first
position of its answer span. That state travels in one frozen value, :class:`ForwardContext`,
entered through one door, ``with model.at(ctx):`` (:meth:`~tie_tracing.core.model.TracedModel.at`),
and read as ``model.context``. Both fields are required, so no code path can set one and
forget the other: the diffusion loop, every batched forward of the sweeps and the likelihoods
each build a whole context. A forward outside any ``at`` block runs in :data:`STANDALONE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class ForwardContext:
    """What a running forward is: its denoising step and where its answer span begins.

    Every forward the package runs is entered through
    :meth:`~tie_tracing.core.model.TracedModel.at` with one of
    these, and interventions that depend on it (the edit memory's step set and token gate)
    read ``model.context``. Both fields are required, so a code path cannot give
    one and forget the other; :data:`STANDALONE` is the context of a forward outside any
    loop (a user's ``model.logits(x)``).

    Attributes:
        step: The denoising step: an ``int`` in the diffusion loop, a ``[rows]`` tensor when
            a sweep batches rows of several steps, ``None`` for a forward outside the loop.
        answer_start: The first position of the answer span (every row shares it), or
            ``None`` when the forward does not know it.

    Example:
        >>> ctx = ForwardContext(step=3, answer_start=9)
        >>> ctx.step, ctx.answer_start
        (3, 9)
    """

    step: Any
    answer_start: int | None


#: The context of a forward outside any loop: no step, no known answer span.
STANDALONE = ForwardContext(step=None, answer_start=None)
