"""Every touch of nnsight internals, in one small module.

The rest of the package uses nnsight's public surface (``NNsight``, ``@traceable``,
``trace``/``iter``/``save``, ``model.edit``). What goes beyond it — the list of default
interventions an envoy replays (``Envoy._edits``) and the ``OutOfOrderError`` that ends an
open-ended edit loop — is here, so a change of nnsight version is mended in one place
(``pyproject.toml`` pins ``nnsight>=0.8.1,<0.9``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from nnsight.intervention.interleaver import OutOfOrderError

from .backbones import hidden_of


def register_edit(model, site, apply: Callable[[Any, Any], None]) -> Any:
    """Record an nnsight edit that calls ``apply(hidden, model.context)`` at every occurrence
    of ``site`` (the :class:`~tie_tracing.core.context.ForwardContext` of the running forward).

    The open-ended ``tracer.iter[:]`` covers every forward of a run (``T`` for a diffusion
    loop); the run's end leaves it waiting for one more occurrence, which nnsight ends by
    throwing ``OutOfOrderError`` into the block — caught here, so no warning is raised.
    Returns the stored mediator (the handle :func:`remove_edit` needs).
    """
    with model.edit(inplace=True) as tracer:
        apply_edit = apply
        try:
            for _ in tracer.iter[:]:
                apply_edit(hidden_of(site.output), model.context)
        except OutOfOrderError:
            pass
    return model._edits[-1]


def register_edit_with_inputs(model, site, tokens, apply: Callable[[Any, Any, Any], None]) -> Any:
    """Like :func:`register_edit`, but ``apply(hidden, context, token_ids)`` also gets the forward's
    token ids, read as ``tokens.input`` (the token embedding's first argument) at each occurrence.

    The embedding runs before any block, so asking for its input first and the site's output
    second follows execution order, as nnsight requires. Used by edits that must know where the
    ``[MASK]`` slots are (the edit memory's subject gate and answer-slot application).
    """
    with model.edit(inplace=True) as tracer:
        apply_edit = apply
        try:
            for _ in tracer.iter[:]:
                token_ids = tokens.input
                apply_edit(hidden_of(site.output), model.context, token_ids)
        except OutOfOrderError:
            pass
    return model._edits[-1]


def output_logits(output):
    """The logits tensor of a backbone's output (``.logits``, a tuple's first element, or the
    tensor itself)."""
    if hasattr(output, "logits"):
        return output.logits
    return hidden_of(output)


def register_logits_edit(model, apply: Callable[[Any, Any, Any], None]) -> Any:
    """Record an nnsight edit that calls ``apply(logits, context, token_ids)`` on every forward's
    output logits (the backbone's own layout, ``[rows, seq, vocab]``, edited in place) with the
    forward's token ids, like :func:`register_edit_with_inputs` on the root module's output.

    Used by edits that act on what the model says rather than on a hidden state (the
    string-match reference rows of :mod:`tie_tracing.evaluation`). Returns the mediator.
    """
    with model.edit(inplace=True) as tracer:
        apply_edit = apply
        try:
            for _ in tracer.iter[:]:
                token_ids = model.embedding.input
                apply_edit(output_logits(model.output), model.context, token_ids)
        except OutOfOrderError:
            pass
    return model._edits[-1]


def has_edit(model, mediator: Any) -> bool:
    """Whether ``mediator`` is among the model's default interventions."""
    return mediator is not None and any(m is mediator for m in model._edits)


def remove_edit(model, mediator: Any) -> None:
    """Remove one default intervention (others stay)."""
    edits = model._edits
    for i, m in enumerate(edits):
        if m is mediator:
            del edits[i]
            return


@contextmanager
def suspended_edits(model) -> Iterator[None]:
    """Run with no default interventions (captures see the frozen backbone)."""
    saved = model._edits
    model._edits = []
    try:
        yield
    finally:
        model._edits = saved
