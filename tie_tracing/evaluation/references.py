"""What an unlearning table compares: methods as context managers, and the reference rows.

**The protocol.** A :class:`Method` is a name and ``enter(model)``, a context manager that
yields the model to query for the duration of a ``with`` block: the same model with an edit
installed, another model, or the model behind an intervention. Everything
:func:`~tie_tracing.evaluation.suite.evaluate_unlearning` measures for a row it measures inside
``with method.enter(model) as queried:``, so any unlearning method fits in one line::

    Method("mine", lambda model: my_memory.install(model))   # an installed edit memory
    Method.other_model("npo", npo_model)                      # a tt.unlearn result
    Method.memory("token_gate", memory)                       # the same, named by kind

The evaluation layer never imports :mod:`tie_tracing.editing`: a memory is anything whose
``install(model)`` returns a context manager (or a handle with ``remove()``).

**Reference rows** (SPEC §9; every unlearning table should carry them, and a method's claims
are stated as differences from them):

* ``no_edit`` — :meth:`Method.unedited`;
* ``retain_model`` — :meth:`Method.other_model` with the retain-only model (the gold standard);
* ``string_match_random`` — :func:`string_match_random`: when a forget subject's exact name
  string is in the prompt, the answer slots get seeded random logits;
* ``string_match_route`` — :func:`string_match_route`: … the row is answered by the
  retain-only model instead (its logits replace the row's);
* ``random_directions`` — a given edit memory with its update directions replaced by random
  ones of equal norm (built by :func:`tie_tracing.editing.random_directions`), as
  :meth:`Method.memory`.

The string matchers are the honest ten-line keyword filter: a case-sensitive whole-word search
for each subject's exact string in the decoded prompt (the token ids before the answer span,
``model.context.answer_start``; in a stand-alone forward without it, the tokens before the
first ``[MASK]``). They are nnsight edits on the output logits
(:func:`tie_tracing.core._nnsight.register_logits_edit`), so they act inside
:func:`tie_tracing.diffuse`, :func:`tie_tracing.answer_logprob` and every object-level
measurement, and a row whose prompt lacks the exact string — the name lower-cased, split by a
line break, a first name alone — is never touched (bit for bit). Matching text rather than the
subject's token ids, they also catch a sentence-initial name, which a token-id gate misses.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core._nnsight import has_edit, register_logits_edit, remove_edit
from ..core.facts import Fact

__all__ = [
    "KINDS",
    "Method",
    "StringMatch",
    "reference_methods",
    "string_match_random",
    "string_match_route",
]

#: What a method is, recorded in reports.
KINDS: tuple[str, ...] = ("no_edit", "model", "memory", "intervention", "custom")


@dataclass(frozen=True)
class Method:
    """One row of an unlearning table: ``enter(model)`` is a context manager that yields the
    model to query (see the module docstring).

    Attributes:
        name: The row's name (unique within a table).
        enter: ``enter(model) -> context manager``; what the ``with`` block yields is queried
            (``None`` means ``model`` itself, as an edit handle's ``__enter__`` may return).
        description: What the row is, in words (recorded in reports).
        kind: One of :data:`KINDS`.
    """

    name: str
    enter: Callable[[Any], Any] = field(repr=False)
    description: str = ""
    kind: str = "custom"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a method needs a non-empty name, got {self.name!r}")
        if not callable(self.enter):
            raise TypeError(
                f"method {self.name!r}: enter must be a callable enter(model) returning a "
                f"context manager, got {type(self.enter).__name__}"
            )
        if self.kind not in KINDS:
            raise ValueError(
                f"method {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}"
            )

    @contextlib.contextmanager
    def applied(self, model) -> Iterator[Any]:
        """``with method.applied(model) as queried:`` — the model to query (never ``None``)."""
        manager = self.enter(model)
        if not (hasattr(manager, "__enter__") and hasattr(manager, "__exit__")):
            if hasattr(manager, "remove"):  # an installed handle without the protocol
                manager = _Removing(manager)
            else:
                raise TypeError(
                    f"method {self.name!r}: enter(model) returned a {type(manager).__name__}, "
                    "not a context manager (give enter=lambda model: <something usable in a "
                    "with block>)"
                )
        with manager as queried:
            yield model if queried is None or _is_handle(queried) else queried

    @classmethod
    def unedited(cls, name: str = "no_edit", description: str = "the model as loaded") -> Method:
        """The model itself (``kind="no_edit"``)."""
        return cls(name, lambda model: contextlib.nullcontext(model), description, "no_edit")

    @classmethod
    def other_model(cls, name: str, other, description: str = "") -> Method:
        """Another model queried instead (the retain-only model, a ``tt.unlearn`` result)."""
        label = description or f"the model {getattr(other, 'name', type(other).__name__)!r}"
        return cls(name, lambda model: contextlib.nullcontext(other), label, "model")

    @classmethod
    def memory(cls, name: str, memory, description: str = "") -> Method:
        """An edit memory installed on the model for the duration (``memory.install(model)``
        must return a context manager or a handle with ``remove()``)."""
        if not callable(getattr(memory, "install", None)):
            raise TypeError(
                f"method {name!r}: {type(memory).__name__} has no install(model); give an edit "
                "memory, or build Method(name, enter) yourself"
            )
        return cls(name, lambda model: memory.install(model), description or repr(memory), "memory")


class _Removing:
    """A context manager around a handle that only has ``remove()``."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _is_handle(obj) -> bool:
    """An installed edit's handle (it has ``remove`` and is not a model)."""
    return hasattr(obj, "remove") and not hasattr(obj, "tokenizer")


# ------------------------------------------------------------------------- string matchers


def _row_seed(seed: int, ids: torch.Tensor) -> int:
    raw = np.ascontiguousarray(ids.detach().cpu().numpy().astype(np.int64)).tobytes()
    return (int(seed) * 1_000_003 + zlib.crc32(raw)) % (2**63 - 1)


class StringMatch:
    """The keyword-filter reference rows as one intervention on the output logits.

    Args:
        subjects: The forget subjects' exact strings (each searched as a whole word,
            case-sensitive, in the decoded prompt).
        action: ``"random"`` — the matched row's answer slots get random logits, standard
            normal, seeded by ``seed`` and the row's token ids (so a batch equals its rows run
            alone and a rerun is bit-identical); ``"route"`` — the matched row's logits are
            those of ``reference`` on the same tokens.
        reference: The model routed to (``action="route"``); it must share the tokenizer.
        seed: Seed of the random logits.

    ``install(model)`` returns a handle usable as a context manager; :meth:`matches` is the
    filter itself.
    """

    ACTIONS = ("random", "route")

    def __init__(
        self,
        subjects: Sequence[str],
        *,
        action: str = "random",
        reference=None,
        seed: int = 0,
    ) -> None:
        subjects = [subjects] if isinstance(subjects, str) else list(subjects)
        if not subjects or not all(isinstance(s, str) and s.strip() for s in subjects):
            raise ValueError(
                f"StringMatch needs the forget subjects as non-empty strings, got {subjects!r}"
            )
        if action not in self.ACTIONS:
            raise ValueError(f"action must be one of {self.ACTIONS}, got {action!r}")
        if action == "route" and reference is None:
            raise ValueError("action='route' needs reference=<the retain-only model>")
        self.subjects = tuple(dict.fromkeys(subjects))
        self.action = action
        self.reference = reference
        self.seed = int(seed)
        self._pattern = re.compile("|".join(rf"(?<!\w){re.escape(s)}(?!\w)" for s in self.subjects))
        self._cache: dict[tuple[int, ...], bool] = {}

    def __repr__(self) -> str:
        return f"StringMatch(subjects={list(self.subjects)}, action={self.action!r})"

    def matches(self, tokenizer, prompt_ids: Sequence[int]) -> bool:
        """Whether the decoded prompt contains a subject's exact string as a whole word."""
        key = tuple(int(t) for t in prompt_ids)
        hit = self._cache.get(key)
        if hit is None:
            text = tokenizer.decode(list(key), skip_special_tokens=True)
            hit = self._pattern.search(text) is not None
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def install(self, model) -> _LogitsHandle:
        """Install the filter on ``model`` (an nnsight edit on its output logits)."""
        if self.reference is not None:
            mine, theirs = model.tokenizer.get_vocab(), self.reference.tokenizer.get_vocab()
            if mine != theirs:
                raise ValueError(
                    f"string_match_route: {getattr(self.reference, 'name', 'the reference')!r} "
                    f"has another tokenizer than {model.name!r}; route only to a model of the "
                    "same vocabulary (the retain-only model of the same world)"
                )
        handle = _LogitsHandle(self, model)
        handle._mediator = register_logits_edit(model, handle)
        return handle


class _LogitsHandle:
    """An installed :class:`StringMatch`; ``remove()`` or the ``with`` block's end takes it out."""

    def __init__(self, matcher: StringMatch, model) -> None:
        self.matcher = matcher
        self.model = model
        self.fired = 0
        self._mediator: Any = None

    @property
    def installed(self) -> bool:
        return has_edit(self.model, self._mediator)

    def __call__(self, logits: torch.Tensor, context, token_ids: torch.Tensor) -> None:
        model, matcher = self.model, self.matcher
        start = context.answer_start
        mask_id = model.mask_token_id
        rows, slots = [], []
        for r in range(token_ids.shape[0]):
            ids = token_ids[r]
            if start is not None:
                prompt_end = start
                answer = torch.arange(start, ids.shape[0], device=ids.device)
            else:
                masked = (ids == mask_id).nonzero().reshape(-1)
                prompt_end = int(masked[0]) if masked.numel() else ids.shape[0]
                answer = masked
            if matcher.matches(model.tokenizer, ids[:prompt_end].tolist()):
                rows.append(r)
                slots.append(answer)
        if not rows:
            return
        self.fired += 1
        if matcher.action == "route":
            index = torch.tensor(rows, device=token_ids.device)
            with torch.inference_mode():
                routed = matcher.reference.backbone_logits(token_ids[index])
            logits[index] = routed.to(logits.device, logits.dtype)
            return
        shift = 1 if model.backbone.shifted else 0
        vocab = logits.shape[-1]
        for r, answer in zip(rows, slots):
            positions = answer - shift
            positions = positions[positions >= 0]
            generator = torch.Generator().manual_seed(_row_seed(matcher.seed, token_ids[r]))
            noise = torch.randn(int(positions.numel()), vocab, generator=generator)
            logits[r, positions] = noise.to(logits.device, logits.dtype)

    def remove(self) -> None:
        """Take the filter out (idempotent); other edits stay."""
        if self._mediator is not None:
            remove_edit(self.model, self._mediator)
            self._mediator = None

    def __enter__(self) -> _LogitsHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _subjects(forget: Sequence[Fact] | Sequence[str]) -> list[str]:
    out = []
    for f in forget:
        if isinstance(f, Fact):
            out.append(f.subject)
        elif isinstance(f, str):
            out.append(f)
        else:
            raise TypeError(f"give forget facts or subject strings, got a {type(f).__name__}")
    return list(dict.fromkeys(out))


def string_match_random(
    forget: Sequence[Fact] | Sequence[str], *, seed: int = 0, name: str = "string_match_random"
) -> Method:
    """Reference row: if a forget subject's exact string is in the prompt, the answer slots
    get seeded random logits (:class:`StringMatch`, ``action="random"``)."""
    matcher = StringMatch(_subjects(forget), action="random", seed=seed)
    return Method(
        name,
        matcher.install,
        f"keyword filter on {list(matcher.subjects)}: random answer logits (seed {seed})",
        "intervention",
    )


def string_match_route(
    forget: Sequence[Fact] | Sequence[str], reference, *, name: str = "string_match_route"
) -> Method:
    """Reference row: if a forget subject's exact string is in the prompt, the row is answered
    by ``reference`` (the retain-only model) instead (:class:`StringMatch`, ``action="route"``)."""
    matcher = StringMatch(_subjects(forget), action="route", reference=reference)
    return Method(
        name,
        matcher.install,
        f"keyword filter on {list(matcher.subjects)}: rows routed to "
        f"{getattr(reference, 'name', 'the retain-only model')!r}",
        "intervention",
    )


def reference_methods(
    forget: Sequence[Fact],
    *,
    reference=None,
    random_directions=None,
    seed: int = 0,
) -> list[Method]:
    """The reference rows of an unlearning table, in order.

    ``no_edit``; with ``reference`` (the retain-only model) ``retain_model`` and
    ``string_match_route``; ``string_match_random``; with ``random_directions`` (an edit
    memory whose update directions were replaced by random ones of equal norm:
    ``tt.editing.random_directions(memory, seed=...)``) ``random_directions``.

    Example:
        >>> rows = reference_methods(forget, reference=retain_model)  # doctest: +SKIP
        >>> [m.name for m in rows]                                    # doctest: +SKIP
        ['no_edit', 'retain_model', 'string_match_random', 'string_match_route']
    """
    rows = [Method.unedited()]
    if reference is not None:
        rows.append(
            Method.other_model(
                "retain_model",
                reference,
                f"the retain-only model {getattr(reference, 'name', '')!r} (never saw the forget set)",
            )
        )
    rows.append(string_match_random(forget, seed=seed))
    if reference is not None:
        rows.append(string_match_route(forget, reference))
    if random_directions is not None:
        rows.append(
            Method.memory(
                "random_directions",
                random_directions,
                "the given edit memory with random update directions of equal norm",
            )
        )
    return rows
