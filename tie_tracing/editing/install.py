"""Installation: an edit memory as one nnsight edit on a model, and the handle that removes it.

:func:`install` records one nnsight edit (``with model.edit(inplace=True)``, via
:mod:`tie_tracing.core._nnsight`) whose body loops over every occurrence of the memory's site, so it
is replayed on every trace and every direct call of a traceable method — ``model.denoise``
(each of its ``T`` forwards), ``model.logits``, hence ``tt.diffuse``, ``tt.answer_logprob``,
``tt.evaluate`` and ``tt.trace_tie``. A memory whose config needs the forward's token ids (a
subject gate, or answer-slot application) also reads the token embedding's input in the same
loop. Edits run before a trace's own interventions at the same site (a trace reading the
site sees the edited value; a trace patching it overrides the edit).

The memory is a value; the installed state is the handle's. :class:`EditHandle` holds the
memory the edit applies, the edit's nnsight mediator, the install time and the per-step
counters; :meth:`EditHandle.insert`, :meth:`EditHandle.without` and :meth:`EditHandle.swap`
put a new memory value into the live edit (same site), so streaming needs no reinstall.

Rules: one memory value is installed on a model at most once at a time (a second
:func:`install` of the same value while its handle is live is an error; a derived value —
``memory.with_config(...)``, ``memory.insert(...)`` — installs independently); it installs
only on the model it was built on (same fingerprint, :mod:`.fingerprint`). The edit only ever
adds to an activation — no weight changes — so :meth:`EditHandle.remove` restores unedited
outputs bit for bit; it drops exactly this edit's mediator (other edits stay). The live handles
of a model are kept in a weak table keyed by the model (:func:`live_handles`), so the model
itself carries no extra attribute.
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core._nnsight import has_edit, register_edit, register_edit_with_inputs, remove_edit
from ..core.context import ForwardContext
from ..core.fingerprint import format_model, model_fingerprint
from .config import EditMemoryError

__all__ = ["EditHandle", "check_model", "install", "live_handles"]

#: model -> its handles, in install order (pruned of removed ones on every read).
_LIVE: weakref.WeakKeyDictionary[Any, list[EditHandle]] = weakref.WeakKeyDictionary()


def live_handles(model) -> list[EditHandle]:
    """The handles of memories installed on ``model`` whose edit is still in place."""
    try:
        handles = _LIVE.get(model, [])
    except TypeError:  # an object that cannot be weakly referenced has no handles
        return []
    alive = [h for h in handles if h.installed]
    if len(alive) != len(handles):
        _LIVE[model] = alive
    return alive


@dataclass(eq=False)
class EditHandle:
    """An installed :class:`EditMemory`; ``remove()`` (or the ``with`` block's end) uninstalls it.

    The handle is the installed state: the memory value the edit applies (replaced by
    :meth:`insert`, :meth:`without` and :meth:`swap`, which act at once), the model, the
    install time and the per-step counters.

    Attributes:
        memory: The memory value the edit applies now.
        model: The model it is installed on.
        install_seconds: Seconds :func:`install` took.
        fired: How many forwards the edit modified, per denoising step of their context
            (``None`` = stand-alone forward). Counts are *forwards per step*, not rows: a
            forward whose rows sit at several steps (the TIE sweep's context holds a
            ``[rows]`` tensor of steps) counts once for each distinct step among its rows — a
            forward with rows at steps ``{0, 2}`` adds one to step 0 and one to step 2,
            however many rows each has. So ``sum(fired.values())`` equals the number of
            forwards only when every forward has a single step. A gated memory counts a
            forward as fired when it is in the step set, whether or not a gate opened.
        skipped: Forwards seen but not modified (outside the step set, or an empty memory),
            per step, counted the same way.
        gate_rows: The answer-slot gate's rows (``gate_kind="slots"``), by how their gate was
            set: ``"decided"`` (the answer span all ``[MASK]``: decided on its own slots and
            held), ``"held"`` (a decision held for its prompt), ``"unheld"`` (part of the
            answer written and no decision held: decided on its own slots).
        held: The held decisions, keyed by row length and prompt token ids (cleared by
            :meth:`swap` and :meth:`remove`).
    """

    memory: Any  # the EditMemory (memory.py imports this module, not the reverse)
    model: Any
    fired: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    install_seconds: float | None = None
    gate_rows: Counter = field(default_factory=Counter)
    held: dict = field(default_factory=dict)
    _mediator: Any = None

    @property
    def installed(self) -> bool:
        return has_edit(self.model, self._mediator)

    def __call__(
        self,
        hidden: torch.Tensor,
        context: ForwardContext,
        token_ids: torch.Tensor | None = None,
    ) -> None:
        """Apply the memory in place to one site output (called by the nnsight edit).

        ``context`` is the running forward's :class:`~tie_tracing.core.context.ForwardContext`:
        its ``step`` (an int, ``None`` for a stand-alone forward, or a ``[rows]`` tensor of
        per-row steps when a sweep batches rows of several steps) selects the step set, its
        ``answer_start`` keeps the token gate to the prompt. ``token_ids`` are the forward's
        ``[rows, seq]`` input ids (gated / answer-slot memories).
        """
        memory = self.memory
        step, answer_start = context.step, context.answer_start
        if isinstance(step, torch.Tensor):
            row_steps = [int(k) for k in step.reshape(-1).tolist()]
            firing = {k for k in row_steps if len(memory) and memory.config.fires_at(k)}
            if len(firing) == len(set(row_steps)):  # every row fires (or the step set is all)
                if firing:
                    memory.apply_(hidden, token_ids, answer_start, self.held, self.gate_rows)
            elif not firing and len(memory):
                memory.observe_(hidden, token_ids, answer_start, self.held, self.gate_rows)
            elif firing:
                rows = torch.tensor([k in firing for k in row_steps], device=hidden.device)
                quiet = ~rows
                memory.observe_(
                    hidden[quiet], None if token_ids is None else token_ids[quiet],
                    answer_start, self.held, self.gate_rows,
                )  # fmt: skip
                part = hidden[rows]
                memory.apply_(
                    part, None if token_ids is None else token_ids[rows], answer_start,
                    self.held, self.gate_rows,
                )  # fmt: skip
                hidden[rows] = part
            for k in sorted(set(row_steps)):  # once per forward and step, not per row
                (self.fired if k in firing else self.skipped)[k] += 1
            return
        if not len(memory) or not memory.config.fires_at(step):
            if len(memory):  # a slots gate still decides on the first forward of a prompt
                memory.observe_(hidden, token_ids, answer_start, self.held, self.gate_rows)
            self.skipped[step] += 1
            return
        memory.apply_(hidden, token_ids, answer_start, self.held, self.gate_rows)
        self.fired[step] += 1

    def swap(self, memory: Any) -> EditHandle:
        """Make the live edit apply ``memory`` from the next forward on; returns ``self``.

        Raises:
            EditMemoryError: the handle was removed, ``memory`` is empty, was built on another
                model, or acts at another site or needs token ids where this edit does not
                (install it separately).
        """
        if not self.installed:
            raise EditMemoryError("this handle was removed: install the memory again")
        memory._require_facts()
        check_model(memory, self.model)
        old, new = self.memory.config, memory.config
        if (old.layer, old.module, old.needs_token_ids) != (
            new.layer,
            new.module,
            new.needs_token_ids,
        ):
            raise EditMemoryError(
                f"this edit acts at ({old.layer}, {old.module!r}) "
                f"(token ids: {old.needs_token_ids}); the new memory needs ({new.layer}, "
                f"{new.module!r}) (token ids: {new.needs_token_ids}): install it separately"
            )
        memory._tensors(self.model.param_device)  # move to the device once, now
        self.memory = memory
        self.held.clear()  # held decisions belong to the memory that took them
        return self

    def insert(self, facts: Any, **kwargs: Any) -> EditHandle:
        """Capture ``facts`` on this model (the edit suspended) and swap the grown memory
        in (``memory.insert(facts, model=self.model, **kwargs)``); returns ``self``."""
        return self.swap(self.memory.insert(facts, model=self.model, **kwargs))

    def without(self, ids: str | Iterable[str] | Sequence[str]) -> EditHandle:
        """Swap in the memory without the facts ``ids``; returns ``self``."""
        return self.swap(self.memory.without(ids))

    def remove(self) -> None:
        """Take this edit out of the model (idempotent); other edits stay."""
        if self._mediator is None:
            return
        remove_edit(self.model, self._mediator)
        self._mediator = None
        self.held.clear()

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "installed" if self.installed else "removed"
        return f"EditHandle({state}, model={getattr(self.model, 'name', '?')!r}, memory={self.memory!r})"


def check_model(memory: Any, model) -> None:
    """Refuse a model other than the one ``memory`` was built on (names both).

    Raises:
        EditMemoryError: no fingerprint recorded, or fingerprints differ.
    """
    info = memory.model_info
    recorded = info.get("fingerprint")
    if not recorded:
        raise EditMemoryError(
            f"this memory records no model fingerprint (built by hand?), so it cannot tell "
            f"whether {getattr(model, 'name', 'this model')!r} is the model its keys come from; "
            "build it with EditMemory.build"
        )
    got = model_fingerprint(model)
    if got != recorded:
        other = {
            "name": getattr(model, "name", ""),
            "family": model.backbone.family,
            "hidden_size": model.hidden_size,
            "num_layers": model.num_layers,
            "fingerprint": got,
        }
        raise EditMemoryError(
            f"this memory was built on {format_model(info)} and cannot act on "
            f"{format_model(other)}: its keys and deltas are activations of the first model; "
            "rebuild it on this one"
        )


def install(memory: Any, model) -> EditHandle:
    """Install ``memory`` on ``model`` as an nnsight edit (see the module docstring).

    Raises:
        EditMemoryError: the memory is empty or already installed on ``model``, the model is not the one
            it was built on, or the config needs ``[MASK]`` slots the model lacks.
    """
    t0 = time.perf_counter()
    memory._require_facts()
    if any(h.memory is memory for h in live_handles(model)):
        raise EditMemoryError(
            f"this memory is already installed on {getattr(model, 'name', '?')!r}: remove "
            "that handle first (or install memory.with_config(...), an independent copy)"
        )
    check_model(memory, model)
    config = memory.config
    model.check_site(config.layer, config.module)
    if config.apply_at == "answer" and (model.is_causal or model.mask_token_id is None):
        raise EditMemoryError("apply_at='answer' needs a masked diffusion model ([MASK] slots)")
    memory._tensors(model.param_device)  # move to the device once, now
    handle = EditHandle(memory, model)
    site = model.site(config.layer, config.module)
    if config.needs_token_ids:
        handle._mediator = register_edit_with_inputs(model, site, model.embedding, handle)
    else:
        handle._mediator = register_edit(model, site, handle)
    _LIVE.setdefault(model, []).append(handle)
    handle.install_seconds = time.perf_counter() - t0
    return handle
